//! `ghlflow ops list` and `ghlflow ops show` as a user runs them.

use serde_json::Value;

use crate::util::{ghlflow, root, stderr, stdout};

#[test]
fn list_groups_by_category_and_ends_with_a_summary_per_app() {
    let out = ghlflow(&root(), &["ops", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("ghl: 126 API operations (55 triggers, 71 actions) and 23 instant triggers in 14 categories"),
        "{text}"
    );
    assert!(text.contains("ghl.contacts (44)"), "33 API operations and 11 events: {text}");
    assert!(text.lines().any(|l| l.contains("upsert_contact") && l.contains("POST") && l.contains("/contacts/upsert")));
}

#[test]
fn list_filters_by_app_category_and_kind() {
    let out = ghlflow(&root(), &["ops", "list", "--app", "ghl", "--category", "opportunities", "--kind", "trigger"]);
    let text = stdout(&out);
    assert!(
        text.contains("ghl: 3 API operations (3 triggers, 0 actions) and 7 instant triggers in 1 category"),
        "{text}"
    );
    assert!(!text.contains("create_opportunity"));
}

#[test]
fn list_json_is_one_array_with_the_documented_fields() {
    let out = ghlflow(&root(), &["ops", "list", "--json"]);
    assert!(out.status.success());
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(rows.iter().filter(|r| r["app"] == "ghl" && r["source"] != "webhook").count(), 126);
    assert_eq!(rows.iter().filter(|r| r["app"] == "ghl" && r["source"] == "webhook").count(), 23);
    let row = rows.iter().find(|r| r["key"] == "ghl.custom_fields.list_custom_fields").expect("custom fields op");
    for field in ["key", "app", "category", "kind", "name", "method", "path", "scope"] {
        assert!(row.get(field).is_some(), "missing {field}");
    }
    assert_eq!(row["category"], "custom_fields");
    assert_eq!(row["scope"], "locations/customFields.readonly");
}

#[test]
fn list_says_how_each_trigger_is_delivered() {
    let out = ghlflow(&root(), &["ops", "list", "--json"]);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    for row in &rows {
        match row["kind"].as_str() {
            Some("trigger") => assert!(row["source"] == "poll" || row["source"] == "webhook", "{row}"),
            _ => assert!(row.get("source").is_none(), "an action has no source: {row}"),
        }
    }
    let hook = rows.iter().find(|r| r["key"] == "capsule.parties.on_party_updated").expect("party/updated");
    assert_eq!(hook["source"], "webhook");
    assert_eq!(hook["event"], "party/updated");
    assert_eq!(hook["reconcile"], "capsule.parties.party_updated");
    assert!(hook["method"].is_null() && hook["path"].is_null(), "nothing is sent: {hook}");
    let poll = rows.iter().find(|r| r["key"] == "capsule.parties.party_updated").unwrap();
    assert_eq!(poll["source"], "poll");
    assert!(poll.get("event").is_none());
    assert_eq!(rows.iter().filter(|r| r["source"] == "webhook").count(), 42);

    let out = ghlflow(&root(), &["ops", "list", "--app", "ghl", "--category", "contacts"]);
    let text = stdout(&out);
    let line = text.lines().find(|l| l.contains("on_contact_create")).expect("ContactCreate listed");
    assert!(line.contains("event") && line.contains("ContactCreate"), "{line}");
    assert!(line.contains("reconciled by ghl.contacts.search_contacts"), "{line}");
    let line = text.lines().find(|l| l.contains("on_note_create")).unwrap();
    assert!(line.contains("nothing polls for it"), "{line}");
}

#[test]
fn show_says_how_an_instant_trigger_is_delivered_and_reconciled() {
    let out = ghlflow(&root(), &["ops", "show", "ghl.contacts.on_contact_create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "Delivery  instant: ghl pushes the `ContactCreate` event",
        "POST /hooks/ghl",
        "Reconcile a recipe on it also polls `ghl.contacts.search_contacts`",
        "(none: the event's body is the input)",
        "webhookId",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(!text.contains("Request ") && !text.contains("Pages ") && !text.contains("Sample input"), "{text}");
    let out = ghlflow(&root(), &["ops", "show", "ghl.conversations.on_inbound_message"]);
    let text = stdout(&out);
    assert!(text.contains("Reconcile none: no poll lists these records, so a recipe on it never polls"), "{text}");
    let out = ghlflow(&root(), &["ops", "show", "capsule.tasks.on_task_completed", "--json"]);
    let op: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!((op["source"].as_str(), op["event"].as_str()), (Some("webhook"), Some("task/completed")));
    assert_eq!(op["output"]["items"], "payload");
    assert!(op["url"].is_null() && op["pagination"].is_null());
}

#[test]
fn call_refuses_an_instant_trigger_with_nothing_sent() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("tests/fixtures/recipes/ghlflow.yaml"), dir.path().join("ghlflow.yaml")).unwrap();
    let out = ghlflow(dir.path(), &["call", "capsule.parties.on_party_created", "--connection", "capsule"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("`capsule.parties.on_party_created` is an instant trigger"), "{err}");
    assert!(
        err.contains("nothing to call; to read the same records now, call `capsule.parties.party_updated`"),
        "{err}"
    );
}

#[test]
fn show_tells_a_recipe_author_everything() {
    let out = ghlflow(&root(), &["ops", "show", "ghl.contacts.upsert_contact"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "POST https://services.leadconnectorhq.com/contacts/upsert",
        "Version   2021-07-28",
        "Scope     contacts.write (writes)",
        "locationId",
        "customFields",
        "Sample output",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(text.lines().any(|l| l.trim_start().starts_with("email") && l.contains("body") && l.contains("string")));
}

#[test]
fn show_json_carries_inputs_and_samples() {
    let out = ghlflow(&root(), &["ops", "show", "ghl.contacts.get_contact", "--json"]);
    let op: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(op["inputs"][0]["name"], "contactId");
    assert_eq!(op["inputs"][0]["in"], "path");
    assert_eq!(op["dedupe"], "content");
    assert!(op["sample_output"]["contact"]["id"].is_string());
}

#[test]
fn unknown_names_fail_with_a_suggestion_and_exit_2() {
    let out = ghlflow(&root(), &["ops", "show", "ghl.contacts.upsert_contat"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("did you mean `ghl.contacts.upsert_contact`?"), "{}", stderr(&out));
    let out = ghlflow(&root(), &["ops", "list", "--category", "contact"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("did you mean `contacts`?"), "{}", stderr(&out));
}

#[test]
fn a_broken_override_folder_is_reported_with_positions_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ghl")).unwrap();
    std::fs::write(dir.path().join("ghl/workflows.yaml"), "operations:\n  - key: x\n    nme: y\n").unwrap();
    let out = ghlflow(&root(), &["--operations", dir.path().to_str().unwrap(), "ops", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("workflows.yaml:3:5: operations[0].nme: unknown field `nme`"), "{err}");
}
