//! Capsule REST hook subscriptions managed by ghlflow (`engine::subscriptions::reconcile`),
//! against the sandbox's `/api/v2/resthooks`: one hook per event across restarts, removed
//! when its recipe goes, taken back when the store forgot it, the account's limit of 20
//! refused with a message naming it, and no subscription for an address Capsule cannot reach.

use std::path::Path;
use std::sync::Arc;

use ghlflow::engine::subscriptions::{self, SubscriptionError};
use ghlflow::engine::{Engine, EngineOptions};
use ghlflow::sandbox::{Sandbox, SandboxOptions};
use serde_json::{Value, json};

/// The public URL the tests give: a loopback address, as the sandbox is on this machine too.
const PUBLIC_URL: &str = "http://127.0.0.1:18975";

const PEOPLE: &str = "\
name: Mirror Capsule people as soon as they change
trigger:
  operation: capsule.parties.on_party_updated
  connection: capsule
steps:
  - id: contact
    operation: ghl.contacts.upsert_contact
    connection: ghl
    input:
      locationId: \"{{connection.location_id}}\"
      firstName: \"{{trigger.firstName}}\"
";

const TASKS: &str = "\
name: Tasks as soon as they are made or completed
trigger:
  operation: capsule.tasks.task_updated
  connection: capsule
  every: 10m
  instant: [capsule.tasks.on_task_created, capsule.tasks.on_task_completed]
steps:
  - id: contact
    operation: ghl.contacts.upsert_contact
    connection: ghl
    input:
      locationId: \"{{connection.location_id}}\"
      firstName: \"{{trigger.description}}\"
";

/// A folder with ghlflow.yaml for the sandbox (plus `extra` lines) and `recipes`.
fn folder(sandbox: &Sandbox, extra: &str, recipes: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ghlflow.yaml"), format!("{}{extra}", sandbox.config_yaml())).unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    for (id, text) in recipes {
        std::fs::write(dir.path().join("recipes").join(format!("{id}.yaml")), text).unwrap();
    }
    dir
}

/// What `ghlflow run` does at start: load everything, open the store.
async fn start(dir: &Path) -> Arc<Engine> {
    let catalog = Arc::new(ghlflow::catalog::load_embedded().unwrap());
    let config = Arc::new(
        ghlflow::config::Config::load(&dir.join("ghlflow.yaml"), &catalog, &|_| None).unwrap_or_else(|d| panic!("{d}")),
    );
    let recipes = ghlflow::recipe::load_recipes(&config.recipes_dir, &catalog, &config, &|_| None).unwrap();
    let engine = Engine::open(catalog, config, EngineOptions::default()).await.unwrap();
    engine.set_recipes(recipes);
    Arc::new(engine)
}

/// (event, targetUrl) of every hook subscribed at the sandbox, sorted.
fn live(sandbox: &Sandbox) -> Vec<(String, String, String)> {
    let mut hooks: Vec<(String, String, String)> = sandbox
        .capsule_rest_hooks()
        .iter()
        .map(|h| {
            (h["event"].as_str().unwrap().to_owned(), h["targetUrl"].as_str().unwrap().to_owned(), h["id"].to_string())
        })
        .collect();
    hooks.sort();
    hooks
}

async fn sandbox() -> Sandbox {
    ghlflow::sandbox::start(SandboxOptions { people: 2, no_limits: true, ..SandboxOptions::default() }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_is_subscribed_once_across_three_restarts_and_removed_when_its_recipe_goes() {
    let sandbox = sandbox().await;
    let dir = folder(&sandbox, &format!("public_url: {PUBLIC_URL}\n"), &[("people", PEOPLE), ("tasks", TASKS)]);
    let mut first = None;
    for restart in 0..3 {
        let engine = start(dir.path()).await;
        let report = subscriptions::reconcile(&engine).await.unwrap();
        assert_eq!(report.errors().count(), 0, "{report:?}");
        let hooks = live(&sandbox);
        let events: Vec<&str> = hooks.iter().map(|h| h.0.as_str()).collect();
        assert_eq!(events, ["party/updated", "task/completed", "task/created"], "restart {restart}: {hooks:?}");
        for (_, target, _) in &hooks {
            assert!(target.starts_with(&format!("{PUBLIC_URL}/hooks/capsule/")), "{target}");
        }
        // The store remembers each, with the token of its path and the id Capsule gave.
        let remembered = engine.store().hook_subscriptions().await.unwrap();
        assert_eq!(remembered.len(), 3, "{remembered:?}");
        for s in &remembered {
            assert_eq!(s.target_url, format!("{PUBLIC_URL}/hooks/capsule/{}", s.token));
            assert!(hooks.iter().any(|h| h.1 == s.target_url && Some(&h.2) == s.hook_id.as_ref()), "{s:?}");
        }
        let made = report.connections.iter().map(|c| c.created.len()).sum::<usize>();
        match &first {
            None => {
                assert_eq!(made, 3);
                first = Some(hooks);
            }
            Some(before) => {
                assert_eq!(made, 0, "restart {restart} subscribed again");
                assert_eq!(&hooks, before, "restart {restart} changed the hooks");
            }
        }
        drop(report);
        drop(engine);
    }

    // The tasks recipe goes: its two hooks are removed, the people one stays.
    std::fs::remove_file(dir.path().join("recipes/tasks.yaml")).unwrap();
    let engine = start(dir.path()).await;
    let report = subscriptions::reconcile(&engine).await.unwrap();
    let removed: Vec<&str> = report.connections[0].removed.iter().map(|h| h.event.as_str()).collect();
    assert_eq!(removed.len(), 2, "{report:?}");
    let hooks = live(&sandbox);
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].0, "party/updated");
    assert_eq!(&hooks[0], &first.unwrap()[0], "the people hook is the same one");
    assert_eq!(engine.store().hook_subscriptions().await.unwrap().len(), 1);
    drop(engine);

    // No recipe listens any more: the last hook goes and nothing is remembered.
    std::fs::remove_file(dir.path().join("recipes/people.yaml")).unwrap();
    let engine = start(dir.path()).await;
    subscriptions::reconcile(&engine).await.unwrap();
    assert!(live(&sandbox).is_empty(), "{:?}", live(&sandbox));
    assert!(engine.store().hook_subscriptions().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_the_store_forgot_is_taken_back_and_a_duplicate_removed() {
    let sandbox = sandbox().await;
    let dir = folder(&sandbox, &format!("public_url: {PUBLIC_URL}\n"), &[("people", PEOPLE)]);
    let engine = start(dir.path()).await;
    let report = subscriptions::reconcile(&engine).await.unwrap();
    assert_eq!(report.errors().count(), 0, "{report:?}");
    let before = live(&sandbox);
    assert_eq!(before.len(), 1);
    // A crash between subscribing and saving: the store knows nothing; and a second hook to
    // our listener for the same event (a lost answer that was sent again).
    engine.store().save_hook_subscriptions(&[]).await.unwrap();
    subscribe(&sandbox, "party/updated", &format!("{PUBLIC_URL}/hooks/capsule/another-token")).await;
    // Somebody else's hook is none of ghlflow's business.
    subscribe(&sandbox, "party/updated", "https://example.com/elsewhere").await;

    let report = subscriptions::reconcile(&engine).await.unwrap();
    assert_eq!(report.errors().count(), 0, "{report:?}");
    assert_eq!(report.connections[0].created.len(), 0, "{report:?}");
    let after = live(&sandbox);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.contains(&before[0]), "the first hook is kept: {after:?}");
    assert!(after.iter().any(|h| h.1 == "https://example.com/elsewhere"), "{after:?}");
    let remembered = engine.store().hook_subscriptions().await.unwrap();
    assert_eq!(remembered.len(), 1);
    assert_eq!(remembered[0].target_url, before[0].1);
}

/// Subscribes a hook at the sandbox directly (another application, or a person).
async fn subscribe(sandbox: &Sandbox, event: &str, target: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/resthooks", sandbox.capsule_base_url()))
        .bearer_auth("sandbox-capsule-token")
        .json(&json!({"restHook": {"event": event, "targetUrl": target}}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_21st_hook_is_refused_with_the_limit_and_what_to_remove() {
    let sandbox = sandbox().await;
    for i in 0..19 {
        let r = subscribe(&sandbox, "party/created", &format!("https://other.example.com/hook/{i}")).await;
        assert_eq!(r.status(), 201);
    }
    // Three events needed, one place left.
    let dir = folder(&sandbox, &format!("public_url: {PUBLIC_URL}\n"), &[("people", PEOPLE), ("tasks", TASKS)]);
    let engine = start(dir.path()).await;
    let report = subscriptions::reconcile(&engine).await.unwrap();
    let errors: Vec<(&str, &SubscriptionError)> = report.errors().collect();
    assert_eq!(errors.len(), 1, "{report:?}");
    let message = errors[0].1.to_string();
    assert!(matches!(errors[0].1, SubscriptionError::Limit { .. }), "{message}");
    assert!(message.contains("connection `capsule`"), "{message}");
    assert!(message.contains("at most 20 REST hooks"), "{message}");
    assert!(message.contains("`party/updated`") && message.contains("`task/created`"), "{message}");
    assert!(message.contains("https://other.example.com/hook/3"), "what to remove is named: {message}");
    // Nothing half-done: no hook of ours, nothing remembered.
    assert_eq!(live(&sandbox).len(), 19);
    assert!(engine.store().hook_subscriptions().await.unwrap().is_empty());

    // The sandbox refuses a 21st on its own too, as Capsule does (422).
    subscribe(&sandbox, "party/created", "https://other.example.com/hook/19").await;
    let r = subscribe(&sandbox, "party/created", "https://other.example.com/hook/20").await;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert!(body.to_string().contains("maximum of 20"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_public_url_with_the_real_capsule_subscribes_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ghlflow.yaml"),
        // Capsule's real address: no request may go there (the test would hang or fail).
        "connections:\n  capsule: { app: capsule, auth: { type: bearer, token: t-12345 } }\n  ghl: { app: ghl, location_id: L1, auth: { type: private_token, token: g-12345 } }\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    std::fs::write(dir.path().join("recipes/people.yaml"), PEOPLE).unwrap();
    let engine = start(dir.path()).await;
    let report = subscriptions::reconcile(&engine).await.unwrap();
    assert_eq!(report.connections.len(), 1);
    let why = report.connections[0].skipped.as_deref().expect("skipped");
    assert!(why.contains("http://127.0.0.1:8975") && why.contains("cannot deliver"), "{why}");
    assert!(why.contains("public_url"), "{why}");
    assert_eq!(report.errors().count(), 0);
    assert!(engine.store().hook_subscriptions().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_without_instant_capsule_recipes_asks_capsule_nothing() {
    let sandbox = sandbox().await;
    let dir = folder(&sandbox, &format!("public_url: {PUBLIC_URL}\n"), &[]);
    let engine = start(dir.path()).await;
    let before = sandbox.request_count();
    let report = subscriptions::reconcile(&engine).await.unwrap();
    assert!(report.connections.is_empty(), "{report:?}");
    assert_eq!(sandbox.request_count(), before, "a request was sent");
}

// ---------------------------------------------------------------------------------------
// `ghlflow hooks`

const GHL_WELCOME: &str = "\
name: A task for each new GHL contact
trigger:
  operation: ghl.contacts.on_contact_create
  connection: ghl
steps:
  - id: task
    operation: ghl.contacts.create_contact_task
    connection: ghl
    input:
      contactId: \"{{trigger.id}}\"
      title: Call them
      dueDate: \"{{trigger.dateAdded}}\"
      completed: false
";

/// Runs the binary off the async threads (the sandbox serves on them meanwhile).
async fn ghlflow(dir: &Path, args: &[&str]) -> std::process::Output {
    let (dir, args) = (dir.to_owned(), args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::util::ghlflow(&dir, &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_prints_what_to_set_in_the_ghl_app_and_the_capsule_hooks_ghlflow_manages() {
    let sandbox = sandbox().await;
    let note =
        std::fs::read_to_string(crate::util::root().join("tests/fixtures/recipes/valid/instant_without_poll.yaml"))
            .unwrap();
    let dir = folder(
        &sandbox,
        "public_url: https://hooks.example.com\n",
        &[("people", PEOPLE), ("tasks", TASKS), ("welcome", GHL_WELCOME), ("notes", &note)],
    );
    // What `ghlflow run` subscribed at its start; then the tasks recipe went.
    {
        let engine = start(dir.path()).await;
        subscriptions::reconcile(&engine).await.unwrap();
    }
    std::fs::remove_file(dir.path().join("recipes/tasks.yaml")).unwrap();
    let tokens: Vec<String> = sandbox
        .capsule_rest_hooks()
        .iter()
        .map(|h| h["targetUrl"].as_str().unwrap().rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(tokens.len(), 3);

    let out = ghlflow(dir.path(), &["hooks"]).await;
    let text = crate::util::stdout(&out);
    assert!(out.status.success(), "{text}{}", crate::util::stderr(&out));
    for expected in [
        "Listener: https://hooks.example.com",
        "GHL connection `ghl` (location ",
        "webhook URL  https://hooks.example.com/hooks/ghl",
        "events       ContactCreate, NoteCreate",
        "scopes       contacts.readonly",
        "ContactCreate        recipe welcome",
        "NoteCreate           recipe notes",
        "Capsule connection `capsule`",
        "at most 20 per account",
        "party/updated        recipe people",
        "no recipe needs it; `ghlflow run` removes it at start",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let people = party_hook(&sandbox);
    assert!(
        text.contains(&format!("subscribed: hook {people} → https://hooks.example.com/hooks/capsule/<token>")),
        "{text}"
    );
    // The hooks of the recipe that went are listed as to be removed, by event.
    assert!(text.contains("task/created") && text.contains("task/completed"), "{text}");
    for token in &tokens {
        assert!(!text.contains(token.as_str()), "a path token was printed:\n{text}");
    }
    assert!(!text.contains("Checks:"), "{text}");
}

/// The sandbox's id of the `party/updated` hook.
fn party_hook(sandbox: &Sandbox) -> String {
    let hooks = sandbox.capsule_rest_hooks();
    let hook = hooks.iter().find(|h| h["event"] == "party/updated").expect("a party/updated hook");
    hook["id"].to_string()
}

/// Answers `/healthz`, accepts a Capsule delivery with no records, and refuses an unsigned
/// delivery to `/hooks/ghl`, as ghlflow's listener does.
async fn fake_listener() -> String {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", socket.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/hooks/ghl", axum::routing::post(|| async { (axum::http::StatusCode::UNAUTHORIZED, "no signature\n") }))
        .route(
            "/hooks/capsule/{token}",
            axum::routing::post(|body: axum::body::Bytes| async move {
                // What the check sends: the event, and no record to run.
                let value: Value = serde_json::from_slice(&body).unwrap_or_default();
                if value == json!({"event": "party/updated", "payload": []}) {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::BAD_REQUEST
                }
            }),
        );
    tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_check_finds_the_listener_and_the_live_hooks_and_says_what_is_missing() {
    let sandbox = sandbox().await;
    let listener = fake_listener().await;
    let dir = folder(&sandbox, &format!("public_url: {listener}\n"), &[("people", PEOPLE), ("welcome", GHL_WELCOME)]);
    {
        let engine = start(dir.path()).await;
        subscriptions::reconcile(&engine).await.unwrap();
    }
    let out = ghlflow(dir.path(), &["hooks", "--check"]).await;
    let text = crate::util::stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", crate::util::stderr(&out));
    assert!(text.contains(&format!("ok       the listener answers at {listener}/healthz")), "{text}");
    let hook = party_hook(&sandbox);
    assert!(
        text.contains(&format!("ok       capsule `capsule`: `party/updated` is subscribed live (hook {hook})")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "ok       capsule `capsule`: a test delivery of `party/updated` with no records reached {listener}/hooks/capsule/<token> and was accepted"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("ok       {listener}/hooks/ghl refuses an unsigned delivery (401)")), "{text}");
    assert!(text.contains("note     ghl `ghl`: a delivery GHL would sign cannot be made from here"), "{text}");
    assert!(text.contains("no problem found"), "{text}");

    // Someone removes the hook in Capsule: the check says so, and exits 1.
    let status = reqwest::Client::new()
        .delete(format!("{}/resthooks/{hook}", sandbox.capsule_base_url()))
        .bearer_auth("sandbox-capsule-token")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let out = ghlflow(dir.path(), &["hooks", "--check"]).await;
    let text = crate::util::stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("PROBLEM  capsule `capsule`: no live REST hook delivers `party/updated`"), "{text}");
    assert!(text.contains("1 problem found"), "{text}");

    // Nothing at the public URL: a problem naming it.
    let dead = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    let dir = folder(&sandbox, &format!("public_url: {dead}\n"), &[]);
    let out = ghlflow(dir.path(), &["hooks", "--check"]).await;
    let text = crate::util::stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("PROBLEM  nothing answers at {dead}/healthz")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_with_a_broken_recipe_is_bad_input() {
    let sandbox = sandbox().await;
    let dir = folder(&sandbox, "", &[("broken", "name: x\ntrigger: {}\n")]);
    let out = ghlflow(dir.path(), &["hooks"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", crate::util::stderr(&out));
    assert!(crate::util::stderr(&out).contains("broken.yaml"), "{}", crate::util::stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_engine_subscribes_when_a_recipe_arrives_and_unsubscribes_when_it_goes() {
    let sandbox = sandbox().await;
    let dir = folder(&sandbox, &format!("public_url: {PUBLIC_URL}\n"), &[]);
    let engine = start(dir.path()).await;
    let scheduler = tokio::spawn(ghlflow::engine::scheduler::run(
        Arc::clone(&engine),
        Some(dir.path().join("recipes")),
        Arc::new(ghlflow::engine::scheduler::Lateness::default()),
        std::future::pending(),
    ));
    let wait_for = |n: usize| {
        let sandbox = &sandbox;
        async move {
            for _ in 0..100 {
                if sandbox.capsule_rest_hooks().len() == n {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            false
        }
    };
    // The scheduler has read the folder once it beats (a file written before that would be
    // what it started with, which `ghlflow run` subscribes for before starting it).
    for _ in 0..100 {
        if engine.readiness().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(engine.readiness(), Vec::<String>::new());
    std::fs::write(dir.path().join("recipes/people.yaml"), PEOPLE).unwrap();
    assert!(wait_for(1).await, "no hook after the recipe arrived: {:?}", live(&sandbox));
    assert_eq!(live(&sandbox)[0].0, "party/updated");
    std::fs::remove_file(dir.path().join("recipes/people.yaml")).unwrap();
    assert!(wait_for(0).await, "the hook stayed after the recipe went: {:?}", live(&sandbox));
    engine.stop();
    tokio::time::timeout(std::time::Duration::from_secs(40), scheduler).await.unwrap().unwrap();
}
