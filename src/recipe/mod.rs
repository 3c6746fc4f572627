//! Recipes: the user's automations, compiled against the catalog and the configuration.
//!
//! `spec` mirrors the YAML; `compile` checks a recipe completely before anything runs
//! (operations, connections, inputs, every template reference, schedules, access) and
//! reports all problems at once; the types below are what the runtime executes. A compiled
//! recipe holds parsed templates, typed schedules and resolved operations and connections.

mod compile;
pub mod spec;

use std::borrow::Borrow;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

pub use compile::{compile_recipe, load_recipes, schema_json};

/// The shipped recipes (`recipes/`), built into the binary: `ghlflow init` writes them, the
/// demo runs them.
pub static SHIPPED: include_dir::Dir<'static> = include_dir::include_dir!("$CARGO_MANIFEST_DIR/recipes");

use crate::catalog::{Dedupe, Operation};
use crate::config::Connection;
use crate::template::CompiledTemplate;

/// A compiled recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The file stem.
    pub id: String,
    pub name: String,
    /// The file it came from.
    pub file: String,
    pub trigger: Trigger,
    pub filter: Option<CompiledTemplate>,
    pub steps: Vec<Step>,
    /// When a failed run that trying again may cure is tried again (`autoreplay: true`).
    pub autoreplay: Option<crate::catalog::RetryPolicy>,
    /// Runs in flight at once (1: one after another, oldest first).
    pub concurrency: std::num::NonZeroUsize,
    /// Recipes polled before this one in each tick (ids, checked to exist and not to loop).
    pub after: Vec<String>,
    /// Reference reads shared by a poll's runs (`lookups.<name>`).
    pub lookups: Vec<Lookup>,
    /// What templates see as `env`: every variable the recipe names, read when it was
    /// compiled, with its `settings:` defaults filled in.
    pub env: Map<String, Value>,
}

/// A read whose records templates see as `lookups.<name>`, fetched at most once per poll.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub name: String,
    pub operation: Arc<Operation>,
    pub connection: Arc<Connection>,
    pub input: Vec<(String, ValueTemplate)>,
}

#[derive(Debug, Clone)]
pub struct Trigger {
    /// The operation polled on `schedule`: the recipe's polling trigger, or for an instant
    /// trigger its reconciling poll. When `polls` is false (an instant trigger with no
    /// reconciling poll) this is the webhook operation itself, which is never sent: the
    /// scheduler must skip the recipe's polls.
    pub operation: Arc<Operation>,
    /// Whether `operation` is polled at all.
    pub polls: bool,
    /// The events the listener hands this recipe, each run like a polled item: the recipe's
    /// own instant trigger, or the `instant:` list of a polling trigger. Empty for a recipe
    /// that only polls.
    pub listens: Vec<Listen>,
    pub connection: Arc<Connection>,
    pub input: Vec<(String, ValueTemplate)>,
    pub schedule: Schedule,
    pub start: Start,
    /// Hold a batch larger than this (None: never hold).
    pub hold_above: Option<u32>,
    pub dedupe: Dedupe,
    /// How often a feed of changes listed newest first is read whole (see the spec).
    pub full_scan_every: Duration,
    /// Items that leave the feed (deleted, or no longer passing the filter) run once more,
    /// with `trigger.gone` set.
    pub report_gone: bool,
    /// What identifies the trigger's position: editing anything else keeps it.
    pub fingerprint: String,
}

/// One event a recipe receives: on which connection (its app and account), the event's name
/// as the API spells it, and the webhook operation that describes its body (where the records
/// are: `output.records`, and their id).
#[derive(Debug, Clone)]
pub struct Listen {
    pub connection: Arc<Connection>,
    pub event: String,
    pub operation: Arc<Operation>,
}

impl Trigger {
    /// Whether the recipe receives pushed events.
    pub fn is_instant(&self) -> bool {
        !self.listens.is_empty()
    }
}

#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron { schedule: Box<cron::Schedule>, timezone: chrono_tz::Tz, source: String },
}

impl Schedule {
    /// The nominal time between polls (the cron's first gap), used for jitter.
    pub fn period(&self) -> Duration {
        match self {
            Schedule::Every(d) => *d,
            Schedule::Cron { schedule, timezone, .. } => {
                let mut it = schedule.upcoming(*timezone);
                match (it.next(), it.next()) {
                    (Some(a), Some(b)) => (b - a).to_std().unwrap_or(Duration::from_secs(60)),
                    _ => Duration::from_secs(60),
                }
            }
        }
    }

    /// The next poll after `after`.
    pub fn next_after(&self, after: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
        match self {
            Schedule::Every(d) => after + chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::minutes(5)),
            Schedule::Cron { schedule, timezone, .. } => schedule
                .after(&after.with_timezone(timezone))
                .next()
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or(after + chrono::Duration::days(365)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The first poll records a baseline and fires nothing.
    Now,
    /// The first poll runs the whole history, with no hold.
    Backfill,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub operation: Arc<Operation>,
    pub connection: Arc<Connection>,
    pub condition: Option<CompiledTemplate>,
    pub input: Vec<(String, ValueTemplate)>,
    /// `ids.<name>` lookups: name and key template.
    pub ids: Vec<(String, CompiledTemplate)>,
    /// Ids to remember after success: key template and id template.
    pub save: Vec<(CompiledTemplate, CompiledTemplate)>,
    pub find: Option<Find>,
    /// `ids` names that must be known before the step runs (else the run waits).
    pub wait_for: Vec<String>,
    /// `ids` names forgotten when the step answers "not found" (the run then starts over).
    pub forget_when_gone: Vec<String>,
}

/// How to look for what a write whose answer was lost created.
#[derive(Debug, Clone)]
pub struct Find {
    /// A first read whose records each give the candidates' list (`from.<field>`).
    pub from: Option<FindFrom>,
    pub operation: Arc<Operation>,
    pub input: Vec<(String, ValueTemplate)>,
    pub matcher: CompiledTemplate,
}

/// The first read of a two-step find.
#[derive(Debug, Clone)]
pub struct FindFrom {
    pub operation: Arc<Operation>,
    pub input: Vec<(String, ValueTemplate)>,
}

/// An input value: a template, or a structure with templates inside.
#[derive(Debug, Clone)]
pub enum ValueTemplate {
    Literal(Value),
    Template(CompiledTemplate),
    Array(Vec<ValueTemplate>),
    Object(Vec<(String, ValueTemplate)>),
}

impl ValueTemplate {
    /// Renders against a context; missing values come out as null, empty strings stay.
    pub fn render(&self, ctx: &handlebars::Context) -> Result<Value, String> {
        Ok(match self {
            ValueTemplate::Literal(v) => v.clone(),
            ValueTemplate::Template(t) => t.render(ctx)?,
            ValueTemplate::Array(items) => Value::Array(items.iter().map(|i| i.render(ctx)).collect::<Result<_, _>>()?),
            ValueTemplate::Object(fields) => {
                let mut m = Map::new();
                for (k, v) in fields {
                    let value = v.render(ctx)?;
                    if !is_blank(&value) {
                        m.insert(k.clone(), value);
                    }
                }
                Value::Object(m)
            }
        })
    }

    /// Every template inside.
    pub fn templates(&self) -> Vec<&CompiledTemplate> {
        match self {
            ValueTemplate::Literal(_) => Vec::new(),
            ValueTemplate::Template(t) => vec![t],
            ValueTemplate::Array(items) => items.iter().flat_map(|i| i.templates()).collect(),
            ValueTemplate::Object(fields) => fields.iter().flat_map(|(_, v)| v.templates()).collect(),
        }
    }
}

/// `autoreplay: true`: a failed run that trying again may cure is tried again after about
/// 1, 2, 4, 8 and 16 minutes (each up to twice that, with jitter), then it stays failed.
pub const AUTOREPLAY: crate::catalog::RetryPolicy = crate::catalog::RetryPolicy {
    max_attempts: std::num::NonZeroU32::new(6).unwrap(),
    initial_backoff: std::time::Duration::from_secs(60),
    max_backoff: std::time::Duration::from_secs(16 * 60),
    multiplier: 2.0,
};

/// Renders a list of named inputs: blank optional values are left out (the caller knows which
/// are required and reports those).
pub fn render_inputs(
    inputs: &[(String, ValueTemplate)],
    ctx: &handlebars::Context,
) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (name, t) in inputs {
        let value = t.render(ctx).map_err(|e| format!("input `{name}`: {e}"))?;
        if !is_blank(&value) {
            out.insert(name.clone(), value);
        }
    }
    Ok(out)
}

/// The recipes in waves: each wave's recipes depend (`after:`) only on earlier waves', so a
/// tick polls the waves one after another and the recipes of a wave together. Dependencies on
/// recipes not in `recipes` are ignored (a recipe run alone with `--recipe`). A circle of
/// dependencies is an error naming it.
pub fn poll_order<R: Borrow<Recipe>>(recipes: &[R]) -> Result<Vec<Vec<String>>, Vec<String>> {
    use std::collections::{BTreeMap, BTreeSet};
    let present: BTreeSet<&str> = recipes.iter().map(|r| r.borrow().id.as_str()).collect();
    let mut pending: BTreeMap<&str, BTreeSet<&str>> = recipes
        .iter()
        .map(Borrow::borrow)
        .map(|r: &Recipe| (r.id.as_str(), r.after.iter().map(String::as_str).filter(|d| present.contains(d)).collect()))
        .collect();
    let mut waves = Vec::new();
    while !pending.is_empty() {
        let ready: Vec<&str> = pending.iter().filter(|(_, deps)| deps.is_empty()).map(|(id, _)| *id).collect();
        if ready.is_empty() {
            // Every remaining recipe waits for another: walk from one to find the circle.
            let mut path: Vec<&str> = Vec::new();
            let mut at = *pending.keys().next().unwrap_or(&"");
            while !path.contains(&at) {
                path.push(at);
                at = pending.get(at).and_then(|d| d.iter().next().copied()).unwrap_or(at);
            }
            let start = path.iter().position(|p| *p == at).unwrap_or(0);
            let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
            cycle.push(at.to_owned());
            return Err(cycle);
        }
        for id in &ready {
            pending.remove(id);
        }
        for deps in pending.values_mut() {
            for id in &ready {
                deps.remove(id);
            }
        }
        waves.push(ready.into_iter().map(str::to_owned).collect());
    }
    Ok(waves)
}

/// Null, or a string of only whitespace.
pub fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}
