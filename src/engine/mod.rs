//! The engine: polls recipes' triggers, turns new items into runs, and executes runs step
//! by step, recording each in the state store so that nothing is lost or done twice.
//!
//! `poll` reads a trigger's feed and decides which items are new (dedupe, baseline, hold);
//! `execute` runs one item through a recipe's steps, resuming at the first unfinished step;
//! `scheduler` decides when each recipe polls and keeps the process running. The engine
//! sends requests only through `http` and keeps state only through `store`.

mod execute;
mod guard;
pub mod health;
mod history;
pub mod intake;
mod lookups;
mod plan;
mod poll;
mod queries;
mod render;
pub mod scheduler;
pub mod subscriptions;
mod workers;
pub use workers::Role;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

pub use execute::RunOutcome;
pub use plan::Plan;
pub use poll::PollOutcome;
pub use queries::{RECENT_READ_LIMIT, RecipeOverview, RunsPage, StatusCounts};
pub use render::StepError;

use crate::catalog::Catalog;
use crate::config::{Config, Connection};
use crate::http::HttpClient;
use crate::recipe::Recipe;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("recipe `{recipe}`: {message}")]
    Poll { recipe: String, message: String },
    #[error("no recipe `{0}` is loaded")]
    UnknownRecipe(String),
    #[error("no run `{0}`")]
    UnknownRun(String),
    #[error("{0}")]
    Refused(String),
}

/// Options that change what the engine does.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Poll and render, print what would be sent, send no write and record nothing.
    pub dry_run: bool,
}

/// Everything a running ghlflow shares.
#[derive(Debug)]
pub struct Engine {
    catalog: Arc<Catalog>,
    config: Arc<Config>,
    client: Arc<HttpClient>,
    store: Store,
    options: EngineOptions,
    recipes: RwLock<BTreeMap<String, Arc<Recipe>>>,
    lookup_cache: lookups::LookupCache,
    /// Told of runs as they are queued and finished (a progress bar on a terminal).
    progress: std::sync::OnceLock<Arc<dyn RunProgress>>,
    /// Cancelled when the process is asked to stop: polls drop what they read, and runs not
    /// started stay queued for the next start (runs in flight finish).
    stopping: tokio_util::sync::CancellationToken,
    /// What `/readyz` reports.
    health: health::Health,
    /// The leases this process holds among the workers sharing the store.
    workers: workers::Workers,
}

/// Something that follows a poll's runs: how many are queued, how many are done.
pub trait RunProgress: Send + Sync + std::fmt::Debug {
    fn queued(&self, runs: usize);
    fn finished(&self, runs: usize);
}

impl Engine {
    /// The engine of a configuration: its state store opened (created if missing), its
    /// HTTP client. A dry run writes nothing, so without a state folder yet it plans against
    /// an empty scratch store rather than creating one.
    pub async fn open(
        catalog: Arc<Catalog>,
        config: Arc<Config>,
        options: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let store = if options.dry_run && config.state.is_new_folder() {
            Store::temporary()?
        } else {
            Store::connect(&config.state).await?
        };
        Engine::with_store(catalog, config, store, options)
    }

    /// The engine over a store already open (a scratch one, or one shared with a test).
    pub fn with_store(
        catalog: Arc<Catalog>,
        config: Arc<Config>,
        store: Store,
        options: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let client = HttpClient::new(Some(store.clone()), config.redactor.clone())
            .map_err(|e| EngineError::Refused(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Engine {
            catalog,
            config,
            client: Arc::new(client),
            store,
            options,
            recipes: RwLock::default(),
            lookup_cache: Default::default(),
            progress: Default::default(),
            stopping: Default::default(),
            health: Default::default(),
            workers: Default::default(),
        })
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The HTTP client the engine sends through (its rate budgets and tokens).
    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// The state store, for reading what the engine recorded (tests and tools). Changes go
    /// through the engine's own methods (`reset_trigger`, `release`, `replay`...).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    pub fn health(&self) -> &health::Health {
        &self.health
    }

    /// How many runs of `recipe` are held for release.
    pub async fn held_runs(&self, recipe: &str) -> Result<usize, EngineError> {
        // Counted from the (recipe, status) index: no run is read.
        Ok(self.store.runs_page(Some(recipe), Some(crate::store::RunStatus::Held), 0).await?.1)
    }

    /// What keeps the engine from doing its work (for `/readyz`); empty when ready.
    pub fn readiness(&self) -> Vec<String> {
        let mut problems = self.health.problems(std::time::Instant::now());
        if let Err(e) = self.store.format() {
            problems.insert(0, format!("the state store does not answer: {e}"));
        }
        if self.is_stopping() {
            problems.insert(0, "stopping".to_owned());
        }
        problems
    }

    /// Asks every poll and run to stop (SIGTERM): see `stopping`.
    pub fn stop(&self) {
        self.stopping.cancel();
    }

    /// Resolves once `stop` was called.
    pub async fn stopped(&self) {
        self.stopping.cancelled().await;
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Follows the runs with `progress` from now on (once per engine).
    pub fn set_progress(&self, progress: Arc<dyn RunProgress>) {
        let _ = self.progress.set(progress);
    }

    /// Replaces the loaded recipes.
    pub fn set_recipes(&self, recipes: Vec<Recipe>) {
        let map = recipes.into_iter().map(|r| (r.id.clone(), Arc::new(r))).collect();
        *self.recipes.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    pub fn upsert_recipe(&self, recipe: Recipe) {
        self.recipes.write().unwrap_or_else(|p| p.into_inner()).insert(recipe.id.clone(), Arc::new(recipe));
    }

    pub fn remove_recipe(&self, id: &str) {
        self.recipes.write().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    pub fn recipe(&self, id: &str) -> Option<Arc<Recipe>> {
        self.recipes.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    pub fn recipes(&self) -> Vec<Arc<Recipe>> {
        self.recipes.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// `trigger reset`: the recipe's trigger forgets what it has seen and starts again, with
    /// a new baseline, or (with `cursor`, an ISO 8601 instant) from that time on. A poll of
    /// the recipe in flight meanwhile records nothing: the reset wins.
    pub async fn reset_trigger(&self, recipe: &Recipe, cursor: Option<String>) -> Result<(), EngineError> {
        let state = crate::store::TriggerState {
            fingerprint: recipe.trigger.fingerprint.clone(),
            baselined: cursor.is_some(),
            cursor,
            ..Default::default()
        };
        Ok(self.store.reset_trigger(&recipe.id, state).await?)
    }

    /// Polls every recipe once and drains every open run: `run --once`. Recipes poll in the
    /// order their `after:` keys give (the same waves `ghlflow run` uses within a tick).
    pub async fn run_once(self: &Arc<Self>, only: &[String]) -> OnceSummary {
        let mut summary = OnceSummary::default();
        // Runs left open by an earlier process (crash recovery) first, in order: those no
        // live worker owns, claimed by the first heartbeat.
        let mut alive = None;
        if !self.options.dry_run {
            match self.heartbeat(Role::Once).await {
                Ok(runs) => {
                    for run in
                        runs.into_iter().filter(|r| r.status.is_open() && (only.is_empty() || only.contains(&r.recipe)))
                    {
                        if self.is_paused(&run.recipe).await.unwrap_or(false) {
                            continue;
                        }
                        summary.add_run(self.execute_run(&run.id).await);
                    }
                }
                Err(e) => summary.errors.push(e.to_string()),
            }
            alive = Some(self.keep_alive(Role::Once).await);
        }
        // A paused recipe is not polled (`recipe pause`), nor one another worker polls.
        let mut recipes: Vec<Arc<Recipe>> = Vec::new();
        for r in self.recipes().into_iter().filter(|r| only.is_empty() || only.contains(&r.id)) {
            if self.is_paused(&r.id).await.unwrap_or(false) {
                continue;
            }
            if !self.options.dry_run && !self.take_recipe_once(&r.id).await.unwrap_or(false) {
                tracing::info!(recipe = %r.id, "another worker polls this recipe; left to it");
                continue;
            }
            recipes.push(r);
        }
        let waves = crate::recipe::poll_order(&recipes)
            .unwrap_or_else(|_| vec![recipes.iter().map(|r| r.id.clone()).collect()]);
        for wave in waves {
            let mut tasks = Vec::new();
            for id in wave {
                let Some(recipe) = self.recipe(&id) else { continue };
                let engine = Arc::clone(self);
                tasks.push(tokio::spawn(async move { engine.poll_and_run_guarded(&recipe).await }));
            }
            for t in tasks {
                match t.await {
                    Ok(tick) => {
                        match tick.poll {
                            Ok(o) => summary.polls.push(o),
                            Err(e) => summary.errors.push(e.to_string()),
                        }
                        for r in tick.runs {
                            summary.add_run(r);
                        }
                    }
                    Err(e) => summary.errors.push(format!("a poll task failed: {e}")),
                }
            }
        }
        if alive.take().is_some() {
            self.leave().await;
        }
        summary
    }

    /// One recipe's share of a tick, the same under `run` and `run --once`: poll, run what
    /// the poll queued (oldest first), then try again the runs that wait for an id (another
    /// recipe, polled earlier in the tick, may have recorded it by now).
    pub async fn poll_and_run(&self, recipe: &Arc<Recipe>) -> PollTick {
        let started = std::time::Instant::now();
        let poll = self.poll(recipe).await;
        if let Ok(o) = &poll
            && o.filtered > 0
            && !self.options.dry_run
        {
            // Runs the poll recorded as filtered, without executing them.
            crate::metrics::metrics().runs_ended(&recipe.id, "filtered", o.filtered as u64);
        }
        let mut runs = match &poll {
            Ok(o) => self.execute_runs(recipe, &o.queued).await,
            Err(_) => Vec::new(),
        };
        if !self.options.dry_run {
            // Runs this poll just set waiting wait for another recipe: not again right now.
            let just_ran: std::collections::HashSet<&crate::store::RunId> = match &poll {
                Ok(o) => o.queued.iter().collect(),
                Err(_) => Default::default(),
            };
            match self.store.waiting_runs(&recipe.id).await {
                Ok(waiting) if !waiting.is_empty() => {
                    let ids: Vec<crate::store::RunId> =
                        waiting.into_iter().map(|r| r.id).filter(|id| !just_ran.contains(id)).collect();
                    runs.extend(self.execute_runs(recipe, &ids).await);
                }
                Ok(_) => {}
                Err(e) => runs.push(Err(e.into())),
            }
        }
        let tick = PollTick { poll, runs };
        if !self.options.dry_run {
            tick.log(&recipe.id, started.elapsed());
        }
        tick
    }
}

/// What one recipe's poll and its runs gave.
#[derive(Debug)]
pub struct PollTick {
    pub poll: Result<PollOutcome, EngineError>,
    pub runs: Vec<Result<RunOutcome, EngineError>>,
}

impl PollTick {
    /// The one line a poll leaves in the log: new items and runs by how they ended.
    fn log(&self, recipe: &str, took: std::time::Duration) {
        use crate::store::RunStatus as S;
        let Ok(poll) = &self.poll else { return };
        let count = |s: S| self.runs.iter().filter(|r| r.as_ref().is_ok_and(|o| o.status == s)).count();
        tracing::info!(
            recipe,
            new = poll.new,
            gone = poll.gone,
            baseline = poll.baseline,
            succeeded = count(S::Succeeded),
            failed = count(S::Failed) + count(S::Unsure),
            filtered = count(S::Filtered) + poll.filtered,
            held = poll.held,
            waiting = count(S::Waiting),
            took = %format!("{:.2}s", took.as_secs_f64()),
            "polled"
        );
    }
}

type RunFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<RunOutcome, EngineError>> + Send + 'a>>;

impl Engine {
    /// Executes a poll's runs, oldest first, with at most the recipe's `concurrency` in flight.
    pub async fn execute_runs(
        &self,
        recipe: &Recipe,
        ids: &[crate::store::RunId],
    ) -> Vec<Result<RunOutcome, EngineError>> {
        use futures_util::StreamExt as _;
        // Each run's future is made when the stream pulls it, so a backfill of 200,000 items
        // holds `concurrency` futures, not 200,000. Owned ids and a boxed future: a closure
        // over borrowed items here trips the compiler's higher-ranked lifetime check once
        // the caller is spawned.
        if let Some(p) = self.progress.get() {
            p.queued(ids.len());
        }
        let start = |id: crate::store::RunId| -> RunFuture<'_> {
            Box::pin(async move {
                // Paused meanwhile (`recipe pause`): the run stays queued for `recipe resume`.
                if self.is_paused(&recipe.id).await.unwrap_or(false) {
                    let status = crate::store::RunStatus::Queued;
                    return Ok(RunOutcome { id, recipe: recipe.id.clone(), status, error: None });
                }
                let outcome = self.execute_run(&id).await;
                self.health.progress(&recipe.id);
                if let Some(p) = self.progress.get() {
                    p.finished(1);
                }
                outcome
            })
        };
        // Once the engine is stopping no run starts: those left stay queued for the next start.
        let not_stopping = |_: &crate::store::RunId| std::future::ready(!self.is_stopping());
        futures_util::stream::iter(ids.iter().cloned())
            .take_while(not_stopping)
            .map(start)
            .buffered(recipe.concurrency.get())
            .collect()
            .await
    }
}

/// What `run --once` did. A run executed twice (waiting, then resumed) counts once, as it
/// ended.
#[derive(Debug, Default)]
pub struct OnceSummary {
    pub polls: Vec<PollOutcome>,
    pub runs: Vec<RunOutcome>,
    pub errors: Vec<String>,
    positions: std::collections::HashMap<crate::store::RunId, usize>,
}

impl OnceSummary {
    fn add_run(&mut self, r: Result<RunOutcome, EngineError>) {
        match r {
            Ok(o) => match self.positions.get(&o.id) {
                Some(&i) => self.runs[i] = o,
                None => {
                    self.positions.insert(o.id.clone(), self.runs.len());
                    self.runs.push(o);
                }
            },
            Err(e) => self.errors.push(e.to_string()),
        }
    }

    /// Runs that ended in `status` (filtered ones include those the polls filtered out).
    pub fn count(&self, status: crate::store::RunStatus) -> usize {
        let at_poll = match status {
            crate::store::RunStatus::Filtered => self.polls.iter().map(|p| p.filtered).sum(),
            _ => 0,
        };
        self.runs.iter().filter(|r| r.status == status).count() + at_poll
    }
}

/// What templates see as `connection`: no credentials.
pub fn connection_view(c: &Connection) -> Value {
    json!({
        "name": c.name,
        "app": c.app.id,
        "location_id": c.location_id,
        "company_id": c.company_id,
        "base_url": c.base_url,
    })
}

/// What a recipe's templates see as `env` (read when the recipe was compiled).
pub fn env_view(recipe: &Recipe) -> Value {
    Value::Object(recipe.env.clone())
}

pub fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
