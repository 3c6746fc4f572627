//! Turning an operation and its inputs into one concrete request: the only place that
//! decides where each input goes. Inputs are checked first (unknown names, missing required
//! ones, wrong types, values outside the allowed list), so a bad call sends nothing.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};
use url::Url;

use super::error::HttpError;
use crate::catalog::{BodyEncoding, InputLocation, Method, Operation, PathSegment};
use crate::config::Connection;
use crate::diagnostic::hint;

/// Path segment characters left as they are: RFC 3986's unreserved set. Everything else,
/// `/`, `?`, `#` and `%` included, is percent-encoded.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A request ready to send, minus its credentials.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub method: Method,
    pub url: Url,
    /// Headers other than Authorization (Version, Accept, header inputs).
    pub headers: Vec<(String, String)>,
    pub body: Option<RequestBody>,
    /// `METHOD /path` as the catalog writes it, for messages and logs.
    pub label: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RequestBody {
    Json(Value),
    Form(Vec<(String, String)>),
}

impl PreparedRequest {
    /// The request as a person reads it; the Authorization header is shown redacted.
    pub fn render(&self, auth_scheme: &str) -> String {
        let mut out = format!("{} {}\n", self.method.as_str(), self.url);
        out.push_str(&format!("Authorization: {auth_scheme} <redacted>\n"));
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\n"));
        }
        match &self.body {
            None => {}
            Some(RequestBody::Json(v)) => {
                out.push_str("Content-Type: application/json\n\n");
                out.push_str(&serde_json::to_string_pretty(v).unwrap_or_default());
                out.push('\n');
            }
            Some(RequestBody::Form(pairs)) => {
                out.push_str("Content-Type: application/x-www-form-urlencoded\n\n");
                let encoded: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&encoded.join("&"));
                out.push('\n');
            }
        }
        out
    }
}

/// Checks `inputs` against the operation and builds the request for `connection`.
pub fn prepare(
    op: &Operation,
    connection: &Connection,
    inputs: &Map<String, Value>,
) -> Result<PreparedRequest, HttpError> {
    let invalid = |message: String| HttpError::InvalidInput { op: op.key.to_string(), message };
    // An instant trigger's method and path name the listener the API delivers to; sending
    // one would post to the API's own host under that path.
    if let Some(hook) = &op.webhook {
        return Err(invalid(format!(
            "an instant trigger (the API pushes the `{}` event) is never sent; poll its reconciling operation instead",
            hook.event
        )));
    }
    let label = format!("{} {}", op.method.as_str(), op.path.as_str());
    let values = check_inputs(op, connection, inputs).map_err(invalid)?;

    // Path: every parameter percent-encoded as one segment.
    let mut path = String::new();
    for segment in op.path.segments() {
        match segment {
            PathSegment::Literal(text) => path.push_str(text),
            PathSegment::Param(name) => {
                let value = values.get(name).map(scalar_text).unwrap_or_default();
                if value.is_empty() || value == "." || value == ".." {
                    return Err(HttpError::Refused {
                        request: label,
                        reason: format!("path input `{name}` may not be {value:?}"),
                    });
                }
                path.push_str(&utf8_percent_encode(&value, PATH_SEGMENT).to_string());
            }
        }
    }
    let mut url = join_url(&connection.base_url, &path)
        .map_err(|reason| HttpError::Refused { request: label.clone(), reason })?;
    ensure_same_host(&url, &connection.base_url, &label)?;

    let mut headers = Vec::new();
    if let Some(version) = &op.version {
        headers.push(("Version".to_owned(), version.clone()));
    }
    headers.push(("Accept".to_owned(), "application/json".to_owned()));

    let mut body_fields = Map::new();
    {
        let mut query = url.query_pairs_mut();
        for input in &op.inputs {
            let Some(value) = values.get(&input.name) else { continue };
            match input.location {
                InputLocation::Path => {}
                InputLocation::Query => match value {
                    Value::Array(items) => {
                        for item in items {
                            query.append_pair(&input.name, &scalar_text(item));
                        }
                    }
                    other => {
                        query.append_pair(&input.name, &scalar_text(other));
                    }
                },
                InputLocation::Header => headers.push((input.name.clone(), scalar_text(value))),
                InputLocation::Body => {
                    body_fields.insert(input.name.clone(), value.clone());
                }
            }
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }

    let has_body_inputs = op.inputs.iter().any(|i| i.location == InputLocation::Body);
    let body = match op.body {
        BodyEncoding::Array => Some(RequestBody::Json(body_fields.remove("body").unwrap_or(Value::Array(Vec::new())))),
        BodyEncoding::Form => {
            Some(RequestBody::Form(body_fields.iter().map(|(k, v)| (k.clone(), scalar_text(v))).collect()))
        }
        BodyEncoding::Json if !body_fields.is_empty() => Some(RequestBody::Json(Value::Object(body_fields))),
        // A POST, PUT or PATCH always carries a body, `{}` when it has no fields (GHL declares
        // required bodies with no fields, e.g. Add Contact to Campaign). A DELETE carries one
        // only when it declares body inputs (Remove from Workflow requires `{}` at least);
        // other DELETEs send none, as most APIs expect, unless the catalog declares the body
        // (`body: json`, as for Delete Event).
        BodyEncoding::Json
            if matches!(op.method, Method::Post | Method::Put | Method::Patch)
                || (op.method == Method::Delete && (has_body_inputs || op.body_declared)) =>
        {
            Some(RequestBody::Json(Value::Object(Map::new())))
        }
        BodyEncoding::Json => None,
    };
    Ok(PreparedRequest { method: op.method, url, headers, body, label })
}

/// A next-page URL given by the API (a Link header, a `nextPageUrl`): sent as it is, but only
/// to the connection's own host.
pub fn prepare_next_url(
    connection: &Connection,
    next: &Url,
    previous: &PreparedRequest,
) -> Result<PreparedRequest, HttpError> {
    // The link was resolved against the previous request's URL when its header was read;
    // here it only has to stay on the connection's host, so the token never leaves it.
    ensure_same_host(next, &connection.base_url, &previous.label).map_err(|e| match e {
        HttpError::Refused { request, reason } => HttpError::Refused {
            request,
            reason: format!("the next-page link after {}: {reason}; the token goes nowhere else", previous.url),
        },
        other => other,
    })?;
    Ok(PreparedRequest { url: next.clone(), ..previous.clone() })
}

fn join_url(base: &str, path: &str) -> Result<Url, String> {
    Url::parse(&format!("{base}{path}")).map_err(|e| format!("cannot build a URL from `{base}` and `{path}`: {e}"))
}

/// Requests go only to the connection's host: scheme, host and port must match.
fn ensure_same_host(url: &Url, base: &str, label: &str) -> Result<(), HttpError> {
    // The common case, without parsing the base again: the URL starts with the base.
    if url.as_str().starts_with(base) && url.as_str()[base.len()..].starts_with(['/', '?']) {
        return Ok(());
    }
    let base = Url::parse(base).map_err(|e| HttpError::Refused { request: label.to_owned(), reason: e.to_string() })?;
    if url.scheme() != base.scheme()
        || url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return Err(HttpError::Refused {
            request: label.to_owned(),
            reason: format!(
                "{url} is not on the connection's host {}://{}:{} (scheme, host and port must all match)",
                base.scheme(),
                base.host_str().unwrap_or_default(),
                base.port_or_known_default().map(|p| p.to_string()).unwrap_or_default()
            ),
        });
    }
    Ok(())
}

/// A scalar as it goes into a path, query or form: strings bare, everything else as JSON.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The inputs, with connection defaults filled in, converted where the conversion loses
/// nothing (`"20"` for an integer, `20` for a string), and checked. All problems at once.
fn check_inputs(
    op: &Operation,
    connection: &Connection,
    inputs: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let mut problems = Vec::new();
    let mut values = Map::new();
    for (name, value) in inputs {
        let Some(input) = op.input(name) else {
            problems.push(format!("unknown input `{name}`{}", hint(name, op.inputs.iter().map(|i| i.name.as_str()))));
            continue;
        };
        if value.is_null() {
            continue;
        }
        match input.ty.coerce(value) {
            Some(v) => {
                if let Some(allowed) = &input.allowed
                    && !allowed_contains(allowed, &v)
                {
                    let list: Vec<String> = allowed.iter().map(scalar_text).collect();
                    problems.push(format!("input `{name}` is {}, which is not one of: {}", short(&v), list.join(", ")));
                }
                values.insert(name.clone(), v);
            }
            None => problems.push(format!("input `{name}` should be {}, not {}", input.ty, short(value))),
        }
    }
    for input in &op.inputs {
        if !values.contains_key(&input.name)
            && let Some(default) = connection.default_for(&input.name)
        {
            values.insert(input.name.clone(), Value::String(default.to_owned()));
        }
    }
    // An input given with the wrong type is reported as that, not also as missing.
    let missing: Vec<&str> = op
        .inputs
        .iter()
        .filter(|i| i.required && !values.contains_key(&i.name) && inputs.get(&i.name).is_none_or(Value::is_null))
        .map(|i| i.name.as_str())
        .collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|m| format!("`{m}`")).collect();
        problems.push(format!(
            "missing required input{} {}",
            if missing.len() == 1 { "" } else { "s" },
            list.join(", ")
        ));
    }
    if problems.is_empty() { Ok(values) } else { Err(problems.join("; ")) }
}

fn allowed_contains(allowed: &[Value], v: &Value) -> bool {
    match v {
        // A comma-free array input with an enum: every element must be allowed.
        Value::Array(items) => items.iter().all(|i| allowed.contains(i)),
        other => allowed.contains(other),
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 { format!("{}...", text.chars().take(60).collect::<String>()) } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::InputType;
    use crate::config::Config;
    use serde_json::json;

    fn setup() -> (crate::catalog::Catalog, Config) {
        let catalog = crate::catalog::load_embedded().unwrap();
        let config = Config::parse(
            "connections:\n  ghl:\n    app: ghl\n    location_id: LOC1\n    auth: { type: private_token, token: pit-secret }\n",
            std::path::Path::new("ghlflow.yaml"),
            &catalog,
            &|_| None,
        )
        .unwrap();
        (catalog, config)
    }

    fn inputs(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn an_instant_trigger_is_never_prepared() {
        let (catalog, config) = setup();
        let op = catalog.get("ghl.contacts.on_contact_create").unwrap();
        let err = prepare(op, config.connection("ghl").unwrap(), &Map::new()).unwrap_err().to_string();
        assert!(err.contains("the API pushes the `ContactCreate` event") && err.contains("never sent"), "{err}");
    }

    #[test]
    fn places_inputs_and_defaults_the_location() {
        let (catalog, config) = setup();
        let op = catalog.get("ghl.contacts.upsert_contact").unwrap();
        let req =
            prepare(op, config.connection("ghl").unwrap(), &inputs(json!({"email": "a@b.c", "tags": ["x"]}))).unwrap();
        assert_eq!(req.url.as_str(), "https://services.leadconnectorhq.com/contacts/upsert");
        assert_eq!(req.body, Some(RequestBody::Json(json!({"email": "a@b.c", "tags": ["x"], "locationId": "LOC1"}))));
        assert!(req.headers.contains(&("Version".into(), "2021-07-28".into())));
    }

    #[test]
    fn sends_an_empty_body_where_the_api_requires_one() {
        let (catalog, config) = setup();
        let conn = config.connection("ghl").unwrap();
        let body = |key: &str, v: Value| prepare(catalog.get(key).unwrap(), conn, &inputs(v)).unwrap().body;
        let empty = Some(RequestBody::Json(json!({})));
        // A POST with no body fields at all, and a DELETE whose optional body fields are left out.
        let campaign = json!({"contactId": "c1", "campaignId": "k1"});
        assert_eq!(body("ghl.contacts.add_contact_to_campaign", campaign), empty);
        let workflow = json!({"contactId": "c1", "workflowId": "w1"});
        assert_eq!(body("ghl.contacts.remove_from_workflow", workflow), empty);
        // A DELETE without body inputs and a GET send none.
        assert_eq!(body("ghl.contacts.remove_from_campaign", json!({"contactId": "c1", "campaignId": "k1"})), None);
        assert_eq!(body("ghl.contacts.get_contact", json!({"contactId": "c1"})), None);
    }

    #[test]
    fn encodes_hostile_path_values_as_one_segment() {
        let (catalog, config) = setup();
        let op = catalog.get("ghl.contacts.get_contact").unwrap();
        let conn = config.connection("ghl").unwrap();
        let req = prepare(op, conn, &inputs(json!({"contactId": "../users/x?y=1#z"}))).unwrap();
        assert_eq!(req.url.as_str(), "https://services.leadconnectorhq.com/contacts/..%2Fusers%2Fx%3Fy%3D1%23z");
        assert!(matches!(prepare(op, conn, &inputs(json!({"contactId": ".."}))), Err(HttpError::Refused { .. })));
    }

    #[test]
    fn reports_every_input_problem_and_sends_nothing() {
        let (catalog, config) = setup();
        let op = catalog.get("ghl.contacts.bulk_update_contact_tags").unwrap();
        let err = prepare(op, config.connection("ghl").unwrap(), &inputs(json!({"type": "toggle", "tagz": []})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown input `tagz` (did you mean `tags`?)"), "{err}");
        assert!(err.contains("input `type` is \"toggle\", which is not one of: add, remove"), "{err}");
        assert!(err.contains("missing required inputs `contacts`, `tags`"), "{err}");
    }

    #[test]
    fn a_next_page_link_must_stay_on_the_connections_scheme_host_and_port() {
        let (catalog, config) = setup();
        let op = catalog.get("ghl.contacts.list_contacts").unwrap();
        let conn = config.connection("ghl").unwrap();
        let first = prepare(op, conn, &inputs(json!({"limit": 2}))).unwrap();
        let same = Url::parse("https://services.leadconnectorhq.com/contacts/?limit=2&startAfterId=x,y").unwrap();
        assert_eq!(prepare_next_url(conn, &same, &first).unwrap().url, same);
        for elsewhere in [
            "http://services.leadconnectorhq.com/contacts/?page=2",
            "https://services.leadconnectorhq.com:8443/contacts/?page=2",
            "https://services.leadconnectorhq.com.evil.example/contacts/?page=2",
            "https://evil.example/contacts/?page=2",
        ] {
            let err = prepare_next_url(conn, &Url::parse(elsewhere).unwrap(), &first).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, HttpError::Refused { .. }), "{elsewhere}: {err:?}");
            assert!(text.starts_with("GET /contacts/: refused: the next-page link"), "{text}");
            assert!(text.contains("not on the connection's host https://services.leadconnectorhq.com:443"), "{text}");
        }
    }

    #[test]
    fn converts_only_when_nothing_is_lost() {
        assert_eq!(InputType::Integer.coerce(&json!("20")), Some(json!(20)));
        assert_eq!(InputType::String.coerce(&json!(20)), Some(json!("20")));
        assert_eq!(InputType::Integer.coerce(&json!("2x")), None);
        assert_eq!(InputType::String.coerce(&json!({"a": 1})), None);
    }
}
