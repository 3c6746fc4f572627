//! The operations catalog: every API operation ghlflow knows, checked and typed.
//!
//! The catalog is data (`operations/<app>/*.yaml`, embedded in the binary at build time,
//! optionally overridden from a folder). `spec` mirrors those files, `compile` checks them
//! and builds the types below, `units` parses the small languages they use (`30s`,
//! `100/10s`). Everything downstream (the HTTP layer, the recipe compiler, the command line)
//! reads operations only through `Catalog`; nothing here sends a request or reads a recipe.

mod compile;
pub mod shape;
pub mod spec;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use compile::{CatalogSource, SourceFile, load, load_embedded};
pub use shape::Shape;
pub use units::{Rate, parse_duration, parse_rate};

/// `<app>.<category>.<name>`, e.g. `ghl.contacts.upsert_contact`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct OperationKey {
    pub app: String,
    pub category: String,
    pub name: String,
}

impl OperationKey {
    /// Parses a full key. Every part must be snake_case.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let (app, category, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || ![app, category, name].iter().all(|p| is_snake_case(p)) {
            return None;
        }
        Some(Self { app: app.to_owned(), category: category.to_owned(), name: name.to_owned() })
    }
}

impl fmt::Display for OperationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.app, self.category, self.name)
    }
}

impl From<OperationKey> for String {
    fn from(k: OperationKey) -> String {
        k.to_string()
    }
}

/// Lower-case ASCII letters, digits and underscores, starting with a letter.
pub fn is_snake_case(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z')) && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Can be polled for new items, and run as a step.
    Trigger,
    /// Run as a step.
    Action,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Trigger => "trigger",
            Kind::Action => "action",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// A path template split into literal text and `{param}` slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    raw: String,
    segments: Vec<PathSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Literal(String),
    Param(String),
}

impl PathTemplate {
    /// Splits `/contacts/{contactId}/notes`. Unbalanced braces are an error.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut rest = raw;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                segments.push(PathSegment::Literal(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("unclosed `{{` in path `{raw}`"));
            };
            let name = &rest[open + 1..open + close];
            if name.is_empty() || name.contains('{') {
                return Err(format!("bad parameter `{{{name}}}` in path `{raw}`"));
            }
            segments.push(PathSegment::Param(name.to_owned()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("unmatched `}}` in path `{raw}`"));
        }
        if !rest.is_empty() {
            segments.push(PathSegment::Literal(rest.to_owned()));
        }
        Ok(Self { raw: raw.to_owned(), segments })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn segments(&self) -> &[PathSegment] {
        &self.segments
    }

    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            PathSegment::Param(p) => Some(p.as_str()),
            PathSegment::Literal(_) => None,
        })
    }
}

/// An OAuth scope such as `contacts.write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Scope(pub String);

impl Scope {
    /// Write scopes change data: GHL's `*.write` and Capsule's `write`.
    pub fn is_write(&self) -> bool {
        self.0 == "write" || self.0.ends_with(".write")
    }
}

/// Where an input goes in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputLocation {
    Path,
    Query,
    Body,
    Header,
}

impl InputLocation {
    pub fn as_str(self) -> &'static str {
        match self {
            InputLocation::Path => "path",
            InputLocation::Query => "query",
            InputLocation::Body => "body",
            InputLocation::Header => "header",
        }
    }
}

/// The JSON type an input takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array(Option<Box<InputType>>),
    Any,
}

impl InputType {
    /// Parses a type name; `array` may carry an element type.
    pub fn parse(name: &str, items: Option<&str>) -> Result<Self, String> {
        let scalar = |n: &str| -> Result<InputType, String> {
            Ok(match n {
                "string" => InputType::String,
                "integer" => InputType::Integer,
                "number" => InputType::Number,
                "boolean" => InputType::Boolean,
                "object" => InputType::Object,
                "any" => InputType::Any,
                "array" => InputType::Array(None),
                other => {
                    return Err(format!(
                        "unknown type `{other}`{}; expected one of {}",
                        crate::diagnostic::hint(other, TYPE_NAMES.iter().copied()),
                        TYPE_NAMES.join(", ")
                    ));
                }
            })
        };
        match (scalar(name)?, items) {
            (InputType::Array(_), Some(i)) => Ok(InputType::Array(Some(Box::new(scalar(i)?)))),
            (_, Some(_)) => Err(format!("`items` is only for arrays, not `{name}`")),
            (t, None) => Ok(t),
        }
    }

    /// Whether `value` has this type. `null` is never accepted here; optional inputs leave it out.
    pub fn accepts(&self, value: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match (self, value) {
            (InputType::Any, _) => true,
            (InputType::String, V::String(_)) => true,
            (InputType::Integer, V::Number(n)) => n.is_i64() || n.is_u64(),
            (InputType::Number, V::Number(_)) => true,
            (InputType::Boolean, V::Bool(_)) => true,
            (InputType::Object, V::Object(_)) => true,
            (InputType::Array(None), V::Array(_)) => true,
            (InputType::Array(Some(item)), V::Array(values)) => values.iter().all(|v| item.accepts(v)),
            _ => false,
        }
    }
}

impl InputType {
    /// The value in this type, when it converts without loss (`"20"` for an integer, `20`
    /// for a string, `"true"` for a boolean); None when it does not fit.
    pub fn coerce(&self, value: &serde_json::Value) -> Option<serde_json::Value> {
        use serde_json::Value;
        if self.accepts(value) {
            return Some(value.clone());
        }
        match (self, value) {
            (InputType::String, Value::Number(n)) => Some(Value::String(n.to_string())),
            (InputType::String, Value::Bool(b)) => Some(Value::String(b.to_string())),
            (InputType::Integer, Value::String(s)) => s.trim().parse::<i64>().ok().map(Value::from),
            (InputType::Integer, Value::Number(n)) => {
                n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| Value::from(f as i64))
            }
            (InputType::Number, Value::String(s)) => {
                s.trim().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number)
            }
            (InputType::Boolean, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
            (InputType::Array(Some(item)), Value::Array(items)) => {
                items.iter().map(|v| item.coerce(v)).collect::<Option<Vec<_>>>().map(Value::Array)
            }
            _ => None,
        }
    }
}

const TYPE_NAMES: &[&str] = &["string", "integer", "number", "boolean", "object", "array", "any"];

impl fmt::Display for InputType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputType::String => f.write_str("string"),
            InputType::Integer => f.write_str("integer"),
            InputType::Number => f.write_str("number"),
            InputType::Boolean => f.write_str("boolean"),
            InputType::Object => f.write_str("object"),
            InputType::Array(None) => f.write_str("array"),
            InputType::Array(Some(item)) => write!(f, "array of {item}"),
            InputType::Any => f.write_str("any"),
        }
    }
}

/// One input of an operation.
#[derive(Debug, Clone, Serialize)]
pub struct Input {
    pub name: String,
    #[serde(rename = "in")]
    pub location: InputLocation,
    #[serde(rename = "type", serialize_with = "serialize_display")]
    pub ty: InputType,
    pub required: bool,
    #[serde(rename = "enum", skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<serde_json::Value>>,
    pub help: String,
}

fn serialize_display<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// How a request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyEncoding {
    Json,
    Form,
    /// The body is one JSON array, taken from the input named `body`.
    Array,
}

/// What a successful response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseKind {
    Json,
    Text,
    Binary,
}

/// A dot path into a JSON value (`meta.nextPageUrl`, `messages.messages`); empty for `$`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    pub fn parse(text: &str) -> Self {
        if text == "$" || text.is_empty() {
            return Self(Vec::new());
        }
        Self(text.split('.').map(str::to_owned).collect())
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn parts(&self) -> &[String] {
        &self.0
    }

    /// Follows the path; array elements are addressed by number.
    pub fn get<'v>(&self, value: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        let mut cur = value;
        for part in &self.0 {
            cur = match cur {
                serde_json::Value::Object(map) => map.get(part)?,
                serde_json::Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str("$") } else { f.write_str(&self.0.join(".")) }
    }
}

/// Where the records are in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Records {
    /// A list: the array at this path.
    Items(FieldPath),
    /// One record: the object at this path.
    Record(FieldPath),
}

#[derive(Debug, Clone)]
pub struct Output {
    pub records: Records,
    pub id: Option<FieldPath>,
    pub updated: Option<FieldPath>,
    /// Lists only: the inputs that make the API list records newest first.
    pub newest_first: Option<NewestFirst>,
}

/// How a list is asked for newest first (by creation), and what spoils that order for a
/// feed of new items. Checked against the operation's inputs by `compile`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewestFirst {
    /// Input name and value pairs that set the order (`order: added_desc`).
    pub set: Vec<(String, serde_json::Value)>,
    /// Filters on fields a record can gain later: with one set, the feed is read whole.
    pub read_whole_with: Vec<String>,
}

impl NewestFirst {
    /// Fills in the order inputs the caller left out, so the order is explicit on the wire.
    pub fn fill(&self, inputs: &mut serde_json::Map<String, serde_json::Value>) {
        for (name, value) in &self.set {
            inputs.entry(name.clone()).or_insert_with(|| value.clone());
        }
    }

    /// Whether a request with these inputs lists new records first and nothing else: every
    /// order input as set (a number sent as text counts), no spoiling filter given.
    pub fn holds(&self, inputs: &serde_json::Map<String, serde_json::Value>) -> bool {
        let same =
            |a: &serde_json::Value, b: &serde_json::Value| a == b || (a.as_str().is_some() && a.as_str() == b.as_str());
        self.set.iter().all(|(name, value)| inputs.get(name).is_some_and(|v| same(v, value)))
            && !self.read_whole_with.iter().any(|name| inputs.get(name).is_some_and(|v| !v.is_null()))
    }
}

impl Output {
    /// The records of a response body: every item of a list, or the one record.
    pub fn records<'v>(&self, body: &'v serde_json::Value) -> Vec<&'v serde_json::Value> {
        match &self.records {
            Records::Items(path) => match path.get(body) {
                Some(serde_json::Value::Array(items)) => items.iter().collect(),
                _ => Vec::new(),
            },
            Records::Record(path) => path.get(body).into_iter().collect(),
        }
    }
}

/// Where a pagination parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamPlace {
    Query,
    Body,
}

/// How the next page is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pagination {
    None,
    Offset {
        limit: String,
        offset: String,
        page_size: u32,
        place: ParamPlace,
    },
    Page {
        page: String,
        size: String,
        page_size: u32,
        place: ParamPlace,
    },
    StartAfter {
        limit: String,
        page_size: u32,
    },
    Cursor {
        param: String,
        next: CursorSource,
        has_more: Option<FieldPath>,
        limit: Option<String>,
        page_size: u32,
        place: ParamPlace,
    },
    LinkHeader {
        size: String,
        page_size: u32,
    },
}

impl Pagination {
    pub fn style(&self) -> &'static str {
        match self {
            Pagination::None => "none",
            Pagination::Offset { .. } => "offset",
            Pagination::Page { .. } => "page",
            Pagination::StartAfter { .. } => "start_after",
            Pagination::Cursor { .. } => "cursor",
            Pagination::LinkHeader { .. } => "link_header",
        }
    }
}

/// Where a cursor's next value is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorSource {
    /// A path in the response body.
    Body(FieldPath),
    /// A path in the last record of the page.
    LastItem(FieldPath),
}

/// How a trigger tells new items from seen ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dedupe {
    /// An item fires once, when its id is first seen.
    Id,
    /// An item fires again whenever its updated time changes.
    IdUpdated,
    /// A single record fires whenever its content changes; on a list (whose records have an
    /// id), each record does.
    Content,
}

impl Dedupe {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "id" => Some(Dedupe::Id),
            "id_updated" => Some(Dedupe::IdUpdated),
            "content" => Some(Dedupe::Content),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dedupe::Id => "id",
            Dedupe::IdUpdated => "id_updated",
            Dedupe::Content => "content",
        }
    }
}

/// How a trigger's items arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerSource {
    /// ghlflow asks the API on a schedule.
    Poll,
    /// The API pushes each event to ghlflow's listener (an instant trigger).
    Webhook,
}

impl TriggerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerSource::Poll => "poll",
            TriggerSource::Webhook => "webhook",
        }
    }
}

/// What makes an operation an instant trigger: the event the API pushes, and the poll that
/// reconciles what a missed delivery lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The event's name as the API spells it (`ContactCreate`, `party/created`).
    pub event: String,
    /// A polling trigger of the same app listing the same records, checked to exist when the
    /// catalog compiles. None: nothing can be polled for these records.
    pub reconcile: Option<OperationKey>,
}

impl Webhook {
    /// The listener path the API delivers this app's events to (DESIGN, "Next surfaces"):
    /// one for every GHL event, one per subscription for Capsule.
    pub fn listener_path(app: &str) -> String {
        match app {
            "capsule" => "/hooks/capsule/{token}".to_owned(),
            other => format!("/hooks/{other}"),
        }
    }
}

/// Which failures are retried and how long to wait between attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: std::num::NonZeroU32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
}

/// One operation, ready for the HTTP layer and the recipe compiler.
#[derive(Debug, Clone)]
pub struct Operation {
    pub key: OperationKey,
    pub name: String,
    pub kind: Kind,
    pub description: String,
    pub deprecated: bool,
    /// Webhook triggers: the event and its reconciling poll. Such an operation is never
    /// sent: its `method` and `path` say where the API delivers it (a POST to the
    /// listener), it has no inputs, and `Catalog::operations` leaves it out.
    pub webhook: Option<Webhook>,
    pub method: Method,
    pub path: PathTemplate,
    pub version: Option<String>,
    pub scope: Option<Scope>,
    pub body: BodyEncoding,
    /// The catalog says `body: json` explicitly: a body (`{}` at least) is sent even where
    /// none would be by default (a DELETE without body inputs).
    pub body_declared: bool,
    pub response: ResponseKind,
    pub notes: Option<String>,
    pub inputs: Vec<Input>,
    pub output: Option<Output>,
    pub pagination: Pagination,
    pub dedupe: Option<Dedupe>,
    /// The input the poller fills with its cursor.
    pub since: Option<String>,
    /// Sending it twice does what sending it once does (see the spec's `repeat_safe`).
    pub repeat_safe: bool,
    pub retry: RetryPolicy,
    pub sample_input: serde_json::Map<String, serde_json::Value>,
    pub sample_output: serde_json::Value,
    /// The file the operation came from, for messages.
    pub source: String,
}

impl Operation {
    pub fn input(&self, name: &str) -> Option<&Input> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// How a trigger's items arrive; None for an action.
    pub fn trigger_source(&self) -> Option<TriggerSource> {
        match (self.kind, &self.webhook) {
            (Kind::Action, _) => None,
            (Kind::Trigger, None) => Some(TriggerSource::Poll),
            (Kind::Trigger, Some(_)) => Some(TriggerSource::Webhook),
        }
    }

    /// Whether it is an instant trigger (pushed by the API, never sent).
    pub fn is_webhook(&self) -> bool {
        self.webhook.is_some()
    }

    /// Whether running it changes data (its scope is a write scope, or it has no scope and
    /// is not a GET). A webhook trigger is never run, so it never writes.
    pub fn writes(&self) -> bool {
        if self.is_webhook() {
            return false;
        }
        match &self.scope {
            Some(scope) => scope.is_write(),
            None => self.method != Method::Get,
        }
    }

    /// The shape of a whole response body, from the sample.
    pub fn body_shape(&self) -> Shape {
        Shape::of(&self.sample_output)
    }

    /// The shape of one record (an item of a list, or the single record), from the sample.
    pub fn record_shape(&self) -> Shape {
        match &self.output {
            Some(output) => match output.records(&self.sample_output).first() {
                Some(first) => Shape::of(first),
                None => Shape::Any,
            },
            None => self.body_shape(),
        }
    }
}

/// How an app authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// GHL private integration token: a static bearer token.
    PrivateToken,
    /// OAuth2 with refresh tokens.
    OAuth2,
    /// A static bearer token (Capsule personal access token).
    Bearer,
}

impl AuthKind {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "private_token" => Some(AuthKind::PrivateToken),
            "oauth2" => Some(AuthKind::OAuth2),
            "bearer" => Some(AuthKind::Bearer),
            _ => None,
        }
    }
}

/// Which headers report an API's remaining budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitHeaders {
    /// `X-RateLimit-Max`, `-Remaining`, `-Interval-Milliseconds`, `-Daily-Remaining`.
    Ghl,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` (epoch seconds).
    Capsule,
}

/// What one request budget belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetOwner {
    /// A GHL location or company.
    Location,
    /// A Capsule user (one token).
    User,
}

#[derive(Debug, Clone)]
pub struct RateLimits {
    pub headers: RateLimitHeaders,
    pub per: BudgetOwner,
    pub limits: Vec<Rate>,
}

#[derive(Debug, Clone)]
pub struct OAuth2Endpoints {
    pub authorize_url: String,
    pub token_url: String,
    pub default_scopes: Vec<String>,
}

/// An app: its API's address, credentials, budget and defaults.
#[derive(Debug, Clone)]
pub struct App {
    pub id: String,
    pub name: String,
    pub base_url: String,
    pub auth: Vec<AuthKind>,
    pub oauth2: Option<OAuth2Endpoints>,
    pub rate_limits: RateLimits,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    pub page_bound: std::num::NonZeroU32,
    /// The largest response body read (see `limits::DEFAULT_MAX_RESPONSE_BYTES`).
    pub max_response_bytes: u64,
}

/// Every app and operation, indexed by key.
///
/// The operations sent over HTTP and the instant triggers (pushed by the API) are kept
/// apart: everything that iterates `operations()` (the sandbox's routes, the conformance
/// tests, the counts the README gives) may rely on a real method and path, and only what
/// asks for `instant_triggers()` or `all()` sees the rest. `get` finds either kind.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    apps: BTreeMap<String, Arc<App>>,
    operations: BTreeMap<String, Arc<Operation>>,
    webhooks: BTreeMap<String, Arc<Operation>>,
}

impl Catalog {
    /// Any operation by full key: one sent over HTTP, or an instant trigger.
    pub fn get(&self, key: &str) -> Option<&Arc<Operation>> {
        self.operations.get(key).or_else(|| self.webhooks.get(key))
    }

    /// The instant triggers (webhook operations), ordered by app, then category, then name.
    pub fn instant_triggers(&self) -> impl Iterator<Item = &Arc<Operation>> {
        self.webhooks.values()
    }

    /// The instant trigger of `app` for an event name as the API spells it.
    pub fn webhook_for(&self, app: &str, event: &str) -> Option<&Arc<Operation>> {
        self.webhooks.values().find(|op| op.key.app == app && op.webhook.as_ref().is_some_and(|w| w.event == event))
    }

    /// Every operation of both kinds, ordered by key.
    pub fn all(&self) -> Vec<&Arc<Operation>> {
        let mut all: Vec<&Arc<Operation>> = self.operations.values().chain(self.webhooks.values()).collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    pub fn app(&self, id: &str) -> Option<&Arc<App>> {
        self.apps.get(id)
    }

    pub fn apps(&self) -> impl Iterator<Item = &Arc<App>> {
        self.apps.values()
    }

    /// Every operation sent over HTTP (instant triggers left out), ordered by app, then
    /// category, then name.
    pub fn operations(&self) -> impl Iterator<Item = &Arc<Operation>> {
        self.operations.values()
    }

    /// The number of operations sent over HTTP.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty() && self.webhooks.is_empty()
    }

    /// The key closest to a mistyped one, for "did you mean" (either kind).
    pub fn suggest(&self, key: &str) -> Option<&str> {
        crate::diagnostic::did_you_mean(key, self.operations.keys().chain(self.webhooks.keys()).map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};

    fn inputs(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn order(catalog: &Catalog, key: &str) -> Option<NewestFirst> {
        catalog.get(key).unwrap().output.as_ref().and_then(|o| o.newest_first.clone())
    }

    #[test]
    fn a_feed_is_newest_first_only_with_its_order_and_without_spoiling_filters() {
        let catalog = load_embedded().unwrap();
        let deals = order(&catalog, "ghl.opportunities.search_opportunities").unwrap();
        let mut ask = inputs(json!({"limit": 100}));
        deals.fill(&mut ask);
        assert_eq!(ask["order"], "added_desc", "the order is sent, never left to a default");
        assert!(deals.holds(&ask));
        // Won deals: an old deal joins the list when it is won.
        let mut won = inputs(json!({"status": "won"}));
        deals.fill(&mut won);
        assert!(!deals.holds(&won));
        // The recipe's own order wins over the fill, and is not newest first.
        let mut oldest = inputs(json!({"order": "added_asc"}));
        deals.fill(&mut oldest);
        assert_eq!(oldest["order"], "added_asc");
        assert!(!deals.holds(&oldest));

        let users = order(&catalog, "ghl.users.search_users").unwrap();
        let mut ask = inputs(json!({"companyId": "c1"}));
        users.fill(&mut ask);
        assert_eq!((ask["sort"].clone(), ask["sortDirection"].clone()), (json!("dateAdded"), json!("desc")));
        assert!(users.holds(&ask));
        assert!(!users.holds(&inputs(json!({"sort": "dateAdded"}))), "ascending is not newest first");

        let contacts = order(&catalog, "ghl.contacts.search_contacts").unwrap();
        let mut ask = inputs(json!({"pageLimit": 100}));
        contacts.fill(&mut ask);
        assert_eq!(ask["sort"], json!([{"field": "dateAdded", "direction": "desc"}]));
        assert!(contacts.holds(&ask));
        ask.insert("filters".into(), json!([{"field": "tags", "operator": "contains", "value": "vip"}]));
        assert!(!contacts.holds(&ask), "a contact can gain a tag long after it was added");
    }

    #[test]
    fn only_feeds_with_a_documented_order_may_stop_early() {
        // Every other list trigger deduped by id is read whole: its order is undocumented
        // (locations' `order` names no field) or it has none.
        let catalog = load_embedded().unwrap();
        let mut ordered: Vec<String> = catalog
            .operations()
            .filter(|o| o.output.as_ref().is_some_and(|out| out.newest_first.is_some()))
            .map(|o| o.key.to_string())
            .collect();
        ordered.sort();
        assert_eq!(
            ordered,
            [
                "capsule.entries.entry_updated",
                "capsule.entries.party_entries",
                "ghl.contacts.search_contacts",
                "ghl.opportunities.search_opportunities",
                "ghl.users.search_users"
            ]
        );
        // Capsule's entries come newest first with nothing to send.
        let entries = order(&catalog, "capsule.entries.entry_updated").unwrap();
        assert!(entries.set.is_empty() && entries.holds(&Map::new()));
        let tasks = catalog.get("ghl.contacts.get_contact_tasks").unwrap();
        assert_eq!(tasks.dedupe, Some(Dedupe::Content), "tasks have no timestamps: edits show in their content");
        let search = catalog.get("ghl.contacts.search_contacts").unwrap();
        assert!(
            matches!(&search.pagination, Pagination::Cursor { param, place: ParamPlace::Body, .. } if param == "searchAfter"),
            "{:?}",
            search.pagination
        );
    }

    #[test]
    fn a_newest_first_naming_no_input_or_a_bad_value_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let app = "name: Fixture app\nbase_url: https://example.test\nauth: [private_token]\nrate_limit: { headers: ghl, per: location, limits: [100/10s] }\nretry: { max_attempts: 3, initial_backoff: 100ms, max_backoff: 1s }\ntimeout: 10s\npage_bound: 5\n";
        let ops = "operations:\n  - key: list_things\n    name: List Things\n    kind: trigger\n    description: Lists things.\n    method: GET\n    path: /things\n    inputs:\n      - { name: order, in: query, type: string, enum: [asc, desc], help: Order. }\n      - { name: tag, in: query, type: string, help: A tag. }\n    output:\n      items: things\n      id: id\n      newest_first: { input: ordr, value: desc, read_whole_with: [tags] }\n    dedupe: id\n    sample_output: { things: [] }\n  - key: more_things\n    name: More Things\n    kind: trigger\n    description: Lists things.\n    method: GET\n    path: /more\n    inputs:\n      - { name: order, in: query, type: string, enum: [asc, desc], help: Order. }\n    output:\n      items: things\n      id: id\n      newest_first: { input: order, value: newest }\n    dedupe: id\n    sample_output: { things: [] }\n";
        std::fs::write(dir.path().join("app.yaml"), app).unwrap();
        std::fs::write(dir.path().join("things.yaml"), ops).unwrap();
        let mut source = CatalogSource::default();
        source.add_file("fixture", &dir.path().join("app.yaml")).unwrap();
        source.add_file("fixture", &dir.path().join("things.yaml")).unwrap();
        let err = source.compile().unwrap_err().to_string();
        assert!(err.contains("`ordr` is not an input (did you mean `order`?)"), "{err}");
        assert!(err.contains("`tags` is not an input"), "{err}");
        assert!(err.contains("\"newest\" is not a valid value for input `order`"), "{err}");
        assert!(err.contains("things.yaml:"), "{err}");
    }
}
