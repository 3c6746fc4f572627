//! Engine benchmark: `cargo bench --bench engine`.
//!
//! A plain `main` (no criterion) that prints figures for two goals of the engine:
//!
//! 1. Item-runs per second (and CPU per item-run) through a 2-step recipe: a Capsule
//!    `party_updated` trigger with `start: backfill` and `hold_above: 0`, whose first poll
//!    enqueues N items, then `ghl.contacts.upsert_contact` and
//!    `ghl.contacts.create_contact_note` (`contactId: {{steps.contact.contact.id}}`) for each
//!    item, with the journal on (a real on-disk `Store` in a temporary folder). Measured twice:
//!    "sequential" executes the poll's runs one after another, exactly as `run_once` and the
//!    scheduler do today; "concurrent" executes the same kind of poll's runs with up to P
//!    `engine.execute_run(id)` calls in flight (tokio tasks).
//! 2. The scheduler holding R recipes (`every: 1m`, `capsule.users.list_users` answered with
//!    the same one user every time, so nothing runs after the baseline) for a fixed time:
//!    lateness of polls behind their jittered due time, polls completed, resident memory.
//!
//! The loopback sink (an axum server) runs in this, the parent, process; each part runs in a
//! child process (this same binary, re-executed with GHLFLOW_BENCH_ROLE set), so the child's
//! CPU time (/proc/self/stat utime + stime, all threads, sled's included) and its memory
//! (VmRSS, VmHWM from /proc/self/status) are the engine's alone. The sink's CPU is reported
//! separately, from the parent's own /proc/self/stat.
//!
//! The real rate limits (GHL 100/10s, Capsule 4000/1h) would measure only the rate limiter,
//! so the catalog is loaded with an override folder (`ghl/app.yaml`, `capsule/app.yaml`)
//! whose only limit is 100000000/1s; Capsule's page bound (100 pages of 100) is raised to fit
//! the feed.
//!
//! Part 1 ends with a split of an item-run's CPU: the same two requests through
//! `HttpClient::execute` alone, and the same journal traffic (a read, five `save_run`s of a
//! real run record, three `flush_async`s) alone on a fresh store.
//!
//! Settings (environment): GHLFLOW_BENCH_ITEMS (20000, concurrent phase),
//! GHLFLOW_BENCH_SEQ_ITEMS (2000, sequential phase), GHLFLOW_BENCH_PARALLEL (64 runs in
//! flight), GHLFLOW_BENCH_CONN_CONCURRENCY (64, each connection's `concurrency`),
//! GHLFLOW_BENCH_BREAKDOWN_ITEMS (10000; 0 skips the split),
//! GHLFLOW_BENCH_RECIPES (10000), GHLFLOW_BENCH_SCHED_SECS (75), GHLFLOW_BENCH_PART (`1`,
//! `2`, or unset for both).

// The same allocator as the `ghlflow` binary, so the engine is measured as it ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ghlflow::catalog::Catalog;
use ghlflow::config::Config;
use ghlflow::engine::scheduler::{self, Lateness};
use ghlflow::engine::{Engine, EngineOptions};
use ghlflow::recipe::{Recipe, compile_recipe};
use ghlflow::store::{RunRecord, RunStatus, Store};
use serde_json::{Value, json};

const GHL_TOKEN: &str = "pit-bench-0123456789abcdef";
const CAPSULE_TOKEN: &str = "capsule-bench-0123456789abcdef";
const LOCATION: &str = "ve9EPM428h8vShlRW1KT";
const PAGE: usize = 100;
const UNLIMITED: &str = "[100000000/1s]";

const UPSERT_BODY: &str = r#"{"new":true,"contact":{"id":"ocQHyuzHvysMo5N5VsXc","locationId":"ve9EPM428h8vShlRW1KT","firstName":"Ada","email":"ada@example.com"}}"#;
const NOTE_BODY: &str =
    r#"{"note":{"id":"nt8R3kQm1xYvJ2aBcDeF","body":"bench","dateAdded":"2026-01-01T00:00:00.000Z"}}"#;
const USERS_BODY: &str = r#"{"users":[{"id":1,"username":"ada","name":"Ada Lovelace","timezone":"Europe/London"}]}"#;

const PARTIES_RECIPE: &str = r#"
name: Bench parties to GHL
trigger:
  operation: capsule.parties.party_updated
  connection: capsule
  every: 1m
  start: backfill
  hold_above: 0
  input:
    perPage: 100
steps:
  - id: contact
    operation: ghl.contacts.upsert_contact
    connection: ghl
    input:
      firstName: "{{trigger.firstName}}"
      lastName: "{{trigger.lastName}}"
      email: "{{trigger.emailAddresses.[0].address}}"
  - id: note
    operation: ghl.contacts.create_contact_note
    connection: ghl
    input:
      contactId: "{{steps.contact.contact.id}}"
      body: "{{trigger.about}}"
"#;

const USERS_RECIPE: &str = r#"
name: Bench users
trigger:
  operation: capsule.users.list_users
  connection: capsule
  every: 1m
steps:
  - id: note
    operation: ghl.contacts.create_contact_note
    connection: ghl
    input:
      contactId: "user-{{trigger.id}}"
      body: "user {{trigger.name}}"
"#;

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or other flags mean nothing here.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    match std::env::var("GHLFLOW_BENCH_ROLE").as_deref() {
        Ok("throughput") => rt.block_on(child_throughput()),
        Ok("scheduler") => rt.block_on(child_scheduler()),
        _ => rt.block_on(parent()),
    }
}

// ---------------------------------------------------------------------------------------
// Process figures.

/// utime + stime of this process (all threads, live and exited), in seconds.
fn cpu_secs() -> f64 {
    let text = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = &text[text.rfind(')').expect("comm ends with )") + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After `pid (comm)`: state is field 3; utime and stime are fields 14 and 15.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks() as f64
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// A `/proc/self/status` field in MiB (VmRSS, VmHWM).
fn status_mib(field: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn dir_mib(dir: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else { return 0 };
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(dir) as f64 / 1024.0 / 1024.0
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, m)| m.trim().to_owned())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

// ---------------------------------------------------------------------------------------
// The sink (parent process).

#[derive(Default)]
struct Counters {
    pages: AtomicU64,
    upserts: AtomicU64,
    notes: AtomicU64,
    users: AtomicU64,
    other: AtomicU64,
}

impl Counters {
    fn json(&self) -> Value {
        json!({
            "pages": self.pages.load(Ordering::Relaxed),
            "upserts": self.upserts.load(Ordering::Relaxed),
            "notes": self.notes.load(Ordering::Relaxed),
            "users": self.users.load(Ordering::Relaxed),
            "other": self.other.load(Ordering::Relaxed),
        })
    }
}

#[derive(Clone)]
struct Sink {
    addr: Arc<std::sync::OnceLock<SocketAddr>>,
    counters: Arc<Counters>,
}

fn json_response(body: impl Into<axum::body::Body>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.into()).into_response()
}

/// `GET /feed/{n}/parties?page=P&perPage=100`: page P of a feed of n parties, each with its
/// own id and updatedAt, oldest first, with a Link rel="next" while more remain.
async fn parties(
    State(sink): State<Sink>,
    UrlPath(n): UrlPath<usize>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    sink.counters.pages.fetch_add(1, Ordering::Relaxed);
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let per: usize = q.get("perPage").and_then(|p| p.parse().ok()).unwrap_or(50).clamp(1, PAGE);
    let epoch = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let from = (page - 1) * per;
    let to = (from + per).min(n);
    let mut body = String::with_capacity(per * 300);
    body.push_str(r#"{"parties":["#);
    for i in from..to {
        if i > from {
            body.push(',');
        }
        let id = i + 1;
        let updated = (epoch + chrono::Duration::seconds(id as i64)).to_utc().format("%Y-%m-%dT%H:%M:%SZ");
        body.push_str(&format!(
            r#"{{"id":{id},"type":"person","firstName":"Party{id}","lastName":"Bench","about":"about party {id}","emailAddresses":[{{"id":{id},"type":"Work","address":"party{id}@example.com"}}],"phoneNumbers":[],"addresses":[],"createdAt":"2026-01-01T00:00:00Z","updatedAt":"{updated}"}}"#
        ));
    }
    body.push_str("]}");
    let mut out = json_response(body);
    if to < n {
        let addr = sink.addr.get().unwrap();
        let link = format!("<http://{addr}/feed/{n}/parties?page={}&perPage={per}>; rel=\"next\"", page + 1);
        out.headers_mut().insert(header::LINK, HeaderValue::from_str(&link).unwrap());
    }
    out
}

async fn upsert(State(sink): State<Sink>) -> Response {
    sink.counters.upserts.fetch_add(1, Ordering::Relaxed);
    json_response(UPSERT_BODY)
}

async fn note(State(sink): State<Sink>) -> Response {
    sink.counters.notes.fetch_add(1, Ordering::Relaxed);
    json_response(NOTE_BODY)
}

async fn users(State(sink): State<Sink>) -> Response {
    sink.counters.users.fetch_add(1, Ordering::Relaxed);
    json_response(USERS_BODY)
}

async fn stats(State(sink): State<Sink>) -> Response {
    json_response(sink.counters.json().to_string())
}

async fn other(State(sink): State<Sink>) -> Response {
    sink.counters.other.fetch_add(1, Ordering::Relaxed);
    (axum::http::StatusCode::NOT_FOUND, "no such route").into_response()
}

async fn start_sink() -> (SocketAddr, Sink) {
    let sink = Sink { addr: Arc::default(), counters: Arc::default() };
    let router = Router::new()
        .route("/feed/{n}/parties", get(parties))
        .route("/contacts/upsert", post(upsert))
        .route("/contacts/{id}/notes", post(note))
        .route("/users", get(users))
        .route("/stats", get(stats))
        .fallback(other)
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    sink.addr.set(addr).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.expect("the sink runs") });
    (addr, sink)
}

/// The child's view of the sink's counters.
async fn sink_stats(addr: SocketAddr) -> Value {
    reqwest::get(format!("http://{addr}/stats")).await.unwrap().json().await.unwrap()
}

fn stat(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Parent.

async fn parent() {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let machine = format!("{cpus} CPUs{}", cpu_model().map(|m| format!(" ({m})")).unwrap_or_default());
    println!("ghlflow engine bench");
    println!("machine: {machine}");
    println!(
        "processes: the loopback sink (axum, tokio multi-thread) runs in this process; each part runs in a \
         child process (this binary again), so its CPU and memory figures are the engine's alone; the sink \
         and the engine share the machine's {cpus} CPUs"
    );
    let (addr, _sink) = start_sink().await;
    println!("sink: http://{addr}");
    let part = std::env::var("GHLFLOW_BENCH_PART").unwrap_or_default();
    let summary_dir = tempfile::tempdir().unwrap();
    let mut summary = Vec::new();
    for (n, role) in [("1", "throughput"), ("2", "scheduler")] {
        if !part.is_empty() && part != n {
            continue;
        }
        println!();
        let file = summary_dir.path().join(role);
        let cpu0 = cpu_secs();
        let t0 = Instant::now();
        let status = tokio::process::Command::new(std::env::current_exe().unwrap())
            .env("GHLFLOW_BENCH_ROLE", role)
            .env("GHLFLOW_BENCH_SINK", addr.to_string())
            .env("GHLFLOW_BENCH_SUMMARY", &file)
            .kill_on_drop(true)
            .status()
            .await
            .expect("start the child process");
        let (wall, sink_cpu) = (t0.elapsed().as_secs_f64(), cpu_secs() - cpu0);
        if !status.success() {
            println!("part {n} ({role}) ended with {status}");
        }
        println!(
            "sink process during part {n}: {sink_cpu:.2} s CPU over {wall:.1} s wall ({:.0}% of one CPU)",
            sink_cpu / wall * 100.0
        );
        summary.push(std::fs::read_to_string(&file).unwrap_or_default());
        summary.push(format!(
            "   (sink process meanwhile: {sink_cpu:.2} s CPU over {wall:.1} s, {:.0}% of one CPU)\n",
            sink_cpu / wall * 100.0
        ));
    }
    println!();
    println!("== summary ==");
    println!("machine: {machine}");
    for s in summary {
        print!("{s}");
    }
}

// ---------------------------------------------------------------------------------------
// The child's ghlflow setup.

struct Setup {
    dir: tempfile::TempDir,
    engine: Arc<Engine>,
}

/// An override folder with both apps' limits lifted (and Capsule's page bound raised).
fn catalog(dir: &Path, capsule_page_bound: u32) -> Catalog {
    let ops = Path::new(env!("CARGO_MANIFEST_DIR")).join("operations");
    for (app, bound) in [("ghl", None), ("capsule", Some(capsule_page_bound))] {
        let text = std::fs::read_to_string(ops.join(app).join("app.yaml")).expect("app.yaml");
        let mut value: serde_yaml::Value = serde_yaml::from_str(&text).expect("app.yaml is YAML");
        value["rate_limit"]["limits"] = serde_yaml::from_str(UNLIMITED).unwrap();
        if let Some(bound) = bound {
            value["page_bound"] = bound.into();
        }
        let out = dir.join("ops").join(app);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("app.yaml"), serde_yaml::to_string(&value).unwrap()).unwrap();
    }
    ghlflow::catalog::load(Some(&dir.join("ops"))).unwrap_or_else(|e| panic!("override catalog: {e}"))
}

fn bench_env(name: &str) -> Option<String> {
    match name {
        "BENCH_GHL_TOKEN" => Some(GHL_TOKEN.into()),
        "BENCH_CAPSULE_TOKEN" => Some(CAPSULE_TOKEN.into()),
        _ => None,
    }
}

fn setup(capsule_base: &str, ghl_base: &str, concurrency: u32, page_bound: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path(), page_bound);
    let text = format!(
        "connections:\n  ghl:\n    app: ghl\n    location_id: {LOCATION}\n    base_url: {ghl_base}\n    \
         concurrency: {concurrency}\n    auth: {{ type: private_token, token: '${{BENCH_GHL_TOKEN}}' }}\n  \
         capsule:\n    app: capsule\n    base_url: {capsule_base}\n    concurrency: {concurrency}\n    \
         auth: {{ type: bearer, token: '${{BENCH_CAPSULE_TOKEN}}' }}\n"
    );
    let config = Config::parse(&text, &dir.path().join("ghlflow.yaml"), &catalog, &bench_env)
        .unwrap_or_else(|e| panic!("bench configuration: {e}"));
    let store = Store::open(&dir.path().join("state")).expect("open the store");
    let engine = Engine::with_store(Arc::new(catalog), Arc::new(config), store, EngineOptions::default()).unwrap();
    Setup { dir, engine: Arc::new(engine) }
}

fn compile(setup: &Setup, id: &str, text: &str) -> Recipe {
    compile_recipe(
        &format!("bench/recipes/{id}.yaml"),
        id,
        text,
        setup.engine.catalog(),
        setup.engine.config(),
        &bench_env,
    )
    .unwrap_or_else(|e| panic!("recipe {id}: {e}"))
}

fn sink_addr() -> SocketAddr {
    std::env::var("GHLFLOW_BENCH_SINK").expect("GHLFLOW_BENCH_SINK").parse().unwrap()
}

fn write_summary(text: &str) {
    if let Ok(path) = std::env::var("GHLFLOW_BENCH_SUMMARY") {
        std::fs::write(PathBuf::from(path), text).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Part 1: item-runs per second.

struct Phase {
    /// One finished run, as recorded (the journal-only measurement writes copies of it).
    sample: Option<RunRecord>,
    items: usize,
    poll_secs: f64,
    poll_cpu: f64,
    exec_secs: f64,
    exec_cpu: f64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.items as f64 / self.exec_secs
    }
    fn cpu_ms(&self) -> f64 {
        self.exec_cpu * 1000.0 / self.items as f64
    }
}

/// One poll of a feed of `items` parties, then every queued run: one after another
/// (`parallel` None) or with up to `parallel` in flight.
async fn phase(items: usize, parallel: Option<usize>, concurrency: u32) -> Phase {
    let addr = sink_addr();
    let pages = items.div_ceil(PAGE) as u32;
    let setup = setup(&format!("http://{addr}/feed/{items}"), &format!("http://{addr}"), concurrency, pages + 10);
    let recipe = compile(&setup, "parties", PARTIES_RECIPE);
    let engine = Arc::clone(&setup.engine);
    engine.set_recipes(vec![recipe]);
    let recipe = engine.recipe("parties").unwrap();
    let before = sink_stats(addr).await;

    let (c0, t0) = (cpu_secs(), Instant::now());
    let outcome = engine.poll(&recipe).await.expect("the first poll succeeds");
    let (c1, t1) = (cpu_secs(), Instant::now());
    assert_eq!(outcome.queued.len(), items, "the backfill poll queues every item: {outcome:?}");
    assert!(!outcome.stopped_at_bound, "the page bound was hit");
    let rss_polled = status_mib("VmRSS");

    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let watchdog = tokio::spawn(watchdog(Arc::clone(&done), items));
    match parallel {
        None => {
            // What `run_once` (and the scheduler) do with a poll's runs today.
            for id in &outcome.queued {
                match engine.execute_run(id).await {
                    Ok(o) if o.status == RunStatus::Succeeded => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(p) => {
            let queue = Arc::new(outcome.queued.clone());
            let next = Arc::new(AtomicUsize::new(0));
            let mut workers = Vec::new();
            for _ in 0..p {
                let (engine, queue, next, failures, done) = (
                    Arc::clone(&engine),
                    Arc::clone(&queue),
                    Arc::clone(&next),
                    Arc::clone(&failures),
                    Arc::clone(&done),
                );
                workers.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(id) = queue.get(i) else { break };
                        match engine.execute_run(id).await {
                            Ok(o) if o.status == RunStatus::Succeeded => {}
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for w in workers {
                w.await.unwrap();
            }
        }
    }
    let (c2, t2) = (cpu_secs(), Instant::now());
    watchdog.abort();
    let after = sink_stats(addr).await;

    // Everything the runs did is in the journal.
    let failures = failures.load(Ordering::Relaxed);
    assert_eq!(failures, 0, "runs failed");
    let open = engine.store().open_runs().await.unwrap().len();
    let succeeded = engine
        .store()
        .runs(Some("parties"), usize::MAX)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.status == RunStatus::Succeeded)
        .count();
    let d = |k: &str| stat(&after, k) - stat(&before, k);
    assert_eq!(d("upserts") as usize, items, "one upsert per item");
    assert_eq!(d("notes") as usize, items, "one note per item");
    assert_eq!(succeeded, items, "every run is recorded as succeeded");
    assert_eq!(open, 0, "no run is left open");

    let sample = engine.store().runs(Some("parties"), 1).await.unwrap().pop();
    let out = Phase {
        sample,
        items,
        poll_secs: (t1 - t0).as_secs_f64(),
        poll_cpu: c1 - c0,
        exec_secs: (t2 - t1).as_secs_f64(),
        exec_cpu: c2 - c1,
    };
    println!(
        "  poll: {} pages, {items} items -> {items} queued runs in {:.3} s ({:.2} s CPU); VmRSS after the poll \
         {rss_polled:.0} MiB",
        d("pages"),
        out.poll_secs,
        out.poll_cpu
    );
    println!(
        "  execute: {items} runs ({} upserts + {} notes answered by the sink) in {:.3} s = {:.0} item-runs/s; \
         engine CPU {:.2} s = {:.3} ms per item-run ({:.0}% of one CPU)",
        d("upserts"),
        d("notes"),
        out.exec_secs,
        out.rate(),
        out.exec_cpu,
        out.cpu_ms(),
        out.exec_cpu / out.exec_secs * 100.0
    );
    println!(
        "  journal: {succeeded} runs recorded as succeeded, {open} open; store on disk {:.1} MiB; VmRSS now {:.0} MiB",
        dir_mib(&setup.dir.path().join("state")),
        status_mib("VmRSS")
    );
    out
}

/// Ends the process when no run has finished for `STALL` (rather than hang the bench).
async fn watchdog(done: Arc<AtomicUsize>, items: usize) {
    const STALL: Duration = Duration::from_secs(20);
    let mut last = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = done.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= STALL {
            println!(
                "  STALLED: no run finished for {} s ({now} of {items} done); the engine is stuck \
                 (this is how sled 0.34's own flush_async deadlock showed, before Store::flush_async avoided it)",
                STALL.as_secs()
            );
            write_summary(&format!(
                "1. STALLED: {now} of {items} runs finished, then none for {} s\n",
                STALL.as_secs()
            ));
            std::process::exit(3);
        }
    }
}

/// `items` x `one(i)` over `parallel` tasks; returns the wall time and this process's CPU.
async fn spread<F, Fut>(items: usize, parallel: usize, one: F) -> (f64, f64)
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let (c0, t0) = (cpu_secs(), Instant::now());
    let mut workers = Vec::new();
    for _ in 0..parallel {
        let (next, one) = (Arc::clone(&next), one.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items {
                    break;
                }
                one(i).await;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    (t0.elapsed().as_secs_f64(), cpu_secs() - c0)
}

/// The two requests of a run, rendered inputs given, through `HttpClient::execute` alone.
/// Returns (item-runs/s, ms CPU per item-run).
async fn http_only(items: usize, parallel: usize, concurrency: u32) -> (f64, f64) {
    let addr = sink_addr();
    let setup = setup(&format!("http://{addr}"), &format!("http://{addr}"), concurrency, 100);
    let engine = Arc::clone(&setup.engine);
    let conn = Arc::clone(engine.config().connection("ghl").unwrap());
    let upsert = Arc::clone(engine.catalog().get("ghl.contacts.upsert_contact").unwrap());
    let note = Arc::clone(engine.catalog().get("ghl.contacts.create_contact_note").unwrap());
    let (wall, cpu) = spread(items, parallel, move |i| {
        let (engine, conn, upsert, note) = (Arc::clone(&engine), Arc::clone(&conn), Arc::clone(&upsert), Arc::clone(&note));
        async move {
            let id = i + 1;
            let a = json!({"firstName": format!("Party{id}"), "lastName": "Bench", "email": format!("party{id}@example.com"), "locationId": LOCATION});
            let r = engine.client().execute(&conn, &upsert, a.as_object().unwrap()).await.expect("upsert");
            let contact = r.body["contact"]["id"].clone();
            let b = json!({"contactId": contact, "body": format!("about party {id}")});
            engine.client().execute(&conn, &note, b.as_object().unwrap()).await.expect("note");
        }
    })
    .await;
    let out = (items as f64 / wall, cpu * 1000.0 / items as f64);
    println!(
        "  HTTP alone: {items} x (upsert_contact + create_contact_note) via HttpClient::execute in {wall:.3} s = \
         {:.0} item-runs/s; CPU {cpu:.2} s = {:.3} ms per item-run",
        out.0, out.1
    );
    out
}

/// The journal traffic of a run alone, on a fresh on-disk store: read the run, then the
/// writes `execute_run` makes for two steps (started, then per step sent, done + flush,
/// then succeeded + flush), each step a copy of a real finished run's.
async fn journal_only(sample: &RunRecord, items: usize, parallel: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut runs = Vec::with_capacity(items);
    for _ in 0..items {
        let mut run = sample.clone();
        run.id = store.next_run_id();
        run.status = RunStatus::Queued;
        run.steps.clear();
        runs.push(run);
    }
    store.create_runs(&runs).await.unwrap();
    store.flush().unwrap();
    let ids = Arc::new(runs.into_iter().map(|r| r.id).collect::<Vec<_>>());
    let steps = Arc::new(sample.steps.clone());
    let bytes = serde_json::to_vec(sample).unwrap().len();
    let (wall, cpu) = spread(items, parallel, {
        let store = store.clone();
        move |i| {
            let (store, ids, steps) = (store.clone(), Arc::clone(&ids), Arc::clone(&steps));
            async move {
                let mut run = store.run(&ids[i]).await.unwrap().unwrap();
                store.transition(&mut run, RunStatus::Running).await.unwrap();
                for (at, step) in steps.iter().enumerate().take(2) {
                    store.put_step(&run.id, at, step).await.unwrap();
                    store.put_step(&run.id, at, step).await.unwrap();
                    store.flush_async().await.unwrap();
                }
                store.transition(&mut run, RunStatus::Succeeded).await.unwrap();
                store.flush_async().await.unwrap();
            }
        }
    })
    .await;
    let out = (items as f64 / wall, cpu * 1000.0 / items as f64);
    println!(
        "  journal alone: {items} x (1 read + 2 transitions + 4 put_step of a {bytes}-byte run record's steps + 3 flush_async) in \
         {wall:.3} s = {:.0} item-runs/s; CPU {cpu:.2} s = {:.3} ms per item-run",
        out.0, out.1
    );
    out
}

async fn child_throughput() {
    let items: usize = env_num("GHLFLOW_BENCH_ITEMS", 20_000).max(1);
    let seq_items: usize = env_num("GHLFLOW_BENCH_SEQ_ITEMS", 2_000).max(1);
    let parallel: usize = env_num("GHLFLOW_BENCH_PARALLEL", 64).max(1);
    let concurrency: u32 = env_num("GHLFLOW_BENCH_CONN_CONCURRENCY", 64).max(1);
    let breakdown_items: usize = env_num("GHLFLOW_BENCH_BREAKDOWN_ITEMS", 10_000);
    println!("== 1. item-runs per second through a 2-step recipe (child process {}) ==", std::process::id());
    println!(
        "recipe: capsule.parties.party_updated (start: backfill, hold_above: 0, perPage 100) -> \
         ghl.contacts.upsert_contact -> ghl.contacts.create_contact_note (contactId: {{{{steps.contact.contact.id}}}})"
    );
    println!(
        "journal on: a sled Store in a temporary folder on disk; every run is recorded (step inputs, outputs, \
         timings) and flushed after each step and at the end, as execute_run does"
    );
    println!(
        "override catalog: ghl and capsule limits {UNLIMITED}, capsule page_bound raised to fit the feed; \
         connection concurrency {concurrency}"
    );
    println!(
        "runtime: tokio multi-thread, {} workers",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    println!();
    println!(
        "-- sequential: the poll's {seq_items} runs executed one after another (what run_once and the scheduler \
         do today) --"
    );
    let seq = phase(seq_items, None, concurrency).await;
    println!();
    println!("-- concurrent: the poll's {items} runs executed with up to {parallel} execute_run calls in flight --");
    let par = phase(items, Some(parallel), concurrency).await;
    let hwm = status_mib("VmHWM");
    println!();
    println!("peak RSS of the engine process (VmHWM): {hwm:.0} MiB");

    let split = if breakdown_items > 0 {
        println!();
        println!("-- where an item-run's CPU goes: {breakdown_items} items, {parallel} in flight, each half alone --");
        let sample = par.sample.clone().expect("a recorded run");
        let http = http_only(breakdown_items, parallel, concurrency).await;
        let journal = journal_only(&sample, breakdown_items, parallel).await;
        let rest = par.cpu_ms() - http.1 - journal.1;
        println!(
            "  the rest (execute_run's own work: templates, contexts, clones, redaction; and the cost of both halves \
             running together): {:.3} - {:.3} - {:.3} = {rest:.3} ms per item-run",
            par.cpu_ms(),
            http.1,
            journal.1
        );
        Some((http, journal, rest))
    } else {
        None
    };

    let line = |name: &str, p: &Phase| {
        format!(
            "   {name}: {:>6.0} item-runs/s (goal >= 4500: {}), {:.3} ms CPU per item-run (goal < 0.25: {}) \
             [{} items; poll {:.2} s]\n",
            p.rate(),
            verdict(p.rate() >= 4500.0),
            p.cpu_ms(),
            verdict(p.cpu_ms() < 0.25),
            p.items,
            p.poll_secs
        )
    };
    let mut s = String::from("1. item-runs through a 2-step recipe, journal on (n8n: 45/s, 25 ms CPU):\n");
    s += &line("sequential (as the engine runs a poll's runs today)", &seq);
    s += &line(&format!("concurrent (up to {parallel} runs in flight)"), &par);
    s += &format!("   peak RSS of the engine process: {hwm:.0} MiB\n");
    if let Some(((hr, hc), (jr, jc), rest)) = split {
        s += &format!(
            "   CPU per item-run, each part alone: 2 HTTP requests {hc:.3} ms ({hr:.0} item-runs/s alone), \
             journal writes + 3 flushes {jc:.3} ms ({jr:.0}/s alone), the rest ~{rest:.3} ms\n"
        );
    }
    write_summary(&s);
}

// ---------------------------------------------------------------------------------------
// Part 2: the scheduler with many recipes.

async fn child_scheduler() {
    let count: usize = env_num("GHLFLOW_BENCH_RECIPES", 10_000).max(1);
    let secs: u64 = env_num("GHLFLOW_BENCH_SCHED_SECS", 75).max(1);
    let concurrency: u32 = env_num("GHLFLOW_BENCH_CONN_CONCURRENCY", 64).max(1);
    let addr = sink_addr();
    println!("== 2. the scheduler holding {count} recipes (child process {}) ==", std::process::id());
    println!(
        "each recipe: capsule.users.list_users, every: 1m, start: now; the sink answers the same one user every \
         time, so after the baseline no poll creates a run. Override catalog: limits {UNLIMITED}; connection \
         concurrency {concurrency}"
    );
    let setup = setup(&format!("http://{addr}"), &format!("http://{addr}"), concurrency, 100);
    let rss_empty = status_mib("VmRSS");
    let t = Instant::now();
    let recipes: Vec<Recipe> = (0..count).map(|i| compile(&setup, &format!("users-{i:05}"), USERS_RECIPE)).collect();
    let compile_secs = t.elapsed().as_secs_f64();
    let engine = Arc::clone(&setup.engine);
    engine.set_recipes(recipes);
    let rss_loaded = status_mib("VmRSS");
    println!(
        "compiled {count} recipes in {compile_secs:.2} s; VmRSS {rss_empty:.0} MiB before, {rss_loaded:.0} MiB \
         with them loaded"
    );
    println!("running scheduler::run for {secs} s (GHLFLOW_BENCH_SCHED_SECS), then the shutdown future resolves");

    let before = sink_stats(addr).await;
    let lateness = Arc::new(Lateness::default());
    let progress = {
        let lateness = Arc::clone(&lateness);
        let base = stat(&before, "users");
        tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_secs(15),
                Duration::from_secs(15),
            );
            loop {
                tick.tick().await;
                let s = sink_stats(addr).await;
                let l = lateness.sorted();
                println!(
                    "  t={:>3.0} s: polls started {:>6}, /users answered {:>6}, lateness max so far {:>8.1} ms, \
                     VmRSS {:.0} MiB",
                    start.elapsed().as_secs_f64(),
                    l.len(),
                    stat(&s, "users") - base,
                    l.last().copied().unwrap_or(0) as f64 / 1000.0,
                    status_mib("VmRSS")
                );
            }
        })
    };
    let (c0, t0) = (cpu_secs(), Instant::now());
    scheduler::run(Arc::clone(&engine), None, Arc::clone(&lateness), tokio::time::sleep(Duration::from_secs(secs)))
        .await;
    let (cpu, wall) = (cpu_secs() - c0, t0.elapsed().as_secs_f64());
    progress.abort();
    let after = sink_stats(addr).await;
    let rss = status_mib("VmRSS");
    let hwm = status_mib("VmHWM");

    let samples = lateness.sorted();
    let pct = |p: f64| -> f64 {
        if samples.is_empty() {
            return f64::NAN;
        }
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i] as f64 / 1000.0
    };
    let (p50, p99, max) = (pct(0.50), pct(0.99), samples.last().copied().unwrap_or(0) as f64 / 1000.0);
    let answered = stat(&after, "users") - stat(&before, "users");
    let mut polled_recipes = 0;
    let mut errors = 0;
    for i in 0..count {
        if let Some(state) = engine.store().trigger_state(&format!("users-{i:05}")).await.unwrap() {
            polled_recipes += usize::from(state.baselined);
            errors += usize::from(state.last_error.is_some());
        }
    }
    let runs = engine.store().runs(None, usize::MAX).await.unwrap().len();
    println!(
        "done after {wall:.1} s: {} polls started, {answered} answered by the sink; {polled_recipes} of {count} \
         recipes have polled (baselined), {errors} with an error; {runs} runs created",
        samples.len()
    );
    println!("lateness behind the jittered due time: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");
    println!(
        "engine CPU {cpu:.2} s over {wall:.1} s ({:.1}% of one CPU), {:.3} ms per poll",
        cpu / wall * 100.0,
        cpu * 1000.0 / (answered.max(1) as f64)
    );
    println!(
        "memory: VmRSS {rss:.0} MiB, VmHWM {hwm:.0} MiB; store on disk {:.1} MiB",
        dir_mib(&setup.dir.path().join("state"))
    );

    let s = format!(
        "2. scheduler with {count} recipes (every: 1m) for {secs} s: {} polls started, {answered} completed, \
         {polled_recipes}/{count} recipes polled, {runs} runs\n   \
         lateness p50 {p50:.2} ms, p99 {p99:.2} ms (goal < 100 ms: {}), max {max:.2} ms\n   \
         memory VmRSS {rss:.0} MiB, VmHWM {hwm:.0} MiB (goal < 200 MB: {}); engine CPU {:.1}% of one CPU\n",
        samples.len(),
        verdict(p99 < 100.0),
        verdict(hwm * 1.048_576 < 200.0),
        cpu / wall * 100.0
    );
    write_summary(&s);
}
