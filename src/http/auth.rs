//! Credentials for requests: static tokens, and OAuth2 access tokens that refresh themselves.
//!
//! An OAuth connection refreshes ahead of expiry and after a 401, one refresh at a time: a
//! per-connection lock makes concurrent callers wait for the refresh in progress and reuse
//! its result. A rotated refresh token is written (and flushed) to the state store before
//! the new access token is used, so a crash never loses the only valid refresh token. A
//! token stored by an earlier refresh wins over the one in ghlflow.yaml.
//!
//! Several workers on one store refresh once between them: the refresh is made under the
//! store lease `oauth:<connection>`, and the worker that gets it first reads the store again.
//! If another worker refreshed meanwhile, it takes those tokens instead of refreshing (its own
//! refresh token may already be revoked by that rotation).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::sync::Mutex;

use super::error::{HttpError, extract_message};
use crate::config::{Auth, Connection, OAuth2Settings, Redactor, Secret};
use crate::store::{Store, StoredTokens};

/// Refresh this long before the access token expires.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// How long a worker holds the refresh lease at most (it is given back after the refresh),
/// and how long another waits for it.
const REFRESH_LEASE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct TokenSource {
    connection: String,
    kind: Kind,
}

// One per connection, made once: the size of the OAuth variant costs nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Kind {
    Static(Secret),
    OAuth2 { settings: Box<OAuth2Settings>, state: Mutex<OAuthState> },
}

#[derive(Debug, Default)]
struct OAuthState {
    loaded: bool,
    access: Option<Secret>,
    expires_at: Option<SystemTime>,
    refresh: Option<Secret>,
    granted: StoredTokens,
    /// The access token the server last refused (a 401): never taken back from the store.
    rejected: Option<Secret>,
}

impl OAuthState {
    /// Takes tokens saved in the store (by an earlier process, or another worker).
    fn adopt(&mut self, saved: StoredTokens, redactor: &Redactor) {
        if let Some(a) = &saved.access_token {
            redactor.add(a);
        }
        if let Some(r) = &saved.refresh_token {
            redactor.add(r);
        }
        self.access = saved.access_token.clone().map(Secret::new).filter(|a| self.rejected.as_ref() != Some(a));
        self.expires_at = saved.expires_at.map(|s| UNIX_EPOCH + Duration::from_secs(s));
        self.refresh = saved.refresh_token.clone().map(Secret::new).or(self.refresh.take());
        self.granted = saved;
    }

    /// The access token, if it does not expire soon.
    fn fresh_access(&self) -> Option<Secret> {
        let fresh = match self.expires_at {
            Some(exp) => exp > SystemTime::now() + REFRESH_AHEAD,
            None => true,
        };
        self.access.clone().filter(|_| fresh)
    }
}

/// The token endpoint's answer (GHL and Capsule both follow RFC 6749, with extras).
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default, rename = "locationId")]
    pub location_id: Option<String>,
    #[serde(default, rename = "companyId")]
    pub company_id: Option<String>,
}

impl TokenResponse {
    pub fn into_stored(self, previous_refresh: Option<&Secret>) -> StoredTokens {
        StoredTokens {
            expires_at: self.expires_in.map(|s| unix_now() + s),
            access_token: Some(self.access_token),
            // Some servers rotate, some keep the old refresh token: keep whichever is newest.
            refresh_token: self.refresh_token.or_else(|| previous_refresh.map(|r| r.expose().to_owned())),
            location_id: self.location_id,
            company_id: self.company_id,
            scope: self.scope,
        }
    }
}

impl TokenSource {
    pub fn new(connection: &Connection) -> Self {
        let kind = match &connection.auth {
            Auth::Static(token) => Kind::Static(token.clone()),
            Auth::OAuth2(settings) => {
                Kind::OAuth2 { settings: Box::new(settings.clone()), state: Mutex::new(OAuthState::default()) }
            }
        };
        TokenSource { connection: connection.name.clone(), kind }
    }

    /// Whether requests carry a refreshable token (a 401 is then worth one refresh).
    pub fn refreshable(&self) -> bool {
        matches!(self.kind, Kind::OAuth2 { .. })
    }

    /// A token to send now, refreshing first if it expires soon.
    pub async fn bearer(
        &self,
        http: &reqwest::Client,
        store: Option<&Store>,
        redactor: &Redactor,
    ) -> Result<Secret, HttpError> {
        let (settings, state) = match &self.kind {
            Kind::Static(token) => return Ok(token.clone()),
            Kind::OAuth2 { settings, state } => (settings, state),
        };
        let mut state = state.lock().await;
        if !state.loaded {
            state.loaded = true;
            state.refresh = settings.refresh_token.clone();
            if let Some(store) = store
                && let Some(saved) = store.tokens(&self.connection).await?
            {
                state.adopt(saved, redactor);
            }
        }
        if let Some(a) = state.fresh_access() {
            return Ok(a);
        }
        let Some(store) = store else { return self.refresh(http, settings, None, &mut state, redactor).await };
        // Once across the workers: the first to take the lease refreshes; the others find
        // its tokens in the store when they get the lease after it.
        let lease = format!("oauth:{}", self.connection);
        if !crate::store::wait_for_lease(store, &lease, REFRESH_LEASE, REFRESH_LEASE).await? {
            return Err(HttpError::Auth {
                connection: self.connection.clone(),
                message: "another worker has been refreshing the OAuth token for a minute; try again".into(),
            });
        }
        let refreshed = async {
            if let Some(saved) = store.tokens(&self.connection).await?
                && saved.access_token.as_deref() != state.access.as_ref().map(Secret::expose)
                && saved.access_token.as_deref() != state.rejected.as_ref().map(Secret::expose)
            {
                state.adopt(saved, redactor);
                if let Some(a) = state.fresh_access() {
                    tracing::info!(connection = %self.connection, "took the OAuth token another worker refreshed");
                    return Ok(a);
                }
            }
            self.refresh(http, settings, Some(store), &mut state, redactor).await
        }
        .await;
        let _ = store.release_lease(&lease, store.worker()).await;
        refreshed
    }

    /// Refreshes with the refresh token held, and saves the answer (durably, before use).
    async fn refresh(
        &self,
        http: &reqwest::Client,
        settings: &OAuth2Settings,
        store: Option<&Store>,
        state: &mut OAuthState,
        redactor: &Redactor,
    ) -> Result<Secret, HttpError> {
        let Some(refresh) = state.refresh.clone() else {
            return Err(HttpError::Auth {
                connection: self.connection.clone(),
                message: format!("no OAuth token yet: run `ghlflow connect {}` first", self.connection),
            });
        };
        let tokens = refresh_tokens(http, settings, &refresh, &self.connection).await?;
        let stored = tokens.into_stored(Some(&refresh));
        if let Some(a) = &stored.access_token {
            redactor.add(a);
        }
        if let Some(r) = &stored.refresh_token {
            redactor.add(r);
        }
        let stored = StoredTokens {
            location_id: stored.location_id.clone().or(state.granted.location_id.clone()),
            company_id: stored.company_id.clone().or(state.granted.company_id.clone()),
            ..stored
        };
        // Durable before use: the old refresh token may already be revoked by the server.
        if let Some(store) = store {
            store.save_tokens(&self.connection, &stored).await?;
        }
        tracing::info!(connection = %self.connection, "refreshed the OAuth access token");
        state.access = stored.access_token.clone().map(Secret::new);
        state.expires_at = stored.expires_at.map(|s| UNIX_EPOCH + Duration::from_secs(s));
        state.refresh = stored.refresh_token.clone().map(Secret::new);
        state.granted = stored;
        state.access.clone().ok_or_else(|| HttpError::Auth {
            connection: self.connection.clone(),
            message: "the token endpoint gave no access token".into(),
        })
    }

    /// The server refused `used` (a 401): forget it, unless another caller already replaced it.
    pub async fn invalidate(&self, used: &Secret) {
        if let Kind::OAuth2 { state, .. } = &self.kind {
            let mut state = state.lock().await;
            if state.access.as_ref() == Some(used) {
                state.access = None;
            }
            state.rejected = Some(used.clone());
        }
    }
}

/// `grant_type=refresh_token` at the token endpoint.
async fn refresh_tokens(
    http: &reqwest::Client,
    settings: &OAuth2Settings,
    refresh: &Secret,
    connection: &str,
) -> Result<TokenResponse, HttpError> {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.expose()),
        ("client_id", settings.client_id.as_str()),
        ("client_secret", settings.client_secret.expose()),
    ];
    token_request(http, &settings.token_url, &form, connection).await
}

/// One form POST to a token endpoint; its answer parsed, its errors in the server's words.
pub async fn token_request(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
    connection: &str,
) -> Result<TokenResponse, HttpError> {
    let fail = |message: String| HttpError::Auth { connection: connection.to_owned(), message };
    let response = http
        .post(url)
        .header("Accept", "application/json")
        .form(form)
        .send()
        .await
        .map_err(|e| fail(format!("token request to {url} failed: {}", without_url(&e))))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| fail(format!("token response from {url} was cut off: {e}")))?;
    if !status.is_success() {
        return Err(fail(format!("the token endpoint refused (HTTP {}): {}", status.as_u16(), extract_message(&body))));
    }
    serde_json::from_slice(&body).map_err(|e| fail(format!("the token endpoint answered something unreadable: {e}")))
}

/// reqwest's error text without the URL (which may carry a query with secrets).
pub fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.without_url_ref_string();
    if e.is_timeout() {
        text = format!("timed out ({text})");
    }
    text
}

trait WithoutUrl {
    fn without_url_ref_string(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref_string(&self) -> String {
        use std::error::Error as _;
        let mut text = String::new();
        let mut source: Option<&dyn std::error::Error> = self.source();
        while let Some(s) = source {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&s.to_string());
            source = s.source();
        }
        if text.is_empty() {
            text = if self.is_timeout() {
                "timed out".into()
            } else if self.is_connect() {
                "could not connect".into()
            } else {
                "request failed".into()
            }
        }
        text
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}
