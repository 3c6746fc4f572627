//! The catalog's YAML, mirrored exactly. These types are what `operations/**/*.yaml` may
//! say and nothing more (`deny_unknown_fields` everywhere); `compile` turns them into the
//! checked types of `catalog`. The runtime never sees a Spec. Doc comments here are the
//! reference for catalog authors.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One category file: `operations/<app>/<category>.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryFileSpec {
    /// The official OpenAPI file the category comes from (informative; used by the spec
    /// conformance test).
    #[serde(default)]
    pub spec: Option<String>,
    /// The operations of the category. Kept as raw YAML here so that each operation is
    /// checked on its own and every broken one is reported, not only the first.
    #[schemars(with = "Vec<OperationSpec>")]
    pub operations: Vec<serde_yaml::Value>,
}

/// One operation of the catalog.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OperationSpec {
    /// Snake_case name, unique in the app; the full key is `<app>.<category>.<key>`.
    pub key: String,
    /// The name people know it by.
    pub name: String,
    /// `trigger` (can be polled, and run as a step) or `action` (run as a step).
    pub kind: String,
    /// Triggers: how items arrive. `poll` (the default) asks the API on a schedule;
    /// `webhook` is an instant trigger: the API pushes each event to ghlflow's listener, so
    /// the operation has no method, path, inputs or pagination of its own.
    #[serde(default)]
    pub source: Option<String>,
    /// Webhook triggers: the event's name as the API spells it (`ContactCreate`,
    /// `party/created`).
    #[serde(default)]
    pub event: Option<String>,
    /// Webhook triggers: the full key of a polling trigger of the same app that lists the
    /// same records (`ghl.contacts.search_contacts`). A recipe on this event polls it slowly
    /// as a safety net, to catch what a missed delivery lost; without one it never polls.
    #[serde(default)]
    pub reconcile: Option<String>,
    /// What it does and when to use it.
    pub description: String,
    /// True when the API marks the endpoint deprecated.
    #[serde(default)]
    pub deprecated: bool,
    /// HTTP method: GET, POST, PUT, PATCH or DELETE (not for webhook triggers).
    #[serde(default)]
    pub method: Option<String>,
    /// The path below the app's base URL, byte-identical to the API's spec (not for webhook
    /// triggers).
    #[serde(default)]
    pub path: Option<String>,
    /// The `Version` header the endpoint requires (GHL).
    #[serde(default)]
    pub version: Option<String>,
    /// The OAuth scope the endpoint requires.
    #[serde(default)]
    pub scope: Option<String>,
    /// Body encoding: `json` (default), `form`, or `array` (the whole body is input `body`).
    #[serde(default)]
    pub body: Option<String>,
    /// Response kind: `json` (default), `text` or `binary`.
    #[serde(default)]
    pub response: Option<String>,
    /// Caveats a user must know: spec defects, values to check against the live API.
    #[serde(default)]
    pub notes: Option<String>,
    /// Every input the operation takes.
    #[serde(default)]
    pub inputs: Vec<InputSpec>,
    /// Where the records are in the response.
    #[serde(default)]
    pub output: Option<OutputSpec>,
    /// How to ask for the next page.
    #[serde(default)]
    pub pagination: Option<PaginationSpec>,
    /// Triggers: how new items are told apart from seen ones: `id`, `id_updated` or `content`.
    #[serde(default)]
    pub dedupe: Option<String>,
    /// Triggers: the input the poller fills with its cursor (a `since`-style filter).
    #[serde(default)]
    pub since: Option<String>,
    /// Writes only: whether sending it twice has the same effect as once (an upsert, adding
    /// a tag). Default: true for reads, PUT and DELETE, false for other writes (a POST that
    /// creates). After a crash between sending and recording, a step that is not safe to
    /// repeat and has no `find` is set aside as `unsure` instead of being sent again.
    #[serde(default)]
    pub repeat_safe: Option<bool>,
    /// Retry policy for this operation, overriding the app's.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Inputs that make a valid request.
    #[serde(default)]
    pub sample_input: BTreeMap<String, serde_json::Value>,
    /// A realistic response body; its shape is what templates may reference.
    #[serde(default)]
    pub sample_output: Option<serde_json::Value>,
}

/// One input of an operation.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The name as the API spells it.
    pub name: String,
    /// Where it goes: `path`, `query`, `body` or `header`.
    #[serde(rename = "in")]
    pub location: String,
    /// `string`, `integer`, `number`, `boolean`, `object`, `array` or `any`.
    #[serde(rename = "type")]
    pub ty: String,
    /// For arrays: the element type.
    #[serde(default)]
    pub items: Option<String>,
    /// The allowed values.
    #[serde(default, rename = "enum")]
    pub allowed: Option<Vec<serde_json::Value>>,
    /// Whether a request without it is invalid (path inputs always are).
    #[serde(default)]
    pub required: bool,
    /// What a recipe author needs to know: meaning, format, units, limits.
    pub help: String,
}

/// Where the records of a response are.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// List responses: dot path to the array of records (`$` for the body itself). A
    /// webhook whose body carries several records (Capsule's `payload`) names that array.
    #[serde(default)]
    pub items: Option<String>,
    /// Single-record responses: the wrapper key of the record (`$` for the body itself).
    #[serde(default)]
    pub record: Option<String>,
    /// The record's id field.
    #[serde(default)]
    pub id: Option<String>,
    /// The record's last-change timestamp field.
    #[serde(default)]
    pub updated: Option<String>,
    /// Lists only: how to have the API list its records newest first (by creation). A poll
    /// of new items (dedupe `id`, no `since`) may then stop at the first record it has seen;
    /// without this the feed is read whole, up to the page bound, because a new record can
    /// sit behind seen ones.
    #[serde(default)]
    pub newest_first: Option<NewestFirstSpec>,
}

/// The input value that makes a list come newest first, and the filters that spoil it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewestFirstSpec {
    /// The input that sets the order (`order`, `sort`, `sortDirection`...). Leave it and
    /// `value` out only where newest first is the API's documented and only order (Capsule's
    /// entries).
    #[serde(default)]
    pub input: Option<String>,
    /// Its value for newest first. The poller sends it whenever the recipe gives none, so the
    /// order never rests on an undocumented default.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    /// Other inputs that must hold given values for the order to hold (`sort: dateAdded`
    /// beside `sortDirection: desc`); also sent when the recipe gives none.
    #[serde(default)]
    pub with: BTreeMap<String, serde_json::Value>,
    /// Inputs that filter on something a record can gain after it was created (a status, a
    /// stage, a tag, a name): with any of them set an old record can join the feed behind
    /// seen ones, so the feed is read whole.
    #[serde(default)]
    pub read_whole_with: Vec<String>,
}

/// Pagination: `none`, or a map with a `style` and that style's fields.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PaginationSpec {
    /// `none`.
    Bare(String),
    /// A style with its parameters.
    Styled(PaginationStyleSpec),
}

/// A pagination style and its parameters.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "style", rename_all = "snake_case", deny_unknown_fields)]
pub enum PaginationStyleSpec {
    /// One request.
    None,
    /// `limit` and `offset` parameters; the offset grows by a page until a short page.
    Offset {
        /// The page-size parameter.
        limit: String,
        /// The offset parameter (`skip`, `offset`).
        offset: String,
        /// Records per page (the API's maximum).
        page_size: u32,
        /// Where the parameters go: `query` (default) or `body`.
        #[serde(default, rename = "in")]
        location: Option<String>,
    },
    /// A page number from 1 and a page size, until a short page.
    Page {
        /// The page-number parameter.
        page: String,
        /// The page-size parameter.
        size: String,
        /// Records per page.
        page_size: u32,
        /// Where the parameters go: `query` (default) or `body`.
        #[serde(default, rename = "in")]
        location: Option<String>,
    },
    /// GHL: `startAfter` and `startAfterId` together, read from the response's `meta`.
    StartAfter {
        /// The page-size parameter.
        limit: String,
        /// Records per page.
        page_size: u32,
    },
    /// One cursor parameter, read from the response.
    Cursor {
        /// The parameter that carries the cursor.
        param: String,
        /// Where the next cursor is: a dot path in the body, or `$last.<path>` in the last item.
        next: String,
        /// Optional dot path to a boolean that says whether more pages follow.
        #[serde(default)]
        has_more: Option<String>,
        /// The page-size parameter.
        #[serde(default)]
        limit: Option<String>,
        /// Records per page.
        page_size: u32,
        /// Where the parameters go: `query` (default) or `body` (GHL's contact search).
        #[serde(default, rename = "in")]
        location: Option<String>,
    },
    /// Follows `Link: <...>; rel="next"` (Capsule).
    LinkHeader {
        /// The page-size parameter.
        size: String,
        /// Records per page.
        page_size: u32,
    },
}

/// A retry policy: which failures are retried, how often and how long to wait.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the first retry, e.g. `500ms`.
    pub initial_backoff: String,
    /// Longest wait between attempts, e.g. `30s`.
    pub max_backoff: String,
    /// Growth of the wait per attempt.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
}

fn default_multiplier() -> f64 {
    2.0
}

/// `operations/<app>/app.yaml`: what an app needs besides its operations.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// The product's name.
    pub name: String,
    /// Where its API lives; a connection may override it (tests, sandboxes).
    pub base_url: String,
    /// The credential kinds a connection may use: `private_token`, `oauth2`, `bearer`.
    pub auth: Vec<String>,
    /// OAuth2 endpoints, for apps that support it.
    #[serde(default)]
    pub oauth2: Option<OAuth2Spec>,
    /// The API's request budget.
    pub rate_limit: RateLimitSpec,
    /// The default retry policy of every operation of the app.
    pub retry: RetrySpec,
    /// How long one request may take, e.g. `30s`.
    pub timeout: String,
    /// The most pages one poll or `--all-pages` call reads before it stops.
    pub page_bound: u32,
    /// The largest response body read, in bytes (default 33554432, 32 MiB); a larger one
    /// fails the request with a clear error instead of filling memory.
    #[serde(default)]
    pub max_response_bytes: Option<u64>,
}

/// OAuth2 endpoints of an app.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Spec {
    /// Where a user grants access (the browser goes there).
    pub authorize_url: String,
    /// Where codes and refresh tokens are exchanged.
    pub token_url: String,
    /// Scopes asked for when none are configured.
    #[serde(default)]
    pub default_scopes: Vec<String>,
}

/// An app's request budget.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Which response headers report the remaining budget: `ghl` or `capsule`.
    pub headers: String,
    /// What one budget belongs to: `location` (or company) for GHL, `user` for Capsule.
    pub per: String,
    /// The limits, as `count/interval`: `100/10s`, `200000/1d`, `4000/1h`.
    pub limits: Vec<String>,
}
