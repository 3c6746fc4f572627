//! The long-running loop of `ghlflow run`: one due-queue for every recipe, with jitter so
//! that many recipes on the same interval spread out, bounded poll concurrency, recipes
//! picked up from disk while running, and a clean stop on SIGINT or SIGTERM.
//!
//! A recipe is never polled again while its previous poll (and the runs it queued) is still
//! going; its next poll is then due one period later. Open runs left by an earlier process
//! are resumed first. Lateness (how long after its due time a poll started) is kept for
//! the scheduler bench.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Engine;
use crate::recipe::{Recipe, Schedule, compile_recipe};

/// How often the recipes folder is checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// How often automatic replays and history pruning are looked at.
const MAINTAIN_EVERY: Duration = Duration::from_secs(30);
/// How often `ghlflow run` checks its Capsule REST hooks are still there (one removed by hand
/// comes back), as often as an instant trigger's safety-net poll.
const RESUBSCRIBE_EVERY: Duration = Duration::from_secs(15 * 60);
/// The scheduler's loop turns at least this often, so `/readyz` can tell it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// How long a GHL delivery id is remembered: twice the window in which a delivery's
/// timestamp is accepted, so a replay is refused as stale or as seen, never run.
const DELIVERY_IDS_KEPT: Duration = Duration::from_secs(4 * 5 * 60);
/// Polls in flight at once.
const MAX_CONCURRENT_POLLS: usize = 256;

/// Poll lateness samples, in microseconds.
#[derive(Debug, Default)]
pub struct Lateness(Mutex<Vec<u64>>);

impl Lateness {
    fn record(&self, late: Duration) {
        crate::metrics::metrics().poll_late(late);
        if let Ok(mut v) = self.0.lock() {
            v.push(late.as_micros() as u64);
        }
    }

    /// All samples so far, sorted.
    pub fn sorted(&self) -> Vec<u64> {
        let mut v = self.0.lock().map(|v| v.clone()).unwrap_or_default();
        v.sort_unstable();
        v
    }
}

/// Runs until `shutdown` resolves. `recipes_dir` is watched when given.
pub async fn run(
    engine: Arc<Engine>,
    recipes_dir: Option<PathBuf>,
    lateness: Arc<Lateness>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tasks: JoinSet<String> = JoinSet::new();
    let polls = Arc::new(Semaphore::new(MAX_CONCURRENT_POLLS));

    // Join the workers on this store: the first heartbeat counts them and claims the open
    // runs no live worker owns (those an earlier process left), which are resumed first.
    let alive = engine.keep_alive(super::Role::Scheduler).await;

    let mut due: BTreeSet<(Instant, String)> = BTreeSet::new();
    let mut due_of: HashMap<String, Instant> = HashMap::new();
    let mut busy: HashSet<String> = HashSet::new();
    // Due recipes whose `after:` recipes were still polling: started when those finish.
    let mut deferred: BTreeSet<String> = BTreeSet::new();
    let now = Instant::now();
    for recipe in engine.recipes() {
        let first = initial_jitter(&recipe);
        tracing::info!(
            recipe = %recipe.id,
            schedule = %describe(&recipe.trigger.schedule),
            first_poll_in = %format!("{}s", first.as_secs()),
            after = %recipe.after.join(","),
            "recipe loaded"
        );
        let at = now + first;
        due.insert((at, recipe.id.clone()));
        due_of.insert(recipe.id.clone(), at);
    }
    let mut watched = recipes_dir.as_deref().map(snapshot).unwrap_or_default();
    let mut reload = tokio::time::interval(RELOAD_EVERY);
    let mut maintain = tokio::time::interval(MAINTAIN_EVERY);
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut resubscribe = tokio::time::interval_at(Instant::now() + RESUBSCRIBE_EVERY, RESUBSCRIBE_EVERY);

    loop {
        engine.health().beat();
        let next_due = due.first().map(|(t, _)| *t);
        tokio::select! {
            _ = &mut shutdown => break,
            // Stopped from elsewhere (a test, the engine's owner): the same clean stop.
            _ = engine.stopped() => break,
            _ = async { match next_due { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                let now = Instant::now();
                let mut starting: Vec<(Instant, String)> = Vec::new();
                while let Some((t, id)) = due.first().cloned() {
                    if t > now { break; }
                    due.pop_first();
                    due_of.remove(&id);
                    let Some(recipe) = engine.recipe(&id) else { continue };
                    let period = recipe.trigger.schedule.period();
                    let next = next_due_after(&recipe, t, period);
                    due.insert((next, id.clone()));
                    due_of.insert(id.clone(), next);
                    starting.push((t, id));
                }
                // Dependencies first: a recipe whose `after:` recipes are polling (or start
                // now) waits for them to finish, in the same tick.
                // Ranking walks every recipe: only when a starting recipe waits for another.
                if starting.iter().any(|(_, id)| engine.recipe(id).is_some_and(|r| !r.after.is_empty())) {
                    let order = rank(&engine);
                    starting.sort_by_key(|(_, id)| order.get(id).copied().unwrap_or(0));
                }
                for (t, id) in starting {
                    if busy.contains(&id) {
                        continue; // still busy with the last poll: skip this one
                    }
                    lateness.record(now.saturating_duration_since(t));
                    if waits_for_busy(&engine, &id, &busy) {
                        deferred.insert(id);
                    } else {
                        start_poll(&engine, &id, &polls, &mut busy, &mut tasks);
                    }
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(id) = done { busy.remove(&id); }
                let ready: Vec<String> =
                    deferred.iter().filter(|id| !waits_for_busy(&engine, id, &busy)).cloned().collect();
                for id in ready {
                    deferred.remove(&id);
                    if !busy.contains(&id) {
                        start_poll(&engine, &id, &polls, &mut busy, &mut tasks);
                    }
                }
            }
            _ = reload.tick(), if recipes_dir.is_some() => {
                if let Some(dir) = &recipes_dir {
                    let now_files = snapshot(dir);
                    if now_files != watched {
                        let listened = super::subscriptions::needed_events(&engine);
                        apply_changes(&engine, dir, &watched, &now_files, &mut due, &mut due_of);
                        watched = now_files;
                        // The Capsule events the recipes listen for changed: subscribe and
                        // unsubscribe REST hooks to match, without holding up the polls.
                        if super::subscriptions::needed_events(&engine) != listened {
                            let engine = Arc::clone(&engine);
                            tasks.spawn(async move {
                                super::subscriptions::reconcile_and_log(&engine).await;
                                String::new()
                            });
                        }
                    }
                }
            }
            _ = maintain.tick() => maintain_once(&engine, &mut tasks),
            // Only under `ghlflow run` (which watches the folder and subscribed at its start).
            _ = resubscribe.tick(), if recipes_dir.is_some() => {
                if !super::subscriptions::needed_events(&engine).is_empty() {
                    let engine = Arc::clone(&engine);
                    tasks.spawn(async move {
                        super::subscriptions::reconcile_and_log(&engine).await;
                        String::new()
                    });
                }
            }
            _ = heartbeat.tick() => {}
        }
    }

    // Stop: no new polls, no new runs; the runs in flight finish their steps, within a limit.
    engine.stop();
    tracing::info!(in_flight = tasks.len(), "stopping: finishing the runs in flight; runs not started stay queued");
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), drain).await.is_err() {
        tracing::warn!("in-flight work did not finish within 30 s; unfinished runs resume at the next start");
    }
    let _ = engine.store.flush_async().await;
    // Hand the recipes over at once rather than when the leases lapse.
    drop(alive);
    engine.leave().await;
}

/// A schedule as a person writes it: `every 5m` or `cron 0 */5 * * * (UTC)`.
fn describe(schedule: &Schedule) -> String {
    match schedule {
        Schedule::Every(d) => format!("every {}", humantime::format_duration(*d)),
        Schedule::Cron { source, timezone, .. } => format!("cron {source} ({timezone})"),
    }
}

/// Spawns one recipe's poll and runs; its id comes back when it is done.
fn start_poll(
    engine: &Arc<Engine>,
    id: &str,
    polls: &Arc<Semaphore>,
    busy: &mut HashSet<String>,
    tasks: &mut JoinSet<String>,
) {
    let Some(recipe) = engine.recipe(id) else { return };
    busy.insert(id.to_owned());
    let engine = Arc::clone(engine);
    let polls = Arc::clone(polls);
    tasks.spawn(async move {
        // Paused (`recipe pause`): its turn passes without a poll.
        if engine.is_paused(&recipe.id).await.unwrap_or(false) {
            return recipe.id.clone();
        }
        // Another worker on the store polls it (or polled it less than a period ago).
        match engine.take_recipe(&recipe).await {
            Ok(true) => {}
            Ok(false) => return recipe.id.clone(),
            Err(e) => {
                tracing::warn!(recipe = %recipe.id, error = %e, "could not take the recipe's lease; it is not polled this turn");
                return recipe.id.clone();
            }
        }
        let _slot = polls.acquire().await.ok();
        engine.health().poll_started(&recipe.id);
        // A panic below is caught (and the runs it left open failed), so this task still
        // returns the recipe id and `busy` is cleared.
        let tick = engine.poll_and_run_guarded(&recipe).await;
        if let Err(e) = &tick.poll {
            tracing::warn!(recipe = %recipe.id, error = %e, "poll failed; the next poll tries again");
            record_poll_error(&engine, &recipe.id, &e.to_string()).await;
        }
        for result in tick.runs {
            if let Err(e) = result {
                tracing::warn!(recipe = %recipe.id, error = %e, "run could not execute");
            }
        }
        engine.health().poll_done(&recipe.id);
        recipe.id.clone()
    });
}

/// Whether one of the recipe's `after:` recipes is polling now.
fn waits_for_busy(engine: &Engine, id: &str, busy: &HashSet<String>) -> bool {
    engine.recipe(id).is_some_and(|r| r.after.iter().any(|d| busy.contains(d)))
}

/// Each recipe's wave (0 for recipes that wait for none), for ordering a tick.
fn rank(engine: &Engine) -> HashMap<String, usize> {
    match crate::recipe::poll_order(&engine.recipes()) {
        Ok(waves) => waves.into_iter().enumerate().flat_map(|(i, w)| w.into_iter().map(move |id| (id, i))).collect(),
        Err(_) => HashMap::new(),
    }
}

/// First poll: somewhere in the first period, at a place fixed by the recipe id, so a
/// thousand recipes on `every: 5m` spread over the five minutes. A recipe with `after:`
/// takes the place of the first recipe it waits for, so that on the same schedule both
/// fall in the same tick and it polls right after it.
fn initial_jitter(recipe: &Recipe) -> Duration {
    let period = recipe.trigger.schedule.period().max(Duration::from_secs(1));
    let key = recipe.after.first().unwrap_or(&recipe.id);
    match &recipe.trigger.schedule {
        Schedule::Every(_) => Duration::from_millis(stable_hash(key) % period.as_millis().max(1) as u64),
        Schedule::Cron { .. } => until_next_cron(recipe) + cron_jitter(recipe, period),
    }
}

fn next_due_after(recipe: &Recipe, previous: Instant, period: Duration) -> Instant {
    match &recipe.trigger.schedule {
        Schedule::Every(_) => {
            let next = previous + period;
            let now = Instant::now();
            if next < now { now } else { next }
        }
        Schedule::Cron { .. } => Instant::now() + until_next_cron(recipe) + cron_jitter(recipe, period),
    }
}

fn until_next_cron(recipe: &Recipe) -> Duration {
    let now = chrono::Utc::now();
    let next = recipe.trigger.schedule.next_after(now);
    (next - now).to_std().unwrap_or_default()
}

/// Cron polls spread over at most a tenth of their period (and 30 s).
fn cron_jitter(recipe: &Recipe, period: Duration) -> Duration {
    let spread = (period / 10).min(Duration::from_secs(30)).as_millis().max(1) as u64;
    Duration::from_millis(stable_hash(&recipe.id) % spread)
}

fn stable_hash(text: &str) -> u64 {
    // FNV-1a: stable across runs and builds, which std's hasher is not.
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

async fn record_poll_error(engine: &Engine, recipe: &str, error: &str) {
    if let Ok(Some(mut state)) = engine.store.trigger_state(recipe).await {
        state.last_error = Some(error.to_owned());
        let _ = engine.store.save_trigger_state(recipe, &state).await;
    }
}

/// Automatic replays that are due, and history past its retention.
fn maintain_once(engine: &Arc<Engine>, tasks: &mut JoinSet<String>) {
    let now = crate::http::auth::unix_now();
    let replays = Arc::clone(engine);
    tasks.spawn(async move {
        // Each recipe's failed runs are replayed by the worker polling it.
        for result in replays.replay_due(now, |recipe| replays.holds_recipe(recipe)).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "automatic replay failed to start");
            }
        }
        String::new()
    });
    // Delivery ids outlive the window in which their timestamps are accepted, and no more.
    let deliveries = Arc::clone(engine);
    tasks.spawn(async move {
        let before = now.saturating_sub(DELIVERY_IDS_KEPT.as_secs());
        if let Err(e) = deliveries.store.prune_deliveries(before).await {
            tracing::warn!(error = %e, "could not prune old delivery ids");
        }
        String::new()
    });
    let cutoff = SystemTime::now()
        .checked_sub(engine.config.retention)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
    if let Some(cutoff) = cutoff {
        let engine = Arc::clone(engine);
        tasks.spawn(async move {
            if let Ok(n) = engine.store.prune_runs(cutoff.as_millis() as u64).await
                && n > 0
            {
                tracing::info!(pruned = n, "pruned run history past its retention");
            }
            String::new()
        });
    }
}

type Snapshot = BTreeMap<PathBuf, (SystemTime, u64)>;

fn snapshot(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                && let Ok(m) = e.metadata()
            {
                out.insert(p, (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            }
        }
    }
    out
}

/// Recompiles changed recipe files; a file that no longer compiles keeps its old version.
fn apply_changes(
    engine: &Arc<Engine>,
    _dir: &Path,
    before: &Snapshot,
    after: &Snapshot,
    due: &mut BTreeSet<(Instant, String)>,
    due_of: &mut HashMap<String, Instant>,
) {
    let id_of = |p: &Path| p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        let id = id_of(path);
        engine.remove_recipe(&id);
        if let Some(t) = due_of.remove(&id) {
            due.remove(&(t, id.clone()));
        }
        tracing::info!(recipe = %id, "recipe removed");
    }
    for (path, stamp) in after {
        if before.get(path) == Some(stamp) {
            continue;
        }
        let id = id_of(path);
        // Bounded, regular files only: a link to /dev/zero or a FIFO must not stop the engine.
        let text = match crate::fsread::read_text(path) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(recipe = %id, problem = %e, "recipe cannot be read; keeping the previous version");
                continue;
            }
        };
        if after.keys().any(|p| p != path && id_of(p) == id) {
            tracing::error!(recipe = %id, "two files give this recipe id (.yaml and .yml); keeping the previous version");
            continue;
        }
        match compile_recipe(
            &path.display().to_string(),
            &id,
            &text,
            &engine.catalog,
            &engine.config,
            &crate::config::process_env,
        ) {
            Ok(recipe) => {
                let schedule_changed = engine
                    .recipe(&id)
                    .is_none_or(|old| old.trigger.schedule.period() != recipe.trigger.schedule.period());
                let recipe_arc = Arc::new(recipe);
                engine.upsert_recipe((*recipe_arc).clone());
                if schedule_changed {
                    if let Some(t) = due_of.remove(&id) {
                        due.remove(&(t, id.clone()));
                    }
                    let at = Instant::now() + initial_jitter(&recipe_arc);
                    due.insert((at, id.clone()));
                    due_of.insert(id.clone(), at);
                }
                tracing::info!(recipe = %id, "recipe loaded");
            }
            Err(d) => tracing::error!(recipe = %id, problems = %d, "recipe has problems; keeping the previous version"),
        }
    }
}
