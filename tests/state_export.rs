//! `ghlflow state export` and `import`: a state moved through the export file comes back
//! whole (every record kind, every run with its steps, and an index that answers the same),
//! through the library and through the binary; hostile files and a store that already holds
//! a state are refused with nothing written; the file is owner-only.
//!
//! `round_trip_through` takes the target store as an argument, so the same check runs
//! sled → PostgreSQL → sled once that backend opens.

use std::path::Path;

use ghlflow::store::export::{self, Backend, Reader};
use ghlflow::store::{
    DeliveryCommit, HookSubscription, PollCommit, RunId, RunRecord, RunStatus, StateRecord, StepRecord, StepStatus,
    Store, StoredTokens, TriggerState,
};
use serde_json::json;

use crate::util::{ghlflow, stderr, stdout};

fn step(id: &str, status: StepStatus, attempts: u32) -> StepRecord {
    StepRecord {
        id: id.into(),
        operation: "ghl.contacts.upsert_contact".into(),
        status,
        input: Some(json!({"email": format!("{id}@example.com")})),
        output: (status == StepStatus::Succeeded).then(|| json!({"contact": {"id": "c-1"}})),
        error: (status == StepStatus::Failed).then(|| "429 Too Many Requests".to_owned()),
        attempts,
        started: Some("2026-11-30T10:00:01.000Z".into()),
        finished: (status != StepStatus::Sent).then(|| "2026-11-30T10:00:02.000Z".to_owned()),
        duration_ms: Some(812),
    }
}

/// A run of `recipe` in `status`, with steps, notes and replay fields that differ per run.
fn run(n: u32, recipe: &str, status: RunStatus) -> RunRecord {
    let id = RunId::new(1_764_496_000_000 + u64::from(n), n);
    let mut r = RunRecord::new(
        id,
        recipe,
        status,
        &format!("item-{n}"),
        json!({"id": format!("item-{n}"), "name": "Ada", "tags": ["a", n]}),
        "2026-11-30T10:00:00.000Z".into(),
    );
    r.started = Some("2026-11-30T10:00:01.000Z".into());
    r.notes = vec![format!("note {n}: the id of party:{n} was forgotten (its record is gone)")];
    r.replays = n % 3;
    r.steps = match status {
        RunStatus::Queued | RunStatus::Held => Vec::new(),
        RunStatus::Running => vec![step("first", StepStatus::Succeeded, 1), step("second", StepStatus::Sent, 1)],
        RunStatus::Failed => {
            r.error = Some("step `second` failed: 429".into());
            r.next_replay_at = Some(1_764_500_000 + u64::from(n));
            vec![step("first", StepStatus::Succeeded, 1), step("second", StepStatus::Failed, 3)]
        }
        RunStatus::Unsure => vec![step("first", StepStatus::Sent, 1)],
        RunStatus::Waiting => {
            vec![step("first", StepStatus::Succeeded, 1), StepRecord::pending("second", "ghl.contacts.add_tags")]
        }
        RunStatus::Filtered | RunStatus::Discarded => Vec::new(),
        RunStatus::Succeeded => {
            r.finished = Some("2026-11-30T10:00:03.000Z".into());
            vec![step("first", StepStatus::Succeeded, 1), step("second", StepStatus::Skipped, 0)]
        }
    };
    // A step reset to pending by a replay keeps its attempts: it is recorded.
    if status == RunStatus::Waiting {
        r.steps[1].attempts = 2;
    }
    r
}

/// A sled state with every kind of record and runs in every status, written through the
/// store's own operations (polls, deliveries, transitions), as a running engine writes it.
pub async fn populated_source() -> Store {
    let store = Store::temporary().unwrap();
    fill(&store).await;
    store
}

async fn fill(store: &Store) {
    use clap::ValueEnum as _;
    let tokens = StoredTokens {
        access_token: Some("access-1".into()),
        refresh_token: Some("refresh-rotated-7".into()),
        expires_at: Some(1_764_499_999),
        location_id: Some("LOC1".into()),
        company_id: Some("CO1".into()),
        scope: Some("contacts.write".into()),
    };
    store.save_tokens("ghl", &tokens).await.unwrap();
    store
        .save_tokens("ghl-agency", &StoredTokens { refresh_token: Some("r2".into()), ..Default::default() })
        .await
        .unwrap();

    // Runs in every status, for two recipes, created at once...
    let all = RunStatus::value_variants();
    let mut runs = Vec::new();
    for (i, status) in all.iter().enumerate() {
        runs.push(run(i as u32, "capsule-people", *status));
        runs.push(run(100 + i as u32, "ghl-welcome", *status));
    }
    store.create_runs(&runs).await.unwrap();
    // ...and some through a poll (seen marks, present items, trigger position) and status
    // changes (the index moved by `transition`, an automatic replay scheduled).
    let mut polled = run(200, "capsule-people", RunStatus::Queued);
    store.reset_trigger("capsule-people", TriggerState::default()).await.unwrap();
    let state = TriggerState {
        fingerprint: "capsule.parties.list_parties|capsule|{}".into(),
        baselined: true,
        cursor: Some("2026-11-30T09:59:00Z".into()),
        resume: Some(json!({"page": 3, "since": "2026-11-30T09:00:00Z"}).as_object().unwrap().clone()),
        last_poll: Some(1_764_496_100),
        last_error: Some("a page timed out".into()),
        last_full_scan: Some(1_764_490_000),
        generation: 1,
    };
    let commit = PollCommit {
        generation: 1,
        runs: vec![polled.clone()],
        seen: vec![("item-200".into(), "u:2026-11-30T09:59:00Z".into()), ("item-201".into(), "ab12cd".into())],
        state: Some(state),
        spilled: Vec::new(),
        joined: vec!["item-200".into(), "item-7".into()],
        left: Vec::new(),
    };
    assert!(store.commit_poll("capsule-people", &commit).await.unwrap().is_empty());
    store.transition(&mut polled, RunStatus::Running).await.unwrap();
    store.put_step(&polled.id, 0, &step("first", StepStatus::Failed, 2)).await.unwrap();
    polled.next_replay_at = Some(1_764_500_500);
    polled.replays = 2;
    polled.notes.push("replay 2 due".into());
    store.transition(&mut polled, RunStatus::Failed).await.unwrap();
    store.save_trigger_state("ghl-welcome", &TriggerState { baselined: true, ..Default::default() }).await.unwrap();

    // An instant delivery: its run, its seen mark, its id.
    let delivered = run(300, "ghl-welcome", RunStatus::Queued);
    let commit = DeliveryCommit {
        delivery: Some("wh-0001".into()),
        runs: vec![(delivered, "item-300".into(), "u:2026-11-30T10:01:00Z".into())],
    };
    assert_eq!(store.commit_delivery("ghl-welcome", &commit).await.unwrap().len(), 1);

    store.remember_id("party:11", "contact-abc").await.unwrap();
    store.remember_id("opportunity:5", "opp-9").await.unwrap();
    store.set_paused("ghl-welcome", Some("2026-11-30T10:05:00Z")).await.unwrap();
    let subscription = HookSubscription {
        connection: "capsule".into(),
        event: "party/updated".into(),
        token: "tok-1".into(),
        target_url: "https://flows.example.com/hooks/capsule/tok-1".into(),
        hook_id: Some("77".into()),
    };
    store.save_hook_subscriptions(&[subscription]).await.unwrap();
    // Not exported (they belong to a process in flight), and no trouble to leave behind.
    store.spill_put("capsule-people", 1, &json!({"id": "spilled"})).await.unwrap();
    store.flush_async().await.unwrap();
}

/// Every journal run of a store, in id order, through `runs_after` pages.
async fn all_runs(store: &Store) -> Vec<RunRecord> {
    let mut out: Vec<RunRecord> = Vec::new();
    loop {
        let page = store.runs_after(out.last().map(|r| &r.id), 7).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// The non-journal records in an order that does not depend on the backend.
async fn state_sorted(store: &Store) -> Vec<String> {
    let mut out: Vec<String> =
        store.export_state().await.unwrap().iter().map(|r| serde_json::to_string(r).unwrap()).collect();
    out.sort();
    out
}

fn ids(runs: &[RunRecord]) -> Vec<RunId> {
    runs.iter().map(|r| r.id.clone()).collect()
}

/// Asserts `target` holds what `source` holds: every record, every run, and an index that
/// answers each history query the same.
pub async fn assert_same_state(source: &Store, target: &Store) {
    use clap::ValueEnum as _;
    assert_eq!(state_sorted(target).await, state_sorted(source).await);
    assert_eq!(all_runs(target).await, all_runs(source).await);
    for status in RunStatus::value_variants() {
        let (src, n) = source.runs_page(None, Some(*status), 100).await.unwrap();
        let (dst, m) = target.runs_page(None, Some(*status), 100).await.unwrap();
        assert_eq!((ids(&dst), m), (ids(&src), n), "runs {}", status.as_str());
        for recipe in ["capsule-people", "ghl-welcome"] {
            let (src, n) = source.runs_page(Some(recipe), Some(*status), 100).await.unwrap();
            let (dst, m) = target.runs_page(Some(recipe), Some(*status), 100).await.unwrap();
            assert_eq!((ids(&dst), m), (ids(&src), n), "runs of {recipe} {}", status.as_str());
        }
    }
    for recipe in ["capsule-people", "ghl-welcome"] {
        let (src, n) = source.runs_page(Some(recipe), None, 100).await.unwrap();
        let (dst, m) = target.runs_page(Some(recipe), None, 100).await.unwrap();
        assert_eq!((ids(&dst), m), (ids(&src), n), "runs of {recipe}");
        assert_eq!(target.waiting_runs(recipe).await.unwrap(), source.waiting_runs(recipe).await.unwrap());
        assert_eq!(target.present_items(recipe).await.unwrap(), source.present_items(recipe).await.unwrap());
        assert_eq!(target.seen_count(recipe).await.unwrap(), source.seen_count(recipe).await.unwrap());
        assert_eq!(target.trigger_state(recipe).await.unwrap(), source.trigger_state(recipe).await.unwrap());
        assert_eq!(target.paused_since(recipe).await.unwrap(), source.paused_since(recipe).await.unwrap());
    }
    assert_eq!(ids(&target.open_runs().await.unwrap()), ids(&source.open_runs().await.unwrap()));
    assert_eq!(target.tokens("ghl").await.unwrap(), source.tokens("ghl").await.unwrap());
    assert_eq!(target.id_of("party:11").await.unwrap(), source.id_of("party:11").await.unwrap());
    assert_eq!(target.delivery_seen("wh-0001").await.unwrap(), source.delivery_seen("wh-0001").await.unwrap());
    assert_eq!(target.hook_subscriptions().await.unwrap(), source.hook_subscriptions().await.unwrap());
}

/// Exports `source` into memory and imports the file into `target`, checking the file whole
/// first, as the CLI does. Returns the file's text.
pub async fn copy(source: &Store, target: &Store) -> String {
    let mut file = Vec::new();
    let written = export::write(source, Backend::Sled, "mem.jsonl", &mut file).await.unwrap();
    let checked = Reader::open(file.as_slice(), "mem.jsonl").unwrap().check_all().unwrap();
    assert_eq!(checked, written);
    let imported = export::import(target, Reader::open(file.as_slice(), "mem.jsonl").unwrap()).await.unwrap();
    assert_eq!(imported, written);
    String::from_utf8(file).unwrap()
}

/// A populated sled state → `target` → a fresh sled state: both copies hold exactly what
/// the source held. `target` must be empty.
pub async fn round_trip_through(target: Store) {
    let source = populated_source().await;
    // The source is what the test meant to write (so an export of nothing would not pass).
    let runs = all_runs(&source).await;
    assert_eq!(runs.len(), 2 * 9 + 2);
    let held = export::held(&source).await.unwrap();
    for kind in ["tokens", "trigger", "seen", "present", "id", "paused", "subscriptions", "delivery"] {
        assert!(held.of(kind) > 0, "the source has no {kind} record");
    }
    assert_eq!(export::held(&target).await.unwrap().total(), 0, "the target is not empty");

    copy(&source, &target).await;
    assert_same_state(&source, &target).await;
    let back = Store::temporary().unwrap();
    copy(&target, &back).await;
    assert_same_state(&source, &back).await;

    // The copy is a working store: a failed run's replay and a waiting run's resume go on.
    let mut failed = source.runs_with_status("capsule-people", RunStatus::Failed).await.unwrap();
    assert_eq!(failed.len(), 2);
    let mut copied = back.run(&failed[0].id).await.unwrap().unwrap();
    assert_eq!(copied, failed[0]);
    back.transition(&mut copied, RunStatus::Queued).await.unwrap();
    source.transition(&mut failed[0], RunStatus::Queued).await.unwrap();
    assert_same_state(&source, &back).await;
}

#[tokio::test]
async fn every_record_and_run_survives_sled_to_sled_and_the_index_answers_the_same() {
    round_trip_through(Store::temporary().unwrap()).await;
}

/// The move users make: sled → PostgreSQL → sled, nothing lost on the way.
#[tokio::test]
async fn every_record_and_run_survives_sled_to_postgres_and_back() {
    let Some(store) = crate::support::postgres::store().await else { return };
    round_trip_through(Store::Postgres(store)).await;
}

/// A state folder migrated from format 2 keeps pending steps at the end of its runs (they
/// are not trimmed there); an export and import reproduce them as they are.
#[tokio::test]
async fn a_migrated_state_round_trips_with_its_pending_steps() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = crate::util::root().join("tests/fixtures/state-format2.tar.gz");
    let untar = std::process::Command::new("tar").arg("-xzf").arg(&fixture).current_dir(dir.path()).status().unwrap();
    assert!(untar.success());
    let source = Store::open(&dir.path().join("state")).unwrap();
    let runs = all_runs(&source).await;
    assert_eq!(runs.len(), 9);
    assert!(
        runs.iter().any(|r| r.steps.last().is_some_and(|s| s.status == StepStatus::Pending && s.attempts == 0)),
        "the fixture has no trailing pending step to carry over"
    );
    let target = Store::temporary().unwrap();
    copy(&source, &target).await;
    assert_eq!(all_runs(&target).await, runs);
    assert_eq!(ids(&target.open_runs().await.unwrap()), ids(&source.open_runs().await.unwrap()));
    assert_eq!(state_sorted(&target).await, state_sorted(&source).await);
}

/// With `--force` a run already in the store is replaced whole: the index no longer lists
/// it under its old status, its open mark goes with it, and surplus steps are dropped.
#[tokio::test]
async fn a_forced_import_replaces_a_run_with_its_index_and_steps() {
    let target = Store::temporary().unwrap();
    let mut old = run(1, "r", RunStatus::Running);
    old.steps.push(step("third", StepStatus::Succeeded, 1));
    target.create_runs(std::slice::from_ref(&old)).await.unwrap();
    assert_eq!(target.open_runs().await.unwrap().len(), 1);

    let mut new = run(1, "r", RunStatus::Succeeded);
    new.steps.truncate(1);
    target.import_state(&[StateRecord::Run { run: new.clone() }]).await.unwrap();
    assert_eq!(target.run(&new.id).await.unwrap(), Some(new.clone()));
    assert_eq!(target.runs_page(None, Some(RunStatus::Running), 10).await.unwrap().1, 0);
    assert_eq!(target.runs_page(Some("r"), Some(RunStatus::Succeeded), 10).await.unwrap().1, 1);
    assert_eq!(target.runs_page(Some("r"), None, 10).await.unwrap().1, 1);
    assert!(target.open_runs().await.unwrap().is_empty());
}

/// `import_state` writes a call's records together: a record the store refuses (a recipe
/// name that would collide with the key layout) leaves the batch's other records unwritten.
#[tokio::test]
async fn an_import_call_is_all_or_nothing() {
    let target = Store::temporary().unwrap();
    let records = vec![
        StateRecord::Id { key: "party:1".into(), id: "c1".into() },
        StateRecord::Run { run: run(4, "r", RunStatus::Queued) },
        StateRecord::Seen { recipe: "bad\0name".into(), item: "i".into(), mark: "m".into() },
    ];
    assert!(target.import_state(&records).await.is_err());
    assert_eq!(export::held(&target).await.unwrap().total(), 0);
    assert_eq!(target.id_of("party:1").await.unwrap(), None);
}

// --- through the binary ---------------------------------------------------------------

const CONFIG: &str =
    "connections:\n  capsule:\n    app: capsule\n    auth: { type: bearer, token: t }\n    access: read_only\n";

/// A folder with a ghlflow.yaml (default state folder `.ghlflow/state`).
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ghlflow.yaml"), CONFIG).unwrap();
    dir
}

fn state_of(dir: &Path) -> std::path::PathBuf {
    dir.join(".ghlflow/state")
}

/// Opens `dir`'s sled store, waiting while a dropped handle still holds its lock.
fn open_when_free(dir: &Path) -> Store {
    for _ in 0..100 {
        match Store::open(dir) {
            Err(e) if e.to_string().contains("another ghlflow process") => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other.unwrap(),
        }
    }
    Store::open(dir).unwrap()
}

/// Drops `store` and waits until its folder's lock is let go (sled closes the locked file a
/// moment after the last handle, once its flusher thread ends), so the binary can open it.
/// The lock is tried on sled's own file, without opening a store (which would hold it again).
fn let_go(store: Store, dir: &Path) {
    drop(store);
    let db = std::fs::File::open(dir.join("db")).unwrap();
    for _ in 0..200 {
        if rustix::fs::flock(&db, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
            rustix::fs::flock(&db, rustix::fs::FlockOperation::Unlock).unwrap();
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("{} is still locked", dir.display());
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_to_an_owner_only_file_and_imports_it_into_an_empty_store() {
    let from = project();
    let to = project();
    let source = Store::open(&state_of(from.path())).unwrap();
    fill(&source).await;
    let_go(source, &state_of(from.path()));

    // A file already there, readable by all, is replaced by an owner-only one.
    let file = from.path().join("state.jsonl");
    std::fs::write(&file, "old\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = ghlflow(from.path(), &["state", "export", "state.jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains("2 connections' tokens") && said.contains("20 runs") && said.contains("owner only"),
        "{said}"
    );
    #[cfg(unix)]
    assert_eq!(mode(&file), 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["ghlflow_state_export"], 1);
    assert_eq!(header["from"], "sled");
    assert!(chrono::DateTime::parse_from_rfc3339(header["exported_at"].as_str().unwrap()).is_ok(), "{header}");
    assert!(text.contains("refresh-rotated-7"), "the tokens are in the file");
    assert!(
        !std::fs::read_dir(from.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".ghlflow-export")),
        "a temporary file was left behind"
    );

    let out = ghlflow(to.path(), &["state", "import", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains("imported") && said.contains("20 runs") && said.contains("by ghlflow"), "{said}");

    let source = open_when_free(&state_of(from.path()));
    let target = open_when_free(&state_of(to.path()));
    assert_same_state(&source, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pipes_an_export_through_stdout_into_an_import_from_stdin() {
    let from = project();
    let to = project();
    let source = Store::open(&state_of(from.path())).unwrap();
    fill(&source).await;
    let_go(source, &state_of(from.path()));

    let out = ghlflow(from.path(), &["state", "export", "-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("exported"), "the summary is on stderr: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("{\"ghlflow_state_export\":1"));

    let mut import = std::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"))
        .args(["state", "import", "-"])
        .current_dir(to.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = import.stdin.take().unwrap();
        stdin.write_all(&out.stdout).unwrap();
    }
    let done = import.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(stdout(&done).contains("20 runs"), "{}", stdout(&done));

    let source = open_when_free(&state_of(from.path()));
    let target = open_when_free(&state_of(to.path()));
    assert_same_state(&source, &target).await;
}

/// A well-formed export to spoil, written by the library.
async fn good_export() -> String {
    let source = populated_source().await;
    let mut file = Vec::new();
    export::write(&source, Backend::Sled, "-", &mut file).await.unwrap();
    String::from_utf8(file).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_files_are_refused_by_the_cli_and_nothing_is_written() {
    let good = good_export().await;
    let lines: Vec<&str> = good.lines().collect();
    let n = lines.len();
    let cut = &good[..good.len() - lines[n - 1].len() - lines[n - 2].len() / 2 - 2];
    let mut garbage = lines.clone();
    garbage[4] = "{\"kind\":\"seen\",\"recipe\":\"r\"}";
    let mut newer = lines.clone();
    let future = r#"{"ghlflow_state_export":2,"exported_at":"2027-01-01T00:00:00Z","from":"sled","ghlflow":"9.0.0"}"#;
    newer[0] = future;
    let cases: [(&str, String, &str); 5] = [
        ("truncated", lines[..n - 1].join("\n") + "\n", "the file is truncated: it ends after line"),
        ("cut-mid-line", cut.to_owned(), "the file is truncated: line"),
        ("garbage", garbage.join("\n") + "\n", "bad.jsonl:5:"),
        ("newer", newer.join("\n") + "\n", "written by a newer ghlflow (state export format 2"),
        ("not-an-export", "hello\n".to_owned(), "not a ghlflow state export"),
    ];
    for (name, text, want) in cases {
        let to = project();
        std::fs::write(to.path().join("bad.jsonl"), &text).unwrap();
        let out = ghlflow(to.path(), &["state", "import", "bad.jsonl"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
        // The file was refused before the store was opened: not even the folder exists.
        assert!(!state_of(to.path()).exists(), "{name}: the state folder was created");
    }
    // The garbage line's error says what is wrong with it.
    let to = project();
    std::fs::write(to.path().join("bad.jsonl"), garbage.join("\n") + "\n").unwrap();
    let err = stderr(&ghlflow(to.path(), &["state", "import", "bad.jsonl"]));
    assert!(err.contains("missing field `item`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_into_a_store_holding_a_state_needs_force() {
    let to = project();
    std::fs::write(to.path().join("state.jsonl"), good_export().await).unwrap();
    let target = Store::open(&state_of(to.path())).unwrap();
    target.save_trigger_state("capsule-people", &TriggerState { baselined: true, ..Default::default() }).await.unwrap();
    target.create_runs(&[run(900, "capsule-people", RunStatus::Succeeded)]).await.unwrap();
    target.flush_async().await.unwrap();
    // sled lists its trees in no fixed order: compare the records sorted.
    let dump = async |store: &Store| {
        let mut records = store.dump().await.unwrap();
        records.sort();
        records
    };
    let before = dump(&target).await;
    let_go(target, &state_of(to.path()));

    let out = ghlflow(to.path(), &["state", "import", "state.jsonl"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("already holds a state: 1 trigger state and at least one run"), "{err}");
    assert!(err.contains("run twice") && err.contains("--force"), "{err}");
    let target = open_when_free(&state_of(to.path()));
    assert!(dump(&target).await == before, "the refused import wrote something");
    let_go(target, &state_of(to.path()));

    let out = ghlflow(to.path(), &["state", "import", "state.jsonl", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("over the state it held (--force)"), "{}", stdout(&out));
    let target = open_when_free(&state_of(to.path()));
    // The file's runs and the store's own run.
    assert_eq!(all_runs(&target).await.len(), 20 + 1);
    assert_eq!(target.trigger_state("capsule-people").await.unwrap().unwrap().generation, 1, "the file's position");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_held_by_a_running_ghlflow_is_named_with_what_to_do() {
    let dir = project();
    let held = Store::open(&state_of(dir.path())).unwrap();
    for args in [&["state", "export", "out.jsonl"][..], &["state", "export", "-"][..]] {
        let out = ghlflow(dir.path(), args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("another ghlflow process") && err.contains("stop it first"), "{err}");
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
    }
    assert!(!dir.path().join("out.jsonl").exists());
    std::fs::write(dir.path().join("in.jsonl"), good_export().await).unwrap();
    let err = stderr(&ghlflow(dir.path(), &["state", "import", "in.jsonl"]));
    assert!(err.contains("stop it first") && err.contains("`ghlflow state import` again"), "{err}");
    drop(held);
}
