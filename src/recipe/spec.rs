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
    /// Recipes this one depends on (their ids): in each tick it is polled after them, so the
    /// records they create (a mirrored contact, say) exist before its runs need them.
    #[serde(default)]
    pub after: Vec<String>,
    /// Reference data read once per poll and shared by every run of that poll, by name:
    /// templates see it as `lookups.<name>` (the records of every page). E.g. Capsule's users
    /// with their time zones.
    #[serde(default)]
    pub lookups: BTreeMap<String, LookupSpec>,
    /// Settings the recipe takes from the environment, by variable name: templates read each
    /// as `env.<NAME>`. One with a `default` is optional; one without is required, and
    /// `ghlflow validate` names it (with its `help`) while it is unset.
    #[serde(default)]
    pub settings: indexmap::IndexMap<String, SettingSpec>,
    /// The actions to run for each item, in order.
    pub steps: Vec<StepSpec>,
}

/// One setting of a recipe, read from the environment variable of the same name.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingSpec {
    /// The value used while the variable is unset; without one, the setting is required.
    #[serde(default)]
    pub default: Option<String>,
    /// What the setting is and where to find its value, shown when it is missing.
    #[serde(default)]
    pub help: Option<String>,
}

/// A read operation whose records a recipe's templates may consult (`lookups.<name>`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupSpec {
    /// A read operation's full key, e.g. `capsule.users.list_users`.
    pub operation: String,
    /// The connection (from ghlflow.yaml) to read it on.
    pub connection: String,
    /// Its inputs; templates may use `connection` and `env`.
    #[serde(default)]
    pub input: BTreeMap<String, serde_json::Value>,
}

/// The trigger: an operation polled on a schedule, or an instant trigger the API pushes.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// A trigger operation's full key, e.g. `ghl.contacts.search_contacts`. An instant
    /// trigger (`ghl.contacts.on_contact_create`, see `ghlflow ops list`) runs each event as
    /// it arrives, and the recipe also polls the operation's reconciling poll (if it has one)
    /// every `every` (default 15m), to catch what a missed delivery lost.
    pub operation: String,
    /// The connection (from ghlflow.yaml) to poll it on, and whose events it receives.
    pub connection: String,
    /// Inputs of the polled operation (for an instant trigger, of its reconciling poll);
    /// templates may use `connection` and `env`.
    #[serde(default)]
    pub input: BTreeMap<String, serde_json::Value>,
    /// A polling trigger only: instant triggers of the same app that deliver the same records
    /// early, e.g. `[capsule.parties.on_party_created, capsule.parties.on_party_updated]`
    /// under `capsule.parties.party_updated`. Each must name this operation as its
    /// `reconcile` poll (`ghlflow ops show` says which it names).
    #[serde(default)]
    pub instant: Vec<String>,
    /// How often to poll, from `1m` to `15m` (for an instant trigger's safety-net poll,
    /// default 15m).
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
    /// For a feed of changes with no `since` filter that the API lists newest first
    /// (Capsule's notes): how often a poll reads the whole feed to find edits to old records
    /// (default `1h`, at most `24h`; one at or below the poll interval reads it whole every poll). The polls in between read only until
    /// the first record seen unchanged, which is where every new record is.
    #[serde(default)]
    pub full_scan_every: Option<String>,
    /// Also run once for an item that leaves the feed after it ran: one deleted at the source
    /// (missing from a poll that read the whole list) or one that no longer passes the
    /// recipe's filter. That run sees `trigger.gone` true, with `trigger.id` (and the rest of
    /// the record when it still exists). Items of the first poll's baseline never ran, so
    /// they never count. Needs a feed without a `since` filter (one read whole).
    #[serde(default)]
    pub report_gone: bool,
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
    /// Names from `ids` that must be known before this step can run: while one is not in the
    /// id map yet (the record another recipe creates is not there yet), the run waits
    /// (status `waiting`) and resumes at a later poll, instead of failing.
    #[serde(default)]
    pub wait_for: Vec<String>,
    /// Names from `ids` whose record may be deleted or merged away in the target app: when the
    /// step answers "not found", these ids are forgotten and the run starts over from its first
    /// step (once), so the steps that create the record create it again and re-map it.
    #[serde(default)]
    pub forget_when_gone: Vec<String>,
}

/// A lookup for what an earlier attempt of a write created.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindSpec {
    /// A read run first when the candidates' list needs an id that only exists after the
    /// write (a conversation for a message): the find's operation then runs once per record
    /// of `from`, and its inputs see that record as `from`.
    #[serde(default)]
    pub from: Option<Box<FindFromSpec>>,
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

/// The first read of a two-step find.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindFromSpec {
    /// A read operation, e.g. `ghl.conversations.search_conversations`.
    pub operation: String,
    /// Its inputs (templates, like the step's).
    #[serde(default)]
    pub input: BTreeMap<String, serde_json::Value>,
}
