//! Whole-process bench of instant triggers: `cargo bench --bench hooks [-- RATE EVENTS]`.
//!
//! A sandbox (limits off) holds EVENTS contacts; a `ghlflow run` process (the release build,
//! app rate limits lifted with an `--operations` override) listens with one recipe that tags
//! each contact a `ContactCreate` delivery names. This bench then posts signed deliveries at
//! RATE per second (default 1,000/s, 5,000 events) and prints:
//! - acknowledgements: events per second answered 2xx, and the answer's latency p50/p99 (the
//!   delivery is journaled and flushed before the answer);
//! - event to GHL write: from sending the delivery to the end of the run that sent the tag
//!   request (its one step), p50/p99, from the run history;
//! - the ghlflow process's CPU per event.
//!
//! Not part of CI: the figures depend on the machine and on what else runs on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ghlflow::sandbox::SandboxOptions;
use serde_json::{Value, json};

const KEY: [u8; 32] = [7; 32];

const RECIPE: &str = r#"
name: Tag contacts the moment they are created
trigger:
  operation: ghl.contacts.on_contact_create
  connection: ghl
steps:
  - id: tag
    operation: ghl.contacts.add_tags_to_contact
    connection: ghl
    input:
      contactId: "{{trigger.id}}"
      tags: ["instant"]
"#;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/pid/stat (11 and 12 after the name).
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let rate: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let events: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5000);

    let sandbox = ghlflow::sandbox::start(SandboxOptions {
        people: 2,
        no_limits: true,
        ghl_signing_key: Some(KEY),
        ..SandboxOptions::default()
    })
    .await
    .expect("the sandbox starts");
    let contacts = sandbox.ghl_add_contacts(events);
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for app in ["ghl", "capsule"] {
        let text = std::fs::read_to_string(root.join(format!("operations/{app}/app.yaml"))).unwrap();
        let lifted: String = text
            .lines()
            .map(|l| if l.starts_with("  limits: [") { "  limits: [1000000000/1s]" } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::create_dir_all(dir.path().join(format!("ops/{app}"))).unwrap();
        std::fs::write(dir.path().join(format!("ops/{app}/app.yaml")), lifted + "\n").unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(dir.path().join("ghlflow.yaml"), format!("{}listen: 127.0.0.1:{port}\n", sandbox.config_yaml()))
        .unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    std::fs::write(dir.path().join("recipes/tag.yaml"), RECIPE).unwrap();
    let ghlflow = env!("CARGO_BIN_EXE_ghlflow");
    let ops = dir.path().join("ops");
    let mut child = std::process::Command::new(ghlflow)
        .args(["--operations", ops.to_str().unwrap(), "run"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ghlflow starts");
    let url = format!("http://127.0.0.1:{port}/hooks/ghl");
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
    for _ in 0..400 {
        if client.get(format!("http://127.0.0.1:{port}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let cpu_before = cpu_seconds(child.id());

    // Deliveries at `rate` per second, each on its own task; what each was sent at, by contact.
    let key = Arc::new(ed25519_dalek::SigningKey::from_bytes(&KEY));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(events);
    for (n, contact) in contacts.iter().enumerate() {
        ticker.tick().await;
        let body = serde_json::to_vec(&json!({
            "type": "ContactCreate",
            "locationId": sandbox.location_id(),
            "id": contact,
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "webhookId": format!("bench-{n}"),
        }))
        .unwrap();
        let signature = ghlflow::webhook::verify::sign_ed25519(&key, &body);
        let (client, url, contact) = (client.clone(), url.clone(), contact.clone());
        tasks.push(tokio::spawn(async move {
            let sent = chrono::Utc::now();
            let t = Instant::now();
            let status = client
                .post(&url)
                .header("x-ghl-signature", signature)
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            (contact, sent, t.elapsed(), status)
        }));
    }
    let mut acks = Vec::new();
    let mut sent_at = std::collections::HashMap::new();
    let mut refused = 0;
    for t in tasks {
        let (contact, sent, took, status) = t.await.unwrap();
        if status == 200 {
            acks.push(took.as_secs_f64() * 1000.0);
        } else {
            refused += 1;
        }
        sent_at.insert(contact, sent);
    }
    let acked_in = started.elapsed();

    // Every run done: then the history gives each write's end.
    let ids: std::collections::HashSet<&String> = contacts.iter().collect();
    for _ in 0..1200 {
        let tagged = sandbox
            .ghl_contacts()
            .iter()
            .filter(|c| c["id"].as_str().is_some_and(|id| ids.contains(&id.to_owned())))
            .filter(|c| c["tags"].as_array().is_some_and(|t| t.contains(&json!("instant"))))
            .count();
        if tagged == events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = cpu_seconds(child.id()) - cpu_before;
    let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let out = std::process::Command::new(ghlflow)
        .args(["runs", "list", "--json", "--limit", "1000000"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let runs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    // The run's end: its one step (the tag request) answered, and the run recorded.
    let mut to_write = Vec::new();
    for run in &runs {
        let contact = run["trigger_item_id"].as_str().unwrap_or_default();
        let finished = run["finished"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if let (Some(sent), Some(finished)) = (sent_at.get(contact), finished) {
            to_write
                .push((finished.with_timezone(&chrono::Utc) - *sent).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    acks.sort_by(f64::total_cmp);
    to_write.sort_by(f64::total_cmp);
    println!("hooks bench: {events} ContactCreate deliveries at {rate}/s");
    println!(
        "  acknowledged: {} in {:.2}s = {:.0} events/s ({refused} not 2xx); answer latency p50 {:.1} ms, p99 {:.1} ms",
        acks.len(),
        acked_in.as_secs_f64(),
        acks.len() as f64 / acked_in.as_secs_f64(),
        percentile(&acks, 0.5),
        percentile(&acks, 0.99)
    );
    println!(
        "  event to GHL write done and its run recorded ({} runs): p50 {:.1} ms, p99 {:.1} ms",
        to_write.len(),
        percentile(&to_write, 0.5),
        percentile(&to_write, 0.99)
    );
    println!("  ghlflow CPU: {:.2}s, {:.3} ms per event", cpu, cpu * 1000.0 / events as f64);
}
