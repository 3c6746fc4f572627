//! What the sandbox pushes, as the real services do: Capsule's REST hooks (subscribed
//! through `/api/v2/resthooks`, called with `{"event": ..., "payload": [record]}` when a
//! party or task changes) and GHL's app webhooks (sent to the one delivery URL set with
//! `--ghl-webhook-url` or the control API, as GHL sends them to the URL in the app's
//! settings), signed with Ed25519 over the exact body bytes in `X-GHL-Signature`.
//!
//! Handlers only *emit*: building the event and drawing its fate (dropped, delayed,
//! duplicated, held back to swap with the next) happens under the state lock, from a seeded
//! generator, so a seed replays the same faults; the event then goes down a channel to one
//! background task, so no handler ever waits on a receiver. That task keeps one lane per
//! target: a lane sends its deliveries in order and waits for each first attempt (so
//! deliveries to one URL keep their order unless a fault says otherwise; `concurrency`
//! lets several go at once), while retries and delayed deliveries run on their own tasks,
//! and a slow or dead target holds up only its own lane. Every attempt lands in the delivery log (`Sandbox::deliveries`,
//! `GET /_sandbox/deliveries`).
//!
//! Capsule sends nothing for notes (entries) or task deletions, and neither does the
//! sandbox (developer.capsulecrm.com/v2/overview/avoid-polling-with-rest-hooks).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::{Signer, SigningKey};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::capsule::Embed;
use super::clock::{Ms, Rng, iso_sec};
use super::faults::{DeliveryFaults, RetryOn};
use super::state::State;
use super::wire::Reply;

/// Capsule refuses a 21st subscription ("Accounts are limited to 20 subscriptions at once").
pub const MAX_REST_HOOKS: usize = 20;

/// The events Capsule documents for REST hooks. The sandbox accepts a subscription to any of
/// them, and fires the party and task ones (it has no cases, opportunities or user changes).
const CAPSULE_EVENTS: &[&str] = &[
    "party/created",
    "party/updated",
    "party/deleted",
    "kase/created",
    "kase/updated",
    "kase/deleted",
    "kase/closed",
    "kase/moved",
    "opportunity/created",
    "opportunity/updated",
    "opportunity/deleted",
    "opportunity/closed",
    "opportunity/moved",
    "task/created",
    "task/updated",
    "task/completed",
    "user/created",
    "user/updated",
    "user/deleted",
];

/// How long a delivery held back to swap with the next one waits for that next one before
/// it goes out anyway.
const REORDER_WAIT: Duration = Duration::from_millis(500);

/// Delivery log records kept (the oldest tenth goes when it is full).
const LOG_CAP: usize = 200_000;

/// A Capsule REST hook subscription.
#[derive(Debug, Clone)]
pub struct RestHook {
    pub id: i64,
    pub event: String,
    pub target_url: String,
    pub description: Option<String>,
    pub embed: Option<String>,
    pub created: Ms,
}

impl RestHook {
    /// The hook as Capsule shows it.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id, "event": self.event, "targetUrl": self.target_url,
            "description": self.description, "embed": self.embed,
            "createdAt": iso_sec(self.created), "updatedAt": iso_sec(self.created),
        })
    }
}

/// Which service sent a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sender {
    Capsule,
    Ghl,
}

/// One line of the delivery log: one attempt (or a drop, attempt 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    /// The order events were emitted in (a duplicate shares its original's).
    pub seq: u64,
    pub sender: Sender,
    /// `party/updated`, `ContactUpdate`...
    pub event: String,
    pub target: String,
    /// GHL's `webhookId`; for Capsule, `hook-{id}-{seq}` (Capsule sends no id of its own).
    pub id: String,
    /// 1 for the first try; 0 for a delivery dropped on purpose (never sent).
    pub attempt: u32,
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// Why no status: the connection error, or "dropped on purpose".
    pub error: Option<String>,
    /// How long the attempt took, from sending to the answer (or the error); 0 for a drop.
    pub elapsed_ms: u64,
    /// The second copy of a duplicated delivery.
    pub duplicate: bool,
}

/// The fate of one delivery, drawn when it is emitted.
#[derive(Debug, Clone, Copy, Default)]
struct Fate {
    drop: bool,
    duplicate: bool,
    delay: Option<Duration>,
    reorder: bool,
}

/// A delivery on its way.
#[derive(Debug, Clone)]
struct Outgoing {
    seq: u64,
    sender: Sender,
    event: String,
    target: String,
    id: String,
    body: Bytes,
    headers: Vec<(&'static str, String)>,
    fate: Fate,
    policy: Policy,
    duplicate: bool,
}

/// How the sender retries, fixed when the delivery is emitted.
#[derive(Debug, Clone, Copy)]
struct Policy {
    max_attempts: u32,
    base: Duration,
    retry_on: RetryOn,
    timeout: Duration,
    concurrency: usize,
}

/// The push side of the sandbox's state.
#[derive(Debug)]
pub struct Push {
    pub hooks: Vec<RestHook>,
    next_hook_id: i64,
    /// Where GHL webhooks go (GHL sends every event of an installed app to one URL).
    pub ghl_url: Option<String>,
    pub faults: DeliveryFaults,
    /// Draws fates; `DeliveryFaults::seed` restarts it.
    rng: Rng,
    /// Draws `webhookId`s (its own, so that turning webhooks on does not change the ids the
    /// seeded data and later records get).
    ids: Rng,
    seq: u64,
    key: SigningKey,
    /// The legacy RSA key for `X-WH-Signature`, when asked for.
    rsa: Option<Box<rsa::pkcs1v15::SigningKey<sha2::Sha256>>>,
    tx: Option<mpsc::UnboundedSender<Outgoing>>,
    log: Log,
}

/// The delivery log, shared with the background task.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<DeliveryRecord>>>);

impl Log {
    fn lock(&self) -> MutexGuard<'_, Vec<DeliveryRecord>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the newest `LOG_CAP` records: a volume run with webhooks on must not grow the
    /// sandbox without bound.
    fn add(&self, record: DeliveryRecord) {
        let mut log = self.lock();
        if log.len() >= LOG_CAP {
            log.drain(..LOG_CAP / 10);
        }
        log.push(record);
    }

    pub fn all(&self) -> Vec<DeliveryRecord> {
        self.lock().clone()
    }
}

impl Push {
    /// `key_seed`: the Ed25519 secret key's 32 bytes (fixed for tests), or None for a fresh
    /// random key.
    pub fn new(seed: u64, key_seed: Option<[u8; 32]>, ghl_url: Option<String>) -> Self {
        let secret = key_seed.unwrap_or_else(rand::random::<[u8; 32]>);
        Push {
            hooks: Vec::new(),
            next_hook_id: 100,
            ghl_url,
            faults: DeliveryFaults::default(),
            rng: Rng::new(seed.wrapping_add(0xDE11)),
            ids: Rng::new(seed.wrapping_add(0x1D5)),
            seq: 0,
            key: SigningKey::from_bytes(&secret),
            rsa: None,
            tx: None,
            log: Log::default(),
        }
    }

    /// The public key as base64 DER SubjectPublicKeyInfo (the form GHL publishes its own in).
    pub fn public_key_base64(&self) -> String {
        match self.key.verifying_key().to_public_key_der() {
            Ok(der) => BASE64.encode(der.as_bytes()),
            // Encoding a 32-byte key into a fixed-size structure does not fail.
            Err(_) => String::new(),
        }
    }

    /// The public key as a PEM `PUBLIC KEY` block.
    pub fn public_key_pem(&self) -> String {
        self.key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap_or_default()
    }

    /// Also signs GHL webhooks the legacy way: RSASSA-PKCS1-v1_5 with SHA-256 in
    /// `X-WH-Signature`, with this key.
    pub fn set_legacy_key(&mut self, key: rsa::RsaPrivateKey) {
        self.rsa = Some(Box::new(rsa::pkcs1v15::SigningKey::new(key)));
    }

    /// The legacy RSA public key as base64 DER SubjectPublicKeyInfo, when there is one.
    pub fn legacy_public_key_base64(&self) -> Option<String> {
        use rsa::pkcs8::EncodePublicKey as _;
        use rsa::signature::Keypair as _;
        let der = self.rsa.as_ref()?.verifying_key().to_public_key_der().ok()?;
        Some(BASE64.encode(der.as_bytes()))
    }

    pub fn log(&self) -> Log {
        self.log.clone()
    }

    /// Replaces the delivery faults; a `seed` in them restarts the fault generator, so the
    /// same seed draws the same fates from then on.
    pub fn set_faults(&mut self, faults: DeliveryFaults) {
        if let Some(seed) = faults.seed {
            self.rng = Rng::new(seed);
        }
        self.faults = faults;
    }

    fn capsule_on(&self, event: &str) -> bool {
        self.tx.is_some() && self.hooks.iter().any(|h| h.event == event)
    }

    fn ghl_on(&self) -> bool {
        self.tx.is_some() && self.ghl_url.is_some()
    }

    fn fate(&mut self) -> Fate {
        let f = self.faults;
        let mut chance = |p: f64| p > 0.0 && self.rng.chance(p);
        let drop = chance(f.drop_rate);
        let duplicate = chance(f.duplicate_rate);
        let delay = chance(f.delay_rate).then_some(f.delay);
        let reorder = chance(f.reorder_rate);
        Fate { drop, duplicate, delay, reorder }
    }

    fn policy(&self) -> Policy {
        let f = &self.faults;
        Policy {
            max_attempts: f.max_attempts.max(1),
            base: f.retry_base,
            retry_on: f.retry_on,
            timeout: f.timeout,
            concurrency: usize::try_from(f.concurrency.max(1)).unwrap_or(1),
        }
    }

    fn send(&mut self, sender: Sender, event: &str, target: String, id: String, body: Vec<u8>, seq: u64) {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if sender == Sender::Ghl {
            let signature = self.key.sign(&body);
            headers.push(("x-ghl-signature", BASE64.encode(signature.to_bytes())));
            if let Some(rsa) = &self.rsa {
                use rsa::signature::{SignatureEncoding as _, Signer as _};
                headers.push(("x-wh-signature", BASE64.encode(rsa.sign(&body).to_vec())));
            }
        }
        let outgoing = Outgoing {
            seq,
            sender,
            event: event.to_owned(),
            target,
            id,
            body: Bytes::from(body),
            headers,
            fate: self.fate(),
            policy: self.policy(),
            duplicate: false,
        };
        if let Some(tx) = &self.tx {
            // The worker ends only with the sandbox; a send after that has nobody to reach.
            let _ = tx.send(outgoing);
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

/// Starts the background task that delivers; returns it so the sandbox can stop it.
pub fn start_worker(push: &mut Push) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    push.tx = Some(tx);
    tokio::spawn(worker(rx, push.log.clone()))
}

// ---------------------------------------------------------------------------------------
// Emitting Capsule events.

/// The Capsule record an event carries.
#[derive(Debug, Clone, Copy)]
pub enum CapsuleRecord {
    Party(i64),
    Task(i64),
}

/// Calls every hook subscribed to `event` with the record as `GET` returns it (with the
/// hook's `embed`). Call before a deletion, while the record is still there.
pub fn capsule(state: &mut State, event: &str, record: CapsuleRecord) {
    if !state.push.capsule_on(event) {
        return;
    }
    let hooks: Vec<RestHook> = state.push.hooks.iter().filter(|h| h.event == event).cloned().collect();
    let seq = state.push.next_seq();
    for hook in hooks {
        let embed = Embed::parse_list(hook.embed.as_deref().unwrap_or_default());
        let data = &state.capsule;
        let item = match record {
            CapsuleRecord::Party(id) => data.parties.get(&id).map(|p| data.party_json(p, &embed)),
            CapsuleRecord::Task(id) => data.tasks.get(&id).map(|t| data.task_json(t, &embed)),
        };
        let Some(item) = item else { continue };
        let body = json!({"event": event, "payload": [item]});
        let Ok(bytes) = serde_json::to_vec(&body) else { continue };
        state.push.send(Sender::Capsule, event, hook.target_url.clone(), format!("hook-{}-{seq}", hook.id), bytes, seq);
    }
}

/// `capsule` for each id.
pub fn capsule_each(state: &mut State, event: &str, ids: &[i64], record: fn(i64) -> CapsuleRecord) {
    for id in ids {
        capsule(state, event, record(*id));
    }
}

// ---------------------------------------------------------------------------------------
// Emitting GHL events.

/// The fields each kind of GHL webhook carries (from the published event docs); anything
/// else the API's record has is left out.
const CONTACT_FIELDS: &[&str] = &[
    "id",
    "address1",
    "city",
    "companyName",
    "country",
    "source",
    "dateAdded",
    "dateOfBirth",
    "dnd",
    "dndSettings",
    "email",
    "name",
    "firstName",
    "lastName",
    "phone",
    "postalCode",
    "state",
    "tags",
    "website",
    "attachments",
    "assignedTo",
    "customFields",
];
const NOTE_FIELDS: &[&str] = &["id", "body", "contactId", "dateAdded"];
const TASK_FIELDS: &[&str] = &["id", "assignedTo", "body", "contactId", "title", "dateAdded", "dueDate"];
const OPPORTUNITY_FIELDS: &[&str] = &[
    "id",
    "assignedTo",
    "contactId",
    "monetaryValue",
    "name",
    "pipelineId",
    "pipelineStageId",
    "source",
    "status",
    "dateAdded",
];
const APPOINTMENT_FIELDS: &[&str] = &[
    "id",
    "address",
    "title",
    "calendarId",
    "contactId",
    "groupId",
    "appointmentStatus",
    "assignedUserId",
    "users",
    "notes",
    "source",
    "startTime",
    "endTime",
    "dateAdded",
    "dateUpdated",
];
const MESSAGE_FIELDS: &[&str] = &[
    "attachments",
    "body",
    "contactId",
    "contentType",
    "conversationId",
    "dateAdded",
    "direction",
    "messageType",
    "status",
    "userId",
];

/// The kind of GHL record, for the fields its event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GhlKind {
    Contact,
    Note,
    Task,
    Opportunity,
    /// Nested under `appointment`, as GHL sends it.
    Appointment,
    Message,
}

/// Whether GHL events would go anywhere (build nothing otherwise).
pub fn ghl_on(state: &State) -> bool {
    state.push.ghl_on()
}

/// Sends the GHL event `event_type` for `record` (the record as the API returns it) to the
/// configured URL: `type`, `locationId`, the record's fields, then `timestamp` and a unique
/// `webhookId`, signed over the exact bytes sent.
pub fn ghl(state: &mut State, event_type: &str, kind: GhlKind, record: &Value) {
    if !state.push.ghl_on() {
        return;
    }
    let Some(url) = state.push.ghl_url.clone() else { return };
    let keep = |fields: &[&str]| -> Map<String, Value> {
        fields.iter().filter_map(|f| record.get(*f).map(|v| ((*f).to_owned(), v.clone()))).collect()
    };
    let mut body = Map::new();
    body.insert("type".into(), json!(event_type));
    body.insert("locationId".into(), json!(state.ghl.location_id));
    match kind {
        GhlKind::Appointment => {
            body.insert("appointment".into(), Value::Object(keep(APPOINTMENT_FIELDS)));
        }
        GhlKind::Message => {
            body.extend(keep(MESSAGE_FIELDS));
            body.insert("messageId".into(), record.get("id").cloned().unwrap_or(Value::Null));
        }
        other => body.extend(keep(match other {
            GhlKind::Contact => CONTACT_FIELDS,
            GhlKind::Note => NOTE_FIELDS,
            GhlKind::Task => TASK_FIELDS,
            _ => OPPORTUNITY_FIELDS,
        })),
    }
    // The timestamp is the wall clock's, not the sandbox clock's: a receiver checks it
    // against its own clock (GHL's replay window), and the sandbox clock may have been
    // moved forward.
    body.insert("timestamp".into(), json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
    let webhook_id = webhook_id(&mut state.push.ids);
    body.insert("webhookId".into(), json!(webhook_id));
    let Ok(bytes) = serde_json::to_vec(&Value::Object(body)) else { return };
    let seq = state.push.next_seq();
    state.push.send(Sender::Ghl, event_type, url, webhook_id, bytes, seq);
}

/// A UUID-shaped id.
fn webhook_id(rng: &mut Rng) -> String {
    let (a, b) = (rng.next_u64(), rng.next_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// The contact's events after an update: `ContactUpdate`, plus `ContactTagUpdate` when its
/// tags changed and `ContactDndUpdate` when its `dnd` did (`before` is the contact as it was).
/// Whether GHL sends the specific events besides `ContactUpdate` is not documented; the
/// sandbox sends both, so a receiver must cope with either.
pub fn ghl_contact_changed(state: &mut State, id: &str, before: &Value) {
    if !state.push.ghl_on() {
        return;
    }
    let Some(after) = state.ghl.contacts.get(id).map(|c| c.json(&state.ghl.location_id)) else { return };
    if after == *before {
        return;
    }
    ghl(state, "ContactUpdate", GhlKind::Contact, &after);
    if after.get("tags") != before.get("tags") {
        ghl(state, "ContactTagUpdate", GhlKind::Contact, &after);
    }
    if after.get("dnd") != before.get("dnd") {
        ghl(state, "ContactDndUpdate", GhlKind::Contact, &after);
    }
}

/// A contact as the API shows it, when events would go anywhere (for `ghl_contact_changed`).
pub fn ghl_contact_before(state: &State, id: &str) -> Option<Value> {
    if !state.push.ghl_on() {
        return None;
    }
    state.ghl.contacts.get(id).map(|c| c.json(&state.ghl.location_id))
}

/// `ContactCreate` (or another contact event) for a contact that exists.
pub fn ghl_contact(state: &mut State, event_type: &str, id: &str) {
    if let Some(contact) = ghl_contact_before(state, id) {
        ghl(state, event_type, GhlKind::Contact, &contact);
    }
}

// ---------------------------------------------------------------------------------------
// The REST hook endpoints.

/// `GET|POST /resthooks`, `GET|DELETE /resthooks/{id}`. Capsule lets only an administrator
/// of a registered (OAuth) application manage hooks; the sandbox takes any valid token,
/// which it cannot tell apart, and says so here.
pub fn rest_hooks(state: &mut State, method: &str, id: Option<&str>, body: &[u8]) -> Reply {
    let hook_id = match id.map(str::parse::<i64>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Reply::capsule_not_found(),
    };
    match (method, hook_id) {
        ("GET", None) => {
            let hooks: Vec<Value> = state.push.hooks.iter().map(RestHook::json).collect();
            Reply::ok(json!({"restHooks": hooks}))
        }
        ("GET", Some(id)) => match state.push.hooks.iter().find(|h| h.id == id) {
            Some(h) => Reply::ok(json!({"restHook": h.json()})),
            None => Reply::capsule_not_found(),
        },
        ("DELETE", Some(id)) => {
            let before = state.push.hooks.len();
            state.push.hooks.retain(|h| h.id != id);
            if state.push.hooks.len() == before {
                return Reply::capsule_not_found();
            }
            Reply { status: 204, body: Value::Null, headers: Vec::new() }
        }
        ("POST", None) => subscribe(state, body),
        _ => Reply::capsule_error(405, "Method not allowed"),
    }
}

fn subscribe(state: &mut State, body: &[u8]) -> Reply {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Reply::capsule_error(400, &format!("the body is not valid JSON: {e}")),
    };
    let Some(hook) = value.get("restHook").filter(|h| h.is_object()) else {
        return Reply::capsule_invalid("restHook", "restHook", "restHook is required".into());
    };
    let text = |field: &str| hook.get(field).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let Some(event) = text("event") else {
        return Reply::capsule_invalid("restHook", "event", "event is required".into());
    };
    if !CAPSULE_EVENTS.contains(&event) {
        return Reply::capsule_invalid(
            "restHook",
            "event",
            format!("event `{event}` is not one of {}", CAPSULE_EVENTS.join(", ")),
        );
    }
    let Some(target) = text("targetUrl") else {
        return Reply::capsule_invalid("restHook", "targetUrl", "targetUrl is required".into());
    };
    if !url::Url::parse(target).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host()) {
        return Reply::capsule_invalid("restHook", "targetUrl", format!("targetUrl `{target}` is not an http(s) URL"));
    }
    // Capsule's own wording for the 21st is not documented; a 422 in its validation shape.
    if state.push.hooks.len() >= MAX_REST_HOOKS {
        return Reply::capsule_invalid(
            "restHook",
            "event",
            format!("this account already has the maximum of {MAX_REST_HOOKS} REST hooks; unsubscribe one first"),
        );
    }
    let id = state.push.next_hook_id;
    state.push.next_hook_id += 1;
    let created = state.clock.now_second();
    let hook = RestHook {
        id,
        event: event.to_owned(),
        target_url: target.to_owned(),
        description: text("description").map(str::to_owned),
        embed: text("embed").map(str::to_owned),
        created,
    };
    let answer = json!({"restHook": hook.json()});
    state.push.hooks.push(hook);
    let location = format!("{}/api/v2/resthooks/{id}", state.base_url);
    Reply::created(answer).with_header("Location", location)
}

// ---------------------------------------------------------------------------------------
// Delivering.

async fn worker(mut rx: mpsc::UnboundedReceiver<Outgoing>, log: Log) {
    let client = match reqwest::Client::builder().no_proxy().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "the sandbox cannot deliver webhooks");
            return;
        }
    };
    let mut lanes: HashMap<String, mpsc::UnboundedSender<Outgoing>> = HashMap::new();
    // Deliveries held back to go out after the next one to the same target.
    let mut held: HashMap<String, (Outgoing, Instant)> = HashMap::new();
    loop {
        let next_deadline = held.values().map(|(_, at)| *at).min();
        let received = match next_deadline {
            Some(at) => tokio::select! {
                r = rx.recv() => r,
                () = tokio::time::sleep_until(at) => {
                    let now = Instant::now();
                    let due: Vec<String> = held.iter().filter(|(_, (_, t))| *t <= now).map(|(k, _)| k.clone()).collect();
                    for target in due {
                        if let Some((o, _)) = held.remove(&target) {
                            dispatch(o, &mut lanes, &client, &log);
                        }
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(outgoing) = received else { break };
        if outgoing.fate.reorder && !outgoing.fate.drop && !held.contains_key(&outgoing.target) {
            held.insert(outgoing.target.clone(), (outgoing, Instant::now() + REORDER_WAIT));
            continue;
        }
        let target = outgoing.target.clone();
        dispatch(outgoing, &mut lanes, &client, &log);
        if let Some((o, _)) = held.remove(&target) {
            dispatch(o, &mut lanes, &client, &log);
        }
    }
    for (_, (o, _)) in held {
        dispatch(o, &mut lanes, &client, &log);
    }
}

/// Applies a delivery's fate and hands it (and its duplicate) to its target's lane.
fn dispatch(
    outgoing: Outgoing,
    lanes: &mut HashMap<String, mpsc::UnboundedSender<Outgoing>>,
    client: &reqwest::Client,
    log: &Log,
) {
    if outgoing.fate.drop {
        log.add(record(&outgoing, 0, None, Some("dropped on purpose".into())));
        return;
    }
    let mut copies = vec![outgoing.clone()];
    if outgoing.fate.duplicate {
        copies.push(Outgoing { duplicate: true, ..outgoing.clone() });
    }
    for copy in copies {
        if let Some(delay) = copy.fate.delay {
            let (client, log) = (client.clone(), log.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                attempts(client, log, copy).await;
            });
            continue;
        }
        let lane = lanes.entry(copy.target.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(lane(rx, client.clone(), log.clone()));
            tx
        });
        let _ = lane.send(copy);
    }
}

/// One target's deliveries, in order: at most `concurrency` first attempts at once (one by
/// default, each awaited before the next starts); retries go on their own task so that a
/// failing delivery does not hold up the ones behind it.
async fn lane(mut rx: mpsc::UnboundedReceiver<Outgoing>, client: reqwest::Client, log: Log) {
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some(outgoing) = rx.recv().await {
        while in_flight.len() >= outgoing.policy.concurrency {
            in_flight.join_next().await;
        }
        let (client, log) = (client.clone(), log.clone());
        in_flight.spawn(async move {
            if !attempt(&client, &log, &outgoing, 1).await {
                tokio::spawn(async move { retries(client, log, outgoing, 2).await });
            }
        });
        // Reap the finished ones as we go, so the set does not grow with a fast receiver.
        while in_flight.try_join_next().is_some() {}
    }
}

/// Every attempt of a delivery from the first.
async fn attempts(client: reqwest::Client, log: Log, outgoing: Outgoing) {
    if !attempt(&client, &log, &outgoing, 1).await {
        retries(client, log, outgoing, 2).await;
    }
}

/// Attempts `from` onwards, after the backoff: base × 2^(n−2) before attempt n.
async fn retries(client: reqwest::Client, log: Log, outgoing: Outgoing, from: u32) {
    for n in from..=outgoing.policy.max_attempts {
        let factor = 1u32 << (n - 2).min(16);
        tokio::time::sleep(outgoing.policy.base.saturating_mul(factor)).await;
        if attempt(&client, &log, &outgoing, n).await {
            return;
        }
    }
}

/// One POST; true when it needs no retry (delivered, or a failure the policy does not retry).
async fn attempt(client: &reqwest::Client, log: &Log, outgoing: &Outgoing, n: u32) -> bool {
    let mut request = client.post(&outgoing.target).timeout(outgoing.policy.timeout).body(outgoing.body.clone());
    for (name, value) in &outgoing.headers {
        request = request.header(*name, value);
    }
    let started = Instant::now();
    let (status, error) = match request.send().await {
        Ok(response) => (Some(response.status().as_u16()), None),
        Err(e) => (None, Some(without_url(&e))),
    };
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    log.add(DeliveryRecord { elapsed_ms, ..record(outgoing, n, status, error) });
    match (status, outgoing.policy.retry_on) {
        (Some(s), _) if (200..300).contains(&s) => true,
        (Some(429), _) => false,
        (_, RetryOn::TooManyRequests) => true,
        _ => false,
    }
}

/// A reqwest error's text without the URL (which the log already names).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() { kind.to_owned() } else { format!("{kind}: {detail}") }
}

fn record(o: &Outgoing, attempt: u32, status: Option<u16>, error: Option<String>) -> DeliveryRecord {
    DeliveryRecord {
        seq: o.seq,
        sender: o.sender,
        event: o.event.clone(),
        target: o.target.clone(),
        id: o.id.clone(),
        attempt,
        status,
        error,
        elapsed_ms: 0,
        duplicate: o.duplicate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_key_is_spki_and_the_same_for_the_same_seed() {
        let a = Push::new(1, Some([7; 32]), None);
        let b = Push::new(2, Some([7; 32]), None);
        let der = BASE64.decode(a.public_key_base64()).unwrap();
        // Ed25519 SPKI: a 12-byte header (OID 1.3.101.112) then the 32-byte key.
        assert_eq!(der.len(), 44);
        assert_eq!(&der[..12], &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]);
        assert_eq!(a.public_key_base64(), b.public_key_base64());
        assert!(a.public_key_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_ne!(Push::new(1, None, None).public_key_base64(), a.public_key_base64());
    }

    #[test]
    fn delivery_faults_read_as_json_and_are_checked() {
        let f: DeliveryFaults =
            serde_json::from_str(r#"{"drop_rate": 0.5, "retry_on": "429", "retry_base_ms": 250, "seed": 4}"#).unwrap();
        assert_eq!(f.retry_on, RetryOn::TooManyRequests);
        assert_eq!(f.retry_base, Duration::from_millis(250));
        assert_eq!((f.max_attempts, f.concurrency, f.seed), (6, 1, Some(4)));
        assert!(serde_json::from_str::<DeliveryFaults>(r#"{"drop": 1}"#).is_err());
        assert!(DeliveryFaults { reorder_rate: -0.1, ..f }.check().is_err());
        assert!(DeliveryFaults { max_attempts: 0, ..f }.check().is_err());
        assert!(f.check().is_ok());
    }

    #[test]
    fn webhook_ids_are_uuid_shaped_and_distinct() {
        let mut rng = Rng::new(3);
        let (a, b) = (webhook_id(&mut rng), webhook_id(&mut rng));
        assert_ne!(a, b);
        let parts: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{a}");
    }

    #[test]
    fn fates_repeat_for_a_seed() {
        let faults = DeliveryFaults {
            drop_rate: 0.3,
            duplicate_rate: 0.3,
            reorder_rate: 0.3,
            seed: Some(9),
            ..DeliveryFaults::default()
        };
        let draw = || {
            let mut push = Push::new(1, Some([1; 32]), None);
            push.set_faults(faults);
            (0..50).map(|_| push.fate()).map(|f| (f.drop, f.duplicate, f.reorder)).collect::<Vec<_>>()
        };
        let first = draw();
        assert_eq!(first, draw());
        assert!(first.iter().any(|f| f.0) && first.iter().any(|f| !f.0));
    }
}
