//! Unknown keys in a user's YAML file, found all at once and set aside.
//!
//! serde's `deny_unknown_fields` stops at the first unknown key, and everything else wrong in
//! the file stays hidden until that one is fixed. Before a file is deserialized, this walks it
//! beside the JSON Schema generated from the same Spec types (so it knows every key the types
//! take, including ones added later), reports each key no type takes, and removes it, so the
//! rest of the file is still checked in the same pass.

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::diagnostic::did_you_mean;

/// One unknown key: its path (`steps[0].evry`, as `diagnostic::parse_path` reads it) and the
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    pub path: String,
    pub message: String,
}

/// Removes from `value` every key that `schema` (a schemars-generated JSON Schema with its
/// `$defs`) does not allow, and says where each was. Where the schema is ambiguous (a union
/// whose branch cannot be told from the value), nothing is removed: deserialization reports it.
pub fn strip_unknown(value: &mut Yaml, schema: &Json) -> Vec<UnknownKey> {
    let mut out = Vec::new();
    walk(value, schema, schema, "", &mut out);
    out
}

fn walk(value: &mut Yaml, schema: &Json, root: &Json, path: &str, out: &mut Vec<UnknownKey>) {
    let Some(schema) = resolve(schema, root, value) else { return };
    match value {
        Yaml::Mapping(map) => {
            let properties = schema.get("properties").and_then(Json::as_object);
            let additional = schema.get("additionalProperties");
            let mut unknown = Vec::new();
            for (key, child) in map.iter_mut() {
                let Some(name) = key.as_str() else { continue };
                let child_path = if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") };
                match (properties.and_then(|p| p.get(name)), additional) {
                    (Some(s), _) => walk(child, s, root, &child_path, out),
                    (None, Some(Json::Bool(false))) if properties.is_some() => {
                        let expected: Vec<&str> =
                            properties.into_iter().flat_map(|p| p.keys()).map(String::as_str).collect();
                        let close = did_you_mean(name, expected.iter().copied()).map(str::to_owned);
                        out.push(UnknownKey { path: child_path, message: message(name, close.as_deref(), &expected) });
                        unknown.push((key.clone(), close));
                    }
                    (None, Some(s @ Json::Object(_))) => walk(child, s, root, &child_path, out),
                    _ => {}
                }
            }
            for (key, close) in unknown {
                let Some(mut child) = map.remove(&key) else { continue };
                // A typo of a key the file does not have: checked on as that key, so the rest
                // of the file is not reported as missing what the typo meant to give.
                if let Some(close) = close.filter(|c| !map.contains_key(c.as_str()))
                    && let Some(s) = properties.and_then(|p| p.get(&close))
                {
                    let child_path = if path.is_empty() { close.clone() } else { format!("{path}.{close}") };
                    walk(&mut child, s, root, &child_path, out);
                    map.insert(Yaml::String(close), child);
                }
            }
        }
        Yaml::Sequence(items) => {
            if let Some(item) = schema.get("items") {
                for (i, child) in items.iter_mut().enumerate() {
                    walk(child, item, root, &format!("{path}[{i}]"), out);
                }
            }
        }
        Yaml::Tagged(tagged) => walk(&mut tagged.value, schema, root, path, out),
        _ => {}
    }
}

/// Follows `$ref`s, and picks the branch of an `anyOf`/`oneOf` that fits `value`: the only
/// branch that describes a mapping, or the one whose constant properties (an enum's tag,
/// `type: bearer`) the value has.
fn resolve<'s>(schema: &'s Json, root: &'s Json, value: &Yaml) -> Option<&'s Json> {
    let mut schema = schema;
    for _ in 0..32 {
        if let Some(reference) = schema.get("$ref").and_then(Json::as_str) {
            let name = reference.strip_prefix("#/$defs/")?;
            schema = root.get("$defs")?.get(name)?;
            continue;
        }
        let Some(branches) = schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(Json::as_array) else {
            return Some(schema);
        };
        let maps: Vec<&Json> = branches
            .iter()
            .filter_map(|b| resolve(b, root, value))
            .filter(|b| b.get("properties").is_some() || b.get("additionalProperties").is_some_and(Json::is_object))
            .collect();
        schema = match maps.as_slice() {
            [only] => only,
            _ => maps.into_iter().find(|b| tag_matches(b, value))?,
        };
    }
    None
}

/// Whether every constant property of `branch` has that value in `value`.
fn tag_matches(branch: &Json, value: &Yaml) -> bool {
    let Some(properties) = branch.get("properties").and_then(Json::as_object) else { return false };
    let consts: Vec<(&String, &str)> = properties
        .iter()
        .filter_map(|(k, p)| {
            let c =
                p.get("const").or_else(|| p.get("enum").and_then(|e| e.as_array()).filter(|e| e.len() == 1)?.first());
            Some((k, c?.as_str()?))
        })
        .collect();
    !consts.is_empty() && consts.iter().all(|(k, c)| value.get(k.as_str()).and_then(Yaml::as_str) == Some(*c))
}

/// The likely intended key when one is close (a typo), else serde's wording with the list.
fn message(name: &str, close: Option<&str>, expected: &[&str]) -> String {
    if let Some(close) = close {
        return format!("unknown field `{name}` (did you mean `{close}`?)");
    }
    let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    match list.as_slice() {
        [] => format!("unknown field `{name}`, there are no fields"),
        [one] => format!("unknown field `{name}`, expected {one}"),
        _ => format!("unknown field `{name}`, expected one of {}", list.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Option<Inner>,
        #[serde(default)]
        list: Vec<Inner>,
        #[serde(default)]
        free: std::collections::BTreeMap<String, serde_json::Value>,
        #[serde(default)]
        named: std::collections::BTreeMap<String, Inner>,
        auth: Option<Auth>,
    }

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        every: Option<String>,
    }

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    #[allow(dead_code)]
    enum Auth {
        Bearer { token: String },
        Oauth2 { client_id: String },
    }

    fn strip(yaml: &str) -> (Vec<UnknownKey>, Yaml) {
        let schema = serde_json::to_value(schemars::schema_for!(Outer)).unwrap();
        let mut value: Yaml = serde_yaml::from_str(yaml).unwrap();
        (strip_unknown(&mut value, &schema), value)
    }

    #[test]
    fn every_unknown_key_at_every_depth_is_reported_and_removed() {
        let (unknown, value) = strip(
            "name: x\nnmae: y\ninner: { evry: 5m }\nlist: [{every: 1m}, {every: 2m, extra: 1}]\n\
             free: { anything: 1 }\nnamed: { a: { bogus: 1 } }\nauth: { type: bearer, token: t, client_id: c }\n",
        );
        let paths: Vec<&str> = unknown.iter().map(|u| u.path.as_str()).collect();
        assert_eq!(paths, ["nmae", "inner.evry", "list[1].extra", "named.a.bogus", "auth.client_id"]);
        // A typo is checked on under the key it was meant as (`name` is there already).
        assert_eq!(value["inner"]["every"].as_str(), Some("5m"));
        assert!(value.get("nmae").is_none());
        assert_eq!(unknown[0].message, "unknown field `nmae` (did you mean `name`?)");
        assert_eq!(unknown[2].message, "unknown field `extra`, expected `every`");
        assert!(unknown[4].message.starts_with("unknown field `client_id`, expected one of `type`, `token`"));
        // What is left deserializes: the rest of the file can be checked.
        let _: Outer = serde_yaml::from_value(value).unwrap();
    }

    #[test]
    fn a_union_it_cannot_place_is_left_to_deserialization() {
        let (unknown, _) = strip("name: x\nauth: { type: basic, user: u }\n");
        assert!(unknown.is_empty(), "{unknown:?}");
    }
}
