//! `ghlflow run`: the engine. Without `--once` it polls every recipe on its schedule until
//! SIGINT or SIGTERM; with `--once` it polls each recipe once, drains the runs and exits
//! (0 when every run succeeded, was filtered or is held; 1 when any failed; 2 on invalid
//! input). `--dry-run` prints the requests the steps would send and sends no write.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::{CliError, CliResult, load_catalog, load_config, print};
use crate::engine::{Engine, EngineOptions, scheduler};
use crate::store::RunStatus;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow run                              poll every recipe on its schedule until Ctrl-C
  ghlflow run --once --dry-run             what the new items would send; nothing is sent
  ghlflow run --once --recipe capsule-people
  ghlflow run --log-format json            logs for a log shipper")]
pub struct RunArgs {
    /// Poll each recipe once, run what is new, and exit.
    #[arg(long)]
    once: bool,
    /// With --once: print the requests the actions would send; send no write, record nothing.
    #[arg(long, requires = "once")]
    dry_run: bool,
    /// Only these recipes (by id, the file name without .yaml).
    #[arg(long = "recipe", value_name = "ID")]
    recipes: Vec<String>,
    /// The configuration file.
    #[arg(long, default_value = "ghlflow.yaml")]
    config: PathBuf,
    /// Log format on stderr: `text` or `json` (for log shippers).
    #[arg(long, value_enum)]
    pub(super) log_format: Option<super::LogFormat>,
}

pub async fn run(args: RunArgs, operations: Option<&Path>) -> CliResult {
    let catalog = Arc::new(load_catalog(operations)?);
    let config = Arc::new(load_config(&args.config, &catalog)?);
    let recipes = crate::recipe::load_recipes(&config.recipes_dir, &catalog, &config, &crate::config::process_env)
        .map_err(|d| CliError::Invalid(format!("invalid recipes:\n{d}")))?;
    for id in &args.recipes {
        if !recipes.iter().any(|r| &r.id == id) {
            let names: Vec<&str> = recipes.iter().map(|r| r.id.as_str()).collect();
            return Err(CliError::Invalid(format!(
                "no recipe `{id}` in {}{}",
                config.recipes_dir.display(),
                crate::diagnostic::hint(id, names.iter().copied())
            )));
        }
    }
    let recipes: Vec<_> =
        recipes.into_iter().filter(|r| args.recipes.is_empty() || args.recipes.contains(&r.id)).collect();
    // A dry run writes nothing: without a state folder yet, it plans against an empty
    // throwaway store rather than creating one.
    let options = EngineOptions { dry_run: args.dry_run };
    let engine = Arc::new(
        Engine::open(catalog, Arc::clone(&config), options).await.map_err(|e| CliError::Runtime(e.to_string()))?,
    );
    engine.set_recipes(recipes);

    // Runs done of runs queued, on a terminal: for `--once` and for a long backfill alike.
    let bar = Arc::new(Bar::new());
    engine.set_progress(Arc::clone(&bar) as Arc<dyn crate::engine::RunProgress>);
    if args.once {
        let summary = engine.run_once(&args.recipes).await;
        bar.0.finish_and_clear();
        let mut out = String::new();
        if args.dry_run {
            for line in summary.polls.iter().flat_map(|p| &p.plan.lines) {
                let _ = writeln!(out, "{line}");
            }
            let _ = writeln!(out, "dry run: nothing was written or recorded");
        } else {
            let new: usize = summary.polls.iter().map(|p| p.new).sum();
            let held: usize = summary.polls.iter().map(|p| p.held).sum();
            let baselines = summary.polls.iter().filter(|p| p.baseline).count();
            let gone: usize = summary.polls.iter().map(|p| p.gone).sum();
            let _ = writeln!(
                out,
                "polled {} recipe(s): {new} new item(s){}{}{}",
                summary.polls.len(),
                if gone > 0 { format!(", {gone} gone") } else { String::new() },
                if baselines > 0 { format!(", {baselines} baseline(s) recorded") } else { String::new() },
                if held > 0 { format!(", {held} held (see `ghlflow runs list --status held`)") } else { String::new() },
            );
            let waiting = summary.count(RunStatus::Waiting);
            let _ = writeln!(
                out,
                "runs: {} succeeded, {} failed, {} filtered{}",
                summary.count(RunStatus::Succeeded),
                summary.count(RunStatus::Failed),
                summary.count(RunStatus::Filtered),
                if waiting > 0 {
                    format!(", {waiting} waiting for records other recipes create (they resume at later polls)")
                } else {
                    String::new()
                }
            );
            for r in summary.runs.iter().filter(|r| matches!(r.status, RunStatus::Failed | RunStatus::Unsure)) {
                let _ = writeln!(
                    out,
                    "{}: run {} ({}): {}",
                    r.status.as_str(),
                    r.id,
                    r.recipe,
                    r.error.as_deref().unwrap_or("")
                );
            }
        }
        print(&out)?;
        for e in &summary.errors {
            eprintln!("error: {e}");
        }
        // An unsure run needs a person as much as a failed one.
        let failed =
            summary.count(RunStatus::Failed) > 0 || summary.count(RunStatus::Unsure) > 0 || !summary.errors.is_empty();
        return if failed { Err(CliError::Quiet(1)) } else { Ok(()) };
    }

    crate::listen::start(&engine).await.map_err(|e| CliError::Runtime(e.to_string()))?;
    if let Err(e) = super::control::serve(Arc::clone(&engine)) {
        tracing::warn!(error = %e, "no control socket: `ghlflow runs` cannot reach this process while it runs");
    }
    tracing::info!(recipes = engine.recipes().len(), "running; stop with Ctrl-C (SIGINT) or SIGTERM");
    let lateness = Arc::new(scheduler::Lateness::default());
    scheduler::run(Arc::clone(&engine), Some(config.recipes_dir.clone()), lateness, shutdown_signal()).await;
    bar.0.finish_and_clear();
    let _ = std::fs::remove_file(super::control::socket_path(&config.state_dir));
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub(super) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The progress of `run --once` on a terminal: runs done of runs queued. Hidden when stderr
/// is not a terminal (a pipe, a file, CI), where the log lines say enough.
#[derive(Debug)]
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new() -> Self {
        use std::io::IsTerminal as _;
        let bar = if std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(0)
        } else {
            indicatif::ProgressBar::hidden()
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} runs {pos}/{len} {wide_bar} {elapsed}") {
            bar.set_style(style);
        }
        Bar(bar)
    }
}

impl crate::engine::RunProgress for Bar {
    fn queued(&self, runs: usize) {
        self.0.inc_length(runs as u64);
    }

    fn finished(&self, runs: usize) {
        self.0.inc(runs as u64);
    }
}
