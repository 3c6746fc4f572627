//! `ghlflow demo`: the shipped recipes against an in-process sandbox, over a few compressed
//! cycles, with no account, token or network.
//!
//! A `Workspace` is a temporary folder with a ghlflow.yaml pointing at a sandbox, the
//! shipped recipes (embedded in the binary) and a state store; `cycle` is one `run --once`
//! (the recipes in the order their `after:` keys give, as `ghlflow run` polls them in a
//! tick), then the automatic replays that `ghlflow run` makes after their delays, with the
//! delays compressed. `change_the_world` edits the sandbox between cycles like people at work
//! would. The end-to-end tests drive the same workspace.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::engine::{Engine, EngineOptions, OnceSummary};
use crate::sandbox::{Sandbox, SandboxOptions};
use crate::store::RunStatus;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("{0}")]
    Setup(String),
}

/// A folder, a sandbox and an engine, wired together.
pub struct Workspace {
    pub sandbox: Sandbox,
    pub engine: Arc<Engine>,
    pub dir: tempfile::TempDir,
}

/// What one cycle did.
#[derive(Debug, Default, Clone)]
pub struct CycleReport {
    pub new_items: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub filtered: usize,
    pub held: usize,
    /// Runs waiting for an id another recipe records.
    pub waiting: usize,
    /// Failed runs replayed at the end of the cycle, and how many runs of the whole history
    /// are failed after that.
    pub replayed: usize,
    pub still_failed: usize,
    pub errors: Vec<String>,
    pub took: Duration,
}

impl Workspace {
    /// Starts a sandbox and sets up a folder with the shipped recipes against it.
    pub async fn new(options: SandboxOptions) -> Result<Workspace, DemoError> {
        let sandbox = crate::sandbox::start(options).await?;
        let dir = tempfile::tempdir().map_err(|e| DemoError::Setup(format!("cannot make a temporary folder: {e}")))?;
        let setup = |e: String| DemoError::Setup(e);
        // A port of its own for the listener (instant triggers), so workspaces side by side
        // (tests) do not share one.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| setup(format!("no free port for the listener: {e}")))?
            .port();
        let config = format!("{}listen: 127.0.0.1:{port}\n", sandbox.config_yaml());
        std::fs::write(dir.path().join("ghlflow.yaml"), config).map_err(|e| setup(e.to_string()))?;
        let recipes = dir.path().join("recipes");
        std::fs::create_dir(&recipes).map_err(|e| setup(e.to_string()))?;
        for file in crate::recipe::SHIPPED.files() {
            std::fs::write(recipes.join(file.path()), file.contents()).map_err(|e| setup(e.to_string()))?;
        }
        let catalog = Arc::new(crate::catalog::load_embedded().map_err(|d| setup(d.to_string()))?);
        let engine = Arc::new(engine_for(dir.path().join("ghlflow.yaml"), catalog).await?);
        let workspace = Workspace { sandbox, engine, dir };
        let settings = workspace.recipe_settings().await.map_err(setup)?;
        let recipes = crate::recipe::load_recipes(
            &workspace.engine.config().recipes_dir,
            workspace.engine.catalog(),
            workspace.engine.config(),
            &|name| settings.get(name).cloned().or_else(|| crate::config::process_env(name)),
        )
        .map_err(|d| setup(d.to_string()))?;
        workspace.engine.set_recipes(recipes);
        Ok(workspace)
    }

    /// The settings the shipped recipes take from the environment, found in the sandbox as
    /// a user finds them in GHL: the calendar that receives Capsule meetings
    /// (`ghlflow call ghl.calendars.list_calendars`) and a user to assign a meeting whose
    /// Capsule owner has no GHL user (`ghl.users.list_users_by_location`).
    async fn recipe_settings(&self) -> Result<std::collections::HashMap<&'static str, String>, String> {
        let calendars = self.ghl_call("ghl.calendars.list_calendars", json!({})).await?;
        let users = self.ghl_call("ghl.users.list_users_by_location", json!({})).await?;
        let first_id = |v: &Value, pointer: &str| v.pointer(pointer).and_then(Value::as_str).map(str::to_owned);
        let calendar = first_id(&calendars, "/calendars/0/id").ok_or("the sandbox has no calendar")?;
        let user = first_id(&users, "/users/0/id").ok_or("the sandbox has no GHL user")?;
        Ok([("GHL_CALENDAR_ID", calendar), ("GHL_DEFAULT_USER_ID", user)].into_iter().collect())
    }

    /// One cycle: `run --once`, then the automatic replays that are due once their delays
    /// (1, 2, 4 minutes) are skipped.
    pub async fn cycle(&self) -> CycleReport {
        let started = Instant::now();
        let mut report = CycleReport::default();
        let summary = self.engine.run_once(&[]).await;
        add(&mut report, &summary);
        for _ in 0..3 {
            let replays = self.engine.replay_due(u64::MAX, |_| true).await;
            if replays.is_empty() {
                break;
            }
            report.replayed += replays.len();
            report.errors.extend(replays.into_iter().filter_map(|r| r.err()).map(|e| e.to_string()));
        }
        report.still_failed =
            self.run_counts().await.iter().find(|(s, _)| *s == RunStatus::Failed).map_or(0, |(_, n)| *n);
        report.took = started.elapsed();
        report
    }

    /// Instant triggers, as `ghlflow run` takes them: the listener starts and the Capsule REST
    /// hooks the recipes need are subscribed (`listen::start`); then one person is edited in
    /// Capsule. Returns how long the edit took to reach GHL: from the edit to the end of the
    /// run the hook started (no poll runs meanwhile).
    pub async fn instant_edit(&self) -> Result<Duration, String> {
        crate::listen::start(&self.engine).await.map_err(|e| e.to_string())?;
        let subscribed = self.engine.hook_subscriptions().await.map_err(|e| e.to_string())?;
        if subscribed.is_empty() {
            return Err("no Capsule REST hook was subscribed".into());
        }
        let since = crate::engine::now_iso();
        let started = Instant::now();
        let edited = self.sandbox.capsule_edit_people(1);
        let id = edited.first().ok_or("no person to edit")?.to_string();
        while started.elapsed() < Duration::from_secs(10) {
            let (runs, _) = self.engine.history(Some("capsule-people"), None, 20).await.map_err(|e| e.to_string())?;
            let done = runs.iter().find(|r| {
                r.item_id.as_deref() == Some(id.as_str())
                    && r.status == RunStatus::Succeeded
                    && r.created.as_str() >= since.as_str()
            });
            if done.is_some() {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(format!("the edit of person {id} did not reach GHL within 10 s"))
    }

    /// Makes the next cycle behave as if an hour had passed since the last: the feeds read
    /// whole once per `full_scan_every` (Capsule's notes, for edits to old notes) are due.
    pub async fn let_an_hour_pass(&self) {
        for recipe in self.engine.recipes() {
            if let Err(e) = self.engine.make_full_scan_due(&recipe.id).await {
                tracing::warn!(recipe = %recipe.id, error = %e, "could not make the full scan due");
            }
        }
    }

    /// What people do over an hour between two polls: edit, delete and add people in
    /// Capsule, edit notes, complete tasks; and in GHL, a new lead arrives and a deal is won.
    pub async fn change_the_world(&self) -> Result<(), String> {
        self.let_an_hour_pass().await;
        self.sandbox.capsule_edit_people(20);
        self.sandbox.capsule_delete_people(5);
        self.sandbox.capsule_add_people(10);
        self.sandbox.capsule_edit_notes(10);
        self.sandbox.capsule_complete_tasks(10);
        self.sandbox.ghl_add_contacts(1);
        let opportunities =
            self.ghl_call("ghl.opportunities.search_opportunities", json!({"status": "open", "limit": 1})).await?;
        if let Some(id) = opportunities.pointer("/opportunities/0/id").and_then(Value::as_str) {
            self.ghl_call("ghl.opportunities.update_opportunity_status", json!({"id": id, "status": "won"})).await?;
        }
        Ok(())
    }

    /// Calls a GHL operation on the sandbox, as a person or a form would.
    pub async fn ghl_call(&self, key: &str, inputs: Value) -> Result<Value, String> {
        let op = self.engine.catalog().get(key).ok_or_else(|| format!("no operation {key}"))?;
        let connection = self.engine.config().connection("ghl")?;
        let inputs: Map<String, Value> = inputs.as_object().cloned().unwrap_or_default();
        self.engine.client().execute(connection, op, &inputs).await.map(|r| r.body).map_err(|e| e.to_string())
    }

    /// Runs by status, over the whole history.
    pub async fn run_counts(&self) -> Vec<(RunStatus, usize)> {
        let runs = self.engine.history(None, None, usize::MAX).await.map(|(runs, _)| runs).unwrap_or_default();
        [
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Filtered,
            RunStatus::Held,
            RunStatus::Waiting,
            RunStatus::Queued,
            RunStatus::Running,
        ]
        .into_iter()
        .map(|s| (s, runs.iter().filter(|r| r.status == s).count()))
        .collect()
    }
}

async fn engine_for(config_path: PathBuf, catalog: Arc<Catalog>) -> Result<Engine, DemoError> {
    let setup = |e: String| DemoError::Setup(e);
    let config =
        Arc::new(Config::load(&config_path, &catalog, &crate::config::process_env).map_err(|d| setup(d.to_string()))?);
    Engine::open(catalog, config, EngineOptions::default()).await.map_err(|e| setup(e.to_string()))
}

fn add(report: &mut CycleReport, s: &OnceSummary) {
    report.new_items += s.polls.iter().map(|p| p.new).sum::<usize>();
    report.held += s.polls.iter().map(|p| p.held).sum::<usize>();
    report.succeeded += s.count(RunStatus::Succeeded);
    report.failed += s.count(RunStatus::Failed);
    report.filtered += s.count(RunStatus::Filtered);
    report.waiting += s.count(RunStatus::Waiting);
    report.errors.extend(s.errors.iter().cloned());
}
