//! Checking and compiling recipe files. Every problem in every recipe is collected and
//! reported at once, each at its `file:line:col`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::spec::{RecipeSpec, StepSpec, TriggerSpec};
use super::*;
use crate::catalog::{Catalog, Dedupe, Kind, Shape};
use crate::config::{Access, Config};
use crate::diagnostic::{Diagnostics, Position, PositionIndex, hint};
use crate::template::{CompiledTemplate, ROOTS, Reference};

/// The shortest and longest `every`.
const MIN_EVERY: Duration = Duration::from_secs(60);
const MAX_EVERY: Duration = Duration::from_secs(15 * 60);
const DEFAULT_HOLD_ABOVE: u32 = 100;
/// How often an instant trigger's reconciling poll runs when the recipe does not say.
const DEFAULT_RECONCILE_EVERY: Duration = Duration::from_secs(15 * 60);
/// How often a feed of changes listed newest first is read whole, by default and at most.
const DEFAULT_FULL_SCAN: Duration = Duration::from_secs(60 * 60);
const MAX_FULL_SCAN: Duration = Duration::from_secs(24 * 60 * 60);

/// Compiles every `*.yaml` in `dir` (sorted by name). Problems from all files come together.
pub fn load_recipes(
    dir: &Path,
    catalog: &Catalog,
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Recipe>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut entries: Vec<std::path::PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            diags.push(&dir.display().to_string(), Position::default(), format!("cannot read the recipes folder: {e}"));
            return Err(diags);
        }
    };
    entries.sort();
    // `won.yaml` beside `won.yml` would be two recipes with one id (the stem).
    let mut by_stem: HashMap<String, &std::path::PathBuf> = HashMap::new();
    for path in &entries {
        if let Some(first) = by_stem.insert(stem(path), path) {
            diags.push(
                &path.display().to_string(),
                Position::default(),
                format!("has the same recipe id as {}; rename or remove one of them", first.display()),
            );
        }
    }
    let mut recipes = Vec::new();
    let mut texts = BTreeMap::new();
    for path in entries {
        let display = path.display().to_string();
        match crate::fsread::read_text(&path) {
            Ok(text) => match compile_recipe(&display, &stem(&path), &text, catalog, config, env) {
                Ok(r) => {
                    texts.insert(r.id.clone(), text);
                    recipes.push(r)
                }
                Err(d) => diags.extend(d),
            },
            Err(e) => diags.push(&display, e.position, e.message),
        }
    }
    check_order(&recipes, &texts, &mut diags);
    diags.into_result()?;
    Ok(recipes)
}

/// `after:` names recipes that exist, and no recipe waits for itself through others.
fn check_order(recipes: &[Recipe], texts: &BTreeMap<String, String>, diags: &mut Diagnostics) {
    let ids: Vec<&str> = recipes.iter().map(|r| r.id.as_str()).collect();
    let locate = |recipe: &Recipe, i: usize| {
        texts
            .get(&recipe.id)
            .and_then(|t| PositionIndex::build(t).ok())
            .map(|index| index.locate_str(&format!("after[{i}]")))
            .unwrap_or_default()
    };
    for r in recipes {
        for (i, dep) in r.after.iter().enumerate() {
            if !ids.contains(&dep.as_str()) {
                diags.push(
                    &r.file,
                    locate(r, i),
                    format!("after[{i}]: no recipe `{dep}` is loaded{}", hint(dep, ids.iter().copied())),
                );
            }
        }
    }
    if let Err(cycle) = super::poll_order(recipes)
        && let Some(r) = recipes.iter().find(|r| r.id == cycle[0])
    {
        diags.push(
            &r.file,
            locate(r, 0),
            format!("after: recipes wait for each other in a circle: {}", cycle.join(" → ")),
        );
    }
}

fn stem(path: &Path) -> String {
    path.file_stem().unwrap_or_default().to_string_lossy().into_owned()
}

/// The recipe schema as a value, for `unknown_keys`.
static RECIPE_SCHEMA: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| serde_json::to_value(schemars::schema_for!(RecipeSpec)).unwrap_or_default());

/// The JSON Schema of recipe files, generated from the Spec types.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(RecipeSpec);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// Where a problem is: the file and its position index.
struct Site<'a> {
    file: &'a str,
    index: &'a PositionIndex,
}

impl Site<'_> {
    fn push(&self, diags: &mut Diagnostics, at: &str, message: impl Into<String>) {
        let message = message.into();
        let message = if at.is_empty() { message } else { format!("{at}: {message}") };
        diags.push(self.file, self.index.locate_str(at), message);
    }
}

/// What templates at one place may refer to.
#[derive(Clone)]
struct Scope<'a> {
    trigger: Option<Shape>,
    trigger_op: &'a str,
    /// Earlier steps: id, operation key, response shape.
    earlier: Rc<Earlier>,
    /// Every step id, to tell "later" from "unknown".
    all_steps: Rc<Vec<String>>,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// The `ids.<name>` names the current step declares.
    ids: Vec<String>,
    /// `item`, in a find's match: the shape of one candidate.
    item: Option<(String, Shape)>,
    /// The step itself, in its `save` (which runs after it).
    this_step: Option<Rc<(String, String, Shape)>>,
    /// The recipe's `lookups.<name>` names.
    lookups: Vec<String>,
    /// `from`, in a two-step find's inputs: the operation and shape of one of its records.
    from: Option<(String, Shape)>,
}

/// The steps before the one being compiled: id, operation key, response shape, found by id.
/// Shared by every scope cloned from one, so that cloning a scope for each of 10,000 steps
/// does not copy the 9,999 before it (validation stays linear in the file).
#[derive(Clone, Default)]
struct Earlier {
    list: Vec<(String, String, Shape)>,
    by_id: HashMap<String, usize>,
}

impl Earlier {
    fn push(&mut self, id: String, op: String, shape: Shape) {
        self.by_id.entry(id.clone()).or_insert(self.list.len());
        self.list.push((id, op, shape));
    }

    fn get(&self, id: &str) -> Option<&(String, String, Shape)> {
        self.by_id.get(id).and_then(|&i| self.list.get(i))
    }
}

impl<'a> Scope<'a> {
    /// Templates that run before any item exists (trigger inputs, lookups): `connection` and
    /// `env` only.
    fn connection_and_env(env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Scope {
            trigger: None,
            trigger_op: "",
            earlier: Rc::default(),
            all_steps: Rc::default(),
            env,
            ids: Vec::new(),
            item: None,
            this_step: None,
            lookups: Vec::new(),
            from: None,
        }
    }
}

const CONNECTION_FIELDS: &[&str] = &["name", "app", "location_id", "company_id", "base_url"];

/// Checks and compiles one recipe file.
pub fn compile_recipe(
    file: &str,
    id: &str,
    text: &str,
    catalog: &Catalog,
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Recipe, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut doc = crate::yaml::parse(file, text)?;
    let site = Site { file, index: &doc.index };
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        site.push(
            &mut diags,
            "",
            format!("the recipe id (the file name) `{id}` may only hold letters, digits, `-` and `_`"),
        );
    }
    // Every unknown key is reported and set aside, so the rest of the file is still checked.
    let mut value = std::mem::take(&mut doc.value);
    crate::yaml::strip_unknown(&mut value, &RECIPE_SCHEMA, file, &doc.index, &mut diags);
    let Some(spec) = crate::yaml::deserialize::<RecipeSpec>(value, file, &doc.index, &[], &mut diags) else {
        return Err(diags);
    };

    // `env.<NAME>` resolves through the recipe's settings: the variable when set, else the
    // setting's default. A required setting that is unset reads as empty here, so that only
    // the `settings:` entry reports it, once, at its line. Every value read is kept: the
    // compiled recipe carries the environment it was checked against.
    let read_env = std::cell::RefCell::new(BTreeMap::<String, String>::new());
    let env_or_setting = |name: &str| -> Option<String> {
        let value = env(name).or_else(|| spec.settings.get(name).map(|s| s.default.clone().unwrap_or_default()))?;
        read_env.borrow_mut().insert(name.to_owned(), value.clone());
        Some(value)
    };
    let env: &dyn Fn(&str) -> Option<String> = &env_or_setting;
    check_settings(&spec, env, &site, &mut diags);

    let trigger = compile_trigger(&spec.trigger, catalog, config, env, &site, &mut diags);

    // Steps: ids first (so references can tell "later" from "unknown").
    let all_steps: Vec<String> = spec.steps.iter().map(|s| s.id.clone()).collect();
    let mut seen_ids: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in spec.steps.iter().enumerate() {
        let at = format!("steps[{i}].id");
        if s.id.is_empty()
            || !s.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || s.id.starts_with(|c: char| c.is_ascii_digit())
        {
            site.push(
                &mut diags,
                &at,
                format!("step id `{}` must be letters, digits and `_`, not starting with a digit", s.id),
            );
        }
        if let Some(first) = seen_ids.insert(s.id.as_str(), i) {
            site.push(&mut diags, &at, format!("step id `{}` is already used by steps[{first}]", s.id));
        }
    }
    if spec.steps.is_empty() {
        site.push(&mut diags, "steps", "a recipe needs at least one step");
    }

    // Even when the trigger has problems, its operation (if known) still tells what items
    // look like, so step templates are checked without a cascade of follow-on errors.
    // Items come from every source the trigger has (the event, its reconciling poll, the
    // `instant` events of a poll): a reference must hold for each, so it is checked against
    // the fields they have in common.
    let (mut trigger_shape, trigger_label) = item_shape(&spec.trigger, catalog);
    if spec.trigger.report_gone
        && let Shape::Object(fields) = &mut trigger_shape
    {
        fields.insert("gone".into(), Shape::Bool);
    }
    let trigger_shape = Some(trigger_shape);
    let trigger_op = trigger_label;
    let mut scope = Scope {
        trigger: trigger_shape,
        trigger_op: &trigger_op,
        earlier: Rc::default(),
        all_steps: Rc::new(all_steps),
        env,
        ids: Vec::new(),
        item: None,
        this_step: None,
        lookups: spec.lookups.keys().cloned().collect(),
        from: None,
    };

    let lookups = compile_lookups(&spec, catalog, config, env, &site, &mut diags);
    for (i, dep) in spec.after.iter().enumerate() {
        if dep == id {
            site.push(&mut diags, &format!("after[{i}]"), "a recipe cannot wait for itself");
        } else if dep.is_empty() || !dep.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            site.push(
                &mut diags,
                &format!("after[{i}]"),
                format!("`{dep}` is not a recipe id (a file name without .yaml)"),
            );
        }
    }

    let filter = spec.filter.as_deref().and_then(|f| compile_template(f, "filter", &scope, &site, &mut diags));

    let mut steps = Vec::new();
    for (i, s) in spec.steps.iter().enumerate() {
        if let Some(step) = compile_step(i, s, catalog, config, &scope, &site, &mut diags) {
            Rc::make_mut(&mut scope.earlier).push(
                step.id.clone(),
                step.operation.key.to_string(),
                step.operation.body_shape(),
            );
            steps.push(step);
        } else {
            // Keep later references to this step from being reported as unknown.
            Rc::make_mut(&mut scope.earlier).push(s.id.clone(), s.operation.clone(), Shape::Any);
        }
    }

    let concurrency = std::num::NonZeroUsize::new(spec.concurrency.unwrap_or(1) as usize);
    if concurrency.is_none() {
        site.push(&mut diags, "concurrency", "must be at least 1");
    }
    let Some(trigger) = trigger else {
        // compile_trigger reports why whenever it returns None.
        diags.into_result()?;
        let mut d = Diagnostics::default();
        d.push(file, Position { line: 1, col: 1 }, "trigger: could not be compiled");
        return Err(d);
    };
    diags.into_result()?;
    let env_values = read_env.into_inner().into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    Ok(Recipe {
        env: env_values,
        id: id.to_owned(),
        name: spec.name,
        file: file.to_owned(),
        trigger,
        filter,
        steps,
        autoreplay: spec.autoreplay.then_some(super::AUTOREPLAY),
        concurrency: concurrency.unwrap_or(std::num::NonZeroUsize::MIN),
        after: spec.after,
        lookups,
    })
}

/// The recipe's `settings`: names a shell can export, and every required one set. Reading
/// each one also puts it in the compiled recipe's environment, so an optional setting no
/// template names yet is still there for `env`.
fn check_settings(spec: &RecipeSpec, env: &dyn Fn(&str) -> Option<String>, site: &Site, diags: &mut Diagnostics) {
    for (name, setting) in &spec.settings {
        let at = format!("settings.{name}");
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            site.push(diags, &at, format!("`{name}` is not an environment variable name (letters, digits and `_`)"));
            continue;
        }
        let value = env(name).unwrap_or_default();
        if setting.default.is_none() && value.trim().is_empty() {
            let help = setting.help.as_deref().map(|h| format!(": {}", h.trim())).unwrap_or_default();
            site.push(
                diags,
                &at,
                format!("setting `{name}` is required and the environment variable `{name}` is not set{help}"),
            );
        }
    }
}

/// The recipe's `lookups`: read operations with inputs over `connection` and `env`.
fn compile_lookups(
    spec: &RecipeSpec,
    catalog: &Catalog,
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    site: &Site,
    diags: &mut Diagnostics,
) -> Vec<Lookup> {
    let scope = Scope::connection_and_env(env);
    let mut out = Vec::new();
    for (name, l) in &spec.lookups {
        let at = format!("lookups.{name}");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            site.push(diags, &at, format!("lookup name `{name}` must be letters, digits and `_`"));
        }
        let op = lookup_sent_operation(&l.operation, &format!("{at}.operation"), catalog, site, diags);
        let connection = lookup_connection(&l.connection, &format!("{at}.connection"), config, site, diags);
        let (Some(op), Some(connection)) = (op, connection) else { continue };
        check_connection_fits(&op, &connection, &format!("{at}.connection"), site, diags);
        if op.writes() {
            site.push(diags, &format!("{at}.operation"), format!("`{}` writes; a lookup must only read", op.key));
            continue;
        }
        let input = compile_inputs(&l.input, &op, &connection, &format!("{at}.input"), true, &scope, site, diags);
        out.push(Lookup { name: name.clone(), operation: op, connection, input });
    }
    out
}

fn compile_trigger(
    spec: &TriggerSpec,
    catalog: &Catalog,
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    site: &Site,
    diags: &mut Diagnostics,
) -> Option<Trigger> {
    let before = diags.len();
    let op = lookup_operation(&spec.operation, "trigger.operation", catalog, site, diags);
    if let Some(op) = &op
        && op.kind != Kind::Trigger
    {
        site.push(
            diags,
            "trigger.operation",
            format!("`{}` is an action, not a trigger; `ghlflow ops list --kind trigger` lists the triggers", op.key),
        );
    }
    let connection = lookup_connection(&spec.connection, "trigger.connection", config, site, diags);
    if let (Some(op), Some(c)) = (&op, &connection) {
        check_connection_fits(op, c, "trigger.connection", site, diags);
    }

    // An instant trigger: the events come from the listener, and its reconciling poll (if
    // any) takes the place of the polled operation below. A polling trigger may name
    // instant ones that deliver its records early.
    let instant_op = op.as_ref().filter(|o| o.is_webhook()).cloned();
    let mut listens_on: Vec<Arc<Operation>> = Vec::new();
    let op = match &instant_op {
        Some(hook_op) => {
            listens_on.push(Arc::clone(hook_op));
            if !spec.instant.is_empty() {
                site.push(
                    diags,
                    "trigger.instant",
                    format!("`{}` is already an instant trigger; `instant` is for a polling trigger", hook_op.key),
                );
            }
            hook_op
                .webhook
                .as_ref()
                .and_then(|h| h.reconcile.as_ref())
                .and_then(|key| catalog.get(&key.to_string()).cloned())
        }
        None => {
            for (i, key) in spec.instant.iter().enumerate() {
                let at = format!("trigger.instant[{i}]");
                let Some(hook_op) = lookup_operation(key, &at, catalog, site, diags) else { continue };
                let Some(poll) = &op else { continue };
                match &hook_op.webhook {
                    None => site.push(
                        diags,
                        &at,
                        format!(
                            "`{}` is polled, not pushed; `instant` names instant triggers (`source: webhook`)",
                            hook_op.key
                        ),
                    ),
                    Some(_) if hook_op.key.app != poll.key.app => site.push(
                        diags,
                        &at,
                        format!(
                            "`{}` belongs to `{}`, but the trigger polls `{}`",
                            hook_op.key, hook_op.key.app, poll.key.app
                        ),
                    ),
                    Some(hook) if hook.reconcile.as_ref() != Some(&poll.key) => site.push(
                        diags,
                        &at,
                        format!(
                            "`{}` does not deliver the records of `{}`: its reconciling poll is {}",
                            hook_op.key,
                            poll.key,
                            hook.reconcile.as_ref().map(|k| format!("`{k}`")).unwrap_or_else(|| "none".into())
                        ),
                    ),
                    Some(_) if listens_on.iter().any(|o| o.key == hook_op.key) => {
                        site.push(diags, &at, format!("`{}` is listed twice", hook_op.key))
                    }
                    Some(_) => listens_on.push(hook_op),
                }
            }
            op
        }
    };
    // With no reconciling poll, nothing is polled: the webhook operation stands in as the
    // trigger's operation, and `polls` says not to poll it.
    let polls = op.is_some() || instant_op.is_none();
    if instant_op.is_some() && !polls {
        for (field, given) in [
            ("trigger.input", !spec.input.is_empty()),
            ("trigger.every", spec.every.is_some()),
            ("trigger.cron", spec.cron.is_some()),
            ("trigger.full_scan_every", spec.full_scan_every.is_some()),
            ("trigger.report_gone", spec.report_gone),
            ("trigger.dedupe", spec.dedupe.is_some()),
            ("trigger.start", spec.start.is_some()),
            ("trigger.hold_above", spec.hold_above.is_some()),
        ] {
            if given {
                site.push(
                    diags,
                    field,
                    format!(
                        "`{}` has no reconciling poll, so the recipe never polls and `{}` has nothing to apply to",
                        spec.operation,
                        field.trim_start_matches("trigger.")
                    ),
                );
            }
        }
    }
    let op = op.or(instant_op.clone());

    let default_every = instant_op.is_some().then_some(DEFAULT_RECONCILE_EVERY);
    let schedule = match (&spec.every, &spec.cron) {
        (Some(every), None) => match crate::catalog::parse_duration(every) {
            Ok(d) if (MIN_EVERY..=MAX_EVERY).contains(&d) => Some(Schedule::Every(d)),
            Ok(_) => {
                site.push(diags, "trigger.every", format!("`{every}` is out of range: poll every 1m to 15m"));
                None
            }
            Err(e) => {
                site.push(diags, "trigger.every", e);
                None
            }
        },
        (None, Some(expr)) => compile_cron(expr, spec.timezone.as_deref(), site, diags),
        (Some(_), Some(_)) => {
            site.push(diags, "trigger.cron", "give either `every` or `cron`, not both");
            None
        }
        (None, None) => match default_every {
            Some(d) => Some(Schedule::Every(d)),
            None => {
                site.push(diags, "trigger", "say when to poll: `every: 5m` (1m to 15m) or `cron: \"0 */5 * * *\"`");
                None
            }
        },
    };
    if spec.timezone.is_some() && spec.cron.is_none() {
        site.push(diags, "trigger.timezone", "`timezone` applies to `cron` only");
    }
    let start = match spec.start.as_deref() {
        None | Some("now") => Start::Now,
        Some("backfill") => Start::Backfill,
        Some(other) => {
            site.push(diags, "trigger.start", format!("unknown start `{other}`; expected now or backfill"));
            Start::Now
        }
    };
    // The webhook operation standing in for a missing poll has no dedupe rule; its events are
    // told apart by the listener, and `id` is what its records would dedupe by.
    // An event that declares how its reconciling poll dedupes (a creation: by id) sets the
    // rule for that poll.
    let event_dedupe = instant_op.as_ref().and_then(|o| o.dedupe);
    let dedupe = match (spec.dedupe.as_deref(), &op) {
        (None, Some(op)) if !polls && op.dedupe.is_none() => Some(Dedupe::Id),
        (None, Some(_)) if event_dedupe.is_some() => event_dedupe,
        (Some(d), _) => match Dedupe::parse(d) {
            Some(d) => Some(d),
            None => {
                site.push(
                    diags,
                    "trigger.dedupe",
                    format!("unknown dedupe rule `{d}`; expected id, id_updated or content"),
                );
                None
            }
        },
        (None, Some(op)) => op.dedupe,
        (None, None) => None,
    };
    if let (Some(op), Some(d)) = (&op, dedupe)
        && let Some(output) = &op.output
        && polls
    {
        let list = matches!(output.records, crate::catalog::Records::Items(_));
        match d {
            Dedupe::Content if list && output.id.is_none() => site.push(
                diags,
                "trigger.dedupe",
                "`content` on a list needs records with an id; this list has none, use `id`",
            ),
            Dedupe::Id | Dedupe::IdUpdated if !list => site.push(
                diags,
                "trigger.dedupe",
                format!("`{}` is for list triggers; this one watches a single record", d.as_str()),
            ),
            Dedupe::IdUpdated if output.updated.is_none() => {
                site.push(diags, "trigger.dedupe", format!("`{}` has no updated-time field to compare", op.key))
            }
            _ => {}
        }
    }

    let full_scan_every = match spec.full_scan_every.as_deref() {
        None => Some(DEFAULT_FULL_SCAN),
        Some(text) => match crate::catalog::parse_duration(text) {
            Ok(d) if d <= MAX_FULL_SCAN => Some(d),
            Ok(_) => {
                site.push(
                    diags,
                    "trigger.full_scan_every",
                    format!("`{text}` is more than a day; read the whole feed at least daily"),
                );
                None
            }
            Err(e) => {
                site.push(diags, "trigger.full_scan_every", e);
                None
            }
        },
    };

    if spec.report_gone
        && let Some(op) = &op
        && polls
    {
        let list = op.output.as_ref().is_some_and(|o| matches!(o.records, crate::catalog::Records::Items(_)));
        if !list {
            site.push(diags, "trigger.report_gone", format!("`{}` watches a single record, not a list", op.key));
        } else if let Some(since) = &op.since {
            site.push(
                diags,
                "trigger.report_gone",
                format!(
                    "`{}` reads only what changed since its cursor (`{since}`), so no poll can tell that an item \
                     is missing; watch the API's own deletions feed instead",
                    op.key
                ),
            );
        }
    }

    // Trigger inputs: templates over connection and env only.
    let scope = Scope::connection_and_env(env);
    let input = match (&op, &connection) {
        (Some(op), Some(c)) if polls => compile_inputs(&spec.input, op, c, "trigger.input", true, &scope, site, diags),
        _ => Vec::new(),
    };

    if diags.len() > before {
        return None;
    }
    let (op, connection) = (op?, connection?);
    let listens = listens_on
        .into_iter()
        .filter_map(|o| {
            let event = o.webhook.as_ref()?.event.clone();
            Some(Listen { connection: Arc::clone(&connection), event, operation: o })
        })
        .collect();
    // The position belongs to the polled operation: adding `instant` events to a polling
    // recipe keeps it.
    let fingerprint = serde_json::json!({
        "operation": op.key.to_string(),
        "connection": connection.name,
        "input": spec.input,
        "dedupe": dedupe.map(|d| d.as_str()),
    })
    .to_string();
    Some(Trigger {
        operation: op,
        polls,
        listens,
        connection,
        input,
        schedule: schedule?,
        start,
        hold_above: match spec.hold_above.unwrap_or(DEFAULT_HOLD_ABOVE) {
            0 => None,
            n => Some(n),
        },
        dedupe: dedupe?,
        full_scan_every: full_scan_every?,
        report_gone: spec.report_gone,
        fingerprint,
    })
}

fn compile_cron(expr: &str, timezone: Option<&str>, site: &Site, diags: &mut Diagnostics) -> Option<Schedule> {
    let fields = expr.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {expr}"),
        6 | 7 => expr.to_owned(),
        n => {
            site.push(
                diags,
                "trigger.cron",
                format!("`{expr}` has {n} fields; write 5 (minute hour day month weekday) or 6 with seconds first"),
            );
            return None;
        }
    };
    let schedule = match cron::Schedule::from_str(&full) {
        Ok(s) => s,
        Err(e) => {
            // The cron crate's message repeats the expression with a caret line; keep its reason.
            let reason = e.to_string();
            let reason = reason.lines().last().unwrap_or_default().trim().to_owned();
            site.push(diags, "trigger.cron", format!("`{expr}` is not a valid cron expression: {reason}"));
            return None;
        }
    };
    let tz = match timezone {
        None => chrono_tz::UTC,
        Some(name) => match name.parse::<chrono_tz::Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                site.push(
                    diags,
                    "trigger.timezone",
                    format!("unknown time zone `{name}`; use an IANA name such as Europe/London"),
                );
                return None;
            }
        },
    };
    let times: Vec<_> = schedule.upcoming(tz).take(20).collect();
    if times.is_empty() {
        site.push(diags, "trigger.cron", format!("`{expr}` never fires"));
        return None;
    }
    if times.windows(2).any(|w| (w[1] - w[0]) < chrono::Duration::seconds(60)) {
        site.push(
            diags,
            "trigger.cron",
            format!("`{expr}` fires more than once a minute; ghlflow polls at most once a minute"),
        );
        return None;
    }
    Some(Schedule::Cron { schedule: Box::new(schedule), timezone: tz, source: expr.to_owned() })
}

fn lookup_operation(
    key: &str,
    at: &str,
    catalog: &Catalog,
    site: &Site,
    diags: &mut Diagnostics,
) -> Option<Arc<Operation>> {
    match catalog.get(key) {
        Some(op) => Some(op.clone()),
        None => {
            let suggestion = catalog.suggest(key).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
            site.push(diags, at, format!("unknown operation `{key}`{suggestion}"));
            None
        }
    }
}

/// An operation that is sent (a step, a lookup, a find): an instant trigger is refused.
fn lookup_sent_operation(
    key: &str,
    at: &str,
    catalog: &Catalog,
    site: &Site,
    diags: &mut Diagnostics,
) -> Option<Arc<Operation>> {
    let op = lookup_operation(key, at, catalog, site, diags)?;
    if let Some(hook) = &op.webhook {
        site.push(
            diags,
            at,
            format!(
                "`{}` is an instant trigger (the API pushes the `{}` event); it can only be a recipe's \
                 `trigger.operation`, never sent",
                op.key, hook.event
            ),
        );
        return None;
    }
    Some(op)
}

/// The shape of one trigger item for template checks, and how to name its sources: the
/// fields common to the trigger's operation, its reconciling poll (an instant trigger) and
/// its `instant` events (a polling trigger). Unknown names count as no source (they are
/// reported by `compile_trigger`).
fn item_shape(spec: &TriggerSpec, catalog: &Catalog) -> (Shape, String) {
    let Some(op) = catalog.get(&spec.operation) else { return (Shape::Any, spec.operation.clone()) };
    let mut sources: Vec<&Arc<Operation>> = vec![op];
    if let Some(poll) = op.webhook.as_ref().and_then(|h| h.reconcile.as_ref()).and_then(|k| catalog.get(&k.to_string()))
    {
        sources.push(poll);
    }
    sources.extend(spec.instant.iter().filter_map(|k| catalog.get(k)).filter(|o| o.is_webhook()));
    let shape = sources.iter().map(|o| o.record_shape()).reduce(Shape::common).unwrap_or(Shape::Any);
    let label = match sources.as_slice() {
        [only] => only.key.to_string(),
        [first, rest @ ..] => format!(
            "{} (the fields it shares with {})",
            first.key,
            rest.iter().map(|o| format!("`{}`", o.key)).collect::<Vec<_>>().join(" and ")
        ),
        [] => spec.operation.clone(),
    };
    (shape, label)
}

fn lookup_connection(
    name: &str,
    at: &str,
    config: &Config,
    site: &Site,
    diags: &mut Diagnostics,
) -> Option<Arc<crate::config::Connection>> {
    match config.connections.get(name) {
        Some(c) => Some(c.clone()),
        None => {
            let names: Vec<&str> = config.connections.keys().map(String::as_str).collect();
            site.push(
                diags,
                at,
                format!(
                    "unknown connection `{name}`{}; {} defines: {}",
                    hint(name, names.iter().copied()),
                    config.path.display(),
                    names.join(", ")
                ),
            );
            None
        }
    }
}

fn check_connection_fits(
    op: &Operation,
    c: &crate::config::Connection,
    at: &str,
    site: &Site,
    diags: &mut Diagnostics,
) {
    if c.app.id != op.key.app {
        site.push(
            diags,
            at,
            format!("connection `{}` is for app `{}`, but `{}` belongs to `{}`", c.name, c.app.id, op.key, op.key.app),
        );
    } else if c.access == Access::ReadOnly && op.writes() {
        let scope = op.scope.as_ref().map(|s| s.0.as_str()).unwrap_or("a write");
        site.push(diags, at, format!("`{}` writes (scope {scope}), but connection `{}` is read_only", op.key, c.name));
    }
}

#[allow(clippy::too_many_arguments)]
fn compile_step(
    i: usize,
    spec: &StepSpec,
    catalog: &Catalog,
    config: &Config,
    scope: &Scope,
    site: &Site,
    diags: &mut Diagnostics,
) -> Option<Step> {
    let before = diags.len();
    let at = format!("steps[{i}]");
    let op = lookup_sent_operation(&spec.operation, &format!("{at}.operation"), catalog, site, diags);
    let connection = lookup_connection(&spec.connection, &format!("{at}.connection"), config, site, diags);
    if let (Some(op), Some(c)) = (&op, &connection) {
        check_connection_fits(op, c, &format!("{at}.connection"), site, diags);
    }
    // The id-map keys see what the step's other templates see, and the ids named above them.
    let mut ids = Vec::new();
    for (n, (name, key)) in spec.ids.iter().enumerate() {
        let key_scope = Scope { ids: spec.ids.keys().take(n).cloned().collect(), ..scope.clone() };
        if let Some(t) = compile_template(key, &format!("{at}.ids.{name}"), &key_scope, site, diags) {
            ids.push((name.clone(), t));
        }
    }
    let scope = Scope { ids: spec.ids.keys().cloned().collect(), item: None, ..scope.clone() };
    let condition =
        spec.condition.as_deref().and_then(|c| compile_template(c, &format!("{at}.if"), &scope, site, diags));
    let input = match (&op, &connection) {
        (Some(op), Some(c)) => compile_inputs(&spec.input, op, c, &format!("{at}.input"), false, &scope, site, diags),
        _ => Vec::new(),
    };
    // `save` runs after the step, so it may read the step's own response.
    let mut after = scope.clone();
    if let Some(op) = &op {
        after.this_step = Some(Rc::new((spec.id.clone(), op.key.to_string(), op.body_shape())));
    }
    let mut save = Vec::new();
    for (key, value) in &spec.save {
        let k = compile_template(key, &format!("{at}.save"), &after, site, diags);
        let v = compile_template(value, &format!("{at}.save.{key}"), &after, site, diags);
        if let (Some(k), Some(v)) = (k, v) {
            save.push((k, v));
        }
    }
    let find = match (&spec.find, &connection) {
        (Some(f), Some(c)) => compile_find(f, &at, c, catalog, &scope, site, diags),
        _ => None,
    };
    for (key, names) in [("wait_for", &spec.wait_for), ("forget_when_gone", &spec.forget_when_gone)] {
        for (n, name) in names.iter().enumerate() {
            if !spec.ids.contains_key(name) {
                site.push(
                    diags,
                    &format!("{at}.{key}[{n}]"),
                    format!(
                        "`{name}` is not one of this step's `ids`{}",
                        if spec.ids.is_empty() {
                            "; declare it: `ids: { <name>: \"<key template>\" }`".to_owned()
                        } else {
                            hint(name, spec.ids.keys().map(String::as_str))
                        }
                    ),
                );
            }
        }
    }
    if diags.len() > before {
        return None;
    }
    Some(Step {
        id: spec.id.clone(),
        operation: op?,
        connection: connection?,
        condition,
        input,
        ids,
        save,
        find,
        wait_for: spec.wait_for.clone(),
        forget_when_gone: spec.forget_when_gone.clone(),
    })
}

fn compile_find(
    spec: &super::spec::FindSpec,
    at: &str,
    connection: &Arc<crate::config::Connection>,
    catalog: &Catalog,
    scope: &Scope,
    site: &Site,
    diags: &mut Diagnostics,
) -> Option<Find> {
    let at = format!("{at}.find");
    let read = |key: &str, at: &str, diags: &mut Diagnostics| -> Option<Arc<Operation>> {
        let op = lookup_sent_operation(key, at, catalog, site, diags)?;
        check_connection_fits(&op, connection, at, site, diags);
        if op.writes() {
            site.push(diags, at, format!("`{}` writes; a find must only read", op.key));
        }
        Some(op)
    };
    let mut from = None;
    let mut input_scope = scope.clone();
    if let Some(f) = &spec.from {
        let op = read(&f.operation, &format!("{at}.from.operation"), diags)?;
        let input = compile_inputs(&f.input, &op, connection, &format!("{at}.from.input"), true, scope, site, diags);
        input_scope.from = Some((op.key.to_string(), op.record_shape()));
        from = Some(FindFrom { operation: op, input });
    }
    let op = read(&spec.operation, &format!("{at}.operation"), diags)?;
    let input = compile_inputs(&spec.input, &op, connection, &format!("{at}.input"), true, &input_scope, site, diags);
    let item_scope = Scope { item: Some((op.key.to_string(), op.record_shape())), ..input_scope };
    let matcher = compile_template(&spec.matcher, &format!("{at}.match"), &item_scope, site, diags)?;
    Some(Find { from, operation: op, input, matcher })
}

#[allow(clippy::too_many_arguments)]
fn compile_inputs(
    inputs: &BTreeMap<String, Value>,
    op: &Operation,
    connection: &crate::config::Connection,
    at: &str,
    is_trigger: bool,
    scope: &Scope,
    site: &Site,
    diags: &mut Diagnostics,
) -> Vec<(String, ValueTemplate)> {
    let mut out = Vec::new();
    for (name, value) in inputs {
        let here = format!("{at}.{name}");
        let Some(input) = op.input(name) else {
            site.push(
                diags,
                &here,
                format!(
                    "unknown input `{name}` for {}{}",
                    op.key,
                    hint(name, op.inputs.iter().map(|i| i.name.as_str()))
                ),
            );
            continue;
        };
        if let Some(t) = compile_value(value, &here, scope, site, diags) {
            if let ValueTemplate::Literal(v) = &t {
                match input.ty.coerce(v) {
                    None => site.push(diags, &here, format!("`{name}` takes {}, not {v}", input.ty)),
                    Some(c) => {
                        if let Some(allowed) = &input.allowed
                            && !allowed.contains(&c)
                        {
                            let list: Vec<String> = allowed
                                .iter()
                                .map(|a| a.as_str().map(str::to_owned).unwrap_or_else(|| a.to_string()))
                                .collect();
                            site.push(
                                diags,
                                &here,
                                format!("`{name}` is {v}, which is not one of: {}", list.join(", ")),
                            );
                        }
                    }
                }
            }
            out.push((name.clone(), t));
        }
    }
    // Required inputs: given, defaulted from the connection, or (triggers) filled by the poller.
    let engine_filled = |n: &str| is_trigger && (op.since.as_deref() == Some(n) || pagination_param(op, n));
    let missing: Vec<&str> = op
        .inputs
        .iter()
        .filter(|i| {
            i.required
                && !inputs.contains_key(&i.name)
                && connection.default_for(&i.name).is_none()
                && !engine_filled(&i.name)
        })
        .map(|i| i.name.as_str())
        .collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|m| format!("`{m}`")).collect();
        let at_or_parent = if inputs.is_empty() { at.rsplit_once('.').map(|(p, _)| p).unwrap_or(at) } else { at };
        site.push(
            diags,
            at_or_parent,
            format!(
                "missing required input{} {} for {}",
                if missing.len() == 1 { "" } else { "s" },
                list.join(", "),
                op.key
            ),
        );
    }
    out
}

/// Inputs the pager sets itself.
fn pagination_param(op: &Operation, name: &str) -> bool {
    use crate::catalog::Pagination as P;
    match &op.pagination {
        P::None => false,
        P::Offset { limit, offset, .. } => name == limit || name == offset,
        P::Page { page, size, .. } => name == page || name == size,
        P::StartAfter { limit, .. } => name == limit || name == "startAfter" || name == "startAfterId",
        P::Cursor { param, limit, .. } => name == param || limit.as_deref() == Some(name),
        P::LinkHeader { size, .. } => name == size,
    }
}

fn compile_value(
    value: &Value,
    at: &str,
    scope: &Scope,
    site: &Site,
    diags: &mut Diagnostics,
) -> Option<ValueTemplate> {
    match value {
        Value::String(s) if s.contains("{{") => {
            compile_template(s, at, scope, site, diags).map(ValueTemplate::Template)
        }
        Value::Array(items) => {
            let mut out = Vec::new();
            for (i, v) in items.iter().enumerate() {
                out.push(compile_value(v, &format!("{at}[{i}]"), scope, site, diags)?);
            }
            Some(ValueTemplate::Array(out))
        }
        Value::Object(map) => {
            let mut out = Vec::new();
            for (k, v) in map {
                out.push((k.clone(), compile_value(v, &format!("{at}.{k}"), scope, site, diags)?));
            }
            Some(ValueTemplate::Object(out))
        }
        other => Some(ValueTemplate::Literal(other.clone())),
    }
}

fn compile_template(
    source: &str,
    at: &str,
    scope: &Scope,
    site: &Site,
    diags: &mut Diagnostics,
) -> Option<CompiledTemplate> {
    let t = match CompiledTemplate::compile(source) {
        Ok(t) => t,
        Err(e) => {
            let place = match (e.line, e.col) {
                (Some(l), Some(c)) => format!(" (template line {l}, column {c})"),
                _ => String::new(),
            };
            site.push(diags, at, format!("{}{place}", e.message));
            return None;
        }
    };
    let before = diags.len();
    for r in t.references() {
        if let Some(problem) = check_reference(&r, scope) {
            site.push(diags, at, problem);
        }
    }
    (diags.len() == before).then_some(t)
}

/// Why a reference cannot work, if it cannot.
fn check_reference(r: &Reference, scope: &Scope) -> Option<String> {
    let first = r.segments.first()?.as_str();
    let rest = &r.segments[1..];
    match first {
        "trigger" => {
            let Some(shape) = &scope.trigger else {
                return Some(format!("`{}`: trigger inputs can use only `connection` and `env`", r.raw));
            };
            let problem = field_problem(shape, rest, &r.raw, &format!("an item of {}", scope.trigger_op));
            match problem {
                Some(p) if rest.len() == 1 && rest[0] == "gone" => {
                    Some(format!("{p}; `trigger.gone` exists with `report_gone: true` on the trigger"))
                }
                other => other,
            }
        }
        "steps" => {
            let Some(step) = rest.first() else { return Some("`steps` needs a step id: `steps.<id>.<field>`".into()) };
            if let Some((_, op, shape)) =
                scope.earlier.get(step).or(scope.this_step.as_deref().filter(|s| &s.0 == step))
            {
                return field_problem(shape, &rest[1..], &r.raw, &format!("the response of {op}"));
            }
            if scope.all_steps.contains(step) {
                return Some(format!(
                    "`{}` refers to step `{step}`, which has not run yet at this point (a step can use only earlier steps)",
                    r.raw
                ));
            }
            let known: Vec<&str> = scope.all_steps.iter().map(String::as_str).collect();
            Some(format!(
                "`{}` refers to step `{step}`, which does not exist{}",
                r.raw,
                hint(step, known.iter().copied())
            ))
        }
        "connection" => match rest.first().map(String::as_str) {
            None => None,
            Some(f) if CONNECTION_FIELDS.contains(&f) && rest.len() == 1 => None,
            Some(f) => Some(format!(
                "`{}`: connections have {}{}",
                r.raw,
                CONNECTION_FIELDS.join(", "),
                hint(f, CONNECTION_FIELDS.iter().copied())
            )),
        },
        "ids" => match rest.first() {
            None => Some("`ids` needs a name: `ids.<name>`, declared in the step's `ids:`".into()),
            Some(name) if scope.ids.contains(name) => None,
            Some(name) => Some(format!(
                "`{}`: this step declares no id named `{name}`{}",
                r.raw,
                if scope.ids.is_empty() {
                    "; add `ids: { <name>: \"<key template>\" }` to the step".to_owned()
                } else {
                    hint(name, scope.ids.iter().map(String::as_str))
                }
            )),
        },
        "item" => match &scope.item {
            Some((op, shape)) => field_problem(shape, rest, &r.raw, &format!("a record of {op}")),
            None => Some(format!("`{}`: `item` exists only in a find's `match`", r.raw)),
        },
        // The step's own rendered inputs, for a find's `match` (the message that was sent).
        "input" => match &scope.item {
            Some(_) => None,
            None => Some(format!("`{}`: `input` exists only in a find's `match`", r.raw)),
        },
        "from" => match &scope.from {
            Some((op, shape)) => field_problem(shape, rest, &r.raw, &format!("a record of {op}")),
            None => Some(format!("`{}`: `from` exists only in a two-step find (after `find.from`)", r.raw)),
        },
        "lookups" => match rest.first() {
            None => Some("`lookups` needs a name: `lookups.<name>`, declared in the recipe's `lookups:`".into()),
            Some(name) if scope.lookups.contains(name) => None,
            Some(name) => Some(format!(
                "`{}`: the recipe declares no lookup named `{name}`{}",
                r.raw,
                if scope.lookups.is_empty() {
                    "; add `lookups: { <name>: { operation: ..., connection: ... } }` to the recipe".to_owned()
                } else {
                    hint(name, scope.lookups.iter().map(String::as_str))
                }
            )),
        },
        "env" => match rest.first() {
            None => Some("`env` needs a variable name: `env.NAME`".into()),
            Some(name) if (scope.env)(name).is_none() => {
                Some(format!("`{}`: environment variable `{name}` is not set", r.raw))
            }
            Some(_) => None,
        },
        other => Some(format!(
            "unknown name `{}`; templates can use {}{}",
            r.raw,
            ROOTS.join(", "),
            hint(other, ROOTS.iter().copied())
        )),
    }
}

fn field_problem(shape: &Shape, path: &[String], raw: &str, what: &str) -> Option<String> {
    match shape.resolve(path) {
        Ok(_) => None,
        Err((depth, at)) => {
            let missing = &path[depth];
            let names = at.field_names();
            Some(format!("`{raw}`: {what} has no field `{missing}`{}", hint(missing, names.iter().copied())))
        }
    }
}
