//! The request log: every request to either API, in the order the sandbox took it in, with
//! when it arrived, which budget it counts against and how it was answered, so a test can
//! check from the outside what a client (or several of them) did: how many requests fell in
//! any 10 s window, whether a token endpoint was called once, whether a write was sent twice.
//!
//! Times are milliseconds on a monotonic clock started with the sandbox, read under the same
//! lock and at the same moment as the rate limiter's own clock, so the log's windows are the
//! limiter's windows. Bodies are kept for writes only (the requests a test asks "was this sent
//! again?" about), cut at `MAX_BODY`; reads keep none. The log is bounded: past `MAX_ENTRIES`
//! the oldest entries are dropped, so a long-running `ghlflow sandbox` does not grow without end.

use std::collections::VecDeque;
use std::time::Instant;

use super::routes::Api;

/// Entries kept; older ones are dropped.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Bytes of a write's body kept (a longer one is cut, and says so).
pub const MAX_BODY: usize = 16 * 1024;

/// One request as the sandbox took it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// Milliseconds since the sandbox started (monotonic), when the request was taken in.
    pub at_ms: u64,
    pub api: Api,
    /// The rate-limit budget it was counted against: the location id for GHL, the bearer
    /// token for Capsule. None when it reached no limiter: the OAuth token endpoint, or a
    /// request refused at the token gate.
    pub counts_against: Option<String>,
    pub method: String,
    /// The full path as sent (Capsule's starts with `/api/v2`), without the query.
    pub path: String,
    pub query: Option<String>,
    /// The status answered (a 429 for a request over the limit). When the answer was lost on
    /// purpose (`lost`), the status the handler would have answered.
    pub status: u16,
    /// The answer was lost on purpose (the connection cut, or a 504 instead).
    pub lost: bool,
    /// A write's body as text (none for GET), at most `MAX_BODY` bytes.
    pub body: Option<String>,
    /// The body was longer than `MAX_BODY` and is cut.
    pub body_cut: bool,
}

/// The log itself, kept in the sandbox state.
#[derive(Debug)]
pub struct RequestLog {
    started: Instant,
    entries: VecDeque<LoggedRequest>,
    cap: usize,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog::with_capacity(MAX_ENTRIES)
    }
}

impl RequestLog {
    /// A log keeping at most `cap` entries (tests use a small one).
    pub fn with_capacity(cap: usize) -> Self {
        RequestLog { started: Instant::now(), entries: VecDeque::new(), cap: cap.max(1) }
    }

    /// Milliseconds since the sandbox started, on the log's clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn push(&mut self, entry: LoggedRequest) {
        while self.entries.len() >= self.cap {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    pub fn entries(&self) -> Vec<LoggedRequest> {
        self.entries.iter().cloned().collect()
    }
}

/// A write's body as kept in the log: its text (invalid UTF-8 replaced) cut at `MAX_BODY`
/// on a character boundary, and whether it was cut. None for a GET or an empty body.
pub fn kept_body(method: &str, bytes: &[u8]) -> (Option<String>, bool) {
    if method == "GET" || bytes.is_empty() {
        return (None, false);
    }
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= MAX_BODY {
        return (Some(text.into_owned()), false);
    }
    let mut end = MAX_BODY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (Some(text[..end].to_owned()), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_ms: u64, path: &str) -> LoggedRequest {
        LoggedRequest {
            at_ms,
            api: Api::Ghl,
            counts_against: Some("loc".into()),
            method: "GET".into(),
            path: path.into(),
            query: None,
            status: 200,
            lost: false,
            body: None,
            body_cut: false,
        }
    }

    #[test]
    fn past_its_capacity_the_log_drops_the_oldest() {
        let mut log = RequestLog::with_capacity(3);
        for i in 0..5 {
            log.push(entry(i, &format!("/r{i}")));
        }
        let kept: Vec<String> = log.entries().into_iter().map(|e| e.path).collect();
        assert_eq!(kept, ["/r2", "/r3", "/r4"]);
    }

    #[test]
    fn only_writes_keep_a_body_and_a_long_one_is_cut_on_a_character() {
        assert_eq!(kept_body("GET", b"{\"a\":1}"), (None, false));
        assert_eq!(kept_body("POST", b""), (None, false));
        assert_eq!(kept_body("POST", b"{\"a\":1}"), (Some("{\"a\":1}".into()), false));
        // 'é' is two bytes: a cut falling inside it moves back before it.
        let long = format!("a{}", "é".repeat(MAX_BODY));
        let (body, cut) = kept_body("PUT", long.as_bytes());
        let body = body.unwrap();
        assert!(cut && body.len() < MAX_BODY && body.len() >= MAX_BODY - 1, "{}", body.len());
        assert!(body.starts_with("aé"));
    }

    #[test]
    fn the_clock_only_moves_forward() {
        let log = RequestLog::default();
        let a = log.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(log.now_ms() >= a + 5);
    }
}
