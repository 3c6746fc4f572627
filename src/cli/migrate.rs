//! `ghlflow migrate`: brings the state store named by ghlflow.yaml to this release's layout
//! and says where it stands. A PostgreSQL database gets the schema migrations it lacks
//! (`--check` only lists them); a sled folder is opened, which rewrites an older format.
//! Every command that opens the store migrates it too; this one does it on purpose, before
//! a fleet of workers is started.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, CliResult, load_catalog, load_config, print};
use crate::config::StateLocation;
use crate::store::{PgStore, SledStore};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow migrate                  apply what the state store lacks, print its version
  ghlflow migrate --check          list the pending migrations, change nothing")]
pub struct MigrateArgs {
    /// The configuration file (its `state:` names the store).
    #[arg(long, default_value = "ghlflow.yaml")]
    config: PathBuf,
    /// Only report the migrations the database lacks; apply none (PostgreSQL).
    #[arg(long)]
    check: bool,
}

pub async fn run(args: MigrateArgs, operations: Option<&Path>) -> CliResult {
    let catalog = load_catalog(operations)?;
    let config = load_config(&args.config, &catalog)?;
    let place = config.state.describe();
    match &config.state {
        StateLocation::Postgres(url) if args.check => {
            let status = PgStore::migration_status(url.expose()).await.map_err(|e| CliError::Runtime(e.to_string()))?;
            let version = status.applied.iter().max().copied().unwrap_or(0);
            let mut out = format!("{place}: schema version {version}\n");
            if let Some(v) = status.unknown.iter().max() {
                return Err(CliError::Runtime(format!(
                    "{place}: the database schema is newer than this ghlflow (it has migration {v}): upgrade ghlflow"
                )));
            }
            if status.pending.is_empty() {
                out.push_str("up to date: no migration pending\n");
            } else {
                out.push_str(&format!(
                    "{} migration(s) pending (`ghlflow migrate` applies them):\n",
                    status.pending.len()
                ));
                for (v, description) in &status.pending {
                    out.push_str(&format!("  {v} {description}\n"));
                }
            }
            print(&out)
        }
        StateLocation::Postgres(url) => {
            let store = PgStore::connect(url.expose()).await.map_err(|e| CliError::Runtime(e.to_string()))?;
            let mut out = String::new();
            if store.applied_migrations().is_empty() {
                out.push_str("no migration pending\n");
            } else {
                for applied in store.applied_migrations() {
                    out.push_str(&format!("applied {applied}\n"));
                }
            }
            out.push_str(&format!("{place}: schema version {}\n", store.schema_version()));
            print(&out)
        }
        StateLocation::Folder(dir) => {
            if args.check {
                return Err(CliError::Invalid(
                    "--check is for a PostgreSQL state store; a sled folder is migrated when it is opened".into(),
                ));
            }
            let store = SledStore::open(dir).map_err(|e| CliError::Runtime(e.to_string()))?;
            let format = store.format().map_err(|e| CliError::Runtime(e.to_string()))?;
            store.flush().map_err(|e| CliError::Runtime(e.to_string()))?;
            print(&format!(
                "{place}: state format {}\n",
                format.map_or_else(|| "unknown".to_owned(), |f| f.to_string())
            ))
        }
    }
}
