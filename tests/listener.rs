//! The listener of `ghlflow run`: the health probes, and the headers every answer carries.

use std::sync::Arc;
use std::time::Duration;

use ghlflow::demo::Workspace;
use ghlflow::sandbox::SandboxOptions;

async fn get(url: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.text().await.unwrap(), headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_scheduler_and_the_stop() {
    let ws = Workspace::new(SandboxOptions { people: 3, ..SandboxOptions::default() }).await.unwrap();
    let engine = Arc::clone(&ws.engine);
    let bound = ghlflow::listen::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", bound.addr);
    let server = tokio::spawn(ghlflow::listen::serve(bound, Arc::clone(&engine)));

    let (status, body, headers) = get(&format!("{base}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");

    // No scheduler yet (as under `run --once`): alive, not ready.
    let (status, body, _) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the scheduler is not running"), "{body}");

    let scheduler = tokio::spawn(ghlflow::engine::scheduler::run(
        Arc::clone(&engine),
        None,
        Arc::new(ghlflow::engine::scheduler::Lateness::default()),
        std::future::pending(),
    ));
    let mut ready = false;
    for _ in 0..50 {
        if get(&format!("{base}/readyz")).await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the engine never became ready once its scheduler ran");

    // Stopping: the scheduler drains and the listener closes.
    engine.stop();
    tokio::time::timeout(Duration::from_secs(40), scheduler).await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
    assert!(reqwest::get(format!("{base}/healthz")).await.is_err(), "the listener still answers after the stop");
}

#[test]
fn a_listen_address_that_is_taken_stops_run_when_the_file_asks_for_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    std::fs::write(
        dir.path().join("ghlflow.yaml"),
        format!(
            "connections:\n  capsule: {{ app: capsule, auth: {{ type: bearer, token: t-1234 }} }}\nlisten: 127.0.0.1:{port}\n"
        ),
    )
    .unwrap();
    let out = crate::util::ghlflow(dir.path(), &["run"]);
    assert!(!out.status.success());
    let err = crate::util::stderr(&out);
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `ghlflow_runs_total` by (recipe, status), from a scrape that must parse.
fn runs_by_status(exposition: &str) -> std::collections::BTreeMap<(String, String), f64> {
    let scrape = prometheus_parse::Scrape::parse(exposition.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses as Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "ghlflow_runs_total")
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("runs_total is not a counter: {other:?}"),
            };
            ((s.labels["recipe"].to_owned(), s.labels["status"].to_owned()), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_backfill_count_what_the_history_shows() {
    let ws = Workspace::new(SandboxOptions { people: 25, no_limits: true, ..SandboxOptions::default() }).await.unwrap();
    // The people recipe under an id of its own: the process's counters are shared with the
    // other tests of this binary, and this one's label is counted by no one else.
    let text = std::fs::read_to_string(crate::util::root().join("recipes/capsule-people.yaml")).unwrap();
    let recipe = ghlflow::recipe::compile_recipe(
        "metrics-people.yaml",
        "metrics-people",
        &text,
        ws.engine.catalog(),
        ws.engine.config(),
        &|_| None,
    )
    .unwrap();
    ws.engine.upsert_recipe(recipe);
    let summary = ws.engine.run_once(&["metrics-people".to_owned()]).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);

    let bound = ghlflow::listen::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}/metrics", bound.addr);
    tokio::spawn(ghlflow::listen::serve(bound, Arc::clone(&ws.engine)));
    let (status, exposition, headers) = get(&url).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let counts: std::collections::BTreeMap<(String, String), f64> =
        runs_by_status(&exposition).into_iter().filter(|((recipe, _), _)| recipe == "metrics-people").collect();

    let runs = ws.engine.store().runs(Some("metrics-people"), usize::MAX).await.unwrap();
    let mut shown: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for run in &runs {
        *shown.entry((run.recipe.clone(), run.status.as_str().to_owned())).or_default() += 1.0;
    }
    assert!(runs.len() >= 25, "a run per party (people, and organisations filtered out): {}", runs.len());
    assert_eq!(counts, shown, "/metrics counts what the history shows");
    assert!(exposition.contains("ghlflow_http_requests_total{app=\"ghl\",status=\"200\"}"), "{exposition}");
    assert!(exposition.contains("ghlflow_step_duration_seconds_bucket{"), "{exposition}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_metrics_ask_for_the_configured_credentials() {
    use base64::Engine as _;
    let sandbox = ghlflow::sandbox::start(SandboxOptions { people: 2, ..SandboxOptions::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Bound to every interface: credentials required. (Requests still go to loopback.)
    std::fs::write(
        dir.path().join("ghlflow.yaml"),
        format!(
            "{}listen: 0.0.0.0:{port}\nserver: {{ auth: {{ type: basic, username: ops, password: '${{PAGE_PASSWORD}}' }} }}\n",
            sandbox.config_yaml()
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"))
        .arg("run")
        .current_dir(dir.path())
        .env("PAGE_PASSWORD", "correct horse")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let client = reqwest::Client::new();
    let mut answer = None;
    for _ in 0..100 {
        if let Ok(r) = client.get(&url).send().await {
            answer = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let basic = |user: &str, pass: &str| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    let wrong = client.get(&url).header("authorization", basic("ops", "battery staple")).send().await.map(status);
    let right = client.get(&url).header("authorization", basic("ops", "correct horse")).send().await.map(status);
    let probe = client.get(format!("http://127.0.0.1:{port}/healthz")).send().await.map(status);
    let _ = child.kill();
    let _ = child.wait();
    let refused = answer.expect("the listener answers");
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Basic realm=\"ghlflow\"");
    assert_eq!(wrong.unwrap(), 401);
    assert_eq!(right.unwrap(), 200);
    assert_eq!(probe.unwrap(), 200, "the health probe needs no credentials");
}
