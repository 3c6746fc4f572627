//! `ghlflow init [DIR]`: a working folder from nothing: a commented `ghlflow.yaml` whose
//! secrets come from the environment, `recipes/` with the shipped recipes (compiled into the
//! binary from this repository's `recipes/`, so they always match the engine) or empty, and
//! the recipe JSON Schema where the recipes' `$schema` line looks for it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, CliResult, print};
use crate::recipe::SHIPPED as RECIPES;

/// Where, relative to the folder, the recipe schema goes: the shipped recipes' first line is
/// `# yaml-language-server: $schema=../docs/recipe.schema.json`, read from `recipes/`.
const SCHEMA_PATH: &str = "docs/recipe.schema.json";

/// The line that points an editor at the schema, as the shipped recipes have it.
const SCHEMA_LINE: &str = "# yaml-language-server: $schema=../docs/recipe.schema.json";

/// The configuration `init` writes. Values with `${...}` are quoted: unquoted, a `{` inside a
/// flow mapping (`{ type: ..., token: ${X} }`) is YAML syntax, and the file would not load.
const CONFIG: &str = r#"# ghlflow configuration. Paths are relative to this file; recipes live in recipes/.
# Secrets come from the environment: "${NAME}" is replaced by the variable NAME, and every
# variable that is not set is named when the file is loaded.
# To practise without an account, run `ghlflow sandbox` and use the ghlflow.yaml it prints.

connections:
  # A GHL sub-account (location). The shipped recipes use a connection named `ghl`.
  ghl:
    app: ghl
    location_id: "${GHL_LOCATION_ID}"
    # A private integration token (Settings > Private Integrations in GHL):
    auth: { type: private_token, token: "${GHL_TOKEN}" }
    # Or OAuth (then run `ghlflow connect ghl` once):
    # auth: { type: oauth2, client_id: "${GHL_CLIENT_ID}", client_secret: "${GHL_CLIENT_SECRET}" }
    access: read_write          # or read_only: writes are refused before they are sent

  # Capsule CRM, read only. The shipped recipes use a connection named `capsule`.
  capsule:
    app: capsule
    # A personal access token (My Preferences > API Authentication Tokens in Capsule):
    auth: { type: bearer, token: "${CAPSULE_TOKEN}" }
    access: read_only

state: .ghlflow/state           # run history, trigger positions and tokens (owner-only)
retention: 30d                  # how long run history is kept
"#;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow init                 here: ghlflow.yaml, recipes/ and docs/recipe.schema.json
  ghlflow init my-automations  in a new folder
  ghlflow init --empty         no recipes, only the configuration and the schema")]
pub struct InitArgs {
    /// The folder to set up (created if missing; default: the current folder).
    #[arg(value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// Create recipes/ empty instead of copying the shipped recipes into it.
    #[arg(long)]
    empty: bool,
    /// Overwrite files that already exist (otherwise they are kept, and init stops).
    #[arg(long)]
    force: bool,
}

pub fn run(args: InitArgs) -> CliResult {
    let dir = &args.dir;
    let recipes: Vec<(&Path, &[u8])> = if args.empty {
        Vec::new()
    } else {
        let mut files: Vec<(&Path, &[u8])> = RECIPES
            .files()
            .filter(|f| f.path().extension().is_some_and(|e| e == "yaml"))
            .map(|f| (f.path(), f.contents()))
            .collect();
        files.sort();
        files
    };
    let mut plan: Vec<(PathBuf, Vec<u8>)> = vec![
        (dir.join("ghlflow.yaml"), CONFIG.as_bytes().to_vec()),
        (dir.join(SCHEMA_PATH), crate::recipe::schema_json().into_bytes()),
    ];
    for (name, contents) in &recipes {
        plan.push((dir.join("recipes").join(name), with_schema_line(&String::from_utf8_lossy(contents)).into_bytes()));
    }
    if !dir.join(".gitignore").exists() {
        plan.push((dir.join(".gitignore"), b".ghlflow/\n".to_vec()));
    }
    if !args.force {
        let existing: Vec<String> =
            plan.iter().filter(|(p, _)| p.exists()).map(|(p, _)| format!("  {}", p.display())).collect();
        if !existing.is_empty() {
            return Err(CliError::Invalid(format!(
                "these files exist already; nothing was written (--force overwrites them):\n{}",
                existing.join("\n")
            )));
        }
    }
    let create = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| CliError::Runtime(format!("cannot create {}: {e}", p.display())))
    };
    create(&dir.join("recipes"))?;
    for (path, contents) in &plan {
        if let Some(parent) = path.parent() {
            create(parent)?;
        }
        std::fs::write(path, contents)
            .map_err(|e| CliError::Runtime(format!("cannot write {}: {e}", path.display())))?;
    }

    let mut out = String::new();
    let _ = writeln!(out, "wrote {}", shown(&dir.join("ghlflow.yaml")));
    if recipes.is_empty() {
        let _ = writeln!(out, "created {} (empty)", shown(&dir.join("recipes")));
    } else {
        let names: Vec<String> =
            recipes.iter().map(|(p, _)| p.file_stem().unwrap_or_default().to_string_lossy().into_owned()).collect();
        let _ = writeln!(out, "wrote {} recipes to {}: {}", names.len(), shown(&dir.join("recipes")), names.join(", "));
    }
    let _ = writeln!(out, "wrote {} (for editors; see the README)", shown(&dir.join(SCHEMA_PATH)));
    let _ = writeln!(out, "\nNext:");
    // The variables ghlflow.yaml reads, then the settings a written recipe cannot do without.
    let mut variables = vec!["GHL_LOCATION_ID".to_owned(), "GHL_TOKEN".into(), "CAPSULE_TOKEN".into()];
    for (_, text) in &recipes {
        let required = serde_yaml::from_slice::<crate::recipe::spec::RecipeSpec>(text)
            .map(|spec| spec.settings.into_iter().filter(|(_, s)| s.default.is_none()).map(|(name, _)| name))
            .into_iter()
            .flatten();
        for name in required {
            if !variables.contains(&name) {
                variables.push(name);
            }
        }
    }
    let _ = writeln!(out, "  export {}", variables.iter().map(|v| format!("{v}=...")).collect::<Vec<_>>().join(" "));
    let _ = writeln!(out, "  ghlflow validate{}", config_flag(dir));
    if recipes.is_empty() {
        let _ = writeln!(out, "  (write a recipe in recipes/; `ghlflow ops list` shows the operations)");
    } else {
        let _ = writeln!(
            out,
            "  ghlflow test capsule-people{}   # what a recipe would send; sends nothing",
            config_flag(dir)
        );
    }
    let _ = writeln!(
        out,
        "Or practise first: `ghlflow sandbox` serves a local GHL and Capsule and prints a ghlflow.yaml for them."
    );
    print(&out)
}

/// A recipe whose first line points at the schema `init` writes (replacing the line if it
/// points elsewhere, adding it if missing), so the two always agree.
fn with_schema_line(text: &str) -> String {
    match text.split_once('\n') {
        Some((first, rest)) if first.contains("$schema=") => format!("{SCHEMA_LINE}\n{rest}"),
        _ => format!("{SCHEMA_LINE}\n{text}"),
    }
}

/// A path as the user would write it (`recipes`, not `./recipes`).
fn shown(path: &Path) -> String {
    path.strip_prefix(".").unwrap_or(path).display().to_string()
}

/// `--config DIR/ghlflow.yaml` when DIR is not the current folder.
fn config_flag(dir: &Path) -> String {
    if dir == Path::new(".") { String::new() } else { format!(" --config {}", dir.join("ghlflow.yaml").display()) }
}
