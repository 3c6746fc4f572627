//! Reads catalog files and compiles them into a `Catalog`, reporting every problem at once.
//!
//! Each file is indexed for positions first, then deserialized one operation at a time, so a
//! broken operation is reported without hiding the next one. Semantic checks (path
//! parameters against inputs, output and dedupe of triggers, pagination parameters, sample
//! inputs) run on every operation that deserialized.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use include_dir::{Dir, include_dir};
use serde::de::DeserializeOwned;

use super::spec::{
    AppSpec, CategoryFileSpec, InputSpec, OperationSpec, OutputSpec, PaginationSpec, PaginationStyleSpec, RetrySpec,
};
use super::*;
use crate::diagnostic::{Diagnostics, Position, PositionIndex, Segment, hint, parse_path};

static EMBEDDED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/operations");

/// One catalog file: where it came from (for messages), its app and stem, and its text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub display: String,
    pub app: String,
    pub stem: String,
    pub text: String,
}

/// The files a catalog is compiled from: the embedded ones, then any overrides.
#[derive(Debug, Clone, Default)]
pub struct CatalogSource {
    pub files: Vec<SourceFile>,
}

impl CatalogSource {
    /// The catalog built into the binary.
    pub fn embedded() -> Self {
        let mut files = Vec::new();
        for app_dir in EMBEDDED.dirs() {
            let app = app_dir.path().to_string_lossy().into_owned();
            for file in app_dir.files() {
                if file.path().extension().is_some_and(|e| e == "yaml") {
                    files.push(SourceFile {
                        display: format!("operations/{}", file.path().display()),
                        app: app.clone(),
                        stem: stem_of(file.path()),
                        text: file.contents_utf8().unwrap_or_default().to_owned(),
                    });
                }
            }
        }
        files.sort_by(|a, b| a.display.cmp(&b.display));
        Self { files }
    }

    /// Adds every `<app>/<category>.yaml` below `dir`; later files override earlier ones.
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), Diagnostics> {
        let mut diags = Diagnostics::default();
        let io_error = |diags: &mut Diagnostics, path: &Path, e: std::io::Error| {
            diags.push(&path.display().to_string(), Position::default(), format!("cannot read: {e}"));
        };
        let app_dirs = match read_dir_sorted(dir) {
            Ok(d) => d,
            Err(e) => {
                io_error(&mut diags, dir, e);
                return Err(diags);
            }
        };
        for app_dir in app_dirs.into_iter().filter(|p| p.is_dir()) {
            let app = app_dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let entries = match read_dir_sorted(&app_dir) {
                Ok(e) => e,
                Err(e) => {
                    io_error(&mut diags, &app_dir, e);
                    continue;
                }
            };
            for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
                if let Err(e) = self.add_file(&app, &path) {
                    diags.extend(e);
                }
            }
        }
        diags.into_result()
    }

    /// Adds one file of `app`; its stem is the category (or `app` for the app file).
    pub fn add_file(&mut self, app: &str, path: &Path) -> Result<(), Diagnostics> {
        match crate::fsread::read_text(path) {
            Ok(text) => {
                self.files.push(SourceFile {
                    display: path.display().to_string(),
                    app: app.to_owned(),
                    stem: stem_of(path),
                    text,
                });
                Ok(())
            }
            Err(e) => {
                let mut diags = Diagnostics::default();
                diags.push(&path.display().to_string(), e.position, e.message);
                Err(diags)
            }
        }
    }

    /// Compiles every file. All problems come back together.
    pub fn compile(&self) -> Result<Catalog, Diagnostics> {
        let mut diags = Diagnostics::default();
        let mut apps = BTreeMap::new();
        for file in self.files.iter().filter(|f| f.stem == "app") {
            if let Some(app) = compile_app_file(file, &mut diags) {
                apps.insert(file.app.clone(), Arc::new(app));
            }
        }
        let mut operations: BTreeMap<String, Arc<Operation>> = BTreeMap::new();
        let mut webhooks: BTreeMap<String, Arc<Operation>> = BTreeMap::new();
        for file in self.files.iter().filter(|f| f.stem != "app") {
            let Some(app) = apps.get(&file.app) else {
                diags.push(
                    &file.display,
                    Position { line: 1, col: 1 },
                    format!("app `{}` has no app.yaml beside this file", file.app),
                );
                continue;
            };
            for op in compile_category_file(file, app, &mut diags) {
                // An override may turn a polled operation into a webhook or back: the key
                // lives in one map only.
                let key = op.key.to_string();
                if op.is_webhook() {
                    operations.remove(&key);
                    webhooks.insert(key, Arc::new(op));
                } else {
                    webhooks.remove(&key);
                    operations.insert(key, Arc::new(op));
                }
            }
        }
        check_webhooks(&self.files, &operations, &webhooks, &mut diags);
        diags.into_result()?;
        Ok(Catalog { apps, operations, webhooks })
    }
}

/// Checks that need the whole catalog: each webhook's `reconcile` is a polling trigger of its
/// app, and no app has two operations for one event (the listener must find exactly one).
fn check_webhooks(
    files: &[SourceFile],
    operations: &BTreeMap<String, Arc<Operation>>,
    webhooks: &BTreeMap<String, Arc<Operation>>,
    diags: &mut Diagnostics,
) {
    let mut events: BTreeMap<(&str, &str), &OperationKey> = BTreeMap::new();
    for op in webhooks.values() {
        let Some(hook) = &op.webhook else { continue };
        // Locate the operation in its file again, for a line and column.
        let position = |field: &str| {
            files
                .iter()
                .rev()
                .find(|f| f.display == op.source)
                .and_then(|f| {
                    let index = PositionIndex::build(&f.text).ok()?;
                    let value: serde_yaml::Value = serde_yaml::from_str(&f.text).ok()?;
                    let list = value.get("operations")?.as_sequence()?;
                    let i = list.iter().position(|o| o.get("key").and_then(|k| k.as_str()) == Some(&op.key.name))?;
                    Some(index.locate_str(&format!("operations[{i}].{field}")))
                })
                .unwrap_or_default()
        };
        if let Some(key) = &hook.reconcile {
            let text = key.to_string();
            let problem = match (operations.get(&text), webhooks.get(&text)) {
                (Some(target), _) if target.kind == Kind::Trigger => None,
                (Some(_), _) => Some(format!("`{text}` is an action; reconcile names a polling trigger")),
                (None, Some(_)) => Some(format!("`{text}` is itself a webhook; reconcile names a polling trigger")),
                (None, None) => {
                    Some(format!("no operation `{text}`{}", hint(&text, operations.keys().map(String::as_str))))
                }
            };
            if let Some(problem) = problem {
                diags.push(&op.source, position("reconcile"), format!("{}.reconcile: {problem}", op.key));
            }
        }
        if let Some(first) = events.insert((op.key.app.as_str(), hook.event.as_str()), &op.key) {
            diags.push(
                &op.source,
                position("event"),
                format!("{}.event: `{}` is already the event of `{first}`", op.key, hook.event),
            );
        }
    }
}

/// The embedded catalog. It is checked by the test suite, so failing here is a build defect.
pub fn load_embedded() -> Result<Catalog, Diagnostics> {
    CatalogSource::embedded().compile()
}

/// The embedded catalog, with operations from `extra` added or overriding.
pub fn load(extra: Option<&Path>) -> Result<Catalog, Diagnostics> {
    let mut source = CatalogSource::embedded();
    if let Some(dir) = extra {
        source.add_dir(dir)?;
    }
    source.compile()
}

fn read_dir_sorted(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    out.sort();
    Ok(out)
}

fn stem_of(path: &Path) -> String {
    path.file_stem().unwrap_or_default().to_string_lossy().into_owned()
}

/// Where to report: the file, its position index and the path prefix of the current node.
struct Site<'a> {
    file: &'a str,
    index: &'a PositionIndex,
    prefix: Vec<Segment>,
}

impl Site<'_> {
    fn at(&self, rel: &str) -> Position {
        let mut path = self.prefix.clone();
        path.extend(parse_path(rel));
        self.index.locate(&path)
    }

    fn push(&self, diags: &mut Diagnostics, rel: &str, message: impl Into<String>) {
        diags.push(self.file, self.at(rel), message);
    }
}

/// Parses one file (see `yaml::parse`); its problems join `diags`.
fn parse_file(file: &SourceFile, diags: &mut Diagnostics) -> Option<(PositionIndex, serde_yaml::Value)> {
    match crate::yaml::parse(&file.display, &file.text) {
        Ok(doc) => Some((doc.index, doc.value)),
        Err(found) => {
            diags.extend(found);
            None
        }
    }
}

/// Deserializes `value`, found at the site's place, reporting a failure at the exact field.
fn deserialize<T: DeserializeOwned>(value: serde_yaml::Value, site: &Site, diags: &mut Diagnostics) -> Option<T> {
    crate::yaml::deserialize(value, site.file, site.index, &site.prefix, diags)
}

fn compile_app_file(file: &SourceFile, diags: &mut Diagnostics) -> Option<App> {
    let (index, value) = parse_file(file, diags)?;
    let site = Site { file: &file.display, index: &index, prefix: Vec::new() };
    let spec: AppSpec = deserialize(value, &site, diags)?;
    let before = diags.len();
    let mut auth = Vec::new();
    for (i, a) in spec.auth.iter().enumerate() {
        match AuthKind::parse(a) {
            Some(kind) => auth.push(kind),
            None => site.push(
                diags,
                &format!("auth[{i}]"),
                format!("auth[{i}]: unknown auth kind `{a}`; expected private_token, oauth2 or bearer"),
            ),
        }
    }
    let headers = match spec.rate_limit.headers.as_str() {
        "ghl" => RateLimitHeaders::Ghl,
        "capsule" => RateLimitHeaders::Capsule,
        other => {
            site.push(
                diags,
                "rate_limit.headers",
                format!("rate_limit.headers: unknown style `{other}`; expected ghl or capsule"),
            );
            RateLimitHeaders::Ghl
        }
    };
    let per = match spec.rate_limit.per.as_str() {
        "location" => BudgetOwner::Location,
        "user" => BudgetOwner::User,
        other => {
            site.push(
                diags,
                "rate_limit.per",
                format!("rate_limit.per: unknown owner `{other}`; expected location or user"),
            );
            BudgetOwner::Location
        }
    };
    let mut limits = Vec::new();
    for (i, l) in spec.rate_limit.limits.iter().enumerate() {
        match parse_rate(l) {
            Ok(r) => limits.push(r),
            Err(e) => site.push(diags, &format!("rate_limit.limits[{i}]"), format!("rate_limit.limits[{i}]: {e}")),
        }
    }
    let retry = compile_retry(&spec.retry, &site, "retry", diags);
    let timeout = parse_duration(&spec.timeout).map_err(|e| site.push(diags, "timeout", format!("timeout: {e}"))).ok();
    let page_bound = std::num::NonZeroU32::new(spec.page_bound);
    if page_bound.is_none() {
        site.push(diags, "page_bound", "page_bound: must be at least 1");
    }
    if !spec.base_url.starts_with("http://") && !spec.base_url.starts_with("https://") {
        site.push(diags, "base_url", format!("base_url: `{}` is not an http(s) URL", spec.base_url));
    }
    if diags.len() > before {
        return None;
    }
    Some(App {
        id: file.app.clone(),
        name: spec.name,
        base_url: spec.base_url.trim_end_matches('/').to_owned(),
        auth,
        oauth2: spec.oauth2.map(|o| OAuth2Endpoints {
            authorize_url: o.authorize_url,
            token_url: o.token_url,
            default_scopes: o.default_scopes,
        }),
        rate_limits: RateLimits { headers, per, limits },
        retry: retry?,
        timeout: timeout?,
        page_bound: page_bound?,
        max_response_bytes: spec.max_response_bytes.unwrap_or(crate::limits::DEFAULT_MAX_RESPONSE_BYTES),
    })
}

fn compile_retry(spec: &RetrySpec, site: &Site, at: &str, diags: &mut Diagnostics) -> Option<RetryPolicy> {
    let max_attempts = std::num::NonZeroU32::new(spec.max_attempts);
    if max_attempts.is_none() {
        site.push(diags, &format!("{at}.max_attempts"), format!("{at}.max_attempts: must be at least 1"));
    }
    let initial = parse_duration(&spec.initial_backoff)
        .map_err(|e| site.push(diags, &format!("{at}.initial_backoff"), format!("{at}.initial_backoff: {e}")))
        .ok();
    let max = parse_duration(&spec.max_backoff)
        .map_err(|e| site.push(diags, &format!("{at}.max_backoff"), format!("{at}.max_backoff: {e}")))
        .ok();
    if !(spec.multiplier >= 1.0 && spec.multiplier.is_finite()) {
        site.push(diags, &format!("{at}.multiplier"), format!("{at}.multiplier: must be at least 1"));
        return None;
    }
    Some(RetryPolicy {
        max_attempts: max_attempts?,
        initial_backoff: initial?,
        max_backoff: max?,
        multiplier: spec.multiplier,
    })
}

fn compile_category_file(file: &SourceFile, app: &App, diags: &mut Diagnostics) -> Vec<Operation> {
    let Some((index, value)) = parse_file(file, diags) else { return Vec::new() };
    let root = Site { file: &file.display, index: &index, prefix: Vec::new() };
    if !is_snake_case(&file.stem) {
        root.push(diags, "", format!("category `{}` (the file name) must be snake_case", file.stem));
        return Vec::new();
    }
    let Some(spec) = deserialize::<CategoryFileSpec>(value, &root, diags) else { return Vec::new() };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, raw) in spec.operations.into_iter().enumerate() {
        let site = Site {
            file: &file.display,
            index: &index,
            prefix: vec![Segment::Key("operations".into()), Segment::Index(i)],
        };
        let Some(op) = deserialize::<OperationSpec>(raw, &site, diags) else { continue };
        if let Some(first) = seen.get(&op.key) {
            let line = index.locate_str(&format!("operations[{first}]")).line;
            site.push(
                diags,
                "key",
                format!("operations[{i}].key: duplicate operation key `{}` (first defined at line {line})", op.key),
            );
            continue;
        }
        seen.insert(op.key.clone(), i);
        if let Some(compiled) = compile_operation(op, &file.stem, app, &file.display, &site, diags) {
            out.push(compiled);
        }
    }
    out
}

fn compile_operation(
    spec: OperationSpec,
    category: &str,
    app: &App,
    source: &str,
    site: &Site,
    diags: &mut Diagnostics,
) -> Option<Operation> {
    let before = diags.len();
    let here = crate::diagnostic::path_to_string(&site.prefix);
    let err = |diags: &mut Diagnostics, rel: &str, msg: String| {
        let label = if rel.is_empty() { here.clone() } else { format!("{here}.{rel}") };
        site.push(diags, rel, format!("{label}: {msg}"));
    };

    if !is_snake_case(&spec.key) {
        err(diags, "key", format!("`{}` is not snake_case", spec.key));
    }
    let kind = match spec.kind.as_str() {
        "trigger" => Some(Kind::Trigger),
        "action" => Some(Kind::Action),
        other => {
            err(diags, "kind", format!("unknown kind `{other}`; expected trigger or action"));
            None
        }
    };
    match spec.source.as_deref() {
        None | Some("poll") => {}
        Some("webhook") => return compile_webhook(spec, kind, category, app, source, &err, diags, before),
        Some(other) => {
            err(diags, "source", format!("unknown source `{other}`; expected poll or webhook"));
            return None;
        }
    }
    if spec.source.is_some() && kind == Some(Kind::Action) {
        err(diags, "source", "`source` is for triggers; an action is always sent".into());
    }
    for (field, given) in [("event", spec.event.is_some()), ("reconcile", spec.reconcile.is_some())] {
        if given {
            err(diags, field, format!("`{field}` is for webhook triggers (`source: webhook`)"));
        }
    }
    let method = match spec.method.as_deref() {
        Some("GET") => Some(Method::Get),
        Some("POST") => Some(Method::Post),
        Some("PUT") => Some(Method::Put),
        Some("PATCH") => Some(Method::Patch),
        Some("DELETE") => Some(Method::Delete),
        Some(other) => {
            err(diags, "method", format!("unknown method `{other}`; expected GET, POST, PUT, PATCH or DELETE"));
            None
        }
        None => {
            err(diags, "", "an operation sent over HTTP needs a `method` (or `source: webhook`)".into());
            None
        }
    };
    let raw_path = spec.path.clone().unwrap_or_default();
    let path = match &spec.path {
        Some(p) => PathTemplate::parse(p).map_err(|e| err(diags, "path", e)).ok(),
        None => {
            err(diags, "", "an operation sent over HTTP needs a `path` (or `source: webhook`)".into());
            None
        }
    };
    if spec.path.is_some() && !raw_path.starts_with('/') {
        err(diags, "path", format!("`{raw_path}` must start with `/`"));
    }
    let body = match spec.body.as_deref() {
        None | Some("json") => BodyEncoding::Json,
        Some("form") => BodyEncoding::Form,
        Some("array") => BodyEncoding::Array,
        Some(other) => {
            err(diags, "body", format!("unknown body encoding `{other}`; expected json, form or array"));
            BodyEncoding::Json
        }
    };
    let response = match spec.response.as_deref() {
        None | Some("json") => ResponseKind::Json,
        Some("text") => ResponseKind::Text,
        Some("binary") => ResponseKind::Binary,
        Some(other) => {
            err(diags, "response", format!("unknown response kind `{other}`; expected json, text or binary"));
            ResponseKind::Json
        }
    };

    let inputs = compile_inputs(&spec.inputs, &err, diags);

    // Path parameters and path inputs must match both ways.
    if let Some(path) = &path {
        let params: Vec<&str> = path.params().collect();
        for p in &params {
            if !inputs.iter().any(|i| i.name == *p && i.location == InputLocation::Path) {
                err(diags, "path", format!("path parameter `{{{p}}}` has no input with `in: path`"));
            }
        }
        for (n, input) in inputs.iter().enumerate() {
            if input.location == InputLocation::Path && !params.contains(&input.name.as_str()) {
                err(
                    diags,
                    &format!("inputs[{n}]"),
                    format!("path input `{}` does not appear in the path `{}`", input.name, path.as_str()),
                );
            }
        }
    }
    if body == BodyEncoding::Array {
        let body_inputs: Vec<&Input> = inputs.iter().filter(|i| i.location == InputLocation::Body).collect();
        if body_inputs.len() != 1 || body_inputs[0].name != "body" || !matches!(body_inputs[0].ty, InputType::Array(_))
        {
            err(diags, "body", "an array body takes exactly one body input, named `body`, of type array".into());
        }
    }

    let output = spec.output.as_ref().and_then(|o| compile_output(o, &inputs, &err, diags));
    let dedupe = match spec.dedupe.as_deref() {
        None => None,
        Some(d) => match Dedupe::parse(d) {
            Some(d) => Some(d),
            None => {
                err(diags, "dedupe", format!("unknown dedupe rule `{d}`; expected id, id_updated or content"));
                None
            }
        },
    };
    if kind == Some(Kind::Trigger) {
        if spec.output.is_none() {
            err(diags, "", "a trigger needs an `output` (where its records are)".into());
        }
        if spec.dedupe.is_none() {
            err(diags, "", "a trigger needs a `dedupe` rule (id, id_updated or content)".into());
        }
    }
    if let (Some(d), Some(o)) = (dedupe, &output) {
        match (d, &o.records) {
            // A list whose records have an id but no change time (GHL's contact tasks): each
            // record is known by its id and fires again when its content changes.
            (Dedupe::Content, Records::Items(_)) if o.id.is_none() => err(
                diags,
                "dedupe",
                "`content` on a list needs `output.id` (each record is known by its id and fires when its \
                 content changes)"
                    .into(),
            ),
            (Dedupe::Id | Dedupe::IdUpdated, Records::Record(_)) => err(
                diags,
                "dedupe",
                format!("`{}` is for list outputs; a single record dedupes by `content`", d.as_str()),
            ),
            (Dedupe::Id | Dedupe::IdUpdated, _) if o.id.is_none() => {
                err(diags, "dedupe", format!("`{}` needs `output.id`", d.as_str()))
            }
            (Dedupe::IdUpdated, _) if o.updated.is_none() => {
                err(diags, "dedupe", "`id_updated` needs `output.updated`".into())
            }
            _ => {}
        }
    }
    if let Some(since) = &spec.since
        && !inputs.iter().any(|i| &i.name == since)
    {
        err(
            diags,
            "since",
            format!(
                "`since` names `{since}`, which is not an input{}",
                hint(since, inputs.iter().map(|i| i.name.as_str()))
            ),
        );
    }

    let pagination = compile_pagination(spec.pagination.as_ref(), &inputs, &err, diags);
    let retry = match &spec.retry {
        Some(r) => compile_retry(r, site, "retry", diags),
        None => Some(app.retry.clone()),
    };

    // Sample inputs: known names, right types, every required input present.
    let mut sample_input = serde_json::Map::new();
    for (name, value) in &spec.sample_input {
        match inputs.iter().find(|i| &i.name == name) {
            None => err(
                diags,
                &format!("sample_input.{name}"),
                format!("`{name}` is not an input{}", hint(name, inputs.iter().map(|i| i.name.as_str()))),
            ),
            Some(input) if !input.ty.accepts(value) => {
                err(diags, &format!("sample_input.{name}"), format!("`{name}` should be {}, found {value}", input.ty))
            }
            Some(input) => {
                if let Some(allowed) = &input.allowed
                    && !allowed.contains(value)
                {
                    err(
                        diags,
                        &format!("sample_input.{name}"),
                        format!("`{value}` is not one of the allowed values of `{name}`"),
                    );
                }
            }
        }
        sample_input.insert(name.clone(), value.clone());
    }
    for input in inputs.iter().filter(|i| i.required) {
        if !spec.sample_input.contains_key(&input.name) {
            err(diags, "sample_input", format!("required input `{}` is missing", input.name));
        }
    }
    let sample_output = spec.sample_output.clone().unwrap_or(serde_json::Value::Null);
    if response == ResponseKind::Json && sample_output.is_null() {
        err(diags, "", "a JSON operation needs a `sample_output`".into());
    }

    if diags.len() > before {
        return None;
    }
    let method = method?;
    let scope = spec.scope.map(Scope);
    let writes = match &scope {
        Some(scope) => scope.is_write(),
        None => method != Method::Get,
    };
    let repeat_safe = spec.repeat_safe.unwrap_or(!writes || matches!(method, Method::Put | Method::Delete));
    Some(Operation {
        key: OperationKey { app: app.id.clone(), category: category.to_owned(), name: spec.key },
        name: spec.name,
        kind: kind?,
        description: spec.description.trim().to_owned(),
        deprecated: spec.deprecated,
        webhook: None,
        method,
        path: path?,
        version: spec.version,
        scope,
        body,
        body_declared: spec.body.is_some(),
        response,
        notes: spec.notes.map(|n| n.trim().to_owned()),
        inputs,
        output,
        pagination,
        dedupe,
        since: spec.since,
        repeat_safe,
        retry: retry?,
        sample_input,
        sample_output,
        source: source.to_owned(),
    })
}

/// An instant trigger: an event the API pushes, with its payload as the record. It takes
/// nothing that shapes a request (there is none), and no dedupe rule: each delivery is one
/// event, and repeated deliveries are told apart by the listener (GHL's `webhookId`).
#[allow(clippy::too_many_arguments)]
fn compile_webhook(
    spec: OperationSpec,
    kind: Option<Kind>,
    category: &str,
    app: &App,
    source: &str,
    err: &dyn Fn(&mut Diagnostics, &str, String),
    diags: &mut Diagnostics,
    before: usize,
) -> Option<Operation> {
    if kind == Some(Kind::Action) {
        err(diags, "kind", "a webhook operation is a trigger (`kind: trigger`): the API pushes it".into());
    }
    let request_fields = [
        ("method", spec.method.is_some()),
        ("path", spec.path.is_some()),
        ("version", spec.version.is_some()),
        ("body", spec.body.is_some()),
        ("response", spec.response.is_some()),
        ("inputs", !spec.inputs.is_empty()),
        ("pagination", spec.pagination.is_some()),
        ("since", spec.since.is_some()),
        ("repeat_safe", spec.repeat_safe.is_some()),
        ("retry", spec.retry.is_some()),
        ("sample_input", !spec.sample_input.is_empty()),
    ];
    for (field, given) in request_fields {
        if given {
            err(diags, field, format!("a webhook trigger is pushed by the API, not sent or polled: remove `{field}`"));
        }
    }
    let event = match spec.event.as_deref().map(str::trim) {
        Some(e) if !e.is_empty() => Some(e.to_owned()),
        _ => {
            err(diags, "", "a webhook trigger needs `event`: the event's name as the API spells it".into());
            None
        }
    };
    let reconcile = match spec.reconcile.as_deref() {
        None => None,
        Some(text) => match OperationKey::parse(text) {
            Some(key) if key.app == app.id => Some(key),
            Some(key) => {
                err(
                    diags,
                    "reconcile",
                    format!("`{key}` is not an operation of `{}`; reconcile polls the same app", app.id),
                );
                None
            }
            None => {
                err(diags, "reconcile", format!("`{text}` is not a full operation key (`<app>.<category>.<name>`)"));
                None
            }
        },
    };
    // On an event, `dedupe` says how its reconciling poll tells what this event would have
    // delivered: `id` for a creation (only records not seen before), where the poll's own
    // rule (a change time) would fire on every later edit as well.
    let dedupe = match spec.dedupe.as_deref() {
        None => None,
        Some(d) => match Dedupe::parse(d) {
            Some(d) if reconcile.is_some() => Some(d),
            Some(_) => {
                err(diags, "dedupe", "`dedupe` on an event applies to its reconciling poll; this one has none".into());
                None
            }
            None => {
                err(diags, "dedupe", format!("unknown dedupe rule `{d}`; expected id, id_updated or content"));
                None
            }
        },
    };
    let output = match &spec.output {
        Some(o) => compile_output(o, &[], err, diags),
        None => {
            err(diags, "", "a trigger needs an `output` (where its records are in the event's body)".into());
            None
        }
    };
    if let Some(o) = &output
        && o.newest_first.is_some()
    {
        err(diags, "output.newest_first", "an event has no order to ask for".into());
    }
    let sample_output = spec.sample_output.clone().unwrap_or(serde_json::Value::Null);
    if sample_output.is_null() {
        err(diags, "", "a webhook trigger needs a `sample_output`: an example of the event's body".into());
    }
    if let Some(o) = &output
        && !sample_output.is_null()
    {
        // The sample is what `validate` checks `trigger.*` against: its records must be where
        // the output says, with their id.
        let records = o.records(&sample_output);
        if records.is_empty() {
            err(diags, "sample_output", "has no record where `output` says the records are".into());
        }
        if let Some(id) = &o.id
            && records.iter().any(|r| id.get(r).is_none())
        {
            err(diags, "sample_output", format!("a sample record lacks its id `{id}`"));
        }
    }
    if diags.len() > before {
        return None;
    }
    let path = PathTemplate::parse(&Webhook::listener_path(&app.id)).ok()?;
    Some(Operation {
        key: OperationKey { app: app.id.clone(), category: category.to_owned(), name: spec.key },
        name: spec.name,
        kind: Kind::Trigger,
        description: spec.description.trim().to_owned(),
        deprecated: spec.deprecated,
        webhook: Some(Webhook { event: event?, reconcile }),
        method: Method::Post,
        path,
        version: None,
        scope: spec.scope.map(Scope),
        body: BodyEncoding::Json,
        body_declared: false,
        response: ResponseKind::Json,
        notes: spec.notes.map(|n| n.trim().to_owned()),
        inputs: Vec::new(),
        output,
        pagination: Pagination::None,
        dedupe,
        since: None,
        repeat_safe: true,
        retry: app.retry.clone(),
        sample_input: serde_json::Map::new(),
        sample_output,
        source: source.to_owned(),
    })
}

fn compile_inputs(
    specs: &[InputSpec],
    err: &dyn Fn(&mut Diagnostics, &str, String),
    diags: &mut Diagnostics,
) -> Vec<Input> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (n, s) in specs.iter().enumerate() {
        let at = format!("inputs[{n}]");
        let location = match s.location.as_str() {
            "path" => Some(InputLocation::Path),
            "query" => Some(InputLocation::Query),
            "body" => Some(InputLocation::Body),
            "header" => Some(InputLocation::Header),
            other => {
                err(
                    diags,
                    &format!("{at}.in"),
                    format!("unknown location `{other}`; expected path, query, body or header"),
                );
                None
            }
        };
        let ty = InputType::parse(&s.ty, s.items.as_deref()).map_err(|e| err(diags, &format!("{at}.type"), e)).ok();
        if !seen.insert(s.name.clone()) {
            err(diags, &format!("{at}.name"), format!("input `{}` is declared twice", s.name));
        }
        if s.help.trim().is_empty() {
            err(diags, &format!("{at}.help"), format!("input `{}` needs a help text", s.name));
        }
        if let (Some(ty), Some(allowed)) = (&ty, &s.allowed) {
            for v in allowed.iter().filter(|v| !ty.accepts(v)) {
                err(diags, &format!("{at}.enum"), format!("allowed value {v} is not a {ty}"));
            }
        }
        // A broken input is still listed (its problems are already reported), so that
        // checks that refer to it by name do not report it missing as well.
        if let Some(location) = location {
            out.push(Input {
                name: s.name.clone(),
                location,
                ty: ty.unwrap_or(InputType::Any),
                required: s.required || location == InputLocation::Path,
                allowed: s.allowed.clone(),
                help: s.help.trim().to_owned(),
            });
        }
    }
    out
}

fn compile_output(
    spec: &OutputSpec,
    inputs: &[Input],
    err: &dyn Fn(&mut Diagnostics, &str, String),
    diags: &mut Diagnostics,
) -> Option<Output> {
    let records = match (&spec.items, &spec.record) {
        (Some(items), None) => Records::Items(FieldPath::parse(items)),
        (None, Some(record)) => Records::Record(FieldPath::parse(record)),
        (Some(_), Some(_)) => {
            err(diags, "output", "give either `items` (a list) or `record` (one record), not both".into());
            return None;
        }
        (None, None) => {
            err(diags, "output", "give `items` (a list) or `record` (one record)".into());
            return None;
        }
    };
    let newest_first = spec.newest_first.as_ref().map(|nf| {
        if matches!(records, Records::Record(_)) {
            err(diags, "output.newest_first", "only a list (`items`) has an order".into());
        }
        let mut set = match (&nf.input, &nf.value) {
            (Some(input), Some(value)) => vec![(input.clone(), value.clone())],
            (None, None) => Vec::new(),
            _ => {
                err(
                    diags,
                    "output.newest_first",
                    "give `input` and `value` together (or neither, for a documented fixed order)".into(),
                );
                Vec::new()
            }
        };
        set.extend(nf.with.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (name, value) in &set {
            match inputs.iter().find(|i| &i.name == name) {
                None => err(
                    diags,
                    "output.newest_first",
                    format!("`{name}` is not an input{}", hint(name, inputs.iter().map(|i| i.name.as_str()))),
                ),
                Some(input) => {
                    let allowed = input.allowed.as_ref().is_none_or(|list| list.contains(value));
                    if !input.ty.accepts(value) || !allowed {
                        err(diags, "output.newest_first", format!("{value} is not a valid value for input `{name}`"));
                    }
                }
            }
        }
        for name in &nf.read_whole_with {
            if !inputs.iter().any(|i| &i.name == name) {
                err(diags, "output.newest_first.read_whole_with", format!("`{name}` is not an input"));
            }
        }
        NewestFirst { set, read_whole_with: nf.read_whole_with.clone() }
    });
    Some(Output {
        records,
        id: spec.id.as_deref().map(FieldPath::parse),
        updated: spec.updated.as_deref().map(FieldPath::parse),
        newest_first,
    })
}

fn compile_pagination(
    spec: Option<&PaginationSpec>,
    inputs: &[Input],
    err: &dyn Fn(&mut Diagnostics, &str, String),
    diags: &mut Diagnostics,
) -> Pagination {
    let place = |loc: &Option<String>, diags: &mut Diagnostics| match loc.as_deref() {
        None | Some("query") => ParamPlace::Query,
        Some("body") => ParamPlace::Body,
        Some(other) => {
            err(diags, "pagination.in", format!("unknown location `{other}`; expected query or body"));
            ParamPlace::Query
        }
    };
    let need = |name: &str, place: ParamPlace, diags: &mut Diagnostics| {
        let want = match place {
            ParamPlace::Query => InputLocation::Query,
            ParamPlace::Body => InputLocation::Body,
        };
        if !inputs.iter().any(|i| i.name == name && i.location == want) {
            err(diags, "pagination", format!("pagination uses `{name}`, which is not a {} input", want.as_str()));
        }
    };
    let positive = |n: u32, diags: &mut Diagnostics| {
        if n == 0 {
            err(diags, "pagination.page_size", "page_size must be at least 1".into());
        }
    };
    let style = match spec {
        None => return Pagination::None,
        Some(PaginationSpec::Bare(s)) if s == "none" => return Pagination::None,
        Some(PaginationSpec::Bare(s)) => {
            err(diags, "pagination", format!("`{s}` needs its parameters; write `style: {s}` with them, or `none`"));
            return Pagination::None;
        }
        Some(PaginationSpec::Styled(style)) => style,
    };
    match style {
        PaginationStyleSpec::None => Pagination::None,
        PaginationStyleSpec::Offset { limit, offset, page_size, location } => {
            let place = place(location, diags);
            need(limit, place, diags);
            need(offset, place, diags);
            positive(*page_size, diags);
            Pagination::Offset { limit: limit.clone(), offset: offset.clone(), page_size: *page_size, place }
        }
        PaginationStyleSpec::Page { page, size, page_size, location } => {
            let place = place(location, diags);
            need(page, place, diags);
            need(size, place, diags);
            positive(*page_size, diags);
            Pagination::Page { page: page.clone(), size: size.clone(), page_size: *page_size, place }
        }
        PaginationStyleSpec::StartAfter { limit, page_size } => {
            need(limit, ParamPlace::Query, diags);
            need("startAfter", ParamPlace::Query, diags);
            need("startAfterId", ParamPlace::Query, diags);
            positive(*page_size, diags);
            Pagination::StartAfter { limit: limit.clone(), page_size: *page_size }
        }
        PaginationStyleSpec::Cursor { param, next, has_more, limit, page_size, location } => {
            let at = place(location, diags);
            need(param, at, diags);
            if let Some(l) = limit {
                need(l, at, diags);
            }
            positive(*page_size, diags);
            let next = match next.strip_prefix("$last.") {
                Some(rest) => CursorSource::LastItem(FieldPath::parse(rest)),
                None => CursorSource::Body(FieldPath::parse(next)),
            };
            Pagination::Cursor {
                param: param.clone(),
                next,
                has_more: has_more.as_deref().map(FieldPath::parse),
                limit: limit.clone(),
                page_size: *page_size,
                place: at,
            }
        }
        PaginationStyleSpec::LinkHeader { size, page_size } => {
            need(size, ParamPlace::Query, diags);
            positive(*page_size, diags);
            Pagination::LinkHeader { size: size.clone(), page_size: *page_size }
        }
    }
}
