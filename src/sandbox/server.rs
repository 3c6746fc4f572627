//! The HTTP front: every API request passes the same gates in the order the real services
//! apply them (bearer token, rate limit, route, GHL's `Version` header, the body checked
//! against the catalog's inputs, the location), then meets the injected faults and reaches
//! its handler. The control API (`/_sandbox/...`) skips all of it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Bytes, to_bytes};
use axum::extract::{ConnectInfo, Request, State as AxumState};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::faults::{Cut, Fault, LostAs, roll};
use super::log::{self, LoggedRequest};
use super::routes::{Api, Lookup, RouteTable, Target};
use super::state::State;
use super::wire::{ApiRequest, Reply};
use super::{capsule, control, ghl, oauth, push};
use crate::catalog::{BodyEncoding, InputLocation, InputType, Method, Operation};

/// Bodies larger than this are refused with a 413.
const MAX_BODY: usize = 2 * 1024 * 1024;
const CAPSULE_PREFIX: &str = "/api/v2";

/// What the handlers share.
#[derive(Debug)]
pub struct Shared {
    pub state: Mutex<State>,
    pub routes: RouteTable,
}

impl Shared {
    /// The state; a handler that panicked cannot leave it half-changed in a way that
    /// matters more than stopping the sandbox would, so a poisoned lock is used as is.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    control::router().fallback(api).with_state(shared)
}

/// What processing decided: the reply, and whether its delivery is sabotaged.
struct Outcome {
    reply: Reply,
    fault: Fault,
    latency: Duration,
    /// Which API the request was for, and the budget it was counted against (for the log).
    api: Api,
    counts_against: Option<String>,
}

async fn api(
    AxumState(shared): AxumState<Arc<Shared>>,
    ConnectInfo(cut): ConnectInfo<Cut>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return respond(Reply::ghl_error(413, "request entity too large")),
    };
    let outcome = {
        let mut state = shared.lock();
        // Taken under the lock, as the rate limiter reads its own clock: the log's windows
        // are the limiter's.
        let at_ms = state.log.now_ms();
        let incoming = Incoming { method: &parts.method, uri: &parts.uri, headers: &parts.headers, body: &bytes };
        let outcome = process(&mut state, &shared.routes, &incoming);
        let (body, body_cut) = log::kept_body(parts.method.as_str(), &bytes);
        state.log.push(LoggedRequest {
            at_ms,
            api: outcome.api,
            counts_against: outcome.counts_against.clone(),
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            status: outcome.reply.status,
            lost: matches!(outcome.fault, Fault::Lose(_)),
            body,
            body_cut,
        });
        outcome
    };
    if !outcome.latency.is_zero() {
        tokio::time::sleep(outcome.latency).await;
    }
    match outcome.fault {
        Fault::Lose(LostAs::Close) => {
            cut.cut();
            // Never delivered: the connection fails as soon as this is written.
            StatusCode::OK.into_response()
        }
        Fault::Lose(LostAs::GatewayTimeout) => respond(Reply::ghl_error(504, "Gateway Timeout")),
        Fault::None | Fault::Fail => respond(outcome.reply),
    }
}

fn respond(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if status == StatusCode::NO_CONTENT {
        status.into_response()
    } else {
        (status, axum::Json(reply.body)).into_response()
    };
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

fn method_of(method: &axum::http::Method) -> Option<Method> {
    Some(match method.as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        _ => return None,
    })
}

/// A request as read off the wire.
#[derive(Clone, Copy)]
struct Incoming<'a> {
    method: &'a axum::http::Method,
    uri: &'a axum::http::Uri,
    headers: &'a HeaderMap,
    body: &'a Bytes,
}

/// Steps 0 and 1 (the token endpoint, the bearer token), then the rest in `authorized`.
fn process(state: &mut State, routes: &RouteTable, incoming: &Incoming<'_>) -> Outcome {
    let Incoming { method: http_method, uri, headers, body } = *incoming;
    let latency = state.faults.latency;
    let full_path = uri.path();
    let (api, path) = match full_path.strip_prefix(CAPSULE_PREFIX) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => (Api::Capsule, rest),
        _ => (Api::Ghl, full_path),
    };
    state.counts.total += 1;
    match api {
        Api::Ghl => state.counts.ghl += 1,
        Api::Capsule => state.counts.capsule += 1,
    }

    let clean = |reply: Reply| Outcome { reply, fault: Fault::None, latency, api, counts_against: None };

    // 0. The OAuth token endpoint (both APIs' token URLs end in /oauth/token).
    if full_path == "/oauth/token" && http_method == axum::http::Method::POST {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
        return clean(oauth::token(state, &form));
    }

    // 1. A bearer token: any non-empty one, except that one issued by /oauth/token must be
    //    known and unexpired.
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let accepted = token.as_deref().map(|t| state.oauth.check(t, state.clock.current()));
    let Some(token) = token.filter(|_| matches!(accepted, Some(oauth::Check::Static | oauth::Check::Valid))) else {
        return clean(match api {
            Api::Ghl => Reply::ghl_error(401, "Invalid JWT"),
            Api::Capsule => {
                let message = match accepted {
                    Some(oauth::Check::Expired) => "Authentication failed: the access token has expired",
                    _ => "Authentication failed: no valid bearer token",
                };
                Reply::capsule_error(401, message)
                    .with_header("WWW-Authenticate", "Bearer realm=\"Capsule\", error=\"invalid_token\"".into())
            }
        });
    };

    // The budget the request counts against from here on: the location's, or the token's.
    let counts_against = match api {
        Api::Ghl => state.ghl.location_id.clone(),
        Api::Capsule => token.clone(),
    };
    let mut outcome = authorized(state, routes, incoming, api, path, &token);
    outcome.counts_against = Some(counts_against);
    outcome
}

/// Steps 2 to 7, for a request whose bearer token passed.
fn authorized(
    state: &mut State,
    routes: &RouteTable,
    incoming: &Incoming<'_>,
    api: Api,
    path: &str,
    token: &str,
) -> Outcome {
    let Incoming { method: http_method, uri, headers, body } = *incoming;
    let latency = state.faults.latency;
    let clean = |reply: Reply| Outcome { reply, fault: Fault::None, latency, api, counts_against: None };
    let full_path = uri.path();

    // 2. The rate limit.
    let limited = match api {
        Api::Ghl => state.limits.ghl(),
        Api::Capsule => state.limits.capsule(token),
    };
    let limit_headers = match limited {
        Ok(h) => h,
        Err(reply) => {
            state.counts.rate_limited += 1;
            return clean(reply);
        }
    };
    let with_limits = |mut reply: Reply| {
        reply.headers.extend(limit_headers.iter().cloned());
        reply
    };

    // 3. The route. Capsule's REST hook endpoints are not catalog operations (ghlflow
    //    manages hooks itself rather than through recipes).
    if api == Api::Capsule && (path == "/resthooks" || path.starts_with("/resthooks/")) {
        let id = path.strip_prefix("/resthooks/").filter(|s| !s.is_empty());
        if id.is_some_and(|i| i.contains('/')) {
            return clean(with_limits(Reply::capsule_not_found()));
        }
        return clean(with_limits(push::rest_hooks(state, http_method.as_str(), id, body)));
    }
    let Some(method) = method_of(http_method) else {
        return clean(with_limits(not_found(api, http_method.as_str(), full_path, true)));
    };
    let (target, params) = match routes.find(api, method, path) {
        Lookup::Found { target, params } => (target, params),
        // Capsule serves reads only: every token here holds the `read` scope alone, so a
        // write to a resource that exists is a 403 for the scope (as for a read-only token on
        // the live API), not a 405.
        Lookup::WrongMethod if api == Api::Capsule && method != Method::Get => {
            return clean(with_limits(
                Reply::capsule_error(403, "Forbidden: this token has the read scope only; writing needs write")
                    .with_header(
                        "WWW-Authenticate",
                        "Bearer realm=\"Capsule\", error=\"insufficient_scope\", scope=\"read write\"".into(),
                    ),
            ));
        }
        Lookup::WrongMethod => return clean(with_limits(not_found(api, http_method.as_str(), full_path, true))),
        Lookup::NotFound => return clean(with_limits(not_found(api, http_method.as_str(), full_path, false))),
    };
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let op = match target {
        Target::Extra(name) => {
            let req = ApiRequest { params, query, body: json!({}) };
            return clean(with_limits(capsule::handle(state, name, &req, path)));
        }
        Target::Operation(op) => Arc::clone(op),
    };

    // 4. GHL wants a Version header. The live API answers a missing one with a 401 (not a
    //    400), "version header was not found.", and an unpublished one with a 401 "version
    //    header is invalid". It is said to accept any published version on any endpoint; the
    //    sandbox is stricter and wants the operation's own, to catch a catalog mistake.
    if api == Api::Ghl
        && let Some(expected) = &op.version
    {
        match headers.get("version").and_then(|v| v.to_str().ok()) {
            None => return clean(with_limits(Reply::ghl_error(401, "version header was not found."))),
            Some(v) if v.trim() != expected => {
                return clean(with_limits(Reply::ghl_error(
                    401,
                    format!("version header is invalid: `{v}`; this endpoint takes {expected}"),
                )));
            }
            Some(_) => {}
        }
    }

    // 5. The body and query, checked against the catalog's inputs.
    let body = match read_body(&op, method, headers, body) {
        Ok(b) => b,
        Err(reply) => return clean(with_limits(reply)),
    };
    if let Err(reply) = check_inputs(api, &op, &query, &body) {
        return clean(with_limits(reply));
    }
    let req = ApiRequest { params, query, body };

    if api == Api::Capsule {
        return clean(with_limits(capsule::handle(state, &op.key.name, &req, path)));
    }

    // 6. The token's location.
    if let Err(reply) = check_location(state, &req) {
        return clean(with_limits(reply));
    }

    // 7. Faults, then the handler.
    let writes = op.writes();
    if writes {
        state.counts.ghl_writes += 1;
    }
    let fault =
        if writes || state.faults.fault_reads { roll(&state.faults, &mut state.fault_rng) } else { Fault::None };
    if fault == Fault::Fail {
        state.counts.failed += 1;
        let reply = with_limits(Reply::ghl_error(500, "Internal server error"));
        return Outcome { reply, fault, latency, api, counts_against: None };
    }
    if matches!(fault, Fault::Lose(_)) {
        state.counts.lost += 1;
    }
    Outcome { reply: with_limits(ghl::handle(state, &op, &req)), fault, latency, api, counts_against: None }
}

fn not_found(api: Api, method: &str, path: &str, wrong_method: bool) -> Reply {
    match (api, wrong_method) {
        (Api::Ghl, _) => Reply::ghl_error(404, format!("Cannot {method} {path}")),
        (Api::Capsule, true) => Reply::capsule_error(405, "Method not allowed"),
        (Api::Capsule, false) => Reply::capsule_not_found(),
    }
}

/// The request body as JSON: `{}` when there is none (or the method takes none), form
/// fields as strings, a 400 when it does not parse.
fn read_body(op: &Operation, method: Method, headers: &HeaderMap, bytes: &Bytes) -> Result<Value, Reply> {
    if method == Method::Get || bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(if op.body == BodyEncoding::Array { json!([]) } else { json!({}) });
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let map: Map<String, Value> =
            url::form_urlencoded::parse(bytes).map(|(k, v)| (k.into_owned(), Value::String(v.into_owned()))).collect();
        return Ok(Value::Object(map));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        Reply::ghl_error(400, format!("Unexpected token in JSON at line {} column {}", e.line(), e.column()))
    })?;
    match (op.body, &value) {
        (BodyEncoding::Array, Value::Array(_)) | (BodyEncoding::Json | BodyEncoding::Form, Value::Object(_)) => {
            Ok(value)
        }
        (BodyEncoding::Array, _) => Err(Reply::ghl_invalid(vec!["the body must be an array".into()])),
        _ => Err(Reply::ghl_invalid(vec!["the body must be a JSON object".into()])),
    }
}

/// What can be wrong with a request's inputs.
enum Problem<'a> {
    Unknown(&'a str),
    Missing(&'a str),
    WrongType(&'a str, &'a InputType),
    NotAllowed(&'a str, String),
}

impl Problem<'_> {
    fn field(&self) -> &str {
        match self {
            Problem::Unknown(f) | Problem::Missing(f) | Problem::WrongType(f, _) | Problem::NotAllowed(f, _) => f,
        }
    }

    /// GHL's wording (class-validator's).
    fn ghl(&self) -> String {
        match self {
            Problem::Unknown(name) => format!("property {name} should not exist"),
            Problem::Missing(name) => format!("{name} should not be empty"),
            Problem::WrongType(name, ty) => match ty {
                InputType::String => format!("{name} must be a string"),
                InputType::Integer => format!("{name} must be an integer number"),
                InputType::Number => format!("{name} must be a number conforming to the specified constraints"),
                InputType::Boolean => format!("{name} must be a boolean value"),
                InputType::Object => format!("{name} must be an object"),
                InputType::Array(_) => format!("{name} must be an array"),
                InputType::Any => format!("{name} is invalid"),
            },
            Problem::NotAllowed(name, list) => format!("{name} must be one of the following values: {list}"),
        }
    }

    /// Capsule's wording.
    fn capsule(&self) -> String {
        match self {
            Problem::Missing(name) => format!("{name} is required"),
            Problem::Unknown(name) => format!("{name} is not a valid field"),
            other => format!("{} is invalid", other.field()),
        }
    }
}

/// Unknown body properties, missing required inputs, wrong types and values outside an
/// input's list, all reported at once (422), in the API's own error shape.
fn check_inputs(api: Api, op: &Operation, query: &[(String, String)], body: &Value) -> Result<(), Reply> {
    let mut problems = Vec::new();
    if let Value::Object(fields) = body {
        for name in fields.keys() {
            if !op.inputs.iter().any(|i| i.location == InputLocation::Body && &i.name == name) {
                problems.push(Problem::Unknown(name));
            }
        }
    }
    for input in &op.inputs {
        let value = match input.location {
            InputLocation::Body => body.get(&input.name).filter(|v| !v.is_null()).cloned(),
            InputLocation::Query => query.iter().find(|(k, _)| k == &input.name).map(|(_, v)| json!(v)),
            InputLocation::Path | InputLocation::Header => continue,
        };
        let Some(value) = value else {
            if input.required {
                problems.push(Problem::Missing(&input.name));
            }
            continue;
        };
        // Query values are text; only body values have a JSON type to check.
        if input.location == InputLocation::Body && !input.ty.accepts(&value) {
            problems.push(Problem::WrongType(&input.name, &input.ty));
        } else if let Some(allowed) = &input.allowed {
            let fits = |v: &Value| allowed.iter().any(|a| a == v || a.as_str().is_some_and(|s| Some(s) == v.as_str()));
            let every_item_fits = match &value {
                Value::Array(items) => items.iter().all(fits),
                v => fits(v),
            };
            if !every_item_fits {
                let list: Vec<String> =
                    allowed.iter().map(|a| a.as_str().map(str::to_owned).unwrap_or(a.to_string())).collect();
                problems.push(Problem::NotAllowed(&input.name, list.join(", ")));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(match api {
        Api::Ghl => Reply::ghl_invalid(problems.iter().map(Problem::ghl).collect()),
        Api::Capsule => {
            let resource = capsule::resource(&op.key.category);
            let mut reply = Reply::capsule_invalid(resource, problems[0].field(), problems[0].capsule());
            reply.body["errors"] = problems
                .iter()
                .map(|p| json!({"message": p.capsule(), "resource": resource, "field": p.field()}))
                .collect();
            reply
        }
    })
}

/// A GHL token belongs to one location (and its company): naming another is a 403.
fn check_location(state: &State, req: &ApiRequest) -> Result<(), Reply> {
    let ghl = &state.ghl;
    let named = |name: &str| -> Vec<String> {
        let mut values: Vec<String> = req.query.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect();
        if let Some(v) = req.body.get(name).and_then(Value::as_str) {
            values.push(v.to_owned());
        }
        if let Some(v) = req.params.get(name) {
            values.push(v.clone());
        }
        values
    };
    let wrong_location = ["locationId", "location_id"].iter().flat_map(|n| named(n)).any(|v| v != ghl.location_id);
    let wrong_company = named("companyId").iter().any(|v| *v != ghl.company_id);
    if wrong_location || wrong_company {
        return Err(Reply::ghl_error(403, "The token does not have access to this location."));
    }
    Ok(())
}
