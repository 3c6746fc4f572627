//! `ghlflow validate`: compile every recipe against the catalog and ghlflow.yaml and report
//! every problem at once; and `ghlflow schema recipe`, the JSON Schema for editors.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::{CliError, CliResult, load_catalog, load_config, print};
use crate::config::process_env;
use crate::recipe;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow validate
  ghlflow validate --config ~/automations/ghlflow.yaml")]
pub struct ValidateArgs {
    /// The configuration file; recipes are read from `recipes/` beside it.
    #[arg(long, default_value = "ghlflow.yaml")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// The JSON Schema of recipe files (for editors: see the README).
    #[command(after_help = "\
Examples:
  ghlflow schema recipe > docs/recipe.schema.json")]
    Recipe,
}

pub fn run(args: ValidateArgs, operations: Option<&Path>) -> CliResult {
    let catalog = load_catalog(operations)?;
    let config = load_config(&args.config, &catalog)?;
    let recipes = recipe::load_recipes(&config.recipes_dir, &catalog, &config, &process_env)
        .map_err(|d| CliError::Invalid(format!("invalid recipes:\n{d}")))?;
    let n = recipes.len();
    print(&format!("{n} recipe{} OK ({})\n", if n == 1 { "" } else { "s" }, config.recipes_dir.display()))
}

pub fn schema(cmd: SchemaCommand) -> CliResult {
    match cmd {
        SchemaCommand::Recipe => print(&recipe::schema_json()),
    }
}
