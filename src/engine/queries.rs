//! What the status page and `ghlflow recipe pause|resume` ask of the state: a recipe's
//! overview, a page of run history, and the pause flag.
//!
//! Every read and write here goes through the store calls the rest of the engine uses
//! (`trigger_state`, `runs`, `runs_page`, `run`, `open_runs`, `id_of`, `remember_id`,
//! `forget_id`, `flush_async`), kept in this one file so that a change of the store's
//! interface is met in one place.

use std::collections::BTreeMap;

use super::{Engine, EngineError};
use crate::recipe::{Recipe, Schedule};
use crate::store::{RunId, RunRecord, RunStatus, TriggerState};

/// Runs of one recipe by status (`RunStatus::as_str`), over a window of time.
pub type StatusCounts = BTreeMap<&'static str, usize>;

/// One recipe as the status page shows it.
#[derive(Debug, Clone)]
pub struct RecipeOverview {
    pub id: String,
    pub name: String,
    /// The polled operation's key (`ghl.contacts.search`).
    pub operation: String,
    /// `every 5m` or `cron 0 */5 * * * (UTC)`; `instant only` when nothing is polled.
    pub schedule: String,
    pub state: Option<TriggerState>,
    /// When the next poll is due (Unix seconds), from the last poll and the schedule; None
    /// when the recipe is paused, never polled, or does not poll.
    pub next_poll: Option<u64>,
    pub paused: bool,
    pub held: usize,
    /// Runs created in the last hour and the last day, by status.
    pub last_hour: StatusCounts,
    pub last_day: StatusCounts,
    /// The windows reach past the newest `RECENT_READ_LIMIT` runs, which are all that were
    /// counted: the counts are lower bounds (hour, day).
    pub partial: (bool, bool),
    /// Every run of the recipe in the history.
    pub runs_total: usize,
    /// Items of its feed marked seen (ran, or recorded in a baseline).
    pub items_seen: usize,
}

/// The most runs a recipe's overview reads to count its last hour and day.
pub const RECENT_READ_LIMIT: usize = 1000;

/// One page of the run history.
#[derive(Debug, Clone)]
pub struct RunsPage {
    pub runs: Vec<RunRecord>,
    /// Runs matching the filter, in all.
    pub total: usize,
}

impl Engine {
    /// Whether `recipe` is paused (`recipe pause`): not polled, its queued runs wait.
    pub async fn is_paused(&self, recipe: &str) -> Result<bool, EngineError> {
        Ok(self.store.paused_since(recipe).await?.is_some())
    }

    /// Runs `ids` of `recipe` in the background, as a poll's runs run (oldest first, within
    /// the recipe's concurrency, not while it is paused): after a release or a resume.
    pub fn run_in_background(self: &std::sync::Arc<Self>, recipe: std::sync::Arc<Recipe>, ids: Vec<RunId>) {
        let engine = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            for result in engine.execute_runs(&recipe, &ids).await {
                if let Err(e) = result {
                    tracing::warn!(recipe = %recipe.id, error = %e, "a run could not execute");
                }
            }
        });
    }

    /// Pauses or resumes a loaded recipe; the flag is durable (it outlives the process).
    /// Returns whether anything changed.
    pub async fn set_paused(&self, recipe: &str, paused: bool) -> Result<bool, EngineError> {
        if self.recipe(recipe).is_none() {
            return Err(EngineError::UnknownRecipe(recipe.to_owned()));
        }
        if self.is_paused(recipe).await? == paused {
            return Ok(false);
        }
        // Durable before it returns: a pause told to a person must not be lost to a crash.
        let since = paused.then(super::now_iso);
        self.store.set_paused(recipe, since.as_deref()).await?;
        Ok(true)
    }

    /// Every loaded recipe's overview, by id.
    pub async fn recipe_overviews(&self) -> Result<Vec<RecipeOverview>, EngineError> {
        let mut out = Vec::new();
        for recipe in self.recipes() {
            out.push(self.recipe_overview(&recipe).await?);
        }
        Ok(out)
    }

    pub async fn recipe_overview(&self, recipe: &Recipe) -> Result<RecipeOverview, EngineError> {
        let state = self.store.trigger_state(&recipe.id).await?;
        let paused = self.is_paused(&recipe.id).await?;
        let (last_hour, last_day, partial) = self.recent_counts(&recipe.id).await?;
        let next_poll = match (&state, paused, recipe.trigger.polls) {
            (Some(TriggerState { last_poll: Some(last), .. }), false, true) => next_poll_after(recipe, *last),
            _ => None,
        };
        Ok(RecipeOverview {
            id: recipe.id.clone(),
            name: recipe.name.clone(),
            operation: recipe.trigger.operation.key.to_string(),
            schedule: if recipe.trigger.polls { describe(&recipe.trigger.schedule) } else { "instant only".into() },
            state,
            next_poll,
            paused,
            // Counted from the index, no run read.
            held: self.store.runs_page(Some(&recipe.id), Some(RunStatus::Held), 0).await?.1,
            last_hour,
            last_day,
            partial,
            runs_total: self.store.runs_page(Some(&recipe.id), None, 0).await?.1,
            items_seen: self.store.seen_count(&recipe.id).await?,
        })
    }

    /// Runs of `recipe` created in the last hour and in the last day, by status, and whether
    /// each window reached past what was read. History is read newest first in growing
    /// slices until a slice reaches past the day, so a quiet recipe with a long history costs
    /// a small read; but never more than `RECENT_READ_LIMIT` runs, so that the page stays
    /// fast for a busy one (the store counts a status's runs, not a time window's).
    async fn recent_counts(&self, recipe: &str) -> Result<(StatusCounts, StatusCounts, (bool, bool)), EngineError> {
        let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
        let hour_ago = now_ms.saturating_sub(3_600_000);
        let day_ago = now_ms.saturating_sub(86_400_000);
        let mut slice = 64;
        let runs = loop {
            let runs = self.store.runs(Some(recipe), slice).await?;
            let reaches_past_day = runs.last().is_some_and(|r| r.id.created_ms() < day_ago);
            if runs.len() < slice || reaches_past_day || slice >= RECENT_READ_LIMIT {
                break runs;
            }
            slice = (slice * 4).min(RECENT_READ_LIMIT);
        };
        // Read to the limit and still inside a window: older runs of it were not counted.
        let oldest_read = (runs.len() >= RECENT_READ_LIMIT).then(|| runs.last().map(|r| r.id.created_ms())).flatten();
        let partial = (oldest_read.is_some_and(|t| t >= hour_ago), oldest_read.is_some_and(|t| t >= day_ago));
        let (mut hour, mut day) = (StatusCounts::new(), StatusCounts::new());
        for run in &runs {
            let at = run.id.created_ms();
            if at >= day_ago {
                *day.entry(run.status.as_str()).or_default() += 1;
            }
            if at >= hour_ago {
                *hour.entry(run.status.as_str()).or_default() += 1;
            }
        }
        Ok((hour, day, partial))
    }

    /// Runs, newest first, filtered by recipe and status: `per_page` of them from the
    /// `page`th page (0 first), and how many match in all.
    pub async fn runs_page_at(
        &self,
        recipe: Option<&str>,
        status: Option<RunStatus>,
        page: usize,
        per_page: usize,
    ) -> Result<RunsPage, EngineError> {
        let skip = page.saturating_mul(per_page);
        let (runs, total) = self.store.runs_page(recipe, status, skip.saturating_add(per_page)).await?;
        Ok(RunsPage { runs: runs.into_iter().skip(skip).collect(), total })
    }

    /// One run as recorded (inputs and responses were redacted before they were recorded).
    pub async fn run_record(&self, id: &RunId) -> Result<Option<RunRecord>, EngineError> {
        Ok(self.store.run(id).await?)
    }
}

/// A schedule as a person writes it: `every 5m` or `cron 0 */5 * * * (UTC)`.
pub fn describe(schedule: &Schedule) -> String {
    match schedule {
        Schedule::Every(d) => format!("every {}", humantime::format_duration(*d)),
        Schedule::Cron { source, timezone, .. } => format!("cron {source} ({timezone})"),
    }
}

/// When the poll after one at `last` (Unix seconds) is due, by the schedule alone (the
/// scheduler adds a little jitter).
fn next_poll_after(recipe: &Recipe, last: u64) -> Option<u64> {
    match &recipe.trigger.schedule {
        Schedule::Every(d) => Some(last.saturating_add(d.as_secs())),
        Schedule::Cron { schedule, timezone, .. } => {
            let from = chrono::DateTime::from_timestamp(i64::try_from(last).ok()?, 0)?.with_timezone(timezone);
            schedule.after(&from).next().and_then(|t| u64::try_from(t.timestamp()).ok())
        }
    }
}

impl Engine {
    /// After `recipe resume`: starts the recipe's queued runs (those a pause kept waiting) in
    /// the background, oldest first; returns how many.
    pub async fn start_queued(self: &std::sync::Arc<Self>, recipe: &str) -> Result<usize, EngineError> {
        let Some(r) = self.recipe(recipe) else { return Err(EngineError::UnknownRecipe(recipe.to_owned())) };
        let ids: Vec<RunId> = self
            .store
            .open_runs()
            .await?
            .into_iter()
            .filter(|run| run.recipe == recipe && run.status == RunStatus::Queued)
            .map(|run| run.id)
            .collect();
        let n = ids.len();
        if n > 0 {
            self.run_in_background(r, ids);
        }
        Ok(n)
    }
}
