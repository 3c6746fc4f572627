//! The PostgreSQL backend: one database shared by every `ghlflow run` worker, on any number
//! of machines.
//!
//! It owns the schema (versioned SQL migrations in `postgres/migrations`, embedded in the
//! binary, applied on connect; a database migrated by a newer ghlflow is refused), the
//! connection pool, and the SQL of every `StateStore` method. Each write is one committed
//! statement or transaction, so `flush_async` has nothing to do. What several workers must
//! agree on is decided by the database: lease expiry and the request log use its clock
//! (`clock_timestamp()`), a status change locks the run's row, a poll's or a delivery's
//! commit takes a per-recipe advisory lock, and orphaned runs are claimed with
//! `FOR UPDATE SKIP LOCKED`, so two workers never take the same one.
//!
//! Serde structs are stored as jsonb (token sets, trigger states, run headers, steps,
//! items); jsonb keeps an object's members but not their order, which nothing reads by.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Connection, Postgres, Row, Transaction};

use super::{
    DeliveryCommit, DumpedRecord, HookSubscription, LeaseInfo, PollCommit, RequestSlot, RunHeader, RunId, RunRecord,
    RunStatus, StateRecord, StateStore, StepRecord, StepStatus, StoreError, StoredTokens, TriggerState,
};

/// The schema's migrations, compiled in. (A new file in the folder needs a rebuild of this
/// module to be seen: `cargo clean -p ghlflow` or a touch of this file.)
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/postgres/migrations");

/// Connections per worker. A step costs one statement that holds a connection for one round
/// trip, so a handful serve many concurrent runs; 10 keeps nine workers under PostgreSQL's
/// default `max_connections` (100) with room for an operator's psql.
const POOL_SIZE: u32 = 10;

/// Runs (and steps) written per statement: a poll may carry 20,000 runs, and one array
/// parameter per column keeps a statement's size, not its parameter count, the limit.
const CHUNK: usize = 2000;

/// The PostgreSQL state store (see the module doc). Clones share the pool and the worker.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    worker: Arc<str>,
    /// This worker's node number (0 to 999), part of each run id it makes.
    node: u32,
    clock: Arc<Mutex<IdClock>>,
    /// The schema version applied when this store connected.
    schema: i64,
    /// The migrations this connect applied ("version description").
    applied: Arc<[String]>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("worker", &self.worker).field("schema", &self.schema).finish_non_exhaustive()
    }
}

/// The last run id's time and counter (see `next_run_id`).
#[derive(Debug, Default)]
struct IdClock {
    ms: u64,
    n: u32,
}

impl IdClock {
    /// The next (millisecond, counter) pair at wall time `now` (see `next_run_id`).
    fn next(&mut self, now: u64) -> (u64, u32) {
        if now > self.ms {
            self.ms = now;
            self.n = 0;
        } else if self.n < 999 {
            self.n += 1;
        } else {
            self.ms += 1;
            self.n = 0;
        }
        (self.ms, self.n)
    }
}

/// Where a database's schema stands against this binary's migrations (`ghlflow migrate
/// --check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Versions applied to the database.
    pub applied: Vec<i64>,
    /// Migrations this binary has that the database lacks: (version, description).
    pub pending: Vec<(i64, String)>,
    /// Versions applied to the database that this binary does not know (a newer ghlflow).
    pub unknown: Vec<i64>,
}

/// The URL without its password, for messages (the same text `ghlflow.yaml`'s `state:` is
/// described with).
fn place(url: &str) -> String {
    crate::config::StateLocation::Postgres(crate::config::Secret::new(url)).describe()
}

fn newer_schema(version: i64) -> StoreError {
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    StoreError::Postgres(format!(
        "the database schema is newer than this ghlflow (it has migration {version}; this ghlflow knows up to \
         {known}): upgrade ghlflow to use this database"
    ))
}

fn migrate_error(e: sqlx::migrate::MigrateError) -> StoreError {
    use sqlx::migrate::MigrateError;
    match e {
        MigrateError::VersionMissing(v) => newer_schema(v),
        MigrateError::VersionMismatch(v) => StoreError::Postgres(format!(
            "the database's migration {v} differs from this ghlflow's migration {v}: the database was migrated by \
             another build of ghlflow; use the same release on every worker"
        )),
        other => StoreError::Postgres(format!("migrating the database schema: {other}")),
    }
}

fn options(url: &str) -> Result<PgConnectOptions, StoreError> {
    PgConnectOptions::from_str(url)
        .map(|o| o.application_name("ghlflow"))
        .map_err(|e| StoreError::Postgres(format!("the PostgreSQL URL {} is not usable: {e}", place(url))))
}

fn connect_error(url: &str, e: sqlx::Error) -> StoreError {
    StoreError::Postgres(format!("cannot connect to the state store at {}: {e}", place(url)))
}

/// The versions applied to the database (none when the migrations table does not exist).
async fn applied_versions(conn: &mut sqlx::PgConnection) -> Result<Vec<i64>, StoreError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&mut *conn).await?;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&mut *conn)
        .await?)
}

fn status_of(applied: Vec<i64>) -> MigrationStatus {
    let pending = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| (m.version, m.description.to_string()))
        .collect();
    let unknown = applied.iter().copied().filter(|v| !MIGRATOR.version_exists(*v)).collect();
    MigrationStatus { applied, pending, unknown }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn json_text<T: serde::Serialize>(key: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt { key: key.to_owned(), reason: e.to_string() })
}

/// The steps of a list the journal stores: up to the last one that ever ran (the same rule
/// as sled's, so both backends assemble the same list).
fn recorded(steps: &[StepRecord]) -> &[StepRecord] {
    let never_ran =
        |s: &StepRecord| s.status == StepStatus::Pending && s.attempts == 0 && s.input.is_none() && s.started.is_none();
    let end = steps.iter().rposition(|s| !never_ran(s)).map_or(0, |i| i + 1);
    &steps[..end]
}

/// The columns a run is assembled from: header, item, and its steps in order, in one row.
const RUN_COLUMNS: &str = "r.header, r.item, COALESCE((SELECT jsonb_agg(s.step ORDER BY s.idx) FROM run_steps s \
                           WHERE s.run_id = r.id), '[]'::jsonb) AS steps";

fn run_of_row(row: &PgRow) -> Result<RunRecord, StoreError> {
    let corrupt =
        |what: &str, e: sqlx::Error| StoreError::Corrupt { key: format!("run {what}"), reason: e.to_string() };
    let Json(header): Json<RunHeader> = row.try_get(0).map_err(|e| corrupt("header", e))?;
    let item: serde_json::Value = row.try_get(1).map_err(|e| corrupt("item", e))?;
    let Json(steps): Json<Vec<StepRecord>> = row.try_get(2).map_err(|e| corrupt("steps", e))?;
    Ok(RunRecord::assemble(header, item, steps))
}

/// New runs as column arrays, for one `UNNEST` insert per chunk.
#[derive(Default)]
struct RunColumns {
    id: Vec<String>,
    recipe: Vec<String>,
    status: Vec<&'static str>,
    item_id: Vec<Option<String>>,
    created: Vec<String>,
    next_replay_at: Vec<Option<i64>>,
    owed: Vec<bool>,
    header: Vec<String>,
    item: Vec<String>,
    step_run: Vec<String>,
    step_idx: Vec<i32>,
    step: Vec<String>,
}

impl RunColumns {
    /// Adds a run; `all_steps` keeps pending steps too (an import keeps a run as it was).
    fn push(&mut self, run: &RunRecord, all_steps: bool) -> Result<(), StoreError> {
        let key = run.id.as_str();
        self.id.push(key.to_owned());
        self.recipe.push(run.recipe.clone());
        self.status.push(run.status.as_str());
        self.item_id.push(run.item_id.clone());
        self.created.push(run.created.clone());
        self.next_replay_at.push(run.next_replay_at.map(|t| i64::try_from(t).unwrap_or(i64::MAX)));
        self.owed.push(run.status.is_owed(run.next_replay_at));
        self.header.push(json_text(key, &run.header())?);
        self.item.push(json_text(key, &run.item)?);
        let steps = if all_steps { &run.steps[..] } else { recorded(&run.steps) };
        for (i, step) in steps.iter().enumerate() {
            self.step_run.push(key.to_owned());
            self.step_idx.push(i as i32);
            self.step.push(json_text(key, step)?);
        }
        Ok(())
    }

    async fn insert(&self, tx: &mut Transaction<'_, Postgres>, owner: &str) -> Result<(), StoreError> {
        for start in (0..self.id.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(self.id.len());
            sqlx::query(
                "INSERT INTO runs (id, recipe, status, item_id, created, next_replay_at, owed, owner, header, item) \
                 SELECT id, recipe, status, item_id, created, next_replay_at, owed, $8, header::jsonb, item::jsonb \
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::bool[], \
                 $9::text[], $10::text[]) AS t(id, recipe, status, item_id, created, next_replay_at, owed, header, item)",
            )
            .bind(&self.id[start..end])
            .bind(&self.recipe[start..end])
            .bind(&self.status[start..end])
            .bind(&self.item_id[start..end])
            .bind(&self.created[start..end])
            .bind(&self.next_replay_at[start..end])
            .bind(&self.owed[start..end])
            .bind(owner)
            .bind(&self.header[start..end])
            .bind(&self.item[start..end])
            .execute(&mut **tx)
            .await?;
        }
        for start in (0..self.step_run.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(self.step_run.len());
            sqlx::query(
                "INSERT INTO run_steps (run_id, idx, step) SELECT run_id, idx, step::jsonb \
                 FROM UNNEST($1::text[], $2::int4[], $3::text[]) AS t(run_id, idx, step)",
            )
            .bind(&self.step_run[start..end])
            .bind(&self.step_idx[start..end])
            .bind(&self.step[start..end])
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

/// Serializes the commits of one recipe (polls, deliveries, resets) across workers: a
/// transaction-scoped advisory lock on a hash of the recipe's name (a collision only makes
/// two recipes wait for each other).
async fn lock_recipe(tx: &mut Transaction<'_, Postgres>, recipe: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('ghlflow recipe ' || $1, 0))")
        .bind(recipe)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The stored seen marks of some items of a recipe.
async fn marks_of(
    tx: &mut Transaction<'_, Postgres>,
    recipe: &str,
    items: Vec<&str>,
) -> Result<std::collections::HashMap<String, String>, StoreError> {
    if items.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT item, mark FROM seen_marks WHERE recipe = $1 AND item = ANY($2::text[])")
            .bind(recipe)
            .bind(items)
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows.into_iter().collect())
}

async fn write_marks(
    tx: &mut Transaction<'_, Postgres>,
    recipe: &str,
    marks: &std::collections::HashMap<String, String>,
) -> Result<(), StoreError> {
    if marks.is_empty() {
        return Ok(());
    }
    let (items, marks): (Vec<&str>, Vec<&str>) = marks.iter().map(|(i, m)| (i.as_str(), m.as_str())).unzip();
    for start in (0..items.len()).step_by(CHUNK * 5) {
        let end = (start + CHUNK * 5).min(items.len());
        sqlx::query(
            "INSERT INTO seen_marks (recipe, item, mark) SELECT $1, item, mark \
             FROM UNNEST($2::text[], $3::text[]) AS t(item, mark) \
             ON CONFLICT (recipe, item) DO UPDATE SET mark = EXCLUDED.mark",
        )
        .bind(recipe)
        .bind(&items[start..end])
        .bind(&marks[start..end])
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl PgStore {
    /// Connects to the database at `url`, applies the migrations it lacks, and refuses one
    /// whose schema is newer than this binary's (a migration it does not know was applied).
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options = options(url)?;
        // One plain connection first: the pool retries a refused or unreachable server
        // until its acquire timeout, which would make a typo in the URL a 30-second hang.
        let probe = sqlx::PgConnection::connect_with(&options).await.map_err(|e| connect_error(url, e))?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|e| connect_error(url, e))?;
        // Checked before migrating, to name the unknown version (and to list what is applied
        // now); sqlx's own check (VersionMissing) backs it up if a newer worker migrates in
        // between.
        let before = {
            let mut conn = pool.acquire().await?;
            status_of(applied_versions(&mut conn).await?)
        };
        if let Some(v) = before.unknown.iter().max() {
            return Err(newer_schema(*v));
        }
        MIGRATOR.run(&pool).await.map_err(migrate_error)?;
        let schema: i64 = sqlx::query_scalar("SELECT COALESCE(max(version), 0) FROM _sqlx_migrations WHERE success")
            .fetch_one(&pool)
            .await?;
        let node: i64 = sqlx::query_scalar("SELECT nextval('worker_nodes') % 1000").fetch_one(&pool).await?;
        let applied = before.pending.iter().map(|(v, d)| format!("{v} {d}")).collect::<Vec<_>>();
        Ok(PgStore {
            pool,
            worker: super::worker_name().into(),
            node: node as u32,
            clock: Arc::default(),
            schema,
            applied: applied.into(),
        })
    }

    /// Where the database at `url` stands against this binary's migrations, applying none.
    pub async fn migration_status(url: &str) -> Result<MigrationStatus, StoreError> {
        let mut conn = sqlx::PgConnection::connect_with(&options(url)?).await.map_err(|e| connect_error(url, e))?;
        let status = status_of(applied_versions(&mut conn).await?);
        let _ = conn.close().await;
        Ok(status)
    }

    /// The schema version (the newest migration applied) when this store connected.
    pub fn schema_version(&self) -> i64 {
        self.schema
    }

    /// The migrations this store's connect applied ("version description"), oldest first.
    pub fn applied_migrations(&self) -> &[String] {
        &self.applied
    }

    async fn fetch_runs(&self, filter: &str, order: &str, binds: RunFilter<'_>) -> Result<Vec<RunRecord>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r {filter} ORDER BY r.id {order} LIMIT $3");
        let rows = sqlx::query(&sql)
            .bind(binds.recipe)
            .bind(binds.status.map(RunStatus::as_str))
            .bind(binds.limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(run_of_row).collect()
    }
}

/// The parameters of a run list's filter: `$1` recipe, `$2` status, `$3` limit.
struct RunFilter<'a> {
    recipe: Option<&'a str>,
    status: Option<RunStatus>,
    limit: i64,
}

/// The WHERE clause of a run list (each shape its own statement, so each has its plan).
fn run_filter(recipe: Option<&str>, status: Option<RunStatus>) -> &'static str {
    match (recipe, status) {
        (None, None) => "WHERE $1::text IS NULL AND $2::text IS NULL",
        (Some(_), None) => "WHERE r.recipe = $1 AND $2::text IS NULL",
        (None, Some(_)) => "WHERE $1::text IS NULL AND r.status = $2",
        (Some(_), Some(_)) => "WHERE r.recipe = $1 AND r.status = $2",
    }
}

impl StateStore for PgStore {
    /// Unique across workers and increasing within this process. An id is
    /// `<ms>-<node><n>`: `node` (three digits) is this worker's number, taken from a
    /// database sequence at connect (modulo 1000: two live workers collide only if a
    /// thousand connects happened between theirs), and `n` (three digits) counts the ids
    /// of one millisecond. `ms` is a logical clock: the wall clock when it moved on,
    /// otherwise the last id's millisecond, bumped by one when its thousand ids are used
    /// up, so neither a burst nor the clock stepping back can repeat or reorder an id.
    fn next_run_id(&self) -> RunId {
        let (ms, n) = self.clock.lock().unwrap_or_else(|p| p.into_inner()).next(unix_ms());
        RunId::new(ms, self.node * 1000 + n)
    }

    fn worker(&self) -> &str {
        &self.worker
    }

    async fn tokens(&self, connection: &str) -> Result<Option<StoredTokens>, StoreError> {
        let row: Option<Json<StoredTokens>> = sqlx::query_scalar("SELECT tokens FROM tokens WHERE connection = $1")
            .bind(connection)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|Json(t)| t))
    }

    async fn save_tokens(&self, connection: &str, tokens: &StoredTokens) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (connection, tokens) VALUES ($1, $2) \
             ON CONFLICT (connection) DO UPDATE SET tokens = EXCLUDED.tokens",
        )
        .bind(connection)
        .bind(Json(tokens))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Nothing to wait for: every write is a committed statement or transaction.
    async fn flush_async(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn trigger_state(&self, recipe: &str) -> Result<Option<TriggerState>, StoreError> {
        let row: Option<Json<TriggerState>> = sqlx::query_scalar("SELECT state FROM trigger_states WHERE recipe = $1")
            .bind(recipe)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|Json(s)| s))
    }

    async fn save_trigger_state(&self, recipe: &str, state: &TriggerState) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO trigger_states (recipe, state) VALUES ($1, $2) \
             ON CONFLICT (recipe) DO UPDATE SET state = EXCLUDED.state",
        )
        .bind(recipe)
        .bind(Json(state))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn reset_trigger(&self, recipe: &str, mut state: TriggerState) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_recipe(&mut tx, recipe).await?;
        let before: Option<i64> =
            sqlx::query_scalar("SELECT (state->>'generation')::int8 FROM trigger_states WHERE recipe = $1")
                .bind(recipe)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
        state.generation = before.map_or(0, |g| g as u64) + 1;
        sqlx::query("DELETE FROM seen_marks WHERE recipe = $1").bind(recipe).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM present_items WHERE recipe = $1").bind(recipe).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO trigger_states (recipe, state) VALUES ($1, $2) \
             ON CONFLICT (recipe) DO UPDATE SET state = EXCLUDED.state",
        )
        .bind(recipe)
        .bind(Json(&state))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn seen_mark(&self, recipe: &str, item: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT mark FROM seen_marks WHERE recipe = $1 AND item = $2")
            .bind(recipe)
            .bind(item)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn seen_count(&self, recipe: &str) -> Result<usize, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM seen_marks WHERE recipe = $1")
            .bind(recipe)
            .fetch_one(&self.pool)
            .await?;
        Ok(n as usize)
    }

    async fn forget_seen(&self, recipe: &str) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("DELETE FROM seen_marks WHERE recipe = $1").bind(recipe).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM present_items WHERE recipe = $1").bind(recipe).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(n.rows_affected() as usize)
    }

    async fn present_items(&self, recipe: &str) -> Result<std::collections::HashSet<String>, StoreError> {
        let items: Vec<String> = sqlx::query_scalar("SELECT item FROM present_items WHERE recipe = $1")
            .bind(recipe)
            .fetch_all(&self.pool)
            .await?;
        Ok(items.into_iter().collect())
    }

    async fn commit_poll(&self, recipe: &str, commit: &PollCommit) -> Result<Vec<RunId>, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_recipe(&mut tx, recipe).await?;
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT (state->>'generation')::int8 FROM trigger_states WHERE recipe = $1")
                .bind(recipe)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
        if generation.map_or(0, |g| g as u64) != commit.generation {
            return Err(StoreError::TriggerMoved { recipe: recipe.to_owned() });
        }
        if !commit.spilled.is_empty() {
            let slots: Vec<i64> = commit.spilled.iter().map(|s| *s as i64).collect();
            sqlx::query("DELETE FROM poll_spill WHERE recipe = $1 AND slot = ANY($2::int8[])")
                .bind(recipe)
                .bind(slots)
                .execute(&mut *tx)
                .await?;
        }
        let stored = marks_of(&mut tx, recipe, commit.seen.iter().map(|(i, _)| i.as_str()).collect()).await?;
        let new_marks: std::collections::HashMap<&str, &str> =
            commit.seen.iter().map(|(item, mark)| (item.as_str(), mark.as_str())).collect();
        let mut covered = Vec::new();
        let mut columns = RunColumns::default();
        for run in &commit.runs {
            let item = run.item_id.as_deref().unwrap_or_default();
            // Marked since the poll read it: an instant delivery ran it first.
            if let (Some(mark), Some(prior)) = (new_marks.get(item), stored.get(item))
                && super::mark_covers(prior, mark)
            {
                covered.push(run.id.clone());
                continue;
            }
            columns.push(run, false)?;
        }
        columns.insert(&mut tx, &self.worker).await?;
        // Never moves a mark back (a delivery's may be newer than the poll's read).
        let mut marks = std::collections::HashMap::new();
        for (item, mark) in &commit.seen {
            let prior = marks.get(item).or_else(|| stored.get(item));
            if prior.is_some_and(|p: &String| super::mark_covers(p, mark)) {
                continue;
            }
            marks.insert(item.clone(), mark.clone());
        }
        write_marks(&mut tx, recipe, &marks).await?;
        if !commit.joined.is_empty() {
            sqlx::query(
                "INSERT INTO present_items (recipe, item) SELECT $1, item FROM UNNEST($2::text[]) AS t(item) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(recipe)
            .bind(&commit.joined)
            .execute(&mut *tx)
            .await?;
        }
        if !commit.left.is_empty() {
            sqlx::query("DELETE FROM present_items WHERE recipe = $1 AND item = ANY($2::text[])")
                .bind(recipe)
                .bind(&commit.left)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(state) = &commit.state {
            sqlx::query(
                "INSERT INTO trigger_states (recipe, state) VALUES ($1, $2) \
                 ON CONFLICT (recipe) DO UPDATE SET state = EXCLUDED.state",
            )
            .bind(recipe)
            .bind(Json(state))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(covered)
    }

    async fn delivery_seen(&self, id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM hook_deliveries WHERE id = $1)")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn commit_delivery(&self, recipe: &str, commit: &DeliveryCommit) -> Result<Vec<RunId>, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_recipe(&mut tx, recipe).await?;
        let stored = marks_of(&mut tx, recipe, commit.runs.iter().map(|(_, item, _)| item.as_str()).collect()).await?;
        let mut marks: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        let mut columns = RunColumns::default();
        let mut recorded = Vec::new();
        for (run, item, mark) in &commit.runs {
            let prior = marks.get(item).or_else(|| stored.get(item));
            if prior.is_some_and(|p| super::mark_covers(p, mark)) {
                continue; // ran already, by a poll or an earlier delivery
            }
            columns.push(run, false)?;
            marks.insert(item.clone(), mark.clone());
            recorded.push(run.id.clone());
        }
        columns.insert(&mut tx, &self.worker).await?;
        write_marks(&mut tx, recipe, &marks).await?;
        if let Some(id) = &commit.delivery {
            sqlx::query(
                "INSERT INTO hook_deliveries (id, at) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
            )
            .bind(id)
            .bind(crate::http::auth::unix_now() as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }

    async fn prune_deliveries(&self, before_unix: u64) -> Result<usize, StoreError> {
        let done = sqlx::query("DELETE FROM hook_deliveries WHERE at < $1")
            .bind(i64::try_from(before_unix).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() as usize)
    }

    async fn paused_since(&self, recipe: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT since FROM paused_recipes WHERE recipe = $1")
            .bind(recipe)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn set_paused(&self, recipe: &str, since: Option<&str>) -> Result<(), StoreError> {
        match since {
            Some(since) => sqlx::query(
                "INSERT INTO paused_recipes (recipe, since) VALUES ($1, $2) \
                 ON CONFLICT (recipe) DO UPDATE SET since = EXCLUDED.since",
            )
            .bind(recipe)
            .bind(since),
            None => sqlx::query("DELETE FROM paused_recipes WHERE recipe = $1").bind(recipe),
        }
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn hook_subscriptions(&self) -> Result<Vec<HookSubscription>, StoreError> {
        let rows: Vec<Json<HookSubscription>> =
            sqlx::query_scalar("SELECT subscription FROM hook_subscriptions ORDER BY position")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|Json(s)| s).collect())
    }

    async fn save_hook_subscriptions(&self, subscriptions: &[HookSubscription]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        replace_subscriptions(&mut tx, subscriptions).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn spill_put(&self, recipe: &str, slot: u64, record: &serde_json::Value) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO poll_spill (recipe, slot, record) VALUES ($1, $2, $3) \
             ON CONFLICT (recipe, slot) DO UPDATE SET record = EXCLUDED.record",
        )
        .bind(recipe)
        .bind(slot as i64)
        .bind(record)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn spill_get(&self, recipe: &str, slot: u64) -> Result<Option<serde_json::Value>, StoreError> {
        Ok(sqlx::query_scalar("SELECT record FROM poll_spill WHERE recipe = $1 AND slot = $2")
            .bind(recipe)
            .bind(slot as i64)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn spill_clear(&self, recipe: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM poll_spill WHERE recipe = $1").bind(recipe).execute(&self.pool).await?;
        Ok(())
    }

    async fn id_of(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM id_map WHERE key = $1").bind(key).fetch_optional(&self.pool).await?)
    }

    async fn remember_id(&self, key: &str, id: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO id_map (key, id) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET id = EXCLUDED.id")
            .bind(key)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn forget_id(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM id_map WHERE key = $1").bind(key).execute(&self.pool).await?;
        Ok(())
    }

    async fn create_runs(&self, runs: &[RunRecord]) -> Result<(), StoreError> {
        let mut columns = RunColumns::default();
        for run in runs {
            columns.push(run, false)?;
        }
        let mut tx = self.pool.begin().await?;
        columns.insert(&mut tx, &self.worker).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = $1");
        let row = sqlx::query(&sql).bind(id.as_str()).fetch_optional(&self.pool).await?;
        row.as_ref().map(run_of_row).transpose()
    }

    /// One statement, one round trip. A step of a run the store does not hold is refused
    /// by the foreign key, reported as `UnknownRun`.
    async fn put_step(&self, run: &RunId, index: usize, step: &StepRecord) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO run_steps (run_id, idx, step) VALUES ($1, $2, $3) \
             ON CONFLICT (run_id, idx) DO UPDATE SET step = EXCLUDED.step",
        )
        .bind(run.as_str())
        .bind(index as i32)
        .bind(Json(step))
        .execute(&self.pool)
        .await;
        match done {
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Err(StoreError::UnknownRun(run.clone())),
            other => other.map(|_| ()).map_err(StoreError::from),
        }
    }

    async fn replace_steps(&self, run: &RunId, steps: &[StepRecord]) -> Result<(), StoreError> {
        let steps = recorded(steps);
        let json: Vec<String> = steps.iter().map(|s| json_text(run.as_str(), s)).collect::<Result<_, _>>()?;
        let idx: Vec<i32> = (0..steps.len() as i32).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM run_steps WHERE run_id = $1").bind(run.as_str()).execute(&mut *tx).await?;
        if !json.is_empty() {
            sqlx::query(
                "INSERT INTO run_steps (run_id, idx, step) SELECT $1, idx, step::jsonb \
                 FROM UNNEST($2::int4[], $3::text[]) AS t(idx, step)",
            )
            .bind(run.as_str())
            .bind(idx)
            .bind(json)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One statement: the row is locked (`FOR UPDATE`), its status checked against the
    /// statuses that may become `to`, and the header rewritten only if it passed; the
    /// answer says which.
    async fn transition(&self, run: &mut RunRecord, to: RunStatus) -> Result<(), StoreError> {
        use clap::ValueEnum;
        let mut header = run.header();
        header.status = to;
        let from_ok: Vec<&str> =
            RunStatus::value_variants().iter().filter(|s| s.can_become(to)).map(|s| s.as_str()).collect();
        let next_replay_at = header.next_replay_at.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        let row: Option<(String, String, bool)> = sqlx::query_as(
            "WITH cur AS (SELECT id, status, recipe FROM runs WHERE id = $1 FOR UPDATE), \
             upd AS (UPDATE runs r SET status = $3, owed = $4, next_replay_at = $5, item_id = $6, header = $7, \
                            owner = CASE WHEN $3 IN ('queued', 'running') THEN $9 ELSE r.owner END \
                     FROM cur WHERE r.id = cur.id AND cur.status = ANY($2::text[]) AND cur.recipe = $8 \
                     RETURNING r.id) \
             SELECT cur.status, cur.recipe, EXISTS (SELECT 1 FROM upd) FROM cur",
        )
        .bind(run.id.as_str())
        .bind(&from_ok)
        .bind(to.as_str())
        .bind(to.is_owed(header.next_replay_at))
        .bind(next_replay_at)
        .bind(header.item_id.as_deref())
        .bind(Json(&header))
        .bind(&header.recipe)
        // Whoever moves a run into the queue or starts it owns it from then on (a replay
        // from the command line, a release from the page): its heartbeat keeps it theirs.
        .bind(&*self.worker)
        .fetch_optional(&self.pool)
        .await?;
        let Some((from, recipe, written)) = row else { return Err(StoreError::UnknownRun(run.id.clone())) };
        if !written {
            let from = RunStatus::from_str(&from, false).map_err(|_| StoreError::Corrupt {
                key: format!("status of run {}", run.id),
                reason: format!("`{from}` is not a run status"),
            })?;
            if !from.can_become(to) {
                return Err(StoreError::Transition { run: run.id.clone(), from, to });
            }
            // A run never changes recipe.
            return Err(StoreError::Corrupt {
                key: format!("header of run {}", run.id),
                reason: format!("recipe `{recipe}` rewritten as `{}`", header.recipe),
            });
        }
        run.status = to;
        Ok(())
    }

    async fn open_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.owed ORDER BY r.id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(run_of_row).collect()
    }

    async fn waiting_runs(&self, recipe: &str) -> Result<Vec<RunRecord>, StoreError> {
        self.runs_with_status(recipe, RunStatus::Waiting).await
    }

    async fn runs_with_status(&self, recipe: &str, status: RunStatus) -> Result<Vec<RunRecord>, StoreError> {
        let filter = RunFilter { recipe: Some(recipe), status: Some(status), limit: i64::MAX };
        self.fetch_runs(run_filter(Some(recipe), Some(status)), "ASC", filter).await
    }

    async fn runs(&self, recipe: Option<&str>, limit_to: usize) -> Result<Vec<RunRecord>, StoreError> {
        let filter = RunFilter { recipe, status: None, limit: limit(limit_to) };
        self.fetch_runs(run_filter(recipe, None), "DESC", filter).await
    }

    async fn runs_page(
        &self,
        recipe: Option<&str>,
        status: Option<RunStatus>,
        limit_to: usize,
    ) -> Result<(Vec<RunRecord>, usize), StoreError> {
        let filter = run_filter(recipe, status);
        let count_sql = format!("SELECT count(*) FROM runs r {filter}");
        let total: i64 = sqlx::query_scalar(&count_sql)
            .bind(recipe)
            .bind(status.map(RunStatus::as_str))
            .fetch_one(&self.pool)
            .await?;
        let runs = if limit_to == 0 {
            Vec::new()
        } else {
            self.fetch_runs(filter, "DESC", RunFilter { recipe, status, limit: limit(limit_to) }).await?
        };
        Ok((runs, total as usize))
    }

    /// One statement; the steps go with their runs (`ON DELETE CASCADE`). A run's creation
    /// time is its id's first 13 digits, so "created before the cutoff" is "id below the
    /// cutoff's 13 digits".
    async fn prune_runs(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let cutoff = RunId::new(cutoff_ms, 0);
        let done = sqlx::query(
            "DELETE FROM runs WHERE id < $1 AND NOT owed \
             AND status IN ('succeeded', 'filtered', 'discarded', 'failed')",
        )
        .bind(&cutoff.as_str()[..13])
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() as usize)
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let taken = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) \
             VALUES ($1, $2, clock_timestamp() + $3::int8 * interval '1 millisecond') \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
             WHERE leases.holder = EXCLUDED.holder OR leases.expires_at <= clock_timestamp() \
             RETURNING 1",
        )
        .bind(name)
        .bind(holder)
        .bind(ms(ttl))
        .fetch_optional(&self.pool)
        .await?;
        Ok(taken.is_some())
    }

    async fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE leases SET expires_at = clock_timestamp() + $3::int8 * interval '1 millisecond' \
             WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp()",
        )
        .bind(name)
        .bind(holder)
        .bind(ms(ttl))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn heartbeat(&self, ttl: Duration) -> Result<usize, StoreError> {
        let own = format!("worker:{}", self.worker);
        let mut tx = self.pool.begin().await?;
        // Its own lease is its own whatever its state (no other worker has this name).
        sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) \
             VALUES ($1, $2, clock_timestamp() + $3::int8 * interval '1 millisecond') \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at",
        )
        .bind(&own)
        .bind(&*self.worker)
        .bind(ms(ttl))
        .execute(&mut *tx)
        .await?;
        // The others it holds, while they last (a lapsed one may be another's by now).
        sqlx::query(
            "UPDATE leases SET expires_at = clock_timestamp() + $2::int8 * interval '1 millisecond' \
             WHERE holder = $1 AND expires_at > clock_timestamp()",
        )
        .bind(&*self.worker)
        .bind(ms(ttl))
        .execute(&mut *tx)
        .await?;
        let alive: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM leases WHERE name LIKE 'worker:%' AND expires_at > clock_timestamp()",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(alive as usize)
    }

    async fn leases(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT name, holder, (extract(epoch FROM expires_at) * 1000)::int8 FROM leases ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, holder, expires)| LeaseInfo { name, holder, expires_at_ms: expires.max(0) as u64 })
            .collect())
    }

    /// One statement: the open runs whose owner is none or has no live `worker:` lease
    /// are locked with `SKIP LOCKED` (a run another worker is claiming at the same moment
    /// is left to it) and given to this worker. Its own runs are not claimed: it is alive.
    async fn claim_open_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let sql = format!(
            "WITH claimed AS ( \
               UPDATE runs SET owner = $1 WHERE id IN ( \
                 SELECT c.id FROM runs c \
                 WHERE c.owed AND c.status IN ('queued', 'running') \
                   AND (c.owner IS NULL OR (c.owner <> $1 AND NOT EXISTS ( \
                     SELECT 1 FROM leases l \
                     WHERE l.name = 'worker:' || c.owner AND l.expires_at > clock_timestamp()))) \
                 ORDER BY c.id FOR UPDATE SKIP LOCKED) \
               RETURNING id, header, item) \
             SELECT {RUN_COLUMNS} FROM claimed r ORDER BY r.id"
        );
        let rows = sqlx::query(&sql).bind(&*self.worker).fetch_all(&self.pool).await?;
        rows.iter().map(run_of_row).collect()
    }

    /// A sliding-window log shared by every worker, serialized per budget by an advisory
    /// lock taken in a statement of its own (a statement's snapshot predates a lock it
    /// waits for, so the count must come from a later statement).
    async fn take_request_slot(&self, budget: &str, count: u32, interval: Duration) -> Result<RequestSlot, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('ghlflow budget ' || $1, 0))")
            .bind(budget)
            .execute(&mut *tx)
            .await?;
        let (slot, wait_ms): (Option<i64>, Option<i64>) = sqlx::query_as(
            "WITH old AS (DELETE FROM request_log \
                          WHERE budget = $1 AND at < clock_timestamp() - 2 * $2::int8 * interval '1 millisecond'), \
             win AS (SELECT count(*) AS n, min(at) AS oldest FROM request_log \
                     WHERE budget = $1 AND at > clock_timestamp() - $2::int8 * interval '1 millisecond'), \
             ins AS (INSERT INTO request_log (budget, at) SELECT $1, clock_timestamp() FROM win WHERE win.n < $3 \
                     RETURNING id) \
             SELECT (SELECT id FROM ins), \
                    ceil(extract(epoch FROM (win.oldest + $2::int8 * interval '1 millisecond' - clock_timestamp())) \
                         * 1000)::int8 \
             FROM win",
        )
        .bind(budget)
        .bind(ms(interval))
        .bind(i64::from(count))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(match slot {
            Some(slot) => RequestSlot::Taken(slot as u64),
            None => RequestSlot::Wait(Duration::from_millis(wait_ms.unwrap_or(1).max(1) as u64)),
        })
    }

    async fn settle_request_slot(&self, budget: &str, slot: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE request_log SET at = greatest(at, clock_timestamp()) WHERE id = $1 AND budget = $2")
            .bind(slot as i64)
            .bind(budget)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn export_state(&self) -> Result<Vec<StateRecord>, StoreError> {
        let mut out = Vec::new();
        let rows: Vec<(String, Json<StoredTokens>)> =
            sqlx::query_as("SELECT connection, tokens FROM tokens ORDER BY connection").fetch_all(&self.pool).await?;
        out.extend(rows.into_iter().map(|(connection, Json(tokens))| StateRecord::Tokens { connection, tokens }));
        let rows: Vec<(String, Json<TriggerState>)> =
            sqlx::query_as("SELECT recipe, state FROM trigger_states ORDER BY recipe").fetch_all(&self.pool).await?;
        out.extend(rows.into_iter().map(|(recipe, Json(state))| StateRecord::Trigger { recipe, state }));
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT recipe, item, mark FROM seen_marks ORDER BY recipe, item")
                .fetch_all(&self.pool)
                .await?;
        out.extend(rows.into_iter().map(|(recipe, item, mark)| StateRecord::Seen { recipe, item, mark }));
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT recipe, item FROM present_items ORDER BY recipe, item")
                .fetch_all(&self.pool)
                .await?;
        out.extend(rows.into_iter().map(|(recipe, item)| StateRecord::Present { recipe, item }));
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT key, id FROM id_map ORDER BY key").fetch_all(&self.pool).await?;
        out.extend(rows.into_iter().map(|(key, id)| StateRecord::Id { key, id }));
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT recipe, since FROM paused_recipes ORDER BY recipe").fetch_all(&self.pool).await?;
        out.extend(rows.into_iter().map(|(recipe, since)| StateRecord::Paused { recipe, since }));
        let subscriptions = self.hook_subscriptions().await?;
        if !subscriptions.is_empty() {
            out.push(StateRecord::Subscriptions { subscriptions });
        }
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT id, at FROM hook_deliveries ORDER BY id").fetch_all(&self.pool).await?;
        out.extend(rows.into_iter().map(|(id, at)| StateRecord::Delivery { id, at: at.max(0) as u64 }));
        Ok(out)
    }

    async fn runs_after(&self, after: Option<&RunId>, limit_to: usize) -> Result<Vec<RunRecord>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id > $1 ORDER BY r.id LIMIT $2");
        let rows =
            sqlx::query(&sql).bind(after.map_or("", RunId::as_str)).bind(limit(limit_to)).fetch_all(&self.pool).await?;
        rows.iter().map(run_of_row).collect()
    }

    /// All of a call's records in one transaction. A run keeps its id, status and every
    /// step (pending ones too); one already in the store is replaced whole.
    async fn import_state(&self, records: &[StateRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut runs = RunColumns::default();
        for record in records {
            match record {
                StateRecord::Tokens { connection, tokens } => {
                    sqlx::query(
                        "INSERT INTO tokens (connection, tokens) VALUES ($1, $2) \
                         ON CONFLICT (connection) DO UPDATE SET tokens = EXCLUDED.tokens",
                    )
                    .bind(connection)
                    .bind(Json(tokens))
                    .execute(&mut *tx)
                    .await?;
                }
                StateRecord::Trigger { recipe, state } => {
                    sqlx::query(
                        "INSERT INTO trigger_states (recipe, state) VALUES ($1, $2) \
                         ON CONFLICT (recipe) DO UPDATE SET state = EXCLUDED.state",
                    )
                    .bind(recipe)
                    .bind(Json(state))
                    .execute(&mut *tx)
                    .await?;
                }
                StateRecord::Seen { recipe, item, mark } => {
                    sqlx::query(
                        "INSERT INTO seen_marks (recipe, item, mark) VALUES ($1, $2, $3) \
                         ON CONFLICT (recipe, item) DO UPDATE SET mark = EXCLUDED.mark",
                    )
                    .bind(recipe)
                    .bind(item)
                    .bind(mark)
                    .execute(&mut *tx)
                    .await?;
                }
                StateRecord::Present { recipe, item } => {
                    sqlx::query("INSERT INTO present_items (recipe, item) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                        .bind(recipe)
                        .bind(item)
                        .execute(&mut *tx)
                        .await?;
                }
                StateRecord::Id { key, id } => {
                    sqlx::query(
                        "INSERT INTO id_map (key, id) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET id = EXCLUDED.id",
                    )
                    .bind(key)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                StateRecord::Paused { recipe, since } => {
                    sqlx::query(
                        "INSERT INTO paused_recipes (recipe, since) VALUES ($1, $2) \
                         ON CONFLICT (recipe) DO UPDATE SET since = EXCLUDED.since",
                    )
                    .bind(recipe)
                    .bind(since)
                    .execute(&mut *tx)
                    .await?;
                }
                StateRecord::Subscriptions { subscriptions } => replace_subscriptions(&mut tx, subscriptions).await?,
                StateRecord::Delivery { id, at } => {
                    sqlx::query(
                        "INSERT INTO hook_deliveries (id, at) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
                    )
                    .bind(id)
                    .bind(i64::try_from(*at).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await?;
                }
                StateRecord::Run { run } => runs.push(run, true)?,
            }
        }
        if !runs.id.is_empty() {
            sqlx::query("DELETE FROM runs WHERE id = ANY($1::text[])").bind(&runs.id).execute(&mut *tx).await?;
            runs.insert(&mut tx, &self.worker).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every row of every table, each table in its key's order: (table, key columns joined
    /// by NUL, the row as JSON).
    async fn dump(&self) -> Result<Vec<DumpedRecord>, StoreError> {
        const TABLES: [(&str, &str); 14] = [
            ("hook_deliveries", "id"),
            ("hook_subscriptions", "position"),
            ("id_map", "key"),
            ("leases", "name"),
            ("paused_recipes", "recipe"),
            ("poll_spill", "recipe, slot"),
            ("present_items", "recipe, item"),
            ("request_log", "id"),
            ("run_steps", "run_id, idx"),
            ("runs", "id"),
            ("seen_marks", "recipe, item"),
            ("tokens", "connection"),
            ("trigger_states", "recipe"),
            ("_sqlx_migrations", "version"),
        ];
        let mut out = Vec::new();
        for (table, key) in TABLES {
            let columns = key.split(", ").map(|c| format!("{c}::text")).collect::<Vec<_>>().join(", ");
            let sql = format!("SELECT ARRAY[{columns}], row_to_json(t)::text FROM {table} t ORDER BY {key}");
            let rows: Vec<(Vec<String>, String)> = sqlx::query_as(&sql).fetch_all(&self.pool).await?;
            out.extend(rows.into_iter().map(|(k, v)| (table.to_owned(), k.join("\0").into_bytes(), v.into_bytes())));
        }
        Ok(out)
    }
}

async fn replace_subscriptions(
    tx: &mut Transaction<'_, Postgres>,
    subscriptions: &[HookSubscription],
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM hook_subscriptions").execute(&mut **tx).await?;
    for (i, s) in subscriptions.iter().enumerate() {
        sqlx::query("INSERT INTO hook_subscriptions (position, subscription) VALUES ($1, $2)")
            .bind(i as i32)
            .bind(Json(s))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_clock_never_repeats_or_goes_back() {
        let mut clock = IdClock::default();
        let node = 42;
        let id = |(ms, n): (u64, u32)| RunId::new(ms, node * 1000 + n);
        let mut ids = vec![id(clock.next(5_000))];
        // A burst: a thousand ids in one millisecond, then the millisecond is borrowed.
        for _ in 0..1500 {
            ids.push(id(clock.next(5_000)));
        }
        assert_eq!(ids[999], RunId::new(5_000, 42_999));
        assert_eq!(ids[1000], RunId::new(5_001, 42_000));
        // The wall clock steps back: ids go on from the last one.
        ids.push(id(clock.next(4_000)));
        // It moves past the borrowed time: ids follow it again.
        ids.push(id(clock.next(9_000)));
        assert_eq!(ids.last(), Some(&RunId::new(9_000, 42_000)));
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    }
}
