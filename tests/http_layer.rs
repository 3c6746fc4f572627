//! The HTTP layer against a fake API: shared rate budgets, 429 and 5xx handling, OAuth
//! refresh, read-only connections, path encoding, secrets kept out of output, and every
//! pagination style walked to its end (or its bound), Link headers read as RFC 8288 says.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use ghlflow::catalog::{self, Catalog};
use ghlflow::config::{Config, Connection};
use ghlflow::http::{HttpClient, HttpError, Pager};
use ghlflow::store::{Store, StoredTokens};

use crate::fake_api::{FakeApi, Recorded, Reply};
use crate::util::root;

const TOKEN: &str = "pit-SECRET-123";

fn embedded() -> Catalog {
    catalog::load_embedded().unwrap_or_else(|d| panic!("{d}"))
}

/// The embedded catalog with GHL's retry policy shortened to 10ms..80ms (still 5 attempts),
/// through an `--operations`-style override folder.
fn fast_retry_overrides() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let app = std::fs::read_to_string(root().join("operations/ghl/app.yaml")).unwrap();
    let app =
        app.replace("initial_backoff: 500ms", "initial_backoff: 10ms").replace("max_backoff: 30s", "max_backoff: 80ms");
    assert!(app.contains("initial_backoff: 10ms") && app.contains("max_backoff: 80ms"), "app.yaml changed shape");
    std::fs::create_dir(dir.path().join("ghl")).unwrap();
    std::fs::write(dir.path().join("ghl/app.yaml"), app).unwrap();
    dir
}

fn fast_retry_catalog() -> Catalog {
    let dir = fast_retry_overrides();
    let catalog = catalog::load(Some(dir.path())).unwrap_or_else(|d| panic!("{d}"));
    let retry = &catalog.get("ghl.contacts.get_contact").unwrap().retry;
    assert_eq!((retry.max_attempts.get(), retry.initial_backoff), (5, Duration::from_millis(10)));
    catalog
}

fn config(catalog: &Catalog, yaml: &str) -> Config {
    Config::parse(yaml, Path::new("/nonexistent/ghlflow.yaml"), catalog, &|_| None).unwrap_or_else(|d| panic!("{d}"))
}

/// A GHL connection `ghl` with a private token, pointed at `base`, plus `extra` lines.
fn ghl_yaml(base: &str, extra: &str) -> String {
    format!(
        "connections:\n  ghl:\n    app: ghl\n    location_id: LOC1\n    auth: {{ type: private_token, token: {TOKEN} }}\n    base_url: {base}\n{extra}"
    )
}

fn oauth_yaml(base: &str, extra: &str) -> String {
    format!(
        "connections:\n  ghl:\n    app: ghl\n    location_id: LOC1\n    auth:\n      type: oauth2\n      client_id: cid\n      client_secret: csecret-XYZ\n      refresh_token: file-refresh-0\n      token_url: {base}/oauth/token\n    base_url: {base}\n{extra}"
    )
}

fn capsule_yaml(base: &str) -> String {
    format!(
        "connections:\n  capsule:\n    app: capsule\n    auth: {{ type: bearer, token: cap-SECRET-9 }}\n    access: read_only\n    base_url: {base}/api/v2\n"
    )
}

fn client(config: &Config, store: Option<Store>) -> HttpClient {
    HttpClient::new(store, config.redactor.clone()).unwrap()
}

fn inputs(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn contact(id: &str) -> Reply {
    Reply::json(200, json!({"contact": {"id": id, "firstName": "Rosa"}}))
}

// ---------------------------------------------------------------------------------------
// Rate limits

/// GHL's burst limit, enforced as a sliding window over arrival times: 100 requests in any
/// 10 s, a 429 beyond, and the X-RateLimit-* headers GHL sends on every answer. A burst of
/// 500 concurrent calls must pace itself so that the server refuses none (about 40 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_500_calls_stays_inside_ghls_burst_limit() {
    const MAX: usize = 100;
    const WINDOW: Duration = Duration::from_secs(10);
    let window: Mutex<std::collections::VecDeque<Instant>> = Mutex::default();
    let refused = Arc::new(AtomicUsize::new(0));
    let refused_in_server = Arc::clone(&refused);
    let daily = AtomicUsize::new(199_000);
    let api = FakeApi::start(move |r| {
        let mut window = window.lock().unwrap();
        let now = Instant::now();
        while window.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            window.pop_front();
        }
        let limits = |reply: Reply, remaining: usize| {
            reply
                .header("X-RateLimit-Max", MAX.to_string())
                .header("X-RateLimit-Remaining", remaining.to_string())
                .header("X-RateLimit-Interval-Milliseconds", WINDOW.as_millis().to_string())
                .header("X-RateLimit-Daily-Remaining", daily.fetch_sub(1, Ordering::SeqCst).to_string())
        };
        if window.len() >= MAX {
            refused_in_server.fetch_add(1, Ordering::SeqCst);
            eprintln!(
                "DIAG 429 at seq {}: oldest in window arrived {:?} ago",
                r.seq,
                now.duration_since(*window.front().unwrap())
            );
            return limits(Reply::json(429, json!({"message": "Too many requests"})), 0);
        }
        window.push_back(now);
        limits(contact(r.path.rsplit('/').next().unwrap_or_default()), MAX - window.len())
    })
    .await;
    let catalog = embedded();
    let config = config(&catalog, &ghl_yaml(&api.base_url, ""));
    let http = Arc::new(client(&config, None));
    let connection = Arc::clone(config.connection("ghl").unwrap());
    let op = Arc::clone(catalog.get("ghl.contacts.get_contact").unwrap());

    let start = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..500 {
        let (http, connection, op) = (Arc::clone(&http), Arc::clone(&connection), Arc::clone(&op));
        calls
            .spawn(async move { http.execute(&connection, &op, &inputs(json!({"contactId": format!("c{i}")}))).await });
    }
    let mut failures = Vec::new();
    let mut succeeded = 0;
    while let Some(result) = calls.join_next().await {
        match result.unwrap() {
            Ok(response) if response.status == 200 => succeeded += 1,
            Ok(response) => failures.push(format!("status {}", response.status)),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let elapsed = start.elapsed();
    eprintln!("500 calls took {elapsed:?}");
    assert_eq!(refused.load(Ordering::SeqCst), 0, "the server answered 429 (in {elapsed:?})");
    assert!(failures.is_empty(), "{} calls failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert_eq!(succeeded, 500);
    assert_eq!(api.count(), 500, "every call is one request");
    // 400 requests beyond the first 100 need four more windows (40 s); a fifth means the
    // budget threw capacity away (a 429's pause, or its own requests taken for someone else's).
    assert!(elapsed < Duration::from_secs(46), "500 calls took {elapsed:?}");
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_succeeds() {
    let api = FakeApi::scripted(
        vec![Reply::json(429, json!({"message": "Too many requests"})).header("Retry-After", "1")],
        contact("c1"),
    )
    .await;
    let catalog = embedded();
    let config = config(&catalog, &ghl_yaml(&api.base_url, ""));
    let http = client(&config, None);
    let op = catalog.get("ghl.contacts.get_contact").unwrap();
    let response =
        http.execute(config.connection("ghl").unwrap(), op, &inputs(json!({"contactId": "c1"}))).await.unwrap();
    assert_eq!(response.body["contact"]["id"], "c1");
    let seen = api.requests();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at.duration_since(seen[0].at);
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}, before Retry-After");
    assert!(gap < Duration::from_secs(5), "waited {gap:?} for a 1 s Retry-After");
}

// ---------------------------------------------------------------------------------------
// Retries

#[tokio::test]
async fn a_500_is_retried_and_a_persistent_one_fails_after_max_attempts() {
    let api =
        FakeApi::scripted(vec![Reply::json(500, json!({"message": "Internal server error"}))], contact("c1")).await;
    let catalog = fast_retry_catalog();
    let config = config(&catalog, &ghl_yaml(&api.base_url, ""));
    let http = client(&config, None);
    let connection = config.connection("ghl").unwrap();
    let op = catalog.get("ghl.contacts.get_contact").unwrap();

    let response = http.execute(connection, op, &inputs(json!({"contactId": "c1"}))).await.unwrap();
    assert_eq!(response.status, 200);
    let seen = api.requests();
    assert_eq!(seen.len(), 2, "500 then 200 is two requests");
    assert_eq!((seen[1].method.as_str(), seen[1].path.as_str()), ("GET", "/contacts/c1"));

    api.set_handler(|_| Reply::json(500, json!({"message": "upstream is down"})));
    let started = Instant::now();
    let err = http.execute(connection, op, &inputs(json!({"contactId": "c2"}))).await.unwrap_err();
    assert_eq!(api.count_to("/contacts/c2"), 5, "max_attempts is 5");
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(err.status(), Some(500));
    assert!(err.to_string().contains("upstream is down"), "{err}");
    // Four backoffs of 10..80ms (jitter at most doubles them): not the app's 500ms..30s.
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_400_is_not_retried_and_carries_the_apis_message() {
    let api = FakeApi::scripted(
        vec![],
        Reply::json(400, json!({"statusCode": 400, "message": ["email must be an email"], "error": "Bad Request"})),
    )
    .await;
    let catalog = fast_retry_catalog();
    let config = config(&catalog, &ghl_yaml(&api.base_url, ""));
    let http = client(&config, None);
    let op = catalog.get("ghl.contacts.create_contact").unwrap();
    let err = http
        .execute(config.connection("ghl").unwrap(), op, &inputs(json!({"email": "not-an-email"})))
        .await
        .unwrap_err();
    assert_eq!(api.count(), 1, "a 400 is not retried");
    assert!(!err.is_retryable());
    assert_eq!(err.status(), Some(400));
    let text = err.to_string();
    assert!(text.contains("email must be an email"), "{text}");
    assert!(text.contains("POST /contacts/"), "{text}");
    assert_eq!(api.requests()[0].json(), json!({"email": "not-an-email", "locationId": "LOC1"}));
}

// ---------------------------------------------------------------------------------------
// OAuth

/// A fake GHL with a token endpoint at /oauth/token that swaps `refresh` for `new_access`
/// (and a rotated refresh token), and API paths that accept only the bearers `accepted`.
fn oauth_server(
    refresh: &'static str,
    new_access: &'static str,
    rotated: &'static str,
    accepted: &'static [&'static str],
) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    move |r| {
        if r.path == "/oauth/token" {
            let form = r.form();
            let has = |k: &str, v: &str| form.iter().any(|(a, b)| a == k && b == v);
            if !(has("grant_type", "refresh_token") && has("refresh_token", refresh) && has("client_id", "cid")) {
                return Reply::json(400, json!({"error": "invalid_grant"}));
            }
            // Slow, so that concurrent callers pile up behind the refresh in progress.
            return Reply::json(
                200,
                json!({"access_token": new_access, "refresh_token": rotated, "expires_in": 86399,
                       "token_type": "Bearer", "locationId": "LOC1"}),
            )
            .delayed(Duration::from_millis(300));
        }
        match r.bearer() {
            Some(b) if accepted.contains(&b) => contact(r.path.rsplit('/').next().unwrap_or_default()),
            _ => Reply::json(401, json!({"statusCode": 401, "message": "Invalid JWT"})),
        }
    }
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_for_20_concurrent_calls_and_persisted() {
    let api = FakeApi::start(oauth_server("stored-refresh-1", "access-2", "rotated-refresh-2", &["access-2"])).await;
    let catalog = embedded();
    let config = config(&catalog, &oauth_yaml(&api.base_url, "    concurrency: 20\n"));
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let store = Store::open(&state_dir).unwrap();
    store
        .save_tokens(
            "ghl",
            &StoredTokens {
                access_token: Some("expired-access-1".into()),
                refresh_token: Some("stored-refresh-1".into()),
                expires_at: Some(unix_now() - 3600),
                location_id: Some("LOC1".into()),
                company_id: None,
                scope: Some("contacts.readonly".into()),
            },
        )
        .await
        .unwrap();
    let http = Arc::new(client(&config, Some(store)));
    let connection = Arc::clone(config.connection("ghl").unwrap());
    let op = Arc::clone(catalog.get("ghl.contacts.get_contact").unwrap());

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (http, connection, op) = (Arc::clone(&http), Arc::clone(&connection), Arc::clone(&op));
        calls
            .spawn(async move { http.execute(&connection, &op, &inputs(json!({"contactId": format!("c{i}")}))).await });
    }
    while let Some(result) = calls.join_next().await {
        let response = result.unwrap().unwrap();
        assert_eq!(response.status, 200);
    }
    assert_eq!(api.count_to("/oauth/token"), 1, "one refresh for everyone");
    let api_calls: Vec<Recorded> = api.requests().into_iter().filter(|r| r.path != "/oauth/token").collect();
    assert_eq!(api_calls.len(), 20, "no call was sent with the expired token and retried");
    assert!(api_calls.iter().all(|r| r.bearer() == Some("access-2")));

    // The rotated refresh token survives a restart.
    drop(http);
    let store = Store::open(&state_dir).unwrap();
    let saved = store.tokens("ghl").await.unwrap().expect("tokens saved");
    assert_eq!(saved.refresh_token.as_deref(), Some("rotated-refresh-2"));
    assert_eq!(saved.access_token.as_deref(), Some("access-2"));
    assert!(saved.expires_at.unwrap() > unix_now() + 80_000, "{saved:?}");
    assert_eq!(saved.location_id.as_deref(), Some("LOC1"));
}

fn valid_tokens(access: &str, refresh: &str) -> StoredTokens {
    StoredTokens {
        access_token: Some(access.into()),
        refresh_token: Some(refresh.into()),
        expires_at: Some(unix_now() + 3600),
        location_id: Some("LOC1".into()),
        company_id: None,
        scope: None,
    }
}

#[tokio::test]
async fn a_401_on_a_valid_looking_token_refreshes_once_and_retries_once() {
    let api = FakeApi::start(oauth_server("refresh-1", "access-2", "refresh-2", &["access-2"])).await;
    let catalog = embedded();
    let config = config(&catalog, &oauth_yaml(&api.base_url, ""));
    let store = Store::temporary().unwrap();
    store.save_tokens("ghl", &valid_tokens("revoked-access-1", "refresh-1")).await.unwrap();
    let http = client(&config, Some(store.clone()));
    let op = catalog.get("ghl.contacts.get_contact").unwrap();
    let response =
        http.execute(config.connection("ghl").unwrap(), op, &inputs(json!({"contactId": "c1"}))).await.unwrap();
    assert_eq!(response.body["contact"]["id"], "c1");
    let seen = api.requests();
    let summary: Vec<(&str, Option<&str>)> = seen.iter().map(|r| (r.path.as_str(), r.bearer())).collect();
    assert_eq!(
        summary,
        [("/contacts/c1", Some("revoked-access-1")), ("/oauth/token", None), ("/contacts/c1", Some("access-2"))]
    );
    assert_eq!(store.tokens("ghl").await.unwrap().unwrap().refresh_token.as_deref(), Some("refresh-2"));
}

#[tokio::test]
async fn a_401_that_persists_after_the_refresh_fails_without_looping() {
    // The refreshed token is refused too: one refresh, one retry, then the 401 is the answer.
    let api = FakeApi::start(oauth_server("refresh-1", "access-2", "refresh-2", &[])).await;
    let catalog = embedded();
    let config = config(&catalog, &oauth_yaml(&api.base_url, ""));
    let store = Store::temporary().unwrap();
    store.save_tokens("ghl", &valid_tokens("access-1", "refresh-1")).await.unwrap();
    let http = client(&config, Some(store));
    let op = catalog.get("ghl.contacts.get_contact").unwrap();
    let err =
        http.execute(config.connection("ghl").unwrap(), op, &inputs(json!({"contactId": "c1"}))).await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(err.to_string().contains("Invalid JWT"), "{err}");
    assert_eq!(api.count_to("/oauth/token"), 1);
    assert_eq!(api.count_to("/contacts/c1"), 2);
}

// ---------------------------------------------------------------------------------------
// Access and paths

#[tokio::test]
async fn a_read_only_connection_refuses_writes_and_allows_a_post_search() {
    let api = FakeApi::scripted(vec![], Reply::json(200, json!({"contacts": [], "total": 0}))).await;
    let catalog = embedded();
    let config = config(&catalog, &ghl_yaml(&api.base_url, "    access: read_only\n"));
    let http = client(&config, None);
    let connection = config.connection("ghl").unwrap();

    let create = catalog.get("ghl.contacts.create_contact").unwrap();
    let err = http.execute(connection, create, &inputs(json!({"email": "a@b.c"}))).await.unwrap_err();
    assert!(matches!(err, HttpError::ReadOnly { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("ghl.contacts.create_contact"), "{text}");
    assert!(text.contains("contacts.write"), "{text}");
    assert!(text.contains("`ghl` is read_only"), "{text}");
    assert_eq!(api.count(), 0, "a refused write sends nothing");

    let search = catalog.get("ghl.contacts.search_contacts").unwrap();
    let response = http.execute(connection, search, &inputs(json!({"query": "rosa"}))).await.unwrap();
    assert_eq!(response.body["total"], 0);
    let seen = api.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("POST", "/contacts/search"));
    assert_eq!(seen[0].json(), json!({"locationId": "LOC1", "query": "rosa"}));
}

#[tokio::test]
async fn hostile_ids_arrive_as_one_encoded_path_segment() {
    let api = FakeApi::scripted(vec![], contact("x")).await;
    let catalog = embedded();
    let config = config(&catalog, &ghl_yaml(&api.base_url, ""));
    let http = client(&config, None);
    let connection = config.connection("ghl").unwrap();
    let op = catalog.get("ghl.contacts.get_contact").unwrap();

    http.execute(connection, op, &inputs(json!({"contactId": "../users/x?y=1#z/w"}))).await.unwrap();
    let seen = api.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/contacts/..%2Fusers%2Fx%3Fy%3D1%23z%2Fw");
    assert_eq!(seen[0].query, None, "the `?` started a query");
    assert_eq!(seen[0].path.split('/').count(), 3, "{}", seen[0].path);

    for bad in ["..", "."] {
        let err = http.execute(connection, op, &inputs(json!({"contactId": bad}))).await.unwrap_err();
        assert!(matches!(err, HttpError::Refused { .. }), "{bad}: {err:?}");
        assert!(err.to_string().contains("contactId"), "{err}");
    }
    assert_eq!(api.count(), 1, "a refused path sends nothing");
}

// ---------------------------------------------------------------------------------------
// Secrets

/// Runs the `ghlflow` binary in `dir` with `envs`, off the runtime's threads (the fake API
/// must keep answering while it runs).
async fn run_ghlflow(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ghlflow"));
    command.args(args).current_dir(dir).env("NO_COLOR", "1").env_remove("RUST_LOG");
    for (k, v) in envs {
        command.env(k, v);
    }
    tokio::task::spawn_blocking(move || command.output().expect("the ghlflow binary runs")).await.unwrap()
}

fn assert_no_secret(out: &Output, secret: &str, what: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains(secret), "{what}: the token is in stdout:\n{stdout}");
    assert!(!stderr.contains(secret), "{what}: the token is in stderr:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_dry_run_output_errors_or_debug_logs() {
    let api = FakeApi::start(|_| Reply::status(500)).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = ghl_yaml(&api.base_url, "").replace(TOKEN, "'${GHL_TOKEN}'");
    std::fs::write(dir.path().join("ghlflow.yaml"), yaml).unwrap();
    let overrides = fast_retry_overrides();
    let overrides = overrides.path().to_str().unwrap();
    let input = r#"{"contactId": "abc"}"#;
    let call = ["call", "ghl.contacts.get_contact", "--connection", "ghl", "--input", input];

    let env = [("GHL_TOKEN", TOKEN), ("GHLFLOW_LOG", "debug")];
    let dry = run_ghlflow(dir.path(), &[&call[..], &["--dry-run"][..]].concat(), &env).await;
    let stdout = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    assert!(stdout.contains(&format!("GET {}/contacts/abc", api.base_url)), "{stdout}");
    assert!(stdout.contains("Version: 2021-07-28"), "{stdout}");
    assert!(stdout.contains("Authorization: Bearer <redacted>"), "{stdout}");
    assert_no_secret(&dry, TOKEN, "dry run");
    assert_eq!(api.count(), 0, "a dry run sends nothing");

    // Two 500s (retried, logged at debug and warn), then a 401, from an API that echoes the
    // token in its error messages: the worst case for logs.
    // A token read from the environment with a trailing newline is sent trimmed and must be
    // redacted trimmed too.
    for token_env in [TOKEN.to_owned(), format!("{TOKEN}\n")] {
        let seen_before = api.count();
        api.set_handler(move |r| {
            let token = r.bearer().unwrap_or_default().to_owned();
            if r.seq < seen_before + 2 {
                Reply::json(500, json!({"message": format!("upstream choked on {token}")}))
            } else {
                Reply::json(401, json!({"statusCode": 401, "message": format!("Invalid token {token}")}))
            }
        });
        let env = [("GHL_TOKEN", token_env.as_str()), ("GHLFLOW_LOG", "debug")];
        let failed = run_ghlflow(dir.path(), &[&["--operations", overrides][..], &call[..]].concat(), &env).await;
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert_eq!(failed.status.code(), Some(1), "token {token_env:?}: {stderr}");
        assert!(stderr.contains("HTTP 401"), "token {token_env:?}: {stderr}");
        assert!(stderr.contains("Invalid token <redacted>"), "token {token_env:?}: {stderr}");
        assert_no_secret(&failed, TOKEN, &format!("failing call, token {token_env:?}"));
        let seen: Vec<Recorded> = api.requests().into_iter().skip(seen_before).collect();
        assert_eq!(seen.len(), 3, "two 500s retried, then the 401");
        assert!(seen.iter().all(|r| r.bearer() == Some(TOKEN)), "the token was really sent");
    }
}

// ---------------------------------------------------------------------------------------
// Pagination

async fn walk(pager: &mut Pager<'_>) -> Vec<Value> {
    let mut records = Vec::new();
    while let Some(page) = pager.next_page().await {
        records.extend(page.unwrap().records);
    }
    records
}

fn ids(records: &[Value]) -> Vec<&str> {
    records.iter().map(|r| r["id"].as_str().unwrap_or_default()).collect()
}

/// GHL List Contacts: `startAfter` + `startAfterId` from `meta`, as the live API answers.
/// Like GHL, one of the two without the other returns the first page again.
#[tokio::test]
async fn list_contacts_sends_start_after_and_its_id_together_and_stops() {
    let contacts: Vec<Value> =
        (1..=5).map(|i| json!({"id": format!("c{i}"), "dateAdded": 1_700_000_000_000u64 + i * 1000})).collect();
    let all = contacts.clone();
    let api = FakeApi::start(move |r| {
        let limit: usize = r.query_param("limit").and_then(|l| l.parse().ok()).unwrap_or(20);
        let start = match (r.query_param("startAfter"), r.query_param("startAfterId")) {
            (Some(_), Some(id)) => all.iter().position(|c| c["id"] == id.as_str()).map_or(all.len(), |p| p + 1),
            _ => 0,
        };
        let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
        let last = page.last().cloned().unwrap_or(Value::Null);
        Reply::json(
            200,
            json!({"contacts": page, "count": all.len(),
                   "meta": {"total": all.len(), "startAfter": last["dateAdded"], "startAfterId": last["id"]}}),
        )
    })
    .await;
    let catalog = embedded();
    let config = config(&catalog, &ghl_yaml(&api.base_url, ""));
    let http = client(&config, None);
    let op = Arc::clone(catalog.get("ghl.contacts.list_contacts").unwrap());
    let connection = Arc::clone(config.connection("ghl").unwrap());
    let mut pager = Pager::new(&http, connection, op, inputs(json!({"limit": 2})), None);
    let records = walk(&mut pager).await;
    assert_eq!(ids(&records), ["c1", "c2", "c3", "c4", "c5"]);
    assert!(!pager.stopped_at_bound());

    let seen = api.requests();
    assert_eq!(seen.len(), 3, "two full pages and a short one");
    assert!(seen.iter().all(|r| r.path == "/contacts/" && r.query_param("locationId").as_deref() == Some("LOC1")));
    assert_eq!((seen[0].query_param("startAfter"), seen[0].query_param("startAfterId")), (None, None));
    for (request, (after, id)) in seen[1..].iter().zip([("1700000002000", "c2"), ("1700000004000", "c4")]) {
        assert_eq!(request.query_param("startAfter").as_deref(), Some(after), "{:?}", request.query);
        assert_eq!(request.query_param("startAfterId").as_deref(), Some(id), "{:?}", request.query);
        assert_eq!(request.query_param("limit").as_deref(), Some("2"));
    }
}

fn businesses(from: usize, count: usize) -> Value {
    let items: Vec<Value> = (from..from + count).map(|i| json!({"id": format!("b{i}"), "name": "Acme"})).collect();
    json!({ "businesses": items })
}

#[tokio::test]
async fn an_offset_feed_stops_on_a_short_page() {
    let api = FakeApi::start(|r| {
        let skip: usize = r.query_param("skip").and_then(|s| s.parse().ok()).unwrap_or(0);
        let limit: usize = r.query_param("limit").and_then(|s| s.parse().ok()).unwrap_or(100);
        Reply::json(200, businesses(skip, limit.min(5usize.saturating_sub(skip))))
    })
    .await;
    let catalog = embedded();
    let config = config(&catalog, &ghl_yaml(&api.base_url, ""));
    let http = client(&config, None);
    let op = Arc::clone(catalog.get("ghl.businesses.list_businesses_by_location").unwrap());
    let connection = Arc::clone(config.connection("ghl").unwrap());
    let mut pager = Pager::new(&http, connection, op, inputs(json!({"limit": "2"})), None);
    let records = walk(&mut pager).await;
    assert_eq!(ids(&records), ["b0", "b1", "b2", "b3", "b4"]);
    let skips: Vec<Option<String>> = api.requests().iter().map(|r| r.query_param("skip")).collect();
    assert_eq!(skips, [None, Some("2".into()), Some("4".into())]);
    assert!(api.requests().iter().all(|r| r.query_param("limit").as_deref() == Some("2")));
}

#[tokio::test]
async fn an_offset_feed_that_never_ends_stops_at_the_apps_page_bound() {
    let api = FakeApi::start(|r| {
        let skip: usize = r.query_param("skip").and_then(|s| s.parse().ok()).unwrap_or(0);
        Reply::json(200, businesses(skip, 2))
    })
    .await;
    let catalog = embedded();
    let config = config(&catalog, &ghl_yaml(&api.base_url, ""));
    let http = client(&config, None);
    let op = Arc::clone(catalog.get("ghl.businesses.list_businesses_by_location").unwrap());
    let connection = Arc::clone(config.connection("ghl").unwrap());
    let bound = connection.app.page_bound.get() as usize;
    let mut pager = Pager::new(&http, connection, op, inputs(json!({"limit": "2"})), None);
    let records = walk(&mut pager).await;
    assert_eq!(bound, 50);
    assert_eq!(api.count(), bound);
    assert_eq!(records.len(), 2 * bound);
    assert!(pager.stopped_at_bound());
    assert_eq!(pager.next_inputs().and_then(|i| i.get("skip").cloned()), Some(json!((2 * bound).to_string())));
}

/// Capsule's parties: `page` in the query, the next page in a `Link` header (absolute URL).
/// `last_page` None is a feed that never ends; `next_host` replaces the host in the Link.
fn capsule_parties(
    base: String,
    last_page: Option<u32>,
    next_host: Option<String>,
) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    move |r| {
        if r.path != "/api/v2/parties" || r.bearer() != Some("cap-SECRET-9") {
            return Reply::json(404, json!({"message": "not found"}));
        }
        let page: u32 = r.query_param("page").and_then(|p| p.parse().ok()).unwrap_or(1);
        let size: u32 = r.query_param("perPage").and_then(|p| p.parse().ok()).unwrap_or(50);
        let parties: Vec<Value> =
            (0..size).map(|i| json!({"id": (page - 1) * size + i + 1, "updatedAt": "2025-06-01T00:00:00Z"})).collect();
        let mut reply = Reply::json(200, json!({ "parties": parties }));
        if last_page.is_none_or(|last| page < last) {
            let host = next_host.as_deref().unwrap_or(&base);
            reply = reply.header(
                "Link",
                format!(
                    "<{host}/api/v2/parties?since=2025-06-01T00%3A00%3A00Z&page={}&perPage={size}>; rel=\"next\", <{base}/api/v2/parties?page=1&perPage={size}>; rel=\"first\"",
                    page + 1
                ),
            );
        }
        reply
    }
}

fn capsule_pager<'c>(http: &'c HttpClient, config: &Config, catalog: &Catalog, bound: Option<u32>) -> Pager<'c> {
    let op = Arc::clone(catalog.get("capsule.parties.party_updated").unwrap());
    let connection: Arc<Connection> = Arc::clone(config.connection("capsule").unwrap());
    Pager::new(http, connection, op, inputs(json!({"since": "2025-06-01T00:00:00Z", "perPage": 2})), bound)
}

#[tokio::test]
async fn capsule_follows_link_headers_to_the_last_page() {
    let api = FakeApi::start(|_| Reply::status(500)).await;
    api.set_handler(capsule_parties(api.base_url.clone(), Some(3), None));
    let catalog = embedded();
    let config = config(&catalog, &capsule_yaml(&api.base_url));
    let http = client(&config, None);
    let mut pager = capsule_pager(&http, &config, &catalog, None);
    let records = walk(&mut pager).await;
    let got: Vec<u64> = records.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(got, [1, 2, 3, 4, 5, 6]);
    assert!(!pager.stopped_at_bound());
    let seen = api.requests();
    let queries: Vec<Option<&str>> = seen.iter().map(|r| r.query.as_deref()).collect();
    assert_eq!(
        queries,
        [
            Some("since=2025-06-01T00%3A00%3A00Z&perPage=2"),
            Some("since=2025-06-01T00%3A00%3A00Z&page=2&perPage=2"),
            Some("since=2025-06-01T00%3A00%3A00Z&page=3&perPage=2"),
        ]
    );
}

#[tokio::test]
async fn a_link_to_another_host_is_refused() {
    let api = FakeApi::start(|_| Reply::status(500)).await;
    let catalog = embedded();
    let config = config(&catalog, &capsule_yaml(&api.base_url));
    let http = client(&config, None);
    let port = api.base_url.rsplit(':').next().unwrap().to_owned();
    let elsewhere = [
        "http://evil.example.com".to_owned(),
        format!("http://localhost:{port}"),
        "http://127.0.0.1:1".to_owned(),
        format!("https://127.0.0.1:{port}"),
    ];
    for host in elsewhere {
        let before = api.count();
        api.set_handler(capsule_parties(api.base_url.clone(), None, Some(host.clone())));
        let mut pager = capsule_pager(&http, &config, &catalog, None);
        assert_eq!(pager.next_page().await.unwrap().unwrap().records.len(), 2);
        let err = pager.next_page().await.unwrap().unwrap_err();
        assert!(matches!(err, HttpError::Refused { .. }), "{host}: {err:?}");
        assert!(err.to_string().contains("not on the connection's host"), "{err}");
        assert_eq!(api.count(), before + 1, "{host}: the refused page was requested anyway");
    }
}

#[tokio::test]
async fn a_never_ending_link_feed_stops_at_the_page_bound() {
    let api = FakeApi::start(|_| Reply::status(500)).await;
    api.set_handler(capsule_parties(api.base_url.clone(), None, None));
    let catalog = embedded();
    let config = config(&catalog, &capsule_yaml(&api.base_url));
    let http = client(&config, None);
    let mut pager = capsule_pager(&http, &config, &catalog, Some(3));
    let records = walk(&mut pager).await;
    assert_eq!(records.len(), 6);
    assert_eq!(api.count(), 3);
    assert!(pager.stopped_at_bound());
    assert!(pager.next_page().await.is_none());
    assert_eq!(api.count(), 3);
}

#[tokio::test]
async fn capsule_link_pages_keep_commas_and_resolve_relative_targets_against_the_request() {
    // Page 1 names page 2 by a query-only reference, in a second Link header; page 2 names
    // page 3 by an absolute path, with a rel of two types; page 3 is the last. The queries
    // hold commas, which must reach the server as they were written.
    let api = FakeApi::start(|r| {
        if r.path != "/api/v2/parties" {
            return Reply::json(404, json!({"message": "Could not find resource"}));
        }
        let page: u32 = r.query_param("page").and_then(|p| p.parse().ok()).unwrap_or(1);
        let parties: Vec<Value> = (0..2).map(|i| json!({"id": page * 10 + i, "updatedAt": "2025-06-01T00:00:00Z"})).collect();
        let reply = Reply::json(200, json!({ "parties": parties }));
        match page {
            1 => reply
                .header("Link", "</api/v2/parties?page=1>; rel=\"first\"")
                .header("Link", "<?page=2&perPage=2&embed=tags,fields,organisation>; rel=\"next\""),
            2 => reply.header(
                "Link",
                "</api/v2/parties?page=1>; rel=\"first\", </api/v2/parties?embed=tags,fields&page=3&perPage=2>; rel=\"prev next\"",
            ),
            _ => reply.header("Link", "</api/v2/parties?page=2>; rel=\"prev\""),
        }
    })
    .await;
    let catalog = embedded();
    let config = config(&catalog, &capsule_yaml(&api.base_url));
    let http = client(&config, None);
    let mut pager = capsule_pager(&http, &config, &catalog, None);
    let got: Vec<u64> = walk(&mut pager).await.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(got, [10, 11, 20, 21, 30, 31]);
    let queries: Vec<Option<String>> = api.requests().into_iter().map(|r| r.query).collect();
    assert_eq!(
        queries,
        [
            Some("since=2025-06-01T00%3A00%3A00Z&perPage=2".to_owned()),
            Some("page=2&perPage=2&embed=tags,fields,organisation".to_owned()),
            Some("embed=tags,fields&page=3&perPage=2".to_owned()),
        ]
    );
}

#[tokio::test]
async fn an_unreadable_link_header_fails_the_page_naming_the_request() {
    let api = FakeApi::start(|_| {
        Reply::json(200, json!({"parties": [{"id": 1}, {"id": 2}]}))
            .header("Link", "https://elsewhere/parties?page=2; rel=next")
    })
    .await;
    let catalog = embedded();
    let config = config(&catalog, &capsule_yaml(&api.base_url));
    let http = client(&config, None);
    let mut pager = capsule_pager(&http, &config, &catalog, None);
    let err = pager.next_page().await.unwrap().unwrap_err();
    assert!(matches!(err, HttpError::BadResponse { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("GET /parties: ") && text.contains("Link header"), "{text}");
}
