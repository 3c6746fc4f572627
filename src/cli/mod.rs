//! The command line: argument parsing (clap), dispatch, and the exit-code contract
//! (0 ok, 1 runtime failure, 2 invalid input or config). Data goes to stdout; errors,
//! logs and progress to stderr. Each subcommand's rendering lives in its own file.

mod call;
mod completions;
mod connect;
mod control;
#[cfg(feature = "sandbox")]
mod demo;
mod hooks;
mod init;
mod migrate;
mod ops;
mod run;
mod runs;
#[cfg(feature = "sandbox")]
mod sandbox;
mod serve;
mod state;
mod test;
mod validate;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::catalog::{self, Catalog};

#[derive(Debug, Parser)]
#[command(
    name = "ghlflow",
    version,
    about = "Self-hosted automations for GoHighLevel, as files.",
    after_help = "\
Examples:
  ghlflow init                         a folder with ghlflow.yaml and the shipped recipes
  ghlflow sandbox                      a local GHL + Capsule to practise on
  ghlflow test capsule-people          what a recipe would send for the newest items
  ghlflow run                          run the recipes until Ctrl-C
  ghlflow <command> --help             each command's options and examples"
)]
pub struct Cli {
    // Not `global`: an option shown in every command's help would be listed where it does
    // nothing (sandbox, init, completions). They go before the command.
    /// Add or override operations from this folder (laid out as `<app>/<category>.yaml`);
    /// before the command: `ghlflow --operations DIR validate`.
    #[arg(long, value_name = "DIR")]
    operations: Option<PathBuf>,

    /// Log format on stderr: `text` or `json` (for log shippers); before the command
    /// (`run` also takes it after).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Browse the operations catalog.
    #[command(
        subcommand,
        after_help = "\
Examples:
  ghlflow ops list --app ghl --category contacts
  ghlflow ops show ghl.contacts.upsert_contact"
    )]
    Ops(ops::OpsCommand),
    /// Run one operation on a connection and print the response.
    Call(call::CallArgs),
    /// Get a connection's first OAuth tokens through the browser.
    Connect(connect::ConnectArgs),
    /// Check every recipe against the catalog and ghlflow.yaml.
    Validate(validate::ValidateArgs),
    /// Run the shipped recipes against a local sandbox: no account or network needed.
    #[cfg(feature = "sandbox")]
    Demo(demo::DemoArgs),
    /// Poll the recipes and run what is new (until stopped, or once).
    Run(run::RunArgs),
    /// Try a recipe on real items: render every step and print the requests (or send them).
    Test(test::TestArgs),
    /// What the instant triggers need outside ghlflow (GHL app webhook settings, Capsule
    /// REST hooks); `--check` checks it end to end.
    Hooks(hooks::HooksArgs),
    /// Run history: list, show, replay, release, discard.
    Runs(runs::RunsArgs),
    /// Move a recipe's trigger position.
    Trigger(runs::TriggerArgs),
    /// Pause or resume a recipe.
    Recipe(runs::RecipeArgs),
    /// Serve the status page and /metrics over the state, read-only, without polling.
    Serve(serve::ServeArgs),
    /// Move the whole state through one file: export it, import it (sled to PostgreSQL and back).
    State(state::StateArgs),
    /// Bring the state store up to this release: apply the PostgreSQL schema migrations it
    /// lacks (or only list them, `--check`), or rewrite an older sled folder.
    Migrate(migrate::MigrateArgs),
    /// Print a JSON Schema.
    #[command(
        subcommand,
        after_help = "\
Examples:
  ghlflow schema recipe > docs/recipe.schema.json"
    )]
    Schema(validate::SchemaCommand),
    /// Serve a local GHL + Capsule emulator with seeded data (prints a ghlflow.yaml for it).
    #[cfg(feature = "sandbox")]
    Sandbox(sandbox::SandboxArgs),
    /// Set up a folder: ghlflow.yaml, recipes/ and the recipe schema for editors.
    Init(init::InitArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the manual page (roff), or write one per command into a folder.
    Man(completions::ManArgs),
}

/// A failed command: what went wrong, and whether the user's input was at fault.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments, files or configuration: exit 2.
    Invalid(String),
    /// Something failed while running: exit 1.
    Runtime(String),
    /// The command already printed why; exit with this code.
    Quiet(u8),
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Invalid(_) => ExitCode::from(2),
            CliError::Runtime(_) => ExitCode::from(1),
            CliError::Quiet(code) => ExitCode::from(*code),
        }
    }

    fn message(&self) -> Option<&str> {
        match self {
            CliError::Invalid(m) | CliError::Runtime(m) => Some(m),
            CliError::Quiet(_) => None,
        }
    }
}

pub type CliResult = Result<(), CliError>;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The engine tells what it does by default; one-shot commands only warn.
    let default_level = if matches!(&cli.command, Command::Run(_) | Command::Serve(_)) { "info" } else { "warn" };
    let log_format = match &cli.command {
        Command::Run(args) => args.log_format.unwrap_or(cli.log_format),
        _ => cli.log_format,
    };
    init_logging(log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(m) = e.message() {
                let _ = writeln!(std::io::stderr(), "error: {m}");
            }
            e.exit_code()
        }
    }
}

async fn run(cli: Cli) -> CliResult {
    let operations = cli.operations.as_deref();
    match cli.command {
        Command::Ops(cmd) => {
            let catalog = load_catalog(operations)?;
            ops::run(cmd, &catalog)
        }
        Command::Call(args) => call::run(args, operations).await,
        Command::Connect(args) => connect::run(args, operations).await,
        Command::Validate(args) => validate::run(args, operations),
        Command::Schema(cmd) => validate::schema(cmd),
        Command::Run(args) => run::run(args, operations).await,
        Command::Test(args) => test::run(args, operations).await,
        #[cfg(feature = "sandbox")]
        Command::Demo(args) => demo::run(args).await,
        Command::Runs(args) => runs::run(args, operations).await,
        Command::Hooks(args) => hooks::run(args, operations).await,
        Command::Trigger(args) => runs::trigger(args, operations).await,
        Command::Recipe(args) => runs::recipe(args, operations).await,
        Command::Serve(args) => serve::run(args, operations).await,
        Command::State(args) => state::run(args, operations).await,
        Command::Migrate(args) => migrate::run(args, operations).await,
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => sandbox::run(args).await,
        Command::Init(args) => init::run(args),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
    }
}

/// Logs go to stderr; `GHLFLOW_LOG` (or `RUST_LOG`) sets the filter.
fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        std::env::var("GHLFLOW_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| default_level.into());
    let filter = log_directives(&filter);
    let filter =
        tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A bare level (`debug`) is ghlflow's own: its decisions at that level, every other crate
/// (the storage library, the HTTP stack) at `warn`. Full directives (`sled=debug,info`) are
/// taken as written.
fn log_directives(value: &str) -> String {
    let value = value.trim();
    if value.contains('=') || value.contains(',') { value.to_owned() } else { format!("warn,ghlflow={value}") }
}

fn load_config(path: &std::path::Path, catalog: &Catalog) -> Result<crate::config::Config, CliError> {
    if !path.exists() {
        return Err(CliError::Invalid(format!(
            "no configuration at {}: `ghlflow init` writes one (with the shipped recipes), \
             `ghlflow sandbox` prints one for a local practice account, and --config points at another file",
            path.display()
        )));
    }
    crate::config::Config::load(path, catalog, &crate::config::process_env)
        .map_err(|d| CliError::Invalid(format!("invalid configuration:\n{d}")))
}

fn load_catalog(extra: Option<&std::path::Path>) -> Result<Catalog, CliError> {
    catalog::load(extra).map_err(|d| CliError::Invalid(format!("the operations catalog is invalid:\n{d}")))
}

/// Writes to stdout; a closed pipe (`ghlflow ops list | head`) ends quietly.
pub(crate) fn print(text: &str) -> CliResult {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Runtime(format!("cannot write to stdout: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_log_level_is_ghlflows_own() {
        assert_eq!(log_directives("debug"), "warn,ghlflow=debug");
        assert_eq!(log_directives(" info "), "warn,ghlflow=info");
        assert_eq!(log_directives("sled=debug,info"), "sled=debug,info");
        assert_eq!(log_directives("ghlflow=trace"), "ghlflow=trace");
    }
}
