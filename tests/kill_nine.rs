//! `kill -9` at random moments of the whole shipped mirror (the Capsule recipes, the welcome
//! SMS and the won-deal follow-up), as a user runs it: the `ghlflow run --once` process is
//! killed again and again against an in-process sandbox while the world changes, then run to
//! the end. Nothing may be sent twice, created twice or missed.
//!
//! The kill points come from a seed printed at the start (`GHLFLOW_KILL_SEED` replays one).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use ghlflow::sandbox::{Faults, SandboxOptions};

use crate::util::{markers, meeting_settings};
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn run_once(dir: &std::path::Path, settings: &[(&str, String)]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ghlflow"))
        .args(["run", "--once"])
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the ghlflow binary starts")
}

/// How many times `run --once` is started (and killed, when it has not finished by then).
const KILLS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_at_random_moments_sends_nothing_twice_and_misses_nothing() {
    let seed: u64 = std::env::var("GHLFLOW_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    });
    println!("kill -9 seed {seed} (GHLFLOW_KILL_SEED={seed} replays these kill points)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    // Every answer takes a little while, so kills land in the middle of steps and sends.
    let sandbox = ghlflow::sandbox::start(SandboxOptions {
        people: 40,
        seed: 43,
        no_limits: true,
        latency: Duration::from_millis(40),
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ghlflow.yaml"), sandbox.config_yaml()).unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    for entry in std::fs::read_dir(crate::util::root().join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join("recipes").join(path.file_name().unwrap())).unwrap();
    }

    // A first clean poll records the GHL recipes' baselines (`start: now`): what exists then
    // is never texted or followed up. Everything after it is.
    let settings = meeting_settings(&sandbox);
    let env: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first = crate::util::ghlflow_env(dir.path(), &["run", "--once"], &env);
    assert!(first.status.success(), "{}", crate::util::stderr(&first));
    sandbox.capsule_edit_people(5);

    let mut leads = Vec::new();
    let mut won = Vec::new();
    let mut kills = 0;
    let mut meetings_added = Vec::new();
    for round in 0..KILLS {
        // The world changes between some rounds: new leads (welcome SMS), deals won
        // (follow-up tasks), people edited and added, notes added, tasks completed.
        if round % 3 == 1 {
            // One lead each time: even if every poll until the end is killed before it
            // commits, fewer than the welcome recipe's hold_above (20) pile up.
            leads.extend(sandbox.ghl_add_contacts(1));
            won.extend(sandbox.ghl_win_deals(1));
            sandbox.capsule_edit_people(3);
            sandbox.capsule_add_people(2);
            sandbox.capsule_add_notes(3);
            sandbox.capsule_complete_tasks(2);
            // A meeting booked, and the one before it moved.
            let people = sandbox.capsule_people();
            let owner = sandbox.capsule_users()[round % 4]["id"].as_i64().unwrap();
            let person = people[round % people.len()];
            meetings_added.push(sandbox.capsule_add_meeting(person, owner, "2026-12-14", "10:00:00", "Meeting"));
            if let [.., earlier, _] = meetings_added.as_slice() {
                assert!(sandbox.capsule_move_task(*earlier, "2026-12-15", "11:30:00"));
            }
        }
        let mut child = run_once(dir.path(), &settings);
        let wait = Duration::from_millis(rng.random_range(20..700));
        tokio::time::sleep(wait).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= KILLS / 3, "only {kills} of the runs were killed mid-way; the test proves little");

    // Then to the end, with no kill: a run that waited for its person gets it.
    let mut finished = false;
    for _ in 0..4 {
        let out = crate::util::ghlflow_env(dir.path(), &["run", "--once"], &env);
        let text = crate::util::stdout(&out);
        if out.status.success() && text.contains(", 0 failed,") && !text.contains("waiting") && text.contains("polled")
        {
            finished = true;
            break;
        }
    }
    assert!(finished, "the mirror never finished cleanly after the kills");
    sandbox.set_faults(Faults::default()).unwrap();

    // No contact twice (by email), every mirrored record once.
    let contacts = sandbox.ghl_contacts();
    let mut emails = BTreeSet::new();
    for c in &contacts {
        if let Some(e) = c["email"].as_str().filter(|e| !e.is_empty()) {
            assert!(emails.insert(e.to_lowercase()), "two GHL contacts have the email {e}");
        }
    }
    let mut notes: BTreeMap<String, usize> = BTreeMap::new();
    let mut tasks: BTreeMap<String, usize> = BTreeMap::new();
    for c in &contacts {
        let id = c["id"].as_str().unwrap();
        for m in markers(&sandbox.ghl_notes(id), "body", "[capsule entry ") {
            *notes.entry(m).or_default() += 1;
        }
        for m in markers(&sandbox.ghl_tasks(id), "body", "[capsule task ").into_iter().chain(markers(
            &sandbox.ghl_tasks(id),
            "body",
            "[ghl opportunity ",
        )) {
            *tasks.entry(m).or_default() += 1;
        }
    }
    let mut meetings: BTreeMap<String, usize> = BTreeMap::new();
    for m in markers(&sandbox.ghl_appointments(), "description", "[capsule task ") {
        *meetings.entry(m).or_default() += 1;
    }
    assert!(!notes.is_empty() && !tasks.is_empty());
    for task in &meetings_added {
        assert!(meetings.contains_key(&format!("[capsule task {task}")), "meeting {task} was never booked");
    }
    for (m, n) in notes.iter().chain(tasks.iter()).chain(meetings.iter()) {
        assert_eq!(*n, 1, "{m}] was created {n} times");
    }
    // Every Capsule person with an email or phone is mirrored.
    let dir_path = dir.path().to_owned();
    let listed = crate::util::ghlflow(&dir_path, &["runs", "list", "--limit", "100000", "--json"]);
    let runs: Vec<Value> = serde_json::from_str(&crate::util::stdout(&listed)).unwrap();
    for r in &runs {
        let status = r["status"].as_str().unwrap();
        assert!(
            matches!(status, "succeeded" | "filtered"),
            "run {} of {} is {status}: {}",
            r["id"],
            r["recipe"],
            r["error"]
        );
    }
    for id in sandbox.capsule_people() {
        let party = sandbox.capsule_party(id).unwrap();
        let reachable = party["emailAddresses"].as_array().is_some_and(|a| !a.is_empty())
            || party["phoneNumbers"].as_array().is_some_and(|a| !a.is_empty());
        if reachable {
            assert!(
                runs.iter().any(|r| r["recipe"] == "capsule-people" && r["trigger_item_id"] == id.to_string().as_str()),
                "Capsule person {id} was never mirrored"
            );
        }
    }
    // Each new lead texted exactly once; each won deal followed up exactly once.
    let messages = sandbox.ghl_messages();
    for lead in &leads {
        let n = messages.iter().filter(|m| m["contactId"] == lead.as_str()).count();
        assert_eq!(n, 1, "lead {lead} was texted {n} times");
    }
    for deal in &won {
        let n = tasks.get(&format!("[ghl opportunity {deal}")).copied().unwrap_or(0);
        assert_eq!(n, 1, "won deal {deal} got {n} follow-up tasks");
    }
    println!("kill -9: {kills} kills, {} runs, {} leads, {} deals won", runs.len(), leads.len(), won.len());
    sandbox.shutdown().await;
}

/// A write that is not safe to repeat and has no `find` (a user's recipe creating a note):
/// killed after the request reached the API but before its answer, it is not sent again at
/// the next start. The run is set aside as `unsure` for a person, and `run --once` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_write_cut_off_mid_send_is_set_aside_not_sent_twice() {
    let sandbox = ghlflow::sandbox::start(SandboxOptions { people: 5, no_limits: true, ..SandboxOptions::default() })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ghlflow.yaml"), sandbox.config_yaml()).unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    std::fs::write(
        dir.path().join("recipes/note-on-new-lead.yaml"),
        r#"name: A note on each new lead
trigger:
  operation: ghl.contacts.search_contacts
  connection: ghl
  every: 5m
  dedupe: id
steps:
  - id: note
    operation: ghl.contacts.create_contact_note
    connection: ghl
    input:
      contactId: "{{trigger.id}}"
      body: "Welcome aboard"
"#,
    )
    .unwrap();
    let baseline = crate::util::ghlflow(dir.path(), &["run", "--once"]);
    assert!(baseline.status.success(), "{}", crate::util::stderr(&baseline));

    let lead = sandbox.ghl_add_contacts(1).remove(0);
    // Answers now take 3 s: the note's request reaches the sandbox (and is applied), and the
    // process is killed while it waits for the answer.
    sandbox.set_faults(Faults { latency: Duration::from_secs(3), ..Faults::default() }).unwrap();
    let writes = sandbox.request_counts().ghl_writes;
    let mut child = run_once(dir.path(), &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sandbox.request_counts().ghl_writes == writes {
        assert!(std::time::Instant::now() < deadline, "the note was never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    sandbox.set_faults(Faults::default()).unwrap();
    assert_eq!(sandbox.ghl_notes(&lead).len(), 1, "the write was applied before the kill");

    let again = crate::util::ghlflow(dir.path(), &["run", "--once"]);
    let out = crate::util::stdout(&again);
    assert_eq!(again.status.code(), Some(1), "an unsure run needs a person: {out}");
    assert!(out.contains("unsure: run ") && out.contains("may or may not have reached the API"), "{out}");
    assert_eq!(sandbox.ghl_notes(&lead).len(), 1, "the note was sent again blindly");
    let listed = crate::util::ghlflow(dir.path(), &["runs", "list", "--status", "unsure", "--json"]);
    let unsure: Vec<Value> = serde_json::from_str(&crate::util::stdout(&listed)).unwrap();
    assert_eq!(unsure.len(), 1, "{unsure:?}");

    // The person looked: the note is there, so the run is discarded, not replayed.
    let discard = crate::util::ghlflow(dir.path(), &["runs", "discard", "note-on-new-lead"]);
    assert!(
        crate::util::stdout(&discard).contains("discarded 1 held or unsure run(s)"),
        "{}",
        crate::util::stdout(&discard)
    );
    let quiet = crate::util::ghlflow(dir.path(), &["run", "--once"]);
    assert!(quiet.status.success(), "{}", crate::util::stdout(&quiet));
    assert_eq!(sandbox.ghl_notes(&lead).len(), 1);
    sandbox.shutdown().await;
}
