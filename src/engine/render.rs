//! What a step comes to for one item before anything is sent: the run's template context,
//! the recipe's filter, the `ids` a step reads, its `if`, and its rendered inputs.
//!
//! Execution and the dry-run plan both render through `Engine::render_step`, so a plan shows
//! what a run would do, and a step fails for the same reason in both. Failures are a
//! `StepError`: the kind says whether trying again later can help.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::{Engine, connection_view, env_view};
use crate::http::HttpError;
use crate::recipe::{Recipe, Step, is_blank, render_inputs};
use crate::store::StoreError;
use crate::template::{context, truthy};

/// Why a run, or one of its steps, failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A template, an id key or a required input that does not render: the same data fails
    /// the same way, so nothing tries it again by itself.
    #[error("{0}")]
    Render(String),
    /// A lookup the recipe's templates read could not be read (the API's error).
    #[error("{0}")]
    Lookup(String),
    /// The API's answer, after the HTTP layer's retries.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The id map could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An id another recipe was to record never came.
    #[error("gave up after {hours} hours {what}")]
    GaveUpWaiting { hours: i64, what: String },
}

impl StepError {
    /// Whether the run may succeed if tried again later unchanged (what `autoreplay` retries).
    pub fn is_retryable(&self) -> bool {
        match self {
            StepError::Http(e) => e.is_retryable(),
            StepError::Lookup(_) => true,
            StepError::Render(_) | StepError::Store(_) | StepError::GaveUpWaiting { .. } => false,
        }
    }

    /// When the server asked to be tried again (Unix seconds), if it named a time.
    pub fn retry_at(&self) -> Option<u64> {
        match self {
            StepError::Http(HttpError::Status { status: 429, retry_after: Some(wait), .. }) => {
                Some(crate::http::auth::unix_now() + wait.as_secs().max(1))
            }
            _ => None,
        }
    }
}

/// One step, rendered for one item.
#[derive(Debug)]
pub(super) enum StepPlan {
    /// Its `if` rendered false.
    Skipped,
    /// An id it waits for (`wait_for`) is not recorded yet: name and the key looked up.
    Waits { name: String, key: String },
    /// It sends these inputs.
    Sends(Rendered),
}

/// A step's rendered request inputs and what they were rendered from.
#[derive(Debug)]
pub(super) struct Rendered {
    pub inputs: Map<String, Value>,
    /// The context the inputs were rendered in (with `ids`), kept for the step's `find` and
    /// `save` and for a plan; empty when the step has neither and no plan asked.
    pub context: Value,
    /// The id-map keys the step read, by `ids` name.
    pub id_keys: Vec<(String, String)>,
}

/// What every template of a run sees, before any step: `trigger`, `env`, `lookups`.
pub(super) fn run_context(recipe: &Recipe, item: &Value, lookups: Value) -> Value {
    json!({"trigger": item, "connection": Value::Null, "env": env_view(recipe), "lookups": lookups})
}

/// The run's context as one step sees it: its connection and the answers so far.
pub(super) fn step_context(
    base: &Value,
    connection: &crate::config::Connection,
    outputs: &Map<String, Value>,
) -> Value {
    let mut v = base.clone();
    if let Value::Object(m) = &mut v {
        m.insert("connection".into(), connection_view(connection));
        m.insert("steps".into(), Value::Object(outputs.clone()));
    }
    v
}

pub(super) fn set_root(ctx: &mut Value, name: &str, value: Value) {
    if let Value::Object(m) = ctx {
        m.insert(name.to_owned(), value);
    }
}

/// Whether `item` is a run's report that its record left the feed (`trigger.report_gone`).
pub(super) fn reports_gone(recipe: &Recipe, item: &Value) -> bool {
    recipe.trigger.report_gone && item.get("gone") == Some(&Value::Bool(true))
}

/// Whether the recipe's filter lets the item through. A run reporting an item gone passes:
/// it is there because the item left the filter (or the feed).
pub(super) fn passes_filter(recipe: &Recipe, base: &Value) -> Result<bool, StepError> {
    let Some(filter) = &recipe.filter else { return Ok(true) };
    if reports_gone(recipe, &base["trigger"]) {
        return Ok(true);
    }
    let ctx = context(step_context(base, &recipe.trigger.connection, &Map::new()));
    let text = filter.render_string(&ctx).map_err(|e| StepError::Render(format!("filter: {e}")))?;
    Ok(truthy(&text))
}

impl Engine {
    /// Renders step `step` of a run of `item_id`: its ids, its `if`, its inputs. `planned`
    /// (a dry run's) maps id keys the plan's earlier steps would have saved to placeholders;
    /// they win over the id map, and the context is always kept.
    pub(super) async fn render_step(
        &self,
        step: &Step,
        base: &Value,
        outputs: &Map<String, Value>,
        planned: Option<&HashMap<String, Value>>,
        item_id: &str,
    ) -> Result<StepPlan, StepError> {
        let mut ctx_value = step_context(base, &step.connection, outputs);
        let mut id_keys = Vec::new();
        let mut missing = None;
        if !step.ids.is_empty() {
            let (ids, keys) = self.resolve_ids(step, &ctx_value, planned).await?;
            missing = awaited_id(step, &ids, &keys);
            set_root(&mut ctx_value, "ids", ids);
            id_keys = keys;
        }
        // The handlebars context takes the value; a copy is kept only for those who read it.
        let keep = planned.is_some() || step.find.is_some() || !step.save.is_empty();
        let ctx = if keep { context(ctx_value.clone()) } else { context(std::mem::take(&mut ctx_value)) };
        if let Some(cond) = &step.condition {
            let text = cond.render_string(&ctx).map_err(|e| StepError::Render(format!("if: {e}")))?;
            if !truthy(&text) {
                return Ok(StepPlan::Skipped);
            }
        }
        // Checked only once the step is to run: a skipped step waits for nothing.
        if let Some((name, key)) = missing {
            return Ok(StepPlan::Waits { name, key });
        }
        let inputs = step_inputs(step, &ctx, item_id)?;
        Ok(StepPlan::Sends(Rendered { inputs, context: ctx_value, id_keys }))
    }

    /// `ids.<name>` for a step: each key rendered and looked up in the id map (or in
    /// `planned`). Also returns the rendered keys by name (to forget them, or to say what a
    /// run waits for).
    async fn resolve_ids(
        &self,
        step: &Step,
        ctx: &Value,
        planned: Option<&HashMap<String, Value>>,
    ) -> Result<(Value, Vec<(String, String)>), StepError> {
        let mut ids = Map::new();
        let mut keys = Vec::new();
        // In order: a key may use the ids named above it.
        let mut ctx = ctx.clone();
        for (name, key) in &step.ids {
            set_root(&mut ctx, "ids", Value::Object(ids.clone()));
            let key =
                key.render_string(&context(ctx.clone())).map_err(|e| StepError::Render(format!("ids.{name}: {e}")))?;
            let key = key.trim().to_owned();
            let id = match planned.and_then(|p| p.get(&key)) {
                Some(placeholder) => placeholder.clone(),
                None if key.is_empty() => Value::Null,
                None => self.store.id_of(&key).await?.map(Value::String).unwrap_or(Value::Null),
            };
            ids.insert(name.clone(), id);
            keys.push((name.clone(), key));
        }
        Ok((Value::Object(ids), keys))
    }

    /// After a step succeeded (or, in a plan, would have): the ids its `save` names, as key
    /// and value, rendered with the step's answer in `steps`.
    pub(super) fn ids_to_save(
        &self,
        step: &Step,
        ctx: &Value,
        outputs: &Map<String, Value>,
    ) -> Result<Vec<(String, String)>, StepError> {
        if step.save.is_empty() {
            return Ok(Vec::new());
        }
        let mut ctx = ctx.clone();
        set_root(&mut ctx, "steps", Value::Object(outputs.clone()));
        let ctx = context(ctx);
        let mut out = Vec::new();
        for (key, value) in &step.save {
            let key = key.render_string(&ctx).map_err(|e| StepError::Render(format!("save: {e}")))?;
            let value = value.render_string(&ctx).map_err(|e| StepError::Render(format!("save: {e}")))?;
            if !key.trim().is_empty() && !value.trim().is_empty() {
                out.push((key.trim().to_owned(), value.trim().to_owned()));
            }
        }
        Ok(out)
    }
}

/// Renders a step's inputs; a required input that renders empty fails the step.
fn step_inputs(step: &Step, ctx: &handlebars::Context, item_id: &str) -> Result<Map<String, Value>, StepError> {
    let mut inputs = render_inputs(&step.input, ctx).map_err(StepError::Render)?;
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
        return Err(StepError::Render(format!(
            "required input{} {} rendered empty for item {item_id}",
            if empty.len() == 1 { "" } else { "s" },
            empty.join(", ")
        )));
    }
    Ok(inputs)
}

/// The first of a step's `wait_for` ids not in the id map yet, with the key it was looked
/// up under: what the run waits for.
fn awaited_id(step: &Step, ids: &Value, keys: &[(String, String)]) -> Option<(String, String)> {
    let name = step.wait_for.iter().find(|n| ids.get(n.as_str()).is_none_or(Value::is_null))?;
    let key = keys.iter().find(|(n, _)| n == name).map(|(_, k)| k.clone()).unwrap_or_default();
    Some((name.clone(), key))
}
