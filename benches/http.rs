//! HTTP layer benchmark: `cargo bench --bench http`.
//!
//! A plain `main` (no criterion) that starts loopback axum servers in this process and
//! prints two sets of figures:
//!
//! 1. Client overhead. Requests per second through `HttpClient::execute` of
//!    `ghl.contacts.get_contact`, against a bare reqwest loop sending the same request (same
//!    URL, Authorization, Version and Accept headers, same client settings, same number of
//!    concurrent tasks). The real GHL budget (100/10s) would make this a measure of the rate
//!    limiter, so this part compiles the catalog with an override folder whose `ghl/app.yaml`
//!    allows 100000000/1s.
//! 2. Rate-limited throughput. The real GHL app.yaml limits, against a server that enforces
//!    GHL's burst limit itself (100 per 10 s, sliding window, 429 beyond, X-RateLimit-*
//!    headers on every answer), with many concurrent callers for a fixed wall time.
//!
//! Settings (environment): GHLFLOW_BENCH_REQUESTS (20000), GHLFLOW_BENCH_CONCURRENCY (32),
//! GHLFLOW_BENCH_ROUNDS (5), GHLFLOW_BENCH_SECS (30), GHLFLOW_BENCH_CALLERS (64),
//! GHLFLOW_BENCH_CONN_CONCURRENCY (the connection's `concurrency` in part 2; default: unset,
//! i.e. ghlflow's default).

// The same allocator as the `ghlflow` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ghlflow::catalog::{Catalog, Operation};
use ghlflow::config::{Config, Connection, Redactor};
use ghlflow::http::HttpClient;
use serde_json::{Map, Value};

const OP: &str = "ghl.contacts.get_contact";
const VERSION: &str = "2021-07-28";
const TOKEN: &str = "pit-bench-0123456789abcdef";
const LOCATION: &str = "ve9EPM428h8vShlRW1KT";
const CONTACT: &str = "ocQHyuzHvysMo5N5VsXc";
const BODY: &str = r#"{"contact":{"id":"ocQHyuzHvysMo5N5VsXc","locationId":"ve9EPM428h8vShlRW1KT","firstName":"Ada","lastName":"Lovelace","email":"ada@example.com","tags":["bench"],"dateUpdated":"2024-01-01T00:00:00.000Z"}}"#;

/// GHL's burst limit, as the part-2 server enforces it.
const BURST_MAX: usize = 100;
const BURST_INTERVAL: Duration = Duration::from_secs(10);
const DAILY_MAX: u64 = 200_000;

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a filter or other flags mean nothing here.
    let requests: usize = env_num("GHLFLOW_BENCH_REQUESTS", 20_000);
    let concurrency: usize = env_num("GHLFLOW_BENCH_CONCURRENCY", 32);
    let rounds: usize = env_num("GHLFLOW_BENCH_ROUNDS", 5).max(1);
    let secs: u64 = env_num("GHLFLOW_BENCH_SECS", 30).max(1);
    let callers: usize = env_num("GHLFLOW_BENCH_CALLERS", 64).max(1);
    let conn_concurrency: Option<u32> = std::env::var("GHLFLOW_BENCH_CONN_CONCURRENCY")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.trim().parse().expect("GHLFLOW_BENCH_CONN_CONCURRENCY is a number"));

    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("ghlflow HTTP bench");
    println!("machine: {cpus} CPUs{}", cpu_model().map(|m| format!(" ({m})")).unwrap_or_default());
    println!("runtime: tokio multi-thread, {cpus} workers; client and loopback server share the process");
    println!();

    let overhead = part_one(requests, concurrency, rounds).await;
    println!();
    let limited = part_two(secs, callers, conn_concurrency).await;

    println!();
    println!("== summary ==");
    println!("machine: {cpus} CPUs");
    println!(
        "1. client overhead ({requests} x {OP}, {concurrency} concurrent tasks, median of {rounds} rounds, \
         rate limit lifted to 100000000/1s):"
    );
    println!("   ghlflow HttpClient::execute : {:>9.0} req/s", overhead.ghlflow_rate);
    println!("   bare reqwest                : {:>9.0} req/s", overhead.bare_rate);
    println!(
        "   overhead (ghlflow time / bare time, median of the rounds): {:.3}  (goal < 1.30: {})",
        overhead.ratio,
        verdict(overhead.ratio < 1.3)
    );
    println!(
        "2. rate-limited throughput (real GHL limits 100/10s + 200000/1d, server enforcing 100/10s sliding, \
         {secs} s, {callers} callers):"
    );
    println!(
        "   completed: {} in {secs} s = {:.2} req/s = {:.1}% of the allowed 10/s  (goal >= 95%: {})",
        limited.completed,
        limited.rate,
        limited.percent,
        verdict(limited.percent >= 95.0)
    );
    println!("   429s answered by the server: {}  (goal 0: {})", limited.rejected, verdict(limited.rejected == 0));
    if limited.client_errors > 0 {
        println!("   requests that failed on the client: {}", limited.client_errors);
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, m)| m.trim().to_owned())
}

// ---------------------------------------------------------------------------------------
// Servers.

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("the loopback server runs");
    });
    addr
}

/// Whether a request carries the credentials and Version both clients must send.
fn well_formed(headers: &HeaderMap) -> bool {
    let auth_ok = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().strip_prefix(b"Bearer ") == Some(TOKEN.as_bytes()));
    let version_ok = headers.get("version").is_some_and(|v| v.as_bytes() == VERSION.as_bytes());
    auth_ok && version_ok
}

/// Part 1: answers every well-formed request at once with a small JSON body.
async fn plain_contact(headers: HeaderMap) -> Response {
    if !well_formed(&headers) {
        return (StatusCode::UNAUTHORIZED, "missing Authorization or Version").into_response();
    }
    ([(header::CONTENT_TYPE, "application/json")], BODY).into_response()
}

/// Part 2: GHL's burst limit, counted at arrival; a rejected request does not count.
#[derive(Default)]
struct Limiter {
    accepted_at: Mutex<VecDeque<Instant>>,
    accepted: AtomicU64,
    rejected: AtomicU64,
}

async fn limited_contact(State(limiter): State<Arc<Limiter>>, headers: HeaderMap) -> Response {
    if !well_formed(&headers) {
        return (StatusCode::UNAUTHORIZED, "missing Authorization or Version").into_response();
    }
    let (allowed, remaining) = {
        let mut log = limiter.accepted_at.lock().unwrap();
        let now = Instant::now();
        while log.front().is_some_and(|t| now.duration_since(*t) >= BURST_INTERVAL) {
            log.pop_front();
        }
        if log.len() < BURST_MAX {
            log.push_back(now);
            (true, BURST_MAX - log.len())
        } else {
            (false, 0)
        }
    };
    let accepted = if allowed {
        limiter.accepted.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        limiter.rejected.fetch_add(1, Ordering::Relaxed);
        limiter.accepted.load(Ordering::Relaxed)
    };
    let mut out = if allowed {
        ([(header::CONTENT_TYPE, "application/json")], BODY).into_response()
    } else {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"statusCode":429,"message":"Too many requests"}"#,
        )
            .into_response()
    };
    let h = out.headers_mut();
    let num = |n: u64| HeaderValue::from_str(&n.to_string()).unwrap();
    h.insert("x-ratelimit-limit-daily", num(DAILY_MAX));
    h.insert("x-ratelimit-daily-remaining", num(DAILY_MAX.saturating_sub(accepted)));
    h.insert("x-ratelimit-interval-milliseconds", num(BURST_INTERVAL.as_millis() as u64));
    h.insert("x-ratelimit-max", num(BURST_MAX as u64));
    h.insert("x-ratelimit-remaining", num(remaining as u64));
    out
}

// ---------------------------------------------------------------------------------------
// ghlflow's side.

fn connection(catalog: &Catalog, addr: SocketAddr, concurrency: Option<u32>) -> Arc<Connection> {
    let concurrency = concurrency.map(|c| format!("    concurrency: {c}\n")).unwrap_or_default();
    let text = format!(
        "connections:\n  bench:\n    app: ghl\n    location_id: {LOCATION}\n    base_url: http://{addr}\n\
         {concurrency}    auth: {{ type: private_token, token: '${{BENCH_TOKEN}}' }}\n"
    );
    let env = |name: &str| (name == "BENCH_TOKEN").then(|| TOKEN.to_owned());
    let config = Config::parse(&text, Path::new("bench/ghlflow.yaml"), catalog, &env)
        .unwrap_or_else(|e| panic!("bench configuration: {e}"));
    config.connection("bench").unwrap().clone()
}

fn inputs() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("contactId".into(), Value::String(CONTACT.into()));
    m
}

/// The embedded catalog with `ghl/app.yaml` replaced by one whose only limit is
/// 100000000/1s, plus a copy of contacts.yaml, as `catalog::load(Some(dir))` expects.
fn unlimited_catalog(dir: &Path) -> Catalog {
    let ops = Path::new(env!("CARGO_MANIFEST_DIR")).join("operations/ghl");
    let app_text = std::fs::read_to_string(ops.join("app.yaml")).expect("operations/ghl/app.yaml");
    let mut app: serde_yaml::Value = serde_yaml::from_str(&app_text).expect("app.yaml is YAML");
    app["rate_limit"]["limits"] = serde_yaml::from_str("[100000000/1s]").unwrap();
    let ghl = dir.join("ghl");
    std::fs::create_dir_all(&ghl).unwrap();
    std::fs::write(ghl.join("app.yaml"), serde_yaml::to_string(&app).unwrap()).unwrap();
    std::fs::copy(ops.join("contacts.yaml"), ghl.join("contacts.yaml")).unwrap();
    ghlflow::catalog::load(Some(dir)).unwrap_or_else(|e| panic!("override catalog: {e}"))
}

fn limits(connection: &Connection) -> String {
    connection.app.rate_limits.limits.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

// ---------------------------------------------------------------------------------------
// Part 1.

struct Overhead {
    ghlflow_rate: f64,
    bare_rate: f64,
    ratio: f64,
}

/// The reqwest client as `HttpClient::new` builds it.
fn bare_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ghlflow/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// `requests` calls of `one` spread over `tasks` tasks; returns the time and the failures.
async fn drive<F, Fut>(requests: usize, tasks: usize, one: F) -> (Duration, usize)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let (next, failed, one) = (next.clone(), failed.clone(), one.clone());
        handles.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                if !one().await {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    (start.elapsed(), failed.load(Ordering::Relaxed))
}

async fn part_one(requests: usize, concurrency: usize, rounds: usize) -> Overhead {
    println!("== 1. client overhead: ghlflow HttpClient::execute vs a bare reqwest loop ==");
    let addr = serve(Router::new().route("/contacts/{id}", get(plain_contact))).await;
    let dir = tempfile::tempdir().unwrap();
    let catalog = unlimited_catalog(dir.path());
    let conn = connection(&catalog, addr, Some(concurrency as u32));
    let op: Arc<Operation> = catalog.get(OP).expect("the operation exists").clone();
    println!(
        "The real GHL budget (100/10s) would cap this at 10 req/s and measure only the rate limiter, so this \
         part loads the catalog with an override folder ({}/ghl/app.yaml + contacts.yaml) whose limit is \
         `{}`. Connection concurrency is set to {concurrency} so ghlflow may keep as many requests in flight \
         as the bare loop.",
        dir.path().display(),
        limits(&conn),
    );
    let warm = (requests / 20).max(concurrency);
    println!(
        "server: axum on {addr}, GET /contacts/{{id}} -> 200 + {} byte JSON (checks Authorization and Version)",
        BODY.len()
    );
    println!(
        "each side: {requests} x GET /contacts/{CONTACT}, {concurrency} tasks; bare = reqwest client built as \
         HttpClient::new builds it, same URL, Authorization: Bearer, Version, Accept, 30 s timeout, body read \
         and parsed as JSON; every round builds fresh clients on each side, warms them up with {warm} requests, \
         and alternates which side goes first"
    );

    let inputs = Arc::new(inputs());
    let url = reqwest::Url::parse(&format!("http://{addr}/contacts/{CONTACT}")).unwrap();
    let timeout = conn.app.timeout;
    // One side, on fresh clients (so fresh connection pools) each round: warm up, then measure.
    let run_ghlflow = || async {
        let client = Arc::new(HttpClient::new(None, Redactor::default()).unwrap());
        let one = {
            let (conn, op, inputs) = (conn.clone(), op.clone(), inputs.clone());
            move || {
                let (client, conn, op, inputs) = (client.clone(), conn.clone(), op.clone(), inputs.clone());
                async move { client.execute(&conn, &op, &inputs).await.is_ok_and(|r| r.status == 200) }
            }
        };
        let (_, failed) = drive(warm, concurrency, one.clone()).await;
        assert_eq!(failed, 0, "ghlflow warm-up requests failed: check the server and the connection");
        drive(requests, concurrency, one).await
    };
    let run_bare = || async {
        let bare = bare_client();
        let one = {
            let url = url.clone();
            move || {
                let (bare, url) = (bare.clone(), url.clone());
                async move {
                    let Ok(resp) = bare
                        .get(url)
                        .timeout(timeout)
                        .bearer_auth(TOKEN)
                        .header("Version", VERSION)
                        .header("Accept", "application/json")
                        .send()
                        .await
                    else {
                        return false;
                    };
                    if resp.status() != 200 {
                        return false;
                    }
                    let Ok(bytes) = resp.bytes().await else { return false };
                    serde_json::from_slice::<Value>(&bytes).is_ok()
                }
            }
        };
        let (_, failed) = drive(warm, concurrency, one.clone()).await;
        assert_eq!(failed, 0, "bare warm-up requests failed: check the server");
        drive(requests, concurrency, one).await
    };

    let rate = |d: Duration| requests as f64 / d.as_secs_f64();
    let mut bare_times = Vec::new();
    let mut ghl_times = Vec::new();
    for round in 1..=rounds {
        // Alternate which side goes first.
        let ((tb, fb), (tg, fg)) = if round % 2 == 1 {
            let b = run_bare().await;
            (b, run_ghlflow().await)
        } else {
            let g = run_ghlflow().await;
            (run_bare().await, g)
        };
        println!(
            "round {round}: bare {:>8.0} req/s ({:.3} s, {fb} failed) | ghlflow {:>8.0} req/s ({:.3} s, {fg} failed) \
             | ratio {:.3}",
            rate(tb),
            tb.as_secs_f64(),
            rate(tg),
            tg.as_secs_f64(),
            tg.as_secs_f64() / tb.as_secs_f64()
        );
        assert_eq!(fb + fg, 0, "requests failed during the measurement");
        bare_times.push(tb);
        ghl_times.push(tg);
    }
    // The ratio is the median of the per-round ratios: the two sides of a round run back to
    // back, so a change in the machine's load between rounds does not skew it.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratios = bare_times.iter().zip(&ghl_times).map(|(b, g)| g.as_secs_f64() / b.as_secs_f64()).collect();
    let out = Overhead {
        ghlflow_rate: median(ghl_times.iter().map(|d| rate(*d)).collect()),
        bare_rate: median(bare_times.iter().map(|d| rate(*d)).collect()),
        ratio: median(ratios),
    };
    println!(
        "median: bare {:.0} req/s, ghlflow {:.0} req/s; median of the rounds' ghlflow time / bare time = {:.3}",
        out.bare_rate, out.ghlflow_rate, out.ratio
    );
    out
}

// ---------------------------------------------------------------------------------------
// Part 2.

struct Limited {
    completed: u64,
    rate: f64,
    percent: f64,
    rejected: u64,
    client_errors: u64,
}

async fn part_two(secs: u64, callers: usize, conn_concurrency: Option<u32>) -> Limited {
    println!("== 2. throughput against a server enforcing GHL's real limit ==");
    let limiter = Arc::new(Limiter::default());
    let addr = serve(Router::new().route("/contacts/{id}", get(limited_contact)).with_state(limiter.clone())).await;
    let catalog = ghlflow::catalog::load_embedded().unwrap();
    let conn = connection(&catalog, addr, conn_concurrency);
    let op = catalog.get(OP).unwrap().clone();
    println!(
        "ghlflow: the real operations/ghl/app.yaml limits ({}); connection concurrency {}{}",
        limits(&conn),
        conn.concurrency,
        if conn_concurrency.is_none() { " (ghlflow's default)" } else { "" }
    );
    println!(
        "server: axum on {addr}; at most {BURST_MAX} requests in any {} s (sliding window, counted at \
         arrival, rejected requests not counted), 429 beyond; X-RateLimit-Max, -Remaining, \
         -Interval-Milliseconds, -Limit-Daily, -Daily-Remaining on every answer",
        BURST_INTERVAL.as_secs()
    );
    println!(
        "{callers} concurrent callers loop on {OP} for {secs} s of wall time (GHLFLOW_BENCH_SECS); \
         requests still waiting at the deadline are dropped and not counted"
    );

    let client = Arc::new(HttpClient::new(None, Redactor::default()).unwrap());
    let inputs = Arc::new(inputs());
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut handles = Vec::new();
    for _ in 0..callers {
        let (client, conn, op, inputs) = (client.clone(), conn.clone(), op.clone(), inputs.clone());
        let (completed, errors, first_error) = (completed.clone(), errors.clone(), first_error.clone());
        handles.push(tokio::spawn(async move {
            loop {
                match tokio::time::timeout_at(deadline, client.execute(&conn, &op, &inputs)).await {
                    Err(_) => break,
                    Ok(Ok(_)) => {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }));
    }
    // Progress every 10 s.
    let mut tick = 1;
    while start + Duration::from_secs(10 * tick) < deadline {
        tokio::time::sleep_until(start + Duration::from_secs(10 * tick)).await;
        println!(
            "  t={:>3} s: completed {}, server accepted {}, 429s {}",
            10 * tick,
            completed.load(Ordering::Relaxed),
            limiter.accepted.load(Ordering::Relaxed),
            limiter.rejected.load(Ordering::Relaxed)
        );
        tick += 1;
    }
    for h in handles {
        h.await.unwrap();
    }
    let completed = completed.load(Ordering::Relaxed);
    let rejected = limiter.rejected.load(Ordering::Relaxed);
    let client_errors = errors.load(Ordering::Relaxed);
    let rate = completed as f64 / secs as f64;
    let percent = rate / (BURST_MAX as f64 / BURST_INTERVAL.as_secs_f64()) * 100.0;
    let ceiling = BURST_MAX as u64 * secs.div_ceil(BURST_INTERVAL.as_secs());
    println!(
        "completed {completed} in {secs} s = {rate:.2} req/s = {percent:.1}% of 10/s; server accepted {}, \
         answered {rejected} x 429; the most a {BURST_MAX}/{}s sliding window admits in {secs} s from a cold \
         start is {ceiling}",
        limiter.accepted.load(Ordering::Relaxed),
        BURST_INTERVAL.as_secs()
    );
    if let Some(e) = first_error.lock().unwrap().as_ref() {
        println!("{client_errors} requests failed on the client; the first: {e}");
    }
    Limited { completed, rate, percent, rejected, client_errors }
}
