//! Running one item through a recipe's steps.
//!
//! Each step's rendered input, response, status and timing is recorded as it happens, and a
//! completed step is on disk before the next one starts, so a crash resumes at the first
//! unfinished step and never sends a completed one again. A step that still fails after the
//! HTTP layer's retries fails the run with the API's message; `replay` resumes it there.

use std::time::Instant;

use serde_json::{Map, Value, json};

use std::sync::Arc;

use super::render::{Rendered, StepError, StepPlan, passes_filter, run_context, set_root};
use super::{Engine, EngineError, now_iso};
use crate::http::HttpError;
use crate::recipe::{Find, Recipe, Step, render_inputs};
use crate::store::{RunId, RunRecord, RunStatus, StepStatus};
use crate::template::{context, truthy};

/// How a run ended (for this attempt).
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub id: RunId,
    pub recipe: String,
    pub status: RunStatus,
    pub error: Option<String>,
}

/// How long a run waits for an id another recipe records before it fails.
const WAIT_LIMIT: chrono::Duration = chrono::Duration::hours(24);

impl Engine {
    /// Runs (or resumes) the run `id` until it succeeds, is filtered or fails.
    pub async fn execute_run(&self, id: &RunId) -> Result<RunOutcome, EngineError> {
        use tracing::Instrument as _;
        let run = self.store.run(id).await?.ok_or_else(|| EngineError::UnknownRun(id.to_string()))?;
        let Some(recipe) = self.recipe(&run.recipe) else {
            return Err(EngineError::UnknownRecipe(run.recipe.clone()));
        };
        let span = tracing::info_span!("run", recipe = %run.recipe, run = %run.id);
        let outcome = self.execute_traced(run, recipe).instrument(span).await?;
        // Counted once it ends; a waiting run is counted when it ends later.
        if matches!(outcome.status, RunStatus::Succeeded | RunStatus::Failed | RunStatus::Filtered | RunStatus::Unsure)
        {
            crate::metrics::metrics().run_ended(&outcome.recipe, outcome.status.as_str());
        }
        Ok(outcome)
    }

    async fn execute_traced(&self, mut run: RunRecord, recipe: Arc<Recipe>) -> Result<RunOutcome, EngineError> {
        if !matches!(run.status, RunStatus::Queued | RunStatus::Running | RunStatus::Failed | RunStatus::Waiting) {
            return Ok(outcome(&run));
        }
        // Steps may have changed since the run was created (an edited recipe): line the
        // record up with the current steps by id.
        if align_steps(&mut run, &recipe) {
            self.store.replace_steps(&run.id, &run.steps).await?;
        }
        run.started.get_or_insert_with(now_iso);
        run.error = None;
        run.next_replay_at = None;
        self.store.transition(&mut run, RunStatus::Running).await?;

        let lookups = match self.lookups(&recipe).await {
            Ok(l) => l,
            Err(message) => return self.fail_run(run, &recipe, None, StepError::Lookup(message)).await,
        };
        let item_id = run.item_id.clone().unwrap_or_else(|| "?".into());
        let base = run_context(&recipe, &run.item, lookups);

        // The filter runs once, before any step.
        if run.steps.iter().all(|s| s.status == StepStatus::Pending) {
            match passes_filter(&recipe, &base) {
                Ok(true) => {}
                Ok(false) => {
                    // No step of a filtered run will ever run: none is recorded as pending.
                    run.steps.clear();
                    self.store.replace_steps(&run.id, &run.steps).await?;
                    run.finished = Some(now_iso());
                    self.store.transition(&mut run, RunStatus::Filtered).await?;
                    return Ok(outcome(&run));
                }
                Err(e) => return self.fail_run(run, &recipe, None, e).await,
            }
        }

        let mut forgotten_keys = std::collections::HashSet::new();
        'run: loop {
            let mut outputs = Map::new();
            for record in &run.steps {
                if record.status == StepStatus::Succeeded {
                    outputs.insert(record.id.clone(), record.output.clone().unwrap_or(Value::Null));
                }
            }
            for (i, step) in recipe.steps.iter().enumerate() {
                if matches!(run.steps[i].status, StepStatus::Succeeded | StepStatus::Skipped) {
                    continue;
                }
                let rendered = match self.render_step(step, &base, &outputs, None, &item_id).await {
                    Ok(StepPlan::Sends(rendered)) => rendered,
                    Ok(StepPlan::Skipped) => {
                        run.steps[i].status = StepStatus::Skipped;
                        run.steps[i].finished = Some(now_iso());
                        self.store.put_step(&run.id, i, &run.steps[i]).await?;
                        continue;
                    }
                    // An id another recipe records (the person's contact) is not there yet.
                    Ok(StepPlan::Waits { name, key }) => return self.wait_run(run, &recipe, i, &name, &key).await,
                    Err(e) => return self.fail_run(run, &recipe, Some(i), e).await,
                };
                let Rendered { inputs, context: ctx_value, id_keys } = rendered;
                // Sent before but never answered (the process died): the write may exist.
                let in_doubt = run.steps[i].status == StepStatus::Sent;
                // A write that is not safe to repeat and cannot be looked up is not sent
                // again blindly: a person decides (replay sends it, discard drops the run).
                let blind = step.find.is_none() && step.operation.writes() && !step.operation.repeat_safe;
                if in_doubt && blind {
                    return self.set_unsure(run, i).await;
                }
                let record = &mut run.steps[i];
                record.input = Some(self.config.redactor.redact_json(&Value::Object(inputs.clone())));
                record.status = StepStatus::Sent;
                record.attempts += 1;
                record.started = Some(now_iso());
                // "Sent, no answer yet" is on disk before the request leaves for every step
                // that must not simply be sent again after a crash: one that can look for what
                // it may have created, and one that would be set aside as unsure.
                if step.find.is_some() || blind {
                    self.store.put_step(&run.id, i, &run.steps[i]).await?;
                    self.store.flush_async().await?;
                }
                let started = Instant::now();
                // The step's span: a retry or a 429 logged while it runs names the step too.
                use tracing::Instrument as _;
                let step_span = tracing::info_span!("step", step = %step.id);
                let (result, sends) = crate::http::count_sends(
                    async {
                        match &step.find {
                            Some(find) if step.operation.writes() => {
                                let mut find_ctx = ctx_value.clone();
                                set_root(&mut find_ctx, "input", Value::Object(inputs.clone()));
                                self.send_checking_lost(step, find, &inputs, &find_ctx, in_doubt).await
                            }
                            _ => self.client.execute(&step.connection, &step.operation, &inputs).await.map(|r| r.body),
                        }
                    }
                    .instrument(step_span),
                )
                .await;
                let record = &mut run.steps[i];
                // Counted as one while in flight (a crash leaves that visible); now the real
                // number of requests sent, retries included.
                record.attempts = record.attempts.saturating_sub(1) + sends;
                record.duration_ms = Some(started.elapsed().as_millis() as u64);
                crate::metrics::metrics().step_took(&record.operation, started.elapsed());
                record.finished = Some(now_iso());
                match result {
                    Ok(body) => {
                        record.status = StepStatus::Succeeded;
                        record.output = Some(body.clone());
                        record.error = None;
                        outputs.insert(step.id.clone(), body);
                        if let Err(e) = self.save_ids(step, &ctx_value, &outputs).await {
                            return self.fail_run(run, &recipe, Some(i), e).await;
                        }
                        // A blind write is durable before the next step: a resumed run would
                        // otherwise find it "sent" and set the run aside as unsure. Any other
                        // step may wait for the next flush: if a crash loses its success, it is
                        // sent again (repeat-safe) or looked up first (its `find`). (After the
                        // last step, the run's own final save and flush cover it.)
                        self.store.put_step(&run.id, i, &run.steps[i]).await?;
                        if blind && i + 1 < recipe.steps.len() {
                            self.store.flush_async().await?;
                        }
                    }
                    Err(e)
                        if e.is_not_found()
                            && id_keys
                                .iter()
                                .any(|(n, k)| step.forget_when_gone.contains(n) && !forgotten_keys.contains(k)) =>
                    {
                        // The mapped record was deleted or merged away on the other side: forget
                        // the mapping and start over, so the steps that create it create it
                        // again. Each key is forgotten at most once per execution, so this ends.
                        let message = self.config.redactor.redact(&e.to_string());
                        let mut forgotten = Vec::new();
                        for (name, key) in id_keys.iter().filter(|(n, _)| step.forget_when_gone.contains(n)) {
                            if forgotten_keys.insert(key.clone()) {
                                self.store.forget_id(key).await?;
                                forgotten.push(format!("{name} (`{key}`)"));
                            }
                        }
                        let note = format!(
                            "step `{}` answered not found ({message}); forgot {} and started the run over",
                            step.id,
                            forgotten.join(", ")
                        );
                        tracing::info!(step = %step.id, "{note}");
                        run.notes.push(note);
                        for record in &mut run.steps {
                            record.status = StepStatus::Pending;
                            record.output = None;
                            record.error = None;
                        }
                        self.store.replace_steps(&run.id, &run.steps).await?;
                        self.store.transition(&mut run, RunStatus::Running).await?;
                        self.store.flush_async().await?;
                        continue 'run;
                    }
                    Err(e) => return self.fail_run(run, &recipe, Some(i), StepError::Http(e)).await,
                }
            }
            break 'run;
        }
        run.finished = Some(now_iso());
        self.store.transition(&mut run, RunStatus::Succeeded).await?;
        self.store.flush_async().await?;
        tracing::debug!("run succeeded");
        Ok(outcome(&run))
    }

    /// After a step succeeded: remembers the ids its `save` names.
    async fn save_ids(&self, step: &Step, ctx: &Value, outputs: &Map<String, Value>) -> Result<(), StepError> {
        for (key, id) in self.ids_to_save(step, ctx, outputs)? {
            self.store.remember_id(&key, &id).await?;
        }
        Ok(())
    }

    /// Sets a run aside until the id `name` (key `key`) is recorded by another recipe; it is
    /// tried again at this recipe's next polls. After `WAIT_LIMIT` it fails instead, so a
    /// record that never comes (a person the people recipe filters out) is not waited for
    /// forever.
    async fn wait_run(
        &self,
        mut run: RunRecord,
        recipe: &Recipe,
        i: usize,
        name: &str,
        key: &str,
    ) -> Result<RunOutcome, EngineError> {
        let waited = chrono::DateTime::parse_from_rfc3339(&run.created)
            .map(|c| chrono::Utc::now().signed_duration_since(c))
            .unwrap_or_default();
        let what = format!("waiting for `ids.{name}` (`{key}`), which no run has recorded yet");
        if waited > WAIT_LIMIT {
            let error = StepError::GaveUpWaiting { hours: WAIT_LIMIT.num_hours(), what };
            return self.fail_run(run, recipe, Some(i), error).await;
        }
        tracing::debug!(step = %run.steps[i].id, "{what}");
        run.error = Some(format!("step `{}`: {what}", run.steps[i].id));
        self.store.transition(&mut run, RunStatus::Waiting).await?;
        self.store.flush_async().await?;
        Ok(outcome(&run))
    }

    /// Sets a run aside after a crash in the middle of sending step `i`, a write that is not
    /// safe to repeat and has no `find`: whether it reached the API is unknown.
    async fn set_unsure(&self, mut run: RunRecord, i: usize) -> Result<RunOutcome, EngineError> {
        let step = &run.steps[i];
        let message = format!(
            "step `{}` ({}) was being sent when the process stopped; it may or may not have reached the API. \
             Check, then `ghlflow runs replay {}` to send it again or `ghlflow runs discard {}` to leave it",
            step.id, step.operation, run.id, run.recipe
        );
        tracing::warn!(step = %step.id, "{message}");
        run.error = Some(message);
        run.finished = Some(now_iso());
        self.store.transition(&mut run, RunStatus::Unsure).await?;
        self.store.flush_async().await?;
        Ok(outcome(&run))
    }

    /// A recipe's lookups for a filter at poll time: a lookup that cannot be read is left
    /// out (the filter then sees nothing there; the runs fail with the read's error).
    pub(super) async fn lookup_values(&self, recipe: &Recipe) -> Value {
        self.lookups(recipe).await.unwrap_or_else(|_| Value::Object(Map::new()))
    }

    /// A recipe's lookups (`lookups.<name>`): read once per poll and shared by its runs.
    pub(super) async fn lookups(&self, recipe: &Recipe) -> Result<Value, String> {
        let mut out = Map::new();
        for lookup in &recipe.lookups {
            let records = self.lookup_records(recipe, lookup).await?;
            out.insert(lookup.name.clone(), Value::clone(&records));
        }
        Ok(Value::Object(out))
    }

    /// Sends a write that has a `find`: each attempt is sent once, and after a failure that
    /// may have hidden a success (a timeout, a dropped connection, a 5xx), the find looks for
    /// what the write created before it is sent again.
    async fn send_checking_lost(
        &self,
        step: &Step,
        find: &Find,
        inputs: &Map<String, Value>,
        ctx: &Value,
        in_doubt: bool,
    ) -> Result<Value, HttpError> {
        if in_doubt && let Some(found) = self.find_existing(step, find, ctx).await? {
            tracing::info!(step = %step.id, "found what an interrupted attempt created; not sending it again");
            return Ok(found);
        }
        // Each attempt is sent once; after a failure that may hide a success, the find
        // looks before the next attempt.
        let what = step.operation.key.to_string();
        crate::http::retry::retrying(&step.operation.retry, &what, |_| async {
            match self.client.execute_once(&step.connection, &step.operation, inputs).await {
                Ok(response) => Ok(response.body),
                Err(e) if e.is_retryable() => match self.find_existing(step, find, ctx).await? {
                    Some(found) => {
                        tracing::info!(step = %step.id, error = %e, "the answer was lost but the write was applied; using what it created");
                        Ok(found)
                    }
                    None => Err(e),
                },
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Runs a find: the first candidate its `match` accepts, shaped like the write's response.
    /// Its reads are not sends of the step, so they are counted apart (and dropped).
    async fn find_existing(&self, step: &Step, find: &Find, ctx: &Value) -> Result<Option<Value>, HttpError> {
        crate::http::count_sends(self.find_candidates(step, find, ctx)).await.0
    }

    async fn find_candidates(&self, step: &Step, find: &Find, ctx: &Value) -> Result<Option<Value>, HttpError> {
        // A two-step find reads its candidates' lists from each record of `from` (each of the
        // contact's conversations, say).
        let parents = match &find.from {
            None => vec![ctx.clone()],
            Some(from) => {
                let records = self.read_all(step, &from.operation, &from.input, ctx).await?;
                records
                    .into_iter()
                    .map(|r| {
                        let mut c = ctx.clone();
                        set_root(&mut c, "from", r);
                        c
                    })
                    .collect()
            }
        };
        for parent in parents {
            for item in self.read_all(step, &find.operation, &find.input, &parent).await? {
                let mut c = parent.clone();
                set_root(&mut c, "item", item.clone());
                if find.matcher.render_string(&context(c)).map(|t| truthy(&t)).unwrap_or(false) {
                    return Ok(Some(shaped_like_response(&step.operation, item)));
                }
            }
        }
        Ok(None)
    }

    /// Every record of a read (up to the app's page bound), with inputs rendered against `ctx`.
    async fn read_all(
        &self,
        step: &Step,
        op: &Arc<crate::catalog::Operation>,
        input: &[(String, crate::recipe::ValueTemplate)],
        ctx: &Value,
    ) -> Result<Vec<Value>, HttpError> {
        let inputs = render_inputs(input, &context(ctx.clone()))
            .map_err(|message| HttpError::InvalidInput { op: op.key.to_string(), message })?;
        let mut pager =
            crate::http::Pager::new(&self.client, Arc::clone(&step.connection), Arc::clone(op), inputs, None);
        Ok(crate::http::collect_all(&mut pager).await?.0)
    }

    /// Records a run as failed: at step `step` (its index), or before any step. An error that
    /// trying again may cure is tried again later under the recipe's `autoreplay` policy, and
    /// never before a time the server asked for.
    async fn fail_run(
        &self,
        mut run: RunRecord,
        recipe: &Recipe,
        step: Option<usize>,
        error: StepError,
    ) -> Result<RunOutcome, EngineError> {
        let mut message = self.config.redactor.redact(&error.to_string());
        if let Some(record) = step.and_then(|i| run.steps.get_mut(i)) {
            record.status = StepStatus::Failed;
            record.error = Some(message.clone());
            record.finished.get_or_insert_with(now_iso);
            message = format!("step `{}` ({}): {message}", record.id, record.operation);
        }
        if let Some(i) = step.filter(|i| *i < run.steps.len()) {
            self.store.put_step(&run.id, i, &run.steps[i]).await?;
        }
        tracing::warn!(error = %message, "run failed");
        run.error = Some(message);
        run.finished = Some(now_iso());
        // The server asked for a longer wait than the HTTP layer's retries make (a 429 far in
        // the future): the run is tried again then, whatever the recipe's autoreplay says,
        // and no task waits for it meanwhile.
        run.next_replay_at = error.retry_at();
        if error.is_retryable()
            && let Some(policy) = &recipe.autoreplay
            && let Some(wait) = crate::http::retry::delays(policy).nth(run.replays as usize)
        {
            let at = crate::http::auth::unix_now() + wait.as_secs();
            run.next_replay_at = Some(run.next_replay_at.map_or(at, |asked| asked.max(at)));
        }
        self.store.transition(&mut run, RunStatus::Failed).await?;
        self.store.flush_async().await?;
        Ok(outcome(&run))
    }

    /// `runs replay`: resumes a failed run from its failed step (completed steps are kept).
    pub async fn replay(&self, id: &RunId) -> Result<RunOutcome, EngineError> {
        let mut run = self.store.run(id).await?.ok_or_else(|| EngineError::UnknownRun(id.to_string()))?;
        if !matches!(run.status, RunStatus::Failed | RunStatus::Unsure) {
            return Err(EngineError::Refused(format!(
                "run {id} is {}; only failed and unsure runs can be replayed",
                run.status.as_str()
            )));
        }
        for s in run.steps.iter_mut().filter(|s| matches!(s.status, StepStatus::Failed | StepStatus::Sent)) {
            s.status = StepStatus::Pending;
        }
        run.replays += 1;
        self.store.replace_steps(&run.id, &run.steps).await?;
        self.store.transition(&mut run, RunStatus::Queued).await?;
        self.execute_run(id).await
    }

    /// Automatic replays whose time has come (`autoreplay: true` recipes' failed runs, after
    /// 1, 2, 4, 8 and 16 minutes). `ghlflow run` calls it every half minute with the clock;
    /// the demo and the tests call it with the delays compressed.
    pub async fn replay_due(
        &self,
        now_unix: u64,
        of_recipe: impl Fn(&str) -> bool,
    ) -> Vec<Result<RunOutcome, EngineError>> {
        let due: Vec<RunId> = match self.store.open_runs().await {
            Ok(open) => open
                .into_iter()
                .filter(|r| r.next_replay_at.is_some_and(|t| t <= now_unix) && of_recipe(&r.recipe))
                .map(|r| r.id)
                .collect(),
            Err(e) => return vec![Err(e.into())],
        };
        let mut out = Vec::new();
        for id in due {
            out.push(self.replay(&id).await);
        }
        out
    }

    /// Puts held runs of a recipe in the queue; returns their ids.
    pub async fn release(&self, recipe: &str) -> Result<Vec<RunId>, EngineError> {
        let mut ids = Vec::new();
        for mut run in self.store.runs_with_status(recipe, RunStatus::Held).await? {
            self.store.transition(&mut run, RunStatus::Queued).await?;
            ids.push(run.id);
        }
        self.store.flush_async().await?;
        Ok(ids)
    }

    /// Drops held runs of a recipe, and unsure ones a person decided not to send again (they
    /// stay in history as discarded).
    pub async fn discard(&self, recipe: &str) -> Result<usize, EngineError> {
        let mut n = 0;
        let mut runs = self.store.runs_with_status(recipe, RunStatus::Held).await?;
        runs.extend(self.store.runs_with_status(recipe, RunStatus::Unsure).await?);
        for mut run in runs {
            run.finished = Some(now_iso());
            self.store.transition(&mut run, RunStatus::Discarded).await?;
            n += 1;
        }
        self.store.flush_async().await?;
        Ok(n)
    }
}

/// A found record placed where the write's response would have it (`{"note": {...}}`).
fn shaped_like_response(op: &crate::catalog::Operation, record: Value) -> Value {
    match op.output.as_ref().map(|o| &o.records) {
        Some(crate::catalog::Records::Record(path)) if !path.is_root() => {
            path.parts().iter().rev().fold(record, |inner, key| json!({ key.as_str(): inner }))
        }
        _ => record,
    }
}

/// Makes `run.steps` match the recipe's steps by id, keeping what was recorded. Returns
/// whether a recorded step moved or went (the journal keys steps by position, so its
/// entries are then rewritten).
fn align_steps(run: &mut RunRecord, recipe: &Recipe) -> bool {
    let mut old: Vec<crate::store::StepRecord> = std::mem::take(&mut run.steps);
    let recorded: Vec<String> = old.iter().map(|s| s.id.clone()).collect();
    for step in &recipe.steps {
        match old.iter().position(|s| s.id == step.id) {
            Some(i) => run.steps.push(old.remove(i)),
            None => run.steps.push(crate::store::StepRecord::pending(&step.id, &step.operation.key.to_string())),
        }
    }
    recorded.iter().enumerate().any(|(at, id)| run.steps.get(at).is_none_or(|s| &s.id != id))
}

fn outcome(run: &RunRecord) -> RunOutcome {
    RunOutcome { id: run.id.clone(), recipe: run.recipe.clone(), status: run.status, error: run.error.clone() }
}
