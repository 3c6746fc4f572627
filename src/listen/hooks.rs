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
        ed25519: header(crate::webhook::verify::GHL_SIGNATURE_HEADER),
        rsa: header(crate::webhook::verify::GHL_LEGACY_SIGNATURE_HEADER),
    };
    // The keys are the GHL connections' (GHL's published ones unless configured). Which
    // connection the delivery is for is read from the verified body's `locationId`.
    let connections = engine.connections_of_app("ghl");
    let Some(first) = connections.first() else {
        return refuse("ghl", &Refusal::UnknownHook);
    };
    let now = chrono::Utc::now();
    // Each connection's keys in turn (they are the same unless configured apart). Whether
    // the delivery was recorded before is asked only of an authentic, fresh one.
    let mut verified = Err(Refusal::MissingSignature);
    for keys in connections.iter().map(|c| &c.webhook_keys) {
        verified = crate::webhook::verify_ghl(&body, signatures, keys, now, |_| false);
        if verified.is_ok() {
            break;
        }
    }
    let delivery = match verified {
        Ok(d) => d,
        Err(refusal) => return refuse("ghl", &refusal),
    };
    match engine.delivery_seen(&delivery.webhook_id).await {
        // Authentic, fresh, and recorded before: a sender trying again after an answer it
        // lost, or a replay. Acknowledged (the sender stops), and no second run.
        Ok(true) => {
            crate::metrics::metrics().hook_event("ghl", "duplicate");
            tracing::info!("a GHL delivery arrived again; it was recorded before, nothing runs twice");
            return (StatusCode::OK, axum::Json(json!({"status": "duplicate"}))).into_response();
        }
        Ok(false) => {}
        Err(e) => return not_recorded("ghl", &e),
    }
    let Some(event) = delivery.event.clone() else {
        return refuse("ghl", &Refusal::Malformed { reason: "no `type` naming the event".into() });
    };
    let location = delivery.body.get("locationId").and_then(|v| v.as_str());
    let connection =
        connections.iter().find(|c| location.is_some() && c.location_id.as_deref() == location).unwrap_or(first);
    match engine.accept_delivery(connection, &event, vec![delivery.body], Some(&delivery.webhook_id), now).await {
        Ok(accepted) => answer(&listener, "ghl", accepted),
        Err(e) => not_recorded("ghl", &e),
    }
}

pub(super) async fn capsule(State(listener): State<Listener>, Path(token): Path<String>, body: Body) -> Response {
    let engine = &listener.engine;
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(refusal) => return refuse("capsule", &refusal),
    };
    let subscriptions = match engine.capsule_hooks().await {
        Ok(s) => s,
        Err(e) => return not_recorded("capsule", &e),
    };
    let hooks: Vec<crate::webhook::CapsuleHook> = subscriptions.iter().map(|(hook, _)| hook.clone()).collect();
    let delivery = match crate::webhook::verify_capsule(&token, &body, &hooks, None) {
        Ok(d) => d,
        Err(refusal) => return refuse("capsule", &refusal),
    };
    let connection = subscriptions
        .iter()
        .find(|(hook, _)| hook.token == delivery.hook.token)
        .and_then(|(_, name)| engine.config().connections.get(name).cloned());
    let Some(connection) = connection else {
        return refuse("capsule", &Refusal::UnknownHook);
    };
    let event = delivery.event.clone();
    match engine
        .accept_delivery(&connection, &event, vec![json!({ "payload": delivery.records })], None, chrono::Utc::now())
        .await
    {
        Ok(accepted) => answer(&listener, "capsule", accepted),
        Err(e) => not_recorded("capsule", &e),
    }
}

/// The delivery is on disk: counted, answered, and its runs started in the background.
fn answer(listener: &Listener, source: &str, accepted: crate::engine::intake::Accepted) -> Response {
    crate::metrics::metrics().hook_event(source, accepted.result());
    let summary = accepted.summary();
    for (recipe, ids) in accepted.runs.into_iter().filter(|(_, ids)| !ids.is_empty()) {
        let engine = std::sync::Arc::clone(&listener.engine);
        tokio::spawn(async move {
            for result in engine.execute_runs(&recipe, &ids).await {
                if let Err(e) = result {
                    tracing::warn!(recipe = %recipe.id, error = %e, "a run of an instant delivery could not execute");
                }
            }
        });
    }
    (StatusCode::OK, axum::Json(summary)).into_response()
}
