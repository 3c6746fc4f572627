//! One poll of one recipe's trigger: read the feed, keep what is new, and record the
//! outcome: new runs with their seen marks in chunks, oldest first, then the trigger's
//! position. New records wait in the store's spill between their page and their run, so a
//! poll's memory does not grow with the size of the feed.
//!
//! A feed with a `since` filter reads every page changed since its cursor (the newest
//! record timestamp seen, minus an overlap that dedupe absorbs); a feed of new items reads
//! pages until one holds an item already seen; a feed of changes without such a filter is
//! read whole, since an edited record need not come first. A page bound that ends a poll leaves the
//! position of the next page, where the next poll goes on. The first poll records a
//! baseline (or backfills); later polls hold a batch larger than `hold_above`.

use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{Engine, EngineError, connection_view, env_view, now_iso};
use crate::catalog::Dedupe;
use crate::http::Pager;
use crate::recipe::{Recipe, Start, render_inputs};
use crate::store::{PollCommit, RunRecord, RunStatus, StepRecord, TriggerState};
use crate::template::{context, parse_date};

/// How far the `since` filter reaches back before the cursor.
const SINCE_OVERLAP: chrono::Duration = chrono::Duration::minutes(2);

/// New items recorded per transaction.
const COMMIT_CHUNK: usize = 500;

/// One new item of a poll, while the poll goes on: its record waits in the spill.
struct NewItem {
    id: String,
    /// The seen mark to record (empty for an item reported gone after its deletion).
    mark: String,
    /// Its updated time, to run oldest first.
    at: Option<chrono::DateTime<chrono::Utc>>,
    /// Where its record waits; none for a baseline, which records marks and no runs.
    slot: Option<u64>,
    filtered: bool,
    gone: bool,
}

/// Where a poll keeps the records of its new items until it records their runs: the
/// store's spill (a dry run, which writes nothing, keeps them in memory).
struct Spill<'a> {
    engine: &'a Engine,
    recipe: &'a str,
    in_memory: Option<std::collections::HashMap<u64, Value>>,
    next: u64,
}

impl<'a> Spill<'a> {
    /// A spill for one poll; what a crashed poll left in it is cleared first.
    async fn new(engine: &'a Engine, recipe: &'a str) -> Result<Self, EngineError> {
        let in_memory = engine.options.dry_run.then(Default::default);
        if in_memory.is_none() {
            engine.store.spill_clear(recipe).await?;
        }
        Ok(Spill { engine, recipe, in_memory, next: 0 })
    }

    async fn put(&mut self, record: &Value) -> Result<u64, EngineError> {
        let slot = self.next;
        self.next += 1;
        match &mut self.in_memory {
            Some(map) => {
                map.insert(slot, record.clone());
            }
            None => self.engine.store.spill_put(self.recipe, slot, record).await?,
        }
        Ok(slot)
    }

    /// The record in `slot` (the store's copy is removed when its chunk is recorded).
    async fn take(&mut self, slot: Option<u64>) -> Result<Value, EngineError> {
        let Some(slot) = slot else { return Ok(Value::Null) };
        Ok(match &mut self.in_memory {
            Some(map) => map.remove(&slot).unwrap_or(Value::Null),
            None => self.engine.store.spill_get(self.recipe, slot).await?.unwrap_or(Value::Null),
        })
    }

    async fn clear(&mut self) -> Result<(), EngineError> {
        if self.in_memory.is_none() {
            self.engine.store.spill_clear(self.recipe).await?;
        }
        Ok(())
    }
}

/// What one poll found and did.
#[derive(Debug, Clone, Default)]
pub struct PollOutcome {
    pub recipe: String,
    /// Records read.
    pub fetched: usize,
    /// Records that were new (or changed).
    pub new: usize,
    /// Runs created and queued, oldest item first.
    pub queued: Vec<crate::store::RunId>,
    /// Items held for release.
    pub held: usize,
    /// Items the recipe's filter dropped (recorded as filtered runs, never held).
    pub filtered: usize,
    /// Items that left the feed (`trigger.report_gone`): deleted, or no longer passing the
    /// filter. Each has a run.
    pub gone: usize,
    /// This poll recorded the baseline.
    pub baseline: bool,
    /// The poll stopped at the page bound; the next goes on from there.
    pub stopped_at_bound: bool,
    /// A dry run's account of what the poll's items would do (empty otherwise).
    pub plan: super::Plan,
}

impl Engine {
    /// Polls `recipe` once.
    pub async fn poll(&self, recipe: &Arc<Recipe>) -> Result<PollOutcome, EngineError> {
        use tracing::Instrument as _;
        self.poll_traced(recipe).instrument(tracing::info_span!("poll", recipe = %recipe.id)).await
    }

    async fn poll_traced(&self, recipe: &Arc<Recipe>) -> Result<PollOutcome, EngineError> {
        // An instant trigger with nothing to reconcile with: its items come only by hook.
        if !recipe.trigger.polls {
            return Ok(PollOutcome { recipe: recipe.id.clone(), ..Default::default() });
        }
        self.forget_lookups(&recipe.id).await;
        let fail = |message: String| EngineError::Poll { recipe: recipe.id.clone(), message };
        let trigger = &recipe.trigger;
        let op = &trigger.operation;

        let mut state = match self.store.trigger_state(&recipe.id).await? {
            Some(s) if s.fingerprint == trigger.fingerprint => s,
            Some(old) => {
                // The trigger was edited into another one: a new position, a new baseline,
                // and nothing of what the old feed had seen. A dry run writes nothing: it
                // plans the new baseline and leaves the marks to the real run.
                if !self.options.dry_run {
                    self.store.forget_seen(&recipe.id).await?;
                }
                TriggerState {
                    fingerprint: trigger.fingerprint.clone(),
                    generation: old.generation,
                    ..TriggerState::default()
                }
            }
            None => TriggerState { fingerprint: trigger.fingerprint.clone(), ..TriggerState::default() },
        };

        let inputs = trigger_inputs(recipe, state.cursor.as_deref()).map_err(fail)?;
        let resumed = state.resume.take();
        let start_inputs = resumed.clone().unwrap_or(inputs);

        // Read pages. Each page's records are sorted out as it arrives: unchanged ones are
        // dropped, new ones spilled to the store (kept in memory only by a dry run) with a
        // small entry here, so a backfill of any size is read in a bounded memory.
        let mut pager = Pager::new(&self.client, Arc::clone(&trigger.connection), Arc::clone(op), start_inputs, None);
        // A feed of new items (dedupe by id) ends at the first item already seen only when
        // the catalog says how to list it newest first and no filter lets an old record join
        // it (`output.newest_first`, decided by the pager). Any other feed without a `since`
        // filter is read whole (up to the page bound): an edit to an old record, or an old
        // deal just won, sits where the record always was, not on page 1.
        // A feed of changes listed newest first (Capsule's notes, by entry time) is read whole
        // only once per `full_scan_every`, to find edits to old records; the polls between
        // read it until the first record seen unchanged, which finds every new record.
        let now = crate::http::auth::unix_now();
        let changes_newest_first = op.since.is_none() && trigger.dedupe == Dedupe::IdUpdated && pager.newest_first();
        let full_scan_due = resumed.is_some()
            || state.last_full_scan.is_none_or(|t| now.saturating_sub(t) >= trigger.full_scan_every.as_secs());
        let stop_at_seen = op.since.is_none()
            && pager.newest_first()
            && (trigger.dedupe == Dedupe::Id || (changes_newest_first && !full_scan_due));
        let first_poll = !state.baselined;
        let baseline = first_poll && trigger.start == Start::Now;
        // What every item's filter sees besides the item, built once per poll (each item
        // takes its turn as `trigger`, with no copy); the lookups are read only when the
        // filter names them. Items the filter drops are recorded as
        // filtered and do not count toward the hold: a batch of contacts the recipe ignores
        // anyway is no flood to stop.
        let mut filter = match (&recipe.filter, baseline) {
            (Some(filter), false) => {
                let uses_lookups =
                    filter.references().iter().any(|r| r.segments.first().is_some_and(|s| s == "lookups"));
                let lookups = if uses_lookups { self.lookup_values(recipe).await } else { Value::Null };
                // The context a run's filter sees (see `render::passes_filter`), item left out.
                let base = super::render::run_context(recipe, &Value::Null, lookups);
                let ctx = context(super::render::step_context(&base, &recipe.trigger.connection, &Map::new()));
                Some((filter, ctx))
            }
            _ => None,
        };
        // Items that ran and have not gone since (`report_gone`).
        let present =
            if trigger.report_gone && !baseline { Some(self.store.present_items(&recipe.id).await?) } else { None };
        let mut spill = Spill::new(self, &recipe.id).await?;
        let updated = op.output.as_ref().and_then(|o| o.updated.clone());
        let mut new_items: Vec<NewItem> = Vec::new();
        let mut read_ids = std::collections::HashSet::new();
        let mut fetched = 0;
        let mut newest: Option<chrono::DateTime<chrono::Utc>> = None;
        let mut stopped_early = false;
        while let Some(page) = pager.next_page().await {
            self.health.progress(&recipe.id);
            if self.is_stopping() {
                // Asked to stop: nothing of this read is recorded; the next start reads again.
                return Ok(PollOutcome { recipe: recipe.id.clone(), fetched, ..Default::default() });
            }
            let page = page.map_err(|e| fail(self.config.redactor.redact(&e.to_string())))?;
            let mut reached_seen = false;
            for mut record in page.records {
                fetched += 1;
                let at = updated.as_ref().and_then(|f| f.get(&record)).and_then(parse_date);
                newest = newest.max(at);
                let (id, mark) = self.identity(recipe, &record);
                if !read_ids.insert(id.clone()) {
                    continue; // the same record twice in one read (it moved between pages)
                }
                if self
                    .store
                    .seen_mark(&recipe.id, &id)
                    .await?
                    .is_some_and(|seen| crate::store::mark_covers(&seen, &mark))
                {
                    reached_seen |= stop_at_seen && state.baselined;
                    continue;
                }
                let mut filtered = match &mut filter {
                    // An error lets the item through: its run then fails with the message.
                    Some((filter, ctx)) => {
                        ctx.data_mut()["trigger"] = record;
                        let passes = filter.render_string(ctx).map(|t| crate::template::truthy(&t)).unwrap_or(true);
                        record = std::mem::take(&mut ctx.data_mut()["trigger"]);
                        !passes
                    }
                    None => false,
                };
                // An item that ran and no longer passes the filter has left: it runs once
                // more, marked gone.
                let gone = filtered && present.as_ref().is_some_and(|p| p.contains(&id));
                if gone {
                    filtered = false;
                    if let Some(fields) = record.as_object_mut() {
                        fields.insert("gone".into(), Value::Bool(true));
                    }
                }
                // A baseline runs nothing: its records are not kept.
                let slot = if baseline { None } else { Some(spill.put(&record).await?) };
                new_items.push(NewItem { id, mark, at, slot, filtered, gone });
            }
            if reached_seen {
                stopped_early = true;
                break;
            }
        }
        if changes_newest_first && !stopped_early && !pager.stopped_at_bound() {
            state.last_full_scan = Some(now);
        }
        let stopped_at_bound = pager.stopped_at_bound();
        state.resume = if stopped_at_bound { pager.next_inputs() } else { None };

        // New items run oldest first.
        new_items.sort_by_key(|i| i.at);
        // The cursor moves to the newest record timestamp read (never the local clock).
        if let Some(d) = newest
            && state.cursor.as_deref().and_then(|c| parse_date(&Value::String(c.to_owned()))).is_none_or(|c| d > c)
        {
            state.cursor = Some(d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
        // Items missing from a whole read (one that began on page 1 and reached the end)
        // were deleted at the source: each that ran runs once more, marked gone.
        if let Some(present) = &present
            && resumed.is_none()
            && !stopped_early
            && !stopped_at_bound
        {
            let mut missing: Vec<&String> = present.iter().filter(|id| !read_ids.contains(*id)).collect();
            missing.sort();
            for id in missing {
                let slot = Some(spill.put(&serde_json::json!({"id": id, "gone": true})).await?);
                // No seen mark: the record is gone, there is nothing to compare later.
                new_items.push(NewItem {
                    id: id.clone(),
                    mark: String::new(),
                    at: None,
                    slot,
                    filtered: false,
                    gone: true,
                });
            }
        }
        drop(read_ids);

        let filtered = new_items.iter().filter(|i| i.filtered).count();
        let mut outcome = PollOutcome {
            recipe: recipe.id.clone(),
            fetched,
            new: new_items.iter().filter(|i| !i.mark.is_empty()).count(),
            gone: new_items.iter().filter(|i| i.gone).count(),
            stopped_at_bound,
            ..Default::default()
        };
        let passing = new_items.len() - filtered;
        let status = if baseline {
            outcome.baseline = true;
            None
        } else if !first_poll && trigger.hold_above.is_some_and(|n| passing > n as usize) {
            outcome.held = passing;
            Some(RunStatus::Held)
        } else {
            Some(RunStatus::Queued)
        };
        // A baseline spans every page: it is complete only once the walk got to the end.
        state.baselined = state.baselined || !stopped_at_bound || trigger.start == Start::Backfill;
        state.last_poll = Some(crate::http::auth::unix_now());
        state.last_error = None;

        if self.options.dry_run {
            let plan = &mut outcome.plan;
            match status {
                None => plan.lines.push(format!(
                    "{}: first poll would record a baseline of {} item(s) and run nothing",
                    recipe.id,
                    new_items.len()
                )),
                Some(RunStatus::Held) => plan.lines.push(format!(
                    "{}: {} new item(s) would be held (more than hold_above)",
                    recipe.id,
                    new_items.len()
                )),
                Some(_) => {
                    for item in &new_items {
                        self.plan_item(recipe, &item.id, &spill.take(item.slot).await?, plan).await;
                    }
                    if new_items.is_empty() {
                        plan.lines.push(format!("{}: no new items", recipe.id));
                    }
                }
            }
            return Ok(outcome);
        }

        // Recorded in chunks, oldest first: each chunk's runs, seen marks and present items
        // at once, then the trigger's position last. A crash between chunks leaves the
        // position where it was: the next poll reads the feed again, and the chunks already
        // recorded are seen, so nothing runs twice and nothing is lost.
        let generation = state.generation;
        let mut items = new_items.into_iter().peekable();
        loop {
            let mut commit = PollCommit { generation, ..Default::default() };
            for item in items.by_ref().take(COMMIT_CHUNK) {
                if !item.mark.is_empty() {
                    commit.seen.push((item.id.clone(), item.mark.clone()));
                }
                let Some(status) = status else { continue };
                commit.spilled.extend(item.slot);
                let record = spill.take(item.slot).await?;
                if item.gone {
                    commit.left.push(item.id.clone());
                } else if present.as_ref().is_some_and(|p| !item.filtered && !p.contains(&item.id)) {
                    commit.joined.push(item.id.clone());
                }
                let mut run = new_run(self, recipe, status, item.id, record);
                if item.filtered {
                    run.status = RunStatus::Filtered;
                    run.steps.clear();
                    run.finished = Some(now_iso());
                    outcome.filtered += 1;
                } else if status == RunStatus::Queued {
                    outcome.queued.push(run.id.clone());
                }
                commit.runs.push(run);
            }
            let last = items.peek().is_none();
            if last {
                commit.state = Some(state.clone());
            }
            match self.store.commit_poll(&recipe.id, &commit).await {
                // Runs an instant delivery recorded first are not run again.
                Ok(covered) if !covered.is_empty() => {
                    outcome.queued.retain(|id| !covered.contains(id));
                    tracing::debug!(runs = covered.len(), "items an instant delivery recorded meanwhile");
                }
                Ok(_) => {}
                // `trigger reset` arrived while the feed was read: the reset wins, and the
                // next poll starts from where it put the trigger.
                Err(crate::store::StoreError::TriggerMoved { .. }) => {
                    tracing::warn!("the trigger was reset during this poll; what it had not recorded yet is dropped");
                    spill.clear().await?;
                    return Ok(PollOutcome {
                        recipe: recipe.id.clone(),
                        fetched: outcome.fetched,
                        ..Default::default()
                    });
                }
                Err(e) => return Err(e.into()),
            }
            if last {
                break;
            }
        }
        self.store.flush_async().await?;
        tracing::debug!(
            fetched = outcome.fetched,
            new = outcome.new,
            queued = outcome.queued.len(),
            held = outcome.held,
            baseline = outcome.baseline,
            "read the feed"
        );
        Ok(outcome)
    }

    /// `ghlflow test`: the newest items of the trigger's first page (newest first, at most
    /// `limit`), each with its id. Reads only: the trigger's position and seen marks stay.
    pub async fn latest_items(&self, recipe: &Recipe, limit: usize) -> Result<Vec<(String, Value)>, EngineError> {
        let fail = |message: String| EngineError::Poll { recipe: recipe.id.clone(), message };
        let trigger = &recipe.trigger;
        let inputs = trigger_inputs(recipe, None).map_err(fail)?;
        let mut pager =
            Pager::new(&self.client, Arc::clone(&trigger.connection), Arc::clone(&trigger.operation), inputs, None);
        let mut records = match pager.next_page().await {
            Some(page) => page.map_err(|e| fail(self.config.redactor.redact(&e.to_string())))?.records,
            None => Vec::new(),
        };
        if let Some(field) = trigger.operation.output.as_ref().and_then(|o| o.updated.clone()) {
            // Newest first, whatever order the feed has.
            records.sort_by_key(|r| std::cmp::Reverse(field.get(r).and_then(parse_date)));
        }
        records.truncate(limit);
        Ok(records.into_iter().map(|r| (self.identity(recipe, &r).0, r)).collect())
    }

    /// `ghlflow test --send`: records a queued run of `item` outside any poll (the trigger's
    /// position and seen marks stay as they are) and returns its id.
    pub async fn record_run(
        &self,
        recipe: &Recipe,
        item_id: String,
        item: Value,
    ) -> Result<crate::store::RunId, EngineError> {
        let run = new_run(self, recipe, RunStatus::Queued, item_id, item);
        self.store.create_runs(std::slice::from_ref(&run)).await?;
        self.store.flush_async().await?;
        Ok(run.id)
    }

    /// An item's id as the trigger's dedupe sees it (a content hash when it has none).
    pub fn item_id(&self, recipe: &Recipe, record: &Value) -> String {
        self.identity(recipe, record).0
    }

    /// The item's id and the mark that tells whether it changed.
    fn identity(&self, recipe: &Recipe, record: &Value) -> (String, String) {
        let output = recipe.trigger.operation.output.as_ref();
        let list = output.is_some_and(|o| matches!(o.records, crate::catalog::Records::Items(_)));
        item_identity(output, recipe.trigger.dedupe, list, record, String::new)
    }
}

/// A record's id and its seen mark under `dedupe`, read where `output` says. `keyed` is false
/// for a single watched record (one key for it, whatever it holds). A change time the record
/// lacks reads as `missing_updated()`.
pub(super) fn item_identity(
    output: Option<&crate::catalog::Output>,
    dedupe: Dedupe,
    keyed: bool,
    record: &Value,
    missing_updated: impl FnOnce() -> String,
) -> (String, String) {
    let id = output
        .and_then(|o| o.id.as_ref())
        .and_then(|p| p.get(record))
        .map(scalar)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| content_hash(record));
    match dedupe {
        Dedupe::Id => (id, "seen".into()),
        Dedupe::IdUpdated => {
            let updated = output
                .and_then(|o| o.updated.as_ref())
                .and_then(|p| p.get(record))
                .map(scalar)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(missing_updated);
            (id, format!("u:{updated}"))
        }
        // One record watched: one key, its content as the mark. Records of a list with no
        // timestamps (a contact's tasks): each by its id, its content as the mark, so an
        // edit or a completion fires.
        Dedupe::Content => (if keyed { id } else { "record".into() }, content_hash(record)),
    }
}

/// A trigger's rendered inputs, with its `since` filter set from `cursor` (less the overlap).
fn trigger_inputs(recipe: &Recipe, cursor: Option<&str>) -> Result<Map<String, Value>, String> {
    let (trigger, op) = (&recipe.trigger, &recipe.trigger.operation);
    let ctx = context(serde_json::json!({"connection": connection_view(&trigger.connection), "env": env_view(recipe)}));
    let mut inputs = render_inputs(&trigger.input, &ctx)?;
    if let (Some(since), Some(cursor)) = (&op.since, cursor)
        && let Some(at) = parse_date(&Value::String(cursor.to_owned()))
    {
        let from = at.checked_sub_signed(SINCE_OVERLAP).unwrap_or(at);
        inputs.insert(since.clone(), Value::String(from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    }
    // A feed that requires its `since` (Capsule's deletions) starts from the beginning.
    if let Some(since) = &op.since
        && !inputs.contains_key(since)
        && op.input(since).is_some_and(|i| i.required)
    {
        inputs.insert(since.clone(), Value::String("1970-01-01T00:00:00Z".into()));
    }
    Ok(inputs)
}

pub(super) fn new_run(engine: &Engine, recipe: &Recipe, status: RunStatus, item_id: String, item: Value) -> RunRecord {
    RunRecord {
        steps: recipe.steps.iter().map(|s| StepRecord::pending(&s.id, &s.operation.key.to_string())).collect(),
        ..RunRecord::new(engine.store.next_run_id(), &recipe.id, status, &item_id, item, now_iso())
    }
}

pub(super) fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A stable hash of a record's content (keys sorted, so field order does not matter).
pub fn content_hash(record: &Value) -> String {
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut sorted: Vec<(&String, &Value)> = m.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), canonical(v))).collect::<Map<_, _>>())
            }
            Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    let digest = Sha256::digest(canonical(record).to_string().as_bytes());
    hex::encode(&digest[..16])
}
