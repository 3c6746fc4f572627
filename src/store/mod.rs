//! The state store: what must survive a restart, behind one interface.
//!
//! It owns OAuth tokens (a rotated refresh token is durable before it is used), each
//! trigger's position, seen marks and present set, a poll's spill, the id map, leases, and
//! the run journal with its history queries. `StateStore` says what the engine needs of a
//! backend; `Store` is what the engine holds: an enum over the backends (sled, in
//! `sled_backend`, and PostgreSQL, in `postgres`) that dispatches each call.
//!
//! Why a trait with `impl Future + Send` methods and an enum, rather than a trait object:
//! the next backend (PostgreSQL through an async driver) is async, so every method returns a
//! future; `impl Future` methods are not object-safe, and boxing a future per call would put
//! an allocation on the hottest path (one write per step). An enum keeps static dispatch and
//! one concrete, cloneable type in the engine; the trait makes each new backend implement
//! every method, and lets the contract suite (tests/store_contract.rs) run over any backend.
//!
//! The journal: a run is a small header (`RunHeader`: recipe, item id, status, times, error,
//! replays, notes), its trigger item (written once, when the run is created), and step
//! entries keyed by (run, step index), each written when that step changes, so a step costs
//! one small write. `RunRecord` is the assembled view the engine and the CLI read. Every status
//! change goes through `transition`, which checks it against `RunStatus::can_become` and
//! keeps the (recipe, status) index in step with the header in one atomic write.
//!
//! Leases (`acquire_lease`, `renew_lease`, `release_lease`) are for several workers sharing
//! one store (the PostgreSQL backend). On sled only one process opens the store, so they
//! only ever exclude holders within it, but they keep the same rules: a lease is its
//! holder's until it expires (by the wall clock) or is released.

pub mod export;
mod lease;
mod postgres;
mod sled_backend;

use std::future::Future;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use lease::wait_for_lease;
pub use postgres::{MigrationStatus, PgStore};
pub use sled_backend::{FORMAT, SledStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store at {path}: {reason}")]
    Open { path: std::path::PathBuf, reason: String },
    /// The state path is some other folder (not busy: refused).
    #[error("refusing to use {path} as the state store: {reason}")]
    NotStateFolder { path: std::path::PathBuf, reason: String },
    #[error("state store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("state store holds a record it cannot read ({key}): {reason}")]
    Corrupt { key: String, reason: String },
    /// The trigger was reset (or moved) after the poll began: what the poll read belongs to
    /// the old position, so none of it is recorded.
    #[error("the trigger of `{recipe}` was reset while it was polled; the poll's outcome is dropped")]
    TriggerMoved { recipe: String },
    /// A status change the run's life does not allow (see `RunStatus::can_become`).
    #[error("run {run} is {} and cannot become {}", from.as_str(), to.as_str())]
    Transition { run: RunId, from: RunStatus, to: RunStatus },
    /// A journal write for a run the store does not hold.
    #[error("no run {0} in the state store")]
    UnknownRun(RunId),
    /// A PostgreSQL store's failure: the database's own message or ghlflow's (a refused
    /// schema, say). Never built from the URL, so no password reaches it.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// Something this backend cannot do (yet).
    #[error("the {backend} state store cannot {what}")]
    Unsupported { backend: &'static str, what: &'static str },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // A value the database holds that ghlflow cannot read back.
            sqlx::Error::ColumnDecode { index, source } => {
                StoreError::Corrupt { key: format!("column {index}"), reason: source.to_string() }
            }
            other => StoreError::Postgres(other.to_string()),
        }
    }
}

/// A name for this process among the workers sharing a store: host, process id and a random
/// suffix (a restarted process on the same host, with the same pid, is still a new worker).
pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}-{:04x}", std::process::id(), rand::random::<u16>())
}

/// A run's id: `<creation time in Unix ms, 13 digits>-<sequence, 6 digits>`, so ids sort
/// by creation (in the journal's keys as in text).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

/// Why a text is not a run id (a typo on the command line, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a run id (run ids look like 1764495000123-000042; `ghlflow runs list` shows them)")]
pub struct BadRunId(pub String);

impl RunId {
    /// The id of a run created at `ms` (Unix milliseconds), `seq`-th in that process.
    pub fn new(ms: u64, seq: u32) -> RunId {
        RunId(format!("{:013}-{:06}", ms % 10_000_000_000_000, seq % 1_000_000))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Unix milliseconds of the run's creation.
    pub fn created_ms(&self) -> u64 {
        self.0[..13].parse().unwrap_or(0)
    }
}

/// The id of no stored run (a dry run's stand-in): zero time, zero sequence.
impl Default for RunId {
    fn default() -> Self {
        RunId::new(0, 0)
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for RunId {
    type Err = BadRunId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if b.len() == 20 && b[13] == b'-' && digits(0..13) && digits(14..20) {
            Ok(RunId(s.to_owned()))
        } else {
            Err(BadRunId(s.to_owned()))
        }
    }
}

impl TryFrom<String> for RunId {
    type Error = BadRunId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<RunId> for String {
    fn from(id: RunId) -> String {
        id.0
    }
}

impl PartialEq<str> for RunId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for RunId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// The tokens of one OAuth connection, as last received.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredTokens {
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    /// Unix seconds after which the access token is no longer valid.
    pub expires_at: Option<u64>,
    /// What the grant was for (GHL answers with the location or company).
    pub location_id: Option<String>,
    pub company_id: Option<String>,
    pub scope: Option<String>,
}

/// Where a recipe's trigger stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TriggerState {
    /// What the position belongs to (operation, connection, inputs); a change resets it.
    pub fingerprint: String,
    /// The first poll has run (recorded a baseline, or backfilled).
    pub baselined: bool,
    /// The newest record timestamp seen (ISO 8601), for feeds with a `since` filter.
    pub cursor: Option<String>,
    /// The inputs of the page to read next, when the last poll stopped at the page bound.
    pub resume: Option<serde_json::Map<String, serde_json::Value>>,
    /// Unix seconds of the last poll.
    pub last_poll: Option<u64>,
    /// The last poll's error, if it failed.
    pub last_error: Option<String>,
    /// Unix seconds of the last poll that read a whole feed of changes (see the recipe's
    /// `trigger.full_scan_every`).
    #[serde(default)]
    pub last_full_scan: Option<u64>,
    /// Counts the resets of this trigger (`trigger reset`). A poll records its outcome only
    /// if the number is still the one it began with.
    #[serde(default)]
    pub generation: u64,
}

/// A run's state. `held` runs wait for `runs release` or `runs discard`.
/// (`ValueEnum`: the CLI lists and parses statuses from this enum, so none is left out.)
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created by a poll, waiting its turn to run.
    Queued,
    /// Its steps are being sent.
    Running,
    /// Every step succeeded or was skipped by its `if`.
    Succeeded,
    /// A step failed after its retries (`runs replay` resumes it there).
    Failed,
    /// The recipe's filter left the item out; no step ran.
    Filtered,
    /// Part of a batch larger than `hold_above`, waiting for `runs release` or `runs discard`.
    Held,
    /// A held run dropped with `runs discard`.
    Discarded,
    /// A step needs an id another recipe has not recorded yet; resumed at a later poll.
    Waiting,
    /// The process stopped while a step that is not safe to repeat was being sent: whether
    /// it reached the API is unknown, so a person decides (`runs replay` or `runs discard`).
    Unsure,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Filtered => "filtered",
            RunStatus::Held => "held",
            RunStatus::Discarded => "discarded",
            RunStatus::Waiting => "waiting",
            RunStatus::Unsure => "unsure",
        }
    }

    /// Whether the engine still owes work on it.
    pub fn is_open(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    /// The run's life, as `transition` enforces it. Staying in a status is always allowed
    /// (a header update: a note, a replay time). Otherwise:
    /// - queued runs start (running), or fail before a step ran (a crashed task);
    /// - running and queued runs end (succeeded, failed, filtered), wait for an id, or are
    ///   set aside as unsure;
    /// - failed and waiting runs start again (an automatic or manual replay, an id that
    ///   arrived), and failed or unsure ones are queued by `runs replay`;
    /// - held runs are released (queued) or discarded; unsure ones may be discarded;
    /// - succeeded, filtered and discarded runs are final.
    pub fn can_become(self, to: RunStatus) -> bool {
        use RunStatus::*;
        self == to
            || match self {
                Queued | Running => {
                    matches!(to, Running | Succeeded | Failed | Filtered | Waiting | Unsure)
                }
                Failed => matches!(to, Queued | Running),
                Waiting => matches!(to, Running | Failed),
                Unsure => matches!(to, Queued | Discarded),
                Held => matches!(to, Queued | Discarded),
                Succeeded | Filtered | Discarded => false,
            }
    }

    /// Whether the engine is to come back to a run in this state on its own (the open-run
    /// index: queued, running, waiting for an id, or failed with an automatic replay due).
    pub fn is_owed(self, next_replay_at: Option<u64>) -> bool {
        self.is_open() || self == RunStatus::Waiting || next_replay_at.is_some()
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    /// Sent, answer not yet recorded: after a crash the effect may or may not exist.
    Sent,
    Succeeded,
    Failed,
    Skipped,
}

/// One step of a run, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub id: String,
    pub operation: String,
    pub status: StepStatus,
    /// The rendered inputs, with secrets redacted.
    pub input: Option<serde_json::Value>,
    /// The response body.
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    /// How many times it was sent (across replays).
    pub attempts: u32,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub duration_ms: Option<u64>,
}

impl StepRecord {
    /// A step not yet run.
    pub fn pending(id: &str, operation: &str) -> Self {
        StepRecord {
            id: id.to_owned(),
            operation: operation.to_owned(),
            status: StepStatus::Pending,
            input: None,
            output: None,
            error: None,
            attempts: 0,
            started: None,
            finished: None,
            duration_ms: None,
        }
    }
}

/// A run's header in the journal: everything but its trigger item and its steps, which are
/// stored apart (the item once, each step when it changes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunHeader {
    pub id: RunId,
    pub recipe: String,
    pub status: RunStatus,
    pub item_id: Option<String>,
    pub created: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub error: Option<String>,
    #[serde(default)]
    pub replays: u32,
    #[serde(default)]
    pub next_replay_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One item's run through a recipe: the journal's header, item and steps assembled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub id: RunId,
    pub recipe: String,
    pub status: RunStatus,
    /// The trigger item's id (or a content hash for single-record triggers).
    pub item_id: Option<String>,
    /// The trigger item itself.
    pub item: serde_json::Value,
    pub created: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub error: Option<String>,
    /// The recorded steps in step order. Steps that never ran after the last one that did
    /// are not in the journal, so they are not listed here either (the engine lines the
    /// list up with the recipe's steps before it runs).
    pub steps: Vec<StepRecord>,
    /// Automatic replays so far, and when the next one is due (Unix seconds).
    #[serde(default)]
    pub replays: u32,
    #[serde(default)]
    pub next_replay_at: Option<u64>,
    /// What the engine decided along the way that the history should show (an id forgotten
    /// because its record was gone, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl RunRecord {
    /// A run of `item` not started yet, with no step recorded.
    pub fn new(
        id: RunId,
        recipe: &str,
        status: RunStatus,
        item_id: &str,
        item: serde_json::Value,
        created: String,
    ) -> Self {
        RunRecord {
            id,
            recipe: recipe.to_owned(),
            status,
            item_id: Some(item_id.to_owned()),
            item,
            created,
            started: None,
            finished: None,
            error: None,
            steps: Vec::new(),
            replays: 0,
            next_replay_at: None,
            notes: Vec::new(),
        }
    }

    /// The run's header, as the journal stores it.
    pub fn header(&self) -> RunHeader {
        RunHeader {
            id: self.id.clone(),
            recipe: self.recipe.clone(),
            status: self.status,
            item_id: self.item_id.clone(),
            created: self.created.clone(),
            started: self.started.clone(),
            finished: self.finished.clone(),
            error: self.error.clone(),
            replays: self.replays,
            next_replay_at: self.next_replay_at,
            notes: self.notes.clone(),
        }
    }

    /// The run assembled from its journal parts.
    pub fn assemble(h: RunHeader, item: serde_json::Value, steps: Vec<StepRecord>) -> Self {
        RunRecord {
            id: h.id,
            recipe: h.recipe,
            status: h.status,
            item_id: h.item_id,
            item,
            created: h.created,
            started: h.started,
            finished: h.finished,
            error: h.error,
            steps,
            replays: h.replays,
            next_replay_at: h.next_replay_at,
            notes: h.notes,
        }
    }
}
/// What a poll decided, written in one transaction: new runs, seen marks, the trigger state.
#[derive(Debug, Default)]
pub struct PollCommit {
    /// The trigger's generation when the poll began: a reset since then drops the commit.
    pub generation: u64,
    pub runs: Vec<RunRecord>,
    pub seen: Vec<(String, String)>,
    /// The trigger's new position, with the poll's last chunk.
    pub state: Option<TriggerState>,
    /// Spill slots whose records these runs now hold.
    pub spilled: Vec<u64>,
    /// Items that ran and now count as present (`trigger.report_gone`).
    pub joined: Vec<String>,
    /// Items reported gone: no longer present.
    pub left: Vec<String>,
}

/// One instant-trigger delivery's runs for one recipe, written at once (`commit_delivery`).
#[derive(Debug, Default)]
pub struct DeliveryCommit {
    /// The delivery's own id (GHL's `webhookId`), remembered so a replay is refused.
    pub delivery: Option<String>,
    /// Each record's run, with its item id and seen mark. A run whose item is already marked
    /// with a mark covering this one (`mark_covers`) is not recorded.
    pub runs: Vec<(RunRecord, String, String)>,
}

/// A subscription ghlflow made for a recipe's instant trigger (a Capsule REST hook).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSubscription {
    /// The connection it was made on.
    pub connection: String,
    /// The event (`party/updated`).
    pub event: String,
    /// The path token (`/hooks/capsule/<token>`).
    pub token: String,
    /// The address the API was given.
    pub target_url: String,
    /// The hook's id at the API, once it answered.
    pub hook_id: Option<String>,
}

/// Whether an item's recorded mark `seen` covers `mark`: the same mark, or, for change times
/// (`u:<time>`), a recorded time at or after it. An instant-trigger delivery that carries no
/// change time is recorded at its delivery time, so the poll that later reads the same change
/// (its change time earlier than the delivery) does not run it again; a later edit does.
pub fn mark_covers(seen: &str, mark: &str) -> bool {
    if seen == mark {
        return true;
    }
    let time = |m: &str| {
        m.strip_prefix("u:").and_then(|t| crate::template::parse_date(&serde_json::Value::String(t.to_owned())))
    };
    matches!((time(seen), time(mark)), (Some(seen), Some(mark)) if mark <= seen)
}

/// One stored record: tree (or table) name, key, value.
pub type DumpedRecord = (String, Vec<u8>, Vec<u8>);

/// A lease as stored (`leases`): who holds it, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub name: String,
    pub holder: String,
    /// Unix milliseconds at which it lapses unless renewed.
    pub expires_at_ms: u64,
}

/// The answer of `take_request_slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestSlot {
    /// A send may go now; the number names the slot for `settle_request_slot`.
    Taken(u64),
    /// The window is full: try again after this long.
    Wait(std::time::Duration),
}

/// One record of a state export (`ghlflow state export`): everything a store keeps that
/// outlives a process, in a backend-neutral form. Spilled poll records and leases are not
/// exported: they belong to a process in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateRecord {
    Tokens {
        connection: String,
        tokens: StoredTokens,
    },
    Trigger {
        recipe: String,
        state: TriggerState,
    },
    Seen {
        recipe: String,
        item: String,
        mark: String,
    },
    Present {
        recipe: String,
        item: String,
    },
    Id {
        key: String,
        id: String,
    },
    Paused {
        recipe: String,
        since: String,
    },
    Subscriptions {
        subscriptions: Vec<HookSubscription>,
    },
    /// A delivery id and when it was recorded (Unix seconds).
    Delivery {
        id: String,
        at: u64,
    },
    Run {
        run: RunRecord,
    },
}

/// Writes `StateStore` (each method returning a `Send` future), the same methods on `Store`
/// (dispatching to its backend, so callers need no trait import), and `StateStore for Store`
/// (so the contract suite runs over `Store` too), from one list.
macro_rules! store_api {
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        /// What the engine needs of a state backend. Every write is durable after the next
        /// `flush_async` (tokens and trigger resets are flushed before they return).
        pub trait StateStore: Clone + Send + Sync + 'static {
            /// A new run id: later than every id this store handed out before.
            fn next_run_id(&self) -> RunId;
            /// This process's name among the workers sharing the store: the holder of its
            /// leases and the owner of the runs it creates or claims.
            fn worker(&self) -> &str;
            $( $(#[$doc])* fn $name(&self $(, $arg: $ty)*) -> impl Future<Output = Result<$ret, StoreError>> + Send; )*
        }

        impl Store {
            /// A new run id: later than every id this store handed out before.
            pub fn next_run_id(&self) -> RunId {
                match self {
                    Store::Sled(s) => StateStore::next_run_id(s),
                    Store::Postgres(s) => StateStore::next_run_id(s),
                }
            }
            /// This process's name among the workers sharing the store.
            pub fn worker(&self) -> &str {
                match self {
                    Store::Sled(s) => StateStore::worker(s),
                    Store::Postgres(s) => StateStore::worker(s),
                }
            }
            $( $(#[$doc])* pub async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                match self {
                    Store::Sled(s) => StateStore::$name(s $(, $arg)*).await,
                    Store::Postgres(s) => StateStore::$name(s $(, $arg)*).await,
                }
            } )*
        }

        impl StateStore for Store {
            fn next_run_id(&self) -> RunId {
                Store::next_run_id(self)
            }
            fn worker(&self) -> &str {
                Store::worker(self)
            }
            $( fn $name(&self $(, $arg: $ty)*) -> impl Future<Output = Result<$ret, StoreError>> + Send {
                Store::$name(self $(, $arg)*)
            } )*
        }
    };
}

store_api! {
    /// The tokens of `connection`, as last saved.
    fn tokens(&self, connection: &str) -> Option<StoredTokens>;
    /// Saves tokens and waits until they are durable: a rotated refresh token must never be
    /// used before it is, or a crash would lose the only valid one.
    fn save_tokens(&self, connection: &str, tokens: &StoredTokens) -> ();
    /// Waits until everything written so far is durable; concurrent callers share one sync.
    fn flush_async(&self) -> ();

    fn trigger_state(&self, recipe: &str) -> Option<TriggerState>;
    fn save_trigger_state(&self, recipe: &str, state: &TriggerState) -> ();
    /// Resets a recipe's trigger to `state`: its seen marks and present items are forgotten
    /// and the reset is counted (`generation`), so a poll that began before it records
    /// nothing (see `commit_poll`). Durable before it returns.
    fn reset_trigger(&self, recipe: &str, state: TriggerState) -> ();
    /// The seen mark of one item of a recipe's feed (its updated time or content hash).
    fn seen_mark(&self, recipe: &str, item: &str) -> Option<String>;
    /// How many items of a recipe's feed are marked seen.
    fn seen_count(&self, recipe: &str) -> usize;
    /// Forgets a recipe's seen marks and present items; returns how many marks.
    fn forget_seen(&self, recipe: &str) -> usize;
    /// The items of a recipe's feed that ran and have not gone since (`report_gone`).
    fn present_items(&self, recipe: &str) -> std::collections::HashSet<String>;
    /// Records a poll's outcome atomically: its new runs (header, item, index), seen marks,
    /// present set changes, spill slots consumed, and the trigger's new position. A crash
    /// leaves all of it or none. If the trigger's generation is no longer
    /// `commit.generation`, nothing is written and `TriggerMoved` is returned. A run whose
    /// item was marked since the poll read it (by an instant delivery), with a mark covering
    /// the poll's, is left out: its id is returned.
    fn commit_poll(&self, recipe: &str, commit: &PollCommit) -> Vec<RunId>;

    /// Whether a delivery with this id (GHL's `webhookId`) was recorded.
    fn delivery_seen(&self, id: &str) -> bool;
    /// Records an instant delivery's runs for `recipe` atomically: each run not covered by
    /// its item's seen mark, the marks, and the delivery's id. Returns the runs recorded.
    fn commit_delivery(&self, recipe: &str, commit: &DeliveryCommit) -> Vec<RunId>;
    /// Forgets delivery ids recorded before `before_unix` (their timestamps are refused as
    /// stale by then anyway); returns how many.
    fn prune_deliveries(&self, before_unix: u64) -> usize;
    /// When a recipe was paused (`recipe pause`, ISO 8601), if it is.
    fn paused_since(&self, recipe: &str) -> Option<String>;
    /// Pauses a recipe (`Some(since)`) or resumes it (`None`); durable before it returns. Apart
    /// from the trigger state, which a poll in flight writes back whole and `trigger reset`
    /// replaces.
    fn set_paused(&self, recipe: &str, since: Option<&str>) -> ();

    /// The subscriptions ghlflow made at the APIs (Capsule REST hooks).
    fn hook_subscriptions(&self) -> Vec<HookSubscription>;
    /// Replaces the remembered subscriptions; durable before it returns.
    fn save_hook_subscriptions(&self, subscriptions: &[HookSubscription]) -> ();

    /// Keeps a new record of `recipe`'s poll until its run is recorded.
    fn spill_put(&self, recipe: &str, slot: u64, record: &serde_json::Value) -> ();
    fn spill_get(&self, recipe: &str, slot: u64) -> Option<serde_json::Value>;
    /// Forgets what a poll of `recipe` spilled (a poll that crashed or was dropped).
    fn spill_clear(&self, recipe: &str) -> ();

    /// The id remembered under `key` (e.g. the GHL contact id of `party:123`).
    fn id_of(&self, key: &str) -> Option<String>;
    fn remember_id(&self, key: &str, id: &str) -> ();
    /// Forgets what is remembered under `key` (the record it named is gone).
    fn forget_id(&self, key: &str) -> ();

    /// Records new runs outside a poll (`ghlflow test --send`, imports): header, item and
    /// any step not pending, with their index entries, in one atomic write.
    fn create_runs(&self, runs: &[RunRecord]) -> ();
    /// A run assembled from the journal.
    fn run(&self, id: &RunId) -> Option<RunRecord>;
    /// Records step `index` of a run as it now is: one small write.
    fn put_step(&self, run: &RunId, index: usize, step: &StepRecord) -> ();
    /// Replaces every step entry of a run with `steps` (steps that never ran, at the end,
    /// are not stored), in one atomic write: after the steps were lined up with an edited
    /// recipe, or reset.
    fn replace_steps(&self, run: &RunId, steps: &[StepRecord]) -> ();
    /// The one way a run's status (and header) changes: checks the stored status may become
    /// `to` (`RunStatus::can_become`, else `StoreError::Transition`), writes `run`'s header
    /// with status `to` and moves its index entries, atomically; then sets `run.status`.
    fn transition(&self, run: &mut RunRecord, to: RunStatus) -> ();

    /// Runs the engine still owes work on (queued, running, waiting for an id, waiting for an
    /// automatic replay), oldest first.
    fn open_runs(&self) -> Vec<RunRecord>;
    /// A recipe's runs waiting for an id, oldest first.
    fn waiting_runs(&self, recipe: &str) -> Vec<RunRecord>;
    /// Runs of a recipe in one status, oldest first (from the index).
    fn runs_with_status(&self, recipe: &str, status: RunStatus) -> Vec<RunRecord>;
    /// Runs, newest first, optionally of one recipe, at most `limit`.
    fn runs(&self, recipe: Option<&str>, limit: usize) -> Vec<RunRecord>;
    /// Runs, newest first, optionally of one recipe and in one status: at most `limit`, and
    /// how many match in all (counted from the index, no record read).
    fn runs_page(&self, recipe: Option<&str>, status: Option<RunStatus>, limit: usize) -> (Vec<RunRecord>, usize);
    /// Deletes runs created before `cutoff_ms` (Unix ms) that are over (succeeded, filtered,
    /// discarded, or failed with no replay due); runs still owed, held or unsure stay.
    /// Returns how many were deleted.
    fn prune_runs(&self, cutoff_ms: u64) -> usize;

    /// Takes the lease `name` for `holder` for `ttl` if it is free, expired, or `holder`'s
    /// already (then it is extended). Returns whether `holder` now holds it.
    fn acquire_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> bool;
    /// Extends `holder`'s unexpired lease; false if it expired or another holder has it.
    fn renew_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> bool;
    /// Gives the lease up if `holder` holds it; returns whether it did.
    fn release_lease(&self, name: &str, holder: &str) -> bool;
    /// Says this worker is alive: renews its own lease (`worker:<worker>`) and every lease it
    /// holds, for `ttl`. Returns how many workers are alive now, itself included.
    fn heartbeat(&self, ttl: std::time::Duration) -> usize;
    /// Every lease recorded, live or lapsed.
    fn leases(&self) -> Vec<LeaseInfo>;
    /// Open runs (queued or running) that no live worker owns (their worker stopped or
    /// died and its lease lapsed), now owned by this worker, oldest first: it is to resume
    /// them. Each such run is handed to one worker only.
    fn claim_open_runs(&self) -> Vec<RunRecord>;

    /// Takes a send in the shared request budget `budget` (at most `count` sends in any
    /// `interval`, over every worker), or says how long until one fits.
    fn take_request_slot(&self, budget: &str, count: u32, interval: std::time::Duration) -> RequestSlot;
    /// The answer to the send in `slot` arrived: count it from now (the server counted it
    /// somewhere between the send and the answer).
    fn settle_request_slot(&self, budget: &str, slot: u64) -> ();

    /// Everything the store keeps apart from the journal, as export records.
    fn export_state(&self) -> Vec<StateRecord>;
    /// Journal runs in id order, after `after`, at most `limit` (an export walks them).
    fn runs_after(&self, after: Option<&RunId>, limit: usize) -> Vec<RunRecord>;
    /// Writes export records into this store (`ghlflow state import`), atomically per call.
    fn import_state(&self, records: &[StateRecord]) -> ();

    /// Every record, in order: for comparing a store before and after something that must
    /// not change it (a dry run).
    fn dump(&self) -> Vec<DumpedRecord>;
}

/// The state store the engine holds: one of the backends.
#[derive(Clone, Debug)]
pub enum Store {
    Sled(SledStore),
    Postgres(PgStore),
}

impl Store {
    /// Opens the store `ghlflow.yaml` names: the sled folder (created if missing), or the
    /// PostgreSQL database (its schema migrated first; a newer schema is refused).
    pub async fn connect(location: &crate::config::StateLocation) -> Result<Store, StoreError> {
        match location {
            crate::config::StateLocation::Folder(dir) => Store::open(dir),
            crate::config::StateLocation::Postgres(url) => PgStore::connect(url.expose()).await.map(Store::Postgres),
        }
    }

    /// Opens (or creates) the sled store in `dir`, owner-only, migrating an older format.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        SledStore::open(dir).map(Store::Sled)
    }

    /// A store in a fresh temporary directory that disappears with the process (tests, demo).
    pub fn temporary() -> Result<Store, StoreError> {
        SledStore::temporary().map(Store::Sled)
    }

    /// Whether other processes may use the store at the same time (PostgreSQL): request
    /// budgets and OAuth refreshes are then shared through it.
    pub fn is_shared(&self) -> bool {
        match self {
            Store::Sled(_) => false,
            Store::Postgres(_) => true,
        }
    }

    /// The format of the store's contents: sled's `FORMAT`, or the PostgreSQL schema
    /// version (its newest migration) applied when the store connected.
    pub fn format(&self) -> Result<Option<u32>, StoreError> {
        match self {
            Store::Sled(s) => s.format(),
            Store::Postgres(s) => Ok(u32::try_from(s.schema_version()).ok()),
        }
    }

    /// Waits until everything written so far is durable, blocking the thread (sync paths).
    pub fn flush(&self) -> Result<(), StoreError> {
        match self {
            Store::Sled(s) => s.flush(),
            // Every PostgreSQL write is a committed transaction when it returns.
            Store::Postgres(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod mark_tests {
    use super::mark_covers;

    #[test]
    fn a_mark_covers_itself_and_change_times_up_to_its_own() {
        assert!(mark_covers("seen", "seen"));
        assert!(mark_covers("u:2026-03-01T10:00:00Z", "u:2026-03-01T10:00:00Z"));
        // A delivery recorded at 10:00:05 (its time, with an offset) covers the change at 10:00:00...
        assert!(mark_covers("u:2026-03-01T11:00:05+01:00", "u:2026-03-01T10:00:00.000Z"));
        // ...and not the next edit, nor an unreadable time, nor content hashes that differ.
        assert!(!mark_covers("u:2026-03-01T10:00:05Z", "u:2026-03-01T10:07:00Z"));
        assert!(!mark_covers("u:soon", "u:2026-03-01T10:00:00Z"));
        assert!(!mark_covers("u:", "u:2026-03-01T10:00:00Z"));
        assert!(!mark_covers("ab12", "cd34"));
    }
}
