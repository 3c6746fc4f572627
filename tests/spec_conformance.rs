//! Every GHL operation of the catalog against the official OpenAPI specs in
//! ../shared/ghl-openapi: method and path exist, the Version header and scope match, every
//! parameter the spec requires is a required input, and every input exists in the spec under
//! that name and location. Where the spec itself is wrong, the mismatch is listed in
//! `KNOWN_DEFECTS` with the reason; a listed defect that no longer occurs fails the test too,
//! so the list cannot go stale.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ghlflow::catalog::{self, InputLocation, Operation};
use serde_json::Value;

use crate::util::{root, shared};

/// (operation key, check, reason). A check is one of the strings `check_operation` produces.
const KNOWN_DEFECTS: &[(&str, &str, &str)] = &[
    (
        "ghl.blogs.update_blog_post",
        "path input `postId` is not in the spec",
        "the path has {postId} but the spec declares no such parameter",
    ),
    (
        "ghl.calendars.delete_appointment_note",
        "path input `noteId` is not in the spec",
        "the path has {noteId} but the spec declares no such parameter",
    ),
    (
        "ghl.calendars.update_appointment_note",
        "path input `noteId` is not in the spec",
        "the path has {noteId} but the spec declares no such parameter",
    ),
    (
        "ghl.contacts.bulk_update_contact_tags",
        "path input `type` is not in the spec",
        "the path has {type} (add|remove) but the spec declares no such parameter",
    ),
    (
        "ghl.contacts.search_contacts",
        "body input `filters` is not in the spec",
        "the spec's search body schema is empty; the fields come from observed usage",
    ),
    (
        "ghl.contacts.search_contacts",
        "body input `locationId` is not in the spec",
        "the spec's search body schema is empty; the API needs locationId in practice",
    ),
    (
        "ghl.contacts.search_contacts",
        "body input `pageLimit` is not in the spec",
        "the spec's search body schema is empty; the fields come from observed usage",
    ),
    (
        "ghl.contacts.search_contacts",
        "body input `page` is not in the spec",
        "the spec's search body schema is empty; the fields come from observed usage",
    ),
    (
        "ghl.contacts.search_contacts",
        "body input `query` is not in the spec",
        "the spec's search body schema is empty; the fields come from observed usage",
    ),
    (
        "ghl.contacts.search_contacts",
        "body input `searchAfter` is not in the spec",
        "the spec's search body schema is empty; the fields come from observed usage",
    ),
    (
        "ghl.contacts.search_contacts",
        "body input `sort` is not in the spec",
        "the spec's search body schema is empty; the fields come from observed usage",
    ),
    (
        "ghl.conversations.get_email_by_id",
        "path input `id` is not in the spec",
        "the path has {id} but the spec declares no such parameter",
    ),
    (
        "ghl.conversations.get_email_by_id",
        "version: spec declares none",
        "the only conversations endpoint without a Version parameter; the family's 2021-04-15 is sent",
    ),
    (
        "ghl.conversations.get_message_by_id",
        "path input `id` is not in the spec",
        "the path has {id} but the spec declares no such parameter",
    ),
    (
        "ghl.users.delete_user",
        "path input `userId` is not in the spec",
        "the path has {userId} but the spec declares no such parameter",
    ),
    (
        "ghl.users.update_user",
        "path input `userId` is not in the spec",
        "the path has {userId} but the spec declares no such parameter",
    ),
];

struct Specs {
    dir: std::path::PathBuf,
    files: BTreeMap<String, Value>,
}

impl Specs {
    fn get(&mut self, file: &str) -> &Value {
        let dir = self.dir.clone();
        self.files.entry(file.to_owned()).or_insert_with(|| {
            let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
        })
    }
}

/// Follows local `$ref`s and merges `allOf`, giving the schema's properties and required list.
fn object_schema(spec: &Value, schema: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let schema = resolve(spec, schema);
    let mut props: BTreeSet<String> =
        schema.get("properties").and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default();
    let mut required: BTreeSet<String> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    for part in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        let (p, r) = object_schema(spec, part);
        props.extend(p);
        required.extend(r);
    }
    (props, required)
}

fn resolve<'a>(spec: &'a Value, mut schema: &'a Value) -> &'a Value {
    while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let Some(pointer) = r.strip_prefix('#') else { return &Value::Null };
        schema = spec.pointer(pointer).unwrap_or(&Value::Null);
    }
    schema
}

/// The scopes the map gives where the spec names none (inferred, or from the scope docs).
fn map_scopes() -> BTreeMap<(String, String), String> {
    let text = std::fs::read_to_string(shared().join("reference/ghl-catalog-map.yaml")).expect("the catalog map");
    let map: serde_yaml::Value = serde_yaml::from_str(&text).expect("map parses");
    let mut out = BTreeMap::new();
    for op in map["operations"].as_sequence().into_iter().flatten() {
        let (Some(m), Some(p), Some(s)) = (op["method"].as_str(), op["path"].as_str(), op["scope"].as_str()) else {
            continue;
        };
        out.insert((m.to_owned(), p.to_owned()), s.to_owned());
    }
    out
}

/// Every mismatch between one operation and its spec, as short stable strings.
fn check_operation(op: &Operation, spec: &Value, map_scopes: &BTreeMap<(String, String), String>) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(endpoint) = spec.pointer(&format!(
        "/paths/{}/{}",
        op.path.as_str().replace('~', "~0").replace('/', "~1"),
        op.method.as_str().to_lowercase()
    )) else {
        return vec!["endpoint missing".into()];
    };
    let params: Vec<&Value> = endpoint
        .get("parameters")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|p| resolve(spec, p)).collect())
        .unwrap_or_default();
    let param = |name: &str, place: &str| params.iter().find(|p| p["name"] == name && p["in"] == place).copied();

    // Version header.
    let version = param("Version", "header").and_then(|p| p.pointer("/schema/enum/0")).and_then(Value::as_str);
    match version {
        Some(v) if Some(v) == op.version.as_deref() => {}
        Some(v) => problems.push(format!("version: spec says {v}")),
        None => problems.push("version: spec declares none".into()),
    }

    // Scope: the spec's security, or the map's where the spec names none.
    let scopes: Vec<&str> = endpoint
        .get("security")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|o| o.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let scope = op.scope.as_ref().map(|s| s.0.as_str());
    if scopes.is_empty() {
        let inferred = map_scopes.get(&(op.method.as_str().to_owned(), op.path.as_str().to_owned()));
        if inferred.map(String::as_str) != scope {
            problems.push(format!("scope: map infers {inferred:?}"));
        }
    } else if !scope.is_some_and(|s| scopes.contains(&s)) {
        problems.push(format!("scope: spec says {}", scopes.join(" | ")));
    }

    // Required in the spec => a required input.
    for p in &params {
        let (Some(name), Some(place)) = (p["name"].as_str(), p["in"].as_str()) else { continue };
        if place == "header" || p["required"] != true {
            continue;
        }
        match op.input(name) {
            Some(i) if i.required && i.location.as_str() == place => {}
            _ => problems.push(format!("required {place} parameter `{name}` is not a required input")),
        }
    }
    let body_schema = endpoint.pointer("/requestBody/content/application~1json/schema");
    let (body_props, body_required) = body_schema.map(|s| object_schema(spec, s)).unwrap_or_default();
    let body_is_array = body_schema.is_some_and(|s| resolve(spec, s)["type"] == "array");
    for name in &body_required {
        match op.input(name) {
            Some(i) if i.required && i.location == InputLocation::Body => {}
            _ => problems.push(format!("required body field `{name}` is not a required input")),
        }
    }

    // Every input exists in the spec.
    for input in &op.inputs {
        let exists = match input.location {
            InputLocation::Path => param(&input.name, "path").is_some(),
            InputLocation::Query => param(&input.name, "query").is_some(),
            InputLocation::Header => param(&input.name, "header").is_some(),
            InputLocation::Body => (body_is_array && input.name == "body") || body_props.contains(&input.name),
        };
        if !exists {
            problems.push(format!("{} input `{}` is not in the spec", input.location.as_str(), input.name));
        }
    }
    problems
}

#[test]
fn every_ghl_operation_matches_the_official_spec() {
    let spec_dir = shared().join("ghl-openapi/apps");
    assert!(spec_dir.is_dir(), "the official specs are expected at {}", spec_dir.display());
    let catalog = catalog::load_embedded().unwrap();
    let scopes = map_scopes();
    let mut specs = Specs { dir: spec_dir, files: BTreeMap::new() };

    let mut found: BTreeSet<(String, String)> = BTreeSet::new();
    let mut checked = 0;
    // `operations()` leaves out the instant triggers (`source: webhook`): they have no endpoint.
    for op in catalog.operations().filter(|o| o.key.app == "ghl") {
        let spec_file = category_spec_file(&root(), &op.key.category);
        let spec = specs.get(&spec_file);
        for problem in check_operation(op, spec, &scopes) {
            found.insert((op.key.to_string(), problem));
        }
        checked += 1;
    }
    let known: BTreeSet<(String, String)> =
        KNOWN_DEFECTS.iter().map(|(k, c, _)| (k.to_string(), c.to_string())).collect();
    let unexpected: Vec<_> = found.difference(&known).collect();
    let stale: Vec<_> = known.difference(&found).collect();
    println!(
        "spec conformance: {checked} GHL operations checked, {} clean, {} known spec defects listed",
        checked - found.iter().map(|(k, _)| k).collect::<BTreeSet<_>>().len(),
        KNOWN_DEFECTS.len()
    );
    assert!(unexpected.is_empty(), "mismatches with the spec:\n{}", render(&unexpected));
    assert!(stale.is_empty(), "listed defects that no longer occur:\n{}", render(&stale));
    assert_eq!(checked, 126);
}

fn render(rows: &[&(String, String)]) -> String {
    rows.iter().map(|(k, c)| format!("  (\"{k}\", \"{c}\", \"\"),")).collect::<Vec<_>>().join("\n")
}

/// The `spec:` field of `operations/ghl/<category>.yaml`.
fn category_spec_file(root: &Path, category: &str) -> String {
    let text = std::fs::read_to_string(root.join(format!("operations/ghl/{category}.yaml"))).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    doc["spec"].as_str().unwrap_or_else(|| panic!("{category}.yaml names no spec")).to_owned()
}
