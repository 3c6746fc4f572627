//! `ghlflow sandbox`: a local, stateful stand-in for the GHL API v2 and the Capsule API v2
//! on one port, for tests, the demo and trying recipes without touching a real account.
//! GHL is served at the root (`http://127.0.0.1:PORT`), Capsule under `/api/v2`, both at the
//! catalog's own paths; every catalog operation answers (with state where it matters, with
//! its catalog sample otherwise). It owns the emulation: seeded data (`seed`), the
//! handlers (`ghl`, `capsule`), the gates every request passes (`server`: token, rate limits
//! with the real headers, `Version`, unknown body properties, location), OAuth tokens that
//! expire on the sandbox clock (`oauth`, `clock`), injected faults (`faults`), the events
//! it pushes as the real services do (`push`: Capsule REST hooks, GHL webhooks signed with
//! a sandbox Ed25519 key, with their own faults), a log of every API request (`log`: when,
//! which budget, what status, a write's body), and the control API (`control` over HTTP,
//! the methods of `Sandbox` in Rust). Where the real APIs
//! answer in surprising ways (a 401 for a missing `Version` or an unknown user, a phone
//! silently dropped by upsert, page numbers that stop at 10,000 results, a booking refused
//! outside the calendar's free slots), the sandbox does too; where their answer is unknown,
//! it picks the stricter one and says so at the handler.
//! It does not use the rest of ghlflow except the catalog, and nothing in ghlflow uses it
//! except the `sandbox` command, the tests and the demo.

mod capsule;
mod clock;
mod control;
mod faults;
mod ghl;
mod limits;
mod log;
mod oauth;
mod push;
mod routes;
mod seed;
mod server;
mod state;
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::{DeliveryFaults, Faults, LostAs, RetryOn};
pub use log::{LoggedRequest, MAX_ENTRIES as REQUEST_LOG_ENTRIES};
pub use oauth::Grant as OAuthGrant;
pub use push::{DeliveryRecord, MAX_REST_HOOKS, Sender as PushSender};
pub use routes::Api;
pub use seed::{COMPANY_ID, LOCATION_ID};
pub use state::{CapsuleCounts, GhlCounts, RequestCounts};

use server::Shared;

/// How to start a sandbox. `Default` is port 0 (any free port), seed 1, 300 people, no
/// faults, the real rate limits.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// 0 picks a free port.
    pub port: u16,
    pub seed: u64,
    /// Capsule people to seed (plus one organisation for every six, and each Capsule
    /// user's own person party).
    pub people: usize,
    /// Share of GHL writes that fail with a 500 before being applied (0 to 1).
    pub fail_rate: f64,
    /// Share of GHL writes applied but whose answer is lost (0 to 1).
    pub lose_responses: f64,
    /// How a lost answer looks: the connection closed (default) or a 504.
    pub lost_as: LostAs,
    /// Added to every answer.
    pub latency: Duration,
    /// Fault GHL reads too, not only writes.
    pub fault_reads: bool,
    /// Multiplies every rate limit (100 for volume tests, 0.05 to hit them quickly).
    pub limits_scale: f64,
    /// No rate limits at all.
    pub no_limits: bool,
    /// Where GHL webhooks go (none: GHL events are not sent). Settable later through
    /// `set_ghl_webhook_url` or the control API.
    pub ghl_webhook_url: Option<String>,
    /// The 32 bytes of the Ed25519 key GHL webhooks are signed with; None draws a fresh key
    /// at every start.
    pub ghl_signing_key: Option<[u8; 32]>,
    /// Faults of pushed events and the sender's retries.
    pub delivery_faults: DeliveryFaults,
    /// Also sign GHL webhooks with a fresh 2048-bit RSA key in the legacy `X-WH-Signature`
    /// (RSASSA-PKCS1-v1_5, SHA-256), as GHL does until it retires that header.
    pub ghl_legacy_signature: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            port: 0,
            seed: 1,
            people: 300,
            fail_rate: 0.0,
            lose_responses: 0.0,
            lost_as: LostAs::Close,
            latency: Duration::ZERO,
            fault_reads: false,
            limits_scale: 1.0,
            no_limits: false,
            ghl_webhook_url: None,
            ghl_signing_key: None,
            delivery_faults: DeliveryFaults::default(),
            ghl_legacy_signature: false,
        }
    }
}

impl SandboxOptions {
    pub fn faults(&self) -> Faults {
        Faults {
            fail_rate: self.fail_rate,
            lose_responses: self.lose_responses,
            lost_as: self.lost_as,
            latency: self.latency,
            fault_reads: self.fault_reads,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox option: {0}")]
    Option(String),
    #[error("the operations catalog is invalid:\n{0}")]
    Catalog(String),
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
}

/// A running sandbox. Dropping it stops the server (`shutdown` also waits for it).
#[derive(Debug)]
pub struct Sandbox {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// The task that delivers pushed events.
    deliverer: Option<JoinHandle<()>>,
}

/// Binds 127.0.0.1:`port` and serves on the current tokio runtime.
pub async fn start(opts: SandboxOptions) -> Result<Sandbox, SandboxError> {
    let faults = opts.faults();
    faults.check().map_err(SandboxError::Option)?;
    if !(opts.limits_scale.is_finite() && opts.limits_scale > 0.0) {
        return Err(SandboxError::Option(format!("the limits scale must be above 0, not {}", opts.limits_scale)));
    }
    if let Some(url) = &opts.ghl_webhook_url {
        check_webhook_url(url).map_err(SandboxError::Option)?;
    }
    opts.delivery_faults.check().map_err(SandboxError::Option)?;
    let catalog = crate::catalog::load_embedded().map_err(|d| SandboxError::Catalog(d.to_string()))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port))
        .await
        .map_err(|source| SandboxError::Bind { port: opts.port, source })?;
    let addr = listener.local_addr().map_err(|source| SandboxError::Bind { port: opts.port, source })?;
    let limits = limits::Limits::new(opts.limits_scale, opts.no_limits);
    let mut state = state::State::new(opts.seed, opts.people, faults, limits, format!("http://{addr}"));
    state.push = push::Push::new(opts.seed, opts.ghl_signing_key, opts.ghl_webhook_url.clone());
    state.push.set_faults(opts.delivery_faults);
    if opts.ghl_legacy_signature {
        // Generating an RSA key takes a moment: off the async threads.
        let key = tokio::task::spawn_blocking(|| rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048))
            .await
            .map_err(|e| SandboxError::Option(format!("the RSA key could not be made: {e}")))?
            .map_err(|e| SandboxError::Option(format!("the RSA key could not be made: {e}")))?;
        state.push.set_legacy_key(key);
    }
    let deliverer = push::start_worker(&mut state.push);
    let shared = Arc::new(Shared { state: Mutex::new(state), routes: routes::RouteTable::new(&catalog) });
    let app = server::router(Arc::clone(&shared)).into_make_service_with_connect_info::<faults::Cut>();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(faults::CuttableListener(listener), app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "the sandbox server stopped");
        }
    });
    Ok(Sandbox { addr, shared, stop: Some(stop), task: Some(task), deliverer: Some(deliverer) })
}

/// A GHL webhook URL must be an absolute http(s) URL.
fn check_webhook_url(url: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
        _ => Err(format!("the GHL webhook URL must be an http(s) URL, not `{url}`")),
    }
}

impl Sandbox {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: GHL's paths sit at the root.
    pub fn ghl_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/api/v2`.
    pub fn capsule_base_url(&self) -> String {
        format!("http://{}/api/v2", self.addr)
    }

    pub fn location_id(&self) -> &'static str {
        LOCATION_ID
    }

    pub fn company_id(&self) -> &'static str {
        COMPANY_ID
    }

    /// A ghlflow.yaml with a `ghl` and a `capsule` connection to this sandbox.
    pub fn config_yaml(&self) -> String {
        let lines = [
            "connections:".to_owned(),
            "  ghl:".to_owned(),
            "    app: ghl".to_owned(),
            format!("    location_id: {LOCATION_ID}"),
            format!("    company_id: {COMPANY_ID}"),
            "    auth: { type: private_token, token: sandbox-ghl-token }".to_owned(),
            format!("    base_url: {}", self.ghl_base_url()),
            "    # The key this sandbox signs GHL webhooks with (X-GHL-Signature, Ed25519):".to_owned(),
            format!("    webhook_public_keys: [\"{}\"]", self.ghl_webhook_public_key()),
            "  capsule:".to_owned(),
            "    app: capsule".to_owned(),
            "    auth: { type: bearer, token: sandbox-capsule-token }".to_owned(),
            "    access: read_only".to_owned(),
            format!("    base_url: {}", self.capsule_base_url()),
            "state: .ghlflow/state".to_owned(),
        ];
        lines.join("\n") + "\n"
    }

    /// Stops serving and waits (briefly) for the server to finish. Deliveries still under
    /// way are abandoned.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(deliverer) = self.deliverer.take() {
            deliverer.abort();
        }
        if let Some(task) = self.task.take() {
            // Idle keep-alive connections can hold a graceful shutdown open; do not wait
            // on them for long.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
                abort.abort();
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, state::State> {
        self.shared.lock()
    }

    // -----------------------------------------------------------------------------------
    // Changing Capsule. Each returns the ids it touched; picks are repeatable for a seed.

    /// Edits `n` people (job title, about, a phone or a tag); their `updatedAt` moves to now.
    pub fn capsule_edit_people(&self, n: usize) -> Vec<i64> {
        capsule::edit_people(&mut self.state(), n)
    }

    /// Deletes `n` people (with their entries and tasks); they appear under `/parties/deleted`.
    pub fn capsule_delete_people(&self, n: usize) -> Vec<i64> {
        capsule::delete_people(&mut self.state(), n)
    }

    /// Restricts `n` people: hidden from the token's user, listed as `restrictedParties`
    /// under `/parties/deleted`.
    pub fn capsule_restrict_people(&self, n: usize) -> Vec<i64> {
        capsule::restrict_people(&mut self.state(), n)
    }

    /// Sets `n` open tasks to PENDING.
    pub fn capsule_pend_tasks(&self, n: usize) -> Vec<i64> {
        capsule::pend_tasks(&mut self.state(), n)
    }

    /// Adds `n` people, created now.
    pub fn capsule_add_people(&self, n: usize) -> Vec<i64> {
        capsule::add_people(&mut self.state(), n)
    }

    /// Rewrites `n` notes: `updatedAt` moves to now, `entryAt` stays.
    pub fn capsule_edit_notes(&self, n: usize) -> Vec<i64> {
        capsule::edit_notes(&mut self.state(), n)
    }

    /// Adds a note, dated now, to each of `n` people.
    pub fn capsule_add_notes(&self, n: usize) -> Vec<i64> {
        capsule::add_notes(&mut self.state(), n)
    }

    /// Completes `n` open tasks (each also files a "Task completed" entry).
    pub fn capsule_complete_tasks(&self, n: usize) -> Vec<i64> {
        capsule::complete_tasks(&mut self.state(), n)
    }

    /// Adds an open task to each of `n` people.
    pub fn capsule_add_tasks(&self, n: usize) -> Vec<i64> {
        capsule::add_tasks(&mut self.state(), n)
    }

    /// Edits one person (a new job title); its `updatedAt` moves to now.
    pub fn capsule_touch_person(&self, id: i64) -> bool {
        capsule::touch_person(&mut self.state(), id)
    }

    /// Takes one person's first tag off (its `updatedAt` moves to now); the tag's name.
    pub fn capsule_untag_person(&self, id: i64) -> Option<String> {
        capsule::untag_person(&mut self.state(), id)
    }

    /// Adds an open task to `party`, owned by the Capsule user `owner`, due on `due_on`
    /// (`YYYY-MM-DD`) at `due_time` (`HH:MM:SS` on the owner's wall clock, or none).
    pub fn capsule_add_timed_task(&self, party: i64, owner: i64, due_on: &str, due_time: Option<&str>) -> i64 {
        capsule::add_timed_task(&mut self.state(), party, owner, due_on, due_time)
    }

    /// Adds an open task in the category named `category` (uncategorised when no category
    /// has that name: the seed has Meeting, Billing, Call and Follow-up) to `party`, owned
    /// by the Capsule user `owner`, due on `due_on` (`YYYY-MM-DD`) at `due_time`
    /// (`HH:MM:SS` on the owner's wall clock).
    pub fn capsule_add_meeting(&self, party: i64, owner: i64, due_on: &str, due_time: &str, category: &str) -> i64 {
        capsule::add_meeting(&mut self.state(), party, owner, due_on, due_time, category)
    }

    /// Moves a task to `due_on` at `due_time` (its `updatedAt` moves to now); false when
    /// there is no such task.
    pub fn capsule_move_task(&self, id: i64, due_on: &str, due_time: &str) -> bool {
        capsule::move_task(&mut self.state(), id, due_on, Some(due_time))
    }

    /// Completes one open task (filing its "Task completed" entry); false when there is no
    /// such open task.
    pub fn capsule_complete_task(&self, id: i64) -> bool {
        capsule::complete_task(&mut self.state(), id)
    }

    /// Deletes a task: it disappears from `/tasks` (Capsule lists no deleted tasks). False
    /// when there is no such task.
    pub fn capsule_delete_task(&self, id: i64) -> bool {
        capsule::delete_task(&mut self.state(), id)
    }

    /// Puts a task in the category named `name` (its `updatedAt` moves to now); false when
    /// there is no such task or category.
    pub fn capsule_set_task_category(&self, id: i64, name: &str) -> bool {
        capsule::set_task_category(&mut self.state(), id, name)
    }

    /// The Capsule users (id, username, timezone).
    pub fn capsule_users(&self) -> Vec<Value> {
        self.state().capsule_users()
    }

    /// A party as `GET /parties/{id}?embed=tags,fields` shows it.
    pub fn capsule_party(&self, id: i64) -> Option<Value> {
        self.state().capsule_party(id)
    }

    /// Ids of every live Capsule person except the users' own parties, in id order.
    pub fn capsule_people(&self) -> Vec<i64> {
        self.state().capsule.contacts().map(|p| p.id).collect()
    }

    pub fn capsule_counts(&self) -> CapsuleCounts {
        self.state().capsule_counts()
    }

    // -----------------------------------------------------------------------------------
    // Looking at GHL.

    pub fn ghl_counts(&self) -> GhlCounts {
        self.state().ghl_counts()
    }

    /// Adds `n` contacts as a web form would: new leads, each with its own email and phone.
    pub fn ghl_add_contacts(&self, n: usize) -> Vec<String> {
        ghl::add_leads(&mut self.state(), n)
    }

    /// Deletes a contact as a person would in GHL (its notes and tasks go too; its id
    /// answers 404 from then on). False when there is no such contact.
    /// Wins `n` open opportunities (their status and update time change now).
    pub fn ghl_win_deals(&self, n: usize) -> Vec<String> {
        ghl::opportunities::win(&mut self.state(), n)
    }

    /// A message from the contact on `channel` (`SMS`, `Email`...), as when they reply:
    /// stored in their conversation and sent as an `InboundMessage` webhook. The message id;
    /// None when there is no such contact.
    pub fn ghl_receive_message(&self, contact_id: &str, channel: &str, body: &str) -> Option<String> {
        ghl::receive_message(&mut self.state(), contact_id, channel, body)
    }

    pub fn ghl_delete_contact(&self, id: &str) -> bool {
        ghl::delete_contact(&mut self.state(), id)
    }

    /// Merges contact `from` into `into` as a person would in GHL; the error says which
    /// contact is missing.
    pub fn ghl_merge_contacts(&self, from: &str, into: &str) -> Result<(), String> {
        ghl::merge_contacts(&mut self.state(), from, into)
    }

    /// Every contact as the API returns it, oldest first.
    pub fn ghl_contacts(&self) -> Vec<Value> {
        self.state().ghl_contacts()
    }

    pub fn ghl_notes(&self, contact_id: &str) -> Vec<Value> {
        self.state().ghl_notes(contact_id)
    }

    pub fn ghl_tasks(&self, contact_id: &str) -> Vec<Value> {
        self.state().ghl_tasks(contact_id)
    }

    /// Every message sent or seeded, oldest first.
    pub fn ghl_messages(&self) -> Vec<Value> {
        self.state().ghl_messages()
    }

    /// The id of the seeded calendar ("Discovery Call": Mon–Fri 09:00–17:00 in the
    /// location's zone, America/Chicago; 30-minute slots).
    pub fn ghl_calendar_id(&self) -> String {
        self.state().ghl.calendars.first().and_then(|c| c["id"].as_str()).unwrap_or_default().to_owned()
    }

    /// The location's users as `GET /users/` lists them (id, name, email...).
    pub fn ghl_users(&self) -> Vec<Value> {
        self.state().ghl.users.clone()
    }

    /// Every appointment as the event list shows it (times in the location's zone), oldest
    /// booking first, each with a sandbox-only `"notified"`: whether the calendar's
    /// notifications would have reached the contact (it was booked or changed without
    /// `toNotify: false`).
    pub fn ghl_appointments(&self) -> Vec<Value> {
        self.state().ghl_appointments()
    }

    // -----------------------------------------------------------------------------------
    // OAuth and the clock.

    /// A fresh OAuth grant (access and refresh token), as if a user had just approved the
    /// app; its access token lasts `expires_in` seconds of the sandbox clock (GHL's 86399
    /// when None, and for the tokens issued after it).
    pub fn oauth_grant(&self, expires_in: Option<u64>) -> OAuthGrant {
        let mut state = self.state();
        if let Some(seconds) = expires_in {
            state.oauth.expires_in = seconds;
        }
        oauth::grant(&mut state)
    }

    /// Moves the sandbox clock forward: OAuth tokens expire, new records are dated later.
    pub fn advance_clock(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4);
        self.state().clock.advance(ms);
    }

    // -----------------------------------------------------------------------------------
    // Faults and counters.

    pub fn faults(&self) -> Faults {
        self.state().faults
    }

    /// Replaces the faults in force; rates outside 0..=1 are refused.
    pub fn set_faults(&self, faults: Faults) -> Result<(), SandboxError> {
        faults.check().map_err(SandboxError::Option)?;
        self.state().faults = faults;
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Pushed events.

    /// The public key GHL webhooks are signed with, as base64 DER SubjectPublicKeyInfo
    /// (`MCowBQYDK2VwAyEA...`, the form GHL publishes its own key in).
    pub fn ghl_webhook_public_key(&self) -> String {
        self.state().push.public_key_base64()
    }

    /// The same key as a PEM `PUBLIC KEY` block.
    pub fn ghl_webhook_public_key_pem(&self) -> String {
        self.state().push.public_key_pem()
    }

    /// The legacy RSA public key (base64 DER SubjectPublicKeyInfo) for `X-WH-Signature`,
    /// when the sandbox was started with `ghl_legacy_signature`.
    pub fn ghl_webhook_legacy_public_key(&self) -> Option<String> {
        self.state().push.legacy_public_key_base64()
    }

    /// Where GHL webhooks go from now on (None stops them); a URL that is not http(s) is
    /// refused.
    pub fn set_ghl_webhook_url(&self, url: Option<&str>) -> Result<(), SandboxError> {
        if let Some(url) = url {
            check_webhook_url(url).map_err(SandboxError::Option)?;
        }
        self.state().push.ghl_url = url.map(str::to_owned);
        Ok(())
    }

    pub fn ghl_webhook_url(&self) -> Option<String> {
        self.state().push.ghl_url.clone()
    }

    /// The Capsule REST hooks subscribed, as `GET /resthooks` lists them.
    pub fn capsule_rest_hooks(&self) -> Vec<Value> {
        self.state().push.hooks.iter().map(push::RestHook::json).collect()
    }

    pub fn delivery_faults(&self) -> DeliveryFaults {
        self.state().push.faults
    }

    /// Replaces the delivery faults (a `seed` restarts their generator); rates outside
    /// 0..=1 are refused.
    pub fn set_delivery_faults(&self, faults: DeliveryFaults) -> Result<(), SandboxError> {
        faults.check().map_err(SandboxError::Option)?;
        self.state().push.set_faults(faults);
        Ok(())
    }

    /// Every delivery attempt so far (and every drop), in the order they happened.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        let log = self.state().push.log();
        log.all()
    }

    /// Requests answered by either API so far (the control API not counted).
    pub fn request_count(&self) -> u64 {
        self.state().counts.total
    }

    pub fn request_counts(&self) -> RequestCounts {
        self.state().counts
    }

    /// Every request to either API so far (the newest `REQUEST_LOG_ENTRIES`), in the order
    /// they were taken in: when, which API and budget, method, path, status, and a write's
    /// body.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.state().log.entries()
    }

    /// Milliseconds since the sandbox started, on the clock of `request_log`'s `at_ms`: a
    /// test reads it to split the log at a moment of its own (a kill).
    pub fn elapsed_ms(&self) -> u64 {
        self.state().log.now_ms()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(deliverer) = self.deliverer.take() {
            deliverer.abort();
        }
    }
}
