//! The Capsule to GHL mirror end to end: the shipped recipes, run by the engine, against the
//! sandbox (in process). Volume tests raise the sandbox's limits; one test keeps the real ones.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ghlflow::demo::Workspace;
use ghlflow::http::Pager;
use ghlflow::sandbox::SandboxOptions;
use ghlflow::store::RunStatus;
use serde_json::{Map, Value, json};

/// Every record of a Capsule feed, read through ghlflow's own client.
async fn capsule_all(ws: &Workspace, key: &str, inputs: Value) -> Vec<Value> {
    let op = Arc::clone(ws.engine.catalog().get(key).unwrap());
    let connection = Arc::clone(ws.engine.config().connection("capsule").unwrap());
    let inputs: Map<String, Value> = inputs.as_object().cloned().unwrap_or_default();
    let mut pager = Pager::new(ws.engine.client(), connection, op, inputs, Some(10_000));
    let mut out = Vec::new();
    while let Some(page) = pager.next_page().await {
        out.extend(page.unwrap().records);
    }
    out
}

fn marker_count(items: &[Value], field: &str, marker: &str) -> usize {
    items.iter().filter(|i| i[field].as_str().is_some_and(|b| b.contains(marker))).count()
}

/// Checks that GHL holds exactly what Capsule says, once: one contact per mirrored person,
/// one note per Capsule note, one task per Capsule task, in their current state.
async fn assert_mirrored_exactly_once(ws: &Workspace) {
    let store = &ws.engine.store();
    let contacts = ws.sandbox.ghl_contacts();
    let by_id: BTreeMap<&str, &Value> = contacts.iter().map(|c| (c["id"].as_str().unwrap(), c)).collect();

    // No two GHL contacts share an email.
    let mut emails = BTreeSet::new();
    for c in &contacts {
        if let Some(e) = c["email"].as_str().filter(|e| !e.is_empty()) {
            assert!(emails.insert(e.to_lowercase()), "two GHL contacts have the email {e}");
        }
    }

    // Every person who passes the filter has a contact.
    let mut people = 0;
    for id in ws.sandbox.capsule_people() {
        let party = ws.sandbox.capsule_party(id).unwrap();
        let has_channel = party["emailAddresses"].as_array().is_some_and(|a| !a.is_empty())
            || party["phoneNumbers"].as_array().is_some_and(|a| !a.is_empty());
        if party["type"] != "person" || !has_channel {
            continue;
        }
        people += 1;
        let contact = store
            .id_of(&format!("party:{id}"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("Capsule person {id} was not mirrored"));
        assert!(by_id.contains_key(contact.as_str()), "person {id} maps to a contact GHL does not have");
    }
    assert!(people > 0);

    // Every Capsule note with a person: exactly one GHL note, with the current text.
    let entries = capsule_all(ws, "capsule.entries.entry_updated", json!({"embed": "party"})).await;
    let mut notes_checked = 0;
    for e in entries.iter().filter(|e| e["type"] == "note" && !e["party"]["id"].is_null()) {
        let Some(contact) = store.id_of(&format!("party:{}", e["party"]["id"])).await.unwrap() else { continue };
        let notes = ws.sandbox.ghl_notes(&contact);
        let marker = format!("[capsule entry {}]", e["id"]);
        assert_eq!(
            marker_count(&notes, "body", &marker),
            1,
            "Capsule note {} on contact {contact}: {notes:?}",
            e["id"]
        );
        let note = notes.iter().find(|n| n["body"].as_str().unwrap().contains(&marker)).unwrap();
        assert!(
            note["body"].as_str().unwrap().starts_with(e["content"].as_str().unwrap()),
            "note {} is not up to date",
            e["id"]
        );
        notes_checked += 1;
    }
    assert!(notes_checked > 0);

    // Every Capsule task with a person: exactly one GHL task, completed when it is; a
    // meeting (a timed task in the Meeting category) exactly one appointment instead.
    let tasks =
        capsule_all(ws, "capsule.tasks.task_updated", json!({"status": "open,completed,pending", "embed": "party"}))
            .await;
    let appointments = ws.sandbox.ghl_appointments();
    let mut tasks_checked = 0;
    let mut meetings_checked = 0;
    for t in tasks.iter().filter(|t| !t["party"]["id"].is_null()) {
        let Some(contact) = store.id_of(&format!("party:{}", t["party"]["id"])).await.unwrap() else { continue };
        let marker = format!("[capsule task {}]", t["id"]);
        if t["category"]["name"] == "Meeting" && !t["dueTime"].is_null() {
            let booked: Vec<&Value> = appointments
                .iter()
                .filter(|a| a["description"].as_str().is_some_and(|d| d.contains(&marker)))
                .collect();
            assert_eq!(booked.len(), 1, "Capsule meeting {} on contact {contact}", t["id"]);
            assert_eq!(booked[0]["contactId"], contact.as_str());
            let status = match t["status"].as_str() {
                Some("COMPLETED") => "showed",
                Some("PENDING") => "cancelled",
                _ => "confirmed",
            };
            assert_eq!(booked[0]["appointmentStatus"], status, "meeting {}", t["id"]);
            assert_eq!(
                marker_count(&ws.sandbox.ghl_tasks(&contact), "body", &marker),
                0,
                "meeting {} as a task",
                t["id"]
            );
            meetings_checked += 1;
            continue;
        }
        let ghl_tasks = ws.sandbox.ghl_tasks(&contact);
        assert_eq!(marker_count(&ghl_tasks, "body", &marker), 1, "Capsule task {} on contact {contact}", t["id"]);
        let task = ghl_tasks.iter().find(|g| g["body"].as_str().unwrap().contains(&marker)).unwrap();
        assert_eq!(task["completed"], json!(t["status"] == "COMPLETED"), "task {} completion", t["id"]);
        tasks_checked += 1;
    }
    assert!(tasks_checked > 0 && meetings_checked > 0, "{tasks_checked} tasks, {meetings_checked} meetings");

    // No run is lost: nothing failed, queued, running or still waiting is left.
    let runs = store.runs(None, usize::MAX).await.unwrap();
    for r in &runs {
        assert!(
            !matches!(r.status, RunStatus::Failed | RunStatus::Queued | RunStatus::Running | RunStatus::Waiting),
            "run {} is {:?}: {:?}",
            r.id,
            r.status,
            r.error
        );
    }
}

/// The GHL side in a form two sandboxes can be compared by: contacts by email (or phone),
/// with their notes' and tasks' text and state.
/// One contact, comparably: its notes' text, its tasks (text, completed) and its tags.
type ContactState = (BTreeSet<String>, BTreeSet<(String, bool)>, BTreeSet<String>);

fn ghl_state(ws: &Workspace) -> BTreeMap<String, ContactState> {
    let mut out = BTreeMap::new();
    for c in ws.sandbox.ghl_contacts() {
        let key =
            c["email"].as_str().filter(|e| !e.is_empty()).or(c["phone"].as_str()).unwrap_or_default().to_lowercase();
        let id = c["id"].as_str().unwrap();
        let notes: BTreeSet<String> =
            ws.sandbox.ghl_notes(id).iter().map(|n| n["body"].as_str().unwrap_or_default().to_owned()).collect();
        let tasks: BTreeSet<(String, bool)> = ws
            .sandbox
            .ghl_tasks(id)
            .iter()
            .map(|t| {
                (
                    format!("{} | {}", t["title"].as_str().unwrap_or_default(), t["body"].as_str().unwrap_or_default()),
                    t["completed"] == true,
                )
            })
            .collect();
        let tags: BTreeSet<String> =
            c["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect();
        let previous = out.insert(key.clone(), (notes, tasks, tags));
        assert!(previous.is_none() || key.is_empty(), "two GHL contacts under {key}");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_people_then_their_changes_arrive_exactly_once() {
    let ws = Workspace::new(SandboxOptions { people: 500, seed: 7, limits_scale: 100.0, ..SandboxOptions::default() })
        .await
        .unwrap();
    let first = ws.cycle().await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(first.still_failed, 0);
    assert_mirrored_exactly_once(&ws).await;
    let contacts_after_first = ws.sandbox.ghl_contacts().len();

    // A cycle with nothing changed sends nothing new.
    let writes_before = ws.sandbox.request_counts().ghl_writes;
    let quiet = ws.cycle().await;
    assert_eq!((quiet.new_items, quiet.succeeded), (0, 0), "{quiet:?}");
    assert_eq!(ws.sandbox.request_counts().ghl_writes, writes_before);

    let runs_before: BTreeSet<ghlflow::store::RunId> =
        ws.engine.store().runs(None, usize::MAX).await.unwrap().into_iter().map(|r| r.id).collect();

    // 20 people edited, 5 deleted, 10 added; notes edited; tasks completed.
    let edited = ws.sandbox.capsule_edit_people(20);
    let deleted = ws.sandbox.capsule_delete_people(5);
    let added = ws.sandbox.capsule_add_people(10);
    let notes = ws.sandbox.capsule_edit_notes(10);
    // Edits to old notes are found by the hourly whole read of the notes feed.
    ws.let_an_hour_pass().await;
    let tasks = ws.sandbox.capsule_complete_tasks(10);
    assert_eq!((edited.len(), deleted.len(), added.len(), notes.len(), tasks.len()), (20, 5, 10, 10, 10));
    let changes = ws.cycle().await;
    assert!(changes.errors.is_empty(), "{:?}", changes.errors);
    assert_eq!(changes.still_failed, 0);
    assert_mirrored_exactly_once(&ws).await;

    // Exactly those changes: people runs for the edited and added people only; the deleted
    // ones tagged; ten new contacts at most (some new people share an email with others).
    let people_runs = ws.engine.store().runs(Some("capsule-people"), usize::MAX).await.unwrap();
    let latest: BTreeSet<String> =
        people_runs.iter().filter(|r| !runs_before.contains(&r.id)).filter_map(|r| r.item_id.clone()).collect();
    let expected: BTreeSet<String> = edited.iter().chain(added.iter()).map(|id| id.to_string()).collect();
    assert_eq!(latest, expected, "the people runs of the last cycle are exactly the edited and added people");
    for id in &deleted {
        if let Some(contact) = ws.engine.store().id_of(&format!("party:{id}")).await.unwrap() {
            let c = ws.sandbox.ghl_contacts().into_iter().find(|c| c["id"] == contact.as_str()).unwrap();
            assert!(
                c["tags"].as_array().unwrap().iter().any(|t| t == "capsule-deleted"),
                "deleted person {id} not tagged"
            );
        }
    }
    assert!(ws.sandbox.ghl_contacts().len() <= contacts_after_first + 10 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_failures_and_lost_answers_change_nothing_in_the_end() {
    let clean =
        Workspace::new(SandboxOptions { people: 150, seed: 11, limits_scale: 100.0, ..SandboxOptions::default() })
            .await
            .unwrap();
    let faulty = Workspace::new(SandboxOptions {
        people: 150,
        seed: 11,
        limits_scale: 100.0,
        fail_rate: 0.2,
        lose_responses: 0.1,
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    for ws in [&clean, &faulty] {
        let r = ws.cycle().await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        ws.sandbox.capsule_edit_people(20);
        ws.sandbox.capsule_delete_people(5);
        ws.sandbox.capsule_add_people(10);
        ws.sandbox.capsule_edit_notes(10);
        ws.sandbox.capsule_complete_tasks(10);
        ws.let_an_hour_pass().await;
        let r = ws.cycle().await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        // Whatever still failed is replayed later by autoreplay; do that now.
        let r = ws.cycle().await;
        assert_eq!(r.still_failed, 0, "{r:?}");
    }
    let counts = faulty.sandbox.request_counts();
    assert!(counts.failed > 10 && counts.lost > 5, "faults were injected: {counts:?}");
    assert_mirrored_exactly_once(&faulty).await;
    assert_eq!(ghl_state(&faulty), ghl_state(&clean), "the final GHL state differs with faults injected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_people_under_the_real_rate_limits() {
    let ws = Workspace::new(SandboxOptions { people: 60, seed: 3, ..SandboxOptions::default() }).await.unwrap();
    // Another app spends the location's whole burst budget just before the cycle: ghlflow
    // cannot know, so its first GHL requests meet 429s, which it must wait out.
    let other = reqwest::Client::new();
    let url = format!("{}/contacts/?locationId={}", ws.sandbox.ghl_base_url(), ws.sandbox.location_id());
    // (Setting the workspace up already read the calendar and the users, as a user would.)
    for _ in ws.sandbox.request_counts().ghl..100 {
        let status =
            other.get(&url).bearer_auth("other-app").header("Version", "2021-07-28").send().await.unwrap().status();
        assert_eq!(status, 200, "the other app stays within the limit");
    }
    let r = ws.cycle().await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.still_failed, 0, "{r:?}");
    assert_mirrored_exactly_once(&ws).await;
    let counts = ws.sandbox.request_counts();
    println!("real limits: {} GHL requests, {} answered 429 and absorbed", counts.ghl, counts.rate_limited);
    assert!(counts.rate_limited >= 1, "ghlflow met no 429, so none was absorbed: {counts:?}");
}
