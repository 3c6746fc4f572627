//! Hostile and careless input (issue 9): each audit input in `tests/fixtures/hostile/` is
//! refused with a located error or fails its run with a message; none crashes, hangs or
//! fills memory. Files that are not files (/dev/zero, FIFOs, directories), a recipe id given
//! twice, servers that echo the token, and dry runs that must write nothing are here too.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use ghlflow::catalog;
use ghlflow::config::Config;
use ghlflow::recipe;

use crate::fake_api::{FakeApi, Recorded, Reply};

const DIR: &str = "tests/fixtures/hostile";
const CONFIG: &str = "tests/fixtures/recipes/ghlflow.yaml";

fn fixture(name: &str) -> PathBuf {
    Path::new(DIR).join(name)
}

/// Loads the recipes folder `dir` against the recipe fixtures' connections.
fn load(dir: &Path) -> Result<Vec<recipe::Recipe>, ghlflow::diagnostic::Diagnostics> {
    let catalog = catalog::load_embedded().unwrap();
    let config = Config::load(Path::new(CONFIG), &catalog, &|_| None).unwrap_or_else(|d| panic!("{d}"));
    recipe::load_recipes(dir, &catalog, &config, &|_| None)
}

/// A recipes folder holding only `files` (copied from the fixtures).
fn folder_with(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::copy(fixture(f), dir.path().join(f)).unwrap();
    }
    dir
}

#[test]
fn deep_nesting_partials_and_broken_files_are_refused_with_a_place() {
    let cases: &[(&str, &str, usize)] = &[
        ("nested_helpers_5000.yaml", "nest more than 32 deep", 13),
        ("nested_if_20000.yaml", "nest more than 32 deep", 13),
        ("recursive_inline_partial.yaml", "partials and inline partials", 13),
        ("two_documents.yaml", "a second YAML document", 14),
        ("nul_byte.yaml", "control character U+0000 (NUL)", 13),
        ("invalid_utf8.yaml", "not UTF-8 text: byte 0xe9 at line 13, column 17", 13),
    ];
    for (file, expected, line) in cases {
        let dir = folder_with(&[file]);
        let err = match load(dir.path()) {
            Ok(_) => panic!("{file}: validated"),
            Err(e) => e,
        };
        let text = err.to_string();
        assert!(text.contains(expected), "{file}: {text}");
        let first = err.iter().next().unwrap();
        assert_eq!(first.position.line, *line, "{file}: {text}");
        assert!(first.position.col >= 1, "{file}: {text}");
    }
}

#[cfg(unix)]
#[test]
fn files_that_are_not_regular_files_are_refused_and_one_id_twice_too() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.yaml")).unwrap();
    std::fs::create_dir(dir.path().join("folder.yaml")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("loop2.yaml"), dir.path().join("loop1.yaml")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("loop1.yaml"), dir.path().join("loop2.yaml")).unwrap();
    let fifo = dir.path().join("fifo.yaml");
    let have_fifo = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
    let valid = std::fs::read_to_string("tests/fixtures/recipes/valid/mirror_people.yaml").unwrap();
    std::fs::write(dir.path().join("won.yaml"), &valid).unwrap();
    std::fs::write(dir.path().join("won.yml"), &valid).unwrap();
    let text = load(dir.path()).unwrap_err().to_string();
    for expected in [
        "zero.yaml: is not a regular file",
        "folder.yaml: is a directory, not a file",
        "loop1.yaml: cannot read: a symbolic link loop",
        "won.yml: has the same recipe id as",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
    if have_fifo {
        assert!(text.contains("fifo.yaml: is not a regular file"), "{text}");
    }
    assert!(!text.contains(":0:0:"), "whole-file errors have no made-up place: {text}");
}

#[test]
fn the_readmes_configuration_example_is_valid() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let start = readme.find("```yaml\nconnections:").expect("the README shows a ghlflow.yaml") + "```yaml\n".len();
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let catalog = catalog::load_embedded().unwrap();
    let env = |name: &str| Some(format!("value-of-{name}"));
    let config = Config::parse(block, Path::new("README.md"), &catalog, &env).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(config.connection("ghl").unwrap().location_id.as_deref(), Some("value-of-GHL_LOCATION_ID"));
    assert_eq!(config.redactor.redact("value-of-GHL_TOKEN"), "<redacted>");
}

// ---------------------------------------------------------------------------------------
// At run time, against a fake Capsule and GHL.

/// One Capsule party; GHL notes are answered and recorded.
fn serve(echo_token: bool) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    move |r: &Recorded| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/api/v2/parties") => Reply::json(
            200,
            json!({"parties": [{"id": 7, "type": "person", "firstName": "Ann", "about": "a b c d e f g h i j k l",
                "updatedAt": "2026-02-01T00:00:00Z", "createdAt": "2026-01-01T00:00:00Z"}]}),
        ),
        ("POST", p) if p.ends_with("/notes") => {
            let mut note = json!({"id": "n1", "body": r.json()["body"]});
            if echo_token {
                note["seenAuthorization"] = json!(r.header("authorization"));
                note["escaped"] = json!(format!("{:?}", r.header("authorization").unwrap_or_default()));
            }
            Reply::json(201, json!({"note": note}))
        }
        _ => Reply::json(404, json!({"message": "no route"})),
    }
}

struct Flow {
    dir: tempfile::TempDir,
}

impl Flow {
    fn new(api: &FakeApi, recipes: &[(&str, &str)]) -> Flow {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ghlflow.yaml"),
            format!(
                "connections:\n  ghl:\n    app: ghl\n    location_id: LOC1\n    base_url: {base}\n    auth: {{ type: private_token, token: pit-hostile-secret-0001 }}\n  capsule:\n    app: capsule\n    base_url: {base}/api/v2\n    auth: {{ type: bearer, token: capsule-hostile-secret }}\n    access: read_only\n",
                base = api.base_url
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("recipes")).unwrap();
        for (name, text) in recipes {
            std::fs::write(dir.path().join(format!("recipes/{name}.yaml")), text).unwrap();
        }
        Flow { dir }
    }

    async fn ghlflow(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"))
            .args(args)
            .arg("--config")
            .arg(self.dir.path().join("ghlflow.yaml"))
            .env("GHL_TOKEN", "pit-hostile-secret-0001")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap()
    }
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn runaway_or_overflowing_templates_fail_their_run_with_a_message_and_nothing_stays_queued() {
    let api = FakeApi::start(serve(false)).await;
    let cases = [
        ("date_add_overflow", "leaves the supported date range"),
        ("nested_each_split", "too much work"),
        ("bad_strftime", "`%Q` is not a date format"),
    ];
    let recipes: Vec<(String, String)> = cases
        .iter()
        .map(|(n, _)| (n.to_string(), std::fs::read_to_string(fixture(&format!("{n}.yaml"))).unwrap()))
        .collect();
    let refs: Vec<(&str, &str)> = recipes.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let flow = Flow::new(&api, &refs);
    let out = flow.ghlflow(&["run", "--once"]).await;
    assert_eq!(out.status.code(), Some(1), "a failed run, not a panic (101): {}", text(&out));
    for (name, message) in cases {
        assert!(text(&out).contains(message), "{name}: {}", text(&out));
    }
    assert_eq!(api.count_to("/contacts/7/notes"), 0, "nothing was sent");
    let list = flow.ghlflow(&["runs", "list", "--json"]).await;
    let runs: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|r| r["status"] == "failed"), "{runs:?}");
    // The next run starts cleanly (nothing open is left to crash on).
    let again = flow.ghlflow(&["run", "--once"]).await;
    assert!(again.status.code() == Some(0), "{}", text(&again));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_echoing_the_token_never_gets_it_printed_or_recorded() {
    let api = FakeApi::start(serve(true)).await;
    let recipe = std::fs::read_to_string(fixture("bad_strftime.yaml"))
        .unwrap()
        .replace(r#"'{{date trigger.updatedAt "%Q"}}'"#, "'token {{env.GHL_TOKEN}}'");
    let flow = Flow::new(&api, &[("echo", &recipe)]);
    let out = flow.ghlflow(&["run", "--once"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(api.count_to("/contacts/7/notes"), 1);
    let list = flow.ghlflow(&["runs", "list", "--json"]).await;
    let runs: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap();
    let id = runs[0]["id"].as_str().unwrap().to_owned();
    for args in [vec!["runs", "show", id.as_str()], vec!["runs", "show", id.as_str(), "--json"]] {
        let shown = flow.ghlflow(&args).await;
        let shown = text(&shown);
        assert!(!shown.contains("pit-hostile-secret-0001"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
    let called = flow
        .ghlflow(&[
            "call",
            "ghl.contacts.create_contact_note",
            "--connection",
            "ghl",
            "--input",
            r#"{"contactId":"7","body":"x"}"#,
        ])
        .await;
    assert!(called.status.success(), "{}", text(&called));
    assert!(!text(&called).contains("pit-hostile-secret-0001"), "{}", text(&called));
    assert!(text(&called).contains("Bearer <redacted>"), "{}", text(&called));
    // Nothing in the state folder holds it either.
    for entry in walk(&flow.dir.path().join(".ghlflow")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!contains(&bytes, b"pit-hostile-secret-0001"), "{} holds the token", entry.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_asking_for_years_fails_call_at_once_and_an_oversized_body_is_refused() {
    let api = FakeApi::start(|r: &Recorded| match r.path.as_str() {
        "/contacts/slow" => Reply::json(429, json!({"message": "slow down"}))
            .header("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")
            .header("x-ratelimit-reset", "18446744073709551615"),
        "/contacts/big" => Reply::json(200, json!({"contact": {"id": "big", "notes": "x".repeat(5_000)}})),
        _ => Reply::json(200, json!({"contact": {"id": "small"}})),
    })
    .await;
    let flow = Flow::new(&api, &[]);
    // A per-app cap of 4 KB, through an operations override.
    let ops = flow.dir.path().join("ops/ghl");
    std::fs::create_dir_all(&ops).unwrap();
    let app = std::fs::read_to_string("operations/ghl/app.yaml").unwrap();
    std::fs::write(ops.join("app.yaml"), format!("{app}\nmax_response_bytes: 4096\n")).unwrap();
    let ops_dir = flow.dir.path().join("ops");
    let call = |id: &str| {
        let input = format!(r#"{{"contactId":"{id}"}}"#);
        let ops_dir = ops_dir.clone();
        let flow = &flow;
        async move {
            let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"));
            c.arg("--operations").arg(&ops_dir).args(["call", "ghl.contacts.get_contact", "--connection", "ghl"]);
            c.args(["--input", &input, "--config"]).arg(flow.dir.path().join("ghlflow.yaml"));
            c.kill_on_drop(true);
            tokio::time::timeout(std::time::Duration::from_secs(60), c.output()).await.expect("no long wait").unwrap()
        }
    };
    let out = call("slow").await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("HTTP 429: rate limited: the server asks to wait until"), "{}", text(&out));
    assert_eq!(api.count_to("/contacts/slow"), 1, "asked once, not retried for years");
    let out = call("big").await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("larger than 4096 bytes (the app's max_response_bytes)"), "{}", text(&out));
    let out = call("small").await;
    assert!(out.status.success(), "{}", text(&out));
}

const NOTES: &str = r#"
name: Notes
trigger:
  operation: capsule.parties.party_updated
  connection: capsule
  every: 5m
steps:
  - id: note
    operation: ghl.contacts.create_contact_note
    connection: ghl
    input:
      contactId: "{{trigger.id}}"
      body: "{{trigger.about}}"
"#;

async fn dump(flow: &Flow) -> Vec<ghlflow::store::DumpedRecord> {
    let store = ghlflow::store::Store::open(&flow.dir.path().join(".ghlflow/state")).unwrap();
    store.dump().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_writes_nothing_even_after_a_trigger_edit() {
    let api = FakeApi::start(serve(false)).await;
    let flow = Flow::new(&api, &[("notes", NOTES)]);
    // A dry run in a fresh folder does not even create the state folder.
    let out = flow.ghlflow(&["run", "--once", "--dry-run"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(!flow.dir.path().join(".ghlflow").exists(), "the dry run created the state folder");

    let out = flow.ghlflow(&["run", "--once"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let before = dump(&flow).await;
    assert!(before.iter().any(|(tree, ..)| tree == "seen"), "the baseline marked the party seen");
    // The trigger is edited into another one (new inputs): a real run would start afresh.
    let edited = NOTES.replace("  every: 5m\n", "  every: 5m\n  input:\n    embed: tags\n");
    std::fs::write(flow.dir.path().join("recipes/notes.yaml"), edited).unwrap();
    let out = flow.ghlflow(&["run", "--once", "--dry-run"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("baseline"), "{}", text(&out));
    assert_eq!(dump(&flow).await, before, "the dry run changed the store");
    assert_eq!(api.count_to("/contacts/7/notes"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn state_dot_is_refused_and_runs_list_limit_zero_is_an_error() {
    let api = FakeApi::start(serve(false)).await;
    let flow = Flow::new(&api, &[("notes", NOTES)]);
    let out = flow.ghlflow(&["runs", "list", "--limit", "0"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--limit 0 would list nothing"), "{}", text(&out));
    let config = std::fs::read_to_string(flow.dir.path().join("ghlflow.yaml")).unwrap();
    std::fs::write(flow.dir.path().join("ghlflow.yaml"), format!("{config}state: .\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(flow.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = flow.ghlflow(&["run", "--once"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is not a ghlflow state folder"), "{}", text(&out));
    assert!(!flow.dir.path().join("db").exists(), "sled wrote beside ghlflow.yaml");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(flow.dir.path()).unwrap().permissions().mode();
        assert_ne!(mode & 0o077, 0, "the project folder was made owner-only");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn hostile_files_dropped_into_a_running_engines_recipes_keep_it_running() {
    let api = FakeApi::start(serve(false)).await;
    let flow = Flow::new(&api, &[("notes", NOTES)]);
    let mut engine = tokio::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"))
        .args(["run", "--config"])
        .arg(flow.dir.path().join("ghlflow.yaml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let recipes = flow.dir.path().join("recipes");
    for f in ["nested_helpers_5000.yaml", "nested_if_20000.yaml", "recursive_inline_partial.yaml"] {
        std::fs::copy(fixture(f), recipes.join(f)).unwrap();
    }
    std::os::unix::fs::symlink("/dev/zero", recipes.join("zero.yaml")).unwrap();
    let _ = std::process::Command::new("mkfifo").arg(recipes.join("fifo.yaml")).status();
    std::fs::write(recipes.join("notes.yml"), NOTES).unwrap();
    // Two reload checks (every 2 s) later, it still runs.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert!(engine.try_wait().unwrap().is_none(), "the engine died after hostile recipe files appeared");
    engine.start_kill().unwrap();
    let out = engine.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("nest more than 32 deep"), "{log}");
    assert!(log.contains("not a regular file"), "{log}");
    assert!(log.contains("two files give this recipe id"), "{log}");
}

/// A state folder written by the previous release (format 1: before reset counts, the
/// present set and the poll spill) opens, is migrated, and keeps its history and positions.
#[tokio::test]
async fn a_state_folder_of_the_previous_release_opens_and_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = crate::util::root().join("tests/fixtures/state-previous.tar.gz");
    let untar = std::process::Command::new("tar").arg("-xzf").arg(&fixture).current_dir(dir.path()).status().unwrap();
    assert!(untar.success());
    let state = dir.path().join("state");
    let store = ghlflow::store::Store::open(&state).unwrap();
    assert_eq!(store.format().unwrap(), Some(ghlflow::store::FORMAT), "migrated on open");
    // Its history: 81 succeeded and 21 filtered runs of capsule-people and capsule-notes.
    let runs = store.runs(None, usize::MAX).await.unwrap();
    assert_eq!(runs.len(), 102);
    let count = |s: ghlflow::store::RunStatus| runs.iter().filter(|r| r.status == s).count();
    assert_eq!((count(ghlflow::store::RunStatus::Succeeded), count(ghlflow::store::RunStatus::Filtered)), (81, 21));
    assert!(runs.iter().all(|r| r.recipe == "capsule-people" || r.recipe == "capsule-notes"));
    let run = runs.iter().find(|r| r.status == ghlflow::store::RunStatus::Succeeded).unwrap();
    assert!(run.steps.iter().all(|s| s.status == ghlflow::store::StepStatus::Succeeded || s.output.is_none()));
    // Its trigger positions, read with the new fields at their defaults.
    let people = store.trigger_state("capsule-people").await.unwrap().expect("a position");
    assert!(people.baselined && people.cursor.is_some() && people.generation == 0, "{people:?}");
    assert!(
        store
            .id_of(&format!(
                "party:{}",
                runs.iter()
                    .find(|r| r.recipe == "capsule-people" && r.status == ghlflow::store::RunStatus::Succeeded)
                    .unwrap()
                    .item_id
                    .clone()
                    .unwrap()
            ))
            .await
            .unwrap()
            .is_some()
    );
    assert!(store.present_items("capsule-people").await.unwrap().is_empty());
    // A poll of the new release commits over it (generation 0 on both sides).
    let mut commit = ghlflow::store::PollCommit { state: Some(people.clone()), ..Default::default() };
    commit.seen.push(("x".into(), "seen".into()));
    store.commit_poll("capsule-people", &commit).await.unwrap();
    assert_eq!(store.seen_mark("capsule-people", "x").await.unwrap().as_deref(), Some("seen"));
    assert_eq!(store.format().unwrap(), Some(ghlflow::store::FORMAT));
}

/// Opens `dir`'s store, waiting while the last handle's lock is still being let go (sled
/// releases it a moment after the handle is dropped).
fn open_when_free(dir: &std::path::Path) -> Result<ghlflow::store::Store, ghlflow::store::StoreError> {
    for _ in 0..100 {
        match ghlflow::store::Store::open(dir) {
            Err(e) if e.to_string().contains("another ghlflow process") => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
    ghlflow::store::Store::open(dir)
}

/// A state folder written by the code before the run journal (format 2: each run one whole
/// record, written with runs in every status) is migrated on first open: every run, its
/// steps, item, notes and replay time, the open runs, the id map, tokens and trigger
/// positions are there in the new layout and its index answers; a second open does not
/// migrate again; and a folder of a later format (4) is refused, naming the formats.
#[tokio::test]
async fn a_format_2_state_folder_is_migrated_to_the_journal_and_a_later_format_is_refused() {
    use ghlflow::store::{RunId, RunStatus, StepStatus};
    let dir = tempfile::tempdir().unwrap();
    let fixture = crate::util::root().join("tests/fixtures/state-format2.tar.gz");
    let untar = std::process::Command::new("tar").arg("-xzf").arg(&fixture).current_dir(dir.path()).status().unwrap();
    assert!(untar.success());
    let state = dir.path().join("state");
    let store = ghlflow::store::Store::open(&state).unwrap();
    assert_eq!(ghlflow::store::FORMAT, 3);
    assert_eq!(store.format().unwrap(), Some(3), "migrated on open");
    let id = |n: u32| RunId::new(1_764_493_200_000 + u64::from(n), n);

    let runs = store.runs(None, usize::MAX).await.unwrap();
    let statuses: Vec<(RunId, RunStatus)> = runs.iter().rev().map(|r| (r.id.clone(), r.status)).collect();
    use RunStatus::*;
    let expected = [Succeeded, Failed, Held, Waiting, Queued, Filtered, Unsure, Discarded, Succeeded];
    assert_eq!(statuses, (1..=9).map(id).zip(expected).collect::<Vec<_>>());

    let done = store.run(&id(1)).await.unwrap().unwrap();
    assert_eq!(done.item["firstName"], "P1");
    assert_eq!(done.item_id.as_deref(), Some("101"));
    assert_eq!(done.steps.len(), 2);
    assert!(done.steps.iter().all(|s| s.status == StepStatus::Succeeded));
    assert_eq!(done.steps[0].output.as_ref().unwrap()["contact"]["id"], "c1");
    let failed = store.run(&id(2)).await.unwrap().unwrap();
    assert_eq!((failed.replays, failed.next_replay_at), (1, Some(1_764_496_800)));
    assert!(failed.error.as_deref().unwrap_or_default().contains("HTTP 500"));
    assert_eq!(failed.steps.iter().map(|s| s.status).collect::<Vec<_>>(), [StepStatus::Succeeded, StepStatus::Failed]);
    let unsure = store.run(&id(7)).await.unwrap().unwrap();
    assert_eq!(unsure.notes, ["a note the engine left"]);
    assert_eq!(unsure.steps[1].status, StepStatus::Sent);
    assert_eq!(store.run(&id(3)).await.unwrap().unwrap().steps.len(), 2, "pending steps are kept as they were");

    // The index answers for the migrated runs.
    assert_eq!(store.runs_with_status("people", Held).await.unwrap()[0].id, id(3));
    assert_eq!(store.runs_page(None, Some(Succeeded), 10).await.unwrap().1, 2);
    assert_eq!(store.runs_page(Some("notes"), None, 10).await.unwrap().1, 2);
    assert_eq!(store.waiting_runs("notes").await.unwrap()[0].id, id(4));
    let open: Vec<RunId> = store.open_runs().await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(open, [id(2), id(4), id(5)], "the failed run with a replay due, the waiting and the queued one");
    // The rest of the state, untouched.
    assert_eq!(store.id_of("party:101").await.unwrap().as_deref(), Some("c1"));
    assert_eq!(store.tokens("ghl").await.unwrap().unwrap().refresh_token.as_deref(), Some("fixture-refresh"));
    let people = store.trigger_state("people").await.unwrap().unwrap();
    assert_eq!((people.generation, people.cursor.as_deref()), (2, Some("2026-11-30T08:59:00.000Z")));
    assert_eq!(store.seen_mark("people", "101").await.unwrap().as_deref(), Some("2026-11-30T08:58:00Z"));
    assert!(store.present_items("people").await.unwrap().contains("101"));
    // The old whole-run records are gone.
    assert!(store.dump().await.unwrap().iter().all(|(tree, _, _)| tree != "runs"));
    // And the journal takes new writes: the held run is released.
    let mut held = store.run(&id(3)).await.unwrap().unwrap();
    store.transition(&mut held, Queued).await.unwrap();
    store.flush().unwrap();
    drop(store);

    let store = open_when_free(&state).unwrap();
    assert_eq!(store.runs(None, usize::MAX).await.unwrap().len(), 9, "opened again: nothing migrated twice");
    assert_eq!(store.run(&id(3)).await.unwrap().unwrap().status, Queued);
    drop(store);

    // A later ghlflow's folder.
    let db = (0..100)
        .find_map(|_| {
            sled::open(&state).ok().or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                None
            })
        })
        .expect("the folder's lock was let go");
    db.open_tree("meta").unwrap().insert(b"format", b"4").unwrap();
    db.flush().unwrap();
    drop(db);
    let err = open_when_free(&state).map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("newer ghlflow (state format 4; this one reads up to 3)")
            && err.contains(&state.display().to_string()),
        "{err}"
    );
}
