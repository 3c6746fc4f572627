//! The embedded catalog compiles and holds what the product promises.

use std::collections::BTreeSet;

use ghlflow::catalog::{self, Dedupe, Kind, Records};

#[test]
fn ghl_has_126_operations_55_triggers_71_actions_in_14_categories() {
    let catalog = catalog::load_embedded().unwrap_or_else(|d| panic!("embedded catalog invalid:\n{d}"));
    let ghl: Vec<_> = catalog.operations().filter(|o| o.key.app == "ghl").collect();
    let triggers = ghl.iter().filter(|o| o.kind == Kind::Trigger).count();
    let categories: BTreeSet<&str> = ghl.iter().map(|o| o.key.category.as_str()).collect();
    assert_eq!(ghl.len(), 126);
    assert_eq!(triggers, 55);
    assert_eq!(ghl.len() - triggers, 71);
    assert_eq!(
        categories.into_iter().collect::<Vec<_>>(),
        vec![
            "associations",
            "blogs",
            "businesses",
            "calendars",
            "campaigns",
            "companies",
            "contacts",
            "conversations",
            "custom_fields",
            "locations",
            "opportunities",
            "snapshots",
            "users",
            "workflows"
        ]
    );
}

#[test]
fn instant_triggers_are_their_own_group_with_the_events_the_issue_names() {
    let catalog = catalog::load_embedded().unwrap();
    // `operations()` is what is sent over HTTP: no webhook among the 126.
    assert!(catalog.operations().all(|o| !o.is_webhook()));
    let events = |app: &str| -> BTreeSet<String> {
        catalog
            .instant_triggers()
            .filter(|o| o.key.app == app)
            .map(|o| o.webhook.as_ref().unwrap().event.clone())
            .collect()
    };
    let ghl = events("ghl");
    for e in [
        "ContactCreate",
        "ContactUpdate",
        "ContactDelete",
        "ContactTagUpdate",
        "ContactDndUpdate",
        "NoteCreate",
        "NoteUpdate",
        "NoteDelete",
        "TaskCreate",
        "TaskComplete",
        "TaskDelete",
        "AppointmentCreate",
        "AppointmentUpdate",
        "AppointmentDelete",
        "OpportunityCreate",
        "OpportunityUpdate",
        "OpportunityDelete",
        "OpportunityStageUpdate",
        "OpportunityStatusUpdate",
        "InboundMessage",
        "OutboundMessage",
    ] {
        assert!(ghl.contains(e), "GHL event {e} missing");
    }
    assert_eq!(ghl.len(), 23);
    // Every event is one GHL publishes.
    let text = std::fs::read_to_string(crate::util::shared().join("reference/ghl-webhook-events.json"))
        .expect("the published GHL webhook events");
    let published: serde_json::Value = serde_json::from_str(&text).unwrap();
    let published = published["events"].as_object().unwrap();
    for e in &ghl {
        assert!(published.contains_key(e), "{e} is not a published GHL event");
    }
    let capsule = events("capsule");
    // Capsule's REST hooks (avoid-polling-with-rest-hooks): no note events, no task/deleted.
    assert_eq!(capsule.len(), 19);
    assert!(capsule.contains("party/created") && capsule.contains("kase/closed") && capsule.contains("user/deleted"));
    assert!(!capsule.iter().any(|e| e.starts_with("entry/") || e == "task/deleted"));
    // GHL's 14 categories stay 14: every event sits in an existing category.
    let categories: BTreeSet<&str> =
        catalog.all().into_iter().filter(|o| o.key.app == "ghl").map(|o| o.key.category.as_str()).collect();
    assert_eq!(categories.len(), 14);
    assert_eq!(catalog.webhook_for("ghl", "ContactCreate").unwrap().key.to_string(), "ghl.contacts.on_contact_create");
}

#[test]
fn each_webhook_reconciles_with_a_poll_of_the_same_records_and_its_sample_is_a_delivery() {
    let catalog = catalog::load_embedded().unwrap();
    for op in catalog.instant_triggers() {
        let hook = op.webhook.as_ref().unwrap();
        assert_eq!(op.kind, Kind::Trigger);
        assert!(op.inputs.is_empty() && !op.writes(), "{}", op.key);
        let output = op.output.as_ref().unwrap();
        let records = output.records(&op.sample_output);
        assert!(!records.is_empty(), "{}: no record in its sample", op.key);
        match op.key.app.as_str() {
            // Capsule: `{event, payload: [...]}`, each element one record.
            "capsule" => {
                assert_eq!(op.sample_output["event"], hook.event.as_str(), "{}", op.key);
                assert!(matches!(&output.records, Records::Items(p) if p.to_string() == "payload"), "{}", op.key);
            }
            // GHL: the whole body is the record, with the event's name in `type`.
            _ => {
                assert!(matches!(&output.records, Records::Record(p) if p.is_root()), "{}", op.key);
                assert_eq!(op.sample_output["type"], hook.event.as_str(), "{}", op.key);
                assert!(op.sample_output["webhookId"].is_string() && op.sample_output["timestamp"].is_string());
            }
        }
        if let Some(id) = &output.id {
            assert!(records.iter().all(|r| id.get(r).is_some()), "{}: sample lacks `{id}`", op.key);
        }
        if let Some(key) = &hook.reconcile {
            let poll = catalog.get(&key.to_string()).unwrap();
            assert!(!poll.is_webhook() && poll.kind == Kind::Trigger, "{}: reconcile {key}", op.key);
            assert_eq!(poll.key.app, op.key.app);
            // The same records: the poll's items carry the id the event carries.
            let poll_id = poll.output.as_ref().and_then(|o| o.id.as_ref()).map(|p| p.to_string());
            assert_eq!(poll_id, output.id.as_ref().map(|p| p.to_string()), "{}: ids differ from {key}", op.key);
        }
    }
    let contact = catalog.get("ghl.contacts.on_contact_create").unwrap();
    assert_eq!(
        contact.webhook.as_ref().unwrap().reconcile.as_ref().map(|k| k.to_string()).as_deref(),
        Some("ghl.contacts.search_contacts")
    );
    let party = catalog.get("capsule.parties.on_party_created").unwrap();
    assert_eq!(
        party.webhook.as_ref().unwrap().reconcile.as_ref().map(|k| k.to_string()).as_deref(),
        Some("capsule.parties.party_updated")
    );
    assert!(catalog.get("ghl.contacts.on_note_create").unwrap().webhook.as_ref().unwrap().reconcile.is_none());
}

#[test]
fn capsule_source_is_read_only_and_paged_by_link_header() {
    let catalog = catalog::load_embedded().unwrap();
    let capsule: Vec<_> = catalog.operations().filter(|o| o.key.app == "capsule").collect();
    assert!(capsule.len() >= 8, "capsule has {} operations", capsule.len());
    for op in &capsule {
        assert!(!op.writes(), "{} writes", op.key);
    }
    let parties = catalog.get("capsule.parties.party_updated").expect("party feed");
    assert_eq!(parties.since.as_deref(), Some("since"));
    assert_eq!(parties.dedupe, Some(Dedupe::IdUpdated));
    assert_eq!(parties.pagination.style(), "link_header");
    for key in [
        "capsule.parties.party_deleted",
        "capsule.entries.entry_updated",
        "capsule.tasks.task_updated",
        "capsule.users.list_users",
        "capsule.countries.list_countries",
        "capsule.parties.get_party",
        "capsule.entries.party_entries",
    ] {
        assert!(catalog.get(key).is_some(), "{key} missing");
    }
}

#[test]
fn every_trigger_can_find_its_records_and_ids_in_its_own_sample() {
    let catalog = catalog::load_embedded().unwrap();
    for op in catalog.operations().filter(|o| o.kind == Kind::Trigger) {
        let output = op.output.as_ref().unwrap();
        if op.response != catalog::ResponseKind::Json {
            continue;
        }
        let records = output.records(&op.sample_output);
        assert!(!records.is_empty(), "{}: sample_output has no records at {:?}", op.key, output.records);
        if let (Some(id), Records::Items(_)) = (&output.id, &output.records) {
            for r in &records {
                assert!(id.get(r).is_some(), "{}: a sample record lacks its id `{id}`", op.key);
            }
        }
        if let Some(updated) = &output.updated
            && op.dedupe == Some(Dedupe::IdUpdated)
        {
            for r in &records {
                assert!(updated.get(r).is_some(), "{}: a sample record lacks `{updated}`", op.key);
            }
        }
    }
}

#[test]
fn keys_are_unique_snake_case_and_paths_keep_their_trailing_slash() {
    let catalog = catalog::load_embedded().unwrap();
    for op in catalog.operations() {
        assert!(catalog::is_snake_case(&op.key.name), "{}", op.key);
        assert_eq!(catalog.get(&op.key.to_string()).unwrap().path.as_str(), op.path.as_str());
    }
    assert_eq!(catalog.get("ghl.contacts.create_contact").unwrap().path.as_str(), "/contacts/");
    let slashed = catalog.operations().filter(|o| o.key.app == "ghl" && o.path.as_str().ends_with('/')).count();
    assert!(slashed >= 11, "only {slashed} GHL paths end in /");
}
