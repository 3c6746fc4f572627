//! The listener: the one HTTP server of `ghlflow run`. It takes the APIs' instant-trigger
//! hooks (`/hooks/ghl`, `/hooks/capsule/<token>`) and answers the health probes
//! (`/healthz`: the process answers; `/readyz`: the engine does its work).
//!
//! It binds `listen:` from ghlflow.yaml (loopback by default). Every response carries
//! headers that keep browsers from sniffing, framing or caching it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::engine::Engine;

/// What the listener shares with its handlers.
#[derive(Debug, Clone)]
pub struct Listener {
    engine: Arc<Engine>,
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub reason: String,
}

/// A bound listener, not serving yet.
#[derive(Debug)]
pub struct Bound {
    socket: tokio::net::TcpListener,
    pub addr: SocketAddr,
}

/// Binds `addr` (port 0 picks a free port: `Bound::addr` says which).
pub async fn bind(addr: SocketAddr) -> Result<Bound, BindError> {
    let socket = tokio::net::TcpListener::bind(addr).await.map_err(|e| BindError { addr, reason: e.to_string() })?;
    let addr = socket.local_addr().map_err(|e| BindError { addr, reason: e.to_string() })?;
    Ok(Bound { socket, addr })
}

/// The routes, over `engine`.
pub fn router(engine: Arc<Engine>) -> Router {
    let state = Listener { engine };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Serves `bound` until the engine stops.
pub async fn serve(bound: Bound, engine: Arc<Engine>) -> std::io::Result<()> {
    let stopping = Arc::clone(&engine);
    axum::serve(bound.socket, router(engine)).with_graceful_shutdown(async move { stopping.stopped().await }).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(axum::extract::State(listener): axum::extract::State<Listener>) -> Response {
    let problems = listener.engine.readiness();
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n{}\n", problems.join("\n"))).into_response()
    }
}

/// Headers every answer carries: no MIME sniffing, no framing, no caching, no referrer.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'"));
    response
}
