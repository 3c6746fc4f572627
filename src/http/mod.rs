//! The HTTP layer: every request ghlflow sends goes through `HttpClient`.
//!
//! `request` builds a request from an operation and its inputs; this module sends it with
//! the connection's credentials (`auth`), inside the connection's concurrency bound and its
//! shared budget (`ratelimit`), retrying what can be retried (`retry`) and reading the
//! answer as the operation says. `paginate` walks multi-page results. Nothing here knows
//! about recipes or runs.

pub mod auth;
pub mod error;
pub mod paginate;
pub mod ratelimit;
pub mod request;
pub mod retry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

pub use error::HttpError;
pub use paginate::{Page, Pager, collect_all};
pub use request::{PreparedRequest, RequestBody, prepare};

use crate::catalog::{BudgetOwner, Method, Operation, Pagination, ResponseKind};
use crate::config::{Access, Connection, Redactor};
use crate::store::Store;
use auth::TokenSource;
use ratelimit::Budget;

tokio::task_local! {
    /// Requests put on the wire inside a `count_sends` scope.
    static SENDS: std::cell::Cell<u32>;
}

/// Runs `f` and returns its output with how many requests it put on the wire: every retry,
/// and every resend after a 429 or a token refresh, counts (run history shows this number).
pub async fn count_sends<F: std::future::Future>(f: F) -> (F::Output, u32) {
    SENDS
        .scope(std::cell::Cell::new(0), async move {
            let out = f.await;
            (out, SENDS.try_with(std::cell::Cell::get).unwrap_or(0))
        })
        .await
}

/// How many 429s in a row one request waits out before it gives up.
const MAX_RATE_LIMIT_WAITS: u32 = 20;

/// What the client keeps per connection.
#[derive(Debug)]
struct ConnectionState {
    budget: Arc<Budget>,
    tokens: Arc<TokenSource>,
    slots: Arc<Semaphore>,
}

/// A successful response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The body: JSON as sent; text as a string; binary as `{contentType, size, base64}`.
    pub body: Value,
    /// The `rel="next"` target of the response's Link headers, resolved against the request
    /// URL (read only for operations paged by Link header).
    pub next_link: Option<url::Url>,
    /// The response headers (rate-limit and validator headers are read from here).
    pub headers: reqwest::header::HeaderMap,
}

/// The one HTTP client of a process: connection pools, budgets, tokens and concurrency
/// bounds, shared by everything that sends.
#[derive(Debug)]
pub struct HttpClient {
    http: reqwest::Client,
    store: Option<Store>,
    redactor: Redactor,
    /// Budgets by app and owner: connections to the same location share one.
    budgets: Mutex<HashMap<String, Arc<Budget>>>,
    /// Per connection: its budget, token source and concurrency slots, found with one
    /// read-locked lookup per request.
    connections: std::sync::RwLock<HashMap<String, Arc<ConnectionState>>>,
}

impl HttpClient {
    /// `store` keeps OAuth tokens; without one, refreshed tokens live in memory only.
    pub fn new(store: Option<Store>, redactor: Redactor) -> Result<Self, HttpError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ghlflow/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| HttpError::Transport {
                request: "client setup".into(),
                reason: e.to_string(),
                timeout: false,
            })?;
        Ok(HttpClient { http, store, redactor, budgets: Mutex::default(), connections: Default::default() })
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Checks, builds and sends one request of `op`.
    pub async fn execute(
        &self,
        connection: &Connection,
        op: &Operation,
        inputs: &Map<String, Value>,
    ) -> Result<Response, HttpError> {
        self.execute_with(connection, op, inputs, &op.retry).await
    }

    /// Sends one request of `op` without retrying failures (a 429 is still waited out and
    /// a 401 still refreshes the token): for writes whose caller checks, before trying
    /// again, whether a lost answer hid a success.
    pub async fn execute_once(
        &self,
        connection: &Connection,
        op: &Operation,
        inputs: &Map<String, Value>,
    ) -> Result<Response, HttpError> {
        let once = crate::catalog::RetryPolicy { max_attempts: std::num::NonZeroU32::MIN, ..op.retry.clone() };
        self.execute_with(connection, op, inputs, &once).await
    }

    /// `execute`, with a retry policy other than the operation's.
    async fn execute_with(
        &self,
        connection: &Connection,
        op: &Operation,
        inputs: &Map<String, Value>,
        policy: &crate::catalog::RetryPolicy,
    ) -> Result<Response, HttpError> {
        check_access(connection, op)?;
        let request = prepare(op, connection, inputs)?;
        self.send_with(connection, op, &request, policy).await
    }

    /// Sends a prepared request: budget, token, retries.
    pub async fn send(
        &self,
        connection: &Connection,
        op: &Operation,
        request: &PreparedRequest,
    ) -> Result<Response, HttpError> {
        self.send_with(connection, op, request, &op.retry).await
    }

    /// `send`, with a retry policy other than the operation's.
    pub async fn send_with(
        &self,
        connection: &Connection,
        op: &Operation,
        request: &PreparedRequest,
        policy: &crate::catalog::RetryPolicy,
    ) -> Result<Response, HttpError> {
        let what = op.key.to_string();
        retry::retrying(policy, &what, |attempt| self.attempt(connection, op, request, policy, attempt)).await
    }

    /// One attempt at a request: waits for the budget and a token, sends, and reads the
    /// answer. What is not the attempt's failure is dealt with inside it: a 401 answered by
    /// refreshing the token once, and a 429 waited out (up to `MAX_RATE_LIMIT_WAITS` times).
    async fn attempt(
        &self,
        connection: &Connection,
        op: &Operation,
        request: &PreparedRequest,
        policy: &crate::catalog::RetryPolicy,
        attempt: u32,
    ) -> Result<Response, HttpError> {
        let state = self.connection_state(connection);
        let (budget, tokens, slots) = (&state.budget, &state.tokens, &state.slots);
        let mut refreshed = false;
        let mut rate_waits = 0u32;
        let longest = retry::longest_wait(policy);
        loop {
            let span = tracing::debug_span!("request", op = %op.key, attempt, status = tracing::field::Empty);
            let outcome = async {
                let _slot = slots.acquire().await.ok();
                // Held until the answer's headers are in (see `ratelimit::Permit`).
                let permit = budget.acquire_within(longest).await.map_err(|left| wait_too_long(request, left))?;
                let token = tokens.bearer(&self.http, self.store.as_ref(), &self.redactor).await?;
                let _ = SENDS.try_with(|n| n.set(n.get() + 1));
                let sent = self.send_once(connection, request, token.expose()).await;
                budget.settle_shared(&permit).await;
                Ok::<_, HttpError>((token, sent, permit.sent_at()))
            }
            .instrument(span.clone())
            .await;
            let (token, sent, sent_at) = outcome?;
            return match sent {
                Ok(response) => {
                    let metrics = crate::metrics::metrics();
                    if let Some(left) = budget.observe(response.headers(), sent_at) {
                        metrics.budget_remaining(&connection.app.id, &connection.name, left);
                    }
                    span.record("status", response.status().as_u16());
                    let status = response.status().as_u16();
                    metrics.request(&connection.app.id, Some(status));
                    if status == 401 && tokens.refreshable() && !refreshed {
                        refreshed = true;
                        tokens.invalidate(&token).await;
                        tracing::info!(op = %op.key, "401: refreshing the token and trying once more");
                        continue;
                    }
                    if status == 429 {
                        metrics.rate_limited(&connection.app.id, &connection.name);
                    }
                    if status == 429 && rate_waits < MAX_RATE_LIMIT_WAITS {
                        rate_waits += 1;
                        let wait = budget.wait_after_429(response.headers());
                        budget.pause(wait);
                        if wait > longest {
                            // Not waited out here: every request on the budget now fails fast
                            // until then, and the work is tried again later (replay).
                            return Err(wait_too_long(request, wait));
                        }
                        // In the caller's span (a run's: recipe, run, step), not the request's
                        // debug span, so the warning names what it belongs to at any log level.
                        tracing::warn!(op = %op.key, attempt, wait_ms = wait.as_millis() as u64, "429: waiting out the rate limit");
                        continue;
                    }
                    self.read_response(op, request, response, connection.app.max_response_bytes).await
                }
                Err(e) => {
                    crate::metrics::metrics().request(&connection.app.id, None);
                    Err(self.transport_error(request, &e))
                }
            };
        }
    }

    async fn send_once(
        &self,
        connection: &Connection,
        request: &PreparedRequest,
        token: &str,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder =
            self.http.request(method, request.url.clone()).timeout(connection.app.timeout).bearer_auth(token);
        for (k, v) in &request.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        builder = match &request.body {
            None => builder,
            Some(RequestBody::Json(v)) => builder.json(v),
            Some(RequestBody::Form(pairs)) => builder.form(pairs),
        };
        builder.send().await
    }

    fn transport_error(&self, request: &PreparedRequest, e: &reqwest::Error) -> HttpError {
        HttpError::Transport {
            request: request.label.clone(),
            reason: self.redactor.redact(&auth::without_url(e)),
            timeout: e.is_timeout(),
        }
    }

    async fn read_response(
        &self,
        op: &Operation,
        request: &PreparedRequest,
        mut response: reqwest::Response,
        max_body: u64,
    ) -> Result<Response, HttpError> {
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        let retry_after = ratelimit::retry_after(&headers);
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let bytes = self.read_body(request, &mut response, max_body).await?;
        if !(200..300).contains(&status) {
            return Err(HttpError::Status {
                request: request.label.clone(),
                status,
                message: self.redactor.redact(&error::extract_message(&bytes)),
                retry_after,
            });
        }
        let next_link = match op.pagination {
            Pagination::LinkHeader { .. } => next_link(&headers, &request.url).map_err(|reason| {
                HttpError::BadResponse { request: request.label.clone(), reason: self.redactor.redact(&reason) }
            })?,
            _ => None,
        };
        let body = match op.response {
            ResponseKind::Json if bytes.iter().all(u8::is_ascii_whitespace) => Value::Null,
            ResponseKind::Json => serde_json::from_slice(&bytes).map_err(|e| HttpError::BadResponse {
                request: request.label.clone(),
                reason: self.redactor.redact(&format!(
                    "expected JSON ({e}); the body starts with {:?}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
                )),
            })?,
            ResponseKind::Text => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
            ResponseKind::Binary => json!({
                "contentType": content_type,
                "size": bytes.len(),
                "base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
            }),
        };
        // A server may echo what it was sent (the Authorization header, a templated secret):
        // no secret leaves here, so none is printed, recorded or passed to a later step.
        let body = self.redactor.redact_json_deep(body);
        Ok(Response { status, body, next_link, headers })
    }

    /// The body, chunk by chunk, refused once it passes `max` bytes (a declared length
    /// over it is refused before anything is read).
    async fn read_body(
        &self,
        request: &PreparedRequest,
        response: &mut reqwest::Response,
        max: u64,
    ) -> Result<Vec<u8>, HttpError> {
        let too_large = || HttpError::BadResponse {
            request: request.label.clone(),
            reason: format!(
                "the response body is larger than {max} bytes (the app's max_response_bytes); it was not read"
            ),
        };
        if response.content_length().is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport_error(request, &e))? {
            if body.len() as u64 + chunk.len() as u64 > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn connection_state(&self, connection: &Connection) -> Arc<ConnectionState> {
        if let Some(state) = self.connections.read().unwrap_or_else(|p| p.into_inner()).get(&connection.name) {
            return Arc::clone(state);
        }
        let state = Arc::new(ConnectionState {
            budget: self.budget(connection),
            tokens: Arc::new(TokenSource::new(connection)),
            slots: Arc::new(Semaphore::new(connection.concurrency.get() as usize)),
        });
        let mut map = self.connections.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(connection.name.clone()).or_insert(state))
    }

    fn budget(&self, connection: &Connection) -> Arc<Budget> {
        let app = &connection.app;
        let owner = match app.rate_limits.per {
            BudgetOwner::Location => connection
                .location_id
                .as_deref()
                .or(connection.company_id.as_deref())
                .map(str::to_owned)
                .unwrap_or_else(|| format!("connection:{}", connection.name)),
            BudgetOwner::User => format!("connection:{}", connection.name),
        };
        let key = format!("{}:{owner}", app.id);
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        budgets
            .entry(key.clone())
            .or_insert_with(|| {
                let budget = Budget::new(&app.rate_limits.limits, app.rate_limits.headers);
                // Several workers share one store: the budget is theirs together.
                Arc::new(match &self.store {
                    Some(store) if store.is_shared() => budget.shared_through(store.clone(), key),
                    _ => budget,
                })
            })
            .clone()
    }

    /// The raw reqwest client, for the OAuth code exchange.
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.http
    }
}

/// A 429 whose wait is longer than the retry policy allows.
fn wait_too_long(request: &PreparedRequest, wait: Duration) -> HttpError {
    let until = chrono::Utc::now() + chrono::TimeDelta::from_std(wait).unwrap_or(chrono::TimeDelta::zero());
    HttpError::Status {
        request: request.label.clone(),
        status: 429,
        message: format!(
            "rate limited: the server asks to wait until {} ({}), longer than the retry policy waits; try again later",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            humantime::format_duration(Duration::from_secs(wait.as_secs()))
        ),
        retry_after: Some(wait),
    }
}

/// A read-only connection refuses operations with a write scope, before anything is sent.
pub fn check_access(connection: &Connection, op: &Operation) -> Result<(), HttpError> {
    if connection.access == Access::ReadOnly && op.writes() {
        return Err(HttpError::ReadOnly {
            op: op.key.to_string(),
            scope: op.scope.as_ref().map(|s| s.0.clone()).unwrap_or_else(|| op.method.as_str().to_owned()),
            connection: connection.name.clone(),
        });
    }
    if connection.app.id != op.key.app {
        return Err(HttpError::InvalidInput {
            op: op.key.to_string(),
            message: format!(
                "connection `{}` is for app `{}`, not `{}`",
                connection.name, connection.app.id, op.key.app
            ),
        });
    }
    Ok(())
}

/// The `rel="next"` target of a response, as RFC 8288 reads Link headers: several links in
/// one header value or spread over several headers, commas and semicolons inside `<...>`
/// (Capsule keeps `embed=tags,fields` in its next URL), a `rel` naming several relation
/// types (`rel="prev next"`), and targets relative to the URL that was requested. The
/// `http-link` crate implements the parsing algorithm of the RFC's appendix B.
fn next_link(headers: &reqwest::header::HeaderMap, request_url: &url::Url) -> Result<Option<url::Url>, String> {
    for value in headers.get_all(reqwest::header::LINK) {
        let text = value.to_str().map_err(|_| "a Link header holds bytes that are not text".to_owned())?;
        let links = http_link::parse_link_header(text, request_url)
            .map_err(|e| format!("the Link header `{text}` is unreadable: {e}"))?;
        if let Some(next) = links.into_iter().find(|l| l.rel == "next") {
            return Ok(Some(next.target));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, LINK};

    fn next(values: &[&str], request: &str) -> Result<Option<String>, String> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(LINK, HeaderValue::from_str(v).unwrap());
        }
        next_link(&headers, &url::Url::parse(request).unwrap()).map(|u| u.map(String::from))
    }

    const TASKS: &str = "https://api.capsulecrm.com/api/v2/tasks?status=open,completed,pending&perPage=100";

    #[test]
    fn finds_the_next_link_among_several() {
        let h = r#"<https://api.capsulecrm.com/api/v2/parties?page=3&perPage=100>; rel="next", <https://api.capsulecrm.com/api/v2/parties?page=1>; rel="prev""#;
        assert_eq!(
            next(&[h], TASKS).unwrap().as_deref(),
            Some("https://api.capsulecrm.com/api/v2/parties?page=3&perPage=100")
        );
        assert_eq!(next(&[r#"<https://x/p?page=1>; rel="prev""#], TASKS).unwrap(), None);
        assert_eq!(next(&[], TASKS).unwrap(), None);
    }

    #[test]
    fn keeps_commas_inside_the_target() {
        let h = r#"<https://api.capsulecrm.com/api/v2/tasks?status=open,completed,pending&perPage=100&page=2>; rel="next", <https://api.capsulecrm.com/api/v2/tasks?status=open,completed,pending&perPage=100&page=1>; rel="first""#;
        assert_eq!(
            next(&[h], TASKS).unwrap().as_deref(),
            Some("https://api.capsulecrm.com/api/v2/tasks?status=open,completed,pending&perPage=100&page=2")
        );
        let embed = r#"<https://api.capsulecrm.com/api/v2/parties?embed=tags,fields,organisation&page=2>; rel=next"#;
        assert_eq!(
            next(&[embed], TASKS).unwrap().as_deref(),
            Some("https://api.capsulecrm.com/api/v2/parties?embed=tags,fields,organisation&page=2")
        );
    }

    #[test]
    fn resolves_relative_targets_against_the_request_url() {
        let request = "https://api.capsulecrm.com/api/v2/parties?embed=tags,fields&page=1";
        assert_eq!(
            next(&[r#"<?page=2>; rel="next""#], request).unwrap().as_deref(),
            Some("https://api.capsulecrm.com/api/v2/parties?page=2")
        );
        assert_eq!(
            next(&[r#"</api/v2/parties?page=2&embed=tags,fields>; rel="next""#], request).unwrap().as_deref(),
            Some("https://api.capsulecrm.com/api/v2/parties?page=2&embed=tags,fields")
        );
    }

    #[test]
    fn reads_links_spread_over_several_headers_and_rels_with_several_types() {
        let first = r#"<https://api.capsulecrm.com/api/v2/parties?page=1>; rel="first""#;
        let second = r#"<https://api.capsulecrm.com/api/v2/parties?page=4>; rel="prev next""#;
        assert_eq!(
            next(&[first, second], TASKS).unwrap().as_deref(),
            Some("https://api.capsulecrm.com/api/v2/parties?page=4")
        );
        // Relation types are case-insensitive.
        assert_eq!(
            next(&[r#"<?page=9>; rel="NEXT""#], TASKS).unwrap().as_deref(),
            Some("https://api.capsulecrm.com/api/v2/tasks?page=9")
        );
    }

    #[test]
    fn an_unreadable_link_header_is_an_error_not_the_last_page() {
        let err = next(&["https://x/p?page=2; rel=next"], TASKS).unwrap_err();
        assert!(err.contains("is unreadable"), "{err}");
    }
}
