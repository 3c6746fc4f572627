//! The state store's contract: what any backend of `StateStore` must do, written once over
//! a backend factory. `contract!` instantiates every test for one backend: each test gets a
//! fresh, empty store from `make`, and the tests of several workers get three handles on one
//! fresh store from `workers` (on sled, clones of one store: one process is the only worker;
//! on PostgreSQL, three connects, three workers). The PostgreSQL line skips without a cluster
//! (see tests/support/postgres.rs).

use std::time::Duration;

use ghlflow::store::{
    DeliveryCommit, HookSubscription, PollCommit, RunId, RunRecord, RunStatus, StateStore, StepRecord, StepStatus,
    StoreError, StoredTokens, TriggerState,
};
use serde_json::json;

macro_rules! contract {
    ($backend:ident, make: $make:expr, workers: $workers:expr) => {
        mod $backend {
            #[tokio::test]
            async fn leases_are_shared_by_workers_and_kept_alive_by_heartbeats() {
                super::leases_are_shared_by_workers_and_kept_alive_by_heartbeats($workers).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn each_orphaned_open_run_is_claimed_by_one_worker() {
                super::each_orphaned_open_run_is_claimed_by_one_worker($workers).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_request_budget_holds_across_workers() {
                super::a_request_budget_holds_across_workers($workers).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_record_delivered_to_two_workers_at_once_runs_once() {
                super::a_record_delivered_to_two_workers_at_once_runs_once($workers).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn run_ids_are_unique_across_workers() {
                super::run_ids_are_unique_across_workers($workers).await
            }
            #[tokio::test]
            async fn journal_round_trip() {
                super::journal_round_trip($make).await
            }
            #[tokio::test]
            async fn transitions_and_the_index_agree() {
                super::transitions_and_the_index_agree($make).await
            }
            #[tokio::test]
            async fn impossible_transitions_are_refused_and_change_nothing() {
                super::impossible_transitions_are_refused_and_change_nothing($make).await
            }
            #[tokio::test]
            async fn history_pages_newest_first_and_counts() {
                super::history_pages_newest_first_and_counts($make).await
            }
            #[tokio::test]
            async fn commit_poll_is_all_or_nothing_and_checks_the_generation() {
                super::commit_poll_is_all_or_nothing_and_checks_the_generation($make).await
            }
            #[tokio::test]
            async fn seen_marks_present_items_and_the_spill() {
                super::seen_marks_present_items_and_the_spill($make).await
            }
            #[tokio::test]
            async fn id_map_and_tokens() {
                super::id_map_and_tokens($make).await
            }
            #[tokio::test]
            async fn leases_exclude_other_holders_until_they_expire() {
                super::leases_exclude_other_holders_until_they_expire($make).await
            }
            #[tokio::test]
            async fn prune_deletes_finished_runs_and_keeps_open_and_held_ones() {
                super::prune_deletes_finished_runs_and_keeps_open_and_held_ones($make).await
            }
            #[tokio::test]
            async fn run_ids_sort_by_creation() {
                super::run_ids_sort_by_creation($make).await
            }
            #[tokio::test]
            async fn a_record_runs_once_whether_it_comes_by_hook_or_by_poll() {
                super::a_record_runs_once_whether_it_comes_by_hook_or_by_poll($make).await
            }
            #[tokio::test]
            async fn a_pause_is_kept_apart_from_the_trigger_state() {
                super::a_pause_is_kept_apart_from_the_trigger_state($make).await
            }
            #[tokio::test]
            async fn deliveries_are_remembered_until_pruned_and_subscriptions_kept() {
                super::deliveries_are_remembered_until_pruned_and_subscriptions_kept($make).await
            }
        }
    };
}

contract!(sled, make: ghlflow::store::SledStore::temporary().unwrap(), workers: {
    let s = ghlflow::store::SledStore::temporary().unwrap();
    [s.clone(), s.clone(), s]
});
// The same contract through the engine's `Store` (the enum that dispatches to a backend).
contract!(store_enum, make: ghlflow::store::Store::temporary().unwrap(), workers: {
    let s = ghlflow::store::Store::temporary().unwrap();
    [s.clone(), s.clone(), s]
});
contract!(postgres, make: match crate::support::postgres::store().await {
    Some(s) => s,
    None => return,
}, workers: match crate::support::postgres::workers().await {
    Some(w) => w,
    None => return,
});

fn run(id: RunId, recipe: &str, status: RunStatus) -> RunRecord {
    let item = json!({"id": id.to_string(), "name": "Ada"});
    RunRecord::new(id, recipe, status, "item-1", item, "2026-11-30T10:00:00.000Z".into())
}

fn step(id: &str, status: StepStatus, output: serde_json::Value) -> StepRecord {
    StepRecord {
        status,
        output: Some(output),
        attempts: 1,
        started: Some("2026-11-30T10:00:01.000Z".into()),
        ..StepRecord::pending(id, "ghl.contacts.upsert_contact")
    }
}

/// The ids, in order, of a list of runs.
fn ids(runs: &[RunRecord]) -> Vec<RunId> {
    runs.iter().map(|r| r.id.clone()).collect()
}

async fn journal_round_trip<S: StateStore>(store: S) {
    let id = store.next_run_id();
    assert!(store.run(&id).await.unwrap().is_none(), "no run before it is created");
    let created = run(id.clone(), "people", RunStatus::Queued);
    store.create_runs(std::slice::from_ref(&created)).await.unwrap();
    assert_eq!(store.run(&id).await.unwrap().as_ref(), Some(&created), "created as given");

    // Steps are written one at a time, and read back in step order with the rest intact.
    let first = step("contact", StepStatus::Sent, json!(null));
    store.put_step(&id, 0, &first).await.unwrap();
    let done = step("contact", StepStatus::Succeeded, json!({"contact": {"id": "c1"}}));
    store.put_step(&id, 0, &done).await.unwrap();
    let second = step("note", StepStatus::Failed, json!({"message": "no"}));
    store.put_step(&id, 1, &second).await.unwrap();
    let read = store.run(&id).await.unwrap().unwrap();
    assert_eq!(read.steps, vec![done.clone(), second]);
    assert_eq!(
        (read.item.clone(), read.status, read.recipe.as_str()),
        (created.item.clone(), RunStatus::Queued, "people")
    );

    // A header change keeps the item and the steps.
    let mut header = read.clone();
    header.notes.push("a note".into());
    header.replays = 2;
    store.transition(&mut header, RunStatus::Running).await.unwrap();
    let read = store.run(&id).await.unwrap().unwrap();
    assert_eq!(read, RunRecord { status: RunStatus::Running, ..header });

    // Replacing the steps drops the trailing ones that never ran, and every old entry.
    let reset = vec![done.clone(), StepRecord::pending("note", "ghl.contacts.create_contact_note")];
    store.replace_steps(&id, &reset).await.unwrap();
    assert_eq!(store.run(&id).await.unwrap().unwrap().steps, vec![done]);
    store.replace_steps(&id, &[]).await.unwrap();
    assert!(store.run(&id).await.unwrap().unwrap().steps.is_empty());
}

async fn transitions_and_the_index_agree<S: StateStore>(store: S) {
    let ids: Vec<RunId> = (0..4).map(|_| store.next_run_id()).collect();
    store
        .create_runs(&[
            run(ids[0].clone(), "people", RunStatus::Queued),
            run(ids[1].clone(), "people", RunStatus::Queued),
            run(ids[2].clone(), "people", RunStatus::Held),
            run(ids[3].clone(), "notes", RunStatus::Queued),
        ])
        .await
        .unwrap();
    let count = |recipe: Option<&'static str>, status: Option<RunStatus>| {
        let store = store.clone();
        async move { store.runs_page(recipe, status, 0).await.unwrap().1 }
    };
    assert_eq!(count(Some("people"), Some(RunStatus::Queued)).await, 2);
    assert_eq!(count(None, Some(RunStatus::Queued)).await, 3);
    assert_eq!(ids_of(store.open_runs().await.unwrap()), vec![ids[0].clone(), ids[1].clone(), ids[3].clone()]);

    let mut a = store.run(&ids[0]).await.unwrap().unwrap();
    store.transition(&mut a, RunStatus::Running).await.unwrap();
    assert_eq!(a.status, RunStatus::Running, "the record in hand follows");
    store.transition(&mut a, RunStatus::Succeeded).await.unwrap();
    let mut b = store.run(&ids[1]).await.unwrap().unwrap();
    store.transition(&mut b, RunStatus::Running).await.unwrap();
    b.next_replay_at = Some(4_000_000_000);
    store.transition(&mut b, RunStatus::Failed).await.unwrap();
    let mut held = store.run(&ids[2]).await.unwrap().unwrap();
    store.transition(&mut held, RunStatus::Queued).await.unwrap();
    let mut waiting = store.run(&ids[3]).await.unwrap().unwrap();
    store.transition(&mut waiting, RunStatus::Waiting).await.unwrap();

    assert_eq!(ids_of(store.runs_with_status("people", RunStatus::Succeeded).await.unwrap()), vec![ids[0].clone()]);
    assert_eq!(ids_of(store.runs_with_status("people", RunStatus::Failed).await.unwrap()), vec![ids[1].clone()]);
    assert_eq!(ids_of(store.runs_with_status("people", RunStatus::Queued).await.unwrap()), vec![ids[2].clone()]);
    assert!(store.runs_with_status("people", RunStatus::Held).await.unwrap().is_empty(), "left the held index");
    assert_eq!(ids_of(store.waiting_runs("notes").await.unwrap()), vec![ids[3].clone()]);
    assert!(store.waiting_runs("people").await.unwrap().is_empty());
    assert_eq!(count(None, Some(RunStatus::Queued)).await, 1);
    assert_eq!(count(Some("people"), None).await, 3);
    assert_eq!(count(None, None).await, 4);
    // Owed: the failed run with a replay due, the released one, the waiting one; not the
    // succeeded one.
    assert_eq!(ids_of(store.open_runs().await.unwrap()), vec![ids[1].clone(), ids[2].clone(), ids[3].clone()]);
    // The header the index points at says the same.
    for r in store.runs(None, usize::MAX).await.unwrap() {
        let listed = store.runs_page(Some(&r.recipe), Some(r.status), usize::MAX).await.unwrap().0;
        assert!(listed.iter().any(|l| l.id == r.id), "{} is {:?} but not indexed so", r.id, r.status);
    }
}

fn ids_of(runs: Vec<RunRecord>) -> Vec<RunId> {
    ids(&runs)
}

async fn impossible_transitions_are_refused_and_change_nothing<S: StateStore>(store: S) {
    let (done, held) = (store.next_run_id(), store.next_run_id());
    store
        .create_runs(&[run(done.clone(), "people", RunStatus::Succeeded), run(held.clone(), "people", RunStatus::Held)])
        .await
        .unwrap();
    let mut r = store.run(&done).await.unwrap().unwrap();
    let before = r.clone();
    r.error = Some("changed".into());
    match store.transition(&mut r, RunStatus::Running).await {
        Err(StoreError::Transition { run, from: RunStatus::Succeeded, to: RunStatus::Running }) => {
            assert_eq!(run, done)
        }
        other => panic!("succeeded -> running was not refused: {other:?}"),
    }
    assert_eq!(r.status, RunStatus::Succeeded, "the record in hand keeps its status");
    assert_eq!(store.run(&done).await.unwrap().unwrap(), before, "nothing written");
    assert_eq!(store.runs_page(None, Some(RunStatus::Running), 10).await.unwrap().1, 0);

    let mut h = store.run(&held).await.unwrap().unwrap();
    let err = store.transition(&mut h, RunStatus::Succeeded).await.unwrap_err();
    assert!(err.to_string().contains("is held and cannot become succeeded"), "{err}");
    assert_eq!(store.runs_with_status("people", RunStatus::Held).await.unwrap().len(), 1);

    let mut ghost = run(RunId::new(5, 5), "people", RunStatus::Queued);
    assert!(matches!(store.transition(&mut ghost, RunStatus::Running).await, Err(StoreError::UnknownRun(_))));
    assert!(store.run(&RunId::new(5, 5)).await.unwrap().is_none(), "an unknown run is not created by a transition");
}

async fn history_pages_newest_first_and_counts<S: StateStore>(store: S) {
    let mut all = Vec::new();
    for n in 0..25u32 {
        let recipe = if n % 3 == 0 { "notes" } else { "people" };
        let status = if n % 5 == 0 { RunStatus::Filtered } else { RunStatus::Succeeded };
        all.push(run(RunId::new(1_764_000_000_000 + u64::from(n), n), recipe, status));
    }
    store.create_runs(&all).await.unwrap();
    let newest: Vec<RunId> = all.iter().rev().map(|r| r.id.clone()).collect();
    assert_eq!(ids_of(store.runs(None, 10).await.unwrap()), newest[..10].to_vec());
    let people: Vec<RunId> = all.iter().rev().filter(|r| r.recipe == "people").map(|r| r.id.clone()).collect();
    assert_eq!(ids_of(store.runs(Some("people"), usize::MAX).await.unwrap()), people);

    let (page, total) = store.runs_page(Some("people"), Some(RunStatus::Filtered), 2).await.unwrap();
    let expected: Vec<RunId> = all
        .iter()
        .rev()
        .filter(|r| r.recipe == "people" && r.status == RunStatus::Filtered)
        .map(|r| r.id.clone())
        .collect();
    assert_eq!((ids(&page), total), (expected[..2].to_vec(), expected.len()));
    assert_eq!(store.runs_page(None, None, 3).await.unwrap().1, 25);
    assert_eq!(store.runs_page(None, Some(RunStatus::Filtered), 100).await.unwrap().1, 5);
    assert_eq!(store.runs_page(Some("nobody"), None, 100).await.unwrap(), (vec![], 0));
    // Oldest first where the engine works through them.
    let filtered = store.runs_with_status("people", RunStatus::Filtered).await.unwrap();
    assert!(filtered.windows(2).all(|w| w[0].id < w[1].id));
    // Whole records come back, item and all.
    assert_eq!(store.runs(None, 1).await.unwrap()[0], all[24]);
}

async fn commit_poll_is_all_or_nothing_and_checks_the_generation<S: StateStore>(store: S) {
    let state = TriggerState { fingerprint: "f".into(), baselined: true, ..Default::default() };
    store.save_trigger_state("people", &state).await.unwrap();
    store.spill_put("people", 0, &json!({"id": 1})).await.unwrap();
    store.reset_trigger("people", state.clone()).await.unwrap();
    assert_eq!(store.trigger_state("people").await.unwrap().unwrap().generation, 1, "a reset is counted");

    let id = store.next_run_id();
    let moved_on = TriggerState { cursor: Some("2026-11-30T10:00:00Z".into()), ..state.clone() };
    let commit = |generation| PollCommit {
        generation,
        runs: vec![run(id.clone(), "people", RunStatus::Queued)],
        seen: vec![("1".into(), "m1".into())],
        state: Some(TriggerState { generation: 1, ..moved_on.clone() }),
        spilled: vec![0],
        joined: vec!["1".into()],
        left: vec![],
    };
    // Begun before the reset: nothing of it is recorded.
    match store.commit_poll("people", &commit(0)).await {
        Err(StoreError::TriggerMoved { recipe }) => assert_eq!(recipe, "people"),
        other => panic!("a commit of the old generation went through: {other:?}"),
    }
    assert!(store.run(&id).await.unwrap().is_none());
    assert!(store.seen_mark("people", "1").await.unwrap().is_none());
    assert!(store.present_items("people").await.unwrap().is_empty());
    assert!(store.spill_get("people", 0).await.unwrap().is_some(), "the spill stays");
    assert_eq!(store.trigger_state("people").await.unwrap().unwrap().cursor, None);
    assert!(store.open_runs().await.unwrap().is_empty());

    store.commit_poll("people", &commit(1)).await.unwrap();
    assert_eq!(store.run(&id).await.unwrap().unwrap().status, RunStatus::Queued);
    assert_eq!(ids_of(store.open_runs().await.unwrap()), vec![id.clone()]);
    assert_eq!(store.runs_page(Some("people"), Some(RunStatus::Queued), 10).await.unwrap().1, 1);
    assert_eq!(store.seen_mark("people", "1").await.unwrap().as_deref(), Some("m1"));
    assert!(store.present_items("people").await.unwrap().contains("1"));
    assert!(store.spill_get("people", 0).await.unwrap().is_none(), "the spilled record went into the run");
    assert_eq!(store.trigger_state("people").await.unwrap().unwrap(), TriggerState { generation: 1, ..moved_on });

    // Items reported gone leave the present set.
    let gone = PollCommit { generation: 1, left: vec!["1".into()], ..Default::default() };
    store.commit_poll("people", &gone).await.unwrap();
    assert!(store.present_items("people").await.unwrap().is_empty());
}

async fn seen_marks_present_items_and_the_spill<S: StateStore>(store: S) {
    let commit = PollCommit {
        seen: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
        joined: vec!["a".into()],
        ..Default::default()
    };
    store.commit_poll("people", &commit).await.unwrap();
    store
        .commit_poll("notes", &PollCommit { seen: vec![("a".into(), "9".into())], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(store.seen_mark("people", "b").await.unwrap().as_deref(), Some("2"));
    assert_eq!(store.forget_seen("people").await.unwrap(), 2);
    assert!(store.seen_mark("people", "a").await.unwrap().is_none());
    assert!(store.present_items("people").await.unwrap().is_empty(), "present items go with the marks");
    assert_eq!(store.seen_mark("notes", "a").await.unwrap().as_deref(), Some("9"), "another recipe's stay");

    store.spill_put("people", 7, &json!({"id": 7})).await.unwrap();
    store.spill_put("notes", 7, &json!({"id": "n7"})).await.unwrap();
    assert_eq!(store.spill_get("people", 7).await.unwrap(), Some(json!({"id": 7})));
    store.spill_clear("people").await.unwrap();
    assert!(store.spill_get("people", 7).await.unwrap().is_none());
    assert_eq!(store.spill_get("notes", 7).await.unwrap(), Some(json!({"id": "n7"})));
}

async fn id_map_and_tokens<S: StateStore>(store: S) {
    assert!(store.id_of("party:1").await.unwrap().is_none());
    store.remember_id("party:1", "c1").await.unwrap();
    store.remember_id("party:1", "c2").await.unwrap();
    assert_eq!(store.id_of("party:1").await.unwrap().as_deref(), Some("c2"), "the last one wins");
    store.forget_id("party:1").await.unwrap();
    assert!(store.id_of("party:1").await.unwrap().is_none());

    let tokens = StoredTokens {
        access_token: Some("a".into()),
        refresh_token: Some("r".into()),
        expires_at: Some(5),
        ..Default::default()
    };
    assert!(store.tokens("ghl").await.unwrap().is_none());
    store.save_tokens("ghl", &tokens).await.unwrap();
    assert_eq!(store.tokens("ghl").await.unwrap(), Some(tokens));
    assert!(store.tokens("capsule").await.unwrap().is_none());
}

async fn leases_exclude_other_holders_until_they_expire<S: StateStore>(store: S) {
    let long = Duration::from_secs(60);
    assert!(store.acquire_lease("poll:people", "a", long).await.unwrap());
    assert!(!store.acquire_lease("poll:people", "b", long).await.unwrap(), "held by another");
    assert!(store.acquire_lease("poll:people", "a", long).await.unwrap(), "its holder takes it again");
    assert!(store.acquire_lease("poll:notes", "b", long).await.unwrap(), "leases are by name");
    assert!(store.renew_lease("poll:people", "a", long).await.unwrap());
    assert!(!store.renew_lease("poll:people", "b", long).await.unwrap());
    assert!(!store.release_lease("poll:people", "b").await.unwrap(), "only the holder releases");
    assert!(store.release_lease("poll:people", "a").await.unwrap());
    assert!(!store.renew_lease("poll:people", "a", long).await.unwrap(), "released: nothing to renew");
    assert!(store.acquire_lease("poll:people", "b", long).await.unwrap(), "free once released");

    // Expiry: a lease not renewed in time is free for another holder, and lost to its own.
    assert!(store.acquire_lease("short", "a", Duration::from_millis(50)).await.unwrap());
    assert!(!store.acquire_lease("short", "b", long).await.unwrap());
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(!store.renew_lease("short", "a", long).await.unwrap(), "expired: not renewed");
    assert!(store.acquire_lease("short", "b", long).await.unwrap(), "expired: another holder takes it");
    assert!(!store.acquire_lease("short", "a", long).await.unwrap());
}

async fn prune_deletes_finished_runs_and_keeps_open_and_held_ones<S: StateStore>(store: S) {
    let old = |n: u32| RunId::new(1_000_000 + u64::from(n), n);
    let mut runs = vec![
        run(old(1), "people", RunStatus::Succeeded),
        run(old(2), "people", RunStatus::Filtered),
        run(old(3), "people", RunStatus::Discarded),
        run(old(4), "people", RunStatus::Failed),
        run(old(5), "people", RunStatus::Failed),
        run(old(6), "people", RunStatus::Held),
        run(old(7), "people", RunStatus::Queued),
        run(old(8), "people", RunStatus::Waiting),
        run(old(9), "people", RunStatus::Unsure),
    ];
    runs[4].next_replay_at = Some(10); // an automatic replay due: still owed
    runs[0].steps = vec![step("contact", StepStatus::Succeeded, json!({}))];
    let recent = store.next_run_id();
    runs.push(run(recent.clone(), "people", RunStatus::Succeeded));
    store.create_runs(&runs).await.unwrap();
    let cutoff = recent.created_ms();
    assert_eq!(store.prune_runs(cutoff).await.unwrap(), 4);
    let left: Vec<RunId> = ids(&store.runs(None, usize::MAX).await.unwrap()).into_iter().rev().collect();
    assert_eq!(left, vec![old(5), old(6), old(7), old(8), old(9), recent.clone()]);
    // Their index entries went with them.
    assert_eq!(store.runs_page(None, Some(RunStatus::Succeeded), 10).await.unwrap().1, 1);
    assert_eq!(store.runs_page(Some("people"), Some(RunStatus::Filtered), 10).await.unwrap().1, 0);
    assert_eq!(store.runs_page(Some("people"), None, 100).await.unwrap().1, 6);
    assert!(store.run(&old(1)).await.unwrap().is_none());
    assert_eq!(store.prune_runs(cutoff).await.unwrap(), 0, "nothing more to prune");
}

async fn run_ids_sort_by_creation<S: StateStore>(store: S) {
    let ids: Vec<RunId> = (0..50).map(|_| store.next_run_id()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "later ids sort after earlier ones");
    let text = ids[0].to_string();
    assert_eq!(text.parse::<RunId>().unwrap(), ids[0]);
    for bad in ["", "latest", "123-456", "1764495000123_000042", "1764495000123-00004x", " 1764495000123-000042"] {
        let err = bad.parse::<RunId>().unwrap_err().to_string();
        assert!(err.contains("is not a run id") && err.contains("runs list"), "{bad:?}: {err}");
    }
}

/// A run of item `item` (the contract's `run` uses one item for all).
fn run_of(store: &impl StateStore, item: &str) -> RunRecord {
    RunRecord::new(
        store.next_run_id(),
        "people",
        RunStatus::Queued,
        item,
        json!({"id": item}),
        "2026-11-30T10:00:00Z".into(),
    )
}

async fn a_record_runs_once_whether_it_comes_by_hook_or_by_poll<S: StateStore>(store: S) {
    // A delivery without a change time is marked at its own time.
    let hooked = run_of(&store, "7");
    let commit = DeliveryCommit {
        delivery: Some("wh-1".into()),
        runs: vec![(hooked.clone(), "7".into(), "u:2026-11-30T10:00:05Z".into())],
    };
    assert_eq!(store.commit_delivery("people", &commit).await.unwrap(), vec![hooked.id.clone()]);
    assert!(store.delivery_seen("wh-1").await.unwrap());
    assert!(!store.delivery_seen("wh-2").await.unwrap());
    // The same record again (another delivery of the same change): no second run.
    let again = DeliveryCommit {
        delivery: None,
        runs: vec![(run_of(&store, "7"), "7".into(), "u:2026-11-30T10:00:05Z".into())],
    };
    assert!(store.commit_delivery("people", &again).await.unwrap().is_empty());

    // A poll that read the item before the delivery was recorded, with the change's own
    // (earlier) time: its run is left out and returned, its mark does not move the
    // delivery's back. A later change of another item goes through.
    let polled = run_of(&store, "7");
    let other = run_of(&store, "8");
    let poll = PollCommit {
        runs: vec![polled.clone(), other.clone()],
        seen: vec![("7".into(), "u:2026-11-30T10:00:00Z".into()), ("8".into(), "u:2026-11-30T10:00:00Z".into())],
        ..Default::default()
    };
    assert_eq!(store.commit_poll("people", &poll).await.unwrap(), vec![polled.id.clone()]);
    assert!(store.run(&polled.id).await.unwrap().is_none());
    assert!(store.run(&other.id).await.unwrap().is_some());
    assert_eq!(store.seen_mark("people", "7").await.unwrap().as_deref(), Some("u:2026-11-30T10:00:05Z"));
    assert_eq!(store.seen_count("people").await.unwrap(), 2, "items 7 and 8");
    assert_eq!(store.seen_count("peopl").await.unwrap(), 0, "a recipe id that prefixes another counts none of its");

    // A later edit, by hook or by poll, runs.
    let edited = run_of(&store, "7");
    let later =
        DeliveryCommit { delivery: None, runs: vec![(edited.clone(), "7".into(), "u:2026-11-30T11:00:00Z".into())] };
    assert_eq!(store.commit_delivery("people", &later).await.unwrap(), vec![edited.id]);
    assert_eq!(store.runs_page(Some("people"), Some(RunStatus::Queued), 10).await.unwrap().1, 3);
}

async fn deliveries_are_remembered_until_pruned_and_subscriptions_kept<S: StateStore>(store: S) {
    let commit = DeliveryCommit { delivery: Some("wh-9".into()), runs: vec![] };
    store.commit_delivery("", &commit).await.unwrap();
    assert!(store.delivery_seen("wh-9").await.unwrap());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(store.prune_deliveries(now - 60).await.unwrap(), 0, "a fresh delivery is kept");
    assert_eq!(store.prune_deliveries(now + 60).await.unwrap(), 1);
    assert!(!store.delivery_seen("wh-9").await.unwrap());

    assert!(store.hook_subscriptions().await.unwrap().is_empty());
    let subscription = HookSubscription {
        connection: "capsule".into(),
        event: "party/updated".into(),
        token: "t0k3n".into(),
        target_url: "https://hooks.example.com/hooks/capsule/t0k3n".into(),
        hook_id: Some("42".into()),
    };
    store.save_hook_subscriptions(std::slice::from_ref(&subscription)).await.unwrap();
    assert_eq!(store.hook_subscriptions().await.unwrap(), vec![subscription]);
    store.save_hook_subscriptions(&[]).await.unwrap();
    assert!(store.hook_subscriptions().await.unwrap().is_empty());
}

async fn a_pause_is_kept_apart_from_the_trigger_state<S: StateStore>(store: S) {
    assert_eq!(store.paused_since("people").await.unwrap(), None);
    store.set_paused("people", Some("2026-11-30T10:00:00.000Z")).await.unwrap();
    // A poll writing its trigger state back, and a reset, leave the pause alone.
    let state = TriggerState { fingerprint: "f".into(), ..Default::default() };
    store.save_trigger_state("people", &state).await.unwrap();
    store.reset_trigger("people", state).await.unwrap();
    assert_eq!(store.paused_since("people").await.unwrap().as_deref(), Some("2026-11-30T10:00:00.000Z"));
    assert_eq!(store.paused_since("notes").await.unwrap(), None, "one recipe's pause only");
    store.set_paused("people", None).await.unwrap();
    assert_eq!(store.paused_since("people").await.unwrap(), None);
}

/// Three handles' distinct worker names (one on sled, whose clones are one worker).
fn distinct_workers<S: StateStore>(handles: &[S]) -> usize {
    handles.iter().map(|h| h.worker().to_owned()).collect::<std::collections::HashSet<_>>().len()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn leases_are_shared_by_workers_and_kept_alive_by_heartbeats<S: StateStore>(handles: [S; 3]) {
    let [a, b, _] = handles;
    let long = Duration::from_secs(60);
    // One lease, two holders on two handles: the second is refused until the first lets go.
    assert!(a.acquire_lease("poll:people", "w1", long).await.unwrap());
    assert!(!b.acquire_lease("poll:people", "w2", long).await.unwrap(), "held by w1 through the other handle");
    assert!(!b.renew_lease("poll:people", "w2", long).await.unwrap());
    assert!(b.release_lease("poll:people", "w1").await.unwrap(), "its holder releases it from any handle");
    assert!(b.acquire_lease("poll:people", "w2", long).await.unwrap());

    // Each worker's heartbeat counts the live workers, itself included.
    assert_eq!(a.heartbeat(long).await.unwrap(), 1);
    assert_eq!(b.heartbeat(long).await.unwrap(), distinct_workers(&[a.clone(), b.clone()]));
    let listed = a.leases().await.unwrap();
    for w in [a.worker(), b.worker()] {
        let own = listed.iter().find(|l| l.name == format!("worker:{w}")).expect("a worker's own lease is listed");
        assert_eq!(own.holder, w);
        assert!(own.expires_at_ms > now_ms() + 30_000, "{own:?} lasts about a minute");
    }

    // A heartbeat renews the leases its worker holds, before they lapse...
    let short = Duration::from_millis(400);
    assert!(a.acquire_lease("job", a.worker(), short).await.unwrap());
    tokio::time::sleep(Duration::from_millis(150)).await;
    a.heartbeat(long).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await; // past the first expiry
    assert!(!b.acquire_lease("job", "intruder", long).await.unwrap(), "renewed by the heartbeat");
    let job = b.leases().await.unwrap().into_iter().find(|l| l.name == "job").unwrap();
    assert_eq!(job.holder, a.worker());
    assert!(job.expires_at_ms > now_ms() + 30_000, "{job:?}");

    // ...but not one that lapsed: that one another worker takes, and keeps.
    assert!(a.acquire_lease("lapsing", a.worker(), Duration::from_millis(100)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    a.heartbeat(long).await.unwrap();
    assert!(b.acquire_lease("lapsing", "w2", long).await.unwrap(), "lapsed: another worker takes it");
    a.heartbeat(long).await.unwrap();
    let lapsing = a.leases().await.unwrap().into_iter().find(|l| l.name == "lapsing").unwrap();
    assert_eq!(lapsing.holder, "w2", "a later heartbeat of its old holder does not take it back");
    assert!(!a.renew_lease("lapsing", a.worker(), long).await.unwrap());
}

async fn each_orphaned_open_run_is_claimed_by_one_worker<S: StateStore>(handles: [S; 3]) {
    let [a, b, dead] = handles;
    // Runs of a worker that stopped without a word (it never had a live lease).
    let mut runs = Vec::new();
    for n in 0..300 {
        let status = match n % 6 {
            0..=2 => RunStatus::Queued,
            3 => RunStatus::Running,
            4 => RunStatus::Held,
            _ => RunStatus::Waiting,
        };
        runs.push(run(dead.next_run_id(), "people", status));
    }
    runs[5].steps = vec![step("contact", StepStatus::Sent, json!(null))];
    dead.create_runs(&runs).await.unwrap();
    let open: Vec<RunId> = runs.iter().filter(|r| r.status.is_open()).map(|r| r.id.clone()).collect();
    let long = Duration::from_secs(60);
    a.heartbeat(long).await.unwrap();
    b.heartbeat(long).await.unwrap();

    let (from_a, from_b) = tokio::join!(a.claim_open_runs(), b.claim_open_runs());
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    for list in [&from_a, &from_b] {
        assert!(list.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    }
    let mut all: Vec<RunId> = ids(&from_a).into_iter().chain(ids(&from_b)).collect();
    all.sort();
    assert_eq!(all, open, "every open run (queued or running) claimed once, by one worker; none other");
    // Claimed runs come back whole.
    let with_step = from_a.iter().chain(&from_b).find(|r| r.id == runs[3].id).unwrap();
    assert_eq!(with_step, &runs[3]);
    let sent = from_a.iter().chain(&from_b).find(|r| r.id == runs[5].id);
    assert!(sent.is_none(), "a waiting run is not claimed");

    // Claimed by live workers: nobody claims them again.
    let (again_a, again_b) = tokio::join!(a.claim_open_runs(), b.claim_open_runs());
    assert!(again_a.unwrap().is_empty() && again_b.unwrap().is_empty());

    if distinct_workers(&[a.clone(), b.clone()]) == 2 {
        // One worker stops (its lease goes): the other takes over its runs, and only those.
        assert!(a.release_lease(&format!("worker:{}", a.worker()), a.worker()).await.unwrap());
        let taken = b.claim_open_runs().await.unwrap();
        assert_eq!(ids(&taken), ids(&from_a), "the stopped worker's runs");
        assert!(b.claim_open_runs().await.unwrap().is_empty());
    }
}

async fn a_request_budget_holds_across_workers<S: StateStore>(handles: [S; 3]) {
    let [a, b, _] = handles;
    let (count, interval) = (4u32, Duration::from_millis(500));
    let until = std::time::Instant::now() + Duration::from_millis(1600);
    // Each send's span: the slot was taken at some moment between these two instants.
    let sender = |store: S| async move {
        let mut taken = Vec::new();
        while std::time::Instant::now() < until {
            let before = std::time::Instant::now();
            match store.take_request_slot("ghl:location", count, interval).await.unwrap() {
                ghlflow::store::RequestSlot::Taken(slot) => {
                    taken.push((before, std::time::Instant::now()));
                    store.settle_request_slot("ghl:location", slot).await.unwrap();
                }
                ghlflow::store::RequestSlot::Wait(wait) => {
                    assert!(!wait.is_zero() && wait <= interval, "{wait:?}");
                    tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
                }
            }
        }
        taken
    };
    let (from_a, from_b) = tokio::join!(tokio::spawn(sender(a.clone())), tokio::spawn(sender(b.clone())));
    let mut all: Vec<(std::time::Instant, std::time::Instant)> =
        from_a.unwrap().into_iter().chain(from_b.unwrap()).collect();
    all.sort();
    // No `count + 1` sends, whichever worker sent them, fit in one interval: for the sends
    // that began earliest from each one on, the last of them may have been taken as late
    // as it returned, and the first as early as it began, and even so they span at least
    // the interval. (A slow machine only widens the spans, it cannot fail this.)
    for (i, (first_began, _)) in all.iter().enumerate() {
        let Some(group) = all.get(i..=i + count as usize) else { break };
        let last_returned = group.iter().map(|(_, returned)| *returned).max().unwrap();
        let span = last_returned.duration_since(*first_began);
        assert!(span >= interval, "{} sends within {span:?} (budget {count} per {interval:?})", count + 1);
    }
    // ...and the budget is used: about `count` per interval over 1.6 s.
    assert!(all.len() >= 3 * count as usize, "only {} sends in 1.6 s", all.len());
    // Another budget is not held up by this one.
    assert!(matches!(
        b.take_request_slot("capsule", 1, interval).await.unwrap(),
        ghlflow::store::RequestSlot::Taken(_)
    ));
}

async fn a_record_delivered_to_two_workers_at_once_runs_once<S: StateStore>(handles: [S; 3]) {
    let [a, b, _] = handles;
    let deliver = |store: S, item: String| {
        tokio::spawn(async move {
            let commit = DeliveryCommit {
                delivery: None,
                runs: vec![(run_of(&store, &item), item.clone(), "u:2026-11-30T10:00:05Z".into())],
            };
            store.commit_delivery("people", &commit).await.unwrap()
        })
    };
    for n in 0..25 {
        // The same change reaches both workers (GHL retried, or two listeners).
        let item = format!("p{n}");
        let (x, y) = tokio::join!(deliver(a.clone(), item.clone()), deliver(b.clone(), item));
        assert_eq!(x.unwrap().len() + y.unwrap().len(), 1, "item p{n} recorded once");
    }
    assert_eq!(a.runs_page(Some("people"), None, 0).await.unwrap().1, 25);
}

async fn run_ids_are_unique_across_workers<S: StateStore>(handles: [S; 3]) {
    let [a, b, _] = handles;
    let make = |store: S| tokio::spawn(async move { (0..5000).map(|_| store.next_run_id()).collect::<Vec<RunId>>() });
    let (from_a, from_b) = tokio::join!(make(a), make(b));
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    for list in [&from_a, &from_b] {
        assert!(list.windows(2).all(|w| w[0] < w[1]), "increasing within a worker");
    }
    let all: std::collections::HashSet<&RunId> = from_a.iter().chain(&from_b).collect();
    assert_eq!(all.len(), 10_000, "no id made twice");
}

/// PostgreSQL only: its schema migrations.
mod postgres_only {
    use ghlflow::store::{PgStore, StateStore};
    use sqlx::Connection;

    #[tokio::test]
    async fn connecting_again_applies_nothing_and_keeps_the_data() {
        let Some(url) = crate::support::postgres::fresh_postgres_url().await else { return };
        let first = PgStore::connect(&url).await.unwrap();
        assert!(!first.applied_migrations().is_empty(), "a fresh database is migrated");
        assert!(first.schema_version() >= 1);
        first.remember_id("party:1", "c1").await.unwrap();
        let status = PgStore::migration_status(&url).await.unwrap();
        assert!(status.pending.is_empty() && status.unknown.is_empty(), "{status:?}");
        let second = PgStore::connect(&url).await.unwrap();
        assert!(second.applied_migrations().is_empty(), "nothing to apply twice: {:?}", second.applied_migrations());
        assert_eq!(second.schema_version(), first.schema_version());
        assert_eq!(second.id_of("party:1").await.unwrap().as_deref(), Some("c1"));
        assert_ne!(first.worker(), second.worker(), "each connect is a worker of its own");
    }

    #[tokio::test]
    async fn the_engines_store_connects_to_a_postgres_state() {
        use ghlflow::config::{Secret, StateLocation};
        let Some(url) = crate::support::postgres::fresh_postgres_url().await else { return };
        let store = ghlflow::store::Store::connect(&StateLocation::Postgres(Secret::new(url.clone()))).await.unwrap();
        assert!(matches!(store, ghlflow::store::Store::Postgres(_)));
        let status = PgStore::migration_status(&url).await.unwrap();
        assert!(status.pending.is_empty(), "migrated on connect: {status:?}");
        let newest = status.applied.iter().max().map(|v| u32::try_from(*v).unwrap());
        assert!(newest >= Some(1));
        assert_eq!(store.format().unwrap(), newest, "the schema version");
        store.flush().unwrap();
        store.remember_id("party:1", "c1").await.unwrap();
        assert_eq!(store.id_of("party:1").await.unwrap().as_deref(), Some("c1"));
        assert!(!store.worker().is_empty());
    }

    #[tokio::test]
    async fn a_database_migrated_by_a_newer_ghlflow_is_refused() {
        let Some(url) = crate::support::postgres::fresh_postgres_url().await else { return };
        drop(PgStore::connect(&url).await.unwrap());
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)              VALUES (99999, 'from the future', true, '\\x00', 1)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let err = PgStore::connect(&url).await.map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("schema is newer than this ghlflow") && err.contains("99999"), "{err}");
        assert!(err.contains("upgrade ghlflow"), "{err}");
        let status = PgStore::migration_status(&url).await.unwrap();
        assert_eq!(status.unknown, vec![99999]);
    }

    #[tokio::test]
    async fn a_password_never_reaches_a_connect_error() {
        let Some(url) = crate::support::postgres::fresh_postgres_url().await else { return };
        let mut bad = url::Url::parse(&url).unwrap();
        // A port nobody listens on, with a password in the URL.
        bad.set_port(Some(1)).unwrap();
        bad.set_username("ghl").unwrap();
        bad.set_password(Some("s3cr3t-pw")).unwrap();
        let err = PgStore::connect(bad.as_str()).await.map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("cannot connect") && err.contains("127.0.0.1:1"), "{err}");
        assert!(!err.contains("s3cr3t-pw"), "{err}");
    }

    #[tokio::test]
    async fn export_records_and_runs_import_into_another_database() {
        use ghlflow::store::{RunRecord, RunStatus, StateRecord, StoredTokens, TriggerState};
        let Some(from) = crate::support::postgres::store().await else { return };
        let Some(to) = crate::support::postgres::store().await else { return };
        from.save_tokens("ghl", &StoredTokens { refresh_token: Some("r".into()), ..Default::default() }).await.unwrap();
        from.save_trigger_state(
            "people",
            &TriggerState { fingerprint: "f".into(), generation: 3, ..Default::default() },
        )
        .await
        .unwrap();
        from.commit_poll(
            "people",
            &ghlflow::store::PollCommit {
                generation: 3,
                seen: vec![("a".into(), "m".into())],
                joined: vec!["a".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        from.remember_id("party:1", "c1").await.unwrap();
        from.set_paused("people", Some("2026-11-30T10:00:00Z")).await.unwrap();
        let mut runs = Vec::new();
        for (n, status) in [RunStatus::Succeeded, RunStatus::Failed, RunStatus::Queued].into_iter().enumerate() {
            runs.push(RunRecord::new(
                from.next_run_id(),
                "people",
                status,
                &format!("i{n}"),
                serde_json::json!({"n": n}),
                "2026-11-30T10:00:00Z".into(),
            ));
        }
        from.create_runs(&runs).await.unwrap();
        let done = ghlflow::store::StepRecord {
            status: ghlflow::store::StepStatus::Succeeded,
            attempts: 1,
            ..ghlflow::store::StepRecord::pending("contact", "ghl.contacts.upsert_contact")
        };
        from.put_step(&runs[0].id, 0, &done).await.unwrap();
        runs[0].steps = vec![done.clone()];

        let mut records = from.export_state().await.unwrap();
        assert!(records.contains(&StateRecord::Seen { recipe: "people".into(), item: "a".into(), mark: "m".into() }));
        assert!(records.contains(&StateRecord::Id { key: "party:1".into(), id: "c1".into() }));
        let mut after = None;
        loop {
            let page = from.runs_after(after.as_ref(), 2).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            records.extend(page.into_iter().map(|run| StateRecord::Run { run }));
        }
        // A run exported with a pending step after one that ran keeps both.
        let mut replayed = RunRecord::new(
            ghlflow::store::RunId::new(1_700_000_000_000, 7),
            "people",
            RunStatus::Failed,
            "i9",
            serde_json::json!({"n": 9}),
            "2023-11-14T22:13:20Z".into(),
        );
        replayed.steps = vec![done, ghlflow::store::StepRecord::pending("note", "ghl.contacts.create_note")];
        records.push(StateRecord::Run { run: replayed.clone() });
        to.import_state(&records).await.unwrap();
        assert_eq!(to.export_state().await.unwrap(), from.export_state().await.unwrap());
        let moved = to.runs_after(None, 100).await.unwrap();
        let expected: Vec<RunRecord> = std::iter::once(replayed).chain(runs.iter().cloned()).collect();
        assert_eq!(moved, expected, "ids, statuses and steps as exported");
        assert_eq!(super::ids(&to.open_runs().await.unwrap()), vec![runs[2].id.clone()]);
        // Imported again (a retried import): still one of each.
        to.import_state(&records).await.unwrap();
        assert_eq!(to.runs_after(None, 100).await.unwrap(), expected);
        // Imported runs are the importing worker's.
        let claimed = to.claim_open_runs().await.unwrap();
        assert!(claimed.is_empty(), "its own runs are not orphans: {claimed:?}");
    }
}

/// `ghlflow migrate` over both kinds of state.
mod migrate_command {
    use crate::util::{ghlflow, root, stderr, stdout};

    fn project(state: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let config = std::fs::read_to_string(root().join("tests/fixtures/recipes/ghlflow.yaml")).unwrap();
        std::fs::write(dir.path().join("ghlflow.yaml"), format!("{config}\nstate: {state}\n")).unwrap();
        dir
    }

    #[test]
    fn migrate_lists_applies_and_then_finds_nothing_pending() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let Some(url) = runtime.block_on(crate::support::postgres::fresh_postgres_url()) else { return };
        // The test cluster trusts local connections, so any password is accepted.
        let mut with_password = url::Url::parse(&url).unwrap();
        with_password.set_password(Some("pw-s3cret")).unwrap();
        let dir = project(with_password.as_str());

        let check = ghlflow(dir.path(), &["migrate", "--check"]);
        assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
        let text = stdout(&check);
        assert!(text.contains("schema version 0") && text.contains("pending") && text.contains("  1 state"), "{text}");

        let applied = ghlflow(dir.path(), &["migrate"]);
        assert_eq!(applied.status.code(), Some(0), "{}", stderr(&applied));
        let text = stdout(&applied);
        assert!(text.contains("applied 1 state") && text.contains("schema version 1"), "{text}");

        let again = ghlflow(dir.path(), &["migrate"]);
        assert!(stdout(&again).contains("no migration pending"), "{}", stdout(&again));
        let check = ghlflow(dir.path(), &["migrate", "--check"]);
        assert!(stdout(&check).contains("up to date"), "{}", stdout(&check));
        for out in [&check, &again, &applied] {
            let all = format!("{}{}", stdout(out), stderr(out));
            assert!(!all.contains("pw-s3cret"), "the password was printed: {all}");
        }
    }

    #[test]
    fn migrate_opens_a_state_folder_and_prints_its_format() {
        let dir = project("state");
        let out = ghlflow(dir.path(), &["migrate"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains(&format!("state format {}", ghlflow::store::FORMAT)), "{}", stdout(&out));
        assert!(dir.path().join("state").is_dir());
        let out = ghlflow(dir.path(), &["migrate", "--check"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("--check is for a PostgreSQL state store"), "{}", stderr(&out));
    }
}
