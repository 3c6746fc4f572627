//! `ghlflow call`: run one operation by hand and print the response, or with `--dry-run`
//! print the exact request and send nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde_json::{Map, Value};

use super::{CliError, CliResult, load_catalog, load_config, print};
use crate::config::{Auth, Config};
use crate::http::{self, HttpClient, HttpError, Pager};
use crate::store::Store;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow call ghl.locations.find_location_by_id --connection ghl --dry-run
  ghlflow call ghl.contacts.get_contact --connection ghl --input '{\"contactId\":\"ID\"}'
  ghlflow call ghl.contacts.upsert_contact --connection ghl --input @contact.json
  ghlflow call capsule.parties.party_updated --connection capsule --all-pages > people.json")]
pub struct CallArgs {
    /// The operation's full key, e.g. `ghl.contacts.get_contact`.
    key: String,
    /// The connection (from ghlflow.yaml) to run it on.
    #[arg(long)]
    connection: String,
    /// The inputs: one flat JSON object keyed by input name, or `@file.json`.
    #[arg(long, value_name = "JSON|@FILE")]
    input: Option<String>,
    /// Follow every page (up to the app's page bound) and print all records as one array.
    #[arg(long)]
    all_pages: bool,
    /// Print the request that would be sent (secrets redacted) and send nothing.
    #[arg(long)]
    dry_run: bool,
    /// The configuration file.
    #[arg(long, default_value = "ghlflow.yaml")]
    config: PathBuf,
}

pub async fn run(args: CallArgs, operations: Option<&Path>) -> CliResult {
    let catalog = load_catalog(operations)?;
    let config = load_config(&args.config, &catalog)?;
    let op = catalog.get(&args.key).cloned().ok_or_else(|| {
        let hint = catalog.suggest(&args.key).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
        CliError::Invalid(format!("unknown operation `{}`{hint}; `ghlflow ops list` shows them all", args.key))
    })?;
    if let Some(hook) = &op.webhook {
        // Nothing to send: the API pushes this event to the listener.
        let poll = match &hook.reconcile {
            Some(key) => format!("; to read the same records now, call `{key}`"),
            None => String::new(),
        };
        return Err(CliError::Invalid(format!(
            "`{}` is an instant trigger: {} pushes the `{}` event to ghlflow's listener, so there is \
             nothing to call{poll}",
            op.key, op.key.app, hook.event
        )));
    }
    let connection = config.connection(&args.connection).map_err(CliError::Invalid)?.clone();
    if connection.app.id != op.key.app {
        // As `validate` says it, with the connections that would do.
        let fitting: Vec<&str> =
            config.connections.values().filter(|c| c.app.id == op.key.app).map(|c| c.name.as_str()).collect();
        return Err(CliError::Invalid(format!(
            "connection `{}` is for app `{}`, but `{}` belongs to `{}`; {}",
            connection.name,
            connection.app.id,
            op.key,
            op.key.app,
            if fitting.is_empty() {
                format!("{} has no `{}` connection", args.config.display(), op.key.app)
            } else {
                format!("use --connection {}", fitting.join(" or --connection "))
            }
        )));
    }
    let inputs = read_inputs(args.input.as_deref())?;
    http::check_access(&connection, &op).map_err(|e| CliError::Invalid(e.to_string()))?;

    if args.dry_run {
        let request = http::prepare(&op, &connection, &inputs).map_err(|e| http_error(e, &config))?;
        return print(&config.redactor.redact(&request.render("Bearer")));
    }

    let store = match connection.auth {
        Auth::OAuth2(_) => Some(Store::connect(&config.state).await.map_err(|e| CliError::Runtime(e.to_string()))?),
        Auth::Static(_) => None,
    };
    let client = HttpClient::new(store, config.redactor.clone()).map_err(|e| CliError::Runtime(e.to_string()))?;
    if args.all_pages {
        let mut pager = Pager::new(&client, connection.clone(), Arc::clone(&op), inputs, None);
        let (records, pages) = http::paginate::collect_all(&mut pager).await.map_err(|e| http_error(e, &config))?;
        eprintln!(
            "read {pages} page{}, {} record{}",
            if pages == 1 { "" } else { "s" },
            records.len(),
            if records.len() == 1 { "" } else { "s" }
        );
        if pager.stopped_at_bound() {
            eprintln!("stopped at the page bound ({} pages); more records remain", connection.app.page_bound);
        }
        return print(&format!("{}\n", serde_json::to_string_pretty(&Value::Array(records)).unwrap_or_default()));
    }
    let response = client.execute(&connection, &op, &inputs).await.map_err(|e| http_error(e, &config))?;
    print(&format!("{}\n", serde_json::to_string_pretty(&response.body).unwrap_or_default()))
}

/// `--input`: a JSON object, or `@path` to a file holding one.
fn read_inputs(input: Option<&str>) -> Result<Map<String, Value>, CliError> {
    let Some(input) = input else { return Ok(Map::new()) };
    let (text, source) = match input.strip_prefix('@') {
        Some(path) => {
            let text = crate::fsread::read_text(Path::new(path))
                .map_err(|e| CliError::Invalid(format!("--input: {path}: {e}")))?;
            (text, path.to_owned())
        }
        None => (input.to_owned(), "--input".to_owned()),
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(CliError::Invalid(format!(
            "{source}: expected one JSON object keyed by input name, found {}",
            kind_of(&other)
        ))),
        Err(e) => Err(CliError::Invalid(format!("{source}:{}:{}: invalid JSON: {e}", e.line(), e.column()))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Input and refusal errors are the user's (exit 2); the rest happened at run time (exit 1).
fn http_error(e: HttpError, config: &Config) -> CliError {
    let text = config.redactor.redact(&e.to_string());
    match e {
        HttpError::InvalidInput { .. } | HttpError::ReadOnly { .. } | HttpError::Refused { .. } => {
            CliError::Invalid(text)
        }
        _ => CliError::Runtime(text),
    }
}
