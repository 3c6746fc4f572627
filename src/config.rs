//! `ghlflow.yaml`: the user's connections and where state lives.
//!
//! This module owns reading that file: `${VAR}` interpolation from the environment (every
//! missing variable named at once, each at its line), the Spec types that mirror the file,
//! and the checked `Config` the rest of the program uses. Values that came from secrets are
//! wrapped in `Secret`, which never prints itself, and are registered with a `Redactor` that
//! scrubs them from any text before it is shown or stored.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::{App, AuthKind, Catalog};
use crate::diagnostic::{Diagnostics, Position, Segment, hint, path_to_string};

/// A value that must never be shown: tokens, client secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that sends it (an Authorization header, a token
    /// request). Never format it into a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Scrubs known secret values out of text (API messages, recorded inputs, logs).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Arc<std::sync::RwLock<Vec<String>>>,
}

impl Redactor {
    /// Remembers a secret; values shorter than 4 characters are not worth matching.
    pub fn add(&self, secret: &str) {
        if secret.len() < 4 {
            return;
        }
        // As written, and as a server may echo it inside JSON text: escaped (`\"`, `\\`,
        // `\uXXXX`), and with `/` escaped as `\/`.
        let escaped = serde_json::to_string(secret).unwrap_or_default();
        let escaped = escaped.get(1..escaped.len().saturating_sub(1)).unwrap_or_default().to_owned();
        let slashes = escaped.replace('/', "\\/");
        if let Ok(mut list) = self.secrets.write() {
            for form in [secret.to_owned(), escaped, slashes] {
                if form.len() >= 4 && !list.contains(&form) {
                    list.push(form);
                }
            }
            // Longest first, so a secret that contains another is replaced whole.
            list.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let Ok(list) = self.secrets.read() else { return text.to_owned() };
        let mut out = text.to_owned();
        for s in list.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "<redacted>");
            }
        }
        out
    }

    /// Redacts every string and object key inside a JSON value; returns it unchanged (no
    /// copy of the strings) when no secret is registered. Parsed JSON strings are already
    /// unescaped, so a secret a server echoed JSON-escaped is matched here too.
    pub fn redact_json_deep(&self, mut value: serde_json::Value) -> serde_json::Value {
        let Ok(list) = self.secrets.read() else { return value };
        if !list.is_empty() {
            redact_in_place(&list, &mut value);
        }
        value
    }

    /// Redacts every string inside a JSON value.
    pub fn redact_json(&self, value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value as V;
        match value {
            V::String(s) => V::String(self.redact(s)),
            V::Array(items) => V::Array(items.iter().map(|v| self.redact_json(v)).collect()),
            V::Object(map) => V::Object(map.iter().map(|(k, v)| (k.clone(), self.redact_json(v))).collect()),
            other => other.clone(),
        }
    }
}

/// Redacts `value` where it holds a secret, allocating only for what changes: most
/// responses hold none, and this runs on every one.
fn redact_in_place(secrets: &[String], value: &mut serde_json::Value) {
    use serde_json::Value as V;
    let holds = |text: &str| secrets.iter().any(|s| text.contains(s.as_str()));
    let scrub = |text: &str| {
        let mut out = text.to_owned();
        for s in secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "<redacted>");
            }
        }
        out
    };
    match value {
        V::String(s) if holds(s) => *s = scrub(s),
        V::Array(items) => items.iter_mut().for_each(|v| redact_in_place(secrets, v)),
        V::Object(map) => {
            if map.keys().any(|k| holds(k)) {
                *map = std::mem::take(map).into_iter().map(|(k, v)| (scrub(&k), v)).collect();
            }
            map.values_mut().for_each(|v| redact_in_place(secrets, v));
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// The file, mirrored.

/// The configuration's schema as a value, for `unknown_keys`.
static CONFIG_SCHEMA: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(|| serde_json::to_value(schemars::schema_for!(ConfigSpec)).unwrap_or_default());

/// `ghlflow.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// Named connections to the APIs; recipes refer to them by name.
    pub connections: BTreeMap<String, ConnectionSpec>,
    /// Where state lives: a folder for the embedded store (sled), relative to this file
    /// (default `.ghlflow/state`), or a PostgreSQL URL (`postgres://user:pass@host/db`,
    /// usually `${DATABASE_URL}`) for a database several workers share.
    #[serde(default)]
    pub state: Option<String>,
    /// How long run history is kept, e.g. `30d`. Default 30 days.
    #[serde(default)]
    pub retention: Option<String>,
    /// With several workers on one PostgreSQL state: how long a worker that stopped
    /// answering keeps its recipes and runs before another takes them over, e.g. `30s`
    /// (the default; 3 s to 10 min). Workers renew their leases three times per period.
    #[serde(default)]
    pub lease_ttl: Option<String>,
    /// Where `ghlflow run` listens for instant-trigger hooks and serves its endpoints:
    /// `HOST:PORT`. Default `127.0.0.1:8975` (this machine only).
    #[serde(default)]
    pub listen: Option<String>,
    /// The address the APIs reach the listener at (`https://hooks.example.com`), when it is
    /// not the listen address itself (a proxy or a tunnel in front).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Who may use the listener's page and endpoints; required for a bind that is not
    /// loopback. (Hooks are checked by their own signature or path token.)
    #[serde(default)]
    pub server: Option<ServerSpec>,
}

/// `server:` in ghlflow.yaml.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    pub auth: ServerAuthSpec,
}

/// How a request to the listener proves who it is.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerAuthSpec {
    /// `Authorization: Bearer <token>` (from `${VAR}`).
    Token { token: String },
    /// HTTP basic authentication (the password from `${VAR}`).
    Basic { username: String, password: String },
}

/// One connection: an app, its account and its credentials.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    /// The app: `ghl` or `capsule`.
    pub app: String,
    /// GHL: the sub-account (location) the connection acts on.
    #[serde(default)]
    pub location_id: Option<String>,
    /// GHL: the agency (company) id, for agency-level operations.
    #[serde(default)]
    pub company_id: Option<String>,
    /// The credentials.
    pub auth: AuthSpec,
    /// `read_write` (default) or `read_only`: a read-only connection refuses every operation
    /// whose scope is a write scope.
    #[serde(default)]
    pub access: Option<String>,
    /// Overrides the app's API address (tests, sandboxes).
    #[serde(default)]
    pub base_url: Option<String>,
    /// How many requests may be in flight on this connection at once. Default 4.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// GHL: the public keys that may sign this connection's webhook deliveries, each a PEM
    /// block or the base64 of a SubjectPublicKeyInfo, Ed25519 or RSA. Given, they replace the
    /// keys GHL publishes (a sandbox or a test signs with its own). Default: GHL's.
    #[serde(default)]
    pub webhook_public_keys: Option<Vec<String>>,
}

/// Credentials, by kind.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSpec {
    /// A GHL private integration token.
    PrivateToken {
        /// The token.
        token: String,
    },
    /// A static bearer token (Capsule personal access token).
    Bearer {
        /// The token.
        token: String,
    },
    /// OAuth2 with refresh tokens. `ghlflow connect NAME` obtains the first tokens.
    Oauth2 {
        /// The app's client id.
        client_id: String,
        /// The app's client secret.
        client_secret: String,
        /// A refresh token, if you have one; after a refresh the stored token wins.
        #[serde(default)]
        refresh_token: Option<String>,
        /// Overrides the app's token endpoint (tests, sandboxes).
        #[serde(default)]
        token_url: Option<String>,
        /// Overrides the app's authorization page.
        #[serde(default)]
        authorize_url: Option<String>,
        /// The local port `ghlflow connect` listens on for the redirect. Default 8976.
        #[serde(default)]
        redirect_port: Option<u16>,
        /// Scopes to ask for; default: the app's.
        #[serde(default)]
        scopes: Option<Vec<String>>,
    },
}

// ---------------------------------------------------------------------------------------
// The checked form.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// Credentials, checked.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A static token sent as `Authorization: Bearer`.
    Static(Secret),
    OAuth2(OAuth2Settings),
}

#[derive(Debug, Clone)]
pub struct OAuth2Settings {
    pub client_id: String,
    pub client_secret: Secret,
    pub refresh_token: Option<Secret>,
    pub token_url: String,
    pub authorize_url: String,
    pub redirect_port: u16,
    pub scopes: Vec<String>,
}

/// One connection, ready for the HTTP layer.
#[derive(Debug, Clone)]
pub struct Connection {
    pub name: String,
    pub app: Arc<App>,
    pub location_id: Option<String>,
    pub company_id: Option<String>,
    pub auth: Auth,
    pub access: Access,
    pub base_url: String,
    pub concurrency: NonZeroU32,
    /// The keys a pushed delivery for this connection must be signed with: the configured
    /// `webhook_public_keys`, or GHL's published ones. Capsule signs nothing: empty for it.
    pub webhook_keys: Arc<crate::webhook::GhlKeys>,
}

impl Connection {
    /// The default value of an input named `locationId`, `location_id` or `companyId`.
    pub fn default_for(&self, input: &str) -> Option<&str> {
        match input {
            "locationId" | "location_id" => self.location_id.as_deref(),
            "companyId" => self.company_id.as_deref(),
            _ => None,
        }
    }
}

/// The whole configuration, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    pub connections: BTreeMap<String, Arc<Connection>>,
    /// The sled directory, resolved against the file's folder (with `state: postgres://...`,
    /// the folder beside the file that would hold it, unused).
    pub state_dir: PathBuf,
    /// Where the state store is: the sled folder or a PostgreSQL database.
    pub state: StateLocation,
    /// The recipes folder beside the file.
    pub recipes_dir: PathBuf,
    pub retention: Duration,
    /// How long a worker's leases last without a heartbeat (`lease_ttl`).
    pub lease_ttl: Duration,
    pub redactor: Redactor,
    /// The listener's bind address and what it requires.
    pub listener: Listener,
}

/// Where the state store is.
#[derive(Debug, Clone)]
pub enum StateLocation {
    /// The embedded store (sled) in this folder.
    Folder(PathBuf),
    /// A PostgreSQL database (the URL may carry a password: it is a secret).
    Postgres(Secret),
}

impl StateLocation {
    /// The location `text` names (`state:` in ghlflow.yaml), relative to `base_dir`. A URL
    /// must parse, and its password is added to `redactor`.
    pub fn parse(text: Option<&str>, base_dir: &Path, redactor: &Redactor) -> Result<StateLocation, String> {
        let Some(text) = text.map(str::trim) else {
            return Ok(StateLocation::Folder(base_dir.join(".ghlflow/state")));
        };
        let scheme = text.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => {
                let url = url::Url::parse(text).map_err(|e| {
                    format!("not a PostgreSQL URL ({e}); write postgres://USER:PASSWORD@HOST:PORT/DATABASE")
                })?;
                if let Some(password) = url.password() {
                    redactor.add(password);
                    if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
                        redactor.add(&decoded);
                    }
                }
                Ok(StateLocation::Postgres(Secret::new(text)))
            }
            Some(other) => {
                Err(format!("`{other}://` is not a state store; write a folder (sled) or a postgres:// URL"))
            }
            None if text.is_empty() => Err("empty; write a folder (sled) or a postgres:// URL".to_owned()),
            None => Ok(StateLocation::Folder(base_dir.join(text))),
        }
    }

    /// A sled folder that does not exist yet (a dry run then plans against a scratch store
    /// rather than creating it).
    pub fn is_new_folder(&self) -> bool {
        matches!(self, StateLocation::Folder(dir) if !dir.exists())
    }

    /// What to call it in messages, without any password.
    pub fn describe(&self) -> String {
        match self {
            StateLocation::Folder(dir) => dir.display().to_string(),
            StateLocation::Postgres(url) => match url::Url::parse(url.expose()) {
                Ok(mut u) => {
                    let _ = u.set_password(None);
                    u.to_string()
                }
                Err(_) => "a PostgreSQL database".to_owned(),
            },
        }
    }
}

/// Where the listener binds, the address the APIs reach it at, and its credentials.
#[derive(Debug, Clone)]
pub struct Listener {
    pub bind: std::net::SocketAddr,
    /// With no trailing slash: hook paths are appended (`/hooks/ghl`).
    pub public_url: url::Url,
    /// Required unless `bind` is loopback.
    pub auth: Option<ServerAuth>,
    /// The file asks for the listener (`listen:`, `public_url:` or `server:`): not being able
    /// to bind is then an error, not a warning.
    pub asked_for: bool,
}

/// `server.auth`, its secrets wrapped.
#[derive(Debug, Clone)]
pub enum ServerAuth {
    Token(Secret),
    Basic { username: String, password: Secret },
}

/// The listener's address unless `listen:` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8975";

impl Config {
    /// Reads and checks `path`, taking `${VAR}` values from `env`.
    pub fn load(path: &Path, catalog: &Catalog, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Diagnostics> {
        let display = path.display().to_string();
        let text = crate::fsread::read_text(path).map_err(|e| {
            let mut d = Diagnostics::default();
            d.push(&display, e.position, format!("cannot read the configuration: {}", e.message));
            d
        })?;
        Self::parse(&text, path, catalog, env)
    }

    /// Checks `text` as if read from `path`.
    pub fn parse(
        text: &str,
        path: &Path,
        catalog: &Catalog,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Diagnostics> {
        // Every value taken from the environment, so that no message shows one: any of them
        // may be a secret, whatever field it landed in.
        let taken = std::cell::RefCell::new(Vec::new());
        let recording_env = |name: &str| {
            let value = env(name);
            if let Some(v) = &value {
                taken.borrow_mut().push((name.to_owned(), v.clone()));
            }
            value
        };
        Self::parse_checked(text, path, catalog, &recording_env).map_err(|d| hide_values(d, &taken.borrow()))
    }

    fn parse_checked(
        text: &str,
        path: &Path,
        catalog: &Catalog,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Diagnostics> {
        let display = path.display().to_string();
        let mut diags = Diagnostics::default();
        let crate::yaml::Document { index, mut value, .. } = crate::yaml::parse(&display, text)?;

        if value.is_null() {
            diags.push(
                &display,
                Position { line: 1, col: 1 },
                "the configuration is empty; it needs at least `connections:` (see the README)",
            );
            return Err(diags);
        }
        // ${VAR}: every string scalar, every missing variable reported.
        let redactor = Redactor::default();
        let mut path_stack = Vec::new();
        interpolate(&mut value, &mut path_stack, env, &mut |p, name| {
            diags.push(
                &display,
                index.locate(p),
                format!("{}: environment variable `{name}` is not set", path_to_string(p)),
            );
        });
        diags.clone().into_result()?;

        // Every unknown key is reported and set aside, so the rest of the file is still checked.
        crate::yaml::strip_unknown(&mut value, &CONFIG_SCHEMA, &display, &index, &mut diags);
        let Some(spec) = crate::yaml::deserialize::<ConfigSpec>(value, &display, &index, &[], &mut diags) else {
            return Err(diags);
        };

        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut connections = BTreeMap::new();
        for (name, c) in &spec.connections {
            let at = |field: &str| {
                let p = format!("connections.{name}{}{field}", if field.is_empty() { "" } else { "." });
                (index.locate_str(&p), p)
            };
            let mut problem = |field: &str, msg: String| {
                let (pos, p) = at(field);
                diags.push(&display, pos, format!("{p}: {msg}"));
            };
            let Some(app) = catalog.app(&c.app) else {
                let apps: Vec<&str> = catalog.apps().map(|a| a.id.as_str()).collect();
                problem(
                    "app",
                    format!("unknown app `{}`{}; apps: {}", c.app, hint(&c.app, apps.iter().copied()), apps.join(", ")),
                );
                continue;
            };
            let access = match c.access.as_deref() {
                None | Some("read_write") => Access::ReadWrite,
                Some("read_only") => Access::ReadOnly,
                Some(other) => {
                    problem("access", format!("unknown access `{other}`; expected read_write or read_only"));
                    continue;
                }
            };
            let auth = match &c.auth {
                AuthSpec::PrivateToken { token } | AuthSpec::Bearer { token } => {
                    let kind = if matches!(c.auth, AuthSpec::PrivateToken { .. }) {
                        AuthKind::PrivateToken
                    } else {
                        AuthKind::Bearer
                    };
                    if !app.auth.contains(&kind) {
                        problem("auth.type", format!("app `{}` does not take this kind of credential", app.id));
                    }
                    if token.trim().is_empty() {
                        problem("auth.token", "the token is empty".into());
                    }
                    // What is sent is the trimmed token, so that is what must be redacted (a
                    // `${VAR}` read from a file often ends in a newline).
                    redactor.add(token.trim());
                    Auth::Static(Secret::new(token.trim()))
                }
                AuthSpec::Oauth2 {
                    client_id,
                    client_secret,
                    refresh_token,
                    token_url,
                    authorize_url,
                    redirect_port,
                    scopes,
                } => {
                    let Some(endpoints) = app.oauth2.as_ref().filter(|_| app.auth.contains(&AuthKind::OAuth2)) else {
                        problem("auth.type", format!("app `{}` does not support OAuth2", app.id));
                        continue;
                    };
                    redactor.add(client_secret);
                    if let Some(r) = refresh_token {
                        redactor.add(r);
                    }
                    Auth::OAuth2(OAuth2Settings {
                        client_id: client_id.clone(),
                        client_secret: Secret::new(client_secret.clone()),
                        refresh_token: refresh_token.clone().filter(|r| !r.is_empty()).map(Secret::new),
                        token_url: token_url.clone().unwrap_or_else(|| endpoints.token_url.clone()),
                        authorize_url: authorize_url.clone().unwrap_or_else(|| endpoints.authorize_url.clone()),
                        redirect_port: redirect_port.unwrap_or(8976),
                        scopes: scopes.clone().unwrap_or_else(|| endpoints.default_scopes.clone()),
                    })
                }
            };
            let base_url = c.base_url.clone().unwrap_or_else(|| app.base_url.clone());
            // Only http(s) with a host: anything else (ftp://, file://) would fail at every call.
            if url::Url::parse(&base_url)
                .map(|u| u.host().is_none() || !matches!(u.scheme(), "http" | "https"))
                .unwrap_or(true)
            {
                problem("base_url", format!("`{base_url}` is not an http(s) URL"));
                continue;
            }
            let Some(concurrency) = NonZeroU32::new(c.concurrency.unwrap_or(4)) else {
                problem("concurrency", "must be at least 1".into());
                continue;
            };
            let webhook_keys = match (&c.webhook_public_keys, app.id.as_str()) {
                (None, "ghl") => crate::webhook::GhlKeys::published(),
                (None, _) => crate::webhook::GhlKeys::from_keys([]),
                (Some(_), id) if id != "ghl" => {
                    problem(
                        "webhook_public_keys",
                        format!("app `{id}` signs no webhooks; only a GHL connection takes keys"),
                    );
                    continue;
                }
                (Some(list), _) if list.is_empty() => {
                    problem(
                        "webhook_public_keys",
                        "an empty list would refuse every delivery; leave it out for GHL's keys".into(),
                    );
                    continue;
                }
                (Some(list), _) => {
                    let mut keys = Vec::new();
                    for (i, text) in list.iter().enumerate() {
                        match crate::webhook::PublicKey::parse(text) {
                            Ok(key) => keys.push(key),
                            Err(e) => problem(&format!("webhook_public_keys[{i}]"), e),
                        }
                    }
                    if keys.len() != list.len() {
                        continue;
                    }
                    crate::webhook::GhlKeys::from_keys(keys)
                }
            };
            connections.insert(
                name.clone(),
                Arc::new(Connection {
                    name: name.clone(),
                    app: app.clone(),
                    location_id: c.location_id.clone().filter(|s| !s.is_empty()),
                    company_id: c.company_id.clone().filter(|s| !s.is_empty()),
                    auth,
                    access,
                    base_url: base_url.trim_end_matches('/').to_owned(),
                    concurrency,
                    webhook_keys: Arc::new(webhook_keys),
                }),
            );
        }
        let retention = match spec.retention.as_deref().map(crate::catalog::parse_duration) {
            None => Duration::from_secs(30 * 86_400),
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                diags.push(&display, index.locate_str("retention"), format!("retention: {e}"));
                Duration::ZERO
            }
        };
        let lease_ttl = match spec.lease_ttl.as_deref().map(crate::catalog::parse_duration) {
            None => Duration::from_secs(30),
            Some(Ok(d)) if (Duration::from_secs(3)..=Duration::from_secs(600)).contains(&d) => d,
            Some(Ok(d)) => {
                let problem = format!("lease_ttl: {} is outside 3s to 10m", humantime::format_duration(d));
                diags.push(&display, index.locate_str("lease_ttl"), problem);
                Duration::ZERO
            }
            Some(Err(e)) => {
                diags.push(&display, index.locate_str("lease_ttl"), format!("lease_ttl: {e}"));
                Duration::ZERO
            }
        };
        let listener = listener(&spec, &redactor, &mut |field: &str, message: String| {
            diags.push(&display, index.locate_str(field), format!("{field}: {message}"))
        });
        let state = StateLocation::parse(spec.state.as_deref(), &base_dir, &redactor).unwrap_or_else(|e| {
            diags.push(&display, index.locate_str("state"), format!("state: {e}"));
            StateLocation::Folder(base_dir.join(".ghlflow/state"))
        });
        let state_dir = match &state {
            StateLocation::Folder(dir) => dir.clone(),
            StateLocation::Postgres(_) => base_dir.join(".ghlflow/state"),
        };
        diags.into_result()?;
        Ok(Config {
            listener,
            path: path.to_path_buf(),
            connections,
            state,
            state_dir,
            recipes_dir: base_dir.join("recipes"),
            retention,
            lease_ttl,
            redactor,
        })
    }

    /// The connection called `name`, or an error that lists the others.
    pub fn connection(&self, name: &str) -> Result<&Arc<Connection>, String> {
        self.connections.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.connections.keys().map(String::as_str).collect();
            format!(
                "no connection named `{name}` in {}{}; connections: {}",
                self.path.display(),
                hint(name, names.iter().copied()),
                if names.is_empty() { "none".into() } else { names.join(", ") }
            )
        })
    }
}

/// `diags` with every value taken from the environment replaced by where it came from.
fn hide_values(diags: Diagnostics, taken: &[(String, String)]) -> Diagnostics {
    let mut taken: Vec<&(String, String)> = taken.iter().filter(|(_, v)| v.trim().len() >= 4).collect();
    // Longest first, so a value that contains another is replaced whole.
    taken.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    let mut out = Diagnostics::default();
    for d in diags.iter() {
        let mut message = d.message.clone();
        for (name, value) in &taken {
            // As written, trimmed, and escaped the way serde and Debug quote strings.
            let debug = format!("{value:?}");
            let debug = debug.get(1..debug.len().saturating_sub(1)).unwrap_or_default().to_owned();
            let json = serde_json::to_string(value).unwrap_or_default();
            let json = json.get(1..json.len().saturating_sub(1)).unwrap_or_default().to_owned();
            for v in [value.as_str(), value.trim(), debug.as_str(), json.as_str()] {
                if v.trim().len() >= 4 && message.contains(v) {
                    message = message.replace(v, &format!("<value of ${{{name}}}>"));
                }
            }
        }
        out.push(&d.file, d.position, message);
    }
    out
}

/// Replaces `${VAR}` in every string scalar; `$${` stays a literal `${`.
fn interpolate(
    value: &mut serde_yaml::Value,
    path: &mut Vec<Segment>,
    env: &dyn Fn(&str) -> Option<String>,
    missing: &mut dyn FnMut(&[Segment], &str),
) {
    match value {
        serde_yaml::Value::String(s) if s.contains("${") => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                if rest[..start].ends_with('$') {
                    out.push_str(&rest[..start - 1]);
                    out.push_str("${");
                    rest = &rest[start + 2..];
                    continue;
                }
                out.push_str(&rest[..start]);
                let Some(end) = rest[start..].find('}') else {
                    out.push_str(&rest[start..]);
                    rest = "";
                    break;
                };
                let name = &rest[start + 2..start + end];
                match env(name) {
                    Some(v) => out.push_str(&v),
                    None => missing(path, name),
                }
                rest = &rest[start + end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Segment::Index(i));
                interpolate(item, path, env, missing);
                path.pop();
            }
        }
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                path.push(Segment::Key(k.as_str().unwrap_or_default().to_owned()));
                interpolate(v, path, env, missing);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The process environment, for `Config::load`.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        crate::catalog::load_embedded().unwrap()
    }

    const FILE: &str = "\
connections:
  ghl:
    app: ghl
    location_id: ${GHL_LOCATION_ID}
    auth: { type: private_token, token: '${GHL_TOKEN}' }
  capsule:
    app: capsule
    auth: { type: bearer, token: '${CAPSULE_TOKEN}' }
    access: read_only
";

    #[test]
    fn interpolates_and_resolves_paths_against_the_file() {
        let env = |n: &str| Some(format!("value-of-{n}"));
        let config = Config::parse(FILE, Path::new("/srv/flows/ghlflow.yaml"), &catalog(), &env).unwrap();
        let ghl = config.connection("ghl").unwrap();
        assert_eq!(ghl.location_id.as_deref(), Some("value-of-GHL_LOCATION_ID"));
        assert_eq!(ghl.base_url, "https://services.leadconnectorhq.com");
        assert_eq!(config.state_dir, PathBuf::from("/srv/flows/.ghlflow/state"));
        assert_eq!(config.connection("capsule").unwrap().access, Access::ReadOnly);
        assert_eq!(config.redactor.redact("x value-of-GHL_TOKEN y"), "x <redacted> y");
        assert!(!format!("{:?}", ghl.auth).contains("value-of-GHL_TOKEN"));
    }

    #[test]
    fn names_every_missing_variable_at_its_line() {
        let err = Config::parse(FILE, Path::new("ghlflow.yaml"), &catalog(), &|_| None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(
                "ghlflow.yaml:4:5: connections.ghl.location_id: environment variable `GHL_LOCATION_ID` is not set"
            ),
            "{text}"
        );
        assert!(text.contains("`GHL_TOKEN`"), "{text}");
        assert!(text.contains("`CAPSULE_TOKEN`"), "{text}");
        assert_eq!(err.len(), 3);
    }

    #[test]
    fn rejects_unknown_apps_and_fields() {
        let text = "connections:\n  x:\n    app: ghll\n    auth: { type: private_token, token: t }\n";
        let err = Config::parse(text, Path::new("g.yaml"), &catalog(), &|_| None).unwrap_err().to_string();
        assert!(err.contains("g.yaml:3:5: connections.x.app: unknown app `ghll` (did you mean `ghl`?)"), "{err}");
        let text = "connections:\n  x:\n    app: ghl\n    tokn: 1\n    auth: { type: private_token, token: t }\n";
        let err = Config::parse(text, Path::new("g.yaml"), &catalog(), &|_| None).unwrap_err().to_string();
        assert!(err.contains("g.yaml:4:5: connections.x.tokn: unknown field `tokn`"), "{err}");
    }

    #[test]
    fn webhook_public_keys_replace_the_published_ones_and_a_bad_one_is_placed() {
        let none = |_: &str| None;
        let config = Config::parse(FILE, Path::new("g.yaml"), &catalog(), &|n: &str| Some(n.to_owned())).unwrap();
        assert_eq!(config.connection("ghl").unwrap().webhook_keys.counts(), (1, 1), "GHL's own keys by default");
        assert_eq!(config.connection("capsule").unwrap().webhook_keys.counts(), (0, 0), "Capsule signs nothing");

        let pem = crate::webhook::verify::GHL_RSA_PUBLIC_KEY_PEM.trim().replace('\n', "\n        ");
        let text = format!(
            "connections:\n  ghl:\n    app: ghl\n    auth: {{ type: private_token, token: t }}\n    webhook_public_keys:\n      - MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n      - |\n        {pem}\n"
        );
        let config = Config::parse(&text, Path::new("g.yaml"), &catalog(), &none).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(config.connection("ghl").unwrap().webhook_keys.counts(), (1, 1));

        let text = "connections:\n  ghl:\n    app: ghl\n    auth: { type: private_token, token: t }\n    webhook_public_keys:\n      - MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n      - not-a-key\n";
        let err = Config::parse(text, Path::new("g.yaml"), &catalog(), &none).unwrap_err().to_string();
        assert!(err.contains("g.yaml:7:9: connections.ghl.webhook_public_keys[1]: neither PEM nor base64"), "{err}");
        let text = "connections:\n  c:\n    app: capsule\n    auth: { type: bearer, token: t }\n    webhook_public_keys: [MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=]\n";
        let err = Config::parse(text, Path::new("g.yaml"), &catalog(), &none).unwrap_err().to_string();
        assert!(
            err.contains("g.yaml:5:5: connections.c.webhook_public_keys: app `capsule` signs no webhooks"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod listener_tests {
    use super::*;

    fn parse(extra: &str) -> Result<Config, String> {
        let text = format!("connections:\n  c: {{ app: capsule, auth: {{ type: bearer, token: t-123456 }} }}\n{extra}");
        let env = |_: &str| Some("listener-secret-42".to_owned());
        let catalog = crate::catalog::load_embedded().unwrap();
        Config::parse(&text, Path::new("g.yaml"), &catalog, &env).map_err(|d| d.to_string())
    }

    #[test]
    fn the_listener_defaults_to_this_machine_only() {
        let config = parse("").unwrap();
        assert_eq!(config.listener.bind.to_string(), DEFAULT_LISTEN);
        assert!(config.listener.bind.ip().is_loopback());
        assert_eq!(config.listener.public_url.as_str(), "http://127.0.0.1:8975/");
        assert!(config.listener.auth.is_none());
    }

    #[test]
    fn a_bind_other_machines_reach_needs_credentials() {
        let err = parse("listen: 0.0.0.0:9000\n").unwrap_err();
        assert!(err.starts_with("g.yaml:3:1: listen:"), "{err}");
        assert!(err.contains("`server: { auth: ... }` is required"), "{err}");
        let config =
            parse("listen: 0.0.0.0:9000\nserver: { auth: { type: token, token: '${PAGE_TOKEN}' } }\n").unwrap();
        assert!(matches!(config.listener.auth, Some(ServerAuth::Token(_))));
        assert_eq!(config.redactor.redact("Bearer listener-secret-42"), "Bearer <redacted>");
        assert!(!format!("{:?}", config.listener).contains("listener-secret-42"));
    }

    #[test]
    fn bad_addresses_are_named_at_their_line() {
        let err = parse("listen: localhost\n").unwrap_err();
        assert!(err.contains("g.yaml:3:1: listen: `localhost` is not an address and port"), "{err}");
        let err = parse("public_url: ftp://example.com/x\n").unwrap_err();
        assert!(err.contains("g.yaml:3:1: public_url: `ftp://example.com/x` must be an http(s) address"), "{err}");
        let config = parse("public_url: https://hooks.example.com/ghlflow\n").unwrap();
        assert_eq!(config.listener.public_url.as_str(), "https://hooks.example.com/ghlflow");
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;

    fn parse(text: &str) -> String {
        let env = |_: &str| Some("SECRET_abcdef123".to_owned());
        let catalog = crate::catalog::load_embedded().unwrap();
        Config::parse(text, Path::new("g.yaml"), &catalog, &env).err().map(|d| d.to_string()).unwrap_or_default()
    }

    #[test]
    fn values_from_the_environment_are_never_printed() {
        let err = parse(
            "connections:\n  x:\n    app: ghl\n    auth: { type: private_token, token: t }\n    access: '${GHL_TOKEN}'\n",
        );
        assert!(err.contains("unknown access `<value of ${GHL_TOKEN}>`"), "{err}");
        assert!(!err.contains("SECRET_abcdef123"), "{err}");
        let err = parse(
            "connections:\n  x:\n    app: ghl\n    auth: { type: private_token, token: t }\n    concurrency: '${GHL_TOKEN}'\n",
        );
        assert!(err.contains("<value of ${GHL_TOKEN}>") && !err.contains("SECRET"), "{err}");
        let err = parse("connections:\n  x:\n    app: '${APP}'\n    auth: { type: private_token, token: t }\n");
        assert!(err.contains("unknown app `<value of ${APP}>`") && !err.contains("SECRET"), "{err}");
    }

    #[test]
    fn unquoted_variables_in_a_flow_mapping_get_a_hint() {
        let err = parse("connections:\n  ghl: { app: ghl, auth: { type: private_token, token: ${GHL_TOKEN} } }\n");
        assert!(err.contains("g.yaml:2:"), "{err}");
        assert!(err.contains("must be quoted: `token: '${GHL_TOKEN}'`"), "{err}");
    }

    #[test]
    fn an_empty_file_and_a_non_http_base_url_are_explained() {
        for empty in ["", "# nothing yet\n"] {
            let err = parse(empty);
            assert!(err.contains("g.yaml:1:1: the configuration is empty; it needs at least `connections:`"), "{err}");
        }
        let err = parse(
            "connections:\n  x:\n    app: ghl\n    base_url: ftp://example.com\n    auth: { type: private_token, token: t }\n",
        );
        assert!(err.contains("g.yaml:4:5: connections.x.base_url: `ftp://example.com` is not an http(s) URL"), "{err}");
        let err = parse("{}\n");
        assert!(err.contains("g.yaml:1:1: missing field `connections`"), "{err}");
    }
}

#[cfg(test)]
mod redactor_tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_plain_json_escaped_and_in_keys() {
        let r = Redactor::default();
        r.add("tok/en\"1234");
        assert_eq!(r.redact("a tok/en\"1234 b"), "a <redacted> b");
        assert_eq!(r.redact(r#"{"x":"tok/en\"1234"}"#), r#"{"x":"<redacted>"}"#);
        assert_eq!(r.redact(r#"{"x":"tok\/en\"1234"}"#), r#"{"x":"<redacted>"}"#);
        let v = r.redact_json_deep(serde_json::json!({"tok/en\"1234": ["Bearer tok/en\"1234"]}));
        assert_eq!(v, serde_json::json!({"<redacted>": ["Bearer <redacted>"]}));
    }
}

/// Checks `listen:`, `public_url:` and `server:`. Problems go to `problem` (field, message);
/// the value returned then stands in only so the rest of the file is still checked.
fn listener(spec: &ConfigSpec, redactor: &Redactor, problem: &mut dyn FnMut(&str, String)) -> Listener {
    let text = spec.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let bind = match text.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            problem("listen", format!("`{text}` is not an address and port such as `127.0.0.1:8975` or `[::]:8975`"));
            DEFAULT_LISTEN.parse().unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 8975)))
        }
    };
    let fallback = || url::Url::parse(&format!("http://{bind}")).ok();
    let public_url = match spec.public_url.as_deref().map(url::Url::parse) {
        None => fallback(),
        Some(Ok(u)) if matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.query().is_none() => Some(u),
        Some(Ok(u)) => {
            problem("public_url", format!("`{u}` must be an http(s) address with a host and no query"));
            fallback()
        }
        Some(Err(e)) => {
            problem("public_url", format!("not a URL: {e}"));
            fallback()
        }
    };
    let auth = spec.server.as_ref().map(|s| match &s.auth {
        ServerAuthSpec::Token { token } => {
            redactor.add(token);
            ServerAuth::Token(Secret::new(token.clone()))
        }
        ServerAuthSpec::Basic { username, password } => {
            redactor.add(password);
            ServerAuth::Basic { username: username.clone(), password: Secret::new(password.clone()) }
        }
    });
    match &auth {
        Some(ServerAuth::Token(t)) if t.expose().trim().is_empty() => problem("server.auth.token", "is empty".into()),
        Some(ServerAuth::Basic { password, .. }) if password.expose().is_empty() => {
            problem("server.auth.password", "is empty".into())
        }
        None if !bind.ip().is_loopback() => problem(
            "listen",
            format!(
                "`{bind}` is reachable from other machines, so `server: {{ auth: ... }}` is required \
                 (a token or basic auth, from `${{VAR}}`); or listen on 127.0.0.1"
            ),
        ),
        _ => {}
    }
    // `fallback` cannot fail for a socket address; the `unwrap_or` only keeps this total.
    let public_url = public_url.unwrap_or_else(|| url::Url::parse("http://127.0.0.1:8975").expect("a valid URL"));
    let asked_for = spec.listen.is_some() || spec.public_url.is_some() || spec.server.is_some();
    Listener { bind, public_url, auth, asked_for }
}
