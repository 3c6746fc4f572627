//! Which operation a request is for, found from the catalog's own method and path
//! templates, byte for byte (`/contacts/` and `/contacts` are different paths). Where two
//! templates match (`/contacts/search` and `/contacts/{contactId}`), the one with a literal
//! segment earlier wins, as in the real routers. Capsule has a few read routes beyond the
//! catalog (`/users/current`, `/entries/{id}`...), served too.

use std::collections::BTreeMap;
use std::sync::Arc;

use percent_encoding::percent_decode_str;

use crate::catalog::{Catalog, Method, Operation};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Ghl,
    Capsule,
}

#[derive(Debug, Clone)]
pub enum Target {
    Operation(Arc<Operation>),
    /// A Capsule route the catalog does not list, by handler name.
    Extra(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug)]
struct Route {
    api: Api,
    method: Method,
    segments: Vec<Segment>,
    target: Target,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup<'a> {
    Found {
        target: &'a Target,
        params: BTreeMap<String, String>,
    },
    /// The path exists, with other methods.
    WrongMethod,
    NotFound,
}

const CAPSULE_EXTRAS: &[(&str, &str)] = &[
    ("/users/current", "current_user"),
    ("/entries/{entryId}", "get_entry"),
    ("/tasks/{taskId}", "get_task"),
    ("/parties/search", "search_parties"),
    ("/parties/tags", "list_tags"),
    ("/parties/fields/definitions", "field_definitions"),
    ("/activitytypes", "activity_types"),
];

#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
}

fn split(path: &str) -> Vec<&str> {
    path.strip_prefix('/').unwrap_or(path).split('/').collect()
}

fn parse_template(path: &str) -> Vec<Segment> {
    split(path)
        .into_iter()
        .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) if !name.contains(['{', '}']) => Segment::Param(name.to_owned()),
            _ => Segment::Literal(s.to_owned()),
        })
        .collect()
}

impl RouteTable {
    pub fn new(catalog: &Catalog) -> Self {
        let mut routes = Vec::new();
        for op in catalog.operations() {
            let api = match op.key.app.as_str() {
                "ghl" => Api::Ghl,
                "capsule" => Api::Capsule,
                _ => continue,
            };
            routes.push(Route {
                api,
                method: op.method,
                segments: parse_template(op.path.as_str()),
                target: Target::Operation(Arc::clone(op)),
            });
        }
        for (path, name) in CAPSULE_EXTRAS {
            routes.push(Route {
                api: Api::Capsule,
                method: Method::Get,
                segments: parse_template(path),
                target: Target::Extra(name),
            });
        }
        RouteTable { routes }
    }

    /// The route for `method` and `path` (the path below the API's base).
    pub fn find(&self, api: Api, method: Method, path: &str) -> Lookup<'_> {
        let parts = split(path);
        let mut best: Option<(&Route, Vec<bool>, BTreeMap<String, String>)> = None;
        let mut other_method = false;
        for route in self.routes.iter().filter(|r| r.api == api && r.segments.len() == parts.len()) {
            let Some(params) = matches(&route.segments, &parts) else { continue };
            if route.method != method {
                other_method = true;
                continue;
            }
            let specificity: Vec<bool> = route.segments.iter().map(|s| matches!(s, Segment::Literal(_))).collect();
            if best.as_ref().is_none_or(|(_, b, _)| specificity > *b) {
                best = Some((route, specificity, params));
            }
        }
        match best {
            Some((route, _, params)) => Lookup::Found { target: &route.target, params },
            None if other_method => Lookup::WrongMethod,
            None => Lookup::NotFound,
        }
    }
}

fn matches(segments: &[Segment], parts: &[&str]) -> Option<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    for (segment, part) in segments.iter().zip(parts) {
        match segment {
            Segment::Literal(text) if text == part => {}
            Segment::Literal(_) => return None,
            Segment::Param(_) if part.is_empty() => return None,
            Segment::Param(name) => {
                params.insert(name.clone(), percent_decode_str(part).decode_utf8_lossy().into_owned());
            }
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::new(&crate::catalog::load_embedded().unwrap())
    }

    fn found(t: &RouteTable, api: Api, method: Method, path: &str) -> String {
        match t.find(api, method, path) {
            Lookup::Found { target: Target::Operation(op), .. } => op.key.to_string(),
            Lookup::Found { target: Target::Extra(name), .. } => format!("extra:{name}"),
            Lookup::WrongMethod => "wrong method".into(),
            Lookup::NotFound => "not found".into(),
        }
    }

    #[test]
    fn every_catalog_operation_is_reachable_at_its_own_path() {
        let catalog = crate::catalog::load_embedded().unwrap();
        let t = RouteTable::new(&catalog);
        for op in catalog.operations() {
            let api = if op.key.app == "ghl" { Api::Ghl } else { Api::Capsule };
            let path: String = op
                .path
                .segments()
                .iter()
                .map(|s| match s {
                    crate::catalog::PathSegment::Literal(l) => l.clone(),
                    crate::catalog::PathSegment::Param(_) => "p1x".into(),
                })
                .collect();
            let Lookup::Found { target: Target::Operation(hit), .. } = t.find(api, op.method, &path) else {
                panic!("{} {path} is not routed", op.key);
            };
            assert_eq!((hit.method, hit.path.as_str()), (op.method, op.path.as_str()), "{}", op.key);
        }
    }

    #[test]
    fn literals_win_and_trailing_slashes_count() {
        let t = table();
        assert_eq!(found(&t, Api::Ghl, Method::Post, "/contacts/search"), "ghl.contacts.search_contacts");
        assert_eq!(found(&t, Api::Ghl, Method::Get, "/contacts/abc"), "ghl.contacts.get_contact");
        assert_eq!(found(&t, Api::Ghl, Method::Get, "/opportunities/search"), "ghl.opportunities.search_opportunities");
        assert_eq!(found(&t, Api::Ghl, Method::Get, "/contacts/"), "ghl.contacts.list_contacts");
        assert_eq!(found(&t, Api::Ghl, Method::Get, "/contacts"), "not found");
        assert_eq!(found(&t, Api::Ghl, Method::Patch, "/contacts/abc"), "wrong method");
        assert_eq!(found(&t, Api::Capsule, Method::Get, "/parties/deleted"), "capsule.parties.party_deleted");
        assert_eq!(found(&t, Api::Capsule, Method::Get, "/parties/12,13"), "capsule.parties.get_party");
        assert_eq!(found(&t, Api::Capsule, Method::Get, "/users/current"), "extra:current_user");
    }

    #[test]
    fn path_parameters_are_decoded() {
        let t = table();
        let Lookup::Found { params, .. } = t.find(Api::Ghl, Method::Get, "/contacts/a%20b%2Fc") else { panic!() };
        assert_eq!(params["contactId"], "a b/c");
    }
}
