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
