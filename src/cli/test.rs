//! `ghlflow test RECIPE`: a recipe tried on real items, as a "test this step" button would.
//!
//! The items are the trigger's newest (read with one request, leaving the trigger's position
//! alone), one given with `--item`, or the item of an earlier run (`--item-id`). Without
//! `--send` each item goes through the engine's dry run (the same renderer as
//! `run --once --dry-run`): the filter and every `if` are checked and each request is printed;
//! nothing is sent or recorded. With `--send` each item becomes a recorded run, executed like
//! any other, and `ghlflow runs show` has it afterwards.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde_json::Value;

use super::{CliError, CliResult, load_catalog, load_config, print};
use crate::engine::{Engine, EngineOptions};
use crate::recipe::Recipe;
use crate::store::{RunStatus, StepStatus, Store, StoreError};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow test vip-follow-up                    the trigger's 3 newest items; nothing is sent
  ghlflow test vip-follow-up --limit 1 --send   send for the newest item and record a run
  ghlflow test vip-follow-up --item @person.json
  ghlflow test vip-follow-up --item-id 254101598")]
pub struct TestArgs {
    /// The recipe to test: its id, which is its file name in recipes/ without `.yaml`.
    recipe: String,
    /// Test with this item instead of the trigger's newest: a JSON object shaped like one
    /// trigger item, or `@file.json`.
    #[arg(long, value_name = "JSON|@FILE", conflicts_with = "item_id")]
    item: Option<String>,
    /// Test with the trigger item of an earlier run of this recipe, by its item id (the ITEM
    /// column of `ghlflow runs list`).
    #[arg(long, value_name = "ID")]
    item_id: Option<String>,
    /// How many of the trigger's newest items to test with.
    #[arg(long, value_name = "N", default_value_t = 3)]
    limit: usize,
    /// Send the requests for real and record a run per item (`ghlflow runs show RUN`). The
    /// trigger's position is not moved: if the item is new to it, `ghlflow run` runs it again.
    #[arg(long)]
    send: bool,
    /// The configuration file; recipes are read from `recipes/` beside it.
    #[arg(long, default_value = "ghlflow.yaml")]
    config: PathBuf,
}

pub async fn run(args: TestArgs, operations: Option<&Path>) -> CliResult {
    let catalog = Arc::new(load_catalog(operations)?);
    let config = Arc::new(load_config(&args.config, &catalog)?);
    let recipe = load_one(&config, &catalog, &args.recipe)?;

    // The id map and history are read from the state store. A running `ghlflow run` holds it;
    // a dry run then goes on with an empty store (and says so), a real send does not.
    let opened = if !args.send && config.state.is_new_folder() {
        // A dry run writes nothing: no state folder is created for it.
        Store::temporary()
    } else {
        Store::connect(&config.state).await
    };
    let store = match opened {
        Ok(s) => s,
        Err(StoreError::Open { reason, .. }) if !args.send && args.item_id.is_none() => {
            eprintln!("note: the state store is not available ({reason}); `ids` read as empty in this dry run");
            Store::temporary().map_err(|e| CliError::Runtime(e.to_string()))?
        }
        Err(e) => return Err(CliError::Runtime(e.to_string())),
    };
    let engine =
        Engine::with_store(Arc::clone(&catalog), Arc::clone(&config), store, EngineOptions { dry_run: !args.send })
            .map_err(|e| CliError::Runtime(e.to_string()))?;
    engine.set_recipes(vec![recipe.clone()]);

    let (items, source) = items(&args, &engine, &recipe).await?;
    let mut out = String::new();
    if items.is_empty() {
        let _ = writeln!(out, "{source}: no items to test with");
        return print(&out);
    }
    let _ = writeln!(out, "testing `{}` on {} item(s): {source}", recipe.id, items.len());
    if args.send {
        print(&out)?;
        return send(&engine, &recipe, items).await;
    }
    let mut failures = 0;
    for (id, item) in &items {
        let plan = engine.plan_one(&recipe, id, item).await;
        failures += plan.failures;
        let _ = writeln!(out);
        for line in plan.lines {
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(
        out,
        "\ndry run: nothing was sent or recorded{}; `--send` sends these requests and records a run per item",
        if failures > 0 { format!(", {failures} step(s) would fail") } else { String::new() }
    );
    print(&out)?;
    if failures > 0 { Err(CliError::Quiet(1)) } else { Ok(()) }
}

/// The items to test with, and a few words on where they came from.
async fn items(args: &TestArgs, engine: &Engine, recipe: &Recipe) -> Result<(Vec<(String, Value)>, String), CliError> {
    if let Some(text) = &args.item {
        let item = read_item(text)?;
        let id = engine.item_id(recipe, &item);
        let source = match text.strip_prefix('@') {
            Some(path) => format!("from {path}"),
            None => "given with --item".into(),
        };
        return Ok((vec![(id, item)], source));
    }
    if let Some(id) = &args.item_id {
        let runs =
            engine.history(Some(&recipe.id), None, usize::MAX).await.map_err(|e| CliError::Runtime(e.to_string()))?.0;
        return match runs.into_iter().find(|r| r.item_id.as_deref() == Some(id.as_str())) {
            Some(run) => Ok((vec![(id.clone(), run.item)], format!("the item of run {}", run.id))),
            None => Err(CliError::Invalid(format!(
                "no run of `{}` has item `{id}`; `ghlflow runs list --recipe {}` shows its runs",
                recipe.id, recipe.id
            ))),
        };
    }
    if !recipe.trigger.polls {
        // An instant trigger with no reconciling poll: there is nothing to read items from.
        let key = &recipe.trigger.operation.key;
        return Err(CliError::Invalid(format!(
            "`{}` runs on events `{key}` receives and polls nothing, so there are no items to read; give one \
             with --item (the event's sample: `ghlflow ops show {key} --json`)",
            recipe.id
        )));
    }
    let items = engine.latest_items(recipe, args.limit).await.map_err(|e| CliError::Runtime(e.to_string()))?;
    Ok((items, format!("the newest of {} on `{}`", recipe.trigger.operation.key, recipe.trigger.connection.name)))
}

/// `--send`: one recorded run per item, executed now.
async fn send(engine: &Engine, recipe: &Recipe, items: Vec<(String, Value)>) -> CliResult {
    let mut failed = 0;
    for (id, item) in items {
        let mut out = String::new();
        let run_id = engine.record_run(recipe, id.clone(), item).await.map_err(|e| CliError::Runtime(e.to_string()))?;
        let outcome = engine.execute_run(&run_id).await.map_err(|e| CliError::Runtime(e.to_string()))?;
        let _ = writeln!(out, "\nitem {id}: run {run_id} {}", outcome.status.as_str());
        if let Ok(Some(run)) = engine.run(&run_id).await
            && run.status != RunStatus::Filtered
        {
            for s in &run.steps {
                let status = match s.status {
                    StepStatus::Pending => "not run",
                    StepStatus::Sent => "sent, no answer",
                    StepStatus::Succeeded => "succeeded",
                    StepStatus::Failed => "failed",
                    StepStatus::Skipped => "skipped (if)",
                };
                let _ = writeln!(out, "  step `{}` ({}): {status}", s.id, s.operation);
            }
        }
        if let Some(e) = &outcome.error {
            let _ = writeln!(out, "  error: {e}");
        }
        if outcome.status == RunStatus::Failed {
            failed += 1;
        }
        let _ = writeln!(out, "  details: ghlflow runs show {run_id}");
        print(&out)?;
    }
    if failed > 0 { Err(CliError::Quiet(1)) } else { Ok(()) }
}

/// Compiles the one recipe file (other recipes' problems do not stop a test of this one).
fn load_one(config: &crate::config::Config, catalog: &crate::catalog::Catalog, id: &str) -> Result<Recipe, CliError> {
    let dir = &config.recipes_dir;
    let path = ["yaml", "yml"].iter().map(|ext| dir.join(format!("{id}.{ext}"))).find(|p| p.is_file());
    let Some(path) = path else {
        let names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                    .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        return Err(CliError::Invalid(format!(
            "no recipe `{id}` in {}{}",
            dir.display(),
            crate::diagnostic::hint(id, names.iter().map(String::as_str))
        )));
    };
    let text = crate::fsread::read_text(&path).map_err(|e| CliError::Invalid(format!("{}: {e}", path.display())))?;
    crate::recipe::compile_recipe(&path.display().to_string(), id, &text, catalog, config, &crate::config::process_env)
        .map_err(|d| CliError::Invalid(format!("invalid recipe:\n{d}")))
}

/// `--item`: a JSON object, or `@path` to a file holding one.
fn read_item(text: &str) -> Result<Value, CliError> {
    let (body, source) = match text.strip_prefix('@') {
        Some(path) => (
            crate::fsread::read_text(Path::new(path)).map_err(|e| CliError::Invalid(format!("--item: {path}: {e}")))?,
            path.to_owned(),
        ),
        None => (text.to_owned(), "--item".to_owned()),
    };
    match serde_json::from_str::<Value>(&body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(CliError::Invalid(format!("{source}: expected one JSON object, shaped like one trigger item"))),
        Err(e) => Err(CliError::Invalid(format!("{source}:{}:{}: invalid JSON: {e}", e.line(), e.column()))),
    }
}
