//! Every GHL operation of the catalog, sent for real through `HttpClient::execute` with its
//! `sample_input`, to Prism mocking the official OpenAPI spec of its category (`prism mock
//! --errors`, one per spec file, all started at once). Prism checks what the client actually
//! puts on the wire: the path, the query, the Authorization and Version headers, and the body
//! against the spec's schema. A pass is a 2xx answer without an `sl-violations` header.
//!
//! Where the spec itself makes Prism fail a correct request, the operation is listed in
//! `KNOWN_DEFECTS` with the reason; a listed operation that passes fails the test too, so the
//! list cannot go stale. Most listed defects are in the spec's responses (Prism validates the
//! example it serves and answers 500); for those the request must still pass Prism's checks.
//! Prism comes from `.ci` (`(cd .ci && npm ci)`); without it the test fails rather than
//! skipping.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ghlflow::catalog::{self, Operation};
use ghlflow::config::{Config, Connection};
use ghlflow::http::{HttpClient, HttpError, RequestBody, prepare};
use serde_json::Value;

use crate::util::{root, shared};

/// (operation key, reason). Operations whose spec makes Prism fail a correct request. Most are
/// response defects: Prism accepts the request, serves the spec's own example, finds that the
/// example contradicts the response schema beside it and answers 500 instead.
const KNOWN_DEFECTS: &[(&str, &str)] = &[
    (
        "ghl.associations.create_association",
        "the association schema types firstObjectLabel, firstObjectKey, secondObjectLabel, secondObjectKey and associationType as object; its own examples are strings",
    ),
    (
        "ghl.associations.create_relation",
        "the response reuses the association schema that types its string fields as object",
    ),
    (
        "ghl.associations.delete_relation",
        "the response reuses the association schema that types its string fields as object",
    ),
    (
        "ghl.associations.find_associations",
        "the response reuses the association schema that types its string fields as object",
    ),
    (
        "ghl.associations.get_association",
        "the response reuses the association schema that types its string fields as object",
    ),
    (
        "ghl.associations.get_association_by_keys",
        "the response reuses the association schema that types its string fields as object",
    ),
    (
        "ghl.associations.get_association_key",
        "the response reuses the association schema that types its string fields as object",
    ),
    (
        "ghl.associations.get_relations_by_record",
        "the response reuses the association schema that types its string fields as object",
    ),
    (
        "ghl.associations.update_association",
        "the response reuses the association schema that types its string fields as object",
    ),
    (
        "ghl.blogs.get_blog_categories",
        "the category schema requires `name` but declares no such property (it has `label`), so no example can satisfy it",
    ),
    ("ghl.calendars.create_appointment", "isRecurring is typed boolean with the string \"true\" as its example"),
    (
        "ghl.calendars.create_block_slot",
        "startTime and endTime are typed object while their examples are ISO date-time strings",
    ),
    ("ghl.calendars.delete_calendar", "the success flag is typed boolean with the string \"true\" as its example"),
    (
        "ghl.calendars.delete_calendar_group",
        "the success flag is typed boolean with the string \"true\" as its example",
    ),
    (
        "ghl.calendars.delete_calendar_resource",
        "the success flag is typed boolean with the string \"true\" as its example",
    ),
    (
        "ghl.calendars.get_appointment",
        "the event schema types startTime, endTime, dateAdded and dateUpdated as object (examples are strings) and isRecurring as boolean with example \"true\"",
    ),
    (
        "ghl.calendars.list_blocked_slots",
        "the event schema types its date-time strings as object and isRecurring as boolean with example \"true\"",
    ),
    (
        "ghl.calendars.list_calendar_events",
        "the event schema types its date-time strings as object and isRecurring as boolean with example \"true\"",
    ),
    ("ghl.calendars.update_appointment", "isRecurring is typed boolean with the string \"true\" as its example"),
    (
        "ghl.calendars.update_block_slot",
        "startTime and endTime are typed object while their examples are ISO date-time strings",
    ),
    ("ghl.calendars.update_group_status", "the success flag is typed boolean with the string \"true\" as its example"),
    (
        "ghl.companies.get_company",
        "onboardingInfo's flags are typed boolean, tools array and metaData object, but its example is the empty string",
    ),
    (
        "ghl.contacts.bulk_update_contact_tags",
        "`responses` is typed as an array of strings while its own example gives one object per contact",
    ),
    (
        "ghl.contacts.get_contacts_by_business",
        "the contact's followers is typed array of strings with a single id string as its example",
    ),
    (
        "ghl.contacts.list_contacts",
        "the contact's followers is typed array of strings with a single id string as its example",
    ),
    ("ghl.conversations.get_message_by_id", "meta.callDuration is typed string with the number 120 as its example"),
    (
        "ghl.conversations.get_message_transcription",
        "mediaChannel, sentenceIndex, startTime, endTime and confidence are typed number with string examples",
    ),
    (
        "ghl.conversations.get_messages_by_conversation",
        "meta.callDuration is typed string with the number 120 as its example",
    ),
    (
        "ghl.opportunities.create_opportunity",
        "the opportunity's indexVersion is typed string with the number 1 as its example",
    ),
    (
        "ghl.opportunities.get_opportunity",
        "the opportunity's indexVersion is typed string with the number 1 as its example",
    ),
    (
        "ghl.opportunities.search_opportunities",
        "the opportunity's indexVersion is typed string with the number 1 as its example",
    ),
    (
        "ghl.opportunities.update_opportunity",
        "the opportunity's indexVersion is typed string with the number 1 as its example",
    ),
];

/// The known defects where Prism refuses the request itself. Every other listed operation must
/// fail only on the spec's own response, so its request stays checked.
const REJECTS_THE_REQUEST: &[&str] = &[];

const TOKEN: &str = "prism-conformance-token";

/// How long one Prism may take to load its spec and answer.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(45);

/// The Prism processes of this test; every one is killed when the guard goes, panics included.
struct PrismGuard {
    children: Vec<(String, Child)>,
}

impl Drop for PrismGuard {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One running mock: its spec file, its address and its log.
struct Mock {
    spec: String,
    base_url: String,
    log: PathBuf,
}

fn prism_binary() -> PathBuf {
    let bin = root().join(".ci/node_modules/.bin/prism");
    assert!(
        bin.exists(),
        "Prism is not installed at {}: run `(cd .ci && npm ci)` in the repository first (CI does this)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free local port").port()
}

/// Starts `prism mock --errors` for `spec` on a free port; the child joins the guard at once.
fn spawn_prism(bin: &Path, spec_dir: &Path, spec: &str, logs: &Path, guard: &mut PrismGuard) -> Mock {
    let port = free_port();
    let log = logs.join(format!("{spec}.{port}.log"));
    let out = std::fs::File::create(&log).expect("a Prism log file");
    let err = out.try_clone().expect("a Prism log file");
    let child = Command::new(bin)
        .args(["mock", "-h", "127.0.0.1", "-p", &port.to_string(), "--errors"])
        .arg(spec_dir.join(spec))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start Prism ({}): {e}; run `(cd .ci && npm ci)`", bin.display()));
    guard.children.push((spec.to_owned(), child));
    Mock { spec: spec.to_owned(), base_url: format!("http://127.0.0.1:{port}"), log }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Waits until every mock answers HTTP (any status). A Prism that exits early (a port taken
/// between our probe and its bind) is started again on another port, up to three times.
async fn wait_until_ready(mocks: &mut [Mock], guard: &mut PrismGuard, bin: &Path, spec_dir: &Path, logs: &Path) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
    let mut pending: BTreeSet<usize> = (0..mocks.len()).collect();
    let mut started = Instant::now();
    while !pending.is_empty() {
        for i in pending.clone() {
            if http.get(&mocks[i].base_url).send().await.is_ok() {
                pending.remove(&i);
                continue;
            }
            let spec = mocks[i].spec.clone();
            let slot = guard.children.iter().position(|(s, _)| *s == spec).unwrap();
            if let Ok(Some(status)) = guard.children[slot].1.try_wait() {
                let tries = attempts.entry(spec.clone()).or_insert(1);
                assert!(
                    *tries < 3,
                    "Prism for {spec} exited ({status}) before answering:\n{}",
                    log_tail(&mocks[i].log)
                );
                *tries += 1;
                guard.children.remove(slot);
                mocks[i] = spawn_prism(bin, spec_dir, &spec, logs, guard);
                started = Instant::now();
            }
        }
        assert!(
            started.elapsed() < STARTUP_TIMEOUT,
            "Prism did not answer within {STARTUP_TIMEOUT:?} for: {}",
            pending
                .iter()
                .map(|&i| format!("{} ({})", mocks[i].spec, log_tail(&mocks[i].log)))
                .collect::<Vec<_>>()
                .join("\n")
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The `spec:` field of `operations/ghl/<category>.yaml`.
fn category_spec_file(category: &str) -> String {
    let text = std::fs::read_to_string(root().join(format!("operations/ghl/{category}.yaml"))).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    doc["spec"].as_str().unwrap_or_else(|| panic!("{category}.yaml names no spec")).to_owned()
}

/// A 20-character location id of its own per spec file, so each mock gets its own rate budget.
fn location_for(index: usize) -> String {
    format!("prismLocation{index:07}")
}

/// What went wrong with one operation.
#[derive(Debug)]
struct Failure {
    key: String,
    what: String,
    violations: Option<String>,
}

impl Failure {
    /// Whether Prism found fault with the request (rather than only with its own response).
    fn request_rejected(&self) -> bool {
        let Some(text) = &self.violations else { return true };
        let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else { return true };
        items.is_empty() || items.iter().any(|v| v.pointer("/location/0").and_then(Value::as_str) != Some("response"))
    }

    /// The status and Prism's violation messages, on one line.
    fn summary(&self) -> String {
        let status = self.what.split(": ").find(|p| p.starts_with("HTTP ")).unwrap_or(&self.what);
        let messages: Vec<String> = self
            .violations
            .as_deref()
            .and_then(|v| serde_json::from_str::<Value>(v).ok())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v["message"].as_str().map(|m| m.trim_start_matches("Response body property ").to_owned()))
            .collect();
        if messages.is_empty() { status.to_owned() } else { format!("{status}: {}", messages.join("; ")) }
    }

    /// Everything known: the client's error and the raw `sl-violations` header.
    fn detail(&self) -> String {
        match &self.violations {
            Some(v) => format!("{}\n      sl-violations: {v}", self.what),
            None => format!("{}\n      (no sl-violations header)", self.what),
        }
    }
}

/// Sends every operation of one spec file through the real client; the failures.
async fn run_spec(
    catalog: Arc<catalog::Catalog>,
    base_url: String,
    location: String,
    ops: Vec<Arc<Operation>>,
) -> Vec<Failure> {
    let text = format!(
        "connections:\n  ghl:\n    app: ghl\n    location_id: {location}\n    auth: {{ type: private_token, token: {TOKEN} }}\n    base_url: {base_url}\n"
    );
    let config = Config::parse(&text, Path::new("ghlflow.yaml"), &catalog, &|_| None)
        .unwrap_or_else(|d| panic!("the test connection is invalid: {d:?}"));
    let connection = config.connection("ghl").unwrap().clone();
    let client = HttpClient::new(None, config.redactor.clone()).expect("an HTTP client");
    let raw = reqwest::Client::new();
    let mut failures = Vec::new();
    for op in ops {
        // One attempt: a Prism error is final, and retrying it only costs time.
        let mut op = (*op).clone();
        op.retry.max_attempts = std::num::NonZeroU32::MIN;
        let key = op.key.to_string();
        let fail = |what: String, violations: Option<String>| Failure { key: key.clone(), what, violations };
        match client.execute(&connection, &op, &op.sample_input).await {
            Ok(response) if (200..300).contains(&response.status) => {
                if let Some(v) = response.headers.get("sl-violations") {
                    let v = v.to_str().unwrap_or_default().to_owned();
                    failures.push(fail(format!("HTTP {} with violations", response.status), Some(v)));
                }
            }
            Ok(response) => failures.push(fail(format!("HTTP {}", response.status), None)),
            Err(e @ HttpError::Status { .. }) => {
                // The error carries Prism's message, not its headers: send the same request once
                // more, outside the client, to read `sl-violations`.
                let violations = violations_of(&raw, &connection, &op).await;
                failures.push(fail(e.to_string(), violations));
            }
            Err(e) => failures.push(fail(e.to_string(), None)),
        }
    }
    failures
}

/// The `sl-violations` header Prism gives the operation's sample request, if any.
async fn violations_of(raw: &reqwest::Client, connection: &Connection, op: &Operation) -> Option<String> {
    let request = prepare(op, connection, &op.sample_input).ok()?;
    let method = reqwest::Method::from_bytes(request.method.as_str().as_bytes()).ok()?;
    let mut builder = raw.request(method, request.url.clone()).bearer_auth(TOKEN);
    for (k, v) in &request.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    builder = match &request.body {
        None => builder,
        Some(RequestBody::Json(v)) => builder.json(v),
        Some(RequestBody::Form(pairs)) => builder.form(pairs),
    };
    let response = builder.send().await.ok()?;
    response.headers().get("sl-violations").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ghl_operation_passes_prism_with_its_sample_input() {
    let bin = prism_binary();
    let spec_dir = shared().join("ghl-openapi/apps");
    assert!(spec_dir.is_dir(), "the official specs are expected at {}", spec_dir.display());
    let catalog = Arc::new(catalog::load_embedded().expect("the embedded catalog"));

    // Operations grouped by the spec file of their category.
    let mut by_spec: BTreeMap<String, Vec<Arc<Operation>>> = BTreeMap::new();
    let mut spec_of_category: BTreeMap<String, String> = BTreeMap::new();
    // `operations()` leaves out the instant triggers (`source: webhook`): they have no endpoint.
    for op in catalog.operations().filter(|o| o.key.app == "ghl") {
        let spec = spec_of_category
            .entry(op.key.category.clone())
            .or_insert_with(|| category_spec_file(&op.key.category))
            .clone();
        by_spec.entry(spec).or_default().push(op.clone());
    }
    let total: usize = by_spec.values().map(Vec::len).sum();
    assert_eq!(total, 126, "the catalog should have 126 GHL operations");

    // The lists are checked before anything starts.
    let known: BTreeMap<&str, &str> = KNOWN_DEFECTS.iter().copied().collect();
    assert_eq!(known.len(), KNOWN_DEFECTS.len(), "an operation is listed twice in KNOWN_DEFECTS");
    for key in known.keys() {
        assert!(catalog.get(key).is_some(), "KNOWN_DEFECTS lists `{key}`, which is not in the catalog");
    }
    for key in REJECTS_THE_REQUEST {
        assert!(known.contains_key(key), "REJECTS_THE_REQUEST lists `{key}`, which is not in KNOWN_DEFECTS");
    }

    // One Prism per spec file, all started before waiting for any.
    let logs = tempfile::tempdir().expect("a temporary folder for Prism logs");
    let mut guard = PrismGuard { children: Vec::new() };
    let mut mocks: Vec<Mock> =
        by_spec.keys().map(|spec| spawn_prism(&bin, &spec_dir, spec, logs.path(), &mut guard)).collect();
    let started = Instant::now();
    wait_until_ready(&mut mocks, &mut guard, &bin, &spec_dir, logs.path()).await;
    println!("prism: {} mocks answering after {:.1?}", mocks.len(), started.elapsed());

    let mut tasks = tokio::task::JoinSet::new();
    for (i, mock) in mocks.iter().enumerate() {
        let ops = by_spec[&mock.spec].clone();
        tasks.spawn(run_spec(catalog.clone(), mock.base_url.clone(), location_for(i), ops));
    }
    let mut failures: Vec<Failure> = Vec::new();
    while let Some(result) = tasks.join_next().await {
        failures.extend(result.expect("a spec's requests ran"));
    }
    failures.sort_by(|a, b| a.key.cmp(&b.key));

    let failed: BTreeSet<&str> = failures.iter().map(|f| f.key.as_str()).collect();
    let unexpected: Vec<&Failure> = failures.iter().filter(|f| !known.contains_key(f.key.as_str())).collect();
    let stale: Vec<&str> = known.keys().copied().filter(|k| !failed.contains(k)).collect();
    let changed: Vec<String> = failures
        .iter()
        .filter(|f| known.contains_key(f.key.as_str()))
        .filter(|f| f.request_rejected() != REJECTS_THE_REQUEST.contains(&f.key.as_str()))
        .map(|f| format!("  {}: {}", f.key, f.detail()))
        .collect();

    for f in &failures {
        match known.get(f.key.as_str()) {
            Some(reason) => println!("  known defect {}: {} ({reason})", f.key, f.summary()),
            None => println!("  FAIL {}: {}", f.key, f.detail()),
        }
    }
    println!(
        "prism conformance: {} of {total} operations passed, {} known spec defects",
        total - failed.len(),
        KNOWN_DEFECTS.len()
    );
    assert!(
        unexpected.is_empty(),
        "operations Prism rejects (fix the catalog, or list a true spec defect in KNOWN_DEFECTS):\n{}",
        unexpected.iter().map(|f| format!("  {}: {}", f.key, f.detail())).collect::<Vec<_>>().join("\n")
    );
    assert!(stale.is_empty(), "listed in KNOWN_DEFECTS but Prism now accepts them: {stale:?}");
    assert!(
        changed.is_empty(),
        "known defects failing in another way than listed (a request rejected where only the response \
         was at fault, or the reverse; see REJECTS_THE_REQUEST):\n{}",
        changed.join("\n")
    );
    drop(guard);
}
