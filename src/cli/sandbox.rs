//! `ghlflow sandbox`: start the local GHL + Capsule emulator, print a ghlflow.yaml that
//! points at it (stdout, ready to paste), and serve until Ctrl-C. What it serves, and its
//! control API, are described in `crate::sandbox`.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{CliError, CliResult, print};
use crate::sandbox::{self, DeliveryFaults, LostAs, SandboxError, SandboxOptions};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow sandbox > ghlflow.yaml             keep the printed configuration, then `ghlflow validate`
  ghlflow sandbox --fail-rate 0.2            one GHL write in five fails with a 500
  ghlflow sandbox --port 0 --people 50       any free port, a smaller account
  ghlflow sandbox --ghl-webhook-url http://127.0.0.1:8080/hooks/ghl
                                             push signed GHL webhooks there")]
pub struct SandboxArgs {
    /// The port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8977)]
    port: u16,
    /// Seed of the generated data: the same seed gives the same people, notes and tasks.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many Capsule people to generate.
    #[arg(long, default_value_t = 300)]
    people: usize,
    /// Share (0 to 1) of GHL writes that fail with a 500 before they are applied.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    fail_rate: f64,
    /// Share (0 to 1) of GHL writes that are applied but whose answer is lost.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    lose_responses: f64,
    /// How a lost answer looks: the connection closed without a reply, or a 504.
    #[arg(long, value_enum, default_value_t = LostAsArg::Close)]
    lost_as: LostAsArg,
    /// Milliseconds added to every answer.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    latency: u64,
    /// Fault GHL reads too (by default only writes fail or lose their answer).
    #[arg(long)]
    fault_reads: bool,
    /// Multiply every rate limit by this (e.g. 100 for volume tests).
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    limits_scale: f64,
    /// No rate limits at all.
    #[arg(long, conflicts_with = "limits_scale")]
    no_limits: bool,
    /// Send GHL webhooks (contacts, notes, tasks, appointments, opportunities, messages)
    /// to this URL, signed in X-GHL-Signature with the key printed at start. Capsule REST
    /// hooks need no flag: they are subscribed through POST /api/v2/resthooks.
    #[arg(long, value_name = "URL")]
    ghl_webhook_url: Option<String>,
    /// Faults of pushed events (GHL webhooks and Capsule REST hooks), as JSON: e.g.
    /// '{"drop_rate": 0.1, "duplicate_rate": 0.1, "reorder_rate": 0.2, "seed": 7}'; also
    /// delay_rate, delay_ms, max_attempts, retry_base_ms, retry_on (errors|429), timeout_ms,
    /// concurrency. Changeable later with PUT /_sandbox/push/faults.
    #[arg(long, value_name = "JSON")]
    delivery_faults: Option<String>,
    /// Also sign GHL webhooks the legacy way (RSA SHA-256 in X-WH-Signature) with a fresh
    /// key, printed at start.
    #[arg(long)]
    ghl_legacy_signature: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LostAsArg {
    Close,
    #[value(name = "504")]
    GatewayTimeout,
}

pub async fn run(args: SandboxArgs) -> CliResult {
    let delivery_faults = match &args.delivery_faults {
        None => DeliveryFaults::default(),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| CliError::Invalid(format!("--delivery-faults: {e} (in `{text}`)")))?,
    };
    let options = SandboxOptions {
        port: args.port,
        seed: args.seed,
        people: args.people,
        fail_rate: args.fail_rate,
        lose_responses: args.lose_responses,
        lost_as: match args.lost_as {
            LostAsArg::Close => LostAs::Close,
            LostAsArg::GatewayTimeout => LostAs::GatewayTimeout,
        },
        latency: Duration::from_millis(args.latency),
        fault_reads: args.fault_reads,
        limits_scale: args.limits_scale,
        no_limits: args.no_limits,
        ghl_webhook_url: args.ghl_webhook_url.clone(),
        ghl_signing_key: None,
        delivery_faults,
        ghl_legacy_signature: args.ghl_legacy_signature,
    };
    let sandbox = sandbox::start(options).await.map_err(|e| match e {
        SandboxError::Option(_) => CliError::Invalid(e.to_string()),
        SandboxError::Bind { .. } => CliError::Runtime(format!("{e} (another port: --port N, any free one: --port 0)")),
        SandboxError::Catalog(_) => CliError::Runtime(e.to_string()),
    })?;
    print(&format!(
        "# ghlflow.yaml for the sandbox (seed {}, {} people); any token works.\n{}",
        args.seed,
        args.people,
        sandbox.config_yaml()
    ))?;
    if let Some(key) = sandbox.ghl_webhook_legacy_public_key() {
        eprintln!("sandbox: legacy X-WH-Signature (RSA SHA-256) public key: export GHL_WEBHOOK_RSA_PUBLIC_KEY={key}");
    }
    let base = sandbox.ghl_base_url();
    eprintln!(
        "sandbox: GHL at {base}, Capsule at {}, location {}\n\
         sandbox: control API at {base}/_sandbox (e.g. curl -X POST {base}/_sandbox/capsule/people/edit -d '{{\"count\":5}}')\n\
         sandbox: for capsule-meetings: export GHL_CALENDAR_ID={} GHL_DEFAULT_USER_ID={}\n\
         sandbox: GHL webhooks {}, signed with the Ed25519 key (X-GHL-Signature) whose public half is\n\
         sandbox: export GHL_WEBHOOK_PUBLIC_KEY={}\n\
         sandbox: serving until Ctrl-C",
        sandbox.capsule_base_url(),
        sandbox.location_id(),
        sandbox.ghl_calendar_id(),
        sandbox.ghl_users().first().and_then(|u| u["id"].as_str()).unwrap_or_default(),
        match &args.ghl_webhook_url {
            Some(url) => format!("go to {url}"),
            None => format!("are off (--ghl-webhook-url URL, or PUT {base}/_sandbox/push/ghl {{\"url\": ...}})"),
        },
        sandbox.ghl_webhook_public_key(),
    );
    let _ = tokio::signal::ctrl_c().await;
    let served = sandbox.request_count();
    sandbox.shutdown().await;
    eprintln!("sandbox: stopped after {served} requests");
    Ok(())
}
