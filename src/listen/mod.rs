//! The listener: the one HTTP server of `ghlflow run` (and of `ghlflow serve`). It takes the
//! APIs' instant-trigger hooks (`/hooks/ghl`, `/hooks/capsule/<token>`), serves the status
//! page (`/`, see `page`) and `/metrics` (Prometheus), and answers the health probes (`/healthz`: the process answers; `/readyz`: the engine does
//! its work).
//!
//! It binds `listen:` from ghlflow.yaml (loopback by default). Off loopback, `/metrics` (and
//! whatever else shows the engine's data) asks for the `server.auth` credentials; the probes
//! stay open for the machine's supervisor, and hooks prove themselves by signature or path
//! token. Every response carries headers that keep browsers from sniffing, framing or
//! caching it.

mod hooks;
mod page;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::ServerAuth;
use crate::engine::Engine;

/// What the listener shares with its handlers.
#[derive(Debug, Clone)]
pub struct Listener {
    engine: Arc<Engine>,
    /// The status page's CSRF token (see `page`).
    csrf: Arc<str>,
    /// Whether the page offers actions (`ghlflow run`) or only shows (`ghlflow serve`).
    actions: bool,
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

/// The routes, over `engine`, with the page's actions.
pub fn router(engine: Arc<Engine>) -> Router {
    router_with(engine, true)
}

/// The routes of `ghlflow serve`: the page shows the state and offers no action.
pub fn read_only_router(engine: Arc<Engine>) -> Router {
    router_with(engine, false)
}

fn router_with(engine: Arc<Engine>, actions: bool) -> Router {
    let state = Listener { engine, csrf: page::new_csrf_token(), actions };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/hooks/ghl", axum::routing::post(hooks::ghl))
        .route("/hooks/capsule/{token}", axum::routing::post(hooks::capsule))
        .merge(
            Router::new()
                .route("/metrics", get(metrics))
                .merge(page::routes())
                .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_auth)),
        )
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// What `ghlflow run` (and the demo, the same way) does to take hooks: binds `listen:`,
/// serves until the engine stops, and subscribes the Capsule REST hooks the recipes need
/// (again whenever they change: see the scheduler). Without instant triggers or a
/// `listen:` of its own, a port already taken (a second ghlflow on this machine) only turns
/// the listener off; otherwise it is an error. Returns the address it listens on.
pub async fn start(engine: &Arc<Engine>) -> Result<Option<SocketAddr>, BindError> {
    let config = engine.config();
    let addr = match bind(config.listener.bind).await {
        Ok(bound) => {
            let addr = bound.addr;
            tracing::info!(address = %format!("http://{addr}"), "listening");
            let serving = Arc::clone(engine);
            tokio::spawn(async move {
                if let Err(e) = serve(bound, serving).await {
                    tracing::error!(error = %e, "the listener stopped");
                }
            });
            Some(addr)
        }
        Err(e) if config.listener.asked_for => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "no listener: /healthz and /readyz are off (set `listen:` to choose a port)");
            None
        }
    };
    // Before the first poll; a failure is logged and the recipes still poll.
    if addr.is_some() {
        crate::engine::subscriptions::reconcile_and_log(engine).await;
    } else if !crate::engine::subscriptions::needed_events(engine).is_empty() {
        tracing::warn!("no listener, so no Capsule REST hook is subscribed; instant Capsule recipes only poll");
    }
    Ok(addr)
}

/// Serves `bound` until the engine stops.
pub async fn serve(bound: Bound, engine: Arc<Engine>) -> std::io::Result<()> {
    let stopping = Arc::clone(&engine);
    axum::serve(bound.socket, router(engine)).with_graceful_shutdown(async move { stopping.stopped().await }).await
}

/// Serves `bound` read-only (`ghlflow serve`) until the engine is stopped.
pub async fn serve_read_only(bound: Bound, engine: Arc<Engine>) -> std::io::Result<()> {
    let stopping = Arc::clone(&engine);
    axum::serve(bound.socket, read_only_router(engine))
        .with_graceful_shutdown(async move { stopping.stopped().await })
        .await
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

async fn metrics(axum::extract::State(listener): axum::extract::State<Listener>) -> Response {
    // Gauges read from the state at scrape time.
    for recipe in listener.engine.recipes() {
        match listener.engine.held_runs(&recipe.id).await {
            Ok(n) => crate::metrics::metrics().held(&recipe.id, n),
            Err(e) => tracing::warn!(recipe = %recipe.id, error = %e, "cannot count held runs for /metrics"),
        }
    }
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::metrics::metrics().encode(),
    )
        .into_response()
}

/// Lets a request through when the listener needs no credentials (loopback) or when it
/// carries the configured ones; otherwise 401 with the challenge for the configured kind.
async fn require_auth(
    axum::extract::State(listener): axum::extract::State<Listener>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(auth) = &listener.engine.config().listener.auth else {
        return next.run(request).await;
    };
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if credentials_match(auth, given) {
        return next.run(request).await;
    }
    let challenge = match auth {
        ServerAuth::Token(_) => "Bearer",
        ServerAuth::Basic { .. } => "Basic realm=\"ghlflow\"",
    };
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)], "credentials required\n").into_response()
}

/// Whether an `Authorization` header value carries `auth`'s credentials (compared in
/// constant time).
fn credentials_match(auth: &ServerAuth, given: &str) -> bool {
    use base64::Engine as _;
    use subtle::ConstantTimeEq as _;
    let same = |a: &[u8], b: &[u8]| bool::from(a.ct_eq(b));
    let (scheme, value) = given.trim().split_once(' ').unwrap_or(("", ""));
    match auth {
        ServerAuth::Token(token) => {
            scheme.eq_ignore_ascii_case("bearer") && same(value.trim().as_bytes(), token.expose().as_bytes())
        }
        ServerAuth::Basic { username, password } => {
            if !scheme.eq_ignore_ascii_case("basic") {
                return false;
            }
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value.trim()) else { return false };
            // RFC 7617: user-id ":" password, the user id holding no colon.
            let Some(colon) = decoded.iter().position(|b| *b == b':') else { return false };
            let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
            // Both compared, so the time taken says nothing of which was wrong.
            same(user, username.as_bytes()) & same(pass, password.expose().as_bytes())
        }
    }
}

/// Headers every answer carries: no MIME sniffing, no framing, no caching, no referrer, and
/// a Content-Security-Policy that allows nothing unless the handler set its own (the status
/// page allows its own stylesheet and forms).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static("default-src 'none'"));
    response
}
