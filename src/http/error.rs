//! What can go wrong with a request, and whether trying again can help.

use std::time::Duration;

/// A failed request. Every variant names the request (`POST /contacts/upsert`) and, where
/// the API said something, carries its own message.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The inputs do not fit the operation; nothing was sent.
    #[error("{op}: {message}")]
    InvalidInput { op: String, message: String },
    /// A read-only connection was asked to write; nothing was sent.
    #[error("{op} writes (scope `{scope}`), but connection `{connection}` is read_only")]
    ReadOnly { op: String, scope: String, connection: String },
    /// The API answered with an error status.
    #[error("{request} failed: HTTP {status}{}", api_message(.message))]
    Status { request: String, status: u16, message: String, retry_after: Option<Duration> },
    /// No answer: connection refused, reset, or timed out.
    #[error("{request} failed: {reason}")]
    Transport { request: String, reason: String, timeout: bool },
    /// An answer that is not what the operation returns (bad JSON, for one).
    #[error("{request}: the server answered something unreadable: {reason}")]
    BadResponse { request: String, reason: String },
    /// Getting or refreshing a token failed.
    #[error("connection `{connection}`: {message}")]
    Auth { connection: String, message: String },
    /// Refused before sending: a URL off the connection's host, a path segment like `..`.
    #[error("{request}: refused: {reason}")]
    Refused { request: String, reason: String },
    /// The state store failed (tokens could not be saved).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn api_message(m: &str) -> String {
    if m.is_empty() { String::new() } else { format!(": {m}") }
}

impl HttpError {
    /// Whether the same request may succeed later: rate limits, timeouts, server errors and
    /// lost connections. Any other 4xx will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            HttpError::Status { status, .. } => *status == 429 || *status == 408 || *status >= 500,
            HttpError::Transport { .. } => true,
            _ => false,
        }
    }

    /// Whether the API said the record does not exist: a 404, or a 400 whose message says
    /// "not found" (GHL answers some missing records that way rather than with a 404).
    pub fn is_not_found(&self) -> bool {
        match self {
            HttpError::Status { status: 404, .. } => true,
            HttpError::Status { status: 400, message, .. } => message.to_ascii_lowercase().contains("not found"),
            _ => false,
        }
    }

    /// The HTTP status, when the API answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The API's own words from an error body: `message` (a string or a list), `error`, `msg`,
/// Capsule's `errors[].message`; otherwise the start of the body.
pub fn extract_message(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        let mut parts: Vec<String> = Vec::new();
        for key in ["message", "error", "msg", "error_description"] {
            match json.get(key) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => parts.push(s.clone()),
                Some(serde_json::Value::Array(items)) => {
                    parts.extend(items.iter().map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
                }
                _ => {}
            }
        }
        if let Some(errors) = json.get("errors").and_then(|e| e.as_array()) {
            for e in errors {
                if let Some(m) = e.get("message").and_then(|m| m.as_str()) {
                    parts.push(m.to_owned());
                }
            }
        }
        parts.dedup();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() > 300 {
        format!("{}...", text.chars().take(300).collect::<String>())
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_apis_message_in_its_usual_places() {
        assert_eq!(
            extract_message(br#"{"statusCode":400,"message":["email must be an email"]}"#),
            "email must be an email"
        );
        assert_eq!(
            extract_message(br#"{"message":"Validation Failed","errors":[{"message":"since is required"}]}"#),
            "Validation Failed; since is required"
        );
        assert_eq!(extract_message(b"<html>Bad Gateway</html>"), "<html>Bad Gateway</html>");
    }

    #[test]
    fn knows_what_to_retry() {
        let status =
            |s| HttpError::Status { request: "GET /x".into(), status: s, message: String::new(), retry_after: None };
        assert!(status(429).is_retryable());
        assert!(status(503).is_retryable());
        assert!(status(408).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(404).is_retryable());
    }
}
