//! Status page benchmark: `cargo bench --bench page`.
//!
//! The whole process, as a user meets it: a state folder with 10,000 runs in its history
//! (`GHLFLOW_BENCH_RUNS`), each a two-step run of the shipped people mirror with a realistic
//! trigger item, inputs and responses (about 3 KB recorded), 1 in 10 failed, spread over two
//! recipes; then `ghlflow serve` (the release binary) over it, and timed GETs of the run list
//! (first page, a status filter, a recipe and status filter, a deep page), the recipes page
//! and a run's page, over a kept-alive connection. Prints median, p95 and max per page, and
//! fails (exit 1) when a first page of the run list (unfiltered, or filtered) has a p95 of
//! 50 ms or more. A deep page is printed, not gated: the store's `runs_page` reads every
//! run before the page, so its cost grows with its depth.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use ghlflow::store::{RunRecord, RunStatus, StepRecord, StepStatus, Store};
use serde_json::json;

const LIMIT_MS: f64 = 50.0;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    std::process::exit(runtime.block_on(bench()));
}

async fn bench() -> i32 {
    let runs: usize = std::env::var("GHLFLOW_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let sandbox = ghlflow::sandbox::start(Default::default()).await.expect("the sandbox starts");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    std::fs::write(dir.path().join("ghlflow.yaml"), format!("{}listen: 127.0.0.1:{port}\n", sandbox.config_yaml()))
        .expect("write ghlflow.yaml");
    std::fs::create_dir(dir.path().join("recipes")).expect("mkdir recipes");
    let people = include_str!("../recipes/capsule-people.yaml");
    std::fs::write(dir.path().join("recipes/capsule-people.yaml"), people).expect("write a recipe");
    std::fs::write(dir.path().join("recipes/people-copy.yaml"), people).expect("write a recipe");

    let started = Instant::now();
    let mut ids = Vec::with_capacity(runs);
    {
        let store = Store::open(&dir.path().join(".ghlflow/state")).expect("the store opens");
        let mut batch = Vec::new();
        for i in 0..runs {
            let run = run_record(&store, i);
            ids.push(run.id.clone());
            batch.push(run);
            if batch.len() == 500 || i + 1 == runs {
                store.create_runs(&batch).await.expect("record runs");
                batch.clear();
            }
        }
        store.flush().expect("flush");
    }
    eprintln!("{runs} runs written in {:.1}s", started.elapsed().as_secs_f64());

    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"))
        .args(["serve"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("ghlflow serve starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..200 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !up {
        eprintln!("ghlflow serve did not answer");
        return 1;
    }

    let middle = &ids[ids.len() / 2];
    let pages: [(&str, String, bool); 6] = [
        ("run list, newest 50", "/runs".into(), true),
        ("run list, status=failed", "/runs?status=failed".into(), true),
        ("run list, recipe+status", "/runs?recipe=capsule-people&status=succeeded".into(), true),
        // Not a gate: a deep page reads every run before it (see the report).
        ("run list, page 100", "/runs?page=100".into(), false),
        ("recipes page", "/".into(), false),
        ("one run's page", format!("/runs/{middle}"), false),
    ];
    println!("{runs} runs in history; 30 GETs each after 3 warm-ups (ms)");
    println!("{:<26} {:>8} {:>8} {:>8} {:>9}", "page", "median", "p95", "max", "bytes");
    let mut failed = false;
    for (name, path, is_list) in &pages {
        let url = format!("{base}{path}");
        let mut times = Vec::new();
        let mut bytes = 0;
        for i in 0..33 {
            let t = Instant::now();
            let response = http.get(&url).send().await.expect("the page answers");
            let status = response.status();
            let body = response.bytes().await.expect("a body");
            let took = t.elapsed().as_secs_f64() * 1000.0;
            if !status.is_success() {
                eprintln!("{url}: {status}");
                return 1;
            }
            bytes = body.len();
            if i >= 3 {
                times.push(took);
            }
        }
        times.sort_by(f64::total_cmp);
        let pick = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
        let (median, p95, max) = (pick(0.5), pick(0.95), pick(1.0));
        println!("{name:<26} {median:>8.2} {p95:>8.2} {max:>8.2} {bytes:>9}");
        if *is_list && p95 >= LIMIT_MS {
            failed = true;
        }
    }
    let _ = serve.start_kill();
    if failed {
        println!("FAIL: a first page of the run list has a p95 of {LIMIT_MS} ms or more");
        1
    } else {
        println!("ok: every first page of the run list has a p95 under {LIMIT_MS} ms");
        0
    }
}

fn run_record(store: &Store, i: usize) -> RunRecord {
    let recipe = if i.is_multiple_of(3) { "people-copy" } else { "capsule-people" };
    let item = json!({
        "id": 100_000 + i, "type": "person", "firstName": format!("Person{i}"), "lastName": "Example",
        "title": "Director", "jobTitle": "Operations", "updatedAt": "2026-11-30T09:00:00Z",
        "emailAddresses": [{"id": i, "type": "Work", "address": format!("person{i}@example.com")}],
        "phoneNumbers": [{"id": i, "type": "Mobile", "number": "+44 20 7946 0000"}],
        "tags": [{"id": 1, "name": "customer"}, {"id": 2, "name": "newsletter"}],
        "organisation": {"id": 7, "name": "Example Ltd"}
    });
    let failed = i % 10 == 9;
    let mut run = RunRecord::new(
        store.next_run_id(),
        recipe,
        if failed { RunStatus::Failed } else { RunStatus::Succeeded },
        &(100_000 + i).to_string(),
        item,
        ghlflow::engine::now_iso(),
    );
    run.started = Some(run.created.clone());
    run.finished = Some(run.created.clone());
    let mut contact = StepRecord::pending("contact_new", "ghl.contacts.upsert_contact");
    contact.status = StepStatus::Succeeded;
    contact.attempts = 1;
    contact.duration_ms = Some(41);
    contact.input = Some(json!({"locationId": "loc-1", "firstName": format!("Person{i}"), "lastName": "Example",
        "email": format!("person{i}@example.com"), "phone": "+442079460000", "companyName": "Example Ltd",
        "source": "capsule", "customFields": [{"key": "capsule_id", "field_value": (100_000 + i).to_string()}]}));
    contact.output = Some(json!({"new": true, "contact": {"id": format!("ct{i:020}"), "locationId": "loc-1",
        "firstName": format!("person{i}"), "lastName": "example", "email": format!("person{i}@example.com"),
        "tags": [], "dateAdded": "2026-11-30T09:00:01.000Z"}}));
    let mut note = StepRecord::pending("note", "ghl.contacts.create_contact_note");
    note.attempts = if failed { 5 } else { 1 };
    note.status = if failed { StepStatus::Failed } else { StepStatus::Succeeded };
    note.input = Some(json!({"contactId": format!("ct{i:020}"), "body": "Other emails: none\nOther phones: none"}));
    if failed {
        note.error = Some("HTTP 500 from GHL after 5 tries: internal error".into());
        run.error = Some("step `note` (ghl.contacts.create_contact_note): HTTP 500 from GHL after 5 tries".into());
    } else {
        note.output = Some(json!({"note": {"id": format!("nt{i:020}"), "body": "Other emails: none"}}));
    }
    run.steps = vec![contact, note];
    run
}
