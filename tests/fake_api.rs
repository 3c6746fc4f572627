//! A fake HTTP API for the integration tests: an axum server on 127.0.0.1:0, spawned on the
//! test's tokio runtime, that records every request exactly as it arrived (method, raw path,
//! raw query, headers, body, arrival time) and answers with whatever the test's handler says.
//!
//! It knows nothing about GHL or Capsule: a test scripts the answers, either with a closure
//! (`FakeApi::start`) or with a fixed sequence (`FakeApi::scripted`). The server stops when
//! the `FakeApi` is dropped.

// Each test module uses the parts it needs.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::Value;

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// 0 for the first request the server saw.
    pub seq: usize,
    pub method: String,
    /// The path exactly as sent: percent-encoding kept, nothing normalised.
    pub path: String,
    /// The raw query string (without `?`), if any.
    pub query: Option<String>,
    /// Header names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Recorded {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The query decoded into pairs, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query.as_deref().unwrap_or_default().as_bytes()).into_owned().collect()
    }

    /// The first value of a query parameter, decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// A form body decoded into pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.body.as_bytes()).into_owned().collect()
    }

    /// The body as JSON (Null if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// `Bearer xyz` -> `xyz`.
    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization").and_then(|v| v.strip_prefix("Bearer "))
    }
}

/// What the server answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How long the server waits before answering.
    pub delay: Duration,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: Value) -> Self {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// `200 {}`.
    pub fn ok() -> Self {
        Self::json(200, serde_json::json!({}))
    }

    /// An empty answer with this status.
    pub fn status(status: u16) -> Self {
        Reply { status, headers: Vec::new(), body: String::new(), delay: Duration::ZERO }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct Shared {
    log: Mutex<Vec<Recorded>>,
    handler: Mutex<Handler>,
}

/// A running fake server.
pub struct FakeApi {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub base_url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeApi {
    /// Starts a server that answers every request with `handler` (called after the request is
    /// recorded, so `requests()` inside it already includes it).
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> FakeApi {
        let shared = Arc::new(Shared { log: Mutex::default(), handler: Mutex::new(Arc::new(handler)) });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let app = axum::Router::new().fallback(answer).with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the fake API serves");
        });
        FakeApi { base_url: format!("http://{addr}"), shared, task }
    }

    /// Answers with `replies` in order, then with `then` for every further request.
    pub async fn scripted(replies: Vec<Reply>, then: Reply) -> FakeApi {
        let queue = Mutex::new(VecDeque::from(replies));
        FakeApi::start(move |_| lock(&queue).pop_front().unwrap_or_else(|| then.clone())).await
    }

    /// Replaces the handler for the requests that follow.
    pub fn set_handler(&self, handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        *lock(&self.shared.handler) = Arc::new(handler);
    }

    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.log).clone()
    }

    /// The requests whose raw path is `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    pub fn count(&self) -> usize {
        lock(&self.shared.log).len()
    }

    pub fn count_to(&self, path: &str) -> usize {
        lock(&self.shared.log).iter().filter(|r| r.path == path).count()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A test thread that panicked while holding a lock must not hide the real failure.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn answer(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let recorded = {
        let mut log = lock(&shared.log);
        let recorded = Recorded {
            seq: log.len(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
            at,
        };
        log.push(recorded.clone());
        recorded
    };
    let handler = Arc::clone(&lock(&shared.handler));
    let reply = handler(&recorded);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() = StatusCode::from_u16(reply.status).expect("a valid status");
    for (k, v) in reply.headers {
        response.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).expect("a valid header name"),
            HeaderValue::from_str(&v).expect("a valid header value"),
        );
    }
    response
}
