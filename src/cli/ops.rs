//! `ghlflow ops list` and `ghlflow ops show`: the catalog as a reader sees it, as a table
//! and as JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::{CliError, CliResult, print};
use crate::catalog::{Catalog, CursorSource, Kind, Operation, Pagination, ParamPlace, Records};
use crate::diagnostic::hint;

#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// List operations, grouped by app and category.
    #[command(after_help = "\
Examples:
  ghlflow ops list --app ghl --category contacts
  ghlflow ops list --kind trigger          what a recipe can poll
  ghlflow ops list --json | jq '.[].key'")]
    List {
        /// Only this app (`ghl`, `capsule`).
        #[arg(long)]
        app: Option<String>,
        /// Only this category (`contacts`, `custom_fields`, ...).
        #[arg(long)]
        category: Option<String>,
        /// Only triggers or only actions.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Everything a recipe author needs to know about one operation.
    #[command(after_help = "\
Examples:
  ghlflow ops show ghl.contacts.upsert_contact
  ghlflow ops show capsule.parties.party_updated --json")]
    Show {
        /// The operation's full key, e.g. `ghl.contacts.upsert_contact`.
        key: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Trigger,
    Action,
}

pub fn run(cmd: OpsCommand, catalog: &Catalog) -> CliResult {
    match cmd {
        OpsCommand::List { app, category, kind, json } => {
            list(catalog, app.as_deref(), category.as_deref(), kind, json)
        }
        OpsCommand::Show { key, json } => show(catalog, &key, json),
    }
}

fn list(catalog: &Catalog, app: Option<&str>, category: Option<&str>, kind: Option<KindArg>, json: bool) -> CliResult {
    if let Some(app) = app
        && catalog.app(app).is_none()
    {
        let apps: Vec<&str> = catalog.apps().map(|a| a.id.as_str()).collect();
        return Err(CliError::Invalid(format!(
            "unknown app `{app}`{}; apps: {}",
            hint(app, apps.iter().copied()),
            apps.join(", ")
        )));
    }
    if let Some(category) = category {
        let mut categories: Vec<&str> = catalog
            .all()
            .into_iter()
            .filter(|o| app.is_none_or(|a| o.key.app == a))
            .map(|o| o.key.category.as_str())
            .collect();
        categories.dedup();
        if !categories.contains(&category) {
            return Err(CliError::Invalid(format!(
                "unknown category `{category}`{}; categories: {}",
                hint(category, categories.iter().copied()),
                categories.join(", ")
            )));
        }
    }
    let wanted = |op: &Operation| {
        app.is_none_or(|a| op.key.app == a)
            && category.is_none_or(|c| op.key.category == c)
            && kind.is_none_or(|k| {
                matches!((k, op.kind), (KindArg::Trigger, Kind::Trigger) | (KindArg::Action, Kind::Action))
            })
    };
    let ops: Vec<&Operation> = catalog.all().into_iter().map(|o| o.as_ref()).filter(|o| wanted(o)).collect();

    if json {
        let rows: Vec<Value> = ops.iter().map(|op| list_row_json(op)).collect();
        return print(&format!("{}\n", serde_json::to_string_pretty(&rows).unwrap_or_default()));
    }
    if ops.is_empty() {
        eprintln!("no operation matches these filters");
        return Ok(());
    }
    print(&render_table(&ops))
}

fn list_row_json(op: &Operation) -> Value {
    let mut row = json!({
        "key": op.key.to_string(),
        "app": op.key.app,
        "category": op.key.category,
        "kind": op.kind.as_str(),
        "name": op.name,
        "method": op.method.as_str(),
        "path": op.path.as_str(),
        "scope": op.scope.as_ref().map(|s| s.0.clone()),
        "version": op.version,
        "deprecated": op.deprecated,
        "repeat_safe": op.repeat_safe,
        "description": op.description,
    });
    if let Value::Object(map) = &mut row {
        if let Some(source) = op.trigger_source() {
            map.insert("source".into(), json!(source.as_str()));
        }
        if let Some(hook) = &op.webhook {
            // Nothing is sent: no method or path of an API request to show.
            map.insert("method".into(), Value::Null);
            map.insert("path".into(), Value::Null);
            map.insert("event".into(), json!(hook.event));
            map.insert("reconcile".into(), json!(hook.reconcile.as_ref().map(|k| k.to_string())));
        }
    }
    row
}

/// What the table shows in the method and path columns: the request, or for an instant
/// trigger the event that delivers it.
fn request_columns(op: &Operation) -> (&str, String) {
    match &op.webhook {
        Some(hook) => ("event", hook.event.clone()),
        None => (op.method.as_str(), op.path.as_str().to_owned()),
    }
}

/// The table: a heading per app and category, a line per operation, a summary per app.
fn render_table(ops: &[&Operation]) -> String {
    let key_width = ops.iter().map(|o| o.key.name.len()).max().unwrap_or(0);
    let path_width = ops.iter().map(|o| request_columns(o).1.len()).max().unwrap_or(0).min(60);
    let mut out = String::new();
    let mut current: Option<(&str, &str)> = None;
    // app -> (API operations, polled triggers, actions, categories, instant triggers)
    let mut summary: BTreeMap<&str, (usize, usize, usize, Vec<&str>, usize)> = BTreeMap::new();
    for op in ops {
        let group = (op.key.app.as_str(), op.key.category.as_str());
        if current != Some(group) {
            if current.is_some() {
                out.push('\n');
            }
            let count = ops.iter().filter(|o| (o.key.app.as_str(), o.key.category.as_str()) == group).count();
            let _ = writeln!(out, "{}.{} ({count})", group.0, group.1);
            current = Some(group);
        }
        let deprecated = if op.deprecated { "  [deprecated]" } else { "" };
        let reconcile = match &op.webhook {
            Some(hook) => match &hook.reconcile {
                Some(key) => format!("  [instant; reconciled by {key}]"),
                None => "  [instant; nothing polls for it]".to_owned(),
            },
            None => String::new(),
        };
        let (method, path) = request_columns(op);
        let _ = writeln!(
            out,
            "  {:<7}  {:<key_width$}  {:<6}  {:<path_width$}  {}{deprecated}{reconcile}",
            op.kind.as_str(),
            op.key.name,
            method,
            path,
            op.name,
        );
        let entry = summary.entry(group.0).or_default();
        match (op.kind, op.is_webhook()) {
            (_, true) => entry.4 += 1,
            (Kind::Trigger, false) => {
                entry.0 += 1;
                entry.1 += 1
            }
            (Kind::Action, false) => {
                entry.0 += 1;
                entry.2 += 1
            }
        }
        if !entry.3.contains(&group.1) {
            entry.3.push(group.1);
        }
    }
    out.push('\n');
    for (app, (n, triggers, actions, categories, instant)) in summary {
        let instant = match instant {
            0 => String::new(),
            k => format!(" and {k} instant trigger{}", plural(k)),
        };
        let _ = writeln!(
            out,
            "{app}: {n} API operation{} ({triggers} trigger{}, {actions} action{}){instant} in {} categor{}",
            plural(n),
            plural(triggers),
            plural(actions),
            categories.len(),
            if categories.len() == 1 { "y" } else { "ies" }
        );
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn show(catalog: &Catalog, key: &str, json: bool) -> CliResult {
    let Some(op) = catalog.get(key) else {
        let suggestion = catalog.suggest(key).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
        return Err(CliError::Invalid(format!(
            "unknown operation `{key}`{suggestion}; `ghlflow ops list` shows them all"
        )));
    };
    let base_url = catalog.app(&op.key.app).map(|a| a.base_url.as_str()).unwrap_or_default();
    if json {
        return print(&format!("{}\n", serde_json::to_string_pretty(&show_json(op, base_url)).unwrap_or_default()));
    }
    print(&render_show(op, base_url))
}

fn show_json(op: &Operation, base_url: &str) -> Value {
    let mut row = list_row_json(op);
    let extra = json!({
        "url": if op.is_webhook() { Value::Null } else { json!(format!("{base_url}{}", op.path.as_str())) },
        "notes": op.notes,
        "writes": op.writes(),
        "inputs": op.inputs,
        "output": op.output.as_ref().map(|o| json!({
            "items": match &o.records { Records::Items(p) => Some(p.to_string()), Records::Record(_) => None },
            "record": match &o.records { Records::Record(p) => Some(p.to_string()), Records::Items(_) => None },
            "id": o.id.as_ref().map(|p| p.to_string()),
            "updated": o.updated.as_ref().map(|p| p.to_string()),
        })),
        "output_fields": match op.kind { Kind::Trigger => op.record_shape(), Kind::Action => op.body_shape() }.flatten(3).into_iter().map(|(path, ty)| json!({"path": path, "type": ty})).collect::<Vec<_>>(),
        "pagination": if op.is_webhook() { Value::Null } else { json!(describe_pagination(&op.pagination)) },
        "dedupe": op.dedupe.map(|d| d.as_str()),
        "since": op.since,
        "sample_input": op.sample_input,
        "sample_output": op.sample_output,
    });
    if let (Value::Object(row), Value::Object(extra)) = (&mut row, extra) {
        row.extend(extra);
    }
    row
}

fn describe_pagination(p: &Pagination) -> String {
    let place = |p: &ParamPlace| match p {
        ParamPlace::Query => "query",
        ParamPlace::Body => "body",
    };
    match p {
        Pagination::None => "none (one request)".into(),
        Pagination::Offset { limit, offset, page_size, place: at } => {
            format!("offset: `{limit}` = {page_size} per page, `{offset}` grows by a page ({})", place(at))
        }
        Pagination::Page { page, size, page_size, place: at } => {
            format!("page numbers: `{page}` = 1, 2, ..., `{size}` = {page_size} ({})", place(at))
        }
        Pagination::StartAfter { limit, page_size } => {
            format!("startAfter + startAfterId from the response's meta, `{limit}` = {page_size}")
        }
        Pagination::Cursor { param, next, limit, page_size, .. } => {
            let from = match next {
                CursorSource::Body(path) => format!("the response's `{path}`"),
                CursorSource::LastItem(path) => format!("the last item's `{path}`"),
            };
            let size = limit.as_ref().map(|l| format!(", `{l}` = {page_size}")).unwrap_or_default();
            format!("cursor: `{param}` from {from}{size}")
        }
        Pagination::LinkHeader { size, page_size } => format!("Link header rel=next, `{size}` = {page_size}"),
    }
}

fn render_show(op: &Operation, base_url: &str) -> String {
    let width = 96;
    let mut out = String::new();
    let deprecated = if op.deprecated { ", deprecated" } else { "" };
    let _ = writeln!(out, "{}  {} ({}{deprecated})", op.key, op.name, op.kind.as_str());
    out.push('\n');
    for line in textwrap::wrap(&op.description, width) {
        let _ = writeln!(out, "{line}");
    }
    out.push('\n');
    match &op.webhook {
        Some(hook) => {
            let delivery = format!(
                "instant: {} pushes the `{}` event to ghlflow's listener (POST {}); nothing is sent to the API",
                op.key.app,
                hook.event,
                op.path.as_str()
            );
            let reconcile = match &hook.reconcile {
                Some(key) => format!(
                    "a recipe on it also polls `{key}` (every 15m unless its `every` says otherwise), to catch \
                     what a missed delivery lost"
                ),
                None => "none: no poll lists these records, so a recipe on it never polls and a missed delivery \
                         is not caught up"
                    .to_owned(),
            };
            for (label, text) in [("Delivery  ", delivery), ("Reconcile ", reconcile)] {
                let options = textwrap::Options::new(width).initial_indent(label).subsequent_indent("          ");
                for line in textwrap::wrap(&text, options) {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        None => {
            let _ = writeln!(out, "Request   {} {base_url}{}", op.method.as_str(), op.path.as_str());
        }
    }
    if let Some(v) = &op.version {
        let _ = writeln!(out, "Version   {v}");
    }
    let access = if op.writes() { "writes" } else { "reads" };
    match &op.scope {
        Some(s) => {
            let _ = writeln!(out, "Scope     {} ({access})", s.0);
        }
        None => {
            let _ = writeln!(out, "Scope     none ({access})");
        }
    }
    if op.writes() {
        let _ = writeln!(
            out,
            "Repeat    {}",
            if op.repeat_safe {
                "safe: sending it twice does what sending it once does"
            } else {
                "not safe: after a crash mid-send, a step without `find` is set aside as unsure"
            }
        );
    }
    if !op.is_webhook() {
        let _ = writeln!(out, "Pages     {}", describe_pagination(&op.pagination));
    }
    if let Some(d) = op.dedupe {
        let rule = match d {
            crate::catalog::Dedupe::Id => "fires once per new id",
            crate::catalog::Dedupe::IdUpdated => "fires per new id and again when its updated time changes",
            crate::catalog::Dedupe::Content => "fires when the record's content changes",
        };
        let _ = writeln!(out, "Dedupe    {} ({rule})", d.as_str());
    }
    if let Some(since) = &op.since {
        let _ = writeln!(out, "Since     the poller fills `{since}` from its cursor");
    }
    if let Some(notes) = &op.notes {
        out.push('\n');
        let _ = writeln!(out, "Notes");
        for line in textwrap::wrap(notes, textwrap::Options::new(width).initial_indent("  ").subsequent_indent("  ")) {
            let _ = writeln!(out, "{line}");
        }
    }

    out.push('\n');
    let _ = writeln!(out, "Inputs");
    if op.is_webhook() {
        let _ = writeln!(out, "  (none: the event's body is the input)");
    } else if op.inputs.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    let name_width = op.inputs.iter().map(|i| i.name.len()).max().unwrap_or(0);
    let type_width = op.inputs.iter().map(|i| i.ty.to_string().len()).max().unwrap_or(0);
    for input in &op.inputs {
        let req = if input.required { "required" } else { "optional" };
        let head = format!(
            "  {:<name_width$}  {:<5}  {:<type_width$}  {req}",
            input.name,
            input.location.as_str(),
            input.ty.to_string()
        );
        let _ = writeln!(out, "{head}");
        let indent = "      ";
        let mut help = input.help.clone();
        if let Some(allowed) = &input.allowed {
            let values: Vec<String> =
                allowed.iter().map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())).collect();
            help.push_str(&format!(" One of: {}.", values.join(", ")));
        }
        for line in
            textwrap::wrap(&help, textwrap::Options::new(width).initial_indent(indent).subsequent_indent(indent))
        {
            let _ = writeln!(out, "{line}");
        }
    }

    out.push('\n');
    let _ = writeln!(out, "Output");
    if let Some(o) = &op.output {
        let records = match &o.records {
            Records::Items(p) => format!("a list at `{p}`"),
            Records::Record(p) => format!("one record at `{p}`"),
        };
        let id = o.id.as_ref().map(|p| format!(", id `{p}`")).unwrap_or_default();
        let updated = o.updated.as_ref().map(|p| format!(", updated `{p}`")).unwrap_or_default();
        let _ = writeln!(out, "  {records}{id}{updated}");
    }
    // A polled trigger hands recipes one record; a step hands them the whole response body.
    let (fields, what) = match op.kind {
        Kind::Trigger => (op.record_shape().flatten(2), "fields of a trigger item, as {{trigger.<field>}}"),
        Kind::Action => (op.body_shape().flatten(3), "response fields, as {{steps.<step id>.<field>}}"),
    };
    if !fields.is_empty() {
        let _ = writeln!(out, "  {what}:");
        let w = fields.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        for (path, ty) in fields {
            let _ = writeln!(out, "    {path:<w$}  {ty}");
        }
    }

    if !op.is_webhook() {
        out.push('\n');
        let _ = writeln!(out, "Sample input");
        let _ = writeln!(out, "{}", indent(&serde_json::to_string_pretty(&op.sample_input).unwrap_or_default(), "  "));
    }
    out.push('\n');
    let _ = writeln!(out, "Sample output");
    let _ = writeln!(out, "{}", indent(&serde_json::to_string_pretty(&op.sample_output).unwrap_or_default(), "  "));
    out
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}")).collect::<Vec<_>>().join("\n")
}
