//! Recipes: the user's automations, compiled against the catalog and the configuration.
//!
//! `spec` mirrors the YAML; `compile` checks a recipe completely before anything runs
//! (operations, connections, inputs, every template reference, schedules, access) and
//! reports all problems at once; the types below are what the runtime executes. A compiled
//! recipe holds parsed templates, typed schedules and resolved operations and connections.

mod compile;
pub mod spec;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

pub use compile::{compile_recipe, load_recipes, schema_json};

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
    pub autoreplay: bool,
    /// Runs in flight at once (1: one after another, oldest first).
    pub concurrency: std::num::NonZeroUsize,
}

#[derive(Debug, Clone)]
pub struct Trigger {
    pub operation: Arc<Operation>,
    pub connection: Arc<Connection>,
    pub input: Vec<(String, ValueTemplate)>,
    pub schedule: Schedule,
    pub start: Start,
    /// Hold a batch larger than this (None: never hold).
    pub hold_above: Option<u32>,
    pub dedupe: Dedupe,
    /// What identifies the trigger's position: editing anything else keeps it.
    pub fingerprint: String,
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
}

/// How to look for what a write whose answer was lost created.
#[derive(Debug, Clone)]
pub struct Find {
    pub operation: Arc<Operation>,
    pub input: Vec<(String, ValueTemplate)>,
    pub matcher: CompiledTemplate,
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

/// Null, or a string of only whitespace.
pub fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}
