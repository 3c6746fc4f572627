//! Sharing the work with other `ghlflow run` processes on the same state store.
//!
//! Coordination is by leases in the store, renewed by a heartbeat, and nothing else (no
//! coordinator process): each worker holds `worker:<name>` while it lives, and
//! `recipe:<id>` for each recipe it polls. A recipe's lease is sticky: its holder keeps
//! polling it, on its schedule, and alone replays its failed runs and resumes its waiting
//! ones. Each worker takes at most its fair share (`ceil(recipes / live workers)`) and gives
//! back what is over it when more workers join, so the recipes spread out.
//!
//! Why leases rather than row locks (`SKIP LOCKED`) or advisory locks for a recipe: a poll
//! can take hours (a backfill within GHL's rate limits), and both kinds of lock live in an
//! open transaction or session, which would pin one pooled connection per recipe and tie the
//! lock to that connection's fate rather than the worker's. A lease is a row with an expiry
//! read from the database's clock: it survives a dropped connection, lapses on its own within
//! `lease_ttl` when its worker dies (kill -9, a lost machine), and can be listed. (Runs are
//! handed out with `SKIP LOCKED`, inside the store: that is one short statement.)
//!
//! Open runs belong to the worker that created or claimed them. A worker whose lease lapsed
//! leaves its queued and running runs to whoever claims them first (`claim_open_runs`), which
//! resumes each at its first unfinished step.
//!
//! On sled only one process opens the store, so it is the only worker, holds every recipe,
//! and claims the runs an earlier process left open once, at its start: the same code.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Engine, EngineError};
use crate::recipe::Recipe;
use crate::store::RunRecord;

/// What this process holds among the workers.
#[derive(Debug, Default)]
pub struct Workers {
    /// Recipes whose lease this worker took and has not given back.
    held: Mutex<HashSet<String>>,
    /// Live pollers (`ghlflow run` schedulers) at the last heartbeat, this one included if
    /// it polls; at least 1.
    live: AtomicUsize,
}

/// What a process does among the workers, which decides what its heartbeat does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `ghlflow run`: polls its share of the recipes, resumes orphaned runs, gives back
    /// recipes over its share. Holds `poller:<name>`, so the others count it in the shares.
    Scheduler,
    /// `ghlflow run --once`: resumes orphaned runs, polls the recipes it could take, leaves.
    Once,
    /// A command or `ghlflow serve` that may execute runs (a replay, a release): it only
    /// keeps its own runs from looking orphaned while it executes them.
    Command,
}

/// The prefix of the leases that say a `ghlflow run` scheduler is alive (`poller:<name>`).
const POLLER: &str = "poller:";

/// The lease of a recipe's poll.
fn recipe_lease(recipe: &str) -> String {
    format!("recipe:{recipe}")
}

impl Engine {
    /// How long this worker's leases last without a heartbeat.
    pub fn lease_ttl(&self) -> Duration {
        self.config.lease_ttl
    }

    /// One heartbeat: renews this worker's leases, counts the live pollers, and (unless a
    /// mere command) claims the open runs no live worker owns, returned for the caller to
    /// resume.
    pub async fn heartbeat(&self, role: Role) -> Result<Vec<RunRecord>, EngineError> {
        let worker = self.store.worker().to_owned();
        if role == Role::Scheduler {
            self.store.acquire_lease(&format!("{POLLER}{worker}"), &worker, self.lease_ttl()).await?;
        }
        let live = self.store.heartbeat(self.lease_ttl()).await?;
        crate::metrics::metrics().set_live_workers(live);
        if role == Role::Command {
            return Ok(Vec::new());
        }
        let now = crate::http::auth::unix_now() * 1000;
        let pollers =
            self.store.leases().await?.iter().filter(|l| l.name.starts_with(POLLER) && l.expires_at_ms > now).count();
        self.workers.live.store(pollers.max(1), Ordering::Relaxed);
        Ok(self.store.claim_open_runs().await?)
    }

    /// Recipes per worker when the work is shared evenly.
    fn fair_share(&self) -> usize {
        let recipes = self.recipes().len();
        let live = self.workers.live.load(Ordering::Relaxed).max(1);
        recipes.div_ceil(live).max(1)
    }

    /// Whether this worker is to poll `recipe` now. It keeps (renews) a lease it holds; it
    /// takes a free one only within its fair share, and then only if no other worker polled
    /// the recipe in the last period (a lease changing hands must not poll twice).
    pub async fn take_recipe(&self, recipe: &Recipe) -> Result<bool, EngineError> {
        let name = recipe_lease(&recipe.id);
        let worker = self.store.worker().to_owned();
        let had = self.holds_recipe(&recipe.id);
        if !had && self.workers.held.lock().unwrap_or_else(|p| p.into_inner()).len() >= self.fair_share() {
            return Ok(false);
        }
        if !self.store.acquire_lease(&name, &worker, self.lease_ttl()).await? {
            self.workers.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&recipe.id);
            return Ok(false);
        }
        self.workers.held.lock().unwrap_or_else(|p| p.into_inner()).insert(recipe.id.clone());
        if !had && let Some(state) = self.store.trigger_state(&recipe.id).await? {
            let period = recipe.trigger.schedule.period().as_secs();
            let now = crate::http::auth::unix_now();
            if state.last_poll.is_some_and(|at| at + period > now + 1) {
                tracing::info!(recipe = %recipe.id, "took over the recipe; it was polled less than a period ago");
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// `run --once`: whether this worker may poll `recipe`, i.e. no other live worker holds it
    /// (asked for explicitly, so neither the fair share nor the last poll's time matter).
    pub async fn take_recipe_once(&self, recipe: &str) -> Result<bool, EngineError> {
        let taken = self.store.acquire_lease(&recipe_lease(recipe), self.store.worker(), self.lease_ttl()).await?;
        if taken {
            self.workers.held.lock().unwrap_or_else(|p| p.into_inner()).insert(recipe.to_owned());
        }
        Ok(taken)
    }

    /// Beats every third of `lease_ttl` until the engine stops or the handle is dropped:
    /// renews the leases, resumes the runs each beat claims (in the background, so a long
    /// resume never delays the next beat), and gives back recipes over the fair share. The
    /// first beat is done before this returns, so the live workers are counted before any
    /// recipe is taken. What a beat does besides renewing depends on `role`.
    pub async fn keep_alive(self: &Arc<Self>, role: Role) -> KeepAlive {
        self.beat_once(role).await;
        let engine = Arc::clone(self);
        let task = tokio::spawn(async move {
            let every = engine.lease_ttl() / 3;
            loop {
                tokio::select! {
                    _ = engine.stopped() => break,
                    _ = tokio::time::sleep(every) => engine.beat_once(role).await,
                }
            }
        });
        KeepAlive(task)
    }

    async fn beat_once(self: &Arc<Self>, role: Role) {
        match self.heartbeat(role).await {
            Ok(claimed) => {
                self.health.store_answered(None);
                if !claimed.is_empty() {
                    tracing::info!(runs = claimed.len(), "resuming open runs no live worker owns");
                    let engine = Arc::clone(self);
                    tokio::spawn(async move { engine.resume(claimed).await });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed: the leases may lapse and other workers take over");
                self.health.store_answered(Some(e.to_string()));
                return;
            }
        }
        if role == Role::Scheduler {
            self.give_back_extra(&self.health.polling_now()).await;
        }
    }

    /// Executes claimed open runs in order; a paused recipe's runs wait for `recipe resume`.
    async fn resume(&self, runs: Vec<RunRecord>) {
        for run in runs {
            if self.is_stopping() {
                break; // the rest stay open for the next claim
            }
            if self.is_paused(&run.recipe).await.unwrap_or(false) {
                continue;
            }
            if let Err(e) = self.execute_run(&run.id).await {
                tracing::warn!(run = %run.id, error = %e, "could not resume a run");
            }
        }
    }

    /// Whether this worker holds `recipe`'s lease (as far as it knows).
    pub fn holds_recipe(&self, recipe: &str) -> bool {
        self.workers.held.lock().unwrap_or_else(|p| p.into_inner()).contains(recipe)
    }

    /// Gives back the recipes over this worker's fair share, leaving those in `busy`
    /// (polling now) for a later heartbeat. Returns those given back.
    pub async fn give_back_extra(&self, busy: &HashSet<String>) -> Vec<String> {
        let fair = self.fair_share();
        let extra: Vec<String> = {
            let held = self.workers.held.lock().unwrap_or_else(|p| p.into_inner());
            let mut idle: Vec<String> = held.iter().filter(|r| !busy.contains(*r)).cloned().collect();
            idle.sort();
            idle.into_iter().take(held.len().saturating_sub(fair)).collect()
        };
        let mut given = Vec::new();
        for recipe in extra {
            if let Err(e) = self.store.release_lease(&recipe_lease(&recipe), self.store.worker()).await {
                tracing::warn!(recipe = %recipe, error = %e, "could not give a recipe back");
                continue;
            }
            self.workers.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&recipe);
            given.push(recipe);
        }
        if !given.is_empty() {
            tracing::info!(recipes = %given.join(","), "gave recipes back to share them with the other workers");
        }
        given
    }

    /// Gives every lease back (a clean stop), so other workers take over at once rather than
    /// after `lease_ttl`.
    pub async fn leave(&self) {
        let held: Vec<String> = self.workers.held.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        let worker = self.store.worker().to_owned();
        for recipe in held {
            let _ = self.store.release_lease(&recipe_lease(&recipe), &worker).await;
        }
        let _ = self.store.release_lease(&format!("{POLLER}{worker}"), &worker).await;
        let _ = self.store.release_lease(&format!("worker:{worker}"), &worker).await;
    }
}

/// The heartbeat task of `keep_alive`: it stops when this is dropped.
#[derive(Debug)]
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}
