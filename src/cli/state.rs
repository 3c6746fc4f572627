//! `ghlflow state export` and `ghlflow state import`: a whole state (tokens, trigger
//! positions, seen marks, ids, pauses, subscriptions, deliveries and the run journal) moved
//! through one file, e.g. from the sled folder to PostgreSQL and back.
//!
//! The file format is `store::export`'s; this module opens the store `ghlflow.yaml` names
//! and the files, keeps the export owner-only (it holds OAuth refresh tokens), and refuses
//! to mix an import into a store that already holds a state.

use std::io::{BufReader, BufWriter, Seek};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::{CliError, CliResult, load_catalog, load_config};
use crate::store::export::{self, Backend, ExportError, Reader};
use crate::store::{Store, StoreError};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow state export state.jsonl       the sled folder's state, into one file
  ghlflow state import state.jsonl       into the (empty) store ghlflow.yaml now names")]
pub struct StateArgs {
    #[command(subcommand)]
    command: StateCommand,
    /// The configuration file (its `state:` names the store).
    #[arg(long, global = true, default_value = "ghlflow.yaml")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Write the whole state into one file (it holds OAuth refresh tokens: mode 0600).
    ///
    /// The file holds OAuth tokens, trigger positions, seen marks and present items,
    /// remembered ids, paused recipes, hook subscriptions and delivery ids, and every run with
    /// its steps. Stop `ghlflow run` first, so nothing changes the state while it is read.
    ///
    /// The file holds OAuth refresh tokens: it is created readable by its owner only (mode
    /// 0600). Keep it as you would keep the state folder, and delete it once imported.
    #[command(after_help = "\
Examples:
  ghlflow state export backup.jsonl
  ghlflow state export - | gzip > backup.jsonl.gz      to stdout")]
    Export {
        /// The file to write (replaced if it exists), or `-` for stdout.
        file: PathBuf,
    },
    /// Read a file `state export` wrote into the (empty) store ghlflow.yaml names.
    ///
    /// The whole file is checked before anything is written: a truncated file, a damaged line or a file
    /// from a newer ghlflow is refused. The store must hold no state yet (no token, trigger
    /// position, run or any other record): two states mixed could run the same item twice.
    #[command(after_help = "\
Examples:
  ghlflow state import backup.jsonl
  gunzip -c backup.jsonl.gz | ghlflow state import -    from stdin
  ghlflow state import backup.jsonl --force            over what the store holds")]
    Import {
        /// The file to read, or `-` for stdin.
        file: PathBuf,
        /// Import even though the store already holds a state: each record of the file
        /// replaces the store's record with the same key (a run with the same id, a
        /// recipe's trigger position, ...); the store's other records stay.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(args: StateArgs, operations: Option<&Path>) -> CliResult {
    let catalog = load_catalog(operations)?;
    let config = load_config(&args.config, &catalog)?;
    match args.command {
        StateCommand::Export { file } => export_to(&config, &file).await,
        StateCommand::Import { file, force } => import_from(&config, &file, force).await,
    }
}

/// `-` for stdin or stdout.
fn is_std(file: &Path) -> bool {
    file.as_os_str() == "-"
}

/// Opens the store `state:` names; a sled folder held by a running ghlflow says to stop it.
async fn open_store(config: &crate::config::Config, verb: &str) -> Result<Store, CliError> {
    Store::connect(&config.state).await.map_err(|e| match &e {
        // sled's lock is the only way to tell that another process holds the folder.
        StoreError::Open { reason, .. } if reason.contains("another ghlflow process") => CliError::Runtime(format!(
            "{e}; stop it first (a sled state folder is opened by one process at a time), \
             then run `ghlflow state {verb}` again"
        )),
        _ => CliError::Runtime(e.to_string()),
    })
}

async fn export_to(config: &crate::config::Config, file: &Path) -> CliResult {
    let store = open_store(config, "export").await?;
    let from = Backend::of(&config.state);
    if is_std(file) {
        let mut out = BufWriter::new(std::io::stdout().lock());
        let counts = export::write(&store, from, "stdout", &mut out).await.map_err(runtime)?;
        eprintln!("exported {counts} from {}", config.state.describe());
        return Ok(());
    }
    let name = file.display().to_string();
    let fail = |e: std::io::Error| CliError::Runtime(format!("cannot write {name}: {e}"));
    // Written beside its final name and renamed when complete: an interrupted export leaves
    // no partial file under that name, and a file that was already there (with whatever
    // mode it had) is replaced by one created owner-only.
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let temp = tempfile::Builder::new().prefix(".ghlflow-export").tempfile_in(dir).map_err(fail)?;
    owner_only(temp.as_file()).map_err(fail)?;
    let mut out = BufWriter::new(temp.as_file());
    let counts = export::write(&store, from, &name, &mut out).await.map_err(runtime)?;
    drop(out);
    temp.as_file().sync_all().map_err(fail)?;
    temp.persist(file).map_err(|e| fail(e.error))?;
    super::print(&format!(
        "exported {counts} from {} to {name} (readable by its owner only: it holds OAuth refresh tokens)\n",
        config.state.describe()
    ))
}

#[cfg(unix)]
fn owner_only(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn owner_only(_file: &std::fs::File) -> std::io::Result<()> {
    Ok(())
}

async fn import_from(config: &crate::config::Config, file: &Path, force: bool) -> CliResult {
    let name = if is_std(file) { "stdin".to_owned() } else { file.display().to_string() };
    let cannot_read = |e: std::io::Error| CliError::Invalid(format!("cannot read {name}: {e}"));
    // stdin is read twice (checked whole, then imported): it is kept in an unnamed temporary
    // file (owner-only, gone when closed), not in memory.
    let mut input = if is_std(file) {
        let mut spool = tempfile::tempfile().map_err(|e| CliError::Runtime(format!("cannot spool stdin: {e}")))?;
        std::io::copy(&mut std::io::stdin().lock(), &mut spool).map_err(cannot_read)?;
        spool.rewind().map_err(cannot_read)?;
        spool
    } else {
        std::fs::File::open(file).map_err(cannot_read)?
    };
    // The whole file is checked before the store is even opened (a sled folder is created
    // on open): a bad file changes nothing.
    let reader = Reader::open(BufReader::new(&input), &name).map_err(invalid)?;
    let (header, expected) = (reader.header().clone(), reader.check_all().map_err(invalid)?);

    let store = open_store(config, "import").await?;
    let held = export::held(&store).await.map_err(runtime)?;
    if held.total() > 0 && !force {
        // Only the first run is looked for: "at least one".
        let mut what = held.clone();
        let runs = what.remove("run") > 0;
        let what = match (what.total() > 0, runs) {
            (true, true) => format!("{what} and at least one run"),
            (true, false) => what.to_string(),
            (false, _) => "at least one run".to_owned(),
        };
        return Err(CliError::Invalid(format!(
            "{} already holds a state: {what}. Importing into it would mix two states, and an \
             item both have seen could run twice. Import into an empty store (point `state:` at a new \
             folder or database), or pass --force to write the file's records over it",
            config.state.describe()
        )));
    }
    input.rewind().map_err(cannot_read)?;
    let reader = Reader::open(BufReader::new(&input), &name).map_err(invalid)?;
    let counts = export::import(&store, reader).await.map_err(|e| {
        CliError::Runtime(format!(
            "the import stopped: {e}. The batches before it were written (each batch of {} records \
             whole); `ghlflow state import --force` with the same file writes it all again",
            export::IMPORT_BATCH
        ))
    })?;
    if counts != expected {
        return Err(CliError::Runtime(format!(
            "{name} changed while it was imported (checked: {expected}; imported: {counts}); \
             import it again with --force"
        )));
    }
    let over = if held.total() > 0 { " over the state it held (--force)" } else { "" };
    super::print(&format!(
        "imported {counts} into {}{over} (exported {} from {} by ghlflow {})\n",
        config.state.describe(),
        header.exported_at,
        match header.from {
            Backend::Sled => "sled",
            Backend::Postgres => "PostgreSQL",
        },
        header.ghlflow
    ))
}

fn invalid(e: ExportError) -> CliError {
    CliError::Invalid(e.to_string())
}

fn runtime(e: ExportError) -> CliError {
    CliError::Runtime(e.to_string())
}
