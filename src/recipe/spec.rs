//! Recipe files (`recipes/<id>.yaml`), mirrored exactly. Doc comments here are the user's
//! reference for the format, and the source of the published JSON Schema
//! (`docs/recipe.schema.json`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One automation: a trigger, an optional filter, and the steps to run for each item.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ghlflow recipe")]
pub struct RecipeSpec {
    /// What the recipe does, in a few words.
    pub name: String,
    /// A longer explanation, for people reading the file.
    #[serde(default)]
    pub description: Option<String>,
    /// Where items come from.
    pub trigger: TriggerSpec,
    /// A template; items for which it renders empty, `false`, `0` or `null` are skipped.
    #[serde(default)]
    pub filter: Option<String>,
    /// Replay failed runs automatically, with growing delays (default false).
    #[serde(default)]
    pub autoreplay: bool,
    /// How many of this recipe's runs may be in flight at once. 1 (the default) runs a
    /// poll's items one after another, oldest first; more starts them oldest first but lets
    /// them overlap, for recipes whose items do not depend on each other.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// The actions to run for each item, in order.
    pub steps: Vec<StepSpec>,
}

/// The trigger: an operation polled on a schedule.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// A trigger operation's full key, e.g. `ghl.contacts.search_contacts`.
    pub operation: String,
    /// The connection (from ghlflow.yaml) to poll it on.
    pub connection: String,
    /// Inputs of the trigger operation; templates may use `connection` and `env`.
    #[serde(default)]
    pub input: BTreeMap<String, serde_json::Value>,
    /// How often to poll, from `1m` to `15m`.
    #[serde(default)]
    pub every: Option<String>,
    /// Or a cron expression (5 fields, or 6 with seconds); it may fire at most once a minute.
    #[serde(default)]
    pub cron: Option<String>,
    /// The time zone of `cron` (IANA name, default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// `now` (default): the first poll records what exists and fires nothing.
    /// `backfill`: the first poll runs every existing item.
    #[serde(default)]
    pub start: Option<String>,
    /// A poll that finds more new items than this holds them for `ghlflow runs release` or
    /// `discard` instead of running them (default 100; 0 never holds).
    #[serde(default)]
    pub hold_above: Option<u32>,
    /// Overrides the operation's dedupe rule: `id`, `id_updated` or `content`.
    #[serde(default)]
    pub dedupe: Option<String>,
}

/// One action of the chain.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// The step's name; later steps read its response as `steps.<id>`.
    pub id: String,
    /// The operation's full key, e.g. `ghl.contacts.upsert_contact`.
    pub operation: String,
    /// The connection (from ghlflow.yaml) to run it on.
    pub connection: String,
    /// A template; the step is skipped when it renders empty, `false`, `0` or `null`.
    #[serde(default, rename = "if")]
    pub condition: Option<String>,
    /// The operation's inputs. Strings are templates over `trigger`, `steps`, `connection`
    /// and `env`; a template that is exactly one expression keeps the value's type.
    #[serde(default)]
    pub input: BTreeMap<String, serde_json::Value>,
    /// Ids remembered by earlier runs (the id map), by name: each value is a key template,
    /// and this step's templates see `ids.<name>`, the id stored under that key (empty when
    /// none). E.g. `contact: "party:{{trigger.id}}"`. A key may use the ids named above it.
    #[serde(default)]
    pub ids: indexmap::IndexMap<String, String>,
    /// After the step succeeds, remember ids: key template to id template, e.g.
    /// `"entry:{{trigger.id}}": "{{steps.note.note.id}}"`. A retried or replayed run then
    /// finds the record this step created instead of creating it again.
    #[serde(default)]
    pub save: BTreeMap<String, String>,
    /// For a write whose answer was lost (a timeout, a dropped connection, a 5xx): how to look
    /// for what it may have created before sending it again.
    #[serde(default)]
    pub find: Option<FindSpec>,
}

/// A lookup for what an earlier attempt of a write created.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindSpec {
    /// A read operation listing candidates, e.g. `ghl.contacts.get_contact_notes`.
    pub operation: String,
    /// Its inputs (templates, like the step's).
    #[serde(default)]
    pub input: BTreeMap<String, serde_json::Value>,
    /// A template over `item` (one candidate) and the step's context; the first candidate for
    /// which it is true is taken as what the lost write created.
    #[serde(rename = "match")]
    pub matcher: String,
}
