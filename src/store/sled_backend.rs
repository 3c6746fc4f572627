//! The sled backend: one sled tree per kind of record, JSON values.
//!
//! The journal's trees: `run_items` (run id → trigger item), `run_steps` (run id, 0, step
//! index as 4 big-endian bytes → `StepRecord`), and `run_journal`, which holds the headers
//! (`h` id → `RunHeader`), the index (empty values: `r` recipe 0 id; `b` recipe 0 status 0
//! id; `k` recipe, for each recipe that has runs) and the open marks (`o` id → recipe: the runs the engine still owes
//! work on). Headers, index and marks share one tree so that a status change is one atomic
//! sled batch: a multi-tree transaction per step of a run cost more CPU than the run's
//! HTTP. Status changes are serialized by a mutex (one process opens a sled store), so the
//! read-check-write of `transition` is atomic too.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Serialize, de::DeserializeOwned};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::{
    DeliveryCommit, DumpedRecord, HookSubscription, LeaseInfo, PollCommit, RequestSlot, RunHeader, RunId, RunRecord,
    RunStatus, StateRecord, StateStore, StepRecord, StepStatus, StoreError, StoredTokens, TriggerState,
};

/// sled's page cache. Its default (1 GiB) lets a long history fill the process's memory;
/// runs are read back by id and rarely twice, so a small cache costs little.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    tokens: sled::Tree,
    triggers: sled::Tree,
    seen: sled::Tree,
    /// Headers, index entries and open marks (see the module doc).
    journal: sled::Tree,
    items: sled::Tree,
    steps: sled::Tree,
    /// Held while a run's header is read, checked and rewritten (`transition`, pruning).
    headers: Arc<std::sync::Mutex<()>>,
    ids: sled::Tree,
    /// Per recipe with `report_gone`: the items that ran and have not gone since.
    present: sled::Tree,
    /// A poll's new records, between the page that brought them and their runs.
    spill: sled::Tree,
    leases: sled::Tree,
    /// Delivery ids (GHL `webhookId`) and when each was recorded (Unix seconds, big-endian).
    deliveries: sled::Tree,
    /// ghlflow's own subscriptions at the APIs, one JSON list.
    subscriptions: sled::Tree,
    /// Paused recipes, and since when.
    paused: sled::Tree,
    sequence: Arc<AtomicU64>,
    flushes: Arc<FlushGate>,
    /// This process's worker name (see `StateStore::worker`).
    worker: Arc<str>,
    /// Whether the open runs left by an earlier process were handed out (`claim_open_runs`):
    /// only one process opens a sled store, so those are the only runs without a live owner.
    claimed: Arc<std::sync::atomic::AtomicBool>,
    /// Request budgets, kept in memory: one process is the only sender on a sled store.
    request_slots: Arc<std::sync::Mutex<RequestLog>>,
}

/// The sends of each request budget: (slot, Unix ms counted from), oldest first.
#[derive(Debug, Default)]
struct RequestLog {
    next_slot: u64,
    budgets: std::collections::HashMap<String, std::collections::VecDeque<(u64, u64)>>,
}

/// Group commit for `flush_async`: one sled flush runs at a time, and every caller that
/// arrives while it runs is covered by the single flush that starts next.
#[derive(Debug, Default)]
struct FlushGate {
    /// Flushes begun so far; a flush numbered above a caller's reading begins after its writes.
    begun: AtomicU64,
    /// The number of the last flush that succeeded. Held while a flush runs.
    done: tokio::sync::Mutex<u64>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

/// Why a transaction was abandoned: the trigger was reset under a poll.
#[derive(Debug)]
struct Moved;

type TxResult<T> = Result<T, ConflictableTransactionError<Moved>>;

fn tx_error(e: TransactionError<Moved>, recipe: &str) -> StoreError {
    match e {
        TransactionError::Storage(e) => StoreError::Sled(e),
        TransactionError::Abort(Moved) => StoreError::TriggerMoved { recipe: recipe.into() },
    }
}

fn step_prefix(run: &RunId) -> Vec<u8> {
    let mut k = run.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

fn step_key(run: &RunId, index: usize) -> Vec<u8> {
    let mut k = step_prefix(run);
    k.extend_from_slice(&(index as u32).to_be_bytes());
    k
}

fn head_key(id: &RunId) -> Vec<u8> {
    with_id(vec![b'h'], id)
}

fn open_key(id: &RunId) -> Vec<u8> {
    with_id(vec![b'o'], id)
}

fn index_recipe(recipe: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(recipe.len() + 22);
    k.push(b'r');
    k.extend_from_slice(recipe.as_bytes());
    k.push(0);
    k
}

/// The key that names a recipe as having runs (`k` recipe): the runs of one status across
/// recipes are read from each recipe's (recipe, status) entries, so a status change moves
/// two index entries, not four.
fn recipe_key(recipe: &str) -> Vec<u8> {
    let mut k = vec![b'k'];
    k.extend_from_slice(recipe.as_bytes());
    k
}

fn index_both(recipe: &str, status: RunStatus) -> Vec<u8> {
    let mut k = vec![b'b'];
    k.extend_from_slice(recipe.as_bytes());
    k.push(0);
    k.extend_from_slice(status.as_str().as_bytes());
    k.push(0);
    k
}

fn with_id(mut prefix: Vec<u8>, id: &RunId) -> Vec<u8> {
    prefix.extend_from_slice(id.as_str().as_bytes());
    prefix
}

/// The run ids under an index prefix, in id order.
fn ids_under(index: &sled::Tree, prefix: &[u8]) -> impl DoubleEndedIterator<Item = Result<RunId, StoreError>> + use<> {
    let len = prefix.len();
    index.scan_prefix(prefix).keys().map(move |k| {
        let k = k?;
        let text = String::from_utf8_lossy(&k[len..]).into_owned();
        text.parse::<RunId>().map_err(|e| StoreError::Corrupt { key: "run_index".into(), reason: e.to_string() })
    })
}

impl SledStore {
    /// Writes new runs, all or none (see `write_new_run`).
    fn write_new_runs(&self, runs: &[EncodedRun]) -> Result<(), StoreError> {
        (&self.journal, &self.items, &self.steps)
            .transaction(|(journal, items, steps)| {
                for run in runs {
                    write_new_run(journal, items, steps, run)?;
                }
                Ok(())
            })
            .map_err(|e| tx_error(e, ""))
    }
}

/// Writes a new run (header, item, steps not pending, index entries, open mark) into a
/// transaction.
fn write_new_run(
    journal: &TransactionalTree,
    items: &TransactionalTree,
    steps: &TransactionalTree,
    run: &EncodedRun,
) -> TxResult<()> {
    journal.insert(head_key(&run.id), run.header.as_slice())?;
    items.insert(run.id.as_str().as_bytes(), run.item.as_slice())?;
    for (key, value) in &run.steps {
        steps.insert(key.as_slice(), value.as_slice())?;
    }
    journal.insert(with_id(index_recipe(&run.recipe), &run.id), &[])?;
    journal.insert(recipe_key(&run.recipe), &[])?;
    journal.insert(with_id(index_both(&run.recipe, run.status), &run.id), &[])?;
    if run.owed {
        journal.insert(open_key(&run.id), run.recipe.as_bytes())?;
    }
    Ok(())
}

/// The steps the journal stores of a list: up to the last one that ever ran (a step reset
/// to pending by a replay keeps its attempts, so it is stored). The entries of a run are so
/// always steps 0 to n, and the assembled list's positions are their keys.
fn recorded(steps: &[StepRecord]) -> &[StepRecord] {
    let never_ran =
        |s: &StepRecord| s.status == StepStatus::Pending && s.attempts == 0 && s.input.is_none() && s.started.is_none();
    let end = steps.iter().rposition(|s| !never_ran(s)).map_or(0, |i| i + 1);
    &steps[..end]
}

/// A new run, encoded before its transaction (which may run more than once).
struct EncodedRun {
    id: RunId,
    recipe: String,
    status: RunStatus,
    owed: bool,
    header: Vec<u8>,
    item: Vec<u8>,
    steps: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EncodedRun {
    fn of(run: &RunRecord) -> Result<EncodedRun, StoreError> {
        let key = run.id.as_str();
        Ok(EncodedRun {
            id: run.id.clone(),
            recipe: run.recipe.clone(),
            status: run.status,
            owed: run.status.is_owed(run.next_replay_at),
            header: to_bytes(key, &run.header())?,
            item: to_bytes(key, &run.item)?,
            steps: recorded(&run.steps)
                .iter()
                .enumerate()
                .map(|(i, s)| Ok((step_key(&run.id, i), to_bytes(key, s)?)))
                .collect::<Result<_, StoreError>>()?,
        })
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, owner-only.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let fail = |reason: String| StoreError::Open { path: dir.to_path_buf(), reason };
        check_state_folder(dir).map_err(|reason| StoreError::NotStateFolder { path: dir.to_path_buf(), reason })?;
        // Every file this process creates from here on (sled's segments and snapshots, written
        // at any time later, the control socket) is its owner's only: the store holds tokens.
        #[cfg(unix)]
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        restrict_to_owner(dir).map_err(|e| fail(e.to_string()))?;
        if !dir.join(MARKER).exists() {
            std::fs::write(dir.join(MARKER), MARKER_TEXT).map_err(|e| fail(e.to_string()))?;
        }
        let db = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).open().map_err(|e| {
            let text = e.to_string();
            if text.contains("WouldBlock") || text.contains("lock") {
                fail("another ghlflow process is using it (is `ghlflow run` running?)".into())
            } else {
                fail(text)
            }
        })?;
        restrict_files_to_owner(dir);
        migrate(&db, dir)?;
        Self::from_db(db)
    }

    /// The format of the store's contents (see `FORMAT`).
    pub fn format(&self) -> Result<Option<u32>, StoreError> {
        format_of(&self.db)
    }

    /// A store in a fresh temporary directory that disappears with the process (tests, demo).
    pub fn temporary() -> Result<SledStore, StoreError> {
        let db = sled::Config::new().temporary(true).cache_capacity(CACHE_BYTES).open()?;
        migrate(&db, Path::new("a temporary store"))?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<SledStore, StoreError> {
        // Only one process opens a sled store at a time, so every lease recorded belongs to a
        // process that is gone (killed, say): none of them holds anything any more.
        db.open_tree("leases")?.clear()?;
        Ok(SledStore {
            tokens: db.open_tree("tokens")?,
            triggers: db.open_tree("triggers")?,
            seen: db.open_tree("seen")?,
            journal: db.open_tree("run_journal")?,
            items: db.open_tree("run_items")?,
            steps: db.open_tree("run_steps")?,
            headers: Arc::default(),
            ids: db.open_tree("id_map")?,
            present: db.open_tree("present")?,
            spill: db.open_tree("poll_spill")?,
            leases: db.open_tree("leases")?,
            deliveries: db.open_tree("hook_deliveries")?,
            subscriptions: db.open_tree("hook_subscriptions")?,
            paused: db.open_tree("paused_recipes")?,
            sequence: Arc::new(AtomicU64::new(0)),
            flushes: Arc::default(),
            worker: super::worker_name().into(),
            claimed: Arc::default(),
            request_slots: Arc::default(),
            db,
        })
    }

    /// Waits until everything written so far is on disk, blocking the thread.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn header(&self, id: &RunId) -> Result<Option<RunHeader>, StoreError> {
        match self.journal.get(head_key(id))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { key: format!("header of run {id}"), reason: e.to_string() }),
        }
    }

    fn assemble(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        let Some(header) = self.header(id)? else { return Ok(None) };
        let item = get_json(&self.items, id.as_str())?.unwrap_or(serde_json::Value::Null);
        let mut steps = Vec::new();
        for value in self.steps.scan_prefix(step_prefix(id)).values() {
            let value = value?;
            steps.push(
                serde_json::from_slice(&value)
                    .map_err(|e| StoreError::Corrupt { key: format!("step of run {id}"), reason: e.to_string() })?,
            );
        }
        Ok(Some(RunRecord::assemble(header, item, steps)))
    }

    fn assemble_all(&self, ids: impl Iterator<Item = Result<RunId, StoreError>>) -> Result<Vec<RunRecord>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            if let Some(run) = self.assemble(&id?)? {
                out.push(run);
            }
        }
        Ok(out)
    }

    /// The ids of an index prefix (or of every run), newest first: at most `limit` of them
    /// and how many there are.
    fn page_ids(&self, prefix: Option<Vec<u8>>, limit: usize) -> Result<(Vec<RunId>, usize), StoreError> {
        let ids = ids_under(&self.journal, &prefix.unwrap_or_else(|| vec![b'h']));
        let (mut out, mut total) = (Vec::new(), 0);
        for id in ids.rev() {
            total += 1;
            if out.len() < limit {
                out.push(id?);
            }
        }
        Ok((out, total))
    }

    /// The recipes that have (or had) runs.
    fn recipes(&self) -> Result<Vec<String>, StoreError> {
        self.journal.scan_prefix(b"k").keys().map(|k| Ok(String::from_utf8_lossy(&k?[1..]).into_owned())).collect()
    }

    /// Deletes one run whole: header, item, steps, index entries, open mark.
    fn delete_run(&self, header: &RunHeader) -> Result<(), StoreError> {
        let step_keys: Vec<sled::IVec> =
            self.steps.scan_prefix(step_prefix(&header.id)).keys().collect::<Result<_, _>>()?;
        (&self.journal, &self.items, &self.steps)
            .transaction(|(journal, items, steps)| {
                journal.remove(head_key(&header.id))?;
                journal.remove(open_key(&header.id))?;
                journal.remove(with_id(index_recipe(&header.recipe), &header.id))?;
                journal.remove(with_id(index_both(&header.recipe, header.status), &header.id))?;
                items.remove(header.id.as_str().as_bytes())?;
                for k in &step_keys {
                    steps.remove(k)?;
                }
                Ok(())
            })
            .map_err(|e: TransactionError<Moved>| tx_error(e, &header.recipe))
    }

    /// The lease record of `name`, if it is held and not expired at `now_ms`.
    fn live_lease(&self, name: &str, now_ms: u64) -> Result<Option<Lease>, StoreError> {
        Ok(get_json::<Lease>(&self.leases, name)?.filter(|l| l.expires_ms > now_ms))
    }
}

/// Who holds a lease, until when (Unix ms).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Lease {
    holder: String,
    expires_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl StateStore for SledStore {
    fn next_run_id(&self) -> RunId {
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed) % 1_000_000;
        RunId::new(now_ms(), seq as u32)
    }

    fn worker(&self) -> &str {
        &self.worker
    }

    async fn tokens(&self, connection: &str) -> Result<Option<StoredTokens>, StoreError> {
        get_json(&self.tokens, connection)
    }

    async fn save_tokens(&self, connection: &str, tokens: &StoredTokens) -> Result<(), StoreError> {
        put_json(&self.tokens, connection, tokens)?;
        self.flush_async().await
    }

    /// Not sled's own `flush_async`: in sled 0.34 it runs the blocking flush on sled's small
    /// IO thread pool, where the buffer writes it waits for are queued too, so a handful of
    /// concurrent callers deadlock (spacejam/sled#1308, fixed only on sled's unreleased main).
    /// The same blocking flush on tokio's blocking pool leaves sled's pool free to write.
    ///
    /// Flushes are grouped (see `FlushGate`): sled alone seals and syncs a log buffer for
    /// nearly every caller, which made three flushes per run the bulk of a run's CPU.
    async fn flush_async(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        // An RMW rather than a load, so the flush that next increments `begun` is ordered
        // after this caller's writes.
        let seen = self.flushes.begun.fetch_add(0, SeqCst);
        let mut done = self.flushes.done.lock().await;
        if *done > seen {
            return Ok(()); // a flush that began after this call has succeeded
        }
        let number = self.flushes.begun.fetch_add(1, SeqCst) + 1;
        let db = self.db.clone();
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(flushed) => {
                flushed?;
                crate::metrics::metrics().flushed(started.elapsed());
                *done = number;
                Ok(())
            }
            Err(e) => Err(StoreError::Sled(sled::Error::ReportableBug(format!("flush task failed: {e}")))),
        }
    }

    // --- triggers -------------------------------------------------------------------

    async fn trigger_state(&self, recipe: &str) -> Result<Option<TriggerState>, StoreError> {
        get_json(&self.triggers, recipe)
    }

    async fn save_trigger_state(&self, recipe: &str, state: &TriggerState) -> Result<(), StoreError> {
        put_json(&self.triggers, recipe, state)
    }

    async fn reset_trigger(&self, recipe: &str, mut state: TriggerState) -> Result<(), StoreError> {
        let before = self.trigger_state(recipe).await?.map_or(0, |s| s.generation);
        state.generation = before + 1;
        self.forget_seen(recipe).await?;
        self.save_trigger_state(recipe, &state).await?;
        self.flush_async().await
    }

    async fn seen_mark(&self, recipe: &str, item: &str) -> Result<Option<String>, StoreError> {
        Ok(self.seen.get(seen_key(recipe, item))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// A new position starts with a new baseline, so a feed replaced by another never
    /// reports the old one's items gone: the present set goes with the marks.
    async fn forget_seen(&self, recipe: &str) -> Result<usize, StoreError> {
        let n = remove_prefix(&self.seen, &seen_key(recipe, ""))?;
        remove_prefix(&self.present, &seen_key(recipe, ""))?;
        Ok(n)
    }

    async fn present_items(&self, recipe: &str) -> Result<std::collections::HashSet<String>, StoreError> {
        let prefix = seen_key(recipe, "");
        self.present
            .scan_prefix(&prefix)
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?[prefix.len()..]).into_owned()))
            .collect()
    }

    async fn commit_poll(&self, recipe: &str, commit: &PollCommit) -> Result<Vec<RunId>, StoreError> {
        let runs: Vec<EncodedRun> = commit.runs.iter().map(EncodedRun::of).collect::<Result<_, _>>()?;
        let state = commit.state.as_ref().map(|s| to_bytes(recipe, s)).transpose()?;
        let marks: std::collections::HashMap<&str, &str> =
            commit.seen.iter().map(|(item, mark)| (item.as_str(), mark.as_str())).collect();
        (&self.journal, &self.items, &self.steps, &self.seen, &self.triggers, &self.present, &self.spill)
            .transaction(|(journal, items, steps, seen_t, triggers_t, present_t, spill_t)| {
                let stored = triggers_t.get(recipe.as_bytes())?;
                let generation =
                    stored.and_then(|b| serde_json::from_slice::<TriggerState>(&b).ok()).map_or(0, |s| s.generation);
                if generation != commit.generation {
                    return Err(ConflictableTransactionError::Abort(Moved));
                }
                for slot in &commit.spilled {
                    spill_t.remove(spill_key(recipe, *slot))?;
                }
                let mut covered = Vec::new();
                for (run, record) in runs.iter().zip(&commit.runs) {
                    let item = record.item_id.as_deref().unwrap_or_default();
                    // Marked since the poll read it: an instant delivery ran it first.
                    if let Some(mark) = marks.get(item)
                        && let Some(prior) = seen_t.get(seen_key(recipe, item))?
                        && super::mark_covers(&String::from_utf8_lossy(&prior), mark)
                    {
                        covered.push(record.id.clone());
                        continue;
                    }
                    write_new_run(journal, items, steps, run)?;
                }
                for (item, mark) in &commit.seen {
                    let key = seen_key(recipe, item);
                    // Never moves a mark back (a delivery's may be newer than the poll's read).
                    if let Some(prior) = seen_t.get(&key)?
                        && super::mark_covers(&String::from_utf8_lossy(&prior), mark)
                    {
                        continue;
                    }
                    seen_t.insert(key, mark.as_bytes())?;
                }
                for item in &commit.joined {
                    present_t.insert(seen_key(recipe, item), &[])?;
                }
                for item in &commit.left {
                    present_t.remove(seen_key(recipe, item))?;
                }
                if let Some(state) = &state {
                    triggers_t.insert(recipe.as_bytes(), state.as_slice())?;
                }
                Ok(covered)
            })
            .map_err(|e| tx_error(e, recipe))
    }

    // --- instant deliveries -------------------------------------------------------------

    async fn delivery_seen(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.deliveries.contains_key(id.as_bytes())?)
    }

    async fn commit_delivery(&self, recipe: &str, commit: &DeliveryCommit) -> Result<Vec<RunId>, StoreError> {
        let runs: Vec<EncodedRun> = commit.runs.iter().map(|(r, _, _)| EncodedRun::of(r)).collect::<Result<_, _>>()?;
        let now = crate::http::auth::unix_now().to_be_bytes();
        (&self.journal, &self.items, &self.steps, &self.seen, &self.deliveries)
            .transaction(|(journal, items, steps, seen_t, deliveries)| {
                let mut recorded = Vec::new();
                for (run, (record, item, mark)) in runs.iter().zip(&commit.runs) {
                    let key = seen_key(recipe, item);
                    if let Some(prior) = seen_t.get(&key)?
                        && super::mark_covers(&String::from_utf8_lossy(&prior), mark)
                    {
                        continue; // ran already, by a poll or an earlier delivery
                    }
                    write_new_run(journal, items, steps, run)?;
                    seen_t.insert(key, mark.as_bytes())?;
                    recorded.push(record.id.clone());
                }
                if let Some(id) = &commit.delivery {
                    deliveries.insert(id.as_bytes(), &now)?;
                }
                Ok(recorded)
            })
            .map_err(|e| tx_error(e, recipe))
    }

    async fn prune_deliveries(&self, before_unix: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        for entry in self.deliveries.iter() {
            let (key, at) = entry?;
            let at = <[u8; 8]>::try_from(at.as_ref()).map(u64::from_be_bytes).unwrap_or(0);
            if at < before_unix {
                self.deliveries.remove(key)?;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn seen_count(&self, recipe: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for key in self.seen.scan_prefix(seen_key(recipe, "")).keys() {
            key?;
            n += 1;
        }
        Ok(n)
    }

    async fn paused_since(&self, recipe: &str) -> Result<Option<String>, StoreError> {
        Ok(self.paused.get(recipe.as_bytes())?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    async fn set_paused(&self, recipe: &str, since: Option<&str>) -> Result<(), StoreError> {
        match since {
            Some(since) => self.paused.insert(recipe.as_bytes(), since.as_bytes())?,
            None => self.paused.remove(recipe.as_bytes())?,
        };
        self.flush_async().await
    }

    async fn hook_subscriptions(&self) -> Result<Vec<HookSubscription>, StoreError> {
        Ok(get_json(&self.subscriptions, "all")?.unwrap_or_default())
    }

    async fn save_hook_subscriptions(&self, subscriptions: &[HookSubscription]) -> Result<(), StoreError> {
        put_json(&self.subscriptions, "all", &subscriptions)?;
        self.flush_async().await
    }

    // --- the poll spill ---------------------------------------------------------------

    async fn spill_put(&self, recipe: &str, slot: u64, record: &serde_json::Value) -> Result<(), StoreError> {
        self.spill.insert(spill_key(recipe, slot), to_bytes(recipe, record)?)?;
        Ok(())
    }

    async fn spill_get(&self, recipe: &str, slot: u64) -> Result<Option<serde_json::Value>, StoreError> {
        match self.spill.get(spill_key(recipe, slot))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { key: format!("spill of {recipe}"), reason: e.to_string() }),
        }
    }

    async fn spill_clear(&self, recipe: &str) -> Result<(), StoreError> {
        remove_prefix(&self.spill, &seen_key(recipe, ""))?;
        Ok(())
    }

    // --- the id map -----------------------------------------------------------------

    async fn id_of(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.ids.get(key.as_bytes())?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    async fn remember_id(&self, key: &str, id: &str) -> Result<(), StoreError> {
        self.ids.insert(key.as_bytes(), id.as_bytes())?;
        Ok(())
    }

    async fn forget_id(&self, key: &str) -> Result<(), StoreError> {
        self.ids.remove(key.as_bytes())?;
        Ok(())
    }

    // --- the journal ------------------------------------------------------------------

    async fn create_runs(&self, runs: &[RunRecord]) -> Result<(), StoreError> {
        let runs: Vec<EncodedRun> = runs.iter().map(EncodedRun::of).collect::<Result<_, _>>()?;
        self.write_new_runs(&runs)
    }

    async fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        self.assemble(id)
    }

    async fn put_step(&self, run: &RunId, index: usize, step: &StepRecord) -> Result<(), StoreError> {
        self.steps.insert(step_key(run, index), to_bytes(run.as_str(), step)?)?;
        Ok(())
    }

    async fn replace_steps(&self, run: &RunId, steps: &[StepRecord]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.steps.scan_prefix(step_prefix(run)).keys() {
            batch.remove(key?);
        }
        for (i, step) in recorded(steps).iter().enumerate() {
            batch.insert(step_key(run, i), to_bytes(run.as_str(), step)?);
        }
        self.steps.apply_batch(batch)?;
        Ok(())
    }

    async fn transition(&self, run: &mut RunRecord, to: RunStatus) -> Result<(), StoreError> {
        let mut header = run.header();
        header.status = to;
        let bytes = to_bytes(run.id.as_str(), &header)?;
        let id = &header.id;
        let refused = |from| StoreError::Transition { run: id.clone(), from, to };
        {
            let _serial = self.headers.lock().unwrap_or_else(|p| p.into_inner());
            let stored = self.header(id)?.ok_or_else(|| StoreError::UnknownRun(id.clone()))?;
            let from = stored.status;
            if !from.can_become(to) {
                return Err(refused(from));
            }
            if stored.recipe != header.recipe {
                // A run never changes recipe: its index entries are under the stored one.
                return Err(StoreError::Corrupt {
                    key: format!("header of run {id}"),
                    reason: format!("recipe `{}` rewritten as `{}`", stored.recipe, header.recipe),
                });
            }
            let mut batch = sled::Batch::default();
            batch.insert(head_key(id), bytes);
            if from != to {
                batch.remove(with_id(index_both(&header.recipe, from), id));
                batch.insert(with_id(index_both(&header.recipe, to), id), &[]);
            }
            // A running run was owed already (queued, or resumed from the marks): no write.
            let (was, now) = (from.is_owed(stored.next_replay_at), to.is_owed(header.next_replay_at));
            if now && !was {
                batch.insert(open_key(id), header.recipe.as_bytes());
            } else if was && !now {
                batch.remove(open_key(id));
            }
            self.journal.apply_batch(batch)?;
        }
        run.status = to;
        Ok(())
    }

    // --- history ----------------------------------------------------------------------

    async fn open_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.assemble_all(ids_under(&self.journal, b"o"))
    }

    async fn waiting_runs(&self, recipe: &str) -> Result<Vec<RunRecord>, StoreError> {
        self.runs_with_status(recipe, RunStatus::Waiting).await
    }

    async fn runs_with_status(&self, recipe: &str, status: RunStatus) -> Result<Vec<RunRecord>, StoreError> {
        self.assemble_all(ids_under(&self.journal, &index_both(recipe, status)))
    }

    async fn runs(&self, recipe: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let (ids, _) = self.page_ids(recipe.map(index_recipe), limit)?;
        self.assemble_all(ids.into_iter().map(Ok))
    }

    async fn runs_page(
        &self,
        recipe: Option<&str>,
        status: Option<RunStatus>,
        limit: usize,
    ) -> Result<(Vec<RunRecord>, usize), StoreError> {
        let (ids, total) = match (recipe, status) {
            (None, None) => self.page_ids(None, limit)?,
            (Some(r), None) => self.page_ids(Some(index_recipe(r)), limit)?,
            (Some(r), Some(s)) => self.page_ids(Some(index_both(r, s)), limit)?,
            (None, Some(s)) => {
                // Each recipe's runs in `s`, newest first, merged.
                let mut lists: Vec<_> = self
                    .recipes()?
                    .iter()
                    .map(|r| ids_under(&self.journal, &index_both(r, s)).rev().peekable())
                    .collect();
                let (mut out, mut total) = (Vec::new(), 0);
                loop {
                    let mut newest: Option<(usize, RunId)> = None;
                    for (i, list) in lists.iter_mut().enumerate() {
                        match list.peek() {
                            Some(Ok(id)) if newest.as_ref().is_none_or(|(_, n)| id > n) => {
                                newest = Some((i, id.clone()))
                            }
                            Some(Err(_)) => {
                                return Err(list.next().and_then(Result::err).unwrap_or_else(|| StoreError::Corrupt {
                                    key: "run_journal".into(),
                                    reason: "unreadable index entry".into(),
                                }));
                            }
                            _ => {}
                        }
                    }
                    let Some((i, id)) = newest else { break };
                    lists[i].next();
                    total += 1;
                    if out.len() < limit {
                        out.push(id);
                    }
                }
                (out, total)
            }
        };
        Ok((self.assemble_all(ids.into_iter().map(Ok))?, total))
    }

    async fn prune_runs(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        // Only the statuses that end a run, from the index: no history scan, and the runs
        // still owed, held or unsure are never even read.
        let ended = [RunStatus::Succeeded, RunStatus::Filtered, RunStatus::Discarded, RunStatus::Failed];
        for (recipe, status) in self.recipes()?.iter().flat_map(|r| ended.map(|s| (r.clone(), s))) {
            let ids: Vec<RunId> = ids_under(&self.journal, &index_both(&recipe, status))
                .take_while(|id| id.as_ref().map_or(true, |id| id.created_ms() < cutoff_ms))
                .collect::<Result<_, _>>()?;
            for id in ids {
                // Read and deleted under the header lock: a replay may have queued it since.
                let _serial = self.headers.lock().unwrap_or_else(|p| p.into_inner());
                let Some(header) = self.header(&id)? else { continue };
                if header.status != status || header.status.is_owed(header.next_replay_at) {
                    continue; // a failed run with an automatic replay due, or replayed
                }
                self.delete_run(&header)?;
                n += 1;
            }
        }
        Ok(n)
    }

    // --- leases -----------------------------------------------------------------------

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        let now = now_ms();
        let expires_ms = now + ttl.as_millis() as u64;
        let value = to_bytes(name, &Lease { holder: holder.to_owned(), expires_ms })?;
        // Compare-and-swap against the record read: another holder taking it in between
        // makes the swap fail, and the lease is re-read.
        loop {
            let current = self.leases.get(name.as_bytes())?;
            if let Some(bytes) = &current {
                let lease: Lease = serde_json::from_slice(bytes)
                    .map_err(|e| StoreError::Corrupt { key: format!("leases/{name}"), reason: e.to_string() })?;
                if lease.holder != holder && lease.expires_ms > now {
                    return Ok(false);
                }
            }
            match self.leases.compare_and_swap(name.as_bytes(), current, Some(value.as_slice()))? {
                Ok(()) => return Ok(true),
                Err(_) => continue,
            }
        }
    }

    async fn renew_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        match self.live_lease(name, now_ms())? {
            Some(lease) if lease.holder == holder => self.acquire_lease(name, holder, ttl).await,
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let Some(current) = self.leases.get(name.as_bytes())? else { return Ok(false) };
        let lease: Lease = serde_json::from_slice(&current)
            .map_err(|e| StoreError::Corrupt { key: format!("leases/{name}"), reason: e.to_string() })?;
        if lease.holder != holder {
            return Ok(false);
        }
        Ok(self.leases.compare_and_swap(name.as_bytes(), Some(current), None::<&[u8]>)?.is_ok())
    }

    async fn heartbeat(&self, ttl: std::time::Duration) -> Result<usize, StoreError> {
        let own = format!("worker:{}", self.worker);
        self.acquire_lease(&own, &self.worker, ttl).await?;
        let now = now_ms();
        let mut alive = 0;
        for lease in self.leases().await? {
            if lease.holder == *self.worker && lease.expires_at_ms > now && lease.name != own {
                self.renew_lease(&lease.name, &self.worker, ttl).await?;
            }
            if lease.name.starts_with("worker:") && lease.expires_at_ms > now {
                alive += 1;
            }
        }
        Ok(alive)
    }

    async fn leases(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        let mut out = Vec::new();
        for entry in self.leases.iter() {
            let (k, v) = entry?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let lease: Lease = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt { key: format!("leases/{name}"), reason: e.to_string() })?;
            out.push(LeaseInfo { name, holder: lease.holder, expires_at_ms: lease.expires_ms });
        }
        Ok(out)
    }

    async fn claim_open_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        if self.claimed.swap(true, Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        Ok(self.open_runs().await?.into_iter().filter(|r| r.status.is_open()).collect())
    }

    async fn take_request_slot(
        &self,
        budget: &str,
        count: u32,
        interval: std::time::Duration,
    ) -> Result<RequestSlot, StoreError> {
        let mut log = self.request_slots.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        let window = interval.as_millis() as u64;
        let sends = log.budgets.entry(budget.to_owned()).or_default();
        sends.retain(|(_, at)| at + window > now);
        if sends.len() >= count as usize {
            let oldest = sends.iter().map(|(_, at)| *at).min().unwrap_or(now);
            return Ok(RequestSlot::Wait(std::time::Duration::from_millis(
                (oldest + window).saturating_sub(now).max(1),
            )));
        }
        log.next_slot += 1;
        let slot = log.next_slot;
        log.budgets.entry(budget.to_owned()).or_default().push_back((slot, now));
        Ok(RequestSlot::Taken(slot))
    }

    async fn settle_request_slot(&self, budget: &str, slot: u64) -> Result<(), StoreError> {
        let mut log = self.request_slots.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        if let Some(sends) = log.budgets.get_mut(budget)
            && let Some(entry) = sends.iter_mut().find(|(s, _)| *s == slot)
        {
            entry.1 = entry.1.max(now);
        }
        Ok(())
    }

    async fn export_state(&self) -> Result<Vec<StateRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.tokens.iter() {
            let (k, v) = entry?;
            let connection = key_text("tokens", &k)?;
            let tokens = from_json(&format!("tokens/{connection}"), &v)?;
            out.push(StateRecord::Tokens { connection, tokens });
        }
        for entry in self.triggers.iter() {
            let (k, v) = entry?;
            let recipe = key_text("triggers", &k)?;
            let state = from_json(&format!("triggers/{recipe}"), &v)?;
            out.push(StateRecord::Trigger { recipe, state });
        }
        for entry in self.seen.iter() {
            let (k, v) = entry?;
            let (recipe, item) = split_seen_key("seen", &k)?;
            let mark = key_text(&format!("seen/{recipe}/{item}"), &v)?;
            out.push(StateRecord::Seen { recipe, item, mark });
        }
        for key in self.present.iter().keys() {
            let (recipe, item) = split_seen_key("present", &key?)?;
            out.push(StateRecord::Present { recipe, item });
        }
        for entry in self.ids.iter() {
            let (k, v) = entry?;
            let key = key_text("id_map", &k)?;
            let id = key_text(&format!("id_map/{key}"), &v)?;
            out.push(StateRecord::Id { key, id });
        }
        for entry in self.paused.iter() {
            let (k, v) = entry?;
            let recipe = key_text("paused_recipes", &k)?;
            let since = key_text(&format!("paused_recipes/{recipe}"), &v)?;
            out.push(StateRecord::Paused { recipe, since });
        }
        if let Some(subscriptions) = get_json(&self.subscriptions, "all")? {
            out.push(StateRecord::Subscriptions { subscriptions });
        }
        for entry in self.deliveries.iter() {
            let (k, v) = entry?;
            let id = key_text("hook_deliveries", &k)?;
            // `prune_deliveries` reads an odd-sized time as 0; an export refuses it instead,
            // so what it writes is what the store holds.
            let at = <[u8; 8]>::try_from(v.as_ref()).map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt {
                key: format!("hook_deliveries/{id}"),
                reason: format!("the time is {} bytes, not 8", v.len()),
            })?;
            out.push(StateRecord::Delivery { id, at });
        }
        Ok(out)
    }

    async fn runs_after(&self, after: Option<&RunId>, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        // Headers are `h` + id, and ids have one length: the first key after `after`'s own
        // is its key with a byte appended.
        let start = match after {
            Some(id) => {
                let mut k = head_key(id);
                k.push(0);
                k
            }
            None => vec![b'h'],
        };
        let mut out = Vec::new();
        for key in self.journal.range(start..).keys() {
            if out.len() >= limit {
                break;
            }
            let key = key?;
            if key.first() != Some(&b'h') {
                break;
            }
            let id: RunId = key_text("run_journal", &key[1..])?.parse().map_err(|e: super::BadRunId| {
                StoreError::Corrupt { key: "run_journal".into(), reason: e.to_string() }
            })?;
            if let Some(run) = self.assemble(&id)? {
                out.push(run);
            }
        }
        Ok(out)
    }

    /// One transaction over every tree a record goes to. A run already in the store (an
    /// import with `--force`, or the same file twice) is replaced whole: its old index
    /// entries, open mark and surplus steps go, so the index never names a status the
    /// header no longer has.
    async fn import_state(&self, records: &[StateRecord]) -> Result<(), StoreError> {
        let writes = ImportWrites::of(records)?;
        (
            &self.tokens,
            &self.triggers,
            &self.seen,
            &self.present,
            &self.ids,
            &self.paused,
            &self.subscriptions,
            &self.deliveries,
            &self.journal,
            &self.items,
            &self.steps,
        )
            .transaction(
                |(tokens, triggers, seen, present, ids, paused, subscriptions, deliveries, journal, items, steps)| {
                    let plain = [
                        (tokens, &writes.tokens),
                        (triggers, &writes.triggers),
                        (seen, &writes.seen),
                        (present, &writes.present),
                        (ids, &writes.ids),
                        (paused, &writes.paused),
                        (subscriptions, &writes.subscriptions),
                        (deliveries, &writes.deliveries),
                    ];
                    for (tree, entries) in plain {
                        for (k, v) in entries {
                            tree.insert(k.as_slice(), v.as_slice())?;
                        }
                    }
                    for run in &writes.runs {
                        replace_run(journal, items, steps, run)?;
                    }
                    Ok(())
                },
            )
            .map_err(|e: TransactionError<StoreError>| match e {
                TransactionError::Storage(e) => StoreError::Sled(e),
                TransactionError::Abort(e) => e,
            })
    }

    async fn dump(&self) -> Result<Vec<DumpedRecord>, StoreError> {
        let mut out = Vec::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            for entry in tree.iter() {
                let (k, v) = entry?;
                out.push((String::from_utf8_lossy(&name).into_owned(), k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }
}

/// An import's records encoded per tree, before its transaction (which may run more than
/// once).
#[derive(Default)]
struct ImportWrites {
    tokens: Vec<(Vec<u8>, Vec<u8>)>,
    triggers: Vec<(Vec<u8>, Vec<u8>)>,
    seen: Vec<(Vec<u8>, Vec<u8>)>,
    present: Vec<(Vec<u8>, Vec<u8>)>,
    ids: Vec<(Vec<u8>, Vec<u8>)>,
    paused: Vec<(Vec<u8>, Vec<u8>)>,
    subscriptions: Vec<(Vec<u8>, Vec<u8>)>,
    deliveries: Vec<(Vec<u8>, Vec<u8>)>,
    runs: Vec<EncodedRun>,
}

impl ImportWrites {
    fn of(records: &[StateRecord]) -> Result<ImportWrites, StoreError> {
        let mut w = ImportWrites::default();
        for record in records {
            match record {
                StateRecord::Tokens { connection, tokens } => {
                    w.tokens.push((connection.as_bytes().to_vec(), to_bytes(connection, tokens)?))
                }
                StateRecord::Trigger { recipe, state } => {
                    w.triggers.push((recipe.as_bytes().to_vec(), to_bytes(recipe, state)?))
                }
                StateRecord::Seen { recipe, item, mark } => {
                    w.seen.push((seen_key(checked_recipe(recipe)?, item), mark.as_bytes().to_vec()))
                }
                StateRecord::Present { recipe, item } => {
                    w.present.push((seen_key(checked_recipe(recipe)?, item), Vec::new()))
                }
                StateRecord::Id { key, id } => w.ids.push((key.as_bytes().to_vec(), id.as_bytes().to_vec())),
                StateRecord::Paused { recipe, since } => {
                    w.paused.push((recipe.as_bytes().to_vec(), since.as_bytes().to_vec()))
                }
                StateRecord::Subscriptions { subscriptions } => {
                    w.subscriptions.push((b"all".to_vec(), to_bytes("hook_subscriptions", subscriptions)?))
                }
                StateRecord::Delivery { id, at } => {
                    w.deliveries.push((id.as_bytes().to_vec(), at.to_be_bytes().to_vec()))
                }
                StateRecord::Run { run } => {
                    let mut encoded = EncodedRun::of(checked_run(run)?)?;
                    // Every step the record lists, as the source store held it (a store
                    // migrated from format 2 keeps pending steps at the end): the run reads
                    // back equal.
                    encoded.steps = run
                        .steps
                        .iter()
                        .enumerate()
                        .map(|(i, s)| Ok((step_key(&run.id, i), to_bytes(run.id.as_str(), s)?)))
                        .collect::<Result<_, StoreError>>()?;
                    w.runs.push(encoded);
                }
            }
        }
        Ok(w)
    }
}

/// A recipe name as a key prefix: the seen and present keys end it with a NUL byte, so a
/// name holding one would read back as another recipe's.
fn checked_recipe(recipe: &str) -> Result<&str, StoreError> {
    if recipe.contains('\0') {
        return Err(StoreError::Corrupt {
            key: format!("recipe {recipe:?}"),
            reason: "a recipe name holds a NUL byte".into(),
        });
    }
    Ok(recipe)
}

fn checked_run(run: &RunRecord) -> Result<&RunRecord, StoreError> {
    checked_recipe(&run.recipe)?;
    Ok(run)
}

/// Writes `run` as `write_new_run` does, first removing what an earlier version of the same
/// run left: index entries under its old recipe and status, its open mark, and step entries
/// past the new list's end (a run's step keys are always 0 to n, so the first missing one
/// ends them).
fn replace_run(
    journal: &TransactionalTree,
    items: &TransactionalTree,
    steps: &TransactionalTree,
    run: &EncodedRun,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    if let Some(old) = journal.get(head_key(&run.id))? {
        let old: RunHeader = serde_json::from_slice(&old).map_err(|e| {
            ConflictableTransactionError::Abort(StoreError::Corrupt {
                key: format!("header of run {}", run.id),
                reason: e.to_string(),
            })
        })?;
        journal.remove(with_id(index_recipe(&old.recipe), &run.id))?;
        journal.remove(with_id(index_both(&old.recipe, old.status), &run.id))?;
        journal.remove(open_key(&run.id))?;
        let mut i = run.steps.len();
        while steps.remove(step_key(&run.id, i))?.is_some() {
            i += 1;
        }
    }
    write_new_run(journal, items, steps, run).map_err(|e| match e {
        ConflictableTransactionError::Abort(Moved) => ConflictableTransactionError::Abort(StoreError::Corrupt {
            key: format!("run {}", run.id),
            reason: "the write was abandoned".into(),
        }),
        ConflictableTransactionError::Conflict => ConflictableTransactionError::Conflict,
        ConflictableTransactionError::Storage(e) => ConflictableTransactionError::Storage(e),
    })
}

/// A key or value that must be text (names, ids, marks), strictly: a lossy conversion would
/// export a different key than the store holds.
fn key_text(what: &str, bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|e| StoreError::Corrupt { key: what.to_owned(), reason: format!("not UTF-8 text ({e})") })
}

/// A `seen_key` (recipe, NUL, item) taken apart.
fn split_seen_key(tree: &str, key: &[u8]) -> Result<(String, String), StoreError> {
    let cut = key.iter().position(|b| *b == 0).ok_or_else(|| StoreError::Corrupt {
        key: tree.to_owned(),
        reason: "a key without the NUL byte that ends its recipe".into(),
    })?;
    Ok((key_text(tree, &key[..cut])?, key_text(tree, &key[cut + 1..])?))
}

fn from_json<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { key: key.to_owned(), reason: e.to_string() })
}

fn get_json<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>, StoreError> {
    match tree.get(key.as_bytes())? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt { key: key.to_owned(), reason: e.to_string() }),
    }
}

fn put_json<T: Serialize>(tree: &sled::Tree, key: &str, value: &T) -> Result<(), StoreError> {
    tree.insert(key.as_bytes(), to_bytes(key, value)?)?;
    Ok(())
}

fn to_bytes<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt { key: key.to_owned(), reason: e.to_string() })
}

/// The format of a state folder's contents, kept under `format` in its `meta` tree. Each
/// change to how records are laid out raises it, with a step in `migrate`.
/// - 1: no `format` key (ghlflow before the key existed).
/// - 2: trigger states count resets (`generation`, read as 0 when missing), and the trees
///   `present` and `poll_spill` exist (created empty when missing). Nothing is rewritten.
/// - 3: the run journal: each run of the `runs` tree (one JSON record holding the item and
///   every step) is split into its header, item and step entries, indexed by recipe and
///   status; the `runs` and `open_runs` trees are then dropped.
pub const FORMAT: u32 = 3;

fn format_of(db: &sled::Db) -> Result<Option<u32>, StoreError> {
    let meta = db.open_tree("meta")?;
    match meta.get(b"format")? {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| t.parse().ok())
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt { key: "meta/format".into(), reason: "not a number".into() }),
    }
}

/// Brings a store written by an earlier ghlflow to `FORMAT` (on open, before anything else
/// reads it), one step per format, and refuses one written by a later ghlflow, whose
/// records this one could misread.
fn migrate(db: &sled::Db, path: &Path) -> Result<(), StoreError> {
    let found = format_of(db)?;
    match found {
        Some(f) if f > FORMAT => {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                reason: format!(
                    "it was written by a newer ghlflow (state format {f}; this one reads up to {FORMAT}): \
                     upgrade ghlflow, or use another state folder"
                ),
            });
        }
        Some(f) if f == FORMAT => return Ok(()),
        _ => {}
    }
    // A new store has only sled's default tree (and `meta`, opened just above).
    let fresh = db.tree_names().iter().all(|name| name.as_ref() == b"__sled__default" || name.as_ref() == b"meta");
    let from = found.unwrap_or(1);
    // 1 to 2: nothing is rewritten (the new fields and trees start empty).
    if from < 3 && !fresh {
        journal_from_records(db).map_err(|e| match e {
            StoreError::Corrupt { key, reason } => StoreError::Open {
                path: path.to_path_buf(),
                reason: format!("migrating to the run journal: the run record {key} cannot be read: {reason}"),
            },
            other => other,
        })?;
    }
    let meta = db.open_tree("meta")?;
    meta.insert(b"format", FORMAT.to_string().as_bytes())?;
    db.flush()?;
    if !fresh {
        // Dropped only once the new format is durable: a crash before it reruns the step,
        // which writes the same keys again.
        db.drop_tree("runs")?;
        db.drop_tree("open_runs")?;
        db.flush()?;
        tracing::info!(from, to = FORMAT, "state store migrated");
    }
    Ok(())
}

/// Formats 1 and 2 to 3: each whole run record becomes a header, an item and step entries
/// (pending steps too, so history shows what it showed), with its index entries; a run the
/// old `open_runs` tree listed gets an open mark.
fn journal_from_records(db: &sled::Db) -> Result<(), StoreError> {
    let store = SledStore::from_db(db.clone())?;
    let old = db.open_tree("runs")?;
    let open = db.open_tree("open_runs")?;
    let mut chunk = Vec::new();
    for entry in old.iter() {
        let (key, value) = entry?;
        let owed = open.contains_key(&key)?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let run: RunRecord = serde_json::from_slice(&value)
            .map_err(|e| StoreError::Corrupt { key: key.clone(), reason: e.to_string() })?;
        chunk.push((run, owed));
        if chunk.len() == 1000 {
            migrate_chunk(&store, &std::mem::take(&mut chunk))?;
        }
    }
    migrate_chunk(&store, &chunk)
}

fn migrate_chunk(store: &SledStore, runs: &[(RunRecord, bool)]) -> Result<(), StoreError> {
    let mut encoded = Vec::new();
    for (run, owed) in runs {
        let mut e = EncodedRun::of(run)?;
        // Every step, pending ones included.
        e.steps = run
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| Ok((step_key(&run.id, i), to_bytes(run.id.as_str(), s)?)))
            .collect::<Result<_, StoreError>>()?;
        // The old open index is carried over as it is (a run it lists stays listed).
        e.owed = *owed;
        encoded.push(e);
    }
    store.write_new_runs(&encoded)
}

/// Removes every key of `tree` that starts with `prefix`; returns how many.
fn remove_prefix(tree: &sled::Tree, prefix: &[u8]) -> Result<usize, StoreError> {
    let mut n = 0;
    for key in tree.scan_prefix(prefix).keys() {
        tree.remove(key?)?;
        n += 1;
    }
    Ok(n)
}

fn spill_key(recipe: &str, slot: u64) -> Vec<u8> {
    let mut k = seen_key(recipe, "");
    k.extend_from_slice(&slot.to_be_bytes());
    k
}

fn seen_key(recipe: &str, item: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(recipe.len() + item.len() + 1);
    k.extend_from_slice(recipe.as_bytes());
    k.push(0);
    k.extend_from_slice(item.as_bytes());
    k
}

/// The file that marks a folder as ghlflow's state folder.
const MARKER: &str = "GHLFLOW_STATE";
const MARKER_TEXT: &str = "This folder is ghlflow's state store (sled). Do not edit it by hand.\n";

/// A state path must be ghlflow's own folder: missing (it is created), empty, marked, or an
/// earlier ghlflow store (sled's `conf` and `db`, from before the marker). Anything else,
/// such as `state: .` (the project folder), is refused rather than taken over and made
/// owner-only.
fn check_state_folder(dir: &Path) -> Result<(), String> {
    let entries: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if dir.exists() && !dir.is_dir() => return Err(format!("it is not a folder ({e})")),
        Err(e) => return Err(e.to_string()),
    };
    let has = |name: &str| entries.iter().any(|e| e == name);
    if entries.is_empty() || has(MARKER) || (has("conf") && has("db")) {
        return Ok(());
    }
    Err(format!(
        "the folder is not empty and is not a ghlflow state folder (no {MARKER} file); point `state:` at a folder of its own, e.g. .ghlflow/state"
    ))
}

/// Files an older ghlflow (or sled before the umask) created with the default mode hold
/// tokens and history: they are made owner-only (0600) when the store opens. Files created
/// later are owner-only through the process's umask.
#[cfg(unix)]
fn restrict_files_to_owner(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let mode = if ft.is_dir() {
            0o700
        } else if ft.is_file() {
            0o600
        } else {
            continue;
        };
        let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode));
        if ft.is_dir() {
            restrict_files_to_owner(&e.path());
        }
    }
}

#[cfg(not(unix))]
fn restrict_files_to_owner(_dir: &Path) {}

#[cfg(unix)]
fn restrict_to_owner(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn restrict_to_owner(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_survive_a_reopen_and_the_folder_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let tokens = StoredTokens {
            access_token: Some("a".into()),
            refresh_token: Some("r2".into()),
            expires_at: Some(10),
            location_id: Some("loc".into()),
            company_id: None,
            scope: None,
        };
        {
            let store = SledStore::open(&path).unwrap();
            store.save_tokens("ghl", &tokens).await.unwrap();
        }
        let store = folder_tests::when_free(|| SledStore::open(&path)).unwrap();
        assert_eq!(store.tokens("ghl").await.unwrap(), Some(tokens));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "state folder is readable by others: {mode:o}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_flushes_finish() {
        // sled 0.34's own flush_async hangs with 8 or more callers at once (spacejam/sled#1308).
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("state")).unwrap();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..20 {
                    store.save_trigger_state(&format!("r{i}-{j}"), &TriggerState::default()).await.unwrap();
                    store.flush_async().await.unwrap();
                }
            }));
        }
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), all).await.expect("every flush finished");
        assert!(store.trigger_state("r63-19").await.unwrap().is_some());
    }
}

#[cfg(test)]
mod folder_tests {
    use super::*;

    /// sled lets go of a folder's lock a moment after its last handle is dropped (its
    /// flusher thread finishes first): retry for a while instead of failing on that.
    pub(super) fn when_free<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> Result<T, E> {
        for _ in 0..100 {
            match open() {
                Err(e) if e.to_string().contains("another ghlflow process") || e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
        open()
    }

    #[test]
    fn a_new_store_is_at_the_current_format_and_a_newer_one_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state");
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(store.format().unwrap(), Some(FORMAT));
        drop(store);
        // A later ghlflow wrote it.
        {
            let db = when_free(|| sled::open(&dir)).unwrap();
            db.open_tree("meta").unwrap().insert(b"format", (FORMAT + 1).to_string().as_bytes()).unwrap();
            db.flush().unwrap();
        }
        let err = when_free(|| SledStore::open(&dir)).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("newer ghlflow") && err.contains(&dir.display().to_string()), "{err}");
    }

    #[test]
    fn a_foreign_non_empty_folder_is_refused_and_files_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ghlflow.yaml"), "connections: {}\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let err = SledStore::open(dir.path()).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("not a ghlflow state folder"), "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
            assert_ne!(mode & 0o077, 0, "the refused folder's mode was changed: {mode:o}");
        }
        assert!(!dir.path().join("db").exists(), "sled files were written beside the project");

        let state = dir.path().join("state");
        drop(SledStore::open(&state).unwrap());
        assert!(state.join(MARKER).exists());
        let store = SledStore::open(&state).unwrap(); // marked: opens again
        store.flush().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for e in std::fs::read_dir(&state).unwrap().flatten() {
                let mode = e.metadata().unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{} is {mode:o}", e.path().display());
            }
        }
        // A store from before the marker (sled's own files only) still opens.
        drop(store);
        std::fs::remove_file(state.join(MARKER)).unwrap();
        assert!(SledStore::open(&state).is_ok());
    }
}
