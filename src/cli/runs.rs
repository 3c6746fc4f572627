//! `ghlflow runs ...`, `ghlflow trigger reset` and `ghlflow recipe pause|resume`: run
//! history and the actions on it and on recipes.
//!
//! Each command is a `RunsRequest` handled against an `Engine`. When no `ghlflow run` holds
//! the state store, the command opens it itself; when one does (sled allows one process),
//! the request goes to that process over its control socket (see `control`) and is handled
//! there, so history can be read and runs replayed while the engine keeps running.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum as _};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{CliError, CliResult, load_catalog, load_config};
use crate::engine::{Engine, EngineOptions};
use crate::store::{RunId, RunRecord, RunStatus, Store, StoreError};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow runs list --status failed
  ghlflow runs show 1795856233073-000028
  ghlflow runs replay 1795856233073-000028")]
pub struct RunsArgs {
    #[command(subcommand)]
    command: RunsCommand,
    /// The configuration file.
    #[arg(long, global = true, default_value = "ghlflow.yaml")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Recent runs, newest first.
    #[command(after_help = "\
Examples:
  ghlflow runs list
  ghlflow runs list --recipe capsule-people --status failed
  ghlflow runs list --limit 500 --json")]
    List {
        /// Only this recipe's runs.
        #[arg(long)]
        recipe: Option<String>,
        /// Only runs in this status.
        #[arg(long, value_enum)]
        status: Option<RunStatus>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One run: its trigger item, each step's input, response, status and timing.
    #[command(after_help = "\
Examples:
  ghlflow runs show 1795856233073-000028
  ghlflow runs show 1795856233073-000028 --json")]
    Show {
        /// The run's id (the RUN column of `ghlflow runs list`).
        run: String,
        /// Print the whole record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resume a failed run from its failed step.
    #[command(after_help = "\
Examples:
  ghlflow runs replay 1795856233073-000028")]
    Replay {
        /// The failed run's id (the RUN column of `ghlflow runs list --status failed`).
        run: String,
    },
    /// Run a recipe's held batch.
    #[command(after_help = "\
Examples:
  ghlflow runs list --status held
  ghlflow runs release ghl-welcome-sms")]
    Release {
        /// The recipe whose held runs to run (its id: the file name without .yaml).
        recipe: String,
    },
    /// Drop a recipe's held batch.
    #[command(after_help = "\
Examples:
  ghlflow runs discard ghl-welcome-sms")]
    Discard {
        /// The recipe whose held runs to drop (its id: the file name without .yaml).
        recipe: String,
    },
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow trigger reset capsule-people
  ghlflow trigger reset capsule-people --to 2026-11-01T00:00:00Z")]
pub struct TriggerArgs {
    #[command(subcommand)]
    command: TriggerCommand,
    /// The configuration file.
    #[arg(long, global = true, default_value = "ghlflow.yaml")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum TriggerCommand {
    /// Move a recipe's trigger on purpose: without --to, the next poll records a new
    /// baseline; with --to TIME, it fires for everything changed since TIME.
    #[command(after_help = "\
Examples:
  ghlflow trigger reset capsule-people                            a new baseline, nothing fires
  ghlflow trigger reset capsule-people --to 2026-11-01T00:00:00Z  fire for what changed since then")]
    Reset {
        /// The recipe whose trigger to move (its id: the file name without .yaml).
        recipe: String,
        /// An ISO 8601 time, e.g. 2026-11-01T00:00:00Z.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow recipe pause capsule-people
  ghlflow recipe resume capsule-people")]
pub struct RecipeArgs {
    #[command(subcommand)]
    command: RecipeCommand,
    /// The configuration file.
    #[arg(long, global = true, default_value = "ghlflow.yaml")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum RecipeCommand {
    /// Stop polling a recipe until `recipe resume`; its queued runs wait (kept across restarts).
    #[command(after_help = "\
Examples:
  ghlflow recipe pause capsule-people")]
    Pause {
        /// The recipe to pause (its id: the file name without .yaml).
        recipe: String,
    },
    /// Poll a paused recipe again and run what its pause kept waiting.
    #[command(after_help = "\
Examples:
  ghlflow recipe resume capsule-people")]
    Resume {
        /// The recipe to resume (its id: the file name without .yaml).
        recipe: String,
    },
}

/// A runs command, as sent to a running engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum RunsRequest {
    List { recipe: Option<String>, status: Option<String>, limit: usize, json: bool },
    Show { run: String, json: bool },
    Replay { run: String },
    Release { recipe: String },
    Discard { recipe: String },
    TriggerReset { recipe: String, to: Option<String> },
    Pause { recipe: String },
    Resume { recipe: String },
    Hooks { check: bool },
}

/// What a command printed, and its exit code.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub exit: u8,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    fn ok(stdout: String) -> Self {
        Reply { exit: 0, stdout, stderr: String::new() }
    }

    fn invalid(message: String) -> Self {
        Reply { exit: 2, stdout: String::new(), stderr: format!("error: {message}\n") }
    }

    fn failed(message: String) -> Self {
        Reply { exit: 1, stdout: String::new(), stderr: format!("error: {message}\n") }
    }
}

pub async fn run(args: RunsArgs, operations: Option<&Path>) -> CliResult {
    let req = match args.command {
        RunsCommand::List { recipe, status, limit, json } => {
            RunsRequest::List { recipe, status: status.map(|s| s.as_str().to_owned()), limit, json }
        }
        RunsCommand::Show { run, json } => RunsRequest::Show { run, json },
        RunsCommand::Replay { run } => RunsRequest::Replay { run },
        RunsCommand::Release { recipe } => RunsRequest::Release { recipe },
        RunsCommand::Discard { recipe } => RunsRequest::Discard { recipe },
    };
    dispatch(req, &args.config, operations).await
}

pub async fn trigger(args: TriggerArgs, operations: Option<&Path>) -> CliResult {
    let TriggerCommand::Reset { recipe, to } = args.command;
    dispatch(RunsRequest::TriggerReset { recipe, to }, &args.config, operations).await
}

pub async fn recipe(args: RecipeArgs, operations: Option<&Path>) -> CliResult {
    let req = match args.command {
        RecipeCommand::Pause { recipe } => RunsRequest::Pause { recipe },
        RecipeCommand::Resume { recipe } => RunsRequest::Resume { recipe },
    };
    dispatch(req, &args.config, operations).await
}

/// Handles `req` here, or in the running engine when it holds the store.
pub(super) async fn dispatch(req: RunsRequest, config_path: &Path, operations: Option<&Path>) -> CliResult {
    let catalog = Arc::new(load_catalog(operations)?);
    let config = Arc::new(load_config(config_path, &catalog)?);
    let reply = match Store::connect(&config.state).await {
        Ok(store) => {
            // Reading history needs no recipe: a recipe that does not validate (a setting not
            // exported in this shell, say) must not hide what already ran.
            let reads_only = matches!(req, RunsRequest::List { .. } | RunsRequest::Show { .. });
            let recipes = match crate::recipe::load_recipes(
                &config.recipes_dir,
                &catalog,
                &config,
                &crate::config::process_env,
            ) {
                Ok(recipes) => recipes,
                Err(_) if reads_only => Vec::new(),
                Err(d) => return Err(CliError::Invalid(format!("invalid recipes:\n{d}"))),
            };
            let engine = Engine::with_store(catalog, Arc::clone(&config), store, EngineOptions::default())
                .map_err(|e| CliError::Runtime(e.to_string()))?;
            engine.set_recipes(recipes);
            let engine = Arc::new(engine);
            // On a store other workers share, the runs this command executes (a replay, a
            // release) are its own while it lives: it beats like a worker meanwhile.
            let alive = match engine.store().is_shared() {
                true => Some(engine.keep_alive(crate::engine::Role::Command).await),
                false => None,
            };
            let reply = handle(req, &engine).await;
            if alive.is_some() {
                engine.leave().await;
            }
            reply
        }
        Err(StoreError::Open { .. }) => {
            super::control::ask(&config.state_dir, &req).await.map_err(CliError::Runtime)?
        }
        Err(e) => return Err(CliError::Runtime(e.to_string())),
    };
    print!("{}", reply.stdout);
    eprint!("{}", reply.stderr);
    match reply.exit {
        0 => Ok(()),
        2 => Err(CliError::Quiet(2)),
        _ => Err(CliError::Quiet(1)),
    }
}

/// Carries out one request against an engine.
pub async fn handle(req: RunsRequest, engine: &Arc<Engine>) -> Reply {
    match req {
        RunsRequest::List { limit: 0, .. } => {
            Reply::invalid("--limit 0 would list nothing; give at least 1 (default 50)".to_owned())
        }
        RunsRequest::List { recipe, status, limit, json } => {
            let status = match status.as_deref().map(parse_status) {
                Some(None) => {
                    let all: Vec<&str> = RunStatus::value_variants().iter().map(|s| s.as_str()).collect();
                    return Reply::invalid(format!(
                        "unknown status `{}`; use one of: {}",
                        status.unwrap_or_default(),
                        all.join(", ")
                    ));
                }
                Some(Some(s)) => Some(s),
                None => None,
            };
            match engine.history(recipe.as_deref(), status, limit).await {
                Ok((runs, total)) => {
                    let mut reply = if json {
                        let rows: Vec<Value> = runs.iter().map(list_row).collect();
                        Reply::ok(serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n")
                    } else if runs.is_empty() {
                        Reply::ok(nothing_listed(recipe.as_deref(), status))
                    } else {
                        Reply::ok(render_list(&runs))
                    };
                    // On stderr: stdout stays the table (or the JSON) alone, for scripts.
                    if total > runs.len() {
                        reply.stderr = format!("{} of {total} shown; --limit for more\n", runs.len());
                    }
                    reply
                }
                Err(e) => Reply::failed(e.to_string()),
            }
        }
        RunsRequest::Show { run, json } => match parse_run_id(&run) {
            Err(reply) => reply,
            Ok(id) => show(engine, &id, json).await,
        },
        RunsRequest::Replay { run } => match parse_run_id(&run) {
            Err(reply) => reply,
            Ok(id) => replay(engine, &id).await,
        },
        RunsRequest::Release { recipe } => match engine.release(&recipe).await {
            Ok(ids) if ids.is_empty() => Reply::ok(format!("recipe `{recipe}` has no held runs\n")),
            Ok(ids) => {
                let n = ids.len();
                let mut failed = 0;
                for id in &ids {
                    if engine.execute_run(id).await.map(|o| o.status == RunStatus::Failed).unwrap_or(true) {
                        failed += 1;
                    }
                }
                Reply {
                    exit: u8::from(failed > 0),
                    stdout: format!(
                        "released {n} held run(s) of `{recipe}`: {} succeeded or filtered, {failed} failed\n",
                        n - failed
                    ),
                    stderr: String::new(),
                }
            }
            Err(e) => Reply::failed(e.to_string()),
        },
        RunsRequest::Discard { recipe } => match engine.discard(&recipe).await {
            Ok(n) => Reply::ok(format!("discarded {n} held or unsure run(s) of `{recipe}`\n")),
            Err(e) => Reply::failed(e.to_string()),
        },
        RunsRequest::TriggerReset { recipe, to } => trigger_reset(engine, &recipe, to.as_deref()).await,
        RunsRequest::Pause { recipe } => pause(engine, &recipe, true).await,
        RunsRequest::Resume { recipe } => pause(engine, &recipe, false).await,
        RunsRequest::Hooks { check } => super::hooks::handle(engine, check).await,
    }
}

async fn pause(engine: &Arc<Engine>, recipe: &str, paused: bool) -> Reply {
    if engine.recipe(recipe).is_none() {
        let names: Vec<String> = engine.recipes().iter().map(|r| r.id.clone()).collect();
        return Reply::invalid(format!(
            "no recipe `{recipe}`{}",
            crate::diagnostic::hint(recipe, names.iter().map(String::as_str))
        ));
    }
    match engine.set_paused(recipe, paused).await {
        Err(e) => Reply::failed(e.to_string()),
        Ok(false) if paused => Reply::ok(format!("recipe `{recipe}` was already paused\n")),
        Ok(false) => Reply::ok(format!("recipe `{recipe}` was not paused\n")),
        Ok(true) if paused => Reply::ok(format!(
            "recipe `{recipe}` paused: it is not polled and its queued runs wait until `ghlflow recipe resume {recipe}`\n"
        )),
        Ok(true) => {
            // In a running engine the waiting runs start now; otherwise at the next `run`.
            let started = if engine.is_stopping() { Ok(0) } else { engine.start_queued(recipe).await };
            match started {
                Ok(n) if n > 0 => Reply::ok(format!("recipe `{recipe}` resumed; {n} queued run(s) started\n")),
                Ok(_) => Reply::ok(format!("recipe `{recipe}` resumed\n")),
                Err(e) => Reply::failed(e.to_string()),
            }
        }
    }
}

/// A run id as typed on the command line; a malformed one is refused with what ids look like.
fn parse_run_id(text: &str) -> Result<RunId, Reply> {
    text.trim().parse::<RunId>().map_err(|e| Reply::invalid(e.to_string()))
}

async fn show(engine: &Engine, id: &RunId, json: bool) -> Reply {
    match engine.run(id).await {
        Ok(Some(r)) if json => Reply::ok(serde_json::to_string_pretty(&r).unwrap_or_default() + "\n"),
        Ok(Some(r)) => Reply::ok(render_run(&r)),
        Ok(None) => Reply::invalid(format!("no run `{id}`; `ghlflow runs list` shows recent runs")),
        Err(e) => Reply::failed(e.to_string()),
    }
}

async fn replay(engine: &Engine, id: &RunId) -> Reply {
    match engine.replay(id).await {
        Ok(o) if o.status == RunStatus::Succeeded => Reply::ok(format!("run {} replayed: succeeded\n", o.id)),
        Ok(o) => Reply {
            exit: 1,
            stdout: format!("run {} replayed: {}\n", o.id, o.status.as_str()),
            stderr: o.error.map(|e| format!("error: {e}\n")).unwrap_or_default(),
        },
        Err(
            e @ (crate::engine::EngineError::UnknownRun(_)
            | crate::engine::EngineError::Refused(_)
            | crate::engine::EngineError::UnknownRecipe(_)),
        ) => Reply::invalid(e.to_string()),
        Err(e) => Reply::failed(e.to_string()),
    }
}

async fn trigger_reset(engine: &Engine, recipe: &str, to: Option<&str>) -> Reply {
    let Some(r) = engine.recipe(recipe) else {
        let names: Vec<String> = engine.recipes().iter().map(|r| r.id.clone()).collect();
        return Reply::invalid(format!(
            "no recipe `{recipe}`{}",
            crate::diagnostic::hint(recipe, names.iter().map(String::as_str))
        ));
    };
    let cursor = match to {
        None => None,
        Some(t) => match crate::template::parse_date(&Value::String(t.to_owned())) {
            Some(d) => Some(d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            None => return Reply::invalid(format!("--to `{t}` is not a time; write e.g. 2026-11-01T00:00:00Z")),
        },
    };
    match (engine.reset_trigger(&r, cursor.clone()).await, cursor) {
        (Err(e), _) => Reply::failed(e.to_string()),
        (Ok(()), None) => Reply::ok(format!("trigger of `{recipe}` reset: the next poll records a new baseline\n")),
        (Ok(()), Some(c)) => {
            Reply::ok(format!("trigger of `{recipe}` moved to {c}: the next poll fires for what changed since then\n"))
        }
    }
}

fn parse_status(s: &str) -> Option<RunStatus> {
    serde_json::from_value(Value::String(s.to_owned())).ok()
}

fn list_row(r: &RunRecord) -> Value {
    json!({
        "id": r.id,
        "recipe": r.recipe,
        "status": r.status.as_str(),
        "trigger_item_id": r.item_id,
        "started": r.started.as_ref().unwrap_or(&r.created),
        "finished": r.finished,
        "error": r.error,
    })
}

/// What an empty list says: which runs there are none of.
fn nothing_listed(recipe: Option<&str>, status: Option<RunStatus>) -> String {
    let of = recipe.map(|r| format!(" of `{r}`")).unwrap_or_default();
    match status {
        Some(s) => format!("no {} runs{of}\n", s.as_str()),
        None => format!("no runs{of} yet\n"),
    }
}

fn render_list(runs: &[RunRecord]) -> String {
    let rw = runs.iter().map(|r| r.recipe.len()).max().unwrap_or(6).max(6);
    let iw = runs.iter().map(|r| r.item_id.as_deref().unwrap_or("-").len()).max().unwrap_or(4).clamp(4, 24);
    let mut out =
        format!("{:<20}  {:<rw$}  {:<9}  {:<iw$}  {:<24}  ERROR\n", "RUN", "RECIPE", "STATUS", "ITEM", "STARTED");
    for r in runs {
        let item: String = r.item_id.as_deref().unwrap_or("-").chars().take(iw).collect();
        // The last column: the whole message, which says what the API answered.
        let error = r.error.as_deref().unwrap_or("");
        let _ = writeln!(
            out,
            "{:<20}  {:<rw$}  {:<9}  {:<iw$}  {:<24}  {error}",
            r.id,
            r.recipe,
            r.status.as_str(),
            item,
            r.started.as_ref().unwrap_or(&r.created)
        );
    }
    out
}

fn render_run(r: &RunRecord) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "run      {}", r.id);
    let _ = writeln!(out, "recipe   {}", r.recipe);
    let _ = writeln!(out, "status   {}", r.status.as_str());
    let _ = writeln!(out, "item     {}", r.item_id.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "created  {}", r.created);
    if let Some(s) = &r.started {
        let _ = writeln!(out, "started  {s}");
    }
    if let Some(f) = &r.finished {
        let _ = writeln!(out, "finished {f}");
    }
    if let Some(e) = &r.error {
        let _ = writeln!(out, "error    {e}");
    }
    if r.replays > 0 {
        let _ = writeln!(out, "replays  {}", r.replays);
    }
    for note in &r.notes {
        let _ = writeln!(out, "note     {note}");
    }
    let _ = writeln!(out, "\ntrigger item:\n{}", indent(&serde_json::to_string_pretty(&r.item).unwrap_or_default()));
    // A run that will never run a step does not list its steps as pending.
    match r.status {
        RunStatus::Filtered => {
            let _ = writeln!(out, "\nno step ran: the recipe's filter left this item out");
            return out;
        }
        RunStatus::Discarded => {
            let _ = writeln!(out, "\nno step ran: the held run was discarded");
            return out;
        }
        _ => {}
    }
    for (i, s) in r.steps.iter().enumerate() {
        let status =
            serde_json::to_value(s.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let timing = s.duration_ms.map(|d| format!(", {d} ms")).unwrap_or_default();
        let _ = writeln!(
            out,
            "\nstep {} `{}` ({}): {status}{timing}, sent {} time(s)",
            i + 1,
            s.id,
            s.operation,
            s.attempts
        );
        if let Some(input) = &s.input {
            let _ = writeln!(out, "  input:\n{}", indent(&serde_json::to_string_pretty(input).unwrap_or_default()));
        }
        if let Some(output) = &s.output {
            let _ = writeln!(out, "  response:\n{}", indent(&serde_json::to_string_pretty(output).unwrap_or_default()));
        }
        if let Some(e) = &s.error {
            let _ = writeln!(out, "  error: {e}");
        }
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}
