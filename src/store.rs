//! The state store: the one module that touches sled.
//!
//! It holds what must survive a restart: OAuth tokens (rotated refresh tokens are written
//! and flushed before they are used), and, for the runtime, trigger cursors, the run journal
//! and history. The directory is created readable by its owner only. Everything is stored as
//! JSON under a key per record, one sled tree per kind.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// sled's page cache. Its default (1 GiB) lets a long history fill the process's memory;
/// runs are read back by id and rarely twice, so a small cache costs little.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store at {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    /// The state path is some other folder (not busy: refused).
    #[error("refusing to use {path} as the state store: {reason}")]
    NotStateFolder { path: PathBuf, reason: String },
    #[error("state store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("state store holds a record it cannot read ({key}): {reason}")]
    Corrupt { key: String, reason: String },
    /// The trigger was reset (or moved) after the poll began: what the poll read belongs to
    /// the old position, so none of it is recorded.
    #[error("the trigger of `{recipe}` was reset while it was polled; the poll's outcome is dropped")]
    TriggerMoved { recipe: String },
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

/// Where a recipe's trigger stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TriggerState {
    /// What the position belongs to (operation, connection, inputs); a change resets it.
    pub fingerprint: String,
    /// The first poll has run (recorded a baseline, or backfilled).
    pub baselined: bool,
    /// The newest record timestamp seen (ISO 8601), for feeds with a `since` filter.
    pub cursor: Option<String>,
    /// The inputs of the page to read next, when the last poll stopped at the page bound.
    pub resume: Option<serde_json::Map<String, serde_json::Value>>,
    /// Unix seconds of the last poll.
    pub last_poll: Option<u64>,
    /// The last poll's error, if it failed.
    pub last_error: Option<String>,
    /// Unix seconds of the last poll that read a whole feed of changes (see the recipe's
    /// `trigger.full_scan_every`).
    #[serde(default)]
    pub last_full_scan: Option<u64>,
    /// Counts the resets of this trigger (`trigger reset`). A poll records its outcome only
    /// if the number is still the one it began with.
    #[serde(default)]
    pub generation: u64,
}

/// A run's state. `held` runs wait for `runs release` or `runs discard`.
/// (`ValueEnum`: the CLI lists and parses statuses from this enum, so none is left out.)
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created by a poll, waiting its turn to run.
    Queued,
    /// Its steps are being sent.
    Running,
    /// Every step succeeded or was skipped by its `if`.
    Succeeded,
    /// A step failed after its retries (`runs replay` resumes it there).
    Failed,
    /// The recipe's filter left the item out; no step ran.
    Filtered,
    /// Part of a batch larger than `hold_above`, waiting for `runs release` or `runs discard`.
    Held,
    /// A held run dropped with `runs discard`.
    Discarded,
    /// A step needs an id another recipe has not recorded yet; resumed at a later poll.
    Waiting,
    /// The process stopped while a step that is not safe to repeat was being sent: whether
    /// it reached the API is unknown, so a person decides (`runs replay` or `runs discard`).
    Unsure,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Filtered => "filtered",
            RunStatus::Held => "held",
            RunStatus::Discarded => "discarded",
            RunStatus::Waiting => "waiting",
            RunStatus::Unsure => "unsure",
        }
    }

    /// Whether the engine still owes work on it.
    pub fn is_open(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    /// Sent, answer not yet recorded: after a crash the effect may or may not exist.
    Sent,
    Succeeded,
    Failed,
    Skipped,
}

/// One step of a run, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub id: String,
    pub operation: String,
    pub status: StepStatus,
    /// The rendered inputs, with secrets redacted.
    pub input: Option<serde_json::Value>,
    /// The response body.
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    /// How many times it was sent (across replays).
    pub attempts: u32,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub duration_ms: Option<u64>,
}

impl StepRecord {
    /// A step not yet run.
    pub fn pending(id: &str, operation: &str) -> Self {
        StepRecord {
            id: id.to_owned(),
            operation: operation.to_owned(),
            status: StepStatus::Pending,
            input: None,
            output: None,
            error: None,
            attempts: 0,
            started: None,
            finished: None,
            duration_ms: None,
        }
    }
}

/// One item's run through a recipe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub id: String,
    pub recipe: String,
    pub status: RunStatus,
    /// The trigger item's id (or a content hash for single-record triggers).
    pub item_id: Option<String>,
    /// The trigger item itself.
    pub item: serde_json::Value,
    pub created: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub error: Option<String>,
    pub steps: Vec<StepRecord>,
    /// Automatic replays so far, and when the next one is due (Unix seconds).
    #[serde(default)]
    pub replays: u32,
    #[serde(default)]
    pub next_replay_at: Option<u64>,
    /// What the engine decided along the way that the history should show (an id forgotten
    /// because its record was gone, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl RunRecord {
    /// A run of `item` not started yet, with no step recorded.
    pub fn new(
        id: String,
        recipe: &str,
        status: RunStatus,
        item_id: &str,
        item: serde_json::Value,
        created: String,
    ) -> Self {
        RunRecord {
            id,
            recipe: recipe.to_owned(),
            status,
            item_id: Some(item_id.to_owned()),
            item,
            created,
            started: None,
            finished: None,
            error: None,
            steps: Vec::new(),
            replays: 0,
            next_replay_at: None,
            notes: Vec::new(),
        }
    }
}

/// What a poll decided, written in one transaction: new runs, seen marks, the trigger state.
#[derive(Debug, Default)]
pub struct PollCommit {
    /// The trigger's generation when the poll began: a reset since then drops the commit.
    pub generation: u64,
    pub runs: Vec<RunRecord>,
    pub seen: Vec<(String, String)>,
    /// The trigger's new position, with the poll's last chunk.
    pub state: Option<TriggerState>,
    /// Spill slots whose records these runs now hold.
    pub spilled: Vec<u64>,
    /// Items that ran and now count as present (`trigger.report_gone`).
    pub joined: Vec<String>,
    /// Items reported gone: no longer present.
    pub left: Vec<String>,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    tokens: sled::Tree,
    triggers: sled::Tree,
    seen: sled::Tree,
    runs: sled::Tree,
    open: sled::Tree,
    ids: sled::Tree,
    /// Per recipe with `report_gone`: the items that ran and have not gone since.
    present: sled::Tree,
    /// A poll's new records, between the page that brought them and their runs.
    spill: sled::Tree,
    sequence: std::sync::Arc<std::sync::atomic::AtomicU64>,
    flushes: std::sync::Arc<FlushGate>,
}

/// Group commit for `flush_async`: one sled flush runs at a time, and every caller that
/// arrives while it runs is covered by the single flush that starts next.
#[derive(Debug, Default)]
struct FlushGate {
    /// Flushes begun so far; a flush numbered above a caller's reading begins after its writes.
    begun: std::sync::atomic::AtomicU64,
    /// The number of the last flush that succeeded. Held while a flush runs.
    done: tokio::sync::Mutex<u64>,
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
        check_state_folder(dir).map_err(|reason| StoreError::NotStateFolder { path: dir.to_path_buf(), reason })?;
        // Every file this process creates from here on (sled's segments and snapshots, written
        // at any time later, the control socket) is its owner's only: the store holds tokens.
        #[cfg(unix)]
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        restrict_to_owner(dir).map_err(|e| fail(e.to_string()))?;
        if !dir.join(MARKER).exists() {
            std::fs::write(dir.join(MARKER), MARKER_TEXT).map_err(|e| fail(e.to_string()))?;
        }
        let db = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).open().map_err(|e| {
            let text = e.to_string();
            if text.contains("WouldBlock") || text.contains("lock") {
                fail("another ghlflow process is using it (is `ghlflow run` running?)".into())
            } else {
                fail(text)
            }
        })?;
        restrict_files_to_owner(dir);
        migrate(&db, dir)?;
        Self::from_db(db)
    }

    /// The format of the store's contents (see `FORMAT`).
    pub fn format(&self) -> Result<Option<u32>, StoreError> {
        format_of(&self.db)
    }

    /// A store in a fresh temporary directory that disappears with the process (tests, demo).
    pub fn temporary() -> Result<Store, StoreError> {
        let db = sled::Config::new().temporary(true).cache_capacity(CACHE_BYTES).open()?;
        migrate(&db, Path::new("a temporary store"))?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Store, StoreError> {
        Ok(Store {
            tokens: db.open_tree("tokens")?,
            triggers: db.open_tree("triggers")?,
            seen: db.open_tree("seen")?,
            runs: db.open_tree("runs")?,
            open: db.open_tree("open_runs")?,
            ids: db.open_tree("id_map")?,
            present: db.open_tree("present")?,
            spill: db.open_tree("poll_spill")?,
            sequence: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
            flushes: std::sync::Arc::default(),
            db,
        })
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

    /// Like `flush`, without blocking a runtime thread; concurrent callers share one disk sync.
    ///
    /// Not sled's own `flush_async`: in sled 0.34 it runs the blocking flush on sled's small
    /// IO thread pool, where the buffer writes it waits for are queued too, so a handful of
    /// concurrent callers deadlock (spacejam/sled#1308, fixed only on sled's unreleased main).
    /// The same blocking flush on tokio's blocking pool leaves sled's pool free to write.
    ///
    /// Flushes are grouped (see `FlushGate`): sled alone seals and syncs a log buffer for
    /// nearly every caller, which made three flushes per run the bulk of a run's CPU.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        // An RMW rather than a load, so the flush that next increments `begun` is ordered
        // after this caller's writes.
        let seen = self.flushes.begun.fetch_add(0, SeqCst);
        let mut done = self.flushes.done.lock().await;
        if *done > seen {
            return Ok(()); // a flush that began after this call has succeeded
        }
        let number = self.flushes.begun.fetch_add(1, SeqCst) + 1;
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(flushed) => {
                flushed?;
                *done = number;
                Ok(())
            }
            Err(e) => Err(StoreError::Sled(sled::Error::ReportableBug(format!("flush task failed: {e}")))),
        }
    }

    // --- triggers -------------------------------------------------------------------

    pub fn trigger_state(&self, recipe: &str) -> Result<Option<TriggerState>, StoreError> {
        get_json(&self.triggers, recipe)
    }

    pub fn save_trigger_state(&self, recipe: &str, state: &TriggerState) -> Result<(), StoreError> {
        put_json(&self.triggers, recipe, state)
    }

    /// The seen mark of one item of a recipe's feed (its updated time or content hash).
    pub fn seen_mark(&self, recipe: &str, item: &str) -> Result<Option<String>, StoreError> {
        Ok(self.seen.get(seen_key(recipe, item))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Forgets everything a recipe's trigger has seen (`trigger reset`), and which of its
    /// items count as present: a new position starts with a new baseline, so a feed
    /// replaced by another never reports the old one's items gone.
    pub fn forget_seen(&self, recipe: &str) -> Result<usize, StoreError> {
        let n = remove_prefix(&self.seen, &seen_key(recipe, ""))?;
        remove_prefix(&self.present, &seen_key(recipe, ""))?;
        Ok(n)
    }

    /// The items of a recipe's feed that ran and have not gone since (`report_gone`).
    pub fn present_items(&self, recipe: &str) -> Result<std::collections::HashSet<String>, StoreError> {
        let prefix = seen_key(recipe, "");
        self.present
            .scan_prefix(&prefix)
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?[prefix.len()..]).into_owned()))
            .collect()
    }

    /// Resets a recipe's trigger to `state`: its seen marks and present items are forgotten
    /// and the reset is counted, so a poll that began before it records nothing (see
    /// `commit_poll`). Flushed before it returns.
    pub fn reset_trigger(&self, recipe: &str, mut state: TriggerState) -> Result<(), StoreError> {
        let before = self.trigger_state(recipe)?.map_or(0, |s| s.generation);
        state.generation = before + 1;
        self.forget_seen(recipe)?;
        self.save_trigger_state(recipe, &state)?;
        self.flush()
    }

    /// Records a poll's outcome atomically: the runs it created, the items it marked seen
    /// and the trigger's new position. A crash leaves either all of it or none. If the
    /// trigger was reset since the poll began (its generation moved), nothing is recorded and
    /// `TriggerMoved` is returned.
    pub fn commit_poll(&self, recipe: &str, commit: &PollCommit) -> Result<(), StoreError> {
        use sled::Transactional;
        let runs: Vec<(Vec<u8>, Vec<u8>)> = commit
            .runs
            .iter()
            .map(|r| Ok((r.id.as_bytes().to_vec(), to_bytes(&r.id, r)?)))
            .collect::<Result<_, StoreError>>()?;
        let state = commit.state.as_ref().map(|s| to_bytes(recipe, s)).transpose()?;
        (&self.runs, &self.open, &self.seen, &self.triggers, &self.present, &self.spill)
            .transaction(|(runs_t, open_t, seen_t, triggers_t, present_t, spill_t)| {
                let stored = triggers_t.get(recipe.as_bytes())?;
                let generation =
                    stored.and_then(|b| serde_json::from_slice::<TriggerState>(&b).ok()).map_or(0, |s| s.generation);
                if generation != commit.generation {
                    return sled::transaction::abort(Moved);
                }
                for slot in &commit.spilled {
                    spill_t.remove(spill_key(recipe, *slot))?;
                }
                for (key, value) in &runs {
                    runs_t.insert(key.as_slice(), value.as_slice())?;
                    open_t.insert(key.as_slice(), recipe.as_bytes())?;
                }
                for (item, mark) in &commit.seen {
                    seen_t.insert(seen_key(recipe, item), mark.as_bytes())?;
                }
                for item in &commit.joined {
                    present_t.insert(seen_key(recipe, item), &[])?;
                }
                for item in &commit.left {
                    present_t.remove(seen_key(recipe, item))?;
                }
                if let Some(state) = &state {
                    triggers_t.insert(recipe.as_bytes(), state.as_slice())?;
                }
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<Moved>| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
                sled::transaction::TransactionError::Abort(Moved) => StoreError::TriggerMoved { recipe: recipe.into() },
            })?;
        Ok(())
    }

    // --- the poll spill ---------------------------------------------------------------

    /// Keeps a new record of `recipe`'s poll until its run is recorded.
    pub fn spill_put(&self, recipe: &str, slot: u64, record: &serde_json::Value) -> Result<(), StoreError> {
        self.spill.insert(spill_key(recipe, slot), to_bytes(recipe, record)?)?;
        Ok(())
    }

    pub fn spill_get(&self, recipe: &str, slot: u64) -> Result<Option<serde_json::Value>, StoreError> {
        match self.spill.get(spill_key(recipe, slot))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { key: format!("spill of {recipe}"), reason: e.to_string() }),
        }
    }

    /// Forgets what a poll of `recipe` spilled (a poll that crashed or was dropped).
    pub fn spill_clear(&self, recipe: &str) -> Result<(), StoreError> {
        remove_prefix(&self.spill, &seen_key(recipe, ""))?;
        Ok(())
    }

    // --- the id map -----------------------------------------------------------------

    /// The id remembered under `key` (e.g. the GHL contact id of `party:123`).
    pub fn id_of(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.ids.get(key.as_bytes())?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Remembers `id` under `key`.
    pub fn remember_id(&self, key: &str, id: &str) -> Result<(), StoreError> {
        self.ids.insert(key.as_bytes(), id.as_bytes())?;
        Ok(())
    }

    /// Forgets what is remembered under `key` (the record it named is gone).
    pub fn forget_id(&self, key: &str) -> Result<(), StoreError> {
        self.ids.remove(key.as_bytes())?;
        Ok(())
    }

    // --- runs -----------------------------------------------------------------------

    /// A new run id: sortable by creation time.
    pub fn next_run_id(&self) -> String {
        let ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let seq = self.sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1_000_000;
        format!("{ms:013}-{seq:06}")
    }

    pub fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        get_json(&self.runs, id)
    }

    /// Saves a run; open runs (queued, running) are also indexed for resuming.
    pub fn save_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        put_json(&self.runs, &run.id, run)?;
        // A running run was queued before, so it is indexed already: no second write.
        if run.status == RunStatus::Running {
            return Ok(());
        }
        if run.status.is_open() || run.status == RunStatus::Waiting || run.next_replay_at.is_some() {
            self.open.insert(run.id.as_bytes(), run.recipe.as_bytes())?;
        } else {
            self.open.remove(run.id.as_bytes())?;
        }
        Ok(())
    }

    /// Runs the engine still owes work on (queued, running, waiting for an id, waiting for an
    /// automatic replay), oldest first.
    pub fn open_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut out = Vec::new();
        for key in self.open.iter().keys() {
            let key = key?;
            if let Some(run) = self.run(&String::from_utf8_lossy(&key))? {
                out.push(run);
            }
        }
        Ok(out)
    }

    /// A recipe's runs waiting for an id, oldest first.
    pub fn waiting_runs(&self, recipe: &str) -> Result<Vec<RunRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.open.iter() {
            let (key, owner) = entry?;
            if owner.as_ref() != recipe.as_bytes() {
                continue;
            }
            if let Some(run) = self.run(&String::from_utf8_lossy(&key))?
                && run.status == RunStatus::Waiting
            {
                out.push(run);
            }
        }
        Ok(out)
    }

    /// Runs, newest first, optionally of one recipe, at most `limit`.
    pub fn runs(&self, recipe: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.runs.iter().rev() {
            let (key, value) = entry?;
            let run: RunRecord = serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                reason: e.to_string(),
            })?;
            if recipe.is_none_or(|r| r == run.recipe) {
                out.push(run);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Runs, newest first, optionally of one recipe and in one status: at most `limit`, and
    /// how many match in all. Only the runs returned are read whole.
    pub fn runs_page(
        &self,
        recipe: Option<&str>,
        status: Option<RunStatus>,
        limit: usize,
    ) -> Result<(Vec<RunRecord>, usize), StoreError> {
        /// The two fields a match needs (the rest of the record is skipped, not built).
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(borrow)]
            recipe: std::borrow::Cow<'a, str>,
            status: RunStatus,
        }
        let corrupt = |key: &[u8], e: serde_json::Error| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        };
        let (mut out, mut total) = (Vec::new(), 0);
        for entry in self.runs.iter().rev() {
            let (key, value) = entry?;
            let head: Head = serde_json::from_slice(&value).map_err(|e| corrupt(&key, e))?;
            if recipe.is_some_and(|r| r != head.recipe) || status.is_some_and(|s| s != head.status) {
                continue;
            }
            total += 1;
            if out.len() < limit {
                out.push(serde_json::from_slice(&value).map_err(|e| corrupt(&key, e))?);
            }
        }
        Ok((out, total))
    }

    /// Runs of a recipe in one status, oldest first.
    pub fn runs_with_status(&self, recipe: &str, status: RunStatus) -> Result<Vec<RunRecord>, StoreError> {
        let mut out: Vec<RunRecord> =
            self.runs(Some(recipe), usize::MAX)?.into_iter().filter(|r| r.status == status).collect();
        out.reverse();
        Ok(out)
    }

    /// Deletes finished runs created before `cutoff_ms` (Unix ms); returns how many.
    pub fn prune_runs(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let end = format!("{cutoff_ms:013}");
        let mut n = 0;
        for entry in self.runs.range(..end.as_bytes()) {
            let (key, value) = entry?;
            let open = serde_json::from_slice::<RunRecord>(&value)
                .map(|r| r.status.is_open() || r.status == RunStatus::Held)
                .unwrap_or(false);
            if !open {
                self.runs.remove(&key)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// One stored record: tree name, key, value.
pub type DumpedRecord = (String, Vec<u8>, Vec<u8>);

impl Store {
    /// Every record in every tree, in order: for comparing a store before and after
    /// something that must not change it (a dry run).
    pub fn dump(&self) -> Result<Vec<DumpedRecord>, StoreError> {
        let mut out = Vec::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            for entry in tree.iter() {
                let (k, v) = entry?;
                out.push((String::from_utf8_lossy(&name).into_owned(), k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
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
    tree.insert(key.as_bytes(), to_bytes(key, value)?)?;
    Ok(())
}

fn to_bytes<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt { key: key.to_owned(), reason: e.to_string() })
}

/// The format of a state folder's contents, kept under `format` in its `meta` tree. Each
/// change to how records are laid out raises it, with a step in `migrate`.
/// - 1: no `format` key (ghlflow before the key existed).
/// - 2: trigger states count resets (`generation`, read as 0 when missing), and the trees
///   `present` and `poll_spill` exist (created empty when missing). Nothing is rewritten.
pub const FORMAT: u32 = 2;

fn format_of(db: &sled::Db) -> Result<Option<u32>, StoreError> {
    let meta = db.open_tree("meta")?;
    match meta.get(b"format")? {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| t.parse().ok())
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt { key: "meta/format".into(), reason: "not a number".into() }),
    }
}

/// Brings a store written by an earlier ghlflow to `FORMAT` (on open, before anything else
/// reads it), and refuses one written by a later ghlflow, whose records this one could
/// misread.
fn migrate(db: &sled::Db, path: &Path) -> Result<(), StoreError> {
    let found = format_of(db)?;
    match found {
        Some(f) if f > FORMAT => {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                reason: format!(
                    "it was written by a newer ghlflow (state format {f}; this one reads up to {FORMAT}): \
                     upgrade ghlflow, or use another state folder"
                ),
            });
        }
        Some(f) if f == FORMAT => return Ok(()),
        // From 1 to 2 nothing is rewritten: the new fields and trees start empty.
        _ => {}
    }
    // A new store has only sled's default tree (and `meta`, opened just above).
    let fresh = db.tree_names().iter().all(|name| name.as_ref() == b"__sled__default" || name.as_ref() == b"meta");
    let meta = db.open_tree("meta")?;
    meta.insert(b"format", FORMAT.to_string().as_bytes())?;
    db.flush()?;
    if !fresh {
        tracing::info!(from = found.unwrap_or(1), to = FORMAT, "state store migrated");
    }
    Ok(())
}

/// Why a poll's commit was abandoned: the trigger was reset under it.
#[derive(Debug, Clone, Copy)]
struct Moved;

/// Removes every key of `tree` that starts with `prefix`; returns how many.
fn remove_prefix(tree: &sled::Tree, prefix: &[u8]) -> Result<usize, StoreError> {
    let mut n = 0;
    for key in tree.scan_prefix(prefix).keys() {
        tree.remove(key?)?;
        n += 1;
    }
    Ok(n)
}

fn spill_key(recipe: &str, slot: u64) -> Vec<u8> {
    let mut k = seen_key(recipe, "");
    k.extend_from_slice(&slot.to_be_bytes());
    k
}

fn seen_key(recipe: &str, item: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(recipe.len() + item.len() + 1);
    k.extend_from_slice(recipe.as_bytes());
    k.push(0);
    k.extend_from_slice(item.as_bytes());
    k
}

/// The file that marks a folder as ghlflow's state folder.
const MARKER: &str = "GHLFLOW_STATE";
const MARKER_TEXT: &str = "This folder is ghlflow's state store (sled). Do not edit it by hand.\n";

/// A state path must be ghlflow's own folder: missing (it is created), empty, marked, or an
/// earlier ghlflow store (sled's `conf` and `db`, from before the marker). Anything else,
/// such as `state: .` (the project folder), is refused rather than taken over and made
/// owner-only.
fn check_state_folder(dir: &Path) -> Result<(), String> {
    let entries: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if dir.exists() && !dir.is_dir() => return Err(format!("it is not a folder ({e})")),
        Err(e) => return Err(e.to_string()),
    };
    let has = |name: &str| entries.iter().any(|e| e == name);
    if entries.is_empty() || has(MARKER) || (has("conf") && has("db")) {
        return Ok(());
    }
    Err(format!(
        "the folder is not empty and is not a ghlflow state folder (no {MARKER} file); point `state:` at a folder of its own, e.g. .ghlflow/state"
    ))
}

/// Files an older ghlflow (or sled before the umask) created with the default mode hold
/// tokens and history: they are made owner-only (0600) when the store opens. Files created
/// later are owner-only through the process's umask.
#[cfg(unix)]
fn restrict_files_to_owner(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let mode = if ft.is_dir() {
            0o700
        } else if ft.is_file() {
            0o600
        } else {
            continue;
        };
        let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode));
        if ft.is_dir() {
            restrict_files_to_owner(&e.path());
        }
    }
}

#[cfg(not(unix))]
fn restrict_files_to_owner(_dir: &Path) {}

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_flushes_finish() {
        // sled 0.34's own flush_async hangs with 8 or more callers at once (spacejam/sled#1308).
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..20 {
                    store.save_trigger_state(&format!("r{i}-{j}"), &TriggerState::default()).unwrap();
                    store.flush_async().await.unwrap();
                }
            }));
        }
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), all).await.expect("every flush finished");
        assert!(store.trigger_state("r63-19").unwrap().is_some());
    }
}

#[cfg(test)]
mod folder_tests {
    use super::*;

    /// sled lets go of a folder's lock a moment after its last handle is dropped (its
    /// flusher thread finishes first): retry for a while instead of failing on that.
    fn when_free<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> Result<T, E> {
        for _ in 0..100 {
            match open() {
                Err(e) if e.to_string().contains("another ghlflow process") || e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
        open()
    }

    #[test]
    fn a_new_store_is_at_the_current_format_and_a_newer_one_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state");
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.format().unwrap(), Some(FORMAT));
        drop(store);
        // A later ghlflow wrote it.
        {
            let db = when_free(|| sled::open(&dir)).unwrap();
            db.open_tree("meta").unwrap().insert(b"format", (FORMAT + 1).to_string().as_bytes()).unwrap();
            db.flush().unwrap();
        }
        let err = when_free(|| Store::open(&dir)).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("newer ghlflow") && err.contains(&dir.display().to_string()), "{err}");
    }

    #[test]
    fn a_foreign_non_empty_folder_is_refused_and_files_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ghlflow.yaml"), "connections: {}\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let err = Store::open(dir.path()).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("not a ghlflow state folder"), "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
            assert_ne!(mode & 0o077, 0, "the refused folder's mode was changed: {mode:o}");
        }
        assert!(!dir.path().join("db").exists(), "sled files were written beside the project");

        let state = dir.path().join("state");
        drop(Store::open(&state).unwrap());
        assert!(state.join(MARKER).exists());
        let store = Store::open(&state).unwrap(); // marked: opens again
        store.flush().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for e in std::fs::read_dir(&state).unwrap().flatten() {
                let mode = e.metadata().unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{} is {mode:o}", e.path().display());
            }
        }
        // A store from before the marker (sled's own files only) still opens.
        drop(store);
        std::fs::remove_file(state.join(MARKER)).unwrap();
        assert!(Store::open(&state).is_ok());
    }
}
