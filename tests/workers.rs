//! Several `ghlflow run` workers on one PostgreSQL state store (issue 14), from the outside:
//! real processes against an in-process sandbox, checked through the sandbox's request log
//! and the store. Three workers share the shipped mirror and one is killed with SIGKILL;
//! two workers on one GHL location stay within its 100-requests-in-10-seconds limit
//! together; an OAuth refresh happens once across two workers; the control commands work
//! against the database while a worker runs; and (at the store) a run a live worker started
//! again is not claimed as an orphan by another (the bug the kill -9 test found).
//!
//! Each test takes a fresh database from `GHLFLOW_TEST_POSTGRES` (`eval "$(.ci/postgres.sh)"`
//! starts a throwaway cluster) and is skipped without it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ghlflow::catalog::Catalog;
use ghlflow::config::{Config, Secret, StateLocation};
use ghlflow::http::{HttpClient, RequestBody};
use ghlflow::sandbox::{Api, LoggedRequest, Sandbox, SandboxOptions};
use ghlflow::store::{LeaseInfo, RunRecord, RunStatus, StepStatus, Store, StoredTokens};
use serde_json::{Map, Value, json};

use crate::util::{markers, meeting_settings};

/// The workers' `lease_ttl`: the shortest allowed, so a dead worker's leases lapse quickly.
const LEASE_TTL: Duration = Duration::from_secs(3);

/// A fresh database, or None when no cluster is configured (the test is then skipped).
async fn database() -> Option<String> {
    crate::support::postgres::fresh_postgres_url().await
}

/// A store connection of the test's own (it takes no lease and counts as no worker).
async fn connect(url: &str) -> Store {
    Store::connect(&StateLocation::Postgres(Secret::new(url))).await.expect("the test database opens")
}

/// `ghlflow.yaml` for the sandbox, on the database. `listen: 127.0.0.1:0`: each worker's
/// listener takes a port of its own, so several `ghlflow run` coexist on one machine.
fn write_config(dir: &Path, sandbox: &Sandbox, url: &str) {
    let base = sandbox.config_yaml().replace("state: .ghlflow/state\n", "");
    assert!(!base.contains("\nstate:"), "the sandbox's config names its state in a new way:\n{base}");
    let yaml = format!("{base}state: {url}\nlease_ttl: {}s\nlisten: 127.0.0.1:0\n", LEASE_TTL.as_secs());
    std::fs::write(dir.join("ghlflow.yaml"), yaml).unwrap();
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The process id in a worker's name (`<host>-<pid>-<hex>`).
fn holder_pid(holder: &str) -> Option<u32> {
    holder.rsplit('-').nth(1)?.parse().ok()
}

/// Live `recipe:*` leases: recipe → holder.
fn recipe_holders(leases: &[LeaseInfo], now: u64) -> BTreeMap<String, String> {
    leases
        .iter()
        .filter(|l| l.expires_at_ms > now)
        .filter_map(|l| Some((l.name.strip_prefix("recipe:")?.to_owned(), l.holder.clone())))
        .collect()
}

/// A `ghlflow run` process (scheduler mode), its log in the test folder. Killed when
/// dropped, so a failing test leaves no process behind.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(dir: &Path, n: usize, env: &[(&str, String)]) -> Worker {
        let log = dir.join(format!("worker-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ghlflow"))
            .arg("run")
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .env("GHLFLOW_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("the ghlflow binary starts");
        Worker { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits (at most 40 s: the engine gives its runs in flight 30 s).
    fn stop(&mut self) {
        if !self.running() {
            return;
        }
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("a child has a pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM is sent");
        let until = Instant::now() + Duration::from_secs(40);
        while self.running() {
            assert!(Instant::now() < until, "worker {} did not stop after SIGTERM:\n{}", self.pid(), self.tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of its log, for a failure message.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every worker's log tail, for a failure message.
fn tails(workers: &[Worker]) -> String {
    workers.iter().map(|w| format!("--- worker {} ---\n{}", w.pid(), w.tail())).collect::<Vec<_>>().join("\n")
}

/// The shipped recipes, each polling at least once a minute.
fn copy_recipes(dir: &Path) {
    std::fs::create_dir(dir.join("recipes")).unwrap();
    for entry in std::fs::read_dir(crate::util::root().join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text: Vec<String> = text
            .lines()
            .map(|line| match line.trim_start().strip_prefix("every: ").map(humantime::parse_duration) {
                Some(Ok(d)) if d > Duration::from_secs(60) => line.replace(line.trim_start(), "every: 1m"),
                _ => line.to_owned(),
            })
            .collect();
        std::fs::write(dir.join("recipes").join(path.file_name().unwrap()), text.join("\n") + "\n").unwrap();
    }
}

async fn count(store: &Store, status: RunStatus) -> usize {
    store.runs_page(None, Some(status), 1).await.unwrap().1
}

/// The request a completed step sent, rebuilt from the input its record holds: the
/// journal records exactly the inputs handed to the HTTP client, and `prepare` is the one
/// place that turns inputs into a request, so this is the method, path, query and body the
/// sandbox saw for it. None for a read.
fn request_of(catalog: &Catalog, config: &Config, operation: &str, input: &Value) -> Option<(String, String, String)> {
    let op = catalog.get(operation)?;
    if !op.writes() {
        return None;
    }
    // The shipped recipes name each app's connection after the app.
    let connection = config.connection(&op.key.app).unwrap();
    let inputs: Map<String, Value> = input.as_object().cloned().unwrap_or_default();
    let prepared = ghlflow::http::prepare(op, connection, &inputs).unwrap();
    let target = match prepared.url.query() {
        Some(q) => format!("{}?{q}", prepared.url.path()),
        None => prepared.url.path().to_owned(),
    };
    let body = match prepared.body {
        Some(RequestBody::Json(v)) => v,
        Some(RequestBody::Form(pairs)) => json!(pairs),
        None => Value::Null,
    };
    Some((prepared.method.as_str().to_owned(), target, canonical(&body)))
}

/// A JSON value as text with every object's keys sorted: equal values, equal texts.
fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&map[k]))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// A logged write as (method, path?query, body).
fn logged_write(r: &LoggedRequest) -> (String, String, String) {
    assert!(!r.body_cut, "a write's body was cut in the log: {} {}", r.method, r.path);
    let target = match &r.query {
        Some(q) => format!("{}?{q}", r.path),
        None => r.path.clone(),
    };
    let body = r.body.as_deref().map(|b| serde_json::from_str(b).unwrap_or(json!(b))).unwrap_or(Value::Null);
    (r.method.clone(), target, canonical(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_the_mirror_and_a_kill_nine_loses_nothing() {
    let Some(url) = database().await else { return };
    let began = Instant::now();
    // Every answer takes a little while, so the mirror of a few hundred people lasts well
    // past the kill, and the kill lands in the middle of runs.
    let sandbox = ghlflow::sandbox::start(SandboxOptions {
        people: 250,
        seed: 44,
        no_limits: true,
        latency: Duration::from_millis(25),
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &sandbox, &url);
    copy_recipes(dir.path());
    let settings = meeting_settings(&sandbox);
    // A few meetings (timed tasks in the Meeting category) for capsule-meetings to book.
    let people = sandbox.capsule_people();
    let owners = sandbox.capsule_users();
    for i in 0..8 {
        let owner = owners[i % owners.len()]["id"].as_i64().unwrap();
        sandbox.capsule_add_meeting(people[i * 7], owner, "2026-12-14", &format!("{:02}:00:00", 9 + i), "Meeting");
    }
    let store = connect(&url).await;

    let mut workers: Vec<Worker> = (0..3).map(|n| Worker::start(dir.path(), n, &settings)).collect();

    // Until the recipes are spread over more than one worker and enough runs succeeded for
    // the check of completed steps below to mean something; then the worker holding the most
    // recipes, while a recipe it holds has open runs.
    let until = Instant::now() + Duration::from_secs(150);
    let (victim, held_at_kill) = loop {
        assert!(Instant::now() < until, "the workers never shared the recipes with runs open:\n{}", tails(&workers));
        assert!(workers.iter_mut().all(Worker::running), "a worker stopped:\n{}", tails(&workers));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let holders = recipe_holders(&store.leases().await.unwrap(), now_ms());
        let mut by_holder: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (recipe, holder) in &holders {
            by_holder.entry(holder).or_default().push(recipe);
        }
        if by_holder.len() < 2 || count(&store, RunStatus::Succeeded).await < 60 {
            continue;
        }
        // Of the workers holding the most (there may be a tie), one with open runs.
        let most = by_holder.values().map(Vec::len).max().unwrap_or(0);
        let mut chosen = None;
        for (holder, recipes) in by_holder.iter().filter(|(_, r)| r.len() == most) {
            let mut open = 0;
            for recipe in recipes {
                for status in [RunStatus::Queued, RunStatus::Running] {
                    open += store.runs_page(Some(recipe), Some(status), 1).await.unwrap().1;
                }
            }
            if open > 0 {
                println!("sharing after {:?}: {by_holder:?}; killing {holder} ({open} open runs)", began.elapsed());
                chosen = Some((holder.to_string(), recipes.iter().map(|r| r.to_string()).collect::<Vec<_>>()));
                break;
            }
        }
        if let Some(chosen) = chosen {
            break chosen;
        }
    };
    let index = workers
        .iter()
        .position(|w| Some(w.pid()) == holder_pid(&victim))
        .unwrap_or_else(|| panic!("{victim} is none of the workers"));

    // What was done before the kill, read right before it. PostgreSQL commits each journal
    // write, so a step recorded as succeeded here is durable: nothing may send it again.
    let before: Vec<RunRecord> = store.runs(None, 1_000_000).await.unwrap();
    let kill_at_log = sandbox.elapsed_ms();
    let kill_at = now_ms();
    workers[index].child.kill().unwrap(); // SIGKILL
    workers[index].child.wait().unwrap();
    let dead = workers.remove(index);
    workers.push(Worker::start(dir.path(), 3, &settings));

    // Then to the end: the dead worker's leases lapse within lease_ttl, its recipes go to
    // live workers, its open runs are claimed and finished, and the counts settle.
    let mut dead_live_last_seen = None;
    let mut dead_expiry_max = 0;
    let mut taken_over: BTreeMap<String, String> = BTreeMap::new();
    let mut last_counts = None;
    let mut steady = 0;
    let until = Instant::now() + Duration::from_secs(240);
    loop {
        assert!(Instant::now() < until, "the work never settled after the kill:\n{}", tails(&workers));
        assert!(workers.iter_mut().all(Worker::running), "a worker stopped:\n{}", tails(&workers));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = now_ms();
        let leases = store.leases().await.unwrap();
        for lease in leases.iter().filter(|l| l.holder == victim) {
            dead_expiry_max = dead_expiry_max.max(lease.expires_at_ms);
            if lease.expires_at_ms > now {
                dead_live_last_seen = Some(now);
            }
        }
        for (recipe, holder) in recipe_holders(&leases, now) {
            if held_at_kill.contains(&recipe) && holder != victim {
                taken_over.entry(recipe).or_insert(holder);
            }
        }
        let open = count(&store, RunStatus::Queued).await
            + count(&store, RunStatus::Running).await
            + count(&store, RunStatus::Waiting).await;
        let counts = (store.runs_page(None, None, 1).await.unwrap().1, sandbox.request_counts().ghl_writes);
        steady = if open == 0 && last_counts == Some(counts) { steady + 1 } else { 0 };
        last_counts = Some(counts);
        // Ten quiet looks in a row (two seconds and more) with no run owed and every recipe
        // of the dead worker taken over.
        if steady >= 10 && taken_over.len() == held_at_kill.len() {
            break;
        }
    }
    for worker in &mut workers {
        worker.stop();
    }
    println!("settled {:?} after the start; {} runs", began.elapsed(), last_counts.unwrap().0);

    // The dead worker's leases: none live later than lease_ttl (+1 s) after the kill, and
    // every recipe it held went to a live worker.
    let slack = LEASE_TTL.as_millis() as u64 + 1000;
    assert!(
        dead_expiry_max <= kill_at + slack,
        "a lease of the dead worker ran {} ms past the kill",
        dead_expiry_max - kill_at
    );
    if let Some(seen) = dead_live_last_seen {
        assert!(
            seen <= kill_at + slack,
            "a lease of the dead worker was still live {} ms after the kill",
            seen - kill_at
        );
    }
    let live: Vec<u32> = workers.iter().map(Worker::pid).collect();
    for (recipe, holder) in &taken_over {
        assert!(holder_pid(holder).is_some_and(|p| live.contains(&p)), "{recipe} went to {holder}, not a live worker");
    }
    drop(dead);

    // Every run succeeded or was filtered.
    let runs = store.runs(None, 1_000_000).await.unwrap();
    for r in &runs {
        assert!(
            matches!(r.status, RunStatus::Succeeded | RunStatus::Filtered),
            "run {} of {} is {}: {:?}",
            r.id,
            r.recipe,
            r.status.as_str(),
            r.error
        );
    }

    // Every Capsule person with an email or phone mirrored exactly once: one run, one
    // mapped contact that exists; no GHL contact twice (by email).
    let contacts = sandbox.ghl_contacts();
    let contact_ids: BTreeSet<&str> = contacts.iter().filter_map(|c| c["id"].as_str()).collect();
    let mut emails = BTreeSet::new();
    for c in &contacts {
        if let Some(e) = c["email"].as_str().filter(|e| !e.is_empty()) {
            assert!(emails.insert(e.to_lowercase()), "two GHL contacts have the email {e}");
        }
    }
    let mut people_runs: HashMap<&str, usize> = HashMap::new();
    for r in runs.iter().filter(|r| r.recipe == "capsule-people") {
        *people_runs.entry(r.item_id.as_deref().unwrap_or_default()).or_default() += 1;
    }
    let mut mirrored = 0;
    for id in sandbox.capsule_people() {
        let party = sandbox.capsule_party(id).unwrap();
        let reachable = party["emailAddresses"].as_array().is_some_and(|a| !a.is_empty())
            || party["phoneNumbers"].as_array().is_some_and(|a| !a.is_empty());
        if !reachable {
            continue;
        }
        let n = people_runs.get(id.to_string().as_str()).copied().unwrap_or(0);
        assert_eq!(n, 1, "Capsule person {id} has {n} capsule-people runs");
        let contact = store.id_of(&format!("party:{id}")).await.unwrap();
        assert!(
            contact.as_deref().is_some_and(|c| contact_ids.contains(c)),
            "Capsule person {id} maps to {contact:?}, no GHL contact"
        );
        mirrored += 1;
    }
    assert!(mirrored > 100, "only {mirrored} people mirrored: the test proves little");

    // Every note, task and meeting marker exactly once.
    let mut made: BTreeMap<String, usize> = BTreeMap::new();
    for c in &contacts {
        let id = c["id"].as_str().unwrap();
        for m in markers(&sandbox.ghl_notes(id), "body", "[capsule ") {
            *made.entry(format!("note {m}")).or_default() += 1;
        }
        for m in markers(&sandbox.ghl_tasks(id), "body", "[capsule task ") {
            *made.entry(format!("task {m}")).or_default() += 1;
        }
    }
    for m in markers(&sandbox.ghl_appointments(), "description", "[capsule task ") {
        *made.entry(format!("meeting {m}")).or_default() += 1;
    }
    for kind in ["note [capsule entry", "task [capsule task", "meeting [capsule task"] {
        assert!(made.keys().any(|k| k.starts_with(kind)), "no {kind} was made at all");
    }
    for (m, n) in &made {
        if *n != 1 {
            // Which writes carried it, when (the kill was at `kill_at_log`), and the runs of its item.
            let marker = m.split_once(' ').map(|(_, rest)| format!("{rest}]")).unwrap_or_default();
            let sends: Vec<(u64, String, String, u16)> = sandbox
                .request_log()
                .into_iter()
                .filter(|r| r.body.as_deref().is_some_and(|b| b.contains(&marker)))
                .map(|r| (r.at_ms, r.method, r.path, r.status))
                .collect();
            let item = marker.trim_end_matches(']').rsplit(' ').next().unwrap_or_default().to_owned();
            let of_item: Vec<String> = runs
                .iter()
                .filter(|r| r.item_id.as_deref() == Some(item.as_str()))
                .map(|r| {
                    format!(
                        "{} {} {} steps {:?}",
                        r.id,
                        r.recipe,
                        r.status.as_str(),
                        r.steps.iter().map(|s| (s.id.as_str(), s.status, s.attempts)).collect::<Vec<_>>()
                    )
                })
                .collect();
            panic!("{m}] was made {n} times: sends {sends:?} (kill at {kill_at_log} ms); runs {of_item:#?}");
        }
    }

    // No completed step is sent again. Each step recorded as succeeded before the kill sent
    // one write, which `request_of` rebuilds exactly from the step's recorded input. The
    // world does not change during the test, so no two steps (of any runs) send the same
    // write: a write arriving after the kill that equals one of these is that step sent
    // again (by the claimer resuming a run at the wrong step, or by a second run of the same
    // item), whichever worker sent it. Steps not yet done at the kill may be sent after it
    // (repeat-safe ones, or after their `find`), so only completed ones are checked.
    let catalog = ghlflow::catalog::load_embedded().unwrap();
    let config = Config::load(&dir.path().join("ghlflow.yaml"), &catalog, &|_| None).unwrap();
    let mut done: HashMap<(String, String, String), String> = HashMap::new();
    for run in &before {
        for (i, step) in run.steps.iter().enumerate() {
            if step.status != StepStatus::Succeeded {
                continue;
            }
            let Some(input) = &step.input else { continue };
            if let Some(request) = request_of(&catalog, &config, &step.operation, input) {
                done.insert(request, format!("run {} ({}) step {i} `{}`", run.id, run.recipe, step.id));
            }
        }
    }
    let log = sandbox.request_log();
    let writes_after: Vec<&LoggedRequest> =
        log.iter().filter(|r| r.at_ms > kill_at_log && r.api == Api::Ghl && r.method != "GET").collect();
    for r in &writes_after {
        if let Some(step) = done.get(&logged_write(r)) {
            panic!("{step} was completed before the kill and sent again after it: {} {}", r.method, r.path);
        }
    }
    // The check is not empty: completed writes before the kill, more writes after it.
    assert!(
        done.len() > 20 && writes_after.len() > 20,
        "{} steps done before, {} writes after",
        done.len(),
        writes_after.len()
    );
    println!(
        "kill -9 of {victim} ({} recipes): {} completed writes not repeated by {} writes after it; {} runs; {:?}",
        held_at_kill.len(),
        done.len(),
        writes_after.len(),
        runs.len(),
        began.elapsed()
    );
    sandbox.shutdown().await;
}

/// A recipe that tags every GHL contact with its own tag.
fn tagging_recipe(tag: &str) -> String {
    format!(
        r#"name: Tag every contact {tag}
trigger:
  operation: ghl.contacts.search_contacts
  connection: ghl
  every: 1m
  dedupe: id
  start: backfill
steps:
  - id: tag
    operation: ghl.contacts.add_tags_to_contact
    connection: ghl
    input:
      contactId: "{{{{trigger.id}}}}"
      tags: [{tag}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_location_stay_within_100_requests_in_any_10_seconds() {
    let Some(url) = database().await else { return };
    let began = Instant::now();
    // The real limits: 100 GHL requests in any 10 s for the location.
    let sandbox =
        ghlflow::sandbox::start(SandboxOptions { people: 5, seed: 45, ..SandboxOptions::default() }).await.unwrap();
    // 100 contacts, four tags each: some 400 writes, 40 s at 10 a second.
    let seeded = sandbox.ghl_counts().contacts;
    sandbox.ghl_add_contacts(100usize.saturating_sub(seeded));
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &sandbox, &url);
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    // Ids whose first polls fall 4 to 9 s after the start (the scheduler places a recipe's
    // first poll by a hash of its id), when both workers have counted each other and take
    // two recipes each.
    let tags = ["tag-i", "tag-b", "tag-g", "tag-beta"];
    for tag in tags {
        std::fs::write(dir.path().join(format!("recipes/{tag}.yaml")), tagging_recipe(tag)).unwrap();
    }
    let store = connect(&url).await;
    let mut workers: Vec<Worker> = (0..2).map(|n| Worker::start(dir.path(), n, &[])).collect();

    let mut holders_seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(150);
    loop {
        assert!(Instant::now() < until, "the contacts were never all tagged:\n{}", tails(&workers));
        assert!(workers.iter_mut().all(Worker::running), "a worker stopped:\n{}", tails(&workers));
        tokio::time::sleep(Duration::from_millis(250)).await;
        for (recipe, holder) in recipe_holders(&store.leases().await.unwrap(), now_ms()) {
            holders_seen.entry(holder).or_default().insert(recipe);
        }
        let contacts = sandbox.ghl_contacts();
        let tagged = contacts.iter().all(|c| {
            let have: Vec<&str> = c["tags"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            tags.iter().all(|t| have.contains(t))
        });
        if tagged && count(&store, RunStatus::Queued).await + count(&store, RunStatus::Running).await == 0 {
            break;
        }
    }
    let worked = began.elapsed();
    for worker in &mut workers {
        worker.stop();
    }

    let log = sandbox.request_log();
    let refused: Vec<&LoggedRequest> = log.iter().filter(|r| r.status == 429).collect();
    assert!(
        refused.is_empty(),
        "{} requests were refused with a 429, the first at {} ms",
        refused.len(),
        refused[0].at_ms
    );
    let location = Some(sandbox.location_id().to_owned());
    let times: Vec<u64> =
        log.iter().filter(|r| r.api == Api::Ghl && r.counts_against == location).map(|r| r.at_ms).collect();
    // The most requests in any 10 s window: each window starting at a request's arrival.
    let mut most = (0, 0);
    let mut end = 0;
    for (start, at) in times.iter().enumerate() {
        while end < times.len() && times[end] < at + 10_000 {
            end += 1;
        }
        if end - start > most.0 {
            most = (end - start, *at);
        }
    }
    assert!(most.0 <= 100, "{} GHL requests arrived in the 10 s from {} ms", most.0, most.1);
    // The limit was what paced them: several windows' worth, and windows filled near it.
    assert!(times.len() > 300, "only {} GHL requests", times.len());
    assert!(most.0 >= 80, "at most {} requests in any 10 s: the budget was never pressed", most.0);

    // Both workers did part of the work.
    assert!(holders_seen.len() >= 2, "one worker held every recipe: {holders_seen:?}");
    let pids: Vec<u32> = workers.iter().map(Worker::pid).collect();
    for holder in holders_seen.keys() {
        assert!(holder_pid(holder).is_some_and(|p| pids.contains(&p)), "{holder} is none of the workers");
    }
    let runs = store.runs(None, 100_000).await.unwrap();
    assert!(runs.iter().all(|r| r.status == RunStatus::Succeeded), "a run did not succeed");
    println!(
        "two workers: {} GHL requests in {worked:?}, at most {} in any 10 s; recipes by worker {holders_seen:?}; {:?}",
        times.len(),
        most.0,
        began.elapsed()
    );
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth_refresh_happens_once_across_workers() {
    let Some(url) = database().await else { return };
    let sandbox = ghlflow::sandbox::start(SandboxOptions { people: 5, no_limits: true, ..SandboxOptions::default() })
        .await
        .unwrap();
    let catalog = ghlflow::catalog::load_embedded().unwrap();
    let yaml = format!(
        "connections:\n  ghl:\n    app: ghl\n    location_id: {}\n    auth:\n      type: oauth2\n      client_id: cid\n      client_secret: csecret\n      token_url: {}/oauth/token\n    base_url: {}\nstate: {url}\n",
        sandbox.location_id(),
        sandbox.ghl_base_url(),
        sandbox.ghl_base_url()
    );
    let config = Config::parse(&yaml, Path::new("/nonexistent/ghlflow.yaml"), &catalog, &|_| None).unwrap();
    // The grant's access token has expired (for the sandbox and in the store); its refresh
    // token is good once. Tokens last an hour (the ones the refresh issues too): well past
    // the client's five minutes of refreshing ahead.
    let grant = sandbox.oauth_grant(Some(3600));
    sandbox.advance_clock(Duration::from_secs(3601));
    let first = connect(&url).await;
    let expired_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() - 60;
    let saved = StoredTokens {
        access_token: Some(grant.access_token.clone()),
        refresh_token: Some(grant.refresh_token.clone()),
        expires_at: Some(expired_at),
        location_id: Some(sandbox.location_id().to_owned()),
        ..StoredTokens::default()
    };
    first.save_tokens("ghl", &saved).await.unwrap();

    // Two workers: each its own store connection (its own worker name) and HTTP client.
    let second = connect(&url).await;
    assert_ne!(first.worker(), second.worker());
    let clients =
        [first, second.clone()].map(|store| Arc::new(HttpClient::new(Some(store), config.redactor.clone()).unwrap()));
    let connection = Arc::clone(config.connection("ghl").unwrap());
    let op = Arc::clone(catalog.get("ghl.users.list_users_by_location").unwrap());
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (http, connection, op) = (Arc::clone(&clients[i % 2]), Arc::clone(&connection), Arc::clone(&op));
        let ask: Map<String, Value> = json!({"locationId": sandbox.location_id()}).as_object().cloned().unwrap();
        calls.spawn(async move { http.execute(&connection, &op, &ask).await.map(|r| r.status) });
    }
    while let Some(result) = calls.join_next().await {
        assert_eq!(result.unwrap().unwrap(), 200, "every call is answered");
    }

    let log = sandbox.request_log();
    let refreshes = log.iter().filter(|r| r.path == "/oauth/token").count();
    assert_eq!(refreshes, 1, "the token endpoint was called {refreshes} times");
    let calls: Vec<&LoggedRequest> = log.iter().filter(|r| r.path == "/users/").collect();
    assert_eq!(calls.len(), 16, "no call was refused and retried: {calls:?}");
    assert!(calls.iter().all(|r| r.status == 200));
    // The store holds the rotated refresh token: not the spent one, and good for the next
    // refresh.
    let stored = second.tokens("ghl").await.unwrap().expect("tokens in the store");
    let rotated = stored.refresh_token.expect("a refresh token");
    assert_ne!(rotated, grant.refresh_token);
    let next = reqwest::Client::new()
        .post(format!("{}/oauth/token", sandbox.ghl_base_url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rotated),
            ("client_id", "c"),
            ("client_secret", "s"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(next.status().as_u16(), 200, "the stored refresh token is the live one");
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_commands_work_against_the_database_while_workers_run() {
    let Some(url) = database().await else { return };
    let sandbox = ghlflow::sandbox::start(SandboxOptions { people: 30, no_limits: true, ..SandboxOptions::default() })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &sandbox, &url);
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    let people = std::fs::read_to_string(crate::util::root().join("recipes/capsule-people.yaml")).unwrap();
    std::fs::write(dir.path().join("recipes/capsule-people.yaml"), people.replace("every: 5m", "every: 1m")).unwrap();
    let store = connect(&url).await;
    let mut worker = Worker::start(dir.path(), 0, &[]);

    let until = Instant::now() + Duration::from_secs(60);
    while count(&store, RunStatus::Succeeded).await == 0 {
        assert!(Instant::now() < until, "the worker never ran anything:\n{}", worker.tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // With PostgreSQL the commands open the database themselves: no control socket needed
    // (with sled they would ask the running process through it).
    let _ = std::fs::remove_file(dir.path().join(".ghlflow/state.sock"));

    let listed = crate::util::ghlflow(dir.path(), &["runs", "list", "--limit", "1000", "--json"]);
    assert!(listed.status.success(), "{}", crate::util::stderr(&listed));
    let runs: Vec<Value> = serde_json::from_str(&crate::util::stdout(&listed)).unwrap();
    assert!(!runs.is_empty() && runs.iter().all(|r| r["recipe"] == "capsule-people"), "{runs:?}");
    let first = &runs[runs.len() - 1]["id"];
    let stored = store.runs(Some("capsule-people"), 100_000).await.unwrap();
    assert!(stored.iter().any(|r| first.as_str() == Some(r.id.as_str())), "{first} is not in the database");

    let paused = crate::util::ghlflow(dir.path(), &["recipe", "pause", "capsule-people"]);
    assert!(paused.status.success(), "{}", crate::util::stderr(&paused));
    assert!(store.paused_since("capsule-people").await.unwrap().is_some(), "the pause is in the database");

    let generation = store.trigger_state("capsule-people").await.unwrap().map(|s| s.generation).unwrap_or(0);
    let reset = crate::util::ghlflow(dir.path(), &["trigger", "reset", "capsule-people"]);
    assert!(reset.status.success(), "{}", crate::util::stderr(&reset));
    let state = store.trigger_state("capsule-people").await.unwrap().expect("a trigger state");
    assert_eq!(state.generation, generation + 1, "the reset is in the database");

    let resumed = crate::util::ghlflow(dir.path(), &["recipe", "resume", "capsule-people"]);
    assert!(resumed.status.success(), "{}", crate::util::stderr(&resumed));
    assert!(store.paused_since("capsule-people").await.unwrap().is_none());
    assert!(worker.running(), "the worker kept running:\n{}", worker.tail());
    worker.stop();
    sandbox.shutdown().await;
}

/// The store side of the bug the kill -9 test found: a waiting run a dead worker created,
/// started again by another worker (the recipe's new holder), is that worker's. A third
/// worker's heartbeat must not claim it as an orphan while it runs, or both send its steps.
#[tokio::test]
async fn a_run_started_again_by_a_live_worker_is_not_claimed_by_another() {
    let Some(url) = database().await else { return };
    let (dead, holder, other) = (connect(&url).await, connect(&url).await, connect(&url).await);
    // Created by a worker that never beats again (it died).
    dead.heartbeat(LEASE_TTL).await.unwrap();
    let id = dead.next_run_id();
    let created = chrono::Utc::now().to_rfc3339();
    let run = RunRecord::new(id.clone(), "capsule-notes", RunStatus::Waiting, "1", json!({"id": 1}), created);
    dead.create_runs(&[run]).await.unwrap();
    tokio::time::sleep(LEASE_TTL + Duration::from_millis(200)).await;

    holder.heartbeat(LEASE_TTL).await.unwrap();
    other.heartbeat(LEASE_TTL).await.unwrap();
    let mut run = holder.run(&id).await.unwrap().unwrap();
    holder.transition(&mut run, RunStatus::Running).await.unwrap();
    let claimed = other.claim_open_runs().await.unwrap();
    assert!(claimed.iter().all(|r| r.id != id), "a run the holder is executing was claimed as an orphan");

    // Once the holder is gone too, the run is an orphan: claimed by exactly one worker.
    tokio::time::sleep(LEASE_TTL + Duration::from_millis(200)).await;
    other.heartbeat(LEASE_TTL).await.unwrap();
    let claimed = other.claim_open_runs().await.unwrap();
    assert_eq!(claimed.iter().filter(|r| r.id == id).count(), 1);
    assert!(holder.claim_open_runs().await.unwrap().iter().all(|r| r.id != id), "handed out twice");
}

/// A command that executes runs itself (`runs replay`, `runs release`) holds its worker lease
/// while it does, renewed past `lease_ttl`, so the runs it started are not taken for orphans;
/// it gives the lease back when done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_executing_runs_holds_its_worker_lease_until_it_is_done() {
    let Some(url) = database().await else { return };
    let catalog = Arc::new(ghlflow::catalog::load_embedded().unwrap());
    let yaml = format!(
        "connections:\n  capsule: {{ app: capsule, auth: {{ type: bearer, token: t }} }}\nstate: {url}\nlease_ttl: {}s\n",
        LEASE_TTL.as_secs()
    );
    let config = Arc::new(Config::parse(&yaml, Path::new("/nonexistent/ghlflow.yaml"), &catalog, &|_| None).unwrap());
    let store = connect(&url).await;
    let engine = Arc::new(
        ghlflow::engine::Engine::with_store(catalog, config, store.clone(), ghlflow::engine::EngineOptions::default())
            .unwrap(),
    );
    let own = format!("worker:{}", store.worker());
    let live = |leases: Vec<LeaseInfo>| leases.iter().any(|l| l.name == own && l.expires_at_ms > now_ms());

    let alive = engine.keep_alive(ghlflow::engine::Role::Command).await;
    tokio::time::sleep(LEASE_TTL * 2).await;
    assert!(live(store.leases().await.unwrap()), "the lease lapsed while the command ran");
    drop(alive);
    engine.leave().await;
    assert!(!live(store.leases().await.unwrap()), "the lease outlived the command");
}
