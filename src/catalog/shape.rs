//! The shape of an operation's output, read off its sample: which fields exist and what
//! type they hold. The recipe compiler checks template references against it, and
//! `ops show` lists it. A shape only says what may exist; real responses may be sparser.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Null,
    Bool,
    Number,
    String,
    Array(Box<Shape>),
    Object(BTreeMap<String, Shape>),
    /// Nothing known: anything may be referenced below it.
    Any,
}

impl Shape {
    /// The shape of one value; an array's element shape merges all its elements.
    pub fn of(value: &Value) -> Shape {
        match value {
            Value::Null => Shape::Null,
            Value::Bool(_) => Shape::Bool,
            Value::Number(_) => Shape::Number,
            Value::String(_) => Shape::String,
            Value::Array(items) => {
                let element = items.iter().map(Shape::of).reduce(Shape::merge).unwrap_or(Shape::Any);
                Shape::Array(Box::new(element))
            }
            Value::Object(map) => Shape::Object(map.iter().map(|(k, v)| (k.clone(), Shape::of(v))).collect()),
        }
    }

    /// Two samples of the same field: objects unite their fields; `null` yields to the other.
    pub fn merge(self, other: Shape) -> Shape {
        match (self, other) {
            (Shape::Object(mut a), Shape::Object(b)) => {
                for (k, v) in b {
                    let merged = match a.remove(&k) {
                        Some(existing) => existing.merge(v),
                        None => v,
                    };
                    a.insert(k, merged);
                }
                Shape::Object(a)
            }
            (Shape::Array(a), Shape::Array(b)) => Shape::Array(Box::new(a.merge(*b))),
            (Shape::Null, x) | (x, Shape::Null) => x,
            (a, b) if a == b => a,
            _ => Shape::Any,
        }
    }

    /// What two sources of the same records both hold: the fields of objects present in
    /// both (recursively), `Any` where the types disagree. Unknown (`Any`) and `null` yield
    /// to the other side, which says more.
    pub fn common(self, other: Shape) -> Shape {
        match (self, other) {
            (Shape::Object(a), Shape::Object(mut b)) => {
                Shape::Object(a.into_iter().filter_map(|(k, v)| b.remove(&k).map(|w| (k, v.common(w)))).collect())
            }
            (Shape::Array(a), Shape::Array(b)) => Shape::Array(Box::new(a.common(*b))),
            (Shape::Any, x) | (x, Shape::Any) | (Shape::Null, x) | (x, Shape::Null) => x,
            (a, b) if a == b => a,
            _ => Shape::Any,
        }
    }

    /// Follows a reference such as `contact.emails.0.address` (numbers index arrays,
    /// `[0]`-style segments are already split off by the caller). Returns the shape reached,
    /// or the longest prefix that exists when the path leaves the known shape.
    pub fn resolve(&self, path: &[String]) -> Result<&Shape, (usize, &Shape)> {
        let mut cur = self;
        for (depth, part) in path.iter().enumerate() {
            cur = match cur {
                Shape::Any => return Ok(&Shape::Any),
                Shape::Object(fields) => match fields.get(part) {
                    Some(s) => s,
                    None => return Err((depth, cur)),
                },
                Shape::Array(element) if (part.parse::<usize>().is_ok() || part == "length") => element,
                _ => return Err((depth, cur)),
            };
        }
        Ok(cur)
    }

    /// The field names directly below an object, for "did you mean".
    pub fn field_names(&self) -> Vec<&str> {
        match self {
            Shape::Object(fields) => fields.keys().map(String::as_str).collect(),
            Shape::Array(element) => element.field_names(),
            _ => Vec::new(),
        }
    }

    /// Every field as `(dot.path, type)`, depth first, down to `max_depth` levels.
    pub fn flatten(&self, max_depth: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.flatten_into("", max_depth, &mut out);
        out
    }

    fn flatten_into(&self, prefix: &str, depth: usize, out: &mut Vec<(String, String)>) {
        match self {
            Shape::Object(fields) => {
                for (k, v) in fields {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    out.push((path.clone(), v.to_string()));
                    if depth > 1 {
                        v.flatten_into(&path, depth - 1, out);
                    }
                }
            }
            Shape::Array(element) if depth > 1 => {
                if matches!(**element, Shape::Object(_)) {
                    element.flatten_into(&format!("{prefix}.[]"), depth - 1, out);
                }
            }
            _ => {}
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Null => f.write_str("null"),
            Shape::Bool => f.write_str("boolean"),
            Shape::Number => f.write_str("number"),
            Shape::String => f.write_str("string"),
            Shape::Array(e) => match **e {
                Shape::Any => f.write_str("array"),
                ref e => write!(f, "array of {e}"),
            },
            Shape::Object(_) => f.write_str("object"),
            Shape::Any => f.write_str("any"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn common_keeps_what_both_sources_carry() {
        let hook = Shape::of(
            &json!({"id": "c1", "name": "Ann", "webhookId": "w", "tags": ["a"], "owner": {"id": 1, "team": "x"}, "age": 3, "note": null}),
        );
        let poll = Shape::of(
            &json!({"id": "c1", "firstName": "Ann", "tags": [], "owner": {"id": 1}, "age": "3", "note": "n"}),
        );
        let both = hook.common(poll);
        assert_eq!(both.resolve(&path("id")), Ok(&Shape::String));
        assert_eq!(both.resolve(&path("owner.id")), Ok(&Shape::Number));
        assert!(both.resolve(&path("owner.team")).is_err(), "only one source has it");
        assert!(both.resolve(&path("name")).is_err() && both.resolve(&path("webhookId")).is_err());
        assert!(both.resolve(&path("firstName")).is_err());
        assert_eq!(both.resolve(&path("tags.0")), Ok(&Shape::String), "an empty sample list says nothing");
        assert_eq!(both.resolve(&path("age")), Ok(&Shape::Any), "the types disagree");
        assert_eq!(both.resolve(&path("note")), Ok(&Shape::String), "null yields");
    }

    #[test]
    fn merges_sparse_list_items() {
        let s = Shape::of(&json!([{"id": "a"}, {"id": "b", "email": "x@y.z"}, {"id": "c", "email": null}]));
        let Shape::Array(item) = s else { panic!("not an array") };
        assert_eq!(item.resolve(&path("email")), Ok(&Shape::String));
    }

    #[test]
    fn resolves_through_arrays_and_reports_the_missing_part() {
        let s = Shape::of(&json!({"contact": {"emails": [{"address": "a@b.c"}]}}));
        assert_eq!(s.resolve(&path("contact.emails.0.address")), Ok(&Shape::String));
        let err = s.resolve(&path("contact.emial")).unwrap_err();
        assert_eq!(err.0, 1);
        assert_eq!(err.1.field_names(), vec!["emails"]);
    }

    #[test]
    fn flattens_for_display() {
        let s = Shape::of(&json!({"contact": {"id": "x", "tags": ["a"]}}));
        let flat = s.flatten(3);
        assert!(flat.contains(&("contact.tags".into(), "array of string".into())));
    }
}
