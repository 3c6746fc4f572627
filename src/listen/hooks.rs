//! The two hook endpoints: `/hooks/ghl` (signed GHL app webhooks) and
//! `/hooks/capsule/<token>` (Capsule REST hooks, one unguessable path per subscription).
//!
//! A delivery is checked (`webhook::verify`), then handed to the engine, which journals its
//! runs and flushes them to disk before this answers 2xx: a process killed after the answer
//! loses nothing, and one killed before it gets the delivery again from the sender. A
//! refusal answers 4xx, is counted and logged without the body, and creates no run; a failure
//! to journal answers 503 so the sender tries again.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Listener;
use crate::webhook::{MAX_BODY_BYTES, Refusal, Signatures};

/// Reads the body, up to the bound (a longer one is refused with 413 before it is all read).
async fn read_body(body: Body) -> Result<axum::body::Bytes, Refusal> {
    axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| Refusal::TooLarge {
        // Not all of it was read: the size is only known to be over the limit.
        size: MAX_BODY_BYTES + 1,
        limit: MAX_BODY_BYTES,
    })
}

/// A refusal as an answer, counted and logged (never with the body).
fn refuse(source: &str, refusal: &Refusal) -> Response {
    let result = match refusal {
        Refusal::TooLarge { .. } => "too_large",
        Refusal::Malformed { .. } => "malformed",
        Refusal::MissingSignature | Refusal::BadSignature { .. } => "forged",
        Refusal::Stale { .. } => "stale",
        Refusal::Replayed { .. } => "replayed",
        Refusal::UnknownHook => "unknown_hook",
        Refusal::WrongHook { .. } => "wrong_hook",
    };
    crate::metrics::metrics().hook_event(source, result);
    tracing::warn!(source, result, reason = %refusal, "refused a hook delivery");
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, format!("{refusal}\n")).into_response()
}

/// The engine could not journal the delivery: the sender is asked to try again.
fn not_recorded(source: &str, error: &crate::engine::EngineError) -> Response {
    crate::metrics::metrics().hook_event(source, "not_recorded");
    tracing::error!(source, error = %error, "could not record a hook delivery; the sender will try again");
    (StatusCode::SERVICE_UNAVAILABLE, "not recorded; try again\n").into_response()
}

pub(super) async fn ghl(State(listener): State<Listener>, headers: HeaderMap, body: Body) -> Response {
    let engine = &listener.engine;
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(refusal) => return refuse("ghl", &refusal),
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signatures = Signatures {
        ed25519: header(crate::webhook::GHL_SIGNATURE_HEADER),
        rsa: header(crate::webhook::GHL_LEGACY_SIGNATURE_HEADER),
    };
    // The keys are the GHL connections' (GHL's published ones unless configured). Which
    // connection the delivery is for is read from the verified body's `locationId`.
    let connections = engine.connections_of_app("ghl");
    let Some(first) = connections.first() else {
        return refuse("ghl", &Refusal::UnknownHook);
    };
    let mut verified = None;
    let mut last_refusal = Refusal::MissingSignature;
    let mut replayed = false;
    let now = chrono::Utc::now();
    for keys in connections.iter().map(|c| &c.webhook_keys) {
        let seen = |id: &str| engine.delivery_seen(id).unwrap_or(false);
        match crate::webhook::verify_ghl(&body, signatures, keys, now, seen) {
            Ok(delivery) => {
                verified = Some(delivery);
                break;
            }
            Err(Refusal::Replayed { .. }) => {
                replayed = true;
                break;
            }
            Err(refusal) => last_refusal = refusal,
        }
    }
    if replayed {
        // Authentic, fresh, and recorded before: a sender trying again after an answer it
        // lost. Acknowledged, so it stops; no second run.
        crate::metrics::metrics().hook_event("ghl", "duplicate");
        tracing::info!("a GHL delivery arrived again; it was recorded before");
        return (StatusCode::OK, axum::Json(json!({"status": "duplicate"}))).into_response();
    }
    let Some(delivery) = verified else {
        return refuse("ghl", &last_refusal);
    };
    let Some(event) = delivery.event.clone() else {
        return refuse("ghl", &Refusal::Malformed { reason: "no `type` naming the event".into() });
    };
    let location = delivery.body.get("locationId").and_then(|v| v.as_str());
    let connection = connections.iter().find(|c| location.is_some() && c.location_id.as_deref() == location).unwrap_or(first);
    match engine.accept_delivery(connection, &event, vec![delivery.body], Some(&delivery.webhook_id), now).await {
        Ok(accepted) => {
            crate::metrics::metrics().hook_event("ghl", accepted.result());
            (StatusCode::OK, axum::Json(accepted.summary())).into_response()
        }
        Err(e) => not_recorded("ghl", &e),
    }
}

pub(super) async fn capsule(
    State(listener): State<Listener>,
    Path(token): Path<String>,
    body: Body,
) -> Response {
    let engine = &listener.engine;
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(refusal) => return refuse("capsule", &refusal),
    };
    let hooks = match engine.capsule_hooks() {
        Ok(hooks) => hooks,
        Err(e) => return not_recorded("capsule", &e),
    };
    let delivery = match crate::webhook::verify_capsule(&token, &body, &hooks, None) {
        Ok(d) => d,
        Err(refusal) => return refuse("capsule", &refusal),
    };
    let Some(connection) = engine.connection_of_hook(delivery.hook) else {
        return refuse("capsule", &Refusal::UnknownHook);
    };
    let now = chrono::Utc::now();
    match engine.accept_delivery(&connection, &delivery.event, delivery.records, None, now).await {
        Ok(accepted) => {
            crate::metrics::metrics().hook_event("capsule", accepted.result());
            (StatusCode::OK, axum::Json(accepted.summary())).into_response()
        }
        Err(e) => not_recorded("capsule", &e),
    }
}
