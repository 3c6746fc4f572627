//! What a handler sees of a request and what it gives back, with the two APIs' error
//! shapes: GHL answers like NestJS (`{statusCode, message, error}`), Capsule with
//! `{message, errors[]}` (and `{error}` for its rate limit).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// A request that passed authentication, the rate limit and input checks.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// Path parameters, percent-decoded.
    pub params: BTreeMap<String, String>,
    /// Query pairs in the order sent, decoded.
    pub query: Vec<(String, String)>,
    /// The JSON body; an empty object when none was sent.
    pub body: Value,
}

impl ApiRequest {
    pub fn param(&self, name: &str) -> &str {
        self.params.get(name).map(String::as_str).unwrap_or_default()
    }

    /// The first value of a query parameter, if present and not empty.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    /// A query parameter read as a number.
    pub fn query_number(&self, name: &str) -> Option<f64> {
        self.query(name).and_then(|v| v.trim().parse::<f64>().ok())
    }

    pub fn body_map(&self) -> Map<String, Value> {
        self.body.as_object().cloned().unwrap_or_default()
    }

    pub fn body_str(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }
}

/// An answer: status, JSON body and extra headers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Reply { status: 200, body, headers: Vec::new() }
    }

    pub fn created(body: Value) -> Self {
        Reply { status: 201, body, headers: Vec::new() }
    }

    pub fn with_header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.to_owned(), value));
        self
    }

    /// GHL's NestJS-style error.
    pub fn ghl_error(status: u16, message: impl Into<String>) -> Self {
        Reply {
            status,
            body: json!({"statusCode": status, "message": message.into(), "error": reason(status)}),
            headers: Vec::new(),
        }
    }

    /// GHL's validation error: every problem in `message`.
    pub fn ghl_invalid(messages: Vec<String>) -> Self {
        Reply {
            status: 422,
            body: json!({"statusCode": 422, "message": messages, "error": reason(422)}),
            headers: Vec::new(),
        }
    }

    /// Capsule's error: a message and, for validation, the fields at fault.
    pub fn capsule_error(status: u16, message: &str) -> Self {
        Reply { status, body: json!({"message": message}), headers: Vec::new() }
    }

    pub fn capsule_invalid(resource: &str, field: &str, message: String) -> Self {
        Reply {
            status: 422,
            body: json!({
                "message": "Validation Failed",
                "errors": [{"message": message, "resource": resource, "field": field}],
            }),
            headers: Vec::new(),
        }
    }

    pub fn capsule_not_found() -> Self {
        Self::capsule_error(404, "Could not find resource")
    }
}

/// The reason phrase of a status, as NestJS puts it in `error`.
pub fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}
