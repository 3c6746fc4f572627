//! Instant triggers end to end: signed GHL deliveries and Capsule REST hooks reach the
//! listener, become runs once, and everything forged, stale, replayed, oversized or
//! malformed is refused with no run.

use std::sync::Arc;
use std::time::Duration;

use ghlflow::demo::Workspace;
use ghlflow::sandbox::SandboxOptions;
use ghlflow::store::{HookSubscription, RunStatus};
use serde_json::{Value, json};

/// The sandbox's signing key, fixed so the tests can sign deliveries of their own.
const KEY: [u8; 32] = [7; 32];

const TAG_NEW_CONTACTS: &str = r#"
name: Tag contacts the moment they are created
trigger:
  operation: ghl.contacts.on_contact_create
  connection: ghl
  start: backfill               # the safety-net poll's first read runs what exists
steps:
  - id: tag
    operation: ghl.contacts.add_tags_to_contact
    connection: ghl
    input:
      contactId: "{{trigger.id}}"
      tags: ["instant"]
"#;

const PEOPLE_NOW: &str = r#"
name: Note Capsule edits in GHL as they happen
trigger:
  operation: capsule.parties.on_party_updated
  connection: capsule
steps:
  - id: note
    operation: ghl.contacts.upsert_contact
    connection: ghl
    input:
      email: "{{trigger.id}}@instant.example.com"
      firstName: "{{trigger.firstName}}"
"#;

struct Hooks {
    ws: Workspace,
    base: String,
}

async fn hooks() -> Hooks {
    let options =
        SandboxOptions { people: 5, no_limits: true, ghl_signing_key: Some(KEY), ..SandboxOptions::default() };
    let ws = Workspace::new(options).await.unwrap();
    for (id, text) in [("tag-new-contacts", TAG_NEW_CONTACTS), ("people-now", PEOPLE_NOW)] {
        let recipe = ghlflow::recipe::compile_recipe(
            &format!("{id}.yaml"),
            id,
            text,
            ws.engine.catalog(),
            ws.engine.config(),
            &|_| None,
        )
        .unwrap_or_else(|d| panic!("{d}"));
        ws.engine.upsert_recipe(recipe);
    }
    let bound = ghlflow::listen::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", bound.addr);
    tokio::spawn(ghlflow::listen::serve(bound, Arc::clone(&ws.engine)));
    Hooks { ws, base }
}

impl Hooks {
    async fn runs(&self, recipe: &str) -> Vec<ghlflow::store::RunRecord> {
        self.ws.engine.store().runs(Some(recipe), usize::MAX).await.unwrap()
    }

    /// Waits until `recipe` has `n` runs, all finished.
    async fn settled(&self, recipe: &str, n: usize) -> Vec<ghlflow::store::RunRecord> {
        for _ in 0..100 {
            let runs = self.runs(recipe).await;
            if runs.len() >= n && runs.iter().all(|r| !r.status.is_open()) {
                return runs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.runs(recipe).await
    }

    async fn post(&self, path: &str, body: &[u8], headers: &[(&str, String)]) -> (u16, String) {
        let mut request = reqwest::Client::new().post(format!("{}{path}", self.base)).body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Posts `body` to /hooks/ghl signed with `key`.
    async fn deliver(&self, body: &[u8], key: &[u8; 32]) -> (u16, String) {
        let signature = ghlflow::webhook::verify::sign_ed25519(&ed25519_dalek::SigningKey::from_bytes(key), body);
        self.post("/hooks/ghl", body, &[("x-ghl-signature", signature)]).await
    }
}

fn contact_created(id: &str, webhook_id: &str, at: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "ContactCreate",
        "locationId": "ve9EPM428h8vShlRW1KT",
        "id": id,
        "firstName": "Ada",
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "webhookId": webhook_id,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_created_in_ghl_are_tagged_at_once_and_the_safety_net_poll_runs_nothing_twice() {
    let h = hooks().await;
    h.ws.sandbox.set_ghl_webhook_url(Some(&format!("{}/hooks/ghl", h.base))).unwrap();
    let created = h.ws.sandbox.ghl_add_contacts(3);
    let runs = h.settled("tag-new-contacts", 3).await;
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(runs.iter().all(|r| r.status == RunStatus::Succeeded), "{runs:?}");
    for id in &created {
        let contact = h.ws.sandbox.ghl_contacts().into_iter().find(|c| c["id"] == id.as_str()).unwrap();
        assert!(contact["tags"].as_array().unwrap().contains(&json!("instant")), "{contact}");
    }
    // The reconciling poll (search_contacts) backfills every contact, these three among
    // them: each of the three still ran once, by its delivery.
    for _ in 0..2 {
        let summary = h.ws.engine.run_once(&["tag-new-contacts".to_owned()]).await;
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    }
    let runs = h.runs("tag-new-contacts").await;
    assert!(runs.len() > 3, "the backfill ran the other contacts: {}", runs.len());
    for id in &created {
        let of_it = runs.iter().filter(|r| r.item_id.as_deref() == Some(id.as_str())).count();
        assert_eq!(of_it, 1, "contact {id} ran {of_it} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_replayed_oversized_and_malformed_deliveries_make_no_run() {
    let h = hooks().await;
    let now = chrono::Utc::now();

    let (status, body) = h.deliver(&contact_created("c-forged", "wh-1", now), &[9; 32]).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("bad signature"), "{body}");
    let (status, _) = h.post("/hooks/ghl", &contact_created("c-unsigned", "wh-2", now), &[]).await;
    assert_eq!(status, 401);
    let stale = now - chrono::TimeDelta::minutes(10);
    let (status, body) = h.deliver(&contact_created("c-stale", "wh-3", stale), &KEY).await;
    assert_eq!(status, 401);
    assert!(body.contains("stale"), "{body}");
    let (status, _) = h.deliver(&vec![b' '; 2 * 1024 * 1024], &KEY).await;
    assert_eq!(status, 413);
    let (status, body) = h.deliver(b"{\"type\": \"ContactCreate\", ", &KEY).await;
    assert_eq!(status, 400);
    assert!(!body.contains("ContactCreate"), "a refusal never quotes the body: {body}");
    assert!(h.runs("tag-new-contacts").await.is_empty(), "a refused delivery made a run");

    // A good one runs; the same bytes again (a replay, or a sender's retry) are acknowledged
    // and run nothing.
    let good = contact_created(&h.ws.sandbox.ghl_add_contacts(1)[0], "wh-4", now);
    assert_eq!(h.deliver(&good, &KEY).await.0, 200);
    let (status, body) = h.deliver(&good, &KEY).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], "duplicate");
    let runs = h.settled("tag-new-contacts", 1).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capsule_hook_runs_its_party_once_and_unknown_paths_are_refused() {
    let h = hooks().await;
    let token = ghlflow::webhook::new_path_token();
    let subscription = HookSubscription {
        connection: "capsule".into(),
        event: "party/updated".into(),
        token: token.clone(),
        target_url: format!("{}/hooks/capsule/{token}", h.base),
        hook_id: Some("1".into()),
    };
    h.ws.engine.store().save_hook_subscriptions(&[subscription]).await.unwrap();
    let party = json!({"id": 4242, "type": "person", "firstName": "Grace", "updatedAt": "2026-11-30T10:00:00Z"});
    let body = serde_json::to_vec(&json!({"event": "party/updated", "payload": [party]})).unwrap();

    assert_eq!(h.post("/hooks/capsule/not-a-token", &body, &[]).await.0, 404);
    let other = serde_json::to_vec(&json!({"event": "party/deleted", "payload": [party]})).unwrap();
    assert_eq!(h.post(&format!("/hooks/capsule/{token}"), &other, &[]).await.0, 401);
    assert!(h.runs("people-now").await.is_empty());

    assert_eq!(h.post(&format!("/hooks/capsule/{token}"), &body, &[]).await.0, 200);
    // Capsule sends no delivery id: the same change delivered twice runs once by its mark.
    let (status, answer) = h.post(&format!("/hooks/capsule/{token}"), &body, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&answer).unwrap()["status"], "duplicate");
    let runs = h.settled("people-now", 1).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Succeeded, "{:?}", runs[0]);
}

/// `ghlflow run` in `dir`, its output dropped.
fn start_run(dir: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"))
        .arg("run")
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the ghlflow binary starts")
}

async fn wait_for_listener(port: u16) {
    for _ in 0..200 {
        if reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the listener did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_during_a_burst_of_1000_events_runs_each_exactly_once() {
    use rand::{Rng as _, SeedableRng as _};
    const EVENTS: usize = 1000;
    let seed: u64 = std::env::var("GHLFLOW_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    });
    println!("kill -9 seed {seed} (GHLFLOW_KILL_SEED={seed} replays these kill points)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    // The sender tries again quickly while ghlflow is down (real senders back off longer).
    let faults = ghlflow::sandbox::DeliveryFaults {
        max_attempts: 12,
        retry_base: Duration::from_millis(100),
        ..Default::default()
    };
    let sandbox = ghlflow::sandbox::start(SandboxOptions {
        people: 2,
        no_limits: true,
        ghl_signing_key: Some(KEY),
        delivery_faults: faults,
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ghlflow.yaml"), format!("{}listen: 127.0.0.1:{port}\n", sandbox.config_yaml()))
        .unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    std::fs::write(dir.path().join("recipes/tag-new-contacts.yaml"), TAG_NEW_CONTACTS.replace("  start: backfill", ""))
        .unwrap();
    sandbox.set_ghl_webhook_url(Some(&format!("http://127.0.0.1:{port}/hooks/ghl"))).unwrap();

    let mut child = start_run(dir.path());
    wait_for_listener(port).await;
    let mut created = Vec::new();
    let mut kills = 0;
    while created.len() < EVENTS {
        created.extend(sandbox.ghl_add_contacts(100));
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..400))).await;
        child.kill().unwrap(); // SIGKILL, mid-burst
        child.wait().unwrap();
        kills += 1;
        child = start_run(dir.path());
        wait_for_listener(port).await;
    }

    // Every delivery answered 2xx in the end, and every run finished.
    let mut delivered = false;
    for _ in 0..600 {
        let log = sandbox.deliveries();
        let accepted: std::collections::HashSet<&str> = log
            .iter()
            .filter(|d| d.event == "ContactCreate" && d.status.is_some_and(|s| (200..300).contains(&s)))
            .map(|d| d.id.as_str())
            .collect();
        if accepted.len() >= EVENTS {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(delivered, "not every event was acknowledged");
    let tagged = |sandbox: &ghlflow::sandbox::Sandbox| {
        let ids: std::collections::HashSet<String> = created.iter().cloned().collect();
        sandbox
            .ghl_contacts()
            .into_iter()
            .filter(|c| c["id"].as_str().is_some_and(|id| ids.contains(id)))
            .filter(|c| c["tags"].as_array().is_some_and(|t| t.contains(&json!("instant"))))
            .count()
    };
    for _ in 0..600 {
        if tagged(&sandbox) == EVENTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(tagged(&sandbox), EVENTS, "every new contact was tagged");

    let out = crate::util::ghlflow(dir.path(), &["runs", "list", "--json", "--limit", "100000"]);
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    let runs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut per_contact = std::collections::HashMap::<String, usize>::new();
    for run in &runs {
        *per_contact.entry(run["trigger_item_id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    for id in &created {
        assert_eq!(per_contact.get(id).copied(), Some(1), "contact {id}: {:?} runs", per_contact.get(id));
    }
    assert_eq!(runs.len(), EVENTS, "no run of anything else");
    println!("{kills} kills, {} deliveries attempted", sandbox.deliveries().len());
}
