//! The state store: the one module that touches sled.
//!
//! It holds what must survive a restart: OAuth tokens (rotated refresh tokens are written
//! and flushed before they are used), and, for the runtime, trigger cursors, the run journal
//! and history. The directory is created readable by its owner only. Everything is stored as
//! JSON under a key per record, one sled tree per kind.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store at {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("state store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("state store holds a record it cannot read ({key}): {reason}")]
    Corrupt { key: String, reason: String },
}

/// The tokens of one OAuth connection, as last received.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredTokens {
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    /// Unix seconds after which the access token is no longer valid.
    pub expires_at: Option<u64>,
    /// What the grant was for (GHL answers with the location or company).
    pub location_id: Option<String>,
    pub company_id: Option<String>,
    pub scope: Option<String>,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    tokens: sled::Tree,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, owner-only.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let fail = |reason: String| StoreError::Open { path: dir.to_path_buf(), reason };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        restrict_to_owner(dir).map_err(|e| fail(e.to_string()))?;
        let db = sled::Config::new().path(dir).open().map_err(|e| {
            let text = e.to_string();
            if text.contains("WouldBlock") || text.contains("lock") {
                fail("another ghlflow process is using it (is `ghlflow run` running?)".into())
            } else {
                fail(text)
            }
        })?;
        let tokens = db.open_tree("tokens")?;
        Ok(Store { db, tokens })
    }

    /// A store in a fresh temporary directory that disappears with the process (tests, demo).
    pub fn temporary() -> Result<Store, StoreError> {
        let db = sled::Config::new().temporary(true).open()?;
        let tokens = db.open_tree("tokens")?;
        Ok(Store { db, tokens })
    }

    pub fn tokens(&self, connection: &str) -> Result<Option<StoredTokens>, StoreError> {
        get_json(&self.tokens, connection)
    }

    /// Saves tokens and waits until they are on disk: a rotated refresh token must never be
    /// used before it is durable, or a crash would lose the only valid one.
    pub fn save_tokens(&self, connection: &str, tokens: &StoredTokens) -> Result<(), StoreError> {
        put_json(&self.tokens, connection, tokens)?;
        self.db.flush()?;
        Ok(())
    }

    /// Waits until everything written so far is on disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

fn get_json<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>, StoreError> {
    match tree.get(key.as_bytes())? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt { key: key.to_owned(), reason: e.to_string() }),
    }
}

fn put_json<T: Serialize>(tree: &sled::Tree, key: &str, value: &T) -> Result<(), StoreError> {
    let bytes =
        serde_json::to_vec(value).map_err(|e| StoreError::Corrupt { key: key.to_owned(), reason: e.to_string() })?;
    tree.insert(key.as_bytes(), bytes)?;
    Ok(())
}

#[cfg(unix)]
fn restrict_to_owner(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn restrict_to_owner(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_survive_a_reopen_and_the_folder_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let tokens = StoredTokens {
            access_token: Some("a".into()),
            refresh_token: Some("r2".into()),
            expires_at: Some(10),
            location_id: Some("loc".into()),
            company_id: None,
            scope: None,
        };
        {
            let store = Store::open(&path).unwrap();
            store.save_tokens("ghl", &tokens).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.tokens("ghl").unwrap(), Some(tokens));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "state folder is readable by others: {mode:o}");
        }
    }
}
