//! The Capsule REST hooks ghlflow subscribes for its recipes' instant triggers, kept in step
//! with the recipes (`reconcile`): each Capsule connection gets exactly one hook per event its
//! loaded recipes listen for, pointing at `<public_url>/hooks/capsule/<token>`; hooks ghlflow
//! made that no recipe needs any more are removed; what was made is remembered in the store.
//!
//! The three requests (list, subscribe, unsubscribe) are ghlflow's own bookkeeping, not
//! catalog operations: the catalog promises that no Capsule operation writes, and recipes
//! never see these. They are compiled from `resthooks.yaml` beside this file with the catalog
//! compiler, so they still go through the HTTP layer: the connection's token (refreshed as
//! needed), its rate budget, retries and the response size bound. A `read_only` connection
//! still gets its hooks: `read_only` guards the CRM data recipes read and write, and a
//! subscription changes none of it; it is made only when a recipe asks for instant Capsule
//! events.
//!
//! Restarts never duplicate a hook: a remembered subscription whose hook is still listed with
//! our target URL is kept, and a listed hook under our public URL's `/hooks/capsule/` path that
//! the store forgot (a crash between subscribing and saving) is taken back, its token read from
//! its path. The subscribe request is sent once, never retried: an answer lost on the way is
//! found by the next reconcile's list instead of becoming a second hook.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};

use serde_json::{Map, Value, json};

use super::Engine;
use crate::catalog::{Catalog, Operation};
use crate::catalog::{CatalogSource, SourceFile};
use crate::config::Connection;
use crate::http::HttpError;
use crate::store::{HookSubscription, StoreError};

/// Capsule refuses a 21st REST hook on an account
/// (developer.capsulecrm.com/v2/overview/avoid-polling-with-rest-hooks).
pub const MAX_REST_HOOKS: usize = 20;

/// The listener path Capsule delivers to, below the public URL; a token follows.
pub const CAPSULE_HOOK_PATH: &str = "/hooks/capsule/";

/// What the description of every hook ghlflow subscribes says (Capsule shows it to admins).
const DESCRIPTION: &str = "ghlflow: instant trigger (managed by `ghlflow run`)";

/// Why subscriptions could not be brought in step.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("cannot read or save the remembered subscriptions: {0}")]
    Store(#[from] StoreError),
    #[error("connection `{connection}`: cannot {action}: {error}{hint}")]
    Http { connection: String, action: String, error: Box<HttpError>, hint: String },
    #[error(
        "connection `{connection}`: Capsule allows at most {MAX_REST_HOOKS} REST hooks per account, and \
         {listed} are subscribed ({others} not made by ghlflow for this URL), so the instant event(s) {missing} \
         cannot be subscribed. Remove hooks this account no longer needs{list}, or drop instant Capsule \
         triggers from the recipes (their polling still runs)"
    )]
    Limit { connection: String, listed: usize, others: usize, missing: String, list: String },
    #[error("connection `{connection}`: Capsule answered something unreadable to {action}: {reason}")]
    BadAnswer { connection: String, action: String, reason: String },
    #[error("the built-in REST hook requests do not compile (a build defect): {0}")]
    Internal(String),
}

/// A hook as Capsule lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveHook {
    pub id: String,
    pub event: String,
    pub target_url: String,
}

/// What reconciling did for one Capsule connection.
#[derive(Debug, Default)]
pub struct ConnectionReport {
    pub connection: String,
    /// The events its recipes listen for.
    pub needed: Vec<String>,
    /// Subscriptions that were in place (or taken back) and stay.
    pub kept: Vec<HookSubscription>,
    /// Subscriptions made now.
    pub created: Vec<HookSubscription>,
    /// Hooks ghlflow had made that were removed (no recipe needs them, a duplicate, or an
    /// old public URL).
    pub removed: Vec<LiveHook>,
    /// Why nothing was done (a public URL Capsule cannot reach).
    pub skipped: Option<String>,
    /// What failed; what was done before it is saved.
    pub error: Option<SubscriptionError>,
}

/// What reconciling did, per Capsule connection that needed any work.
#[derive(Debug, Default)]
pub struct Report {
    pub connections: Vec<ConnectionReport>,
}

impl Report {
    /// The connections' failures.
    pub fn errors(&self) -> impl Iterator<Item = (&str, &SubscriptionError)> {
        self.connections.iter().filter_map(|c| c.error.as_ref().map(|e| (c.connection.as_str(), e)))
    }

    /// Logs what happened: changes at info, a skip as a warning, failures as errors.
    pub fn log(&self) {
        for c in &self.connections {
            for s in &c.created {
                tracing::info!(connection = %c.connection, event = %s.event, hook = s.hook_id.as_deref().unwrap_or(""), "subscribed a Capsule REST hook");
            }
            for h in &c.removed {
                tracing::info!(connection = %c.connection, event = %h.event, hook = %h.id, "removed a Capsule REST hook no recipe needs");
            }
            if !c.kept.is_empty() {
                tracing::debug!(connection = %c.connection, hooks = c.kept.len(), "Capsule REST hooks in place");
            }
            if let Some(why) = &c.skipped {
                tracing::warn!(connection = %c.connection, "{why}");
            }
            if let Some(e) = &c.error {
                tracing::error!(connection = %c.connection, error = %e, "Capsule REST hooks are not in step; polling still covers the recipes");
            }
        }
    }
}

/// The compiled hook requests.
struct HookOps {
    list: Arc<Operation>,
    subscribe: Arc<Operation>,
    unsubscribe: Arc<Operation>,
}

static HOOK_OPS: LazyLock<Result<HookOps, String>> = LazyLock::new(compile_hook_ops);

/// Compiles `resthooks.yaml` against the embedded Capsule app (its retry policy and bounds).
fn compile_hook_ops() -> Result<HookOps, String> {
    let mut files: Vec<SourceFile> =
        CatalogSource::embedded().files.into_iter().filter(|f| f.app == "capsule" && f.stem == "app").collect();
    files.push(SourceFile {
        display: "src/engine/resthooks.yaml (built in)".into(),
        app: "capsule".into(),
        stem: "resthooks".into(),
        text: include_str!("resthooks.yaml").into(),
    });
    let catalog: Catalog = CatalogSource { files }.compile().map_err(|d| d.to_string())?;
    let get = |name: &str| {
        catalog.get(&format!("capsule.resthooks.{name}")).cloned().ok_or_else(|| format!("no operation `{name}`"))
    };
    Ok(HookOps {
        list: get("list_rest_hooks")?,
        subscribe: get("subscribe_rest_hook")?,
        unsubscribe: get("unsubscribe_rest_hook")?,
    })
}

fn hook_ops() -> Result<&'static HookOps, SubscriptionError> {
    HOOK_OPS.as_ref().map_err(|e| SubscriptionError::Internal(e.clone()))
}

/// Where Capsule delivers a subscription's events.
pub fn target_url(public_url: &url::Url, token: &str) -> String {
    format!("{}{CAPSULE_HOOK_PATH}{token}", public_url.as_str().trim_end_matches('/'))
}

/// The prefix every target URL ghlflow subscribes starts with.
pub fn target_prefix(public_url: &url::Url) -> String {
    format!("{}{CAPSULE_HOOK_PATH}", public_url.as_str().trim_end_matches('/'))
}

/// A target URL with its token hidden, for output and logs (the token is what lets a
/// delivery in).
pub fn hide_token(target: &str) -> String {
    match target.find(CAPSULE_HOOK_PATH) {
        Some(at) => format!("{}{CAPSULE_HOOK_PATH}<token>", &target[..at]),
        None => target.to_owned(),
    }
}

/// Whether a URL names this machine only.
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => true,
    }
}

/// Why Capsule cannot reach the listener from `connection`, if it cannot: the public URL is
/// loopback while Capsule is not on this machine.
pub fn unreachable_reason(public_url: &url::Url, connection: &Connection) -> Option<String> {
    let capsule_local = url::Url::parse(&connection.base_url).is_ok_and(|u| is_loopback(&u));
    (is_loopback(public_url) && !capsule_local).then(|| {
        format!(
            "the public URL {} is on this machine only, so Capsule ({}) cannot deliver to it: no REST hook is \
             subscribed. Set `public_url:` in ghlflow.yaml to an address Capsule reaches (a proxy or tunnel in \
             front of `listen:`); until then the recipes' polling covers them",
            public_url.as_str().trim_end_matches('/'),
            connection.base_url
        )
    })
}

/// The events each connection's loaded recipes listen for, with the recipes, by connection
/// name.
pub fn listened_events(engine: &Engine) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for recipe in engine.recipes() {
        for listen in &recipe.trigger.listens {
            out.entry(listen.connection.name.clone())
                .or_default()
                .entry(listen.event.clone())
                .or_default()
                .push(recipe.id.clone());
        }
    }
    out
}

/// The Capsule events each connection's loaded recipes listen for, by connection name.
pub fn needed_events(engine: &Engine) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out = listened_events(engine);
    out.retain(|name, _| engine.config().connections.get(name).is_some_and(|c| c.app.id == "capsule"));
    out
}

/// One reconcile at a time per state store: a recipe change while one runs waits for it.
fn lock_for(engine: &Engine) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: LazyLock<std::sync::Mutex<BTreeMap<std::path::PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let mut locks = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    Arc::clone(locks.entry(engine.config.state_dir.clone()).or_default())
}

/// Brings every Capsule connection's REST hooks in step with the loaded recipes: see the
/// module. A connection that needs nothing and remembers nothing is not asked anything.
/// `Err` only when the store cannot be read; each connection's own failure is in its report
/// (what was done before it is saved), so one unreachable account does not stop the others.
pub async fn reconcile(engine: &Engine) -> Result<Report, SubscriptionError> {
    let lock = lock_for(engine);
    let _held = lock.lock().await;
    let mut report = Report::default();
    if engine.options.dry_run {
        return Ok(report);
    }
    // One worker at a time across the store (workers share the remembered hooks): the next
    // one reconciles after it, from what it saved, and finds nothing left to do.
    let ttl = engine.lease_ttl();
    if !crate::store::wait_for_lease(&engine.store, SUBSCRIPTIONS_LEASE, ttl, 2 * ttl).await? {
        tracing::info!("another worker is bringing the REST hooks in step; left to it");
        return Ok(report);
    }
    let outcome = reconcile_held(engine, &mut report).await;
    let _ = engine.store.release_lease(SUBSCRIPTIONS_LEASE, engine.store.worker()).await;
    outcome.map(|()| report)
}

/// The lease held while one worker reconciles the subscriptions.
const SUBSCRIPTIONS_LEASE: &str = "subscriptions";

async fn reconcile_held(engine: &Engine, report: &mut Report) -> Result<(), SubscriptionError> {
    let needed = needed_events(engine);
    let mut remembered = engine.store.hook_subscriptions().await?;
    for connection in engine.config.connections.values().filter(|c| c.app.id == "capsule") {
        let events: BTreeSet<String> =
            needed.get(&connection.name).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        let has_remembered = remembered.iter().any(|s| s.connection == connection.name);
        if events.is_empty() && !has_remembered {
            continue;
        }
        let mut one = ConnectionReport {
            connection: connection.name.clone(),
            needed: events.iter().cloned().collect(),
            ..Default::default()
        };
        if let Some(why) = unreachable_reason(&engine.config.listener.public_url, connection) {
            one.skipped = Some(why);
            report.connections.push(one);
            continue;
        }
        if let Err(e) = reconcile_connection(engine, connection, &events, &mut remembered, &mut one).await {
            one.error = Some(e);
        }
        report.connections.push(one);
    }
    Ok(())
}

/// `reconcile`, its outcome logged; for `ghlflow run`, which carries on either way.
pub async fn reconcile_and_log(engine: &Engine) {
    match reconcile(engine).await {
        Ok(report) => report.log(),
        Err(e) => tracing::error!(error = %e, "Capsule REST hooks were not brought in step"),
    }
}

/// Saves `all` (every connection's subscriptions).
async fn save(engine: &Engine, all: &[HookSubscription]) -> Result<(), SubscriptionError> {
    Ok(engine.store.save_hook_subscriptions(all).await?)
}

async fn reconcile_connection(
    engine: &Engine,
    connection: &Connection,
    events: &BTreeSet<String>,
    all: &mut Vec<HookSubscription>,
    report: &mut ConnectionReport,
) -> Result<(), SubscriptionError> {
    let ops = hook_ops()?;
    let name = connection.name.clone();
    let live = list_hooks_with(engine, connection, ops).await?;
    let prefix = target_prefix(&engine.config.listener.public_url);
    let mine: Vec<HookSubscription> = all.iter().filter(|s| s.connection == name).cloned().collect();
    let remembered_ids: BTreeSet<&str> = mine.iter().filter_map(|s| s.hook_id.as_deref()).collect();
    // Another connection to the same account sees the same hooks: those it remembers are its own.
    let theirs: BTreeSet<String> =
        all.iter().filter(|s| s.connection != name).filter_map(|s| s.hook_id.clone()).collect();
    // Ours: remembered, or subscribed to our listener's Capsule path and no other connection's.
    let ours = |h: &LiveHook| {
        remembered_ids.contains(h.id.as_str()) || (h.target_url.starts_with(&prefix) && !theirs.contains(&h.id))
    };

    // Keep, per needed event, one live hook of ours pointing at our listener: the remembered
    // one first, else one the store forgot (its token is the last path segment).
    let mut keep: Vec<HookSubscription> = Vec::new();
    for event in events {
        let remembered = mine.iter().find(|s| {
            &s.event == event
                && s.target_url.starts_with(&prefix)
                && live
                    .iter()
                    .any(|h| Some(&h.id) == s.hook_id.as_ref() && h.target_url == s.target_url && &h.event == event)
        });
        if let Some(s) = remembered {
            keep.push(s.clone());
            continue;
        }
        let adopted = live.iter().find(|h| {
            &h.event == event
                && ours(h)
                && h.target_url.strip_prefix(&prefix).is_some_and(|t| !t.is_empty() && !t.contains(['/', '?', '#']))
                && !keep.iter().any(|k| k.hook_id.as_deref() == Some(h.id.as_str()))
        });
        if let Some(h) = adopted {
            keep.push(HookSubscription {
                connection: name.clone(),
                event: event.clone(),
                token: h.target_url[prefix.len()..].to_owned(),
                target_url: h.target_url.clone(),
                hook_id: Some(h.id.clone()),
            });
        }
    }
    let kept_ids: BTreeSet<String> = keep.iter().filter_map(|s| s.hook_id.clone()).collect();
    report.kept = keep.clone();

    // Remember what stays before anything is removed or made.
    let mut current = keep;
    all.retain(|s| s.connection != name);
    all.extend(current.iter().cloned());
    save(engine, all).await?;

    // Remove ours that no recipe needs (another event, a duplicate, an old public URL).
    let mut remaining = live.len();
    for hook in live.iter().filter(|h| ours(h) && !kept_ids.contains(&h.id)) {
        unsubscribe(engine, connection, ops, &hook.id).await?;
        remaining -= 1;
        report.removed.push(hook.clone());
    }

    // Make what is missing, within the account's limit (as far as this application sees it:
    // Capsule lists to an application only its own hooks, so a 422 may still come).
    let missing: Vec<&String> = events.iter().filter(|e| !current.iter().any(|s| &s.event == *e)).collect();
    if remaining + missing.len() > MAX_REST_HOOKS {
        let others: Vec<&LiveHook> = live.iter().filter(|h| !ours(h)).collect();
        let list = if others.is_empty() {
            String::new()
        } else {
            format!(
                " (not ghlflow's: {})",
                others
                    .iter()
                    .map(|h| format!("hook {} {} → {}", h.id, h.event, h.target_url))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        return Err(SubscriptionError::Limit {
            connection: name,
            listed: remaining,
            others: others.len(),
            missing: missing.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", "),
            list,
        });
    }
    for event in missing {
        let token = crate::webhook::new_path_token();
        let target = target_url(&engine.config.listener.public_url, &token);
        let id = subscribe(engine, connection, ops, event, &target).await?;
        let made = HookSubscription {
            connection: name.clone(),
            event: event.clone(),
            token,
            target_url: target,
            hook_id: Some(id),
        };
        current.push(made.clone());
        all.push(made.clone());
        // Saved at once: a crash now must not forget a hook that exists.
        save(engine, all).await?;
        report.created.push(made);
    }
    Ok(())
}

fn http_error(connection: &Connection, action: String, error: HttpError) -> SubscriptionError {
    let hint = match &error {
        HttpError::Status { status: 401 | 403, .. } => "; Capsule lets only an administrator, authenticated through a \
             registered OAuth application (`auth: {type: oauth2}` and `ghlflow connect`), manage REST hooks"
            .to_owned(),
        HttpError::Status { status: 422, .. } if action.starts_with("subscribe") => format!(
            "; an account holds at most {MAX_REST_HOOKS} REST hooks, counting those other applications made, \
             which Capsule does not list to ghlflow"
        ),
        _ => String::new(),
    };
    SubscriptionError::Http { connection: connection.name.clone(), action, error: Box::new(error), hint }
}

/// The hooks this application sees on the account.
pub async fn list_hooks(engine: &Engine, connection: &Connection) -> Result<Vec<LiveHook>, SubscriptionError> {
    list_hooks_with(engine, connection, hook_ops()?).await
}

async fn list_hooks_with(
    engine: &Engine,
    connection: &Connection,
    ops: &HookOps,
) -> Result<Vec<LiveHook>, SubscriptionError> {
    let action = "list the REST hooks (GET /resthooks)".to_owned();
    let request = crate::http::prepare(&ops.list, connection, &Map::new())
        .map_err(|e| http_error(connection, action.clone(), e))?;
    let response = engine
        .client
        .send(connection, &ops.list, &request)
        .await
        .map_err(|e| http_error(connection, action.clone(), e))?;
    let bad = |reason: String| SubscriptionError::BadAnswer {
        connection: connection.name.clone(),
        action: action.clone(),
        reason,
    };
    let Some(items) = response.body.get("restHooks").and_then(Value::as_array) else {
        return Err(bad("no `restHooks` array".into()));
    };
    items
        .iter()
        .map(|h| live_hook(h).ok_or_else(|| bad(format!("a hook without id, event or targetUrl: {h}"))))
        .collect()
}

fn live_hook(value: &Value) -> Option<LiveHook> {
    let id = match value.get("id")? {
        Value::Number(n) => n.to_string(),
        Value::String(s) if !s.is_empty() => s.clone(),
        _ => return None,
    };
    Some(LiveHook {
        id,
        event: value.get("event")?.as_str()?.to_owned(),
        target_url: value.get("targetUrl")?.as_str()?.to_owned(),
    })
}

/// Subscribes `target` to `event`; returns the hook's id. Sent once, never retried (a 429 is
/// still waited out): a lost answer is found by the next list, not made twice.
async fn subscribe(
    engine: &Engine,
    connection: &Connection,
    ops: &HookOps,
    event: &str,
    target: &str,
) -> Result<String, SubscriptionError> {
    let action = format!("subscribe to `{event}` (POST /resthooks)");
    let mut inputs = Map::new();
    inputs.insert("restHook".into(), json!({"event": event, "targetUrl": target, "description": DESCRIPTION}));
    let request = crate::http::prepare(&ops.subscribe, connection, &inputs)
        .map_err(|e| http_error(connection, action.clone(), e))?;
    let once = crate::catalog::RetryPolicy { max_attempts: std::num::NonZeroU32::MIN, ..ops.subscribe.retry.clone() };
    let response = engine
        .client
        .send_with(connection, &ops.subscribe, &request, &once)
        .await
        .map_err(|e| http_error(connection, action.clone(), e))?;
    response.body.get("restHook").and_then(live_hook).map(|h| h.id).ok_or_else(|| SubscriptionError::BadAnswer {
        connection: connection.name.clone(),
        action,
        reason: "no `restHook` with an id in the answer".into(),
    })
}

async fn unsubscribe(
    engine: &Engine,
    connection: &Connection,
    ops: &HookOps,
    id: &str,
) -> Result<(), SubscriptionError> {
    let action = format!("unsubscribe hook {id} (DELETE /resthooks/{id})");
    let mut inputs = Map::new();
    inputs.insert("restHookId".into(), Value::String(id.to_owned()));
    let request = crate::http::prepare(&ops.unsubscribe, connection, &inputs)
        .map_err(|e| http_error(connection, action.clone(), e))?;
    match engine.client.send(connection, &ops.unsubscribe, &request).await {
        Ok(_) => Ok(()),
        // Gone already (removed by hand, or a retry after a lost answer): what was wanted.
        Err(HttpError::Status { status: 404, .. }) => Ok(()),
        Err(e) => Err(http_error(connection, action, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_hook_requests_compile_and_only_subscribing_writes() {
        let ops = hook_ops().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((ops.list.method, ops.list.path.as_str()), (crate::catalog::Method::Get, "/resthooks"));
        assert_eq!((ops.subscribe.method, ops.subscribe.path.as_str()), (crate::catalog::Method::Post, "/resthooks"));
        assert_eq!(
            (ops.unsubscribe.method, ops.unsubscribe.path.as_str()),
            (crate::catalog::Method::Delete, "/resthooks/{restHookId}")
        );
        assert!(!ops.list.writes() && ops.subscribe.writes() && ops.unsubscribe.writes());
        // None of them is in the catalog recipes use.
        let catalog = crate::catalog::load_embedded().unwrap();
        assert!(catalog.all().iter().all(|op| !op.path.as_str().starts_with("/resthooks")));
    }

    #[test]
    fn loopback_addresses_and_hidden_tokens() {
        for (url, loopback) in [
            ("http://127.0.0.1:8975", true),
            ("http://[::1]:8975", true),
            ("http://localhost:8975/x", true),
            ("http://hooks.localhost", true),
            ("http://0.0.0.0:8975", true),
            ("https://hooks.example.com", false),
            ("http://10.0.0.5:8975", false),
        ] {
            assert_eq!(is_loopback(&url::Url::parse(url).unwrap()), loopback, "{url}");
        }
        let public = url::Url::parse("https://hooks.example.com/").unwrap();
        assert_eq!(target_url(&public, "abc"), "https://hooks.example.com/hooks/capsule/abc");
        assert_eq!(target_prefix(&public), "https://hooks.example.com/hooks/capsule/");
        assert_eq!(
            hide_token("https://hooks.example.com/hooks/capsule/abc"),
            "https://hooks.example.com/hooks/capsule/<token>"
        );
        assert_eq!(hide_token("https://elsewhere.example.com/x"), "https://elsewhere.example.com/x");
    }
}
