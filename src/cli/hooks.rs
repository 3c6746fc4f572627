//! `ghlflow hooks`: what the instant triggers need outside ghlflow, and (`--check`) whether
//! it is in place. For each GHL connection: the webhook URL, events and scopes to set in the
//! GHL app's settings (GHL has no API for them). For each Capsule connection: the REST hooks
//! `ghlflow run` subscribes and remembers. `--check` asks the listener at the public URL for
//! `/healthz`, lists the Capsule hooks live, sends each remembered Capsule hook's path a delivery
//! with no records (which must be accepted, and runs nothing), and sends `/hooks/ghl` an
//! unsigned delivery, which must be refused (one GHL would accept only GHL can sign).
//!
//! It runs as a request against an engine (`runs::dispatch`): here when no `ghlflow run` holds
//! the state store, or inside that process over its control socket, whose OAuth tokens and
//! recipes it then uses. Exit 0: nothing wrong; 1: problems found; 2: bad input.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::CliResult;
use super::runs::{Reply, RunsRequest, dispatch};
use crate::config::Connection;
use crate::engine::Engine;
use crate::engine::subscriptions::{self, LiveHook, hide_token};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ghlflow hooks                 what to set in the GHL app, and the Capsule hooks ghlflow manages
  ghlflow hooks --check         check the listener, the live Capsule hooks and /hooks/ghl")]
pub struct HooksArgs {
    /// Check end to end: the listener answers at the public URL, the Capsule hooks exist
    /// live, and /hooks/ghl refuses an unsigned delivery. Exit 1 when something is wrong.
    #[arg(long)]
    check: bool,
    /// The configuration file.
    #[arg(long, default_value = "ghlflow.yaml")]
    config: PathBuf,
}

pub async fn run(args: HooksArgs, operations: Option<&Path>) -> CliResult {
    dispatch(RunsRequest::Hooks { check: args.check }, &args.config, operations).await
}

/// The scope a GHL app needs to receive `event`, and whether GHL's scope table lists it
/// (marketplace.gohighlevel.com/docs/Authorization/Scopes, "Webhook Events"); the others are
/// inferred from the event's family and marked so.
pub fn ghl_scope(event: &str) -> Option<(&'static str, bool)> {
    let listed = match event {
        "ContactCreate" | "ContactDelete" | "ContactDndUpdate" | "ContactTagUpdate" | "NoteCreate" | "NoteDelete"
        | "TaskCreate" | "TaskDelete" => Some("contacts.readonly"),
        "OpportunityCreate"
        | "OpportunityDelete"
        | "OpportunityStageUpdate"
        | "OpportunityStatusUpdate"
        | "OpportunityMonetaryValueUpdate" => Some("opportunities.readonly"),
        "InboundMessage" | "OutboundMessage" => Some("conversations/message.readonly"),
        "ConversationUnreadWebhook" => Some("conversations.readonly"),
        "CampaignStatusUpdate" => Some("campaigns.readonly"),
        "LocationCreate" | "LocationUpdate" => Some("locations.readonly"),
        "AssociationCreate" | "AssociationUpdate" | "AssociationDelete" => Some("associations.readonly"),
        "RelationCreate" | "RelationDelete" => Some("associations/relation.readonly"),
        _ => None,
    };
    if let Some(scope) = listed {
        return Some((scope, true));
    }
    let inferred = match event {
        "ContactUpdate" | "NoteUpdate" | "TaskComplete" => "contacts.readonly",
        "OpportunityUpdate" | "OpportunityAssignedToUpdate" => "opportunities.readonly",
        "AppointmentCreate" | "AppointmentUpdate" | "AppointmentDelete" => "calendars/events.readonly",
        _ => return None,
    };
    Some((inferred, false))
}

fn recipes_text(ids: &[String]) -> String {
    format!("{} {}", if ids.len() == 1 { "recipe" } else { "recipes" }, ids.join(", "))
}

/// What the checks found.
#[derive(Default)]
struct Checks {
    lines: Vec<String>,
    problems: usize,
}

impl Checks {
    fn ok(&mut self, text: String) {
        self.lines.push(format!("  ok       {text}"));
    }
    fn problem(&mut self, text: String) {
        self.problems += 1;
        self.lines.push(format!("  PROBLEM  {text}"));
    }
    fn note(&mut self, text: String) {
        self.lines.push(format!("  note     {text}"));
    }
}

/// `ghlflow hooks [--check]` against an engine.
pub async fn handle(engine: &Engine, check: bool) -> Reply {
    let config = engine.config();
    let public = config.listener.public_url.as_str().trim_end_matches('/').to_owned();
    let listened = subscriptions::listened_events(engine);
    let remembered = match engine.hook_subscriptions().await {
        Ok(s) => s,
        Err(e) => return Reply { exit: 1, stdout: String::new(), stderr: format!("error: {e}\n") },
    };
    let mut out = String::new();
    let mut checks = Checks::default();
    let _ = writeln!(out, "Listener: {public} (the address the APIs deliver to; bound at {})", config.listener.bind);
    if listened.is_empty() {
        let _ = writeln!(
            out,
            "\nNo recipe has an instant trigger: nothing to configure. (A trigger on an instant operation, \
             `ghlflow ops list` shows them, or `instant:` on a polling trigger, turns them on.)"
        );
    }

    if check {
        check_listener(&public, &mut checks).await;
    }

    for connection in config.connections.values() {
        let events = listened.get(&connection.name);
        match connection.app.id.as_str() {
            "ghl" => ghl_section(&mut out, &mut checks, connection, events, &public, check).await,
            "capsule" => {
                let mine: Vec<_> = remembered.iter().filter(|s| s.connection == connection.name).cloned().collect();
                if events.is_none() && mine.is_empty() {
                    continue;
                }
                let _ = writeln!(out, "\nCapsule connection `{}` ({})", connection.name, connection.base_url);
                let _ = writeln!(
                    out,
                    "  REST hooks `ghlflow run` subscribes for the recipes (at most {} per account; an OAuth app and \
                     an administrator's login are needed: `ghlflow connect {}`):",
                    subscriptions::MAX_REST_HOOKS,
                    connection.name
                );
                if let Some(why) = subscriptions::unreachable_reason(&config.listener.public_url, connection) {
                    let _ = writeln!(out, "  warning: {why}");
                    if check {
                        checks.problem(format!("capsule `{}`: {why}", connection.name));
                    }
                }
                let empty = BTreeMap::new();
                let events = events.unwrap_or(&empty);
                for (event, recipes) in events {
                    let state = match mine.iter().find(|s| &s.event == event) {
                        Some(s) => format!(
                            "subscribed: hook {} → {}",
                            s.hook_id.as_deref().unwrap_or("?"),
                            hide_token(&s.target_url)
                        ),
                        None => "not subscribed yet: `ghlflow run` subscribes it at start".to_owned(),
                    };
                    let _ = writeln!(out, "    {event:<20} {:<28} {state}", recipes_text(recipes));
                }
                for s in mine.iter().filter(|s| !events.contains_key(&s.event)) {
                    let _ = writeln!(
                        out,
                        "    {:<20} {:<28} hook {}: no recipe needs it; `ghlflow run` removes it at start",
                        s.event,
                        "(no recipe)",
                        s.hook_id.as_deref().unwrap_or("?")
                    );
                }
                if check {
                    check_capsule(engine, connection, events, &mut checks).await;
                }
            }
            _ => {}
        }
    }

    let mut exit = 0;
    if check {
        let _ = writeln!(out, "\nChecks:");
        for line in &checks.lines {
            let _ = writeln!(out, "{line}");
        }
        if checks.problems > 0 {
            exit = 1;
            let _ = writeln!(out, "{} problem{} found", checks.problems, if checks.problems == 1 { "" } else { "s" });
        } else {
            let _ = writeln!(out, "no problem found");
        }
    }
    Reply { exit, stdout: config.redactor.redact(&out), stderr: String::new() }
}

async fn ghl_section(
    out: &mut String,
    checks: &mut Checks,
    connection: &Connection,
    events: Option<&BTreeMap<String, Vec<String>>>,
    public: &str,
    check: bool,
) {
    let _ = writeln!(
        out,
        "\nGHL connection `{}`{}",
        connection.name,
        connection.location_id.as_deref().map(|l| format!(" (location {l})")).unwrap_or_default()
    );
    let Some(events) = events else {
        let _ = writeln!(out, "  no recipe listens for its events: nothing to configure");
        return;
    };
    let _ = writeln!(
        out,
        "  Set in the GHL app's settings (the Marketplace app installed on the location; GHL delivers to one URL \
         per app):"
    );
    let _ = writeln!(out, "    webhook URL  {public}/hooks/ghl");
    let _ = writeln!(out, "    events       {}", events.keys().cloned().collect::<Vec<_>>().join(", "));
    let mut scopes: BTreeMap<&str, bool> = BTreeMap::new();
    let mut unknown = Vec::new();
    for event in events.keys() {
        match ghl_scope(event) {
            Some((scope, listed)) => {
                let e = scopes.entry(scope).or_insert(listed);
                *e &= listed;
            }
            None => unknown.push(event.as_str()),
        }
    }
    let mut scope_text: Vec<String> =
        scopes.iter().map(|(s, listed)| if *listed { (*s).to_owned() } else { format!("{s} (inferred)") }).collect();
    if !unknown.is_empty() {
        scope_text.push(format!("unknown for {}", unknown.join(", ")));
    }
    let _ = writeln!(out, "    scopes       {}", scope_text.join(", "));
    for (event, recipes) in events {
        let _ = writeln!(out, "    {event:<20} {}", recipes_text(recipes));
    }
    let (ed, rsa) = connection.webhook_keys.counts();
    let _ = writeln!(
        out,
        "  Deliveries must be signed by one of {ed} Ed25519 and {rsa} RSA key(s) (webhook_public_keys, or GHL's published ones)"
    );
    let public_url = url::Url::parse(public).ok();
    let ghl_local = url::Url::parse(&connection.base_url).is_ok_and(|u| subscriptions::is_loopback(&u));
    if public_url.as_ref().is_some_and(subscriptions::is_loopback) && !ghl_local {
        let why = format!(
            "the public URL {public} is on this machine only: GHL cannot deliver to it. Set `public_url:` in \
             ghlflow.yaml to an address GHL reaches (a proxy or tunnel in front of `listen:`)"
        );
        let _ = writeln!(out, "  warning: {why}");
        if check {
            checks.problem(format!("ghl `{}`: {why}", connection.name));
        }
    }
    if check {
        check_ghl_route(public, connection, checks).await;
    }
}

fn client() -> Option<reqwest::Client> {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).redirect(reqwest::redirect::Policy::none()).build().ok()
}

async fn check_listener(public: &str, checks: &mut Checks) {
    let url = format!("{public}/healthz");
    let Some(client) = client() else {
        checks.problem("cannot set up an HTTP client".into());
        return;
    };
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => checks.ok(format!("the listener answers at {url}")),
        Ok(r) => checks.problem(format!("{url} answered {}: is something other than ghlflow at that address?", r.status())),
        Err(e) => checks.problem(format!(
            "nothing answers at {url} ({}): is `ghlflow run` running, and does `public_url` lead to its `listen:` address?",
            crate::http::auth::without_url(&e)
        )),
    }
}

/// An unsigned delivery must be refused with 401: that says the route is there and checks
/// signatures. A signed one cannot be made here for GHL's own key.
async fn check_ghl_route(public: &str, connection: &Connection, checks: &mut Checks) {
    let url = format!("{public}/hooks/ghl");
    let Some(client) = client() else { return };
    let body = serde_json::json!({"type": "ghlflow.check", "locationId": connection.location_id});
    match client.post(&url).json(&body).send().await {
        Ok(r) if r.status().as_u16() == 401 => {
            checks.ok(format!("{url} refuses an unsigned delivery (401): signatures are checked"))
        }
        Ok(r) => checks.problem(format!(
            "{url} answered an unsigned delivery with {} instead of 401: is this ghlflow's listener?",
            r.status()
        )),
        Err(e) => checks.problem(format!("nothing answers at {url} ({})", crate::http::auth::without_url(&e))),
    }
    checks.note(format!(
        "ghl `{}`: a delivery GHL would sign cannot be made from here (only GHL holds its private key). Trigger \
         an event in GHL (edit a contact) and look for `ghlflow_hook_events_total{{source=\"ghl\"}}` in /metrics \
         or the run it makes in `ghlflow runs list`",
        connection.name
    ));
}

/// `text` with the configuration's secrets removed.
fn config_redacted(engine: &Engine, text: &str) -> String {
    engine.config().redactor.redact(text)
}

async fn check_capsule(
    engine: &Engine,
    connection: &Connection,
    events: &BTreeMap<String, Vec<String>>,
    checks: &mut Checks,
) {
    let name = &connection.name;
    if subscriptions::unreachable_reason(&engine.config().listener.public_url, connection).is_some() {
        return;
    }
    let live: Vec<LiveHook> = match subscriptions::list_hooks(engine, connection).await {
        Ok(l) => l,
        Err(e) => {
            checks.problem(format!("capsule `{name}`: {e}"));
            return;
        }
    };
    let prefix = subscriptions::target_prefix(&engine.config().listener.public_url);
    for event in events.keys() {
        let ours: Vec<&LiveHook> =
            live.iter().filter(|h| &h.event == event && h.target_url.starts_with(&prefix)).collect();
        match ours.as_slice() {
            [] => checks.problem(format!(
                "capsule `{name}`: no live REST hook delivers `{event}` to {prefix}…; start `ghlflow run` (it \
                 subscribes at start) and read its log"
            )),
            [one] => checks.ok(format!("capsule `{name}`: `{event}` is subscribed live (hook {})", one.id)),
            many => checks.problem(format!(
                "capsule `{name}`: {} live hooks deliver `{event}` (each event would run twice); `ghlflow run` removes \
                 the extra ones at start",
                many.len()
            )),
        }
    }
    // A delivery with no records to each remembered hook's own path: it crosses whatever is in
    // front of the listener and must find the token known there; nothing runs.
    let remembered = engine.hook_subscriptions().await.unwrap_or_default();
    for sub in remembered.iter().filter(|s| &s.connection == name && events.contains_key(&s.event)) {
        if !sub.target_url.starts_with(&prefix) {
            continue;
        }
        let Some(client) = client() else { return };
        let shown = hide_token(&sub.target_url);
        let body = serde_json::json!({"event": sub.event, "payload": []});
        match client.post(&sub.target_url).json(&body).send().await {
            Ok(r) if r.status().is_success() => checks.ok(format!(
                "capsule `{name}`: a test delivery of `{}` with no records reached {shown} and was accepted",
                sub.event
            )),
            Ok(r) => checks.problem(format!(
                "capsule `{name}`: a test delivery of `{}` to {shown} was answered {}: is `ghlflow run` running on \
                 this state folder behind that address?",
                sub.event,
                r.status()
            )),
            Err(e) => checks.problem(format!(
                "capsule `{name}`: nothing answers at {shown} ({})",
                config_redacted(engine, &crate::http::auth::without_url(&e))
            )),
        }
    }
    for hook in live.iter().filter(|h| h.target_url.starts_with(&prefix) && !events.contains_key(&h.event)) {
        checks.note(format!(
            "capsule `{name}`: hook {} (`{}`) is no recipe's any more; `ghlflow run` removes it at start",
            hook.id, hook.event
        ));
    }
}
