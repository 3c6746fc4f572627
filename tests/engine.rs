//! The engine end to end: the `ghlflow` binary polling a fake Capsule feed and running steps
//! against a fake GHL, with the state store on disk between runs.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_api::{FakeApi, Recorded, Reply};

/// The fake world: Capsule parties and entries the test edits, GHL answers it records.
#[derive(Default)]
struct World {
    parties: Vec<Value>,
    /// Entries newest first, served two per page.
    entries: Vec<Value>,
    /// Capsule tasks, all on one page.
    tasks: Vec<Value>,
    next_contact: u64,
    /// Status GHL answers note requests with (200 by default).
    note_status: u16,
    /// Delay before answering note requests.
    note_delay: Duration,
}

fn party(id: u64, first: &str, updated: &str) -> Value {
    json!({
        "id": id, "type": "person", "firstName": first, "lastName": "Tester",
        "about": format!("about {first}"),
        "emailAddresses": [{"id": id * 10, "type": "Work", "address": format!("{}@example.com", first.to_lowercase())}],
        "phoneNumbers": [], "addresses": [], "tags": [{"id": 1, "name": "vip"}, {"id": 2, "name": "lead"}],
        "createdAt": "2026-01-01T00:00:00Z", "updatedAt": updated, "score": 7
    })
}

fn entry(id: u64, updated: &str) -> Value {
    json!({"id": id, "type": "note", "content": format!("note {id}"), "party": {"id": 1}, "createdAt": updated, "updatedAt": updated})
}

/// Serves the world: Capsule under /api/v2, GHL at the root.
fn serve(world: Arc<Mutex<World>>) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    move |r: &Recorded| {
        let mut w = world.lock().unwrap();
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/api/v2/parties") => {
                let since = r.query_param("since");
                let items: Vec<Value> = w
                    .parties
                    .iter()
                    .filter(|p| since.as_deref().is_none_or(|s| p["updatedAt"].as_str().unwrap_or("") > s))
                    .cloned()
                    .collect();
                Reply::json(200, json!({"parties": items}))
            }
            ("GET", "/api/v2/tasks") => Reply::json(200, json!({"tasks": w.tasks})),
            ("GET", "/api/v2/entries") => {
                let page: usize = r.query_param("page").and_then(|p| p.parse().ok()).unwrap_or(1);
                let chunk: Vec<Value> = w.entries.iter().skip((page - 1) * 2).take(2).cloned().collect();
                let mut reply = Reply::json(200, json!({"entries": chunk}));
                if w.entries.len() > page * 2 {
                    let base = r.header("host").unwrap_or("127.0.0.1");
                    reply = reply.header(
                        "link",
                        format!("<http://{base}/api/v2/entries?page={}&perPage=2>; rel=\"next\"", page + 1),
                    );
                }
                reply
            }
            ("POST", "/contacts/upsert") => {
                w.next_contact += 1;
                let body = r.json();
                Reply::json(
                    200,
                    json!({"new": true, "contact": {"id": format!("contact{}", w.next_contact), "email": body["email"]}}),
                )
            }
            ("POST", p) if p.starts_with("/contacts/") && p.ends_with("/notes") => {
                let reply = Reply::json(w.note_status, json!({"note": {"id": "note1", "body": r.json()["body"]}}));
                // A 429 asks to wait two hours (the burst window is reset far away).
                let reply = if w.note_status == 429 { reply.header("retry-after", "7200") } else { reply };
                reply.delayed(w.note_delay)
            }
            ("POST", "/opportunities/") => Reply::json(201, json!({"opportunity": {"id": "opp1"}})),
            _ => Reply::json(404, json!({"message": format!("no route {} {}", r.method, r.path)})),
        }
    }
}

/// A folder with ghlflow.yaml, recipes/ and a fast retry policy for GHL.
struct Flow {
    dir: tempfile::TempDir,
}

impl Flow {
    fn new(api: &FakeApi, recipes: &[(&str, &str)]) -> Flow {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ghlflow.yaml"),
            format!(
                "connections:\n  ghl:\n    app: ghl\n    location_id: LOC1\n    base_url: {base}\n    auth: {{ type: private_token, token: pit-engine-secret }}\n  capsule:\n    app: capsule\n    base_url: {base}/api/v2\n    auth: {{ type: bearer, token: capsule-engine-secret }}\n    access: read_only\n",
                base = api.base_url
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("recipes")).unwrap();
        for (name, text) in recipes {
            std::fs::write(dir.path().join(format!("recipes/{name}.yaml")), text).unwrap();
        }
        // Retries in milliseconds rather than seconds, so failure tests stay quick.
        let ops = dir.path().join("ops/ghl");
        std::fs::create_dir_all(&ops).unwrap();
        let app = std::fs::read_to_string(crate::util::root().join("operations/ghl/app.yaml")).unwrap();
        std::fs::write(
            ops.join("app.yaml"),
            app.replace("initial_backoff: 500ms", "initial_backoff: 5ms")
                .replace("max_backoff: 30s", "max_backoff: 20ms"),
        )
        .unwrap();
        Flow { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"));
        c.arg("--operations")
            .arg(self.path().join("ops"))
            .args(args)
            .arg("--config")
            .arg(self.path().join("ghlflow.yaml"));
        c.kill_on_drop(true);
        c
    }

    async fn ghlflow(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().await.unwrap()
    }

    async fn run_once(&self) -> std::process::Output {
        self.ghlflow(&["run", "--once"]).await
    }

    async fn runs(&self) -> Vec<Value> {
        let out = self.ghlflow(&["runs", "list", "--json"]).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

const PEOPLE: &str = r#"
name: People to GHL
trigger:
  operation: capsule.parties.party_updated
  connection: capsule
  every: 5m
filter: "{{#if trigger.emailAddresses}}true{{/if}}"
steps:
  - id: contact
    operation: ghl.contacts.upsert_contact
    connection: ghl
    input:
      firstName: "{{trigger.firstName}}"
      email: "{{trigger.emailAddresses.[0].address}}"
      tags: "{{pluck trigger.tags \"name\"}}"
  - id: note
    if: "{{ne trigger.firstName \"Skipnote\"}}"
    operation: ghl.contacts.create_contact_note
    connection: ghl
    input:
      contactId: "{{steps.contact.contact.id}}"
      body: "{{trigger.about}} & more"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn after_the_baseline_new_items_fire_once_each_in_order_with_typed_values() {
    let world = Arc::new(Mutex::new(World { note_status: 200, ..Default::default() }));
    world.lock().unwrap().parties = vec![party(1, "Old", "2026-01-01T00:00:00Z")];
    let api = FakeApi::start(serve(Arc::clone(&world))).await;
    let flow = Flow::new(&api, &[("people", PEOPLE)]);

    let out = flow.run_once().await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("baseline"), "{}", text(&out));
    assert_eq!(api.count_to("/contacts/upsert"), 0, "the baseline fires nothing");

    {
        let mut w = world.lock().unwrap();
        w.parties.push(party(3, "Carol", "2026-02-03T00:00:00Z"));
        w.parties.push(party(2, "Bob", "2026-02-02T00:00:00Z"));
    }
    let out = flow.run_once().await;
    assert!(out.status.success(), "{}", text(&out));
    let upserts = api.requests_to("/contacts/upsert");
    assert_eq!(upserts.len(), 2, "{}", text(&out));
    // Oldest first, whatever order the feed gave.
    assert_eq!(upserts[0].json()["firstName"], "Bob");
    assert_eq!(upserts[1].json()["firstName"], "Carol");
    // Arrays arrive as JSON arrays; the location comes from the connection.
    assert_eq!(upserts[0].json()["tags"], json!(["vip", "lead"]));
    assert_eq!(upserts[0].json()["locationId"], "LOC1");
    // A step's output reaches the next step; text is not HTML-escaped.
    let notes: Vec<Recorded> = api.requests().into_iter().filter(|r| r.path.ends_with("/notes")).collect();
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[0].path, "/contacts/contact1/notes");
    assert_eq!(notes[0].json()["body"], "about Bob & more");

    // Polling again finds nothing new: nothing fires twice.
    let out = flow.run_once().await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(api.count_to("/contacts/upsert"), 2);
    let runs = flow.runs().await;
    assert_eq!(runs.iter().filter(|r| r["status"] == "succeeded").count(), 2, "{runs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_updated_item_fires_for_an_updated_feed_but_not_for_a_created_feed() {
    let world = Arc::new(Mutex::new(World { note_status: 200, ..Default::default() }));
    world.lock().unwrap().parties = vec![party(1, "Ann", "2026-01-01T00:00:00Z")];
    let api = FakeApi::start(serve(Arc::clone(&world))).await;
    let created_feed = PEOPLE.replace("  every: 5m", "  every: 5m\n  dedupe: id");
    let flow = Flow::new(&api, &[("updated_feed", PEOPLE), ("created_feed", &created_feed)]);
    assert!(flow.run_once().await.status.success());

    world.lock().unwrap().parties[0] = party(1, "Ann", "2026-03-01T00:00:00Z");
    let out = flow.run_once().await;
    assert!(out.status.success(), "{}", text(&out));
    let runs = flow.runs().await;
    let of = |recipe: &str| runs.iter().filter(|r| r["recipe"] == recipe).count();
    assert_eq!(of("updated_feed"), 1, "{runs:?}");
    assert_eq!(of("created_feed"), 0, "{runs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_stops_at_the_first_seen_item() {
    let world = Arc::new(Mutex::new(World::default()));
    world.lock().unwrap().entries = (1..=6).rev().map(|i| entry(i, &format!("2026-01-0{i}T00:00:00Z"))).collect();
    let api = FakeApi::start(serve(Arc::clone(&world))).await;
    let recipe = r#"
name: Notes
trigger: { operation: capsule.entries.entry_updated, connection: capsule, every: 1m, dedupe: id }
steps:
  - id: opp
    operation: ghl.opportunities.create_opportunity
    connection: ghl
    input: { pipelineId: p1, name: "{{trigger.content}}", status: open, contactId: c1, monetaryValue: "{{trigger.id}}" }
"#;
    let flow = Flow::new(&api, &[("notes", recipe)]);
    assert!(flow.run_once().await.status.success());
    let baseline_pages = api.count_to("/api/v2/entries");
    assert_eq!(baseline_pages, 3, "the baseline reads all three pages");

    {
        let mut w = world.lock().unwrap();
        w.entries.insert(0, entry(7, "2026-01-07T00:00:00Z"));
        w.entries.insert(0, entry(8, "2026-01-08T00:00:00Z"));
        w.entries.insert(0, entry(9, "2026-01-09T00:00:00Z"));
    }
    let out = flow.run_once().await;
    assert!(out.status.success(), "{}", text(&out));
    // Page 1: 9, 8. Page 2: 7, 6 (seen) -> stop; page 3 and later are not asked for.
    assert_eq!(api.count_to("/api/v2/entries") - baseline_pages, 2);
    let opps = api.requests_to("/opportunities/");
    assert_eq!(opps.len(), 3);
    // Numbers arrive as JSON numbers (a one-expression template keeps the type).
    assert_eq!(opps[0].json()["monetaryValue"], json!(7));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_is_held_until_released_or_discarded() {
    let world = Arc::new(Mutex::new(World { note_status: 200, ..Default::default() }));
    let api = FakeApi::start(serve(Arc::clone(&world))).await;
    let recipe = PEOPLE.replace("  every: 5m", "  every: 5m\n  hold_above: 3");
    let flow = Flow::new(&api, &[("people", &recipe)]);
    assert!(flow.run_once().await.status.success());
    world.lock().unwrap().parties =
        (10..15).map(|i| party(i, &format!("P{i}"), &format!("2026-02-{i}T00:00:00Z"))).collect();
    let out = flow.run_once().await;
    assert!(out.status.success(), "held is not a failure: {}", text(&out));
    assert_eq!(api.count_to("/contacts/upsert"), 0, "a held batch sends nothing");
    let runs = flow.runs().await;
    assert_eq!(runs.iter().filter(|r| r["status"] == "held").count(), 5, "{runs:?}");

    let out = flow.ghlflow(&["runs", "release", "people"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(api.count_to("/contacts/upsert"), 5);
    assert!(flow.runs().await.iter().all(|r| r["status"] == "succeeded"));
}

#[tokio::test(flavor = "multi_thread")]
async fn filter_and_if_skip() {
    let world = Arc::new(Mutex::new(World { note_status: 200, ..Default::default() }));
    let api = FakeApi::start(serve(Arc::clone(&world))).await;
    let flow = Flow::new(&api, &[("people", PEOPLE)]);
    assert!(flow.run_once().await.status.success());
    {
        let mut w = world.lock().unwrap();
        let mut no_email = party(20, "Nomail", "2026-02-01T00:00:00Z");
        no_email["emailAddresses"] = json!([]);
        w.parties.push(no_email);
        w.parties.push(party(21, "Skipnote", "2026-02-02T00:00:00Z"));
    }
    let out = flow.run_once().await;
    assert!(out.status.success(), "{}", text(&out));
    let runs = flow.runs().await;
    assert_eq!(runs.iter().filter(|r| r["status"] == "filtered").count(), 1, "{runs:?}");
    assert_eq!(api.count_to("/contacts/upsert"), 1);
    assert_eq!(
        api.requests().iter().filter(|r| r.path.ends_with("/notes")).count(),
        0,
        "the note step's `if` was false"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_persistent_500_fails_the_run_and_replay_resumes_without_resending_step_one() {
    let world = Arc::new(Mutex::new(World { note_status: 500, ..Default::default() }));
    let api = FakeApi::start(serve(Arc::clone(&world))).await;
    let flow = Flow::new(&api, &[("people", PEOPLE)]);
    assert!(flow.run_once().await.status.success());
    world.lock().unwrap().parties.push(party(30, "Dora", "2026-02-01T00:00:00Z"));

    let out = flow.run_once().await;
    assert_eq!(out.status.code(), Some(1), "a failed run exits 1: {}", text(&out));
    let note_attempts = api.requests().iter().filter(|r| r.path.ends_with("/notes")).count();
    assert_eq!(note_attempts, 5, "the 500 is retried up to the policy's 5 attempts");
    let runs = flow.runs().await;
    let run = &runs[0];
    assert_eq!(run["status"], "failed");
    assert!(run["error"].as_str().unwrap().contains("HTTP 500"), "{run:?}");

    world.lock().unwrap().note_status = 200;
    let id = run["id"].as_str().unwrap();
    let out = flow.ghlflow(&["runs", "replay", id]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(api.count_to("/contacts/upsert"), 1, "step 1 is not sent again");
    assert_eq!(flow.runs().await[0]["status"], "succeeded");
    let show = flow.ghlflow(&["runs", "show", id, "--json"]).await;
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["steps"][0]["attempts"], 1);
    assert_eq!(shown["steps"][1]["status"], "succeeded");
    assert!(!String::from_utf8_lossy(&show.stdout).contains("pit-engine-secret"));
    // A run id mistyped on the command line: refused, saying what an id looks like.
    for args in [["runs", "show", "17649-abc"], ["runs", "replay", "latest"]] {
        let out = flow.ghlflow(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("is not a run id (run ids look like"), "{args:?}: {}", text(&out));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_mid_step_keeps_step_one_and_sets_the_blind_step_two_aside() {
    let world =
        Arc::new(Mutex::new(World { note_status: 200, note_delay: Duration::from_secs(30), ..Default::default() }));
    let api = FakeApi::start(serve(Arc::clone(&world))).await;
    let flow = Flow::new(&api, &[("people", PEOPLE)]);
    assert!(flow.run_once().await.status.success());
    world.lock().unwrap().parties.push(party(40, "Eve", "2026-02-01T00:00:00Z"));

    let mut child = flow
        .command(&["run", "--once"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until step 2 is in flight, then kill -9.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !api.requests().iter().any(|r| r.path.ends_with("/notes")) {
        assert!(std::time::Instant::now() < deadline, "step 2 never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;

    // Step 2 creates a note (not safe to repeat) and has no `find`: whether it arrived is
    // unknown, so the run is set aside for a person instead of sending it again.
    world.lock().unwrap().note_delay = Duration::ZERO;
    let out = flow.run_once().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(api.count_to("/contacts/upsert"), 1, "step 1 was completed before the kill and is not sent again");
    assert_eq!(api.requests().iter().filter(|r| r.path.ends_with("/notes")).count(), 1, "step 2 is not resent blindly");
    let runs = flow.runs().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "unsure");

    // The person decides it did not arrive: replay sends step 2 (and only it).
    let id = runs[0]["id"].as_str().unwrap().to_owned();
    let replay = flow.ghlflow(&["runs", "replay", &id]).await;
    assert!(replay.status.success(), "{}", text(&replay));
    assert_eq!(api.count_to("/contacts/upsert"), 1);
    assert_eq!(api.requests().iter().filter(|r| r.path.ends_with("/notes")).count(), 2);
    assert_eq!(flow.runs().await[0]["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_the_requests_and_sends_no_write() {
    let world = Arc::new(Mutex::new(World { note_status: 200, ..Default::default() }));
    let api = FakeApi::start(serve(Arc::clone(&world))).await;
    let flow = Flow::new(&api, &[("people", PEOPLE)]);
    assert!(flow.run_once().await.status.success());
    world.lock().unwrap().parties.push(party(50, "Finn", "2026-02-01T00:00:00Z"));
    let out = flow.ghlflow(&["run", "--once", "--dry-run"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout.contains("POST") && stdout.contains("/contacts/upsert"), "{stdout}");
    assert!(stdout.contains("finn@example.com"), "{stdout}");
    assert!(!stdout.contains("pit-engine-secret"), "{stdout}");
    assert_eq!(api.count_to("/contacts/upsert"), 0);
    // Nothing was recorded: a real run still sees the item as new.
    assert!(flow.run_once().await.status.success());
    assert_eq!(api.count_to("/contacts/upsert"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_commands_reach_a_running_engine_and_sigterm_stops_it_cleanly() {
    let world = Arc::new(Mutex::new(World { note_status: 200, ..Default::default() }));
    let api = FakeApi::start(serve(Arc::clone(&world))).await;
    let flow = Flow::new(&api, &[("people", PEOPLE)]);
    // History from an earlier run, to read back while the engine runs.
    assert!(flow.run_once().await.status.success());
    world.lock().unwrap().parties.push(party(60, "Gus", "2026-02-01T00:00:00Z"));
    assert!(flow.run_once().await.status.success());

    let child = flow
        .command(&["run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let socket = flow.path().join(".ghlflow/state.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "the running engine never opened its control socket");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The store is held by the running process; the command goes through its socket.
    let runs = flow.runs().await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "succeeded");

    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("the engine stops after SIGTERM")
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(!socket.exists(), "the control socket is removed on a clean stop");
    // What a user watching the terminal is told: each recipe, its schedule and first poll.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("recipe loaded recipe=people schedule=every 5m first_poll_in="), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_poll_leaves_one_line_with_its_runs_by_outcome() {
    let world = Arc::new(Mutex::new(World { note_status: 200, ..Default::default() }));
    let api = FakeApi::start(serve(Arc::clone(&world))).await;
    let flow = Flow::new(&api, &[("people", PEOPLE)]);
    assert!(flow.run_once().await.status.success());
    world.lock().unwrap().parties.push(party(80, "Ida", "2026-02-01T00:00:00Z"));
    world.lock().unwrap().note_status = 400;
    let out = flow.ghlflow(&["run", "--once"]).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(
            "polled recipe=\"people\" new=1 gone=0 baseline=false succeeded=0 failed=1 filtered=0 held=0 waiting=0 took="
        ),
        "{log}"
    );
    // The failure's warning names the recipe and the run; the step is in its message.
    assert!(log.contains("run{recipe=people run=") && log.contains("run failed error=step `note`"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_reset_moves_the_position_on_purpose() {
    let world = Arc::new(Mutex::new(World { note_status: 200, ..Default::default() }));
    world.lock().unwrap().parties =
        vec![party(1, "Ann", "2026-01-01T00:00:00Z"), party(2, "Ben", "2026-03-01T00:00:00Z")];
    let api = FakeApi::start(serve(Arc::clone(&world))).await;
    let flow = Flow::new(&api, &[("people", PEOPLE)]);
    assert!(flow.run_once().await.status.success());
    assert_eq!(api.count_to("/contacts/upsert"), 0);

    // Back to February: what changed since then fires again (Ben), what did not stays quiet.
    let out = flow.ghlflow(&["trigger", "reset", "people", "--to", "2026-02-01T00:00:00Z"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("moved to 2026-02-01"));
    assert!(flow.run_once().await.status.success());
    let upserts = api.requests_to("/contacts/upsert");
    assert_eq!(upserts.len(), 1);
    assert_eq!(upserts[0].json()["firstName"], "Ben");

    // Without --to: a new baseline, nothing fires.
    let out = flow.ghlflow(&["trigger", "reset", "people"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = flow.run_once().await;
    assert!(text(&out).contains("baseline"), "{}", text(&out));
    assert_eq!(api.count_to("/contacts/upsert"), 1);

    let out = flow.ghlflow(&["trigger", "reset", "peple"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("did you mean `people`?"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_exchanges_the_code_and_stores_the_granted_tokens() {
    let api = FakeApi::start(|r: &Recorded| {
        if r.path == "/oauth/token" {
            let form: std::collections::HashMap<String, String> = r.form().into_iter().collect();
            assert_eq!(form.get("grant_type").map(String::as_str), Some("authorization_code"));
            if form.get("code").map(String::as_str) == Some("the-code") && form.get("client_secret").map(String::as_str) == Some("cs-secret") {
                return Reply::json(200, json!({"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 86399, "locationId": "LOC9", "token_type": "Bearer"}));
            }
            return Reply::json(400, json!({"error": "invalid_grant"}));
        }
        Reply::json(404, json!({}))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ghlflow.yaml"),
        format!(
            "connections:\n  ghl:\n    app: ghl\n    base_url: {base}\n    auth:\n      type: oauth2\n      client_id: cid\n      client_secret: cs-secret\n      token_url: {base}/oauth/token\n      authorize_url: {base}/authorize\n",
            base = api.base_url
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"))
        .args(["connect", "ghl", "--port", "0", "--timeout", "30", "--config"])
        .arg(dir.path().join("ghlflow.yaml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Read the authorization address the user would open.
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let address = loop {
        let line = lines.next_line().await.unwrap().expect("connect prints the address");
        if line.trim_start().starts_with("http") {
            break line.trim().to_owned();
        }
    };
    let address = url::Url::parse(&address).unwrap();
    let param = |name: &str| address.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).unwrap();
    assert_eq!(param("client_id"), "cid");
    assert_eq!(param("response_type"), "code");
    // The browser comes back: first with a wrong state (ignored), then the real redirect.
    let redirect = param("redirect_uri");
    let wrong = reqwest::get(format!("{redirect}?code=the-code&state=not-ours")).await.unwrap();
    assert_eq!(wrong.status(), 400);
    let ok = reqwest::get(format!("{redirect}?code=the-code&state={}", param("state"))).await.unwrap();
    assert_eq!(ok.status(), 200);
    let status = child.wait().await.unwrap();
    assert!(status.success());
    let rest: Vec<String> = {
        let mut v = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            v.push(l);
        }
        v
    };
    assert!(rest.iter().any(|l| l.contains("connected `ghl` for location LOC9")), "{rest:?}");
    let store = ghlflow::store::Store::open(&dir.path().join(".ghlflow/state")).unwrap();
    let tokens = store.tokens("ghl").await.unwrap().unwrap();
    assert_eq!(tokens.refresh_token.as_deref(), Some("rt-1"));
    assert_eq!(tokens.location_id.as_deref(), Some("LOC9"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_asking_for_hours_fails_the_run_at_once_and_schedules_it_for_then() {
    let world = Arc::new(Mutex::new(World { note_status: 200, ..Default::default() }));
    let api = FakeApi::start(serve(Arc::clone(&world))).await;
    let flow = Flow::new(&api, &[("people", PEOPLE)]);
    assert!(flow.run_once().await.status.success());
    world.lock().unwrap().parties.push(party(70, "Hal", "2026-02-01T00:00:00Z"));
    world.lock().unwrap().note_status = 429;
    let started = std::time::Instant::now();
    let out = flow.run_once().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(60), "no task waited the two hours out");
    assert!(text(&out).contains("asks to wait until"), "{}", text(&out));
    let runs = flow.runs().await;
    let id = runs[0]["id"].as_str().unwrap().to_owned();
    let shown: Value = serde_json::from_slice(&flow.ghlflow(&["runs", "show", &id, "--json"]).await.stdout).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let at = shown["next_replay_at"].as_u64().expect("the run is scheduled to be tried again");
    assert!((now + 7_000..=now + 7_300).contains(&at), "tried again when the server asked: {at} vs now {now}");
}

fn task(id: u64, category: &str, updated: &str) -> Value {
    json!({"id": id, "description": format!("task {id}"), "category": {"id": 1, "name": category},
           "status": "OPEN", "party": {"id": 1, "type": "person"}, "dueOn": "2026-12-01",
           "createdAt": "2026-01-01T00:00:00Z", "updatedAt": updated})
}

const MEETINGS: &str = r#"
name: Meetings, and the ones that leave
trigger:
  operation: capsule.tasks.task_updated
  connection: capsule
  every: 5m
  start: backfill
  report_gone: true
filter: "{{eq trigger.category.name \"Meeting\"}}"
steps:
  - id: note
    operation: ghl.contacts.create_contact_note
    connection: ghl
    input:
      contactId: c1
      body: "{{#if trigger.gone}}gone{{else}}here{{/if}} {{trigger.id}}"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn items_that_leave_a_feed_read_whole_run_once_more_marked_gone() {
    let world = Arc::new(Mutex::new(World { note_status: 200, ..Default::default() }));
    world.lock().unwrap().tasks = vec![
        task(1, "Meeting", "2026-02-01T00:00:00Z"),
        task(2, "Meeting", "2026-02-01T00:00:00Z"),
        task(3, "Call", "2026-02-01T00:00:00Z"),
        task(4, "Meeting", "2026-02-01T00:00:00Z"),
    ];
    let api = FakeApi::start(serve(Arc::clone(&world))).await;
    let flow = Flow::new(&api, &[("meetings", MEETINGS)]);
    let notes = || -> Vec<String> {
        api.requests().iter().filter(|r| r.path.ends_with("/notes")).map(|r| r.json()["body"].to_string()).collect()
    };
    let out = flow.run_once().await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(notes(), [r#""here 1""#, r#""here 2""#, r#""here 4""#]);

    // Task 2 deleted, task 4 no longer a meeting, task 3 (never a meeting) deleted too.
    {
        let mut w = world.lock().unwrap();
        w.tasks.retain(|t| t["id"] != 2 && t["id"] != 3);
        w.tasks[1] = task(4, "Call", "2026-02-02T00:00:00Z");
    }
    let out = flow.run_once().await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        notes()[3..],
        [r#""gone 4""#, r#""gone 2""#],
        "only meetings that ran are reported gone: {}",
        text(&out)
    );
    let runs = flow.runs().await;
    assert_eq!(runs.iter().filter(|r| r["status"] == "filtered").count(), 1, "task 3 at first: {runs:?}");

    // Gone is reported once; a task that comes back is a meeting again.
    let out = flow.run_once().await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(notes().len(), 5);
    world.lock().unwrap().tasks[1] = task(4, "Meeting", "2026-02-03T00:00:00Z");
    let out = flow.run_once().await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(notes()[5..], [r#""here 4""#]);

    // `trigger reset` forgets which items were present: the next (baseline) poll reports
    // nothing gone, even with everything deleted.
    let out = flow.ghlflow(&["trigger", "reset", "meetings"]).await;
    assert!(out.status.success(), "{}", text(&out));
    world.lock().unwrap().tasks.clear();
    let out = flow.run_once().await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(notes().len(), 6, "{:?}", notes());
}
