//! Recipe validation: fixture recipes with one mistake each (named for the mistake) are
//! rejected with every problem at `file:line:col`; the rendered text is snapshotted. The
//! valid fixture compiles, and `ghlflow validate` reports through the binary.

use std::path::Path;

use ghlflow::catalog;
use ghlflow::config::Config;
use ghlflow::recipe;

const DIR: &str = "tests/fixtures/recipes";

fn env(name: &str) -> Option<String> {
    match name {
        "GHLFLOW_FIXTURE_SET_VAR" => Some("set".to_owned()),
        "GHL_CALENDAR_ID" => Some("calendar1".to_owned()),
        _ => None,
    }
}

fn compile(file: &Path) -> Result<recipe::Recipe, ghlflow::diagnostic::Diagnostics> {
    let catalog = catalog::load_embedded().unwrap();
    let config = Config::load(&Path::new(DIR).join("ghlflow.yaml"), &catalog, &env).unwrap_or_else(|d| panic!("{d}"));
    let text = std::fs::read_to_string(file).unwrap();
    let id = file.file_stem().unwrap().to_string_lossy();
    recipe::compile_recipe(&file.display().to_string(), &id, &text, &catalog, &config, &env)
}

#[test]
fn the_valid_recipe_compiles_with_types_and_references_resolved() {
    let r = compile(&Path::new(DIR).join("valid/mirror_people.yaml")).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(r.steps.len(), 2);
    assert_eq!(r.trigger.operation.key.to_string(), "capsule.parties.party_updated");
    assert_eq!(r.trigger.hold_above, Some(100));
}

#[test]
fn settings_fill_env_from_the_environment_or_their_defaults() {
    let r = compile(&Path::new(DIR).join("valid/meetings_with_settings.yaml")).unwrap_or_else(|d| panic!("{d}"));
    assert!(r.trigger.report_gone);
    assert_eq!(r.env.get("GHLFLOW_FIXTURE_SET_VAR"), Some(&serde_json::json!("set")));
    assert_eq!(r.env.get("GHLFLOW_FIXTURE_MINUTES"), Some(&serde_json::json!("45")), "the default");
    assert_eq!(r.env.len(), 2, "{:?}", r.env);
}

#[test]
fn an_instant_trigger_listens_for_its_event_and_polls_its_reconcile_op_every_15m() {
    let r = compile(&Path::new(DIR).join("valid/instant_people.yaml")).unwrap_or_else(|d| panic!("{d}"));
    let t = &r.trigger;
    assert!(t.polls && t.is_instant());
    assert_eq!(t.operation.key.to_string(), "capsule.parties.party_updated", "the safety-net poll");
    assert!(matches!(t.schedule, recipe::Schedule::Every(d) if d == std::time::Duration::from_secs(15 * 60)));
    assert_eq!(t.dedupe, catalog::Dedupe::IdUpdated, "the poll's own rule");
    let listens: Vec<(String, String, String)> =
        t.listens.iter().map(|l| (l.connection.name.clone(), l.event.clone(), l.operation.key.to_string())).collect();
    assert_eq!(listens, [("capsule".into(), "party/updated".into(), "capsule.parties.on_party_updated".into())]);
    // The trigger's inputs went to the poll.
    assert_eq!(t.input.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["embed"]);
}

#[test]
fn a_polling_trigger_names_the_instant_events_that_deliver_its_records_early() {
    let r = compile(&Path::new(DIR).join("valid/poll_with_instant.yaml")).unwrap_or_else(|d| panic!("{d}"));
    let t = &r.trigger;
    assert!(t.polls);
    assert_eq!(t.operation.key.to_string(), "capsule.parties.party_updated");
    assert!(matches!(t.schedule, recipe::Schedule::Every(d) if d == std::time::Duration::from_secs(600)));
    let events: Vec<&str> = t.listens.iter().map(|l| l.event.as_str()).collect();
    assert_eq!(events, ["party/created", "party/updated"]);
    // The same position as without `instant`: adding events to a recipe keeps its cursor.
    let plain = compile(&Path::new(DIR).join("valid/mirror_people.yaml")).unwrap_or_else(|d| panic!("{d}"));
    assert!(!plain.trigger.is_instant());
    assert!(t.fingerprint.contains("capsule.parties.party_updated"), "{}", t.fingerprint);
}

#[test]
fn an_instant_trigger_without_a_reconciling_poll_never_polls() {
    let r = compile(&Path::new(DIR).join("valid/instant_without_poll.yaml")).unwrap_or_else(|d| panic!("{d}"));
    let t = &r.trigger;
    assert!(!t.polls, "nothing lists a location's notes");
    assert!(t.operation.is_webhook(), "the webhook stands in for the operation, and is never polled");
    assert_eq!(t.listens.len(), 1);
    assert_eq!(t.listens[0].event, "NoteCreate");
    assert!(t.input.is_empty());
}

#[test]
fn each_mistake_is_reported_at_its_place() {
    let dir = Path::new(DIR).join("mistakes");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 15, "only {} kinds of mistake", files.len());
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        let err = match compile(&file) {
            Ok(_) => panic!("{name}: compiled, but it holds a mistake"),
            Err(e) => e,
        };
        for d in err.iter() {
            assert!(d.position.line >= 1, "{name}: {d}");
        }
        insta::assert_snapshot!(format!("recipe_error__{name}"), err.to_string());
    }
}

#[test]
fn validate_reports_all_recipes_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(Path::new(DIR).join("ghlflow.yaml"), dir.path().join("ghlflow.yaml")).unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    for f in ["unknown_input", "interval_out_of_range"] {
        std::fs::copy(Path::new(DIR).join(format!("mistakes/{f}.yaml")), dir.path().join(format!("recipes/{f}.yaml")))
            .unwrap();
    }
    std::fs::copy(Path::new(DIR).join("valid/mirror_people.yaml"), dir.path().join("recipes/ok.yaml")).unwrap();
    let out = crate::util::ghlflow(dir.path(), &["validate"]);
    let err = crate::util::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("recipes/unknown_input.yaml:"), "{err}");
    assert!(err.contains("recipes/interval_out_of_range.yaml:"), "{err}");
    assert!(err.contains("2 problems"), "{err}");

    std::fs::remove_file(dir.path().join("recipes/unknown_input.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("recipes/interval_out_of_range.yaml")).unwrap();
    let out = crate::util::ghlflow(dir.path(), &["validate"]);
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    assert!(crate::util::stdout(&out).contains("1 recipe OK"), "{}", crate::util::stdout(&out));
}

#[test]
fn the_published_schema_matches_the_spec_types() {
    let published = std::fs::read_to_string("docs/recipe.schema.json").expect("docs/recipe.schema.json exists");
    assert_eq!(
        published,
        recipe::schema_json(),
        "docs/recipe.schema.json is stale: run `cargo run -- schema recipe > docs/recipe.schema.json`"
    );
}

#[test]
fn the_shipped_recipes_validate_against_connections_named_ghl_and_capsule() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ghlflow.yaml"),
        "connections:\n  ghl: { app: ghl, location_id: LOC, auth: { type: private_token, token: t1 } }\n  capsule: { app: capsule, auth: { type: bearer, token: t2 }, access: read_only }\n",
    )
    .unwrap();
    let catalog = catalog::load_embedded().unwrap();
    let config = Config::load(&dir.path().join("ghlflow.yaml"), &catalog, &env).unwrap();
    let recipes = recipe::load_recipes(Path::new("recipes"), &catalog, &config, &env).unwrap_or_else(|d| panic!("{d}"));
    let ids: Vec<&str> = recipes.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "capsule-deleted-people",
            "capsule-meetings",
            "capsule-notes",
            "capsule-people",
            "capsule-restricted-people",
            "capsule-tasks",
            "ghl-welcome-sms",
            "ghl-won-deal-follow-up"
        ]
    );
}

#[test]
fn after_names_loaded_recipes_and_no_circle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(Path::new(DIR).join("ghlflow.yaml"), dir.path().join("ghlflow.yaml")).unwrap();
    let recipes = dir.path().join("recipes");
    std::fs::create_dir(&recipes).unwrap();
    let valid = std::fs::read_to_string(Path::new(DIR).join("valid/mirror_people.yaml")).unwrap();
    let with_after = |after: &str| valid.replacen("steps:", &format!("after: [{after}]\nsteps:"), 1);
    std::fs::write(recipes.join("people.yaml"), with_after("notes")).unwrap();
    std::fs::write(recipes.join("notes.yaml"), with_after("people")).unwrap();
    std::fs::write(recipes.join("tasks.yaml"), with_after("peple")).unwrap();
    let out = crate::util::ghlflow(dir.path(), &["validate"]);
    let err = crate::util::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("recipes/tasks.yaml:9:9: after[0]: no recipe `peple` is loaded (did you mean `people`?)"),
        "{err}"
    );
    assert!(err.contains("after: recipes wait for each other in a circle: notes → people → notes"), "{err}");

    std::fs::write(recipes.join("people.yaml"), &valid).unwrap();
    std::fs::write(recipes.join("tasks.yaml"), with_after("people")).unwrap();
    let out = crate::util::ghlflow(dir.path(), &["validate"]);
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
}
