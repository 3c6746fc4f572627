//! The control API, `/_sandbox/...` (JSON, no token): change the Capsule account, look at
//! what reached GHL, set faults, read the counters. It is the HTTP face of the methods on
//! `Sandbox`, for a sandbox started from the command line.
//!
//! - `GET  /_sandbox`: where the APIs are, the sandbox clock, counts and faults
//! - `POST /_sandbox/capsule/{people,notes,tasks}/{action}` `{"count": n}` → `{"ids": [...]}`
//!   (people: edit, delete, add, restrict (hidden from the token's user, listed as
//!   `restrictedParties`); notes: edit, add; tasks: complete, add, pend (set to PENDING))
//! - `GET  /_sandbox/capsule/counts`, `/_sandbox/capsule/parties/{id}`
//! - `GET  /_sandbox/ghl/counts`, `/ghl/contacts`, `/ghl/contacts/{id}/notes`,
//!   `/ghl/contacts/{id}/tasks`, `/ghl/messages`
//! - `POST /_sandbox/ghl/contacts/add` `{"count": n}`: new leads, as from a web form
//! - `POST /_sandbox/ghl/opportunities/win` `{"count": n}`: a salesperson wins open deals
//! - `POST /_sandbox/ghl/contacts/{id}/delete`: a person deletes the contact in GHL (its id
//!   answers 404 from then on)
//! - `POST /_sandbox/ghl/contacts/{id}/reply` `{"body": "...", "type": "SMS"}` (both
//!   optional): the contact sends a message (an `InboundMessage` webhook)
//! - `POST /_sandbox/ghl/contacts/{id}/merge` `{"into": "<id>"}`: a person merges the contact
//!   into another (tags, notes, tasks move; its id answers 404 from then on)
//! - `POST /_sandbox/oauth/grant` `{"expires_in": s}` (optional): a new access and refresh token
//!   for `POST /oauth/token`, as if a user had approved the app; `expires_in` sets the
//!   lifetime of this and later access tokens
//! - `POST /_sandbox/clock/advance` `{"seconds": s}`: moves the sandbox clock forward (tokens
//!   expire, new records are dated later) → `{"now": ...}`
//! - `GET|PUT /_sandbox/faults` (PUT takes any subset of the fields)
//! - `GET  /_sandbox/requests`
//! - `GET  /_sandbox/push`: the GHL webhook URL, the public key GHL webhooks are signed
//!   with (base64 SPKI and PEM), the Capsule REST hooks and the delivery faults
//! - `PUT  /_sandbox/push/ghl` `{"url": "http://..."}` (`null` turns GHL webhooks off)
//! - `GET|PUT /_sandbox/push/faults`: drop, duplicate, delay, reorder rates, `delay_ms`,
//!   `seed`, `max_attempts`, `retry_base_ms`, `retry_on` (`errors` or `429`), `timeout_ms`,
//!   `concurrency`
//! - `GET  /_sandbox/deliveries`: every delivery attempt (event, target, id, attempt, status)

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::capsule;
use super::faults::{DeliveryFaults, Faults};
use super::server::Shared;

type Ctx = AxumState<Arc<Shared>>;

pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sandbox", get(info))
        .route("/_sandbox/", get(info))
        .route("/_sandbox/capsule/{kind}/{action}", post(capsule_change))
        .route("/_sandbox/capsule/counts", get(|AxumState(s): Ctx| async move { ok(json!(s.lock().capsule_counts())) }))
        .route("/_sandbox/capsule/parties/{id}", get(capsule_party))
        .route("/_sandbox/ghl/counts", get(|AxumState(s): Ctx| async move { ok(json!(s.lock().ghl_counts())) }))
        .route("/_sandbox/ghl/contacts/add", post(ghl_add))
        .route("/_sandbox/ghl/opportunities/win", post(ghl_win))
        .route("/_sandbox/ghl/contacts/{id}/delete", post(ghl_delete))
        .route("/_sandbox/ghl/contacts/{id}/merge", post(ghl_merge))
        .route("/_sandbox/ghl/contacts/{id}/reply", post(ghl_reply))
        .route("/_sandbox/oauth/grant", post(oauth_grant))
        .route("/_sandbox/clock/advance", post(clock_advance))
        .route("/_sandbox/ghl/contacts", get(|AxumState(s): Ctx| async move { ok(json!(s.lock().ghl_contacts())) }))
        .route(
            "/_sandbox/ghl/contacts/{id}/notes",
            get(|AxumState(s): Ctx, Path(id): Path<String>| async move { ok(json!(s.lock().ghl_notes(&id))) }),
        )
        .route(
            "/_sandbox/ghl/contacts/{id}/tasks",
            get(|AxumState(s): Ctx, Path(id): Path<String>| async move { ok(json!(s.lock().ghl_tasks(&id))) }),
        )
        .route("/_sandbox/ghl/messages", get(|AxumState(s): Ctx| async move { ok(json!(s.lock().ghl_messages())) }))
        .route("/_sandbox/faults", get(|AxumState(s): Ctx| async move { ok(json!(s.lock().faults)) }).put(set_faults))
        .route("/_sandbox/requests", get(|AxumState(s): Ctx| async move { ok(json!(s.lock().counts)) }))
        .route("/_sandbox/push", get(push_info))
        .route("/_sandbox/push/ghl", axum::routing::put(set_ghl_url))
        .route(
            "/_sandbox/push/faults",
            get(|AxumState(s): Ctx| async move { ok(json!(s.lock().push.faults)) }).put(set_delivery_faults),
        )
        .route(
            "/_sandbox/deliveries",
            get(|AxumState(s): Ctx| async move {
                let log = s.lock().push.log();
                ok(json!(log.all()))
            }),
        )
        .route(
            "/_sandbox/{*rest}",
            axum::routing::any(|| async {
                error(StatusCode::NOT_FOUND, "no such control route; see GET /_sandbox".into())
            }),
        )
}

fn ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

/// Every control route with what it does, for `GET /_sandbox`.
const ROUTES: &[(&str, &str)] = &[
    ("GET  /_sandbox", "this page: where the APIs are, the clock, counts, faults and these routes"),
    ("POST /_sandbox/capsule/people/{edit,delete,add,restrict}", "change N Capsule people; body {\"count\": N}"),
    ("POST /_sandbox/capsule/notes/{edit,add}", "edit N notes (entry time kept) or add a note to N people"),
    ("POST /_sandbox/capsule/tasks/{complete,add,pend}", "complete, add or set to PENDING N tasks"),
    ("GET  /_sandbox/capsule/counts", "how many people, organisations, notes and tasks Capsule has"),
    ("GET  /_sandbox/capsule/parties/{id}", "one Capsule party, with its tags and fields"),
    ("GET  /_sandbox/ghl/counts", "what the GHL location holds"),
    ("GET  /_sandbox/ghl/contacts", "every GHL contact"),
    ("GET  /_sandbox/ghl/contacts/{id}/notes", "a GHL contact's notes"),
    ("GET  /_sandbox/ghl/contacts/{id}/tasks", "a GHL contact's tasks"),
    ("GET  /_sandbox/ghl/messages", "every message sent through GHL"),
    ("POST /_sandbox/ghl/contacts/add", "N new GHL leads, as from a web form"),
    ("POST /_sandbox/ghl/opportunities/win", "a salesperson wins N open deals"),
    ("POST /_sandbox/ghl/contacts/{id}/delete", "a person deletes a GHL contact (its id answers 404)"),
    (
        "POST /_sandbox/ghl/contacts/{id}/reply",
        "the contact sends a message; body {\"body\": \"...\", \"type\": \"SMS\"}",
    ),
    ("POST /_sandbox/ghl/contacts/{id}/merge", "merge a GHL contact into another; body {\"into\": \"<id>\"}"),
    ("POST /_sandbox/oauth/grant", "a new OAuth token pair; body {\"expires_in\": seconds} (optional)"),
    ("POST /_sandbox/clock/advance", "move the sandbox clock forward; body {\"seconds\": s}"),
    ("GET  /_sandbox/faults", "the faults in force"),
    ("PUT  /_sandbox/faults", "set faults: fail_rate, lose_responses, lost_as, latency_ms, fault_reads"),
    ("GET  /_sandbox/requests", "request counters: total, per API, writes, 429s, faults"),
    ("GET  /_sandbox/push", "GHL webhook URL and signing public key, Capsule REST hooks, delivery faults"),
    ("PUT  /_sandbox/push/ghl", "where GHL webhooks go; body {\"url\": \"http://...\"} (null: off)"),
    ("GET  /_sandbox/push/faults", "the delivery faults in force"),
    (
        "PUT  /_sandbox/push/faults",
        "set delivery faults: drop_rate, duplicate_rate, delay_rate, delay_ms, reorder_rate, seed, \
         max_attempts, retry_base_ms, retry_on (errors|429), timeout_ms, concurrency",
    ),
    ("GET  /_sandbox/deliveries", "every delivery attempt: event, target, id, attempt, status"),
];

async fn info(AxumState(shared): Ctx) -> Response {
    let state = shared.lock();
    let routes: Vec<String> = ROUTES.iter().map(|(route, what)| format!("{route}: {what}")).collect();
    ok(json!({
        "routes": routes,
        "ghl_base_url": state.base_url,
        "capsule_base_url": format!("{}/api/v2", state.base_url),
        "location_id": state.ghl.location_id,
        "company_id": state.ghl.company_id,
        "now": super::clock::iso_sec(state.clock.peek()),
        "ghl": state.ghl_counts(),
        "capsule": state.capsule_counts(),
        "requests": state.counts,
        "faults": state.faults,
    }))
}

/// `{"count": n}`, 1 when the body is empty.
fn count(body: &Bytes) -> Result<usize, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(1);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body must be JSON like {{\"count\": 5}}: {e}"))?;
    value
        .get("count")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| "`count` must be a whole number".into())
}

async fn capsule_change(AxumState(shared): Ctx, Path((kind, action)): Path<(String, String)>, body: Bytes) -> Response {
    let n = match count(&body) {
        Ok(n) => n,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let mut state = shared.lock();
    let ids = match (kind.as_str(), action.as_str()) {
        ("people", "edit") => capsule::edit_people(&mut state, n),
        ("people", "delete") => capsule::delete_people(&mut state, n),
        ("people", "add") => capsule::add_people(&mut state, n),
        ("people", "restrict") => capsule::restrict_people(&mut state, n),
        ("notes", "edit") => capsule::edit_notes(&mut state, n),
        ("notes", "add") => capsule::add_notes(&mut state, n),
        ("tasks", "complete") => capsule::complete_tasks(&mut state, n),
        ("tasks", "add") => capsule::add_tasks(&mut state, n),
        ("tasks", "pend") => capsule::pend_tasks(&mut state, n),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown change `{kind}/{action}`; try people/edit, people/delete, people/add, \
                     people/restrict, notes/edit, notes/add, tasks/complete, tasks/add, tasks/pend"
                ),
            );
        }
    };
    ok(json!({"ids": ids}))
}

async fn ghl_add(AxumState(shared): Ctx, body: Bytes) -> Response {
    match count(&body) {
        Ok(n) => ok(json!({"ids": super::ghl::add_leads(&mut shared.lock(), n)})),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

async fn ghl_win(AxumState(shared): Ctx, body: Bytes) -> Response {
    match count(&body) {
        Ok(n) => ok(json!({"ids": super::ghl::opportunities::win(&mut shared.lock(), n)})),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

async fn ghl_delete(AxumState(shared): Ctx, Path(id): Path<String>) -> Response {
    if super::ghl::delete_contact(&mut shared.lock(), &id) {
        ok(json!({"deleted": id}))
    } else {
        error(StatusCode::NOT_FOUND, format!("no contact {id}"))
    }
}

async fn ghl_merge(AxumState(shared): Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let into = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("into").and_then(Value::as_str).map(str::to_owned));
    let Some(into) = into else {
        return error(StatusCode::BAD_REQUEST, "the body must be JSON like {\"into\": \"<contact id>\"}".into());
    };
    match super::ghl::merge_contacts(&mut shared.lock(), &id, &into) {
        Ok(()) => ok(json!({"merged": id, "into": into})),
        Err(message) => error(StatusCode::NOT_FOUND, message),
    }
}

async fn ghl_reply(AxumState(shared): Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let fields = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(fields)) => fields,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the body must be JSON like {\"body\": \"Yes, Tuesday works\", \"type\": \"SMS\"}".into(),
                );
            }
        }
    };
    let text = |name: &str, default: &'static str| -> Result<String, String> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(default.to_owned()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("`{name}` must be a string")),
        }
    };
    let (message, channel) = match (text("body", "Thanks, see you then."), text("type", "SMS")) {
        (Ok(m), Ok(c)) => (m, c),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    match super::ghl::receive_message(&mut shared.lock(), &id, &channel, &message) {
        Some(message_id) => ok(json!({"messageId": message_id})),
        None => error(StatusCode::NOT_FOUND, format!("no contact {id}")),
    }
}

/// An optional whole number field of an optional JSON body.
fn optional_number(body: &Bytes, field: &str) -> Result<Option<u64>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("the body must be JSON: {e}"))?;
    match value.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| format!("`{field}` must be a whole number")),
    }
}

async fn oauth_grant(AxumState(shared): Ctx, body: Bytes) -> Response {
    let expires_in = match optional_number(&body, "expires_in") {
        Ok(n) => n,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let mut state = shared.lock();
    if let Some(seconds) = expires_in {
        state.oauth.expires_in = seconds;
    }
    ok(json!(super::oauth::grant(&mut state)))
}

async fn clock_advance(AxumState(shared): Ctx, body: Bytes) -> Response {
    let seconds = match optional_number(&body, "seconds") {
        Ok(Some(n)) => n,
        Ok(None) => return error(StatusCode::BAD_REQUEST, "the body must be JSON like {\"seconds\": 3600}".into()),
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let mut state = shared.lock();
    state.clock.advance(i64::try_from(seconds).unwrap_or(i64::MAX / 4_000).saturating_mul(1000));
    let now = state.clock.current();
    ok(json!({"now": super::clock::iso_ms(now)}))
}

async fn capsule_party(AxumState(shared): Ctx, Path(id): Path<String>) -> Response {
    match id.parse::<i64>().ok().and_then(|id| shared.lock().capsule_party(id)) {
        Some(party) => ok(json!({"party": party})),
        None => error(StatusCode::NOT_FOUND, format!("no party {id}")),
    }
}

/// Replaces the fields given; the others keep their values.
async fn set_faults(AxumState(shared): Ctx, body: Bytes) -> Response {
    let mut state = shared.lock();
    let mut current = match serde_json::to_value(state.faults) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(p)) => Value::Object(p),
        _ => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object of fault settings".into()),
    };
    if let (Value::Object(cur), Value::Object(patch)) = (&mut current, patch) {
        cur.extend(patch);
    }
    let faults: Faults = match serde_json::from_value(current) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    if let Err(e) = faults.check() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, e);
    }
    state.faults = faults;
    ok(json!(faults))
}

async fn push_info(AxumState(shared): Ctx) -> Response {
    let state = shared.lock();
    let hooks: Vec<Value> = state.push.hooks.iter().map(super::push::RestHook::json).collect();
    ok(json!({
        "ghl_webhook_url": state.push.ghl_url,
        "ghl_webhook_public_key": state.push.public_key_base64(),
        "ghl_webhook_public_key_pem": state.push.public_key_pem(),
        "ghl_webhook_legacy_public_key": state.push.legacy_public_key_base64(),
        "capsule_rest_hooks": hooks,
        "faults": state.push.faults,
    }))
}

/// `{"url": ...}` sets the URL, `{"url": null}` turns GHL webhooks off, `{}` keeps it (as the
/// other PUTs keep the fields not given).
async fn set_ghl_url(AxumState(shared): Ctx, body: Bytes) -> Response {
    let given = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(fields)) => fields.get("url").cloned(),
        _ => Some(Value::Bool(false)),
    };
    let url = match given {
        None => return ok(json!({"ghl_webhook_url": shared.lock().push.ghl_url})),
        Some(Value::Null) => None,
        Some(Value::String(url)) => match url::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Some(url),
            _ => return error(StatusCode::UNPROCESSABLE_ENTITY, format!("`url` must be an http(s) URL, not `{url}`")),
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be JSON like {\"url\": \"http://...\"} or {\"url\": null}".into(),
            );
        }
    };
    shared.lock().push.ghl_url = url.clone();
    ok(json!({"ghl_webhook_url": url}))
}

/// Replaces the delivery fault fields given; the others keep their values.
async fn set_delivery_faults(AxumState(shared): Ctx, body: Bytes) -> Response {
    let mut state = shared.lock();
    let mut current = match serde_json::to_value(state.push.faults) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let patch = match serde_json::from_slice(&body) {
        Ok(Value::Object(p)) => p,
        _ => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object of delivery fault settings".into()),
    };
    if let Value::Object(cur) = &mut current {
        cur.extend(patch);
    }
    let faults: DeliveryFaults = match serde_json::from_value(current) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    if let Err(e) = faults.check() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, e);
    }
    state.push.set_faults(faults);
    ok(json!(faults))
}
