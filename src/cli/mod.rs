//! The command line: argument parsing (clap), dispatch, and the exit-code contract
//! (0 ok, 1 runtime failure, 2 invalid input or config). Data goes to stdout; errors,
//! logs and progress to stderr. Each subcommand's rendering lives in its own file.

mod ops;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::catalog::{self, Catalog};

#[derive(Debug, Parser)]
#[command(name = "ghlflow", version, about = "Self-hosted automations for GoHighLevel, as files.")]
pub struct Cli {
    /// Add or override operations from this folder (laid out as `<app>/<category>.yaml`).
    #[arg(long, global = true, value_name = "DIR")]
    operations: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Browse the operations catalog.
    #[command(subcommand)]
    Ops(ops::OpsCommand),
}

/// A failed command: what went wrong, and whether the user's input was at fault.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments, files or configuration: exit 2.
    Invalid(String),
    /// Something failed while running: exit 1.
    Runtime(String),
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Invalid(_) => ExitCode::from(2),
            CliError::Runtime(_) => ExitCode::from(1),
        }
    }

    fn message(&self) -> &str {
        match self {
            CliError::Invalid(m) | CliError::Runtime(m) => m,
        }
    }
}

pub type CliResult = Result<(), CliError>;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {}", e.message());
            e.exit_code()
        }
    }
}

fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Ops(cmd) => {
            let catalog = load_catalog(cli.operations.as_deref())?;
            ops::run(cmd, &catalog)
        }
    }
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
