//! The sandbox pushing events, seen from a receiver on 127.0.0.1:0: Capsule REST hooks
//! (subscribe, list, unsubscribe, the limit of 20, the `{event, payload: [record]}` envelope,
//! no events Capsule does not send), GHL webhooks signed with Ed25519 over the exact bytes
//! (verified with the key the sandbox prints), and delivery faults: duplicates with the same
//! `webhookId`, drops, retries after a 500, reordering that a seed repeats, and a receiver
//! that never answers without stalling the sandbox.
//!
//! Real time with short backoffs rather than `tokio::time::pause`: deliveries cross real
//! sockets, and a paused clock would fire the sender's timeouts while the runtime waits on
//! them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use ghlflow::sandbox::{self, DeliveryFaults, DeliveryRecord, LOCATION_ID, Sandbox, SandboxOptions};

/// One request the receiver got.
#[derive(Debug)]
struct Hit {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: std::time::Instant,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook receiver: records every request, answers with the statuses queued (200 once
/// they run out), or never answers when `hang` is set.
struct Receiver {
    url: String,
    hits: mpsc::UnboundedReceiver<Hit>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
}

async fn receiver(hang: bool) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, hits) = mpsc::unbounded_channel();
    let statuses: Arc<Mutex<VecDeque<u16>>> = Arc::default();
    let queued = Arc::clone(&statuses);
    let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let (tx, queued) = (tx.clone(), Arc::clone(&queued));
        async move {
            let _ = tx.send(Hit { path: uri.path().to_owned(), headers, body, at: std::time::Instant::now() });
            if hang {
                std::future::pending::<()>().await;
            }
            let status = queued.lock().unwrap().pop_front().unwrap_or(200);
            StatusCode::from_u16(status).unwrap()
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url, hits, statuses }
}

impl Receiver {
    async fn next(&mut self) -> Hit {
        tokio::time::timeout(Duration::from_secs(10), self.hits.recv())
            .await
            .expect("no delivery within 10 s")
            .expect("the receiver stopped")
    }

    /// Nothing more arrives within `wait`.
    async fn quiet(&mut self, wait: Duration) {
        if let Ok(Some(hit)) = tokio::time::timeout(wait, self.hits.recv()).await {
            panic!("unexpected delivery to {}: {}", hit.path, String::from_utf8_lossy(&hit.body));
        }
    }
}

async fn start(ghl_url: Option<String>) -> Sandbox {
    sandbox::start(SandboxOptions {
        people: 30,
        ghl_webhook_url: ghl_url,
        ghl_signing_key: Some([42; 32]),
        ..SandboxOptions::default()
    })
    .await
    .unwrap()
}

/// Fast retries, so that a test sees them in milliseconds.
fn quick(faults: DeliveryFaults) -> DeliveryFaults {
    DeliveryFaults { retry_base: Duration::from_millis(20), ..faults }
}

async fn subscribe(sandbox: &Sandbox, event: &str, target: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/resthooks", sandbox.capsule_base_url()))
        .bearer_auth("sandbox-capsule-token")
        .json(&json!({"restHook": {"event": event, "targetUrl": target, "embed": "tags,fields"}}))
        .send()
        .await
        .unwrap()
}

async fn subscribed(sandbox: &Sandbox, event: &str, target: &str) -> i64 {
    let r = subscribe(sandbox, event, target).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    body["restHook"]["id"].as_i64().unwrap()
}

/// Waits until the delivery log satisfies `done`.
async fn log_until(sandbox: &Sandbox, done: impl Fn(&[DeliveryRecord]) -> bool) -> Vec<DeliveryRecord> {
    for _ in 0..500 {
        let log = sandbox.deliveries();
        if done(&log) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the delivery log never got there: {:#?}", sandbox.deliveries());
}

#[tokio::test]
async fn capsule_rest_hooks_deliver_changes_in_capsules_envelope() {
    let sandbox = start(None).await;
    let mut rx = receiver(false).await;
    let target = format!("{}/capsule/parties", rx.url);

    let r = subscribe(&sandbox, "party/updated", &target).await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let hook: Value = r.json().await.unwrap();
    let id = hook["restHook"]["id"].as_i64().unwrap();
    assert_eq!(location, format!("{}/resthooks/{id}", sandbox.capsule_base_url()));
    assert_eq!(hook["restHook"]["event"], "party/updated");
    assert_eq!(hook["restHook"]["targetUrl"], target.as_str());
    let task_hook = subscribed(&sandbox, "task/completed", &format!("{}/capsule/tasks", rx.url)).await;

    let http = reqwest::Client::new();
    let list: Value = http
        .get(format!("{}/resthooks", sandbox.capsule_base_url()))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<i64> = list["restHooks"].as_array().unwrap().iter().map(|h| h["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [id, task_hook]);

    // A person edited in Capsule arrives as the party GET shows it (with the hook's embed).
    let person = sandbox.capsule_people()[3];
    assert!(sandbox.capsule_touch_person(person));
    let hit = rx.next().await;
    assert_eq!(hit.path, "/capsule/parties");
    assert_eq!(hit.headers["content-type"], "application/json");
    let body = hit.json();
    assert_eq!(body["event"], "party/updated");
    assert_eq!(body["payload"], json!([sandbox.capsule_party(person).unwrap()]));
    assert!(body["payload"][0]["tags"].is_array(), "the hook asked for tags: {body}");

    // Notes and task deletions send nothing (Capsule has no such events); a completion does.
    sandbox.capsule_add_notes(2);
    sandbox.capsule_edit_notes(1);
    let task = sandbox.capsule_add_tasks(2);
    assert!(sandbox.capsule_delete_task(task[0]));
    assert!(sandbox.capsule_complete_task(task[1]));
    let hit = rx.next().await;
    assert_eq!(hit.path, "/capsule/tasks");
    let body = hit.json();
    assert_eq!(body["event"], "task/completed");
    assert_eq!(body["payload"][0]["id"], task[1]);
    assert_eq!(body["payload"][0]["status"], "COMPLETED");
    rx.quiet(Duration::from_millis(300)).await;

    // Capsule has no note events to subscribe to.
    let r = subscribe(&sandbox, "entry/created", &target).await;
    assert_eq!(r.status(), 422);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["errors"][0]["field"], "event", "{error}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_21st_rest_hook_is_refused_and_an_unsubscribed_hook_stops() {
    let sandbox = start(None).await;
    let mut rx = receiver(false).await;
    let target = format!("{}/hook", rx.url);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(subscribed(&sandbox, "party/updated", &target).await);
    }
    let r = subscribe(&sandbox, "party/created", &target).await;
    assert_eq!(r.status(), 422);
    let error: Value = r.json().await.unwrap();
    assert!(error["errors"][0]["message"].as_str().unwrap().contains("20"), "{error}");
    assert_eq!(sandbox.capsule_rest_hooks().len(), 20);

    // Unsubscribe all but the last: one edit, one delivery, from the last hook.
    let http = reqwest::Client::new();
    for id in &ids[..19] {
        let r = http
            .delete(format!("{}/resthooks/{id}", sandbox.capsule_base_url()))
            .bearer_auth("t")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let r = http.delete(format!("{}/resthooks/{}", sandbox.capsule_base_url(), ids[0])).bearer_auth("t").send().await;
    assert_eq!(r.unwrap().status(), 404);
    let kept = ids[19];
    let person = sandbox.capsule_people()[0];
    sandbox.capsule_touch_person(person);
    assert_eq!(rx.next().await.json()["payload"][0]["id"], person);
    rx.quiet(Duration::from_millis(300)).await;
    let log = sandbox.deliveries();
    assert_eq!(log.len(), 1, "{log:#?}");
    assert!(log[0].id.starts_with(&format!("hook-{kept}-")), "{log:#?}");

    // Room again for a new subscription.
    assert_eq!(subscribe(&sandbox, "party/created", &target).await.status(), 201);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn ghl_webhooks_verify_with_the_printed_key_over_the_raw_bytes() {
    let mut rx = receiver(false).await;
    let sandbox = start(Some(format!("{}/ghl", rx.url))).await;
    let key_b64 = sandbox.ghl_webhook_public_key();
    assert!(sandbox.config_yaml().contains(&key_b64), "the config output names the key");
    let key = VerifyingKey::from_public_key_der(&BASE64.decode(&key_b64).unwrap()).unwrap();
    assert_eq!(VerifyingKey::from_public_key_pem(&sandbox.ghl_webhook_public_key_pem()).unwrap(), key);

    // A contact created through the API.
    let r = reqwest::Client::new()
        .post(format!("{}/contacts/", sandbox.ghl_base_url()))
        .bearer_auth("sandbox-ghl-token")
        .header("Version", "2021-07-28")
        .json(
            &json!({"locationId": LOCATION_ID, "firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.org"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();

    let hit = rx.next().await;
    assert_eq!(hit.path, "/ghl");
    let signature = BASE64.decode(hit.headers["x-ghl-signature"].as_bytes()).unwrap();
    let signature = Signature::from_slice(&signature).unwrap();
    key.verify(&hit.body, &signature).expect("the signature verifies over the bytes received");
    let mut tampered = hit.body.to_vec();
    tampered[10] ^= 1;
    assert!(key.verify(&tampered, &signature).is_err(), "one changed byte fails verification");

    let body = hit.json();
    assert_eq!(body["type"], "ContactCreate");
    assert_eq!(body["locationId"], LOCATION_ID);
    assert_eq!(body["id"], contact_id.as_str());
    assert_eq!(body["email"], "ada@example.org");
    let sent = chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now() - sent.to_utc()).num_seconds().abs() < 60);
    let first_id = body["webhookId"].as_str().unwrap().to_owned();
    assert!(!first_id.is_empty());

    // A person deleting the contact in GHL: ContactDelete with the contact as it was.
    assert!(sandbox.ghl_delete_contact(&contact_id));
    let body = rx.next().await.json();
    assert_eq!(body["type"], "ContactDelete");
    assert_eq!(body["firstName"], "Ada");
    assert_ne!(body["webhookId"], first_id.as_str(), "every event has its own webhookId");

    // Off: nothing more is sent.
    sandbox.set_ghl_webhook_url(None).unwrap();
    sandbox.ghl_add_contacts(1);
    rx.quiet(Duration::from_millis(300)).await;
    assert!(sandbox.set_ghl_webhook_url(Some("ftp://example.org")).is_err());
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_duplicated_delivery_arrives_twice_with_the_same_webhook_id() {
    let mut rx = receiver(false).await;
    let sandbox = start(Some(rx.url.clone())).await;
    sandbox.set_delivery_faults(quick(DeliveryFaults { duplicate_rate: 1.0, ..DeliveryFaults::default() })).unwrap();
    sandbox.ghl_add_contacts(1);
    let (a, b) = (rx.next().await, rx.next().await);
    assert_eq!(a.body, b.body);
    assert_eq!(a.headers["x-ghl-signature"], b.headers["x-ghl-signature"]);
    assert_eq!(a.json()["type"], "ContactCreate");
    rx.quiet(Duration::from_millis(200)).await;
    let log = sandbox.deliveries();
    assert_eq!(log.iter().map(|r| r.duplicate).collect::<Vec<_>>(), [false, true], "{log:#?}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_dropped_delivery_never_arrives() {
    let mut rx = receiver(false).await;
    let sandbox = start(Some(rx.url.clone())).await;
    sandbox.set_delivery_faults(quick(DeliveryFaults { drop_rate: 1.0, ..DeliveryFaults::default() })).unwrap();
    let dropped = sandbox.ghl_add_contacts(1);
    log_until(&sandbox, |log| log.iter().any(|r| r.attempt == 0)).await;
    sandbox.set_delivery_faults(DeliveryFaults::default()).unwrap();
    let kept = sandbox.ghl_add_contacts(1);
    // The first thing to arrive is the second contact: the first was never sent.
    let body = rx.next().await.json();
    assert_eq!(body["id"], kept[0].as_str());
    assert_ne!(dropped, kept);
    rx.quiet(Duration::from_millis(200)).await;
    let log = sandbox.deliveries();
    assert_eq!(log[0].error.as_deref(), Some("dropped on purpose"), "{log:#?}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_500_from_the_receiver_is_retried_with_the_same_event() {
    let mut rx = receiver(false).await;
    rx.statuses.lock().unwrap().extend([500, 503]);
    let sandbox = start(Some(rx.url.clone())).await;
    sandbox.set_delivery_faults(quick(DeliveryFaults::default())).unwrap();
    sandbox.ghl_add_contacts(1);
    let hits = [rx.next().await, rx.next().await, rx.next().await];
    assert!(hits.iter().all(|h| h.body == hits[0].body), "every retry carries the same bytes");
    // The backoff doubles: 20 ms before the second attempt, 40 ms before the third.
    assert!(hits[1].at - hits[0].at >= Duration::from_millis(20), "{:?}", hits[1].at - hits[0].at);
    assert!(hits[2].at - hits[1].at >= Duration::from_millis(40), "{:?}", hits[2].at - hits[1].at);
    let log = log_until(&sandbox, |log| log.len() == 3).await;
    let seen: Vec<(u32, Option<u16>)> = log.iter().map(|r| (r.attempt, r.status)).collect();
    assert_eq!(seen, [(1, Some(500)), (2, Some(503)), (3, Some(200))]);
    rx.quiet(Duration::from_millis(200)).await;

    // GHL's documented policy retries a 429 only: a 500 is then final.
    rx.statuses.lock().unwrap().extend([500]);
    sandbox
        .set_delivery_faults(quick(DeliveryFaults {
            retry_on: sandbox::RetryOn::TooManyRequests,
            ..Default::default()
        }))
        .unwrap();
    sandbox.ghl_add_contacts(1);
    rx.next().await;
    rx.quiet(Duration::from_millis(300)).await;
    assert_eq!(sandbox.deliveries().len(), 4);
    sandbox.shutdown().await;
}

/// The order GHL events arrive in, for `n` contacts added with these faults.
async fn arrival_order(faults: DeliveryFaults, n: usize) -> (Vec<String>, Vec<String>) {
    let mut rx = receiver(false).await;
    let sandbox = start(Some(rx.url.clone())).await;
    sandbox.set_delivery_faults(quick(faults)).unwrap();
    let added = sandbox.ghl_add_contacts(n);
    let mut arrived = Vec::new();
    for _ in 0..n {
        arrived.push(rx.next().await.json()["id"].as_str().unwrap().to_owned());
    }
    sandbox.shutdown().await;
    (added, arrived)
}

#[tokio::test]
async fn reordering_swaps_deliveries_and_a_seed_repeats_it() {
    // Every event held back for the next: pairs swap.
    let (added, arrived) = arrival_order(DeliveryFaults { reorder_rate: 1.0, ..DeliveryFaults::default() }, 4).await;
    assert_eq!(arrived, [added[1].clone(), added[0].clone(), added[3].clone(), added[2].clone()]);

    // Without faults, the order is kept.
    let (added, arrived) = arrival_order(DeliveryFaults::default(), 4).await;
    assert_eq!(arrived, added);

    // Some held back: the same seed, the same order (the seeded data gives the same ids).
    let some = DeliveryFaults { reorder_rate: 0.5, seed: Some(7), ..DeliveryFaults::default() };
    let (added, first) = arrival_order(some, 8).await;
    let (_, second) = arrival_order(some, 8).await;
    assert_eq!(first, second);
    assert_ne!(first, added, "seed 7 reorders some of 8");
    let mut sorted = first.clone();
    sorted.sort();
    let mut expected = added.clone();
    expected.sort();
    assert_eq!(sorted, expected, "nothing lost or doubled");
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_stall_the_sandbox() {
    let mut rx = receiver(true).await;
    let sandbox = start(Some(rx.url.clone())).await;
    sandbox
        .set_delivery_faults(DeliveryFaults {
            timeout: Duration::from_millis(1200),
            max_attempts: 1,
            ..DeliveryFaults::default()
        })
        .unwrap();
    sandbox.ghl_add_contacts(3);
    rx.next().await;
    // The API answers at once while the delivery hangs.
    let started = std::time::Instant::now();
    let r = reqwest::Client::new()
        .get(format!("{}/contacts/?locationId={LOCATION_ID}", sandbox.ghl_base_url()))
        .bearer_auth("t")
        .header("Version", "2021-07-28")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(800), "{:?}", started.elapsed());
    // Each attempt gives up at its timeout and the lane moves on to the next.
    rx.next().await;
    rx.next().await;
    let log = log_until(&sandbox, |log| log.len() == 3).await;
    assert!(log.iter().all(|r| r.status.is_none() && r.error.as_deref().is_some_and(|e| e.contains("timed out"))));
    sandbox.shutdown().await;
}

/// A GHL request with the sandbox's token and the catalog's Version.
fn ghl_request(sandbox: &Sandbox, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, format!("{}{path}", sandbox.ghl_base_url()))
        .bearer_auth("sandbox-ghl-token")
        .header("Version", "2021-07-28")
}

#[tokio::test]
async fn ghl_sends_note_task_opportunity_and_message_events() {
    let mut rx = receiver(false).await;
    let sandbox = start(Some(rx.url.clone())).await;
    let contact = sandbox.ghl_add_contacts(1).remove(0);
    assert_eq!(rx.next().await.json()["type"], "ContactCreate");

    let r = ghl_request(&sandbox, reqwest::Method::POST, &format!("/contacts/{contact}/notes"))
        .json(&json!({"body": "Called, wants a demo"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let note = rx.next().await.json();
    assert_eq!((note["type"].as_str(), note["contactId"].as_str()), (Some("NoteCreate"), Some(contact.as_str())));
    assert_eq!(note["body"], "Called, wants a demo");

    let r = ghl_request(&sandbox, reqwest::Method::POST, &format!("/contacts/{contact}/tasks"))
        .json(&json!({"title": "Send the demo link", "dueDate": "2026-12-01T10:00:00Z", "completed": false}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let task_id = r.json::<Value>().await.unwrap()["task"]["id"].as_str().unwrap().to_owned();
    let task = rx.next().await.json();
    assert_eq!((task["type"].as_str(), task["id"].as_str()), (Some("TaskCreate"), Some(task_id.as_str())));
    let r = ghl_request(&sandbox, reqwest::Method::PUT, &format!("/contacts/{contact}/tasks/{task_id}/completed"))
        .json(&json!({"completed": true}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    assert_eq!(rx.next().await.json()["type"], "TaskComplete");

    // A deal won in GHL: the update, then the status change.
    let won = sandbox.ghl_win_deals(1);
    assert_eq!(won.len(), 1);
    let (update, status) = (rx.next().await.json(), rx.next().await.json());
    assert_eq!(
        (update["type"].as_str(), status["type"].as_str()),
        (Some("OpportunityUpdate"), Some("OpportunityStatusUpdate"))
    );
    assert_eq!((status["id"].as_str(), status["status"].as_str()), (Some(won[0].as_str()), Some("won")));

    // The contact replies by SMS.
    let message = sandbox.ghl_receive_message(&contact, "SMS", "Tuesday works").unwrap();
    let inbound = rx.next().await.json();
    assert_eq!(inbound["type"], "InboundMessage");
    assert_eq!(inbound["messageId"], message.as_str());
    assert_eq!((inbound["direction"].as_str(), inbound["messageType"].as_str()), (Some("inbound"), Some("SMS")));
    assert_eq!(inbound["body"], "Tuesday works");
    assert!(sandbox.ghl_messages().iter().any(|m| m["id"] == message.as_str()));
    assert!(sandbox.ghl_receive_message("no-such-contact", "SMS", "hi").is_none());
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_control_api_sets_the_webhook_url_and_delivery_faults() {
    let mut rx = receiver(false).await;
    let sandbox = start(None).await;
    let http = reqwest::Client::new();
    let base = format!("{}/_sandbox", sandbox.ghl_base_url());
    let info: Value = http.get(format!("{base}/push")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["ghl_webhook_public_key"], sandbox.ghl_webhook_public_key().as_str());
    assert!(info["ghl_webhook_url"].is_null());

    let r = http.put(format!("{base}/push/ghl")).json(&json!({"url": "not a url"})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let r = http.put(format!("{base}/push/ghl")).json(&json!({"url": rx.url})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sandbox.ghl_webhook_url().as_deref(), Some(rx.url.as_str()));

    let r = http.put(format!("{base}/push/faults")).json(&json!({"drop_rate": 1.5})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let r = http.put(format!("{base}/push/faults")).json(&json!({"dropped": 1})).send().await.unwrap();
    assert_eq!(r.status(), 422, "unknown fields are refused");
    let r = http
        .put(format!("{base}/push/faults"))
        .json(&json!({"duplicate_rate": 1, "retry_on": "429", "seed": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let faults = sandbox.delivery_faults();
    assert_eq!(
        (faults.duplicate_rate, faults.retry_on, faults.seed),
        (1.0, sandbox::RetryOn::TooManyRequests, Some(3))
    );

    let r = http.post(format!("{base}/ghl/contacts/add")).body(r#"{"count": 1}"#).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(rx.next().await.body, rx.next().await.body);
    let log: Value = http.get(format!("{base}/deliveries")).send().await.unwrap().json().await.unwrap();
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0]["event"], "ContactCreate");
    assert_eq!(log[0]["sender"], "ghl");
    assert_eq!(log[0]["status"], 200);
    assert_eq!(log[1]["duplicate"], true);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn with_concurrency_a_slow_receiver_gets_deliveries_side_by_side() {
    let mut rx = receiver(true).await;
    let sandbox = start(Some(rx.url.clone())).await;
    let faults =
        DeliveryFaults { concurrency: 3, timeout: Duration::from_secs(5), max_attempts: 1, ..Default::default() };
    sandbox.set_delivery_faults(faults).unwrap();
    let started = std::time::Instant::now();
    sandbox.ghl_add_contacts(3);
    for _ in 0..3 {
        rx.next().await;
    }
    // One at a time, the second would wait for the first's 5 s timeout.
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    sandbox.shutdown().await;
}

#[tokio::test]
async fn ghlflow_sandbox_prints_the_public_key_and_refuses_bad_push_flags() {
    use tokio::io::AsyncBufReadExt;
    let ghlflow = env!("CARGO_BIN_EXE_ghlflow");
    for (flag, value, says) in [
        ("--ghl-webhook-url", "ftp://example.org/x", "must be an http(s) URL"),
        ("--delivery-faults", r#"{"drop_rate": 2}"#, "between 0 and 1"),
        ("--delivery-faults", r#"{"dropped": 1}"#, "--delivery-faults: unknown field `dropped`"),
    ] {
        let out = tokio::process::Command::new(ghlflow)
            .args(["sandbox", "--port", "0", "--people", "5", flag, value])
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }

    let mut child = tokio::process::Command::new(ghlflow)
        .args(["sandbox", "--port", "0", "--people", "5", "--ghl-webhook-url", "http://127.0.0.1:9/hooks"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let key = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(key) = line.strip_prefix("sandbox: export GHL_WEBHOOK_PUBLIC_KEY=") {
                return key.to_owned();
            }
        }
        panic!("no public key line");
    })
    .await
    .unwrap();
    let der = BASE64.decode(&key).unwrap();
    VerifyingKey::from_public_key_der(&der).expect("an Ed25519 SubjectPublicKeyInfo");
    // The printed ghlflow.yaml names the same key.
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = out.next_line().await.unwrap() {
            if line.contains("webhook_public_keys") {
                return line;
            }
        }
        panic!("no webhook_public_keys line in the printed configuration");
    })
    .await
    .unwrap();
    child.kill().await.unwrap();
    assert_eq!(line.trim(), format!("webhook_public_keys: [\"{key}\"]"));
}

#[tokio::test]
async fn the_legacy_rsa_signature_verifies_when_asked_for() {
    use rsa::pkcs1v15;
    use rsa::pkcs8::DecodePublicKey as _;
    let mut rx = receiver(false).await;
    let sandbox = sandbox::start(SandboxOptions {
        people: 5,
        ghl_webhook_url: Some(rx.url.clone()),
        ghl_legacy_signature: true,
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    let der = BASE64.decode(sandbox.ghl_webhook_legacy_public_key().unwrap()).unwrap();
    let key = pkcs1v15::VerifyingKey::<sha2::Sha256>::from_public_key_der(&der).unwrap();
    sandbox.ghl_add_contacts(1);
    let hit = rx.next().await;
    let signature = BASE64.decode(hit.headers["x-wh-signature"].as_bytes()).unwrap();
    assert_eq!(signature.len(), 256, "a 2048-bit key signs in 256 bytes");
    let signature = pkcs1v15::Signature::try_from(signature.as_slice()).unwrap();
    rsa::signature::Verifier::verify(&key, &hit.body, &signature).expect("RSA SHA-256 over the bytes received");
    let mut tampered = hit.body.to_vec();
    tampered[3] ^= 1;
    assert!(rsa::signature::Verifier::verify(&key, &tampered, &signature).is_err());
    assert!(hit.headers.contains_key("x-ghl-signature"), "the Ed25519 signature is there too");
    sandbox.shutdown().await;

    // Not asked for: no legacy header and no key.
    let mut rx = receiver(false).await;
    let sandbox = start(Some(rx.url.clone())).await;
    assert!(sandbox.ghl_webhook_legacy_public_key().is_none());
    sandbox.ghl_add_contacts(1);
    assert!(!rx.next().await.headers.contains_key("x-wh-signature"));
    sandbox.shutdown().await;
}
