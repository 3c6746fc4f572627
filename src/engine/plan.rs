//! The dry run: what a run of one item would send, as lines for the caller to print, with
//! nothing sent but reads and nothing recorded.
//!
//! Steps render through the same `Engine::render_step` as a real run. What an earlier step
//! would have answered is unknown, so every value read from it is a visible placeholder
//! (`<steps.contact.contact.id>`), never a plausible-looking sample; an id an earlier step
//! would have saved reads as that placeholder too.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::Engine;
use super::render::{StepPlan, passes_filter, run_context};
use crate::http::prepare;
use crate::recipe::{Recipe, Step};

/// A dry run's account of some items: the lines to print, and how many steps would fail.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub lines: Vec<String>,
    pub failures: usize,
}

impl Engine {
    /// `ghlflow test`: the dry-run plan of one item (the lines `run --once --dry-run` prints
    /// for it). Sends no write and records nothing.
    pub async fn plan_one(&self, recipe: &Recipe, item_id: &str, item: &Value) -> Plan {
        let mut plan = Plan::default();
        self.plan_item(recipe, item_id, item, &mut plan).await;
        plan
    }

    /// Adds to `plan` what a run of `item` would do. The recipe's lookups are read (they are
    /// reads), as a real run would.
    pub(super) async fn plan_item(&self, recipe: &Recipe, item_id: &str, item: &Value, plan: &mut Plan) {
        let line = |rest: String| format!("{}: item {item_id}: {rest}", recipe.id);
        let lookups = match self.lookups(recipe).await {
            Ok(l) => l,
            Err(e) => {
                plan.failures += 1;
                plan.lines.push(line(format!("would fail: {e}")));
                return;
            }
        };
        let base = run_context(recipe, item, lookups);
        match passes_filter(recipe, &base) {
            Ok(true) => {}
            Ok(false) => return plan.lines.push(line("filtered out".into())),
            Err(e) => {
                plan.failures += 1;
                plan.lines.push(line(format!("would fail: {e}")));
                return;
            }
        }
        let mut outputs = Map::new();
        // Ids the planned steps would have saved: key -> placeholder.
        let mut saved: HashMap<String, Value> = HashMap::new();
        for step in &recipe.steps {
            let guessed = step.condition.as_ref().is_some_and(|c| reads_placeholder(c, &outputs));
            let context = match self.render_step(step, &base, &outputs, Some(&saved), item_id).await {
                Ok(StepPlan::Skipped) => {
                    let note = if guessed { " (it read a placeholder; the real run may differ)" } else { "" };
                    plan.lines.push(line(format!("step `{}` skipped (if){note}", step.id)));
                    continue;
                }
                Ok(StepPlan::Waits { name, key }) => {
                    plan.lines.push(line(format!(
                        "step `{}` would wait: no id `{key}` is recorded yet (ids.{name}; another recipe records it)",
                        step.id
                    )));
                    return;
                }
                Ok(StepPlan::Sends(rendered)) => {
                    if guessed {
                        plan.lines.push(line(format!(
                            "step `{}`: its `if` read a placeholder for an earlier step's answer; the real run may skip it",
                            step.id
                        )));
                    }
                    plan.lines.push(line(self.request_text(step, rendered.inputs).unwrap_or_else(|e| {
                        plan.failures += 1;
                        format!("step `{}` would fail: {e}", step.id)
                    })));
                    rendered.context
                }
                Err(e) => {
                    plan.failures += 1;
                    plan.lines.push(line(format!("step `{}` would fail: {e}", step.id)));
                    continue;
                }
            };
            outputs.insert(step.id.clone(), placeholders(step, recipe));
            // What the step would save, so later steps' `ids` see a placeholder, not nothing.
            if let Ok(ids) = self.ids_to_save(step, &context, &outputs) {
                saved.extend(ids.into_iter().map(|(k, v)| (k, Value::String(v))));
            }
        }
    }

    /// The request a step would send, as text (secrets redacted).
    fn request_text(&self, step: &Step, inputs: Map<String, Value>) -> Result<String, String> {
        let redact = |text: &str| self.config.redactor.redact(text);
        match prepare(&step.operation, &step.connection, &inputs) {
            Ok(request) => Ok(format!(
                "step `{}` would send:\n{}",
                step.id,
                indent(&readable_placeholders(&redact(&request.render("Bearer"))))
            )),
            // A placeholder where the operation wants a number or a boolean: the request
            // cannot be built before the earlier step answers; show the inputs.
            Err(_) if has_placeholder(&Value::Object(inputs.clone())) => Ok(format!(
                "step `{}` would send {} with these inputs (built once the earlier steps answer):\n{}",
                step.id,
                step.operation.key,
                indent(&redact(&serde_json::to_string_pretty(&Value::Object(inputs)).unwrap_or_default()))
            )),
            Err(e) => Err(e.to_string()),
        }
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
