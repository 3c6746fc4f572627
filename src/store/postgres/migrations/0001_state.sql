-- ghlflow's state store on PostgreSQL, version 1. Serde structs (token sets, trigger
-- states, run headers, steps) are jsonb; what is looked up or counted is a column.

-- OAuth tokens of each connection (`StoredTokens`).
CREATE TABLE tokens (
    connection text PRIMARY KEY,
    tokens jsonb NOT NULL
);

-- Each recipe's trigger position (`TriggerState`, with its reset count `generation`).
CREATE TABLE trigger_states (
    recipe text PRIMARY KEY,
    state jsonb NOT NULL
);

-- Seen marks: (recipe, item) -> the mark the item was last run at.
CREATE TABLE seen_marks (
    recipe text NOT NULL,
    item text NOT NULL,
    mark text NOT NULL,
    PRIMARY KEY (recipe, item)
);

-- Items that ran and have not gone since (`trigger.report_gone`).
CREATE TABLE present_items (
    recipe text NOT NULL,
    item text NOT NULL,
    PRIMARY KEY (recipe, item)
);

-- A poll's new records between the page that brought them and their runs.
CREATE TABLE poll_spill (
    recipe text NOT NULL,
    slot bigint NOT NULL,
    record jsonb NOT NULL,
    PRIMARY KEY (recipe, slot)
);

-- Remembered ids (`party:123` -> a GHL contact id).
CREATE TABLE id_map (
    key text PRIMARY KEY,
    id text NOT NULL
);

-- Paused recipes and since when (ISO 8601).
CREATE TABLE paused_recipes (
    recipe text PRIMARY KEY,
    since text NOT NULL
);

-- ghlflow's subscriptions at the APIs, in the order they were saved.
CREATE TABLE hook_subscriptions (
    position integer PRIMARY KEY,
    subscription jsonb NOT NULL
);

-- Instant deliveries recorded (GHL `webhookId`), with when (Unix seconds).
CREATE TABLE hook_deliveries (
    id text PRIMARY KEY,
    at bigint NOT NULL
);
CREATE INDEX hook_deliveries_at ON hook_deliveries (at);

-- Leases between workers; `expires_at` is always set from the database's clock.
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX leases_holder ON leases (holder);

-- The sends of each shared request budget (a sliding-window log); the id names the slot.
CREATE TABLE request_log (
    id bigserial PRIMARY KEY,
    budget text NOT NULL,
    at timestamptz NOT NULL
);
CREATE INDEX request_log_budget_at ON request_log (budget, at);

-- Node numbers of the workers, for run ids unique across workers (see `next_run_id`).
CREATE SEQUENCE worker_nodes;

-- The run journal: one row per run. The columns are what is queried (the whole header is
-- in `header` as well, written with them); `owed` is `RunStatus::is_owed` of the header,
-- the open-run index; `owner` is the worker that created or last claimed the run. Ids
-- compare bytewise (COLLATE "C"): their order is creation order whatever the database's
-- locale, and pruning compares them with a time's 13 digits.
CREATE TABLE runs (
    id text COLLATE "C" PRIMARY KEY,
    recipe text NOT NULL,
    status text NOT NULL,
    item_id text,
    created text NOT NULL,
    next_replay_at bigint,
    owed boolean NOT NULL,
    owner text,
    header jsonb NOT NULL,
    item jsonb NOT NULL
);
CREATE INDEX runs_recipe_status ON runs (recipe, status, id);
CREATE INDEX runs_recipe ON runs (recipe, id);
CREATE INDEX runs_status ON runs (status, id);
CREATE INDEX runs_owed ON runs (id) WHERE owed;

-- Each step of a run as last written, by its position in the recipe.
CREATE TABLE run_steps (
    run_id text COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    idx integer NOT NULL,
    step jsonb NOT NULL,
    PRIMARY KEY (run_id, idx)
);
