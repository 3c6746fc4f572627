//! `ghlflow demo`: the README's first command. Starts the sandbox in-process, runs the
//! shipped recipes against it for a few compressed cycles with progress on stderr, and ends
//! with a plain summary on stdout.

use std::fmt::Write as _;
use std::time::Instant;

use clap::Args;

use super::{CliError, CliResult, print};
use crate::demo::Workspace;
use crate::sandbox::SandboxOptions;
use crate::store::RunStatus;
use serde_json::Value;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow demo
  ghlflow demo --people 50 --cycles 1      a quicker look")]
pub struct DemoArgs {
    /// Capsule people in the sandbox.
    #[arg(long, default_value_t = 300)]
    people: usize,
    /// Poll cycles to run (the world changes between them).
    #[arg(long, default_value_t = 3)]
    cycles: usize,
    /// Seed of the sandbox's data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub async fn run(args: DemoArgs) -> CliResult {
    let started = Instant::now();
    // The real limits would make the first mirror of 300 people take minutes; the demo
    // raises them (the end-to-end tests also run under the real ones).
    let options =
        SandboxOptions { people: args.people, seed: args.seed, limits_scale: 20.0, ..SandboxOptions::default() };
    let ws = Workspace::new(options).await.map_err(|e| CliError::Runtime(e.to_string()))?;
    let capsule = ws.sandbox.capsule_counts();
    eprintln!(
        "sandbox on {} with {} Capsule people, {} organisations, {} notes and {} tasks; a GHL location {}",
        ws.sandbox.ghl_base_url(),
        capsule.people,
        capsule.organisations,
        capsule.notes,
        capsule.tasks,
        ws.sandbox.location_id()
    );
    eprintln!("recipes: {}", ws.engine.recipes().iter().map(|r| r.id.clone()).collect::<Vec<_>>().join(", "));
    let mut failures = 0;
    for cycle in 1..=args.cycles.max(1) {
        if cycle > 1 {
            eprintln!(
                "between cycles (an hour apart): 20 people edited, 5 deleted and 10 added in Capsule, 10 notes edited, 10 tasks completed; a new GHL lead, a deal won"
            );
            ws.change_the_world().await.map_err(CliError::Runtime)?;
        }
        let r = ws.cycle().await;
        failures = r.still_failed;
        eprintln!(
            "cycle {cycle}/{}: {} new item(s): {} run(s) succeeded, {} filtered, {} held, {} waiting{} ({:.1} s)",
            args.cycles.max(1),
            r.new_items,
            r.succeeded,
            r.filtered,
            r.held,
            r.waiting,
            if r.failed > 0 {
                format!(", {} failed ({} after automatic replays)", r.failed, r.still_failed)
            } else {
                String::new()
            },
            r.took.as_secs_f64()
        );
        for e in &r.errors {
            eprintln!("  error: {e}");
        }
    }

    let ghl = ws.sandbox.ghl_counts();
    let mirrored = ws
        .sandbox
        .ghl_contacts()
        .iter()
        .filter(|c| c["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "capsule")))
        .count();
    let deleted = ws
        .sandbox
        .ghl_contacts()
        .iter()
        .filter(|c| c["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "capsule-deleted")))
        .count();
    let counts = ws.run_counts().await;
    let count = |s: RunStatus| counts.iter().find(|(st, _)| *st == s).map(|(_, n)| *n).unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nghlflow demo: {} cycle(s) against the sandbox in {:.1} s",
        args.cycles.max(1),
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(out, "  people mirrored into GHL contacts  {mirrored}");
    let _ = writeln!(out, "  contacts tagged capsule-deleted    {deleted}");
    let _ = writeln!(out, "  notes on GHL contacts              {}", ghl.notes);
    let _ = writeln!(out, "  tasks on GHL contacts              {} ({} completed)", ghl.tasks, ghl.completed_tasks);
    let meetings: Vec<Value> = ws
        .sandbox
        .ghl_appointments()
        .into_iter()
        .filter(|a| a["description"].as_str().is_some_and(|d| d.contains("[capsule task ")))
        .collect();
    let status = |s: &str| meetings.iter().filter(|a| a["appointmentStatus"] == s).count();
    let _ = writeln!(
        out,
        "  meetings on the GHL calendar       {} ({} showed, {} cancelled)",
        meetings.len(),
        status("showed"),
        status("cancelled")
    );
    let history = ws.engine.history(None, None, usize::MAX).await.map(|(runs, _)| runs).unwrap_or_default();
    let succeeded =
        |recipe: &str| history.iter().filter(|r| r.recipe == recipe && r.status == RunStatus::Succeeded).count();
    let _ = writeln!(out, "  welcome SMS sent to new leads      {}", succeeded("ghl-welcome-sms"));
    let _ = writeln!(out, "  won deals given a follow-up task   {}", succeeded("ghl-won-deal-follow-up"));
    let _ = writeln!(
        out,
        "  runs                               {} succeeded, {} filtered, {} held, {} failed",
        count(RunStatus::Succeeded),
        count(RunStatus::Filtered),
        count(RunStatus::Held),
        count(RunStatus::Failed)
    );
    let _ = writeln!(out, "  requests the sandbox answered      {}", ws.sandbox.request_count());
    let _ = writeln!(out, "  failures left                      {failures}");
    let _ = writeln!(
        out,
        "\nNext: `ghlflow sandbox` to keep a sandbox running, then point a ghlflow.yaml at it (see the README)."
    );
    print(&out)?;
    ws.sandbox.shutdown().await;
    if failures > 0 { Err(CliError::Quiet(1)) } else { Ok(()) }
}
