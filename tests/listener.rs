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
