//! Running one item through a recipe's steps.
//!
//! Each step's rendered input, response, status and timing is recorded as it happens, and a
//! completed step is on disk before the next one starts, so a crash resumes at the first
//! unfinished step and never sends a completed one again. A step that still fails after the
//! HTTP layer's retries fails the run with the API's message; `replay` resumes it there.

use std::time::Instant;

use serde_json::{Map, Value, json};

use super::{Engine, EngineError, connection_view, env_view, now_iso};
use crate::http::{HttpError, prepare};
use std::sync::Arc;

use crate::recipe::{Find, Recipe, Step, is_blank, render_inputs};
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

/// Growing waits between automatic replays: 1, 2, 4, 8, 16 minutes, then it stays failed.
const AUTOREPLAY_LIMIT: u32 = 5;

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
        self.execute_traced(run, recipe).instrument(span).await
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
            Err(message) => return self.fail_run(run, &recipe, message, true).await,
        };
        let base = json!({
            "trigger": run.item,
            "connection": Value::Null,
            "env": env_view(&recipe),
            "lookups": lookups,
        });

        // The filter runs once, before any step; never on a run reporting an item gone,
        // which is there because the item left the filter (or the feed).
        if run.steps.iter().all(|s| s.status == StepStatus::Pending)
            && !reports_gone(&recipe, &run.item)
            && let Some(filter) = &recipe.filter
        {
            let ctx = context(with_connection(&base, &recipe.trigger.connection, &Map::new()));
            match filter.render_string(&ctx) {
                Ok(text) if !truthy(&text) => {
                    // No step of a filtered run will ever run: none is recorded as pending.
                    run.steps.clear();
                    self.store.replace_steps(&run.id, &run.steps).await?;
                    run.finished = Some(now_iso());
                    self.store.transition(&mut run, RunStatus::Filtered).await?;
                    return Ok(outcome(&run));
                }
                Ok(_) => {}
                Err(e) => return self.fail_run(run, &recipe, format!("filter: {e}"), false).await,
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
                let mut ctx_value = with_connection(&base, &step.connection, &outputs);
                let mut id_keys = Vec::new();
                // An id another recipe records (the person's contact) that is not there yet:
                // the run waits for it, if the step is to run at all.
                let mut missing: Option<(String, String)> = None;
                if !step.ids.is_empty() {
                    match self.resolve_ids(step, &ctx_value).await {
                        Ok((ids, keys)) => {
                            missing = awaited_id(step, &ids, &keys);
                            set_root(&mut ctx_value, "ids", ids);
                            id_keys = keys;
                        }
                        Err(message) => return self.fail_step(run, &recipe, i, message, false).await,
                    }
                }
                // The context takes the value; a copy is kept only for a find or a save.
                let ctx = if step.find.is_some() || !step.save.is_empty() {
                    context(ctx_value.clone())
                } else {
                    context(std::mem::take(&mut ctx_value))
                };
                if let Some(cond) = &step.condition {
                    match cond.render_string(&ctx) {
                        Ok(text) if !truthy(&text) => {
                            run.steps[i].status = StepStatus::Skipped;
                            run.steps[i].finished = Some(now_iso());
                            self.store.put_step(&run.id, i, &run.steps[i]).await?;
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => return self.fail_step(run, &recipe, i, format!("if: {e}"), false).await,
                    }
                }
                if let Some((name, key)) = missing {
                    return self.wait_run(run, &recipe, i, &name, &key).await;
                }
                let inputs = match self.step_inputs(step, &ctx, &run) {
                    Ok(i) => i,
                    Err(message) => return self.fail_step(run, &recipe, i, message, false).await,
                };
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
                record.finished = Some(now_iso());
                match result {
                    Ok(body) => {
                        record.status = StepStatus::Succeeded;
                        record.output = Some(body.clone());
                        record.error = None;
                        outputs.insert(step.id.clone(), body);
                        if let Err(message) = self.save_ids(step, &ctx_value, &outputs).await {
                            return self.fail_step(run, &recipe, i, message, false).await;
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
                    Err(e) => {
                        let retryable = e.is_retryable();
                        // The server asked for a longer wait than the retry policy makes (a
                        // 429 far in the future): the run is tried again then, whatever the
                        // recipe's autoreplay says, and no task waits for it meanwhile.
                        if let HttpError::Status { status: 429, retry_after: Some(wait), .. } = &e {
                            run.next_replay_at = Some(crate::http::auth::unix_now() + wait.as_secs().max(1));
                        }
                        let message = self.config.redactor.redact(&e.to_string());
                        return self.fail_step(run, &recipe, i, message, retryable).await;
                    }
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

    /// `ids.<name>` for a step: each key rendered and looked up in the id map. Also returns
    /// the rendered keys by name (to forget them, or to say what a run waits for).
    async fn resolve_ids(&self, step: &Step, ctx: &Value) -> Result<(Value, Vec<(String, String)>), String> {
        self.resolve_ids_with(step, ctx, &std::collections::HashMap::new()).await
    }

    /// `resolve_ids`, where `planned` (a dry run's ids not yet saved) wins over the id map.
    async fn resolve_ids_with(
        &self,
        step: &Step,
        ctx: &Value,
        planned: &std::collections::HashMap<String, Value>,
    ) -> Result<(Value, Vec<(String, String)>), String> {
        let mut ids = Map::new();
        let mut keys = Vec::new();
        if step.ids.is_empty() {
            return Ok((Value::Object(ids), keys));
        }
        // In order: a key may use the ids named above it.
        let mut ctx = ctx.clone();
        for (name, key) in &step.ids {
            set_root(&mut ctx, "ids", Value::Object(ids.clone()));
            let key = key.render_string(&context(ctx.clone())).map_err(|e| format!("ids.{name}: {e}"))?;
            let key = key.trim().to_owned();
            if let Some(planned) = planned.get(&key) {
                ids.insert(name.clone(), planned.clone());
                keys.push((name.clone(), key));
                continue;
            }
            let id = if key.is_empty() { None } else { self.store.id_of(&key).await.map_err(|e| e.to_string())? };
            ids.insert(name.clone(), id.map(Value::String).unwrap_or(Value::Null));
            keys.push((name.clone(), key));
        }
        Ok((Value::Object(ids), keys))
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
            let message = format!("gave up after {} hours {what}", WAIT_LIMIT.num_hours());
            return self.fail_step(run, recipe, i, message, false).await;
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
    async fn lookups(&self, recipe: &Recipe) -> Result<Value, String> {
        let mut out = Map::new();
        for lookup in &recipe.lookups {
            let records = self.lookup_records(recipe, lookup).await?;
            out.insert(lookup.name.clone(), Value::clone(&records));
        }
        Ok(Value::Object(out))
    }

    /// After a step succeeded: remembers the ids its `save` names.
    async fn save_ids(&self, step: &Step, ctx: &Value, outputs: &Map<String, Value>) -> Result<(), String> {
        if step.save.is_empty() {
            return Ok(());
        }
        let mut ctx = ctx.clone();
        set_root(&mut ctx, "steps", Value::Object(outputs.clone()));
        let ctx = context(ctx);
        for (key, value) in &step.save {
            let key = key.render_string(&ctx).map_err(|e| format!("save: {e}"))?;
            let value = value.render_string(&ctx).map_err(|e| format!("save: {e}"))?;
            if !key.trim().is_empty() && !value.trim().is_empty() {
                self.store.remember_id(key.trim(), value.trim()).await.map_err(|e| e.to_string())?;
            }
        }
        Ok(())
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
        let mut delays = crate::http::retry::delays(&step.operation.retry);
        loop {
            match self.client.execute_once(&step.connection, &step.operation, inputs).await {
                Ok(response) => return Ok(response.body),
                Err(e) if e.is_retryable() => {
                    if let Some(found) = self.find_existing(step, find, ctx).await? {
                        tracing::info!(step = %step.id, error = %e, "the answer was lost but the write was applied; using what it created");
                        return Ok(found);
                    }
                    match delays.next() {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
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

    /// Renders a step's inputs; a required input that renders empty fails the step.
    fn step_inputs(
        &self,
        step: &Step,
        ctx: &handlebars::Context,
        run: &RunRecord,
    ) -> Result<Map<String, Value>, String> {
        let mut inputs = render_inputs(&step.input, ctx)?;
        // Connection defaults fill locationId and friends before the required check.
        for input in &step.operation.inputs {
            if !inputs.contains_key(&input.name)
                && let Some(d) = step.connection.default_for(&input.name)
            {
                inputs.insert(input.name.clone(), Value::String(d.to_owned()));
            }
        }
        let empty: Vec<String> = step
            .operation
            .inputs
            .iter()
            .filter(|i| i.required && inputs.get(&i.name).is_none_or(is_blank))
            .map(|i| format!("`{}`", i.name))
            .collect();
        if !empty.is_empty() {
            let item = run.item_id.as_deref().unwrap_or("?");
            return Err(format!(
                "required input{} {} rendered empty for item {item}",
                if empty.len() == 1 { "" } else { "s" },
                empty.join(", ")
            ));
        }
        Ok(inputs)
    }

    async fn fail_step(
        &self,
        mut run: RunRecord,
        recipe: &Recipe,
        i: usize,
        message: String,
        retryable: bool,
    ) -> Result<RunOutcome, EngineError> {
        let step = &mut run.steps[i];
        step.status = StepStatus::Failed;
        step.error = Some(message.clone());
        step.finished.get_or_insert_with(now_iso);
        let message = format!("step `{}` ({}): {message}", step.id, step.operation);
        self.store.put_step(&run.id, i, &run.steps[i]).await?;
        self.fail_run(run, recipe, message, retryable).await
    }

    async fn fail_run(
        &self,
        mut run: RunRecord,
        recipe: &Recipe,
        message: String,
        retryable: bool,
    ) -> Result<RunOutcome, EngineError> {
        tracing::warn!(error = %message, "run failed");
        run.error = Some(message);
        run.finished = Some(now_iso());
        if recipe.autoreplay && retryable && run.replays < AUTOREPLAY_LIMIT {
            let wait = 60u64 << run.replays;
            let at = crate::http::auth::unix_now() + wait;
            // Never earlier than a time the server asked for.
            run.next_replay_at = Some(run.next_replay_at.map_or(at, |deferred| deferred.max(at)));
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
    pub async fn replay_due(&self, now_unix: u64) -> Vec<Result<RunOutcome, EngineError>> {
        let due: Vec<RunId> = match self.store.open_runs().await {
            Ok(open) => {
                open.into_iter().filter(|r| r.next_replay_at.is_some_and(|t| t <= now_unix)).map(|r| r.id).collect()
            }
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

    /// `ghlflow test`: the dry-run plan of one item (the lines `run --once --dry-run` prints
    /// for it) and how many of its steps would fail. Sends no write and records nothing.
    pub async fn plan_one(&self, recipe: &Recipe, item_id: &str, item: &Value) -> (Vec<String>, usize) {
        let failures = self.plan_item(recipe, item_id, item).await;
        (self.take_plan(), failures)
    }

    /// Dry run: the requests the steps would send for one item. What an earlier step would
    /// have answered is unknown, so every value read from it is a visible placeholder
    /// (`<steps.contact.contact.id>`), never a plausible-looking sample; an id an earlier
    /// step would have saved reads as that placeholder too. Returns how many steps would fail.
    /// The recipe's lookups are read (they are reads), as a real run would.
    pub(super) async fn plan_item(&self, recipe: &Recipe, item_id: &str, item: &Value) -> usize {
        let lookups = match self.lookups(recipe).await {
            Ok(l) => l,
            Err(e) => {
                self.plan_line(format!("{}: item {item_id}: would fail: {e}", recipe.id));
                return 1;
            }
        };
        let base = json!({"trigger": item, "connection": Value::Null, "env": env_view(recipe), "lookups": lookups});
        if !reports_gone(recipe, item)
            && let Some(filter) = &recipe.filter
        {
            let ctx = context(with_connection(&base, &recipe.trigger.connection, &Map::new()));
            match filter.render_string(&ctx) {
                Ok(t) if !truthy(&t) => {
                    self.plan_line(format!("{}: item {item_id}: filtered out", recipe.id));
                    return 0;
                }
                Ok(_) => {}
                Err(e) => {
                    self.plan_line(format!("{}: item {item_id}: the filter would fail: {e}", recipe.id));
                    return 1;
                }
            }
        }
        let mut outputs = Map::new();
        // Ids the planned steps would have saved: key -> placeholder.
        let mut saved: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
        let mut failures = 0;
        let fake_run =
            RunRecord::new(RunId::default(), &recipe.id, RunStatus::Queued, item_id, item.clone(), String::new());
        for step in &recipe.steps {
            let mut ctx_value = with_connection(&base, &step.connection, &outputs);
            let mut missing: Option<(String, String)> = None;
            if let Ok((ids, keys)) = self.resolve_ids_with(step, &ctx_value, &saved).await {
                missing = awaited_id(step, &ids, &keys);
                set_root(&mut ctx_value, "ids", ids);
            }
            let ctx = context(ctx_value.clone());
            if let Some(cond) = &step.condition {
                let guessed = reads_placeholder(cond, &outputs);
                match cond.render_string(&ctx) {
                    Ok(t) if !truthy(&t) => {
                        let note = if guessed { " (it read a placeholder; the real run may differ)" } else { "" };
                        self.plan_line(format!("{}: item {item_id}: step `{}` skipped (if){note}", recipe.id, step.id));
                        continue;
                    }
                    Ok(_) if guessed => self.plan_line(format!(
                        "{}: item {item_id}: step `{}`: its `if` read a placeholder for an earlier step's answer; \
                         the real run may skip it",
                        recipe.id, step.id
                    )),
                    Ok(_) => {}
                    Err(e) => {
                        self.plan_line(format!(
                            "{}: item {item_id}: step `{}` would fail: if: {e}",
                            recipe.id, step.id
                        ));
                        failures += 1;
                        continue;
                    }
                }
            }
            if let Some((name, key)) = missing {
                self.plan_line(format!(
                    "{}: item {item_id}: step `{}` would wait: no id `{key}` is recorded yet (ids.{name}; \
                     another recipe records it)",
                    recipe.id, step.id
                ));
                return failures;
            }
            let line = match self.step_inputs(step, &ctx, &fake_run) {
                Err(e) => Err(e),
                Ok(inputs) => match prepare(&step.operation, &step.connection, &inputs) {
                    Ok(request) => Ok(format!(
                        "{}: item {item_id}: step `{}` would send:\n{}",
                        recipe.id,
                        step.id,
                        indent(&readable_placeholders(&self.config.redactor.redact(&request.render("Bearer"))))
                    )),
                    // A placeholder where the operation wants a number or a boolean: the
                    // request cannot be built before the earlier step answers; show the inputs.
                    Err(_) if has_placeholder(&Value::Object(inputs.clone())) => Ok(format!(
                        "{}: item {item_id}: step `{}` would send {} with these inputs \
                         (built once the earlier steps answer):\n{}",
                        recipe.id,
                        step.id,
                        step.operation.key,
                        indent(
                            &self
                                .config
                                .redactor
                                .redact(&serde_json::to_string_pretty(&Value::Object(inputs)).unwrap_or_default())
                        )
                    )),
                    Err(e) => Err(e.to_string()),
                },
            };
            let line = line.unwrap_or_else(|e| {
                failures += 1;
                format!("{}: item {item_id}: step `{}` would fail: {e}", recipe.id, step.id)
            });
            self.plan_line(line);
            outputs.insert(step.id.clone(), placeholders(step, recipe));
            // What the step would save, so later steps' `ids` see a placeholder, not nothing.
            let mut save_ctx = ctx_value;
            set_root(&mut save_ctx, "steps", Value::Object(outputs.clone()));
            let save_ctx = context(save_ctx);
            for (key, value) in &step.save {
                if let (Ok(k), Ok(v)) = (key.render_string(&save_ctx), value.render(&save_ctx))
                    && !k.trim().is_empty()
                {
                    saved.insert(k.trim().to_owned(), v);
                }
            }
        }
        failures
    }
}

/// What stands in for a step's response in a dry run: the shape of the operation's sample
/// with every value replaced by its own path (`<steps.contact.contact.id>`), plus every path
/// the recipe's templates read from the step, whether or not the sample has it.
fn placeholders(step: &Step, recipe: &Recipe) -> Value {
    fn shape(v: &Value, path: &str) -> Value {
        match v {
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v, &format!("{path}.{k}")))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().take(1).map(|v| shape(v, &format!("{path}.0"))).collect()),
            _ => Value::String(format!("<{path}>")),
        }
    }
    let root = format!("steps.{}", step.id);
    let mut out = shape(&step.operation.sample_output, &root);
    if !out.is_object() {
        out = Value::Object(Map::new());
    }
    for t in recipe.steps.iter().flat_map(step_templates) {
        for r in t.references() {
            if r.segments.len() > 2 && r.segments[0] == "steps" && r.segments[1] == step.id {
                insert_path(&mut out, &r.segments[2..], &format!("<{}>", r.segments.join(".")));
            }
        }
    }
    out
}

/// Sets `value` at `path` inside `target` unless something is there already.
fn insert_path(target: &mut Value, path: &[String], value: &str) {
    let Some((first, rest)) = path.split_first() else { return };
    let Value::Object(m) = target else { return };
    if rest.is_empty() {
        m.entry(first.clone()).or_insert_with(|| Value::String(value.to_owned()));
    } else {
        let next = m.entry(first.clone()).or_insert_with(|| Value::Object(Map::new()));
        insert_path(next, rest, value);
    }
}

/// Every template of a step (its `if`, inputs, ids, saves and find).
fn step_templates(step: &Step) -> Vec<&crate::template::CompiledTemplate> {
    let mut out: Vec<&crate::template::CompiledTemplate> = step.condition.iter().collect();
    out.extend(step.input.iter().flat_map(|(_, t)| t.templates()));
    out.extend(step.ids.iter().map(|(_, t)| t));
    out.extend(step.save.iter().flat_map(|(k, v)| [k, v]));
    if let Some(find) = &step.find {
        if let Some(from) = &find.from {
            out.extend(from.input.iter().flat_map(|(_, t)| t.templates()));
        }
        out.extend(find.input.iter().flat_map(|(_, t)| t.templates()));
        out.push(&find.matcher);
    }
    out
}

/// Whether a template reads a field of a planned step's response (a placeholder), as
/// opposed to only whether the step ran.
fn reads_placeholder(t: &crate::template::CompiledTemplate, outputs: &Map<String, Value>) -> bool {
    t.references()
        .iter()
        .any(|r| r.segments.len() > 2 && r.segments[0] == "steps" && outputs.contains_key(&r.segments[1]))
}

/// A placeholder in a URL path comes out percent-encoded (`%3Csteps.x.id%3E`); it is shown
/// as written.
fn readable_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("%3Csteps.") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 3..];
        match tail.find("%3E") {
            Some(end) if !tail[..end].contains(['/', ' ', '\n']) => {
                out.push('<');
                out.push_str(&tail[..end]);
                out.push('>');
                rest = &tail[end + 3..];
            }
            _ => {
                out.push_str("%3C");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

fn has_placeholder(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("<steps."),
        Value::Array(a) => a.iter().any(has_placeholder),
        Value::Object(m) => m.values().any(has_placeholder),
        _ => false,
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

fn set_root(ctx: &mut Value, name: &str, value: Value) {
    if let Value::Object(m) = ctx {
        m.insert(name.to_owned(), value);
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

fn with_connection(base: &Value, connection: &crate::config::Connection, outputs: &Map<String, Value>) -> Value {
    let mut v = base.clone();
    if let Value::Object(m) = &mut v {
        m.insert("connection".into(), connection_view(connection));
        m.insert("steps".into(), Value::Object(outputs.clone()));
    }
    v
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

/// Whether `item` is a run's report that its record left the feed (`trigger.report_gone`).
fn reports_gone(recipe: &Recipe, item: &Value) -> bool {
    recipe.trigger.report_gone && item.get("gone") == Some(&Value::Bool(true))
}

/// The first of a step's `wait_for` ids not in the id map yet, with the key it was looked
/// up under: what the run waits for.
fn awaited_id(step: &Step, ids: &Value, keys: &[(String, String)]) -> Option<(String, String)> {
    let name = step.wait_for.iter().find(|n| ids.get(n.as_str()).is_none_or(Value::is_null))?;
    let key = keys.iter().find(|(n, _)| n == name).map(|(_, k)| k.clone()).unwrap_or_default();
    Some((name.clone(), key))
}
