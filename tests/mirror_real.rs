//! The mirror on the points where the real APIs differ from what a first reading suggests:
//! recipes that depend on each other, GHL tags a GHL user added, Capsule times on the owner's
//! wall clock, contacts deleted on the GHL side, and a Send Message whose answer is lost.
//! Each test runs the shipped recipes against the sandbox, which follows the real APIs on
//! these points (see tests/sandbox.rs).

use std::collections::BTreeSet;

use ghlflow::demo::Workspace;
use ghlflow::sandbox::{Faults, SandboxOptions};
use ghlflow::store::RunStatus;
use serde_json::{Value, json};

async fn workspace(people: usize, seed: u64) -> Workspace {
    Workspace::new(SandboxOptions { people, seed, limits_scale: 100.0, ..SandboxOptions::default() }).await.unwrap()
}

async fn runs_in(ws: &Workspace, status: RunStatus) -> Vec<ghlflow::store::RunRecord> {
    ws.engine.store().runs(None, usize::MAX).await.unwrap().into_iter().filter(|r| r.status == status).collect()
}

/// A Capsule person the mirror put in GHL, with its contact id.
async fn mirrored_person(ws: &Workspace, skip: usize) -> (i64, String) {
    let mut mirrored = Vec::new();
    for id in ws.sandbox.capsule_people() {
        if let Some(c) = ws.engine.store().id_of(&format!("party:{id}")).await.unwrap() {
            mirrored.push((id, c));
        }
    }
    mirrored.into_iter().nth(skip).expect("a mirrored person")
}

fn contact(ws: &Workspace, id: &str) -> Option<Value> {
    ws.sandbox.ghl_contacts().into_iter().find(|c| c["id"] == id)
}

fn tags(contact: &Value) -> BTreeSet<String> {
    contact["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_and_tasks_polled_before_their_people_wait_instead_of_failing() {
    let ws = workspace(120, 21).await;
    // The dependent recipes alone first, as a fresh state under `ghlflow run` could meet them.
    let early = ws.engine.run_once(&["capsule-notes".to_owned(), "capsule-tasks".to_owned()]).await;
    assert!(early.errors.is_empty(), "{:?}", early.errors);
    assert_eq!(early.count(RunStatus::Failed), 0, "a note or task of a person not mirrored yet failed");
    let waiting = early.count(RunStatus::Waiting);
    assert!(waiting > 50, "notes and tasks of unmirrored people wait: {waiting}");
    assert_eq!(runs_in(&ws, RunStatus::Waiting).await.len(), waiting);
    let run = &runs_in(&ws, RunStatus::Waiting).await[0];
    assert!(run.error.as_deref().unwrap_or_default().contains("waiting for `ids.contact` (`party:"), "{run:?}");

    // The next `run --once` polls people first (`after:`), then resumes what waited.
    let cycle = ws.cycle().await;
    assert!(cycle.errors.is_empty(), "{:?}", cycle.errors);
    assert_eq!(runs_in(&ws, RunStatus::Failed).await.len(), 0);
    assert_eq!(
        runs_in(&ws, RunStatus::Waiting).await.len(),
        0,
        "every waiting run resumed once its person was mirrored"
    );
    for r in ws.engine.store().runs(Some("capsule-notes"), usize::MAX).await.unwrap() {
        assert!(matches!(r.status, RunStatus::Succeeded | RunStatus::Filtered), "{r:?}");
    }

    // And every later cycle, with people added (and their notes and tasks) in between.
    for _ in 0..2 {
        let added = ws.sandbox.capsule_add_people(5);
        ws.sandbox.capsule_add_notes(10);
        ws.sandbox.capsule_add_tasks(10);
        assert_eq!(added.len(), 5);
        let r = ws.cycle().await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.failed, 0, "{r:?}");
        assert_eq!(r.waiting, 0, "{r:?}");
    }
}

#[test]
fn run_once_on_a_fresh_state_exits_0_with_waiting_runs() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sandbox =
        rt.block_on(ghlflow::sandbox::start(SandboxOptions { people: 40, ..SandboxOptions::default() })).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ghlflow.yaml"), sandbox.config_yaml()).unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    for name in ["capsule-people", "capsule-notes"] {
        std::fs::copy(
            crate::util::root().join(format!("recipes/{name}.yaml")),
            dir.path().join(format!("recipes/{name}.yaml")),
        )
        .unwrap();
    }
    let notes_only = crate::util::ghlflow(dir.path(), &["run", "--once", "--recipe", "capsule-notes"]);
    let out = crate::util::stdout(&notes_only);
    assert_eq!(notes_only.status.code(), Some(0), "{out}\n{}", crate::util::stderr(&notes_only));
    assert!(out.contains(" waiting for records other recipes create"), "{out}");
    assert!(out.contains(", 0 failed,"), "{out}");
    let both = crate::util::ghlflow(dir.path(), &["run", "--once"]);
    let out = crate::util::stdout(&both);
    assert_eq!(both.status.code(), Some(0), "{out}\n{}", crate::util::stderr(&both));
    assert!(out.contains(", 0 failed,") && !out.contains("waiting"), "{out}");
    let listed = crate::util::ghlflow(dir.path(), &["runs", "list", "--status", "waiting", "--json"]);
    let listed: Value = serde_json::from_str(&crate::util::stdout(&listed)).unwrap();
    assert_eq!(listed, json!([]));
    rt.block_on(sandbox.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_a_ghl_user_added_survives_capsule_edits_and_only_the_mirrors_tags_go() {
    let ws = workspace(60, 5).await;
    assert_eq!(ws.cycle().await.still_failed, 0);
    // A person with at least one Capsule tag.
    let mut i = 0;
    let (person, contact_id) = loop {
        let (p, c) = mirrored_person(&ws, i).await;
        if ws.sandbox.capsule_party(p).unwrap()["tags"].as_array().is_some_and(|t| !t.is_empty()) {
            break (p, c);
        }
        i += 1;
    };
    let capsule_tags: BTreeSet<String> = ws.sandbox.capsule_party(person).unwrap()["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_lowercase())
        .collect();
    let before = tags(&contact(&ws, &contact_id).unwrap());
    assert!(before.contains("capsule") && capsule_tags.is_subset(&before), "{before:?} {capsule_tags:?}");

    // A GHL user tags the contact `vip`; the person is edited in Capsule three times.
    ws.ghl_call("ghl.contacts.add_tags_to_contact", json!({"contactId": contact_id, "tags": ["vip"]})).await.unwrap();
    for _ in 0..3 {
        assert!(ws.sandbox.capsule_touch_person(person));
        let r = ws.cycle().await;
        assert_eq!((r.failed, r.still_failed), (0, 0), "{r:?}");
        let now = tags(&contact(&ws, &contact_id).unwrap());
        assert!(now.contains("vip"), "the GHL user's tag was wiped by a sync: {now:?}");
        assert!(now.contains("capsule"));
    }

    // A tag removed in Capsule comes off in GHL; `vip` (never the mirror's) stays.
    let removed = ws.sandbox.capsule_untag_person(person).expect("the person had a tag");
    ws.cycle().await;
    let now = tags(&contact(&ws, &contact_id).unwrap());
    assert!(!now.contains(&removed.to_lowercase()), "`{removed}` should have been removed: {now:?}");
    assert!(now.contains("vip") && now.contains("capsule"), "{now:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_tasks_arrive_at_the_instant_the_owner_meant_across_dst() {
    let ws = workspace(40, 9).await;
    assert_eq!(ws.cycle().await.still_failed, 0);
    let zone_of = |tz: &str| {
        ws.sandbox.capsule_users().into_iter().find(|u| u["timezone"] == tz).unwrap()["id"].as_i64().unwrap()
    };
    let (new_york, kolkata) = (zone_of("America/New_York"), zone_of("Asia/Kolkata"));
    let (person, contact_id) = mirrored_person(&ws, 3).await;
    let cases = [
        // Before New York's clocks go forward (2026-03-08): EST, -05:00.
        (new_york, "2026-03-06", Some("09:30:00"), "2026-03-06T14:30:00Z"),
        // After: EDT, -04:00. The same wall-clock time, an hour earlier in UTC.
        (new_york, "2026-03-09", Some("09:30:00"), "2026-03-09T13:30:00Z"),
        // Kolkata, +05:30 all year.
        (kolkata, "2026-03-09", Some("09:30:00"), "2026-03-09T04:00:00Z"),
        // No time: 09:00 on the owner's clock.
        (new_york, "2026-07-01", None, "2026-07-01T13:00:00Z"),
    ];
    let mut expected = Vec::new();
    for (owner, day, time, instant) in cases {
        let task = ws.sandbox.capsule_add_timed_task(person, owner, day, time);
        expected.push((task, instant));
    }
    let r = ws.cycle().await;
    assert_eq!((r.failed, r.still_failed), (0, 0), "{r:?}");
    let ghl_tasks = ws.sandbox.ghl_tasks(&contact_id);
    for (task, instant) in expected {
        let marker = format!("[capsule task {task}]");
        let found = ghl_tasks
            .iter()
            .find(|t| t["body"].as_str().is_some_and(|b| b.contains(&marker)))
            .unwrap_or_else(|| panic!("task {task} not mirrored: {ghl_tasks:?}"));
        let due = chrono::DateTime::parse_from_rfc3339(found["dueDate"].as_str().unwrap()).unwrap();
        let want = chrono::DateTime::parse_from_rfc3339(instant).unwrap();
        assert_eq!(due, want, "task {task} due {} should be {instant}", found["dueDate"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_deleted_in_ghl_is_upserted_again_and_remapped() {
    let ws = workspace(50, 13).await;
    assert_eq!(ws.cycle().await.still_failed, 0);
    let (person, old_contact) = mirrored_person(&ws, 2).await;
    let email = contact(&ws, &old_contact).unwrap()["email"].clone();
    ws.ghl_call("ghl.contacts.delete_contact", json!({"contactId": old_contact})).await.unwrap();
    assert!(contact(&ws, &old_contact).is_none());

    assert!(ws.sandbox.capsule_touch_person(person));
    let r = ws.cycle().await;
    assert_eq!((r.failed, r.still_failed), (0, 0), "{r:?}: {:?}", runs_in(&ws, RunStatus::Failed).await);
    let new_contact = ws.engine.store().id_of(&format!("party:{person}")).await.unwrap().unwrap();
    assert_ne!(new_contact, old_contact, "the person is mapped to a contact GHL has");
    let c = contact(&ws, &new_contact).expect("the contact exists again in GHL");
    assert_eq!(c["email"], email);
    assert!(tags(&c).contains("capsule"));
    // The run says what happened.
    let run = ws
        .engine
        .store()
        .runs(Some("capsule-people"), usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.item_id.as_deref() == Some(&person.to_string()) && !r.notes.is_empty())
        .expect("the run that found the contact gone");
    assert_eq!(run.status, RunStatus::Succeeded);
    assert!(
        run.notes[0].contains("answered not found") && run.notes[0].contains(&format!("`party:{person}`")),
        "{:?}",
        run.notes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_sms_whose_answer_is_lost_is_found_not_sent_again() {
    let ws = workspace(20, 17).await;
    assert_eq!(ws.cycle().await.still_failed, 0);
    // From now on every GHL write is applied but its answer lost (reads are answered).
    ws.sandbox.set_faults(Faults { lose_responses: 1.0, ..ws.sandbox.faults() }).unwrap();
    let leads = ws.sandbox.ghl_add_contacts(2);
    let r = ws.cycle().await;
    assert_eq!((r.failed, r.still_failed), (0, 0), "{r:?}");
    for lead in leads {
        let texts: Vec<Value> =
            ws.sandbox.ghl_messages().into_iter().filter(|m| m["contactId"] == lead.as_str()).collect();
        assert_eq!(texts.len(), 1, "lead {lead} was texted {} times: {texts:?}", texts.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_to_old_notes_are_found_by_the_hourly_whole_read_and_new_notes_at_once() {
    let ws = workspace(60, 23).await;
    assert_eq!(ws.cycle().await.still_failed, 0);
    let edited = ws.sandbox.capsule_edit_notes(5);
    let added = ws.sandbox.capsule_add_notes(5);
    assert_eq!((edited.len(), added.len()), (5, 5));
    async fn note_runs(ws: &Workspace) -> usize {
        ws.engine.store().runs(Some("capsule-notes"), usize::MAX).await.unwrap().len()
    }
    let before = note_runs(&ws).await;
    // Within the hour: the new notes (on top of the newest-first feed) arrive; the edits to
    // old ones wait for the whole read.
    let r = ws.cycle().await;
    assert_eq!(r.failed, 0, "{r:?}");
    async fn latest(ws: &Workspace, before: usize) -> BTreeSet<String> {
        let n = note_runs(ws).await - before;
        ws.engine.store().runs(Some("capsule-notes"), n).await.unwrap().into_iter().filter_map(|r| r.item_id).collect()
    }
    let ids = |v: &[i64]| -> BTreeSet<String> { v.iter().map(|i| i.to_string()).collect() };
    let (added, edited) = (ids(&added), ids(&edited));
    let quick = latest(&ws, before).await;
    // The quick read stops at the first note seen unchanged: it holds every new note, and
    // only those edits that sit above that point.
    assert!(added.is_subset(&quick), "a quick poll finds every new note: {quick:?} {added:?}");
    assert!(quick.difference(&added).all(|i| edited.contains(i)), "{quick:?}");
    // An hour later the whole feed is read: the remaining edits arrive, nothing else.
    ws.let_an_hour_pass().await;
    let before = note_runs(&ws).await;
    ws.cycle().await;
    let scan = latest(&ws, before).await;
    let all: BTreeSet<String> = quick.union(&scan).cloned().collect();
    assert_eq!(all, added.union(&edited).cloned().collect(), "new and edited notes, each once");
    assert!(quick.is_disjoint(&scan));
}

/// Capsule's 4,000 requests an hour per user, on an account of 5,000 people and about
/// 20,000 notes: what one quiet poll of each shipped Capsule recipe costs, measured, and the
/// hour that follows from the default schedules. The README shows the same arithmetic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_recipes_spend_under_a_quarter_of_capsules_hourly_budget() {
    let ws = Workspace::new(SandboxOptions { people: 5_000, seed: 31, no_limits: true, ..SandboxOptions::default() })
        .await
        .unwrap();
    while ws.sandbox.capsule_counts().notes < 20_000 {
        ws.sandbox.capsule_add_notes(5_000);
    }
    let counts = ws.sandbox.capsule_counts();
    let capsule_recipes: Vec<_> =
        ws.engine.recipes().into_iter().filter(|r| r.trigger.connection.app.id == "capsule").collect();
    // The first poll of each records what exists (its runs are not executed here).
    for r in &capsule_recipes {
        ws.engine.poll(r).await.unwrap();
    }
    let mut per_hour = 0.0;
    let mut lines = Vec::new();
    for r in &capsule_recipes {
        let cost = |ws: &Workspace| ws.sandbox.request_counts().capsule;
        // A whole read may span polls (at most the page bound each): count it to its end.
        let read_to_the_end = async |ws: &Workspace| {
            let before = cost(ws);
            while ws.engine.poll(r).await.unwrap().stopped_at_bound {}
            cost(ws) - before
        };
        read_to_the_end(&ws).await;
        let before = cost(&ws);
        ws.engine.poll(r).await.unwrap();
        let quick = cost(&ws) - before;
        ws.let_an_hour_pass().await;
        let whole = read_to_the_end(&ws).await;
        let polls = 3600.0 / r.trigger.schedule.period().as_secs_f64();
        let scans = (3600.0 / r.trigger.full_scan_every.as_secs_f64()).min(polls);
        let hour =
            if whole > quick { (polls - scans) * quick as f64 + scans * whole as f64 } else { polls * quick as f64 };
        lines.push(format!(
            "{}: {polls:.0} polls/h, {quick} request(s) a poll, {whole} for a whole read -> {hour:.0}/h",
            r.id
        ));
        per_hour += hour;
    }
    println!(
        "capsule budget, {} people, {} notes, {} tasks:\n  {}\n  total {per_hour:.0} of 4,000 an hour ({:.1}%)",
        counts.people,
        counts.notes,
        counts.tasks,
        lines.join("\n  "),
        per_hour / 40.0
    );
    assert!(per_hour <= 1_000.0, "the shipped recipes would spend {per_hour:.0} Capsule requests an hour");
}

#[tokio::test]
async fn a_link_header_walk_stopped_at_the_bound_resumes_at_the_next_page() {
    use ghlflow::http::Pager;
    use std::sync::Arc;
    let ws = workspace(200, 3).await;
    let op = Arc::clone(ws.engine.catalog().get("capsule.entries.entry_updated").unwrap());
    let connection = Arc::clone(ws.engine.config().connection("capsule").unwrap());
    let inputs = json!({"embed": "party,creator"}).as_object().cloned().unwrap();
    let ids = |records: &[Value]| records.iter().map(|r| r["id"].clone()).collect::<Vec<_>>();
    // One walk to the end, two pages at a time.
    let mut whole =
        Pager::new(ws.engine.client(), Arc::clone(&connection), Arc::clone(&op), inputs.clone(), Some(1_000));
    let mut all = Vec::new();
    while let Some(page) = whole.next_page().await {
        all.extend(page.unwrap().records);
    }
    assert!(all.len() > 150, "enough entries for several pages: {}", all.len());
    let mut walked = Vec::new();
    let mut start = inputs;
    loop {
        let mut pager =
            Pager::new(ws.engine.client(), Arc::clone(&connection), Arc::clone(&op), start.clone(), Some(2));
        while let Some(page) = pager.next_page().await {
            walked.extend(page.unwrap().records);
        }
        if !pager.stopped_at_bound() {
            break;
        }
        start = pager.next_inputs().expect("a Capsule next link can be resumed");
        assert_eq!(start["embed"], "party,creator", "the filter survives the resume: {start:?}");
    }
    assert_eq!(ids(&walked), ids(&all), "resumed walks read every page once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_tasks_stay_open_and_restricted_people_are_tagged() {
    let ws = workspace(80, 29).await;
    assert_eq!(ws.cycle().await.still_failed, 0);
    let pended = ws.sandbox.capsule_pend_tasks(5);
    let restricted = ws.sandbox.capsule_restrict_people(3);
    assert_eq!((pended.len(), restricted.len()), (5, 3));
    ws.let_an_hour_pass().await;
    let r = ws.cycle().await;
    assert_eq!((r.failed, r.still_failed), (0, 0), "{r:?}");
    let all_tasks: Vec<Value> =
        ws.sandbox.ghl_contacts().iter().flat_map(|c| ws.sandbox.ghl_tasks(c["id"].as_str().unwrap())).collect();
    let mut seen = 0;
    for task in &pended {
        let marker = format!("[capsule task {task}]");
        if let Some(t) = all_tasks.iter().find(|t| t["body"].as_str().is_some_and(|b| b.contains(&marker))) {
            assert_eq!(t["completed"], false, "a pending task is not completed: {t}");
            assert!(t["body"].as_str().unwrap().contains("pending in Capsule"), "{t}");
            seen += 1;
        }
    }
    assert!(seen > 0, "some pended task was on a mirrored person");
    for id in restricted {
        if let Some(contact_id) = ws.engine.store().id_of(&format!("party:{id}")).await.unwrap() {
            let c = contact(&ws, &contact_id).unwrap();
            assert!(tags(&c).contains("capsule-restricted"), "restricted person {id}: {c}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_merged_away_in_ghl_is_remapped_to_a_contact_ghl_has() {
    let ws = workspace(50, 37).await;
    assert_eq!(ws.cycle().await.still_failed, 0);
    let (person, merged_away) = mirrored_person(&ws, 4).await;
    let (_, survivor) = mirrored_person(&ws, 5).await;
    ws.sandbox.ghl_merge_contacts(&merged_away, &survivor).unwrap();
    assert!(contact(&ws, &merged_away).is_none());
    assert!(ws.sandbox.capsule_touch_person(person));
    let r = ws.cycle().await;
    assert_eq!((r.failed, r.still_failed), (0, 0), "{r:?}: {:?}", runs_in(&ws, RunStatus::Failed).await);
    let now = ws.engine.store().id_of(&format!("party:{person}")).await.unwrap().unwrap();
    assert_ne!(now, merged_away);
    assert!(contact(&ws, &now).is_some(), "the person maps to a contact GHL has");
}

/// `trigger reset` sent while the recipe's poll is reading the feed: the reset wins. The
/// poll records nothing (no runs, no seen marks, no position), and the next poll starts
/// from the reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_reset_during_a_poll_is_not_undone_when_the_poll_ends() {
    let ws = workspace(60, 5).await;
    let engine = std::sync::Arc::clone(&ws.engine);
    let people = engine.recipe("capsule-people").unwrap();
    assert!(ws.engine.poll(&people).await.unwrap().queued.len() > 10, "the backfill");
    let runs_before = ws.engine.store().runs(Some("capsule-people"), usize::MAX).await.unwrap().len();
    ws.sandbox.capsule_edit_people(5);
    // Every answer now takes a while: the reset lands while the feed is being read.
    let mut faults = ws.sandbox.faults();
    faults.latency = std::time::Duration::from_millis(600);
    ws.sandbox.set_faults(faults).unwrap();
    let poll = tokio::spawn({
        let (engine, people) = (std::sync::Arc::clone(&engine), std::sync::Arc::clone(&people));
        async move { engine.poll(&people).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    engine.reset_trigger(&people, None).await.unwrap();
    let outcome = poll.await.unwrap().unwrap();
    assert!(outcome.queued.is_empty(), "{outcome:?}");
    assert_eq!(ws.engine.store().runs(Some("capsule-people"), usize::MAX).await.unwrap().len(), runs_before);
    let state = ws.engine.store().trigger_state("capsule-people").await.unwrap().unwrap();
    assert!(!state.baselined && state.cursor.is_none(), "the reset was undone: {state:?}");

    faults.latency = std::time::Duration::ZERO;
    ws.sandbox.set_faults(faults).unwrap();
    // capsule-people starts with a backfill: from the reset, the whole feed runs again.
    let next = ws.engine.poll(&people).await.unwrap();
    assert!(next.new >= 60 && next.new == next.fetched, "the next poll starts from the reset: {next:?}");
}

/// Asked to stop in the middle of a backfill (SIGTERM under `ghlflow run`), the engine lets
/// the runs in flight finish and starts no other: those stay queued, and the next start runs
/// each of them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_mid_backfill_leaves_the_runs_not_started_queued_for_the_next_start() {
    let ws = workspace(80, 12).await;
    let mut faults = ws.sandbox.faults();
    faults.latency = std::time::Duration::from_millis(20);
    ws.sandbox.set_faults(faults).unwrap();
    let people = ws.engine.recipe("capsule-people").unwrap();
    let tick = tokio::spawn({
        let (engine, people) = (std::sync::Arc::clone(&ws.engine), std::sync::Arc::clone(&people));
        async move { engine.poll_and_run(&people).await }
    });
    // Stop once a few runs are done.
    while runs_in(&ws, RunStatus::Succeeded).await.len() < 5 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    ws.engine.stop();
    let tick = tick.await.unwrap();
    let queued = tick.poll.as_ref().unwrap().queued.len();
    let finished = runs_in(&ws, RunStatus::Succeeded).await.len();
    let left = runs_in(&ws, RunStatus::Queued).await.len();
    assert!(finished >= 5 && left > 0, "{finished} finished, {left} left queued of {queued}");
    assert_eq!(finished + left, queued, "every run either finished or stayed queued");
    assert_eq!(runs_in(&ws, RunStatus::Running).await.len(), 0, "a run in flight was cut off");

    // The next start (a new engine on the same state) runs what was left, each once.
    let engine = std::sync::Arc::new(
        ghlflow::engine::Engine::with_store(
            std::sync::Arc::clone(ws.engine.catalog()),
            std::sync::Arc::clone(ws.engine.config()),
            ws.engine.store().clone(),
            ghlflow::engine::EngineOptions::default(),
        )
        .unwrap(),
    );
    engine.set_recipes(ws.engine.recipes().iter().map(|r| (**r).clone()).collect());
    let summary = engine.run_once(&["capsule-people".to_owned()]).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(runs_in(&ws, RunStatus::Queued).await.len(), 0);
    assert_eq!(runs_in(&ws, RunStatus::Succeeded).await.len(), queued);
    // Each person upserted once: one contact per mirrored person, none twice.
    let contacts = ws.sandbox.ghl_contacts();
    let mut emails = BTreeSet::new();
    for c in &contacts {
        if let Some(e) = c["email"].as_str().filter(|e| !e.is_empty()) {
            assert!(emails.insert(e.to_lowercase()), "two contacts have {e}");
        }
    }
}
