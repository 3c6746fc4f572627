//! A new user's first hour, through the binary: `test`, `init`, completions and the man page,
//! run history that tells the truth, errors in plain words and help that teaches (issue 15).
//! Where the output is the point, it is an insta snapshot; addresses of the sandbox (a new
//! port each time) are replaced by `http://SANDBOX` first.

use std::path::Path;
use std::process::Output;

use ghlflow::sandbox::{self, Sandbox, SandboxOptions};
use serde_json::Value;

use crate::util::{ghlflow, ghlflow_env, root, stderr, stdout};

/// A folder with a ghlflow.yaml pointing at a sandbox, and the recipes a test writes.
struct Folder {
    dir: tempfile::TempDir,
    sandbox: Sandbox,
}

impl Folder {
    async fn new(recipes: &[(&str, &str)]) -> Folder {
        let sandbox = sandbox::start(SandboxOptions { people: 30, ..SandboxOptions::default() }).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ghlflow.yaml"), sandbox.config_yaml()).unwrap();
        std::fs::create_dir(dir.path().join("recipes")).unwrap();
        for (name, text) in recipes {
            std::fs::write(dir.path().join("recipes").join(format!("{name}.yaml")), text).unwrap();
        }
        Folder { dir, sandbox }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the binary in the folder (the sandbox keeps answering on this runtime meanwhile).
    async fn ghlflow(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"))
            .args(args)
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .env_remove("GHLFLOW_LOG")
            .env_remove("RUST_LOG")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap()
    }

    /// Output with the sandbox's address made stable for snapshots.
    fn stable(&self, text: &str) -> String {
        text.replace(&self.sandbox.ghl_base_url(), "http://SANDBOX")
    }
}

const VIP: &str = r#"name: A call-back task for every VIP
trigger:
  operation: capsule.parties.party_updated
  connection: capsule
  every: 5m
  start: backfill
  input:
    embed: tags
filter: "{{#if (eq trigger.type \"person\")}}{{#if (contains (pluck trigger.tags \"name\") \"VIP\")}}true{{/if}}{{/if}}"
steps:
  - id: contact
    operation: ghl.contacts.upsert_contact
    connection: ghl
    input:
      firstName: "{{trigger.firstName}}"
      email: "{{lower trigger.emailAddresses.[0].address}}"
      tags: [vip]
  - id: call_back
    operation: ghl.contacts.create_contact_task
    connection: ghl
    input:
      contactId: "{{steps.contact.contact.id}}"
      title: "Call {{trigger.firstName}} back"
      dueDate: "{{date_add trigger.updatedAt 1 \"days\"}}"
      completed: false
"#;

const ANN: &str = r#"{"id": 7, "type": "person", "firstName": "Ann", "emailAddresses": [{"address": "Ann@Example.com"}],
 "tags": [{"name": "VIP"}], "updatedAt": "2026-01-01T00:00:00Z"}"#;

// --- 1 and 2: dry runs never invent data; `ghlflow test` --------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_shows_a_placeholder_for_an_earlier_steps_answer_never_the_sample() {
    let folder =
        Folder::new(&[("vip", &VIP.replace("(contains (pluck trigger.tags \\\"name\\\") \\\"VIP\\\")", "true"))]).await;
    let out = folder.ghlflow(&["run", "--once", "--dry-run"]).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{}", text, stderr(&out));
    let sample =
        ghlflow::catalog::load_embedded().unwrap().get("ghl.contacts.upsert_contact").unwrap().sample_output["contact"]
            ["id"]
            .as_str()
            .unwrap()
            .to_owned();
    assert!(text.matches("would send").count() >= 2, "{text}");
    assert!(!text.contains(&sample), "the catalog's sample id {sample} stands in for an answer:\n{text}");
    assert!(text.contains("POST http://127.0.0.1"), "{text}");
    assert!(text.contains("/contacts/<steps.contact.contact.id>/tasks"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_renders_every_step_for_a_given_item_and_sends_nothing() {
    let folder = Folder::new(&[("vip", VIP)]).await;
    let before = folder.sandbox.ghl_counts();
    let out = folder.ghlflow(&["test", "vip", "--item", ANN]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    insta::assert_snapshot!(folder.stable(&stdout(&out)));
    assert_eq!(folder.sandbox.ghl_counts(), before, "a dry test wrote to GHL");
    let runs = folder.ghlflow(&["runs", "list"]).await;
    assert_eq!(stdout(&runs), "no runs yet\n", "a dry test recorded a run");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_checks_the_filter_and_each_if_and_says_what_would_fail() {
    let recipe =
        VIP.replace("    input:\n      contactId", "    if: \"{{trigger.firstName}}\"\n    input:\n      contactId");
    let folder = Folder::new(&[("vip", &recipe)]).await;
    let plain = r#"{"id": 8, "type": "person", "firstName": "Bo", "tags": [{"name": "Lead"}]}"#;
    let out = folder.ghlflow(&["test", "vip", "--item", plain]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("vip: item 8: filtered out"), "{}", stdout(&out));

    let no_name = r#"{"id": 9, "type": "person", "tags": [{"name": "VIP"}], "updatedAt": "2026-01-01T00:00:00Z"}"#;
    let out = folder.ghlflow(&["test", "vip", "--item", no_name]).await;
    let text = stdout(&out);
    assert!(text.contains("vip: item 9: step `call_back` skipped (if)"), "{text}");

    // A required input that renders empty: the step would fail, and the exit code says so.
    let recipe = VIP.replace("title: \"Call {{trigger.firstName}} back\"", "title: \"{{trigger.firstName}}\"");
    std::fs::write(folder.path().join("recipes/vip.yaml"), recipe).unwrap();
    let out = folder.ghlflow(&["test", "vip", "--item", no_name]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("step `call_back` would fail: required input `title` rendered empty for item 9"), "{text}");
    assert!(text.contains("1 step(s) would fail"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_takes_the_triggers_newest_items_and_leaves_its_position() {
    let folder = Folder::new(&[("vip", &VIP.replace("start: backfill", "start: now"))]).await;
    let out = folder.ghlflow(&["test", "vip", "--limit", "2"]).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.starts_with("testing `vip` on 2 item(s): the newest of capsule.parties.party_updated"), "{text}");
    let items: Vec<&str> = text.lines().filter(|l| l.starts_with("vip: item ")).collect();
    assert!(!items.is_empty(), "{text}");
    // The trigger was not polled for real: the first `run --once` still records its baseline.
    let run = folder.ghlflow(&["run", "--once"]).await;
    assert!(stdout(&run).contains("1 baseline(s) recorded"), "{}", stdout(&run));
}

#[tokio::test(flavor = "multi_thread")]
async fn test_send_sends_for_real_records_a_run_and_its_item_can_be_tested_again() {
    let folder = Folder::new(&[("vip", VIP)]).await;
    let out = folder.ghlflow(&["test", "vip", "--item", ANN, "--send"]).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("item 7: run "), "{text}");
    assert!(text.contains("succeeded\n  step `contact` (ghl.contacts.upsert_contact): succeeded"), "{text}");
    let contact = folder
        .sandbox
        .ghl_contacts()
        .into_iter()
        .find(|c| c["email"] == "ann@example.com")
        .expect("the contact was created in the sandbox");
    let tasks = folder.sandbox.ghl_tasks(contact["id"].as_str().unwrap());
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["title"], "Call Ann back");

    let list = folder.ghlflow(&["runs", "list", "--json"]).await;
    let rows: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "succeeded");
    assert_eq!(rows[0]["trigger_item_id"], "7");

    let again = folder.ghlflow(&["test", "vip", "--item-id", "7"]).await;
    let text = stdout(&again);
    assert!(text.contains(&format!("the item of run {}", rows[0]["id"].as_str().unwrap())), "{text}");
    assert!(text.contains("\"firstName\": \"Ann\""), "{text}");
    let missing = folder.ghlflow(&["test", "vip", "--item-id", "404"]).await;
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("no run of `vip` has item `404`"), "{}", stderr(&missing));
}

#[test]
fn test_names_an_unknown_recipe_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ghlflow.yaml"),
        "connections:\n  capsule:\n    app: capsule\n    auth: { type: bearer, token: t }\n    access: read_only\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    std::fs::write(dir.path().join("recipes/vip-follow-up.yaml"), "name: x\n").unwrap();
    let out = ghlflow(dir.path(), &["test", "vip-folow-up"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("no recipe `vip-folow-up` in recipes (did you mean `vip-follow-up`?)"), "{err}");
}

// --- 3: init, completions, man ------------------------------------------------------------

/// Runs the binary in `dir` with these environment variables.
const SECRETS: [(&str, &str); 4] =
    [("GHL_LOCATION_ID", "loc1"), ("GHL_TOKEN", "pit-1"), ("CAPSULE_TOKEN", "cap-1"), ("GHL_CALENDAR_ID", "cal1")];

#[test]
fn init_writes_a_folder_that_validates_with_the_shipped_recipes_and_their_schema() {
    let parent = tempfile::tempdir().unwrap();
    let out = ghlflow(parent.path(), &["init", "auto"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = parent.path().join("auto");
    let mut names: Vec<String> = std::fs::read_dir(root().join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let listed = format!("wrote {} recipes to auto/recipes: {}\n", names.len(), names.join(", "));
    assert!(stdout(&out).contains(&listed), "{}", stdout(&out));

    // Every secret is a quoted "${VAR}" (unquoted inside `{ }` it is YAML syntax).
    let config = std::fs::read_to_string(dir.join("ghlflow.yaml")).unwrap();
    for var in ["GHL_LOCATION_ID", "GHL_TOKEN", "CAPSULE_TOKEN"] {
        assert!(config.contains(&format!("\"${{{var}}}\"")), "{var} is not quoted:\n{config}");
    }
    let out = ghlflow_env(&dir, &["validate"], &SECRETS);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{} recipes OK (recipes)\n", names.len()));
    // Without the variables, each is named.
    let out = ghlflow(&dir, &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("environment variable `GHL_TOKEN` is not set"), "{}", stderr(&out));

    // The shipped recipes, each pointing at a schema file that exists and is the binary's.
    let schema = stdout(&ghlflow(&dir, &["schema", "recipe"]));
    let shipped: Vec<_> = std::fs::read_dir(root().join("recipes")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(std::fs::read_dir(dir.join("recipes")).unwrap().count(), shipped.len());
    for path in shipped {
        let name = path.file_name().unwrap();
        let written = std::fs::read_to_string(dir.join("recipes").join(name)).unwrap();
        let target = schema_target(&written).unwrap_or_else(|| panic!("{name:?} has no $schema line"));
        let file = dir.join("recipes").join(&target);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), schema, "{name:?}: {target} is not the recipe schema");
        // And in this repository the same line finds the published schema.
        let original = std::fs::read_to_string(&path).unwrap();
        assert_eq!(schema_target(&original).as_deref(), Some(target.as_str()), "{name:?}");
        assert!(path.parent().unwrap().join(&target).is_file(), "{name:?}: {target} missing in the repository");
        assert_eq!(written.lines().skip(1).collect::<Vec<_>>(), original.lines().skip(1).collect::<Vec<_>>());
    }
}

/// The path of a recipe's `# yaml-language-server: $schema=PATH` line.
fn schema_target(text: &str) -> Option<String> {
    text.lines().next()?.split_once("$schema=").map(|(_, p)| p.trim().to_owned())
}

#[test]
fn init_empty_keeps_existing_files_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let out = ghlflow(dir.path(), &["init", "--empty"]);
    assert!(out.status.success(), "{}", stderr(&out));
    insta::assert_snapshot!(stdout(&out));
    assert_eq!(std::fs::read_dir(dir.path().join("recipes")).unwrap().count(), 0);
    assert!(dir.path().join("docs/recipe.schema.json").is_file());
    let out = ghlflow_env(dir.path(), &["validate"], &SECRETS);
    assert_eq!(stdout(&out), "0 recipes OK (recipes)\n", "{}", stderr(&out));

    std::fs::write(dir.path().join("ghlflow.yaml"), "mine\n").unwrap();
    let out = ghlflow(dir.path(), &["init", "--empty"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("exist already; nothing was written"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(dir.path().join("ghlflow.yaml")).unwrap(), "mine\n");
    let out = ghlflow(dir.path(), &["init", "--empty", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(std::fs::read_to_string(dir.path().join("ghlflow.yaml")).unwrap(), "mine\n");
}

#[test]
fn completions_for_each_shell_know_every_command() {
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = ghlflow(&root(), &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = stdout(&out);
        for command in ["init", "test", "runs", "completions", "replay"] {
            assert!(text.contains(command), "{shell}: no `{command}` in the script");
        }
    }
    let out = ghlflow(&root(), &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_prints_roff_and_writes_a_page_per_command() {
    let out = ghlflow(&root(), &["man"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(".TH ghlflow 1"), "{text}");
    assert!(text.contains(".SH NAME") && text.contains(".SH SUBCOMMANDS"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let out = ghlflow(&root(), &["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for page in ["ghlflow.1", "ghlflow-run.1", "ghlflow-test.1", "ghlflow-runs-list.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".SH OPTIONS") || text.contains(".SH SYNOPSIS"), "{page}");
    }
    let test_page = std::fs::read_to_string(dir.path().join("ghlflow-test.1")).unwrap();
    assert!(test_page.contains("\\-\\-send"), "{test_page}");
}

// --- 5: run history that tells the truth ---------------------------------------------------

/// A folder whose `ghl` connection is a fake API, with GHL's retries in milliseconds.
fn fake_folder(api: &crate::fake_api::FakeApi, recipe: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ghlflow.yaml"),
        format!(
            "connections:\n  ghl:\n    app: ghl\n    location_id: LOC1\n    base_url: {}\n    auth: {{ type: private_token, token: pit-history }}\n",
            api.base_url
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    std::fs::write(dir.path().join("recipes/tag.yaml"), recipe).unwrap();
    let ops = dir.path().join("ops/ghl");
    std::fs::create_dir_all(&ops).unwrap();
    let app = std::fs::read_to_string(root().join("operations/ghl/app.yaml")).unwrap();
    std::fs::write(
        ops.join("app.yaml"),
        app.replace("initial_backoff: 500ms", "initial_backoff: 1ms").replace("max_backoff: 30s", "max_backoff: 5ms"),
    )
    .unwrap();
    dir
}

const TAG: &str = r#"name: Tag new contacts
trigger:
  operation: ghl.contacts.search_contacts
  connection: ghl
  every: 5m
filter: "{{trigger.email}}"
steps:
  - id: tag
    operation: ghl.contacts.add_tags_to_contact
    connection: ghl
    input:
      contactId: "{{trigger.id}}"
      tags: [seen]
"#;

async fn ghlflow_async(dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"))
        .arg("--operations")
        .arg(dir.join("ops"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_show_counts_every_request_sent_retries_included() {
    use crate::fake_api::{FakeApi, Reply};
    let fail = Reply::json(500, serde_json::json!({"message": "upstream hiccup"}));
    let api = FakeApi::scripted(
        vec![fail.clone(), fail.clone(), fail.clone(), fail],
        Reply::json(200, serde_json::json!({"tags": ["seen"]})),
    )
    .await;
    let dir = fake_folder(&api, TAG);
    let item = r#"{"id": "c1", "email": "a@example.com"}"#;
    let out = ghlflow_async(dir.path(), &["test", "tag", "--item", item, "--send"]).await;
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(api.count_to("/contacts/c1/tags"), 5, "four 500s, then the answer");
    let run = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("item c1: run "))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let show = ghlflow_async(dir.path(), &["runs", "show", &run]).await;
    let text = stdout(&show);
    assert!(text.contains("step 1 `tag` (ghl.contacts.add_tags_to_contact): succeeded"), "{text}");
    assert!(text.contains("sent 5 time(s)"), "{text}");
    let json: Value =
        serde_json::from_slice(&ghlflow_async(dir.path(), &["runs", "show", &run, "--json"]).await.stdout).unwrap();
    assert_eq!(json["steps"][0]["attempts"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filtered_run_lists_no_pending_steps_and_lists_say_what_they_left_out() {
    use crate::fake_api::{FakeApi, Reply};
    let api = FakeApi::start(|_| Reply::json(200, serde_json::json!({"tags": ["seen"]}))).await;
    let dir = fake_folder(&api, TAG);
    let out = ghlflow_async(dir.path(), &["test", "tag", "--item", r#"{"id": "c0"}"#, "--send"]).await;
    assert!(stdout(&out).contains("item c0: run ") && stdout(&out).contains(" filtered"), "{}", stdout(&out));
    for i in 1..=3 {
        let item = format!(r#"{{"id": "c{i}", "email": "{i}@example.com"}}"#);
        let out = ghlflow_async(dir.path(), &["test", "tag", "--item", &item, "--send"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let list = ghlflow_async(dir.path(), &["runs", "list", "--json"]).await;
    let rows: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows.len(), 4);
    let filtered = rows.iter().find(|r| r["status"] == "filtered").unwrap()["id"].as_str().unwrap().to_owned();

    let show = ghlflow_async(dir.path(), &["runs", "show", &filtered]).await;
    let text = stdout(&show);
    assert!(text.contains("status   filtered"), "{text}");
    assert!(text.contains("no step ran: the recipe's filter left this item out"), "{text}");
    assert!(!text.contains("pending") && !text.contains("step 1"), "{text}");
    let json: Value =
        serde_json::from_slice(&ghlflow_async(dir.path(), &["runs", "show", &filtered, "--json"]).await.stdout)
            .unwrap();
    assert_eq!(json["steps"], serde_json::json!([]), "{json}");

    let limited = ghlflow_async(dir.path(), &["runs", "list", "--limit", "2"]).await;
    assert_eq!(stdout(&limited).lines().count(), 3, "a header and two runs:\n{}", stdout(&limited));
    assert_eq!(stderr(&limited), "2 of 4 shown; --limit for more\n");
    let limited = ghlflow_async(dir.path(), &["runs", "list", "--status", "succeeded", "--limit", "1"]).await;
    assert_eq!(stderr(&limited), "1 of 3 shown; --limit for more\n");
    let all = ghlflow_async(dir.path(), &["runs", "list"]).await;
    assert_eq!(stderr(&all), "", "nothing was left out");

    let failed = ghlflow_async(dir.path(), &["runs", "list", "--status", "failed"]).await;
    assert!(failed.status.success());
    assert_eq!(stdout(&failed), "no failed runs\n");
    let other = ghlflow_async(dir.path(), &["runs", "list", "--recipe", "other", "--status", "held"]).await;
    assert_eq!(stdout(&other), "no held runs of `other`\n");
    let unknown = ghlflow_async(dir.path(), &["runs", "list", "--status", "broken"]).await;
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn runs_list_help_names_every_status() {
    use clap::ValueEnum as _;
    let out = ghlflow(&root(), &["runs", "list", "--help"]);
    let help = stdout(&out);
    for status in ghlflow::store::RunStatus::value_variants() {
        assert!(help.contains(status.as_str()), "`{}` missing from\n{help}", status.as_str());
    }
}

// --- 7: errors a newcomer understands ------------------------------------------------------

/// A folder with a sandbox-free configuration (no variables) and the given recipes.
fn offline_folder(config_extra: &str, recipes: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ghlflow.yaml"),
        format!(
            "connections:\n  ghl:\n    app: ghl\n    location_id: LOC1\n    auth: {{ type: private_token, token: pit-offline }}\n  capsule:\n    app: capsule\n    auth: {{ type: bearer, token: cap-offline }}\n    access: read_only\n{config_extra}"
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    for (name, text) in recipes {
        std::fs::write(dir.path().join("recipes").join(format!("{name}.yaml")), text).unwrap();
    }
    dir
}

#[test]
fn an_unknown_key_does_not_hide_the_other_problems_and_template_mistakes_are_plain() {
    let recipe = r#"name: Several mistakes at once
trigger:
  operation: capsule.parties.party_updated
  connection: capsule
  evry: 5m
filter: "{{trigger.firstName}"
steps:
  - id: contact
    operation: ghl.contacts.upsert_contact
    connection: ghl
    inptu: {}
    input:
      firstName: "{{trigger.firstName"
      lastName: "{{#if trigger.lastName}}{{trigger.lastName}}"
      email: "{{trigger.emial}}"
"#;
    let dir = offline_folder("", &[("mistakes", recipe)]);
    let out = ghlflow(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!(stderr(&out));
}

#[test]
fn an_unknown_key_in_ghlflow_yaml_does_not_hide_the_other_problems() {
    let dir = offline_folder("retenton: 30d\nretention: soon\n", &[]);
    let out = ghlflow(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("ghlflow.yaml:10:1: retenton: unknown field `retenton` (did you mean `retention`?)"), "{err}");
    assert!(err.contains("ghlflow.yaml:11:1: retention:"), "the bad retention is hidden:\n{err}");
    assert!(err.ends_with("2 problems\n"), "{err}");
}

#[test]
fn call_with_a_wrong_type_says_only_that() {
    let dir = offline_folder("", &[]);
    let input = r#"{"contactId":"c1","title":"Call back","dueDate":"2026-01-01T00:00:00Z","completed":"no"}"#;
    let out = ghlflow(
        dir.path(),
        &["call", "ghl.contacts.create_contact_task", "--connection", "ghl", "--input", input, "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: ghl.contacts.create_contact_task: input `completed` should be boolean, not \"no\"\n"
    );
    // Left out, it is missing.
    let input = r#"{"contactId":"c1","title":"Call back","dueDate":"2026-01-01T00:00:00Z"}"#;
    let out = ghlflow(
        dir.path(),
        &["call", "ghl.contacts.create_contact_task", "--connection", "ghl", "--input", input, "--dry-run"],
    );
    assert!(stderr(&out).contains("missing required input `completed`"), "{}", stderr(&out));
}

#[test]
fn call_of_another_apps_operation_names_the_mismatch_before_access() {
    let dir = offline_folder("", &[]);
    let out = ghlflow(
        dir.path(),
        &["call", "ghl.contacts.upsert_contact", "--connection", "capsule", "--input", r#"{"email":"a@b.example"}"#],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: connection `capsule` is for app `capsule`, but `ghl.contacts.upsert_contact` belongs to `ghl`; \
         use --connection ghl\n"
    );
}

#[test]
fn a_missing_configuration_points_at_init_and_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["validate"][..], &["run", "--once"], &["runs", "list"], &["test", "x"]] {
        let out = ghlflow(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("no configuration at ghlflow.yaml"), "{args:?}: {err}");
        assert!(err.contains("`ghlflow init`") && err.contains("`ghlflow sandbox`"), "{args:?}: {err}");
    }
}

/// Every `$ ghlflow call ...` in the README's text blocks, with the lines it shows after it
/// (until a blank line, the next command or the end of the block; `...` ends a shortened one).
fn readme_call_examples() -> Vec<(Vec<String>, Vec<String>)> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut in_text = false;
    let mut current: Option<(Vec<String>, Vec<String>)> = None;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_text = line == "```text";
            out.extend(current.take());
            continue;
        }
        if !in_text {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ghlflow call ") {
            out.extend(current.take());
            let args = shell_words(command);
            current = Some((args, Vec::new()));
        } else if line.is_empty() || line.starts_with("$ ") {
            out.extend(current.take());
        } else if let Some((_, shown)) = &mut current {
            shown.push(line.to_owned());
        }
    }
    out
}

/// Splits a command line as a shell would for these examples (single quotes only).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = vec!["call".to_owned()];
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_call_examples_work_as_written_against_the_sandbox() {
    let folder = Folder::new(&[]).await;
    let examples = readme_call_examples();
    assert!(examples.len() >= 2, "{examples:?}");
    assert!(examples.iter().any(|(args, _)| !args.contains(&"--dry-run".to_owned())), "one example sends");
    for (args, shown) in examples {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = folder.ghlflow(&args).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let printed = stdout(&out).replace(&folder.sandbox.ghl_base_url(), "http://127.0.0.1:8977");
        let printed: Vec<&str> = printed.lines().collect();
        let (expected, shortened) = match shown.iter().position(|l| l == "...") {
            Some(end) => (&shown[..end], true),
            None => (&shown[..], false),
        };
        assert!(printed.len() >= expected.len(), "{args:?}: printed\n{}", printed.join("\n"));
        assert_eq!(&printed[..expected.len()], expected, "{args:?}");
        if !shortened {
            assert_eq!(printed.len(), expected.len(), "{args:?}: printed\n{}", printed.join("\n"));
        }
    }
}

// --- 8: help that teaches --------------------------------------------------------------------

/// Every command and subcommand, with its path (`["runs", "list"]`).
fn all_commands() -> Vec<(Vec<String>, clap::Command)> {
    fn walk(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut p = path.clone();
            p.push(sub.get_name().to_owned());
            out.push((p.clone(), sub.clone()));
            walk(sub, p, out);
        }
    }
    use clap::CommandFactory as _;
    let mut cmd = ghlflow::cli::Cli::command();
    cmd.build();
    let mut out = vec![(Vec::new(), cmd.clone())];
    walk(&cmd, Vec::new(), &mut out);
    out
}

#[test]
fn every_positional_argument_is_described() {
    for (path, cmd) in all_commands() {
        for arg in cmd.get_positionals() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.len() > 10, "`ghlflow {}` <{}> has no description", path.join(" "), arg.get_id());
        }
    }
}

#[test]
fn every_commands_help_has_examples_that_parse() {
    use clap::Parser as _;
    for (path, cmd) in all_commands() {
        let name = format!("ghlflow {}", path.join(" ")).trim_end().to_owned();
        let after = cmd.get_after_help().map(|h| h.to_string()).unwrap_or_default();
        let examples: Vec<&str> = after
            .lines()
            .skip_while(|l| *l != "Examples:")
            .skip(1)
            .map(str::trim)
            .filter(|l| l.starts_with("ghlflow "))
            .collect();
        assert!(!examples.is_empty(), "`{name} --help` shows no examples");
        assert!(
            examples.iter().any(|e| e.starts_with(&format!("{name} ")) || path.is_empty()),
            "`{name} --help` has no example of itself: {examples:?}"
        );
        for example in examples {
            // The command, without its comment (after two spaces) or a redirection.
            let command = example.split("  ").next().unwrap();
            let mut words = shell_words(command.strip_prefix("ghlflow ").unwrap());
            words.remove(0); // shell_words starts with "call"
            let words: Vec<String> = words.into_iter().take_while(|w| w != ">" && w != "|" && w != ">>").collect();
            if words.iter().any(|w| w == "<command>") {
                continue;
            }
            let parsed = ghlflow::cli::Cli::try_parse_from(std::iter::once("ghlflow".to_owned()).chain(words));
            assert!(parsed.is_ok(), "`{name}`: the example `{example}` does not parse: {:?}", parsed.err());
        }
    }
}

#[test]
fn options_that_do_not_apply_are_not_listed() {
    for (path, _) in all_commands().into_iter().filter(|(p, _)| !p.is_empty()) {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = ghlflow(&root(), &args);
        let help = stdout(&out);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(!help.contains("--operations"), "`ghlflow {}` lists --operations", path.join(" "));
        if path != ["run"] {
            assert!(!help.contains("--log-format"), "`ghlflow {}` lists --log-format", path.join(" "));
        }
    }
    let top = stdout(&ghlflow(&root(), &["--help"]));
    assert!(top.contains("--operations") && top.contains("--log-format"), "{top}");
    // Before the command, as the README writes it, they still work.
    let out = ghlflow(
        &root(),
        &["--operations", root().join("operations").to_str().unwrap(), "ops", "list", "--app", "capsule"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

// --- The README's section on init and test, as printed ---------------------------------------

/// The README's text block that starts with `$ {command}`: the command's words and the lines
/// shown after it.
fn readme_block(command: &str) -> (Vec<String>, Vec<String>) {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme.find(&format!("```text\n$ {command}")).unwrap_or_else(|| panic!("no block for {command}"));
    let block = &readme[start + "```text\n$ ".len()..];
    let block = &block[..block.find("\n```").unwrap()];
    let mut lines = block.lines();
    let mut words = shell_words(lines.next().unwrap().strip_prefix("ghlflow ").unwrap());
    words.remove(0);
    (words, lines.map(str::to_owned).collect())
}

/// Whether `actual` is `expected`, where a `...` line stands for any number of lines.
fn matches_shown(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "..." => (0..=actual.len()).any(|skip| matches_shown(rest, &actual[skip..])),
        Some((first, rest)) => actual.first() == Some(&first.as_str()) && matches_shown(rest, &actual[1..]),
    }
}

#[test]
fn the_readmes_init_example_is_what_init_prints() {
    let shown = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    assert!(matches_shown(&shown(&["a", "...", "d"]), &["a", "b", "c", "d"]));
    assert!(!matches_shown(&shown(&["a", "...", "d"]), &["a", "b", "c"]));
    assert!(!matches_shown(&shown(&["a", "b"]), &["a", "b", "c"]));
    let (args, shown) = readme_block("ghlflow init");
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ghlflow(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    assert!(
        matches_shown(&shown, &printed.lines().collect::<Vec<_>>()),
        "README shows\n{}\nprinted\n{printed}",
        shown.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_test_example_is_what_test_prints_for_the_walk_through_recipe() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let at = readme.find("`recipes/vip-follow-up.yaml`").expect("the walk-through recipe");
    let recipe = &readme[at..];
    let recipe = &recipe[recipe.find("```yaml\n").unwrap() + 8..];
    let recipe = &recipe[..recipe.find("```").unwrap()];
    let folder = Folder::new(&[("vip-follow-up", recipe)]).await;
    let (args, shown) = readme_block("ghlflow test");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = folder.ghlflow(&args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out).replace(&folder.sandbox.ghl_base_url(), "http://127.0.0.1:8977");
    assert!(
        matches_shown(&shown, &printed.lines().collect::<Vec<_>>()),
        "README shows\n{}\nprinted\n{printed}",
        shown.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_an_earlier_step_would_save_is_a_placeholder_in_later_steps() {
    let recipe = r#"name: Contact, then a note on it
trigger:
  operation: capsule.parties.party_updated
  connection: capsule
  every: 5m
steps:
  - id: contact
    ids:
      contact: "party:{{trigger.id}}"
    if: "{{not ids.contact}}"
    operation: ghl.contacts.upsert_contact
    connection: ghl
    input:
      firstName: "{{trigger.firstName}}"
    save:
      "party:{{trigger.id}}": "{{steps.contact.contact.id}}"
  - id: note
    ids:
      contact: "party:{{trigger.id}}"
    if: "{{steps.contact.new}}"
    operation: ghl.contacts.create_contact_note
    connection: ghl
    input:
      contactId: "{{ids.contact}}"
      body: "From Capsule"
"#;
    let folder = Folder::new(&[("note", recipe)]).await;
    let out = folder.ghlflow(&["test", "note", "--item", r#"{"id": 41, "firstName": "Pia"}"#]).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("POST http://127.0.0.1"), "{text}");
    assert!(text.contains("/contacts/<steps.contact.contact.id>/notes"), "{text}");
    assert!(
        text.contains(
            "step `note`: its `if` read a placeholder for an earlier step's answer; the real run may skip it"
        ),
        "{text}"
    );
}

/// The commands of one README block, each with the lines shown after it.
fn readme_commands(first: &str) -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme.find(&format!("```text\n$ {first}")).unwrap_or_else(|| panic!("no block for {first}"));
    let block = &readme[start + "```text\n".len()..];
    let block = &block[..block.find("\n```").unwrap()];
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        match line.strip_prefix("$ ") {
            Some(command) => out.push((command.to_owned(), Vec::new())),
            None => {
                if let Some(last) = out.last_mut() {
                    last.1.push(line.to_owned());
                }
            }
        }
    }
    // A blank line separates commands; it is not output.
    for (_, lines) in &mut out {
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
    }
    out
}

/// Steps 4 to 7 of the walk-through, as a new user follows them: the recipe from step 3,
/// `validate` (clean, then with the two typos the README shows), the first `run --once`
/// against a default sandbox, the dry run and the run with failures after people changed,
/// the failed runs listed, one replayed and shown: each printing what the README shows.
#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_validate_and_first_run_blocks_are_what_the_binary_prints() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let at = readme.find("`recipes/vip-follow-up.yaml`").expect("the walk-through recipe");
    let recipe = &readme[at..];
    let recipe = &recipe[recipe.find("```yaml\n").unwrap() + 8..];
    let recipe = recipe[..recipe.find("```").unwrap()].to_owned();
    // The sandbox a new user starts: `ghlflow sandbox` with its defaults.
    let sandbox = sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ghlflow.yaml"), sandbox.config_yaml()).unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    let recipe_path = dir.path().join("recipes/vip-follow-up.yaml");
    let run = |args: Vec<String>| {
        let dir = dir.path().to_owned();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"))
                .args(&args)
                .current_dir(&dir)
                .env("NO_COLOR", "1")
                .env_remove("GHLFLOW_LOG")
                .env_remove("RUST_LOG")
                .output()
                .await
                .unwrap()
        }
    };
    let check = |command: &str, shown: &[String], printed: &str| {
        assert!(
            matches_shown(shown, &printed.lines().collect::<Vec<_>>()),
            "`{command}`: README shows\n{}\nprinted\n{printed}",
            shown.join("\n")
        );
    };

    let validate = readme_commands("ghlflow validate");
    assert_eq!(validate.len(), 2, "{validate:?}");
    std::fs::write(&recipe_path, &recipe).unwrap();
    let out = run(vec!["validate".into()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    check(&validate[0].0, &validate[0].1, &stdout(&out));
    // The two typos of the README's second `validate`.
    let typos = recipe.replacen("{{steps.contact.contact.id}}", "{{steps.contacts.contact.id}}", 1).replacen(
        "Call {{trigger.firstName}} back",
        "Call {{trigger.frstName}} back",
        1,
    );
    assert_ne!(typos, recipe);
    std::fs::write(&recipe_path, &typos).unwrap();
    let out = run(vec!["validate".into()]).await;
    assert_eq!(out.status.code(), Some(2));
    check(&validate[1].0, &validate[1].1, &stderr(&out));

    std::fs::write(&recipe_path, &recipe).unwrap();
    let first_run = readme_commands("ghlflow run --once\npolled");
    let out = run(vec!["run".into(), "--once".into()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    check(&first_run[0].0, &first_run[0].1, &stdout(&out));

    // Step 5 goes on: some people change in Capsule (the control API's edit), a dry run, then
    // a run against a sandbox failing half of its writes. Retries are made quick with an
    // operations override (backoff only; nothing printed depends on it).
    let ops = dir.path().join("ops/ghl");
    std::fs::create_dir_all(&ops).unwrap();
    let app = std::fs::read_to_string(root().join("operations/ghl/app.yaml")).unwrap();
    let fast =
        app.replace("initial_backoff: 500ms", "initial_backoff: 5ms").replace("max_backoff: 30s", "max_backoff: 20ms");
    assert_ne!(fast, app);
    std::fs::write(ops.join("app.yaml"), fast).unwrap();
    let with_ops = |command: &str| {
        let mut args = vec!["--operations".to_owned(), dir.path().join("ops").display().to_string()];
        args.extend(command.split('#').next().unwrap_or_default().split_whitespace().skip(1).map(str::to_owned));
        args
    };
    let later = &first_run[1..];
    assert_eq!(later.len(), 2, "{first_run:?}");
    sandbox.capsule_edit_people(WALK_THROUGH_EDITS);
    let out = run(with_ops(&later[0].0)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    check_normalized(&later[0].0, &later[0].1, &stdout(&out));
    let mut faults = sandbox.faults();
    faults.fail_rate = 0.5;
    sandbox.set_faults(faults).unwrap();
    let out = run(with_ops(&later[1].0)).await;
    assert_eq!(out.status.code(), Some(1), "a run failed: {}", stderr(&out));
    check_normalized(&later[1].0, &later[1].1, &stdout(&out));

    // Step 6: the failed runs; step 7: the first one replayed once the sandbox is healthy.
    let list = readme_commands("ghlflow runs list --status failed");
    let out = run(with_ops(&list[0].0)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    check_normalized(&list[0].0, &list[0].1, &stdout(&out));
    // The oldest failure, the one `run --once` named.
    let failed = stdout(&out).lines().last().and_then(|l| l.split_whitespace().next()).unwrap().to_owned();
    faults.fail_rate = 0.0;
    sandbox.set_faults(faults).unwrap();
    let replay = readme_commands("ghlflow runs replay");
    assert_eq!(replay.len(), 2, "{replay:?}");
    for (command, shown) in &replay {
        let mut args = with_ops(command);
        *args.last_mut().unwrap() = failed.clone();
        let out = run(args).await;
        assert!(out.status.success(), "{}", stderr(&out));
        check_normalized(command, shown, &stdout(&out));
    }
    sandbox.shutdown().await;
}

/// How many people the walk-through's "after some people changed in Capsule" edits.
const WALK_THROUGH_EDITS: usize = 60;

/// A line with what changes from one run to the next (run ids, the sandbox's port, times,
/// milliseconds) replaced by placeholders, and no trailing blanks.
fn normalized(line: &str) -> String {
    static PATTERNS: std::sync::LazyLock<[(regex::Regex, &str); 4]> = std::sync::LazyLock::new(|| {
        [
            (regex::Regex::new(r"\b\d{13}-\d{6}\b").unwrap(), "<run>"),
            (regex::Regex::new(r"127\.0\.0\.1:\d+").unwrap(), "127.0.0.1:<port>"),
            (regex::Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z").unwrap(), "<time>"),
            (regex::Regex::new(r"\b\d+ ms\b").unwrap(), "<n> ms"),
        ]
    });
    PATTERNS
        .iter()
        .fold(line.trim_end().to_owned(), |text, (pattern, with)| pattern.replace_all(&text, *with).into_owned())
}

/// `printed` shows what the README shows for `command`, run ids, times and milliseconds aside.
fn check_normalized(command: &str, shown: &[String], printed: &str) {
    let shown: Vec<String> = shown.iter().map(|l| normalized(l)).collect();
    let printed_lines: Vec<String> = printed.lines().map(normalized).collect();
    assert!(
        matches_shown(&shown, &printed_lines.iter().map(String::as_str).collect::<Vec<_>>()),
        "`{command}`: README shows\n{}\nprinted\n{printed}",
        shown.join("\n")
    );
}

/// The frames of a progress bar in `text`: `runs DONE/QUEUED` pairs, as drawn.
fn progress_frames(text: &str) -> Vec<(usize, usize)> {
    text.match_indices("runs ")
        .filter_map(|(at, _)| {
            let rest = &text[at + 5..];
            let (done, rest) = rest.split_once('/')?;
            let queued: String = rest.chars().take_while(char::is_ascii_digit).collect();
            Some((done.parse().ok()?, queued.parse().ok()?))
        })
        .collect()
}

/// `run --once` on a terminal draws a bar of runs done out of runs queued; in a pipe (CI, a
/// log file) it draws nothing.
#[tokio::test(flavor = "multi_thread")]
async fn run_once_shows_a_progress_bar_on_a_terminal_and_none_in_a_pipe() {
    let sandbox =
        sandbox::start(SandboxOptions { people: 40, no_limits: true, ..SandboxOptions::default() }).await.unwrap();
    let setup = || {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ghlflow.yaml"), sandbox.config_yaml()).unwrap();
        std::fs::create_dir(dir.path().join("recipes")).unwrap();
        std::fs::copy(root().join("recipes/capsule-people.yaml"), dir.path().join("recipes/capsule-people.yaml"))
            .unwrap();
        dir
    };
    // On a terminal: `script` gives the process a pseudo-terminal and records what it drew.
    let dir = setup();
    let command = format!("{} run --once", env!("CARGO_BIN_EXE_ghlflow"));
    let out = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let drawn = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{drawn}");
    let frames = progress_frames(&drawn);
    let succeeded: usize = drawn
        .split("runs: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary in {drawn}"));
    assert!(succeeded > 10, "{drawn}");
    assert!(!frames.is_empty(), "no progress bar on a terminal:\n{drawn}");
    // Every queued run counted (the bar is cleared at the end, and frames are drawn at most
    // 20 times a second, so the last count shown may be short of the total).
    assert!(frames.iter().all(|(_, queued)| *queued == succeeded), "{succeeded} runs: {frames:?}");
    assert!(frames.windows(2).all(|w| w[0].0 <= w[1].0), "the count went back: {frames:?}");
    assert!(frames.last().is_some_and(|(done, _)| *done > 0), "{frames:?}");

    // In a pipe: no bar at all.
    let dir = setup();
    let out = ghlflow(dir.path(), &["run", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(progress_frames(&stderr(&out)).is_empty(), "{}", stderr(&out));
    assert!(!stderr(&out).contains('\u{1b}'), "terminal escapes in a pipe: {}", stderr(&out));
    sandbox.shutdown().await;
}
