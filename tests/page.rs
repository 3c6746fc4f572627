//! The status page (`/`, `/runs`, `/runs/<id>`), `ghlflow recipe pause|resume` and
//! `ghlflow serve`: over HTTP against an engine on the sandbox, and in headless Chromium
//! against a running `ghlflow run` (skipped, with a notice, where no Chromium is installed;
//! `.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ghlflow::demo::Workspace;
use ghlflow::sandbox::SandboxOptions;
use ghlflow::store::{RunRecord, RunStatus};

async fn get(url: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.text().await.unwrap(), headers)
}

/// A client that does not follow redirects, so a 303 can be checked.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The CSRF token written into a page's forms.
fn csrf_of(page: &str) -> String {
    let re = regex::Regex::new(r#"name="csrf" value="([0-9a-f]{64})""#).unwrap();
    re.captures(page).map(|c| c[1].to_owned()).expect("the page carries a form with a CSRF token")
}

async fn serve(engine: &Arc<ghlflow::engine::Engine>) -> String {
    let bound = ghlflow::listen::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", bound.addr);
    tokio::spawn(ghlflow::listen::serve(bound, Arc::clone(engine)));
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_escapes_hostile_item_data_under_a_policy_that_allows_no_script() {
    let ws = Workspace::new(SandboxOptions { people: 2, ..SandboxOptions::default() }).await.unwrap();
    let engine = Arc::clone(&ws.engine);
    let hostile = "<script>alert('x')</script>";
    let mut run = RunRecord::new(
        engine.store().next_run_id(),
        "capsule-people",
        RunStatus::Failed,
        "\"><img src=x onerror=alert(1)>",
        serde_json::json!({"id": 1, "firstName": hostile}),
        ghlflow::engine::now_iso(),
    );
    run.error = Some(format!("step `x`: GHL said {hostile}"));
    engine.store().create_runs(std::slice::from_ref(&run)).await.unwrap();
    let base = serve(&engine).await;

    let (status, page, headers) = get(&format!("{base}/runs/{}", run.id)).await;
    assert_eq!(status, 200, "{page}");
    assert!(!page.contains("<script"), "a tag from item data reached the page: {page}");
    assert!(!page.contains("<img"), "{page}");
    assert!(page.contains("&lt;script&gt;alert("), "the item's text is shown, escaped: {page}");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("style-src 'self'"), "{csp}");
    assert!(!csp.contains("script-src"), "no script is allowed: {csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(page.contains("name=\"csrf\""), "a failed run offers its replay: {page}");

    let (status, list, _) = get(&format!("{base}/runs?status=failed")).await;
    assert_eq!(status, 200);
    assert!(list.contains(run.id.as_str()) && !list.contains("<img"), "{list}");
    assert!(list.contains("http-equiv=\"refresh\""), "the list refreshes itself: {list}");

    let (status, css, headers) = get(&format!("{base}/style.css")).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/css"));
    assert!(css.contains(".status-failed"));

    let (status, body, _) = get(&format!("{base}/runs?status=exploded")).await;
    assert_eq!(status, 400);
    assert!(body.contains("unknown status &#x60;exploded&#x60;") && body.contains("succeeded"), "{body}");
    let (status, body, _) = get(&format!("{base}/runs/0000000000001-000000")).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_show_their_trigger_position_and_recent_runs_and_the_history_pages() {
    let ws = Workspace::new(SandboxOptions { people: 60, no_limits: true, ..SandboxOptions::default() }).await.unwrap();
    let summary = ws.engine.run_once(&["capsule-people".to_owned()]).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let base = serve(&ws.engine).await;

    let (status, page, _) = get(&format!("{base}/")).await;
    assert_eq!(status, 200);
    for recipe in ws.engine.recipes() {
        assert!(page.contains(&format!("id=\"recipe-{}\"", recipe.id)), "{} is listed: {page}", recipe.id);
    }
    assert!(page.contains("capsule.parties.party_updated"), "the trigger's operation: {page}");
    assert!(page.contains("every 5m"), "the schedule: {page}");
    let succeeded = ws.engine.store().runs_page(Some("capsule-people"), Some(RunStatus::Succeeded), 0).await.unwrap().1;
    assert!(succeeded >= 50, "the backfill ran every person: {succeeded}");
    assert!(
        page.contains(&format!("status=succeeded\">{succeeded} succeeded</a>")),
        "the last hour's runs by status link to the history: {page}"
    );

    let seen = ws.engine.store().seen_count("capsule-people").await.unwrap();
    assert!(seen >= succeeded, "every party that ran is marked seen: {seen}");
    assert!(page.contains(&format!("{seen} items seen")), "items seen: {page}");

    // 50 a page, newest first, the filter kept from page to page.
    let (_, first, _) = get(&format!("{base}/runs?recipe=capsule-people&status=succeeded")).await;
    assert!(first.contains(&format!("1–50 of {succeeded}")), "{first}");
    assert!(
        first.contains("rel=\"next\" href=\"/runs?page=1&amp;recipe=capsule-people&amp;status=succeeded\""),
        "{first}"
    );
    let (_, second, _) = get(&format!("{base}/runs?recipe=capsule-people&status=succeeded&page=1")).await;
    assert!(second.contains(&format!("51–{succeeded} of {succeeded}")), "{second}");
    let newest = ws.engine.store().runs_page(Some("capsule-people"), Some(RunStatus::Succeeded), 1).await.unwrap().0;
    let oldest = ws.engine.store().runs(Some("capsule-people"), usize::MAX).await.unwrap();
    assert!(first.contains(newest[0].id.as_str()) && !second.contains(newest[0].id.as_str()));
    let oldest = oldest.last().unwrap().id.as_str();
    assert!(second.contains(oldest) && !first.contains(oldest));

    // A run's page: the trigger item, each step's input and response, its tries and time.
    let (_, run, _) = get(&format!("{base}/runs/{}", newest[0].id)).await;
    assert!(run.contains("Trigger item") && run.contains("Input") && run.contains("Response"), "{run}");
    assert!(run.contains("<dt>Tries</dt><dd>1</dd>"), "{run}");
    assert!(!run.contains("http-equiv=\"refresh\""), "an ended run does not refresh: {run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_the_forms_token_and_pause_keeps_a_recipe_from_polling() {
    let ws = Workspace::new(SandboxOptions { people: 3, ..SandboxOptions::default() }).await.unwrap();
    let base = serve(&ws.engine).await;
    let (_, page, _) = get(&format!("{base}/")).await;
    let token = csrf_of(&page);

    let http = client();
    let pause = format!("{base}/recipes/capsule-people/pause");
    for form in [vec![], vec![("csrf", "0".repeat(64))]] {
        let response = http.post(&pause).form(&form).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 403);
        assert!(response.text().await.unwrap().contains("token is missing or stale"));
    }
    assert!(!ws.engine.is_paused("capsule-people").await.unwrap(), "a refused action changed nothing");

    let response = http.post(&pause).form(&[("csrf", token.as_str())]).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert!(ws.engine.is_paused("capsule-people").await.unwrap());
    let (_, page, _) = get(&format!("{base}/")).await;
    assert!(page.contains("<strong>paused</strong>"), "{page}");

    let summary = ws.engine.run_once(&[]).await;
    assert!(!summary.polls.iter().any(|p| p.recipe == "capsule-people"), "a paused recipe was polled");
    assert!(ws.engine.store().trigger_state("capsule-people").await.unwrap().is_none());
    assert!(ws.engine.store().runs(Some("capsule-people"), 1).await.unwrap().is_empty());

    let response =
        http.post(format!("{base}/recipes/capsule-people/resume")).form(&[("csrf", token)]).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert!(!ws.engine.is_paused("capsule-people").await.unwrap());
    let summary = ws.engine.run_once(&["capsule-people".to_owned()]).await;
    assert!(summary.polls.iter().any(|p| p.recipe == "capsule-people"), "resumed, it polls again");

    let response =
        http.post(format!("{base}/recipes/no-such/pause")).form(&[("csrf", csrf_of(&page))]).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
}

/// A folder with the sandbox's ghlflow.yaml and two recipes: the shipped people mirror, and
/// a copy of it that holds any batch above 3 (after its backfill). Neither replays by itself
/// (`autoreplay` off), so a failed run stays failed until a person replays it.
fn folder(sandbox: &ghlflow::sandbox::Sandbox, extra_yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ghlflow.yaml"), format!("{}{extra_yaml}", sandbox.config_yaml())).unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    let shipped = std::fs::read_to_string(ghlflow_root().join("recipes/capsule-people.yaml")).unwrap();
    let people = shipped.replace("autoreplay: true\n", "");
    assert_ne!(people, shipped);
    std::fs::write(dir.path().join("recipes/capsule-people.yaml"), &people).unwrap();
    let held = people.replace("  every: 5m\n", "  every: 5m\n  hold_above: 3\n");
    assert_ne!(held, people);
    std::fs::write(dir.path().join("recipes/held-people.yaml"), held).unwrap();
    dir
}

fn ghlflow_root() -> PathBuf {
    crate::util::root()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_pause_and_resume_on_the_command_line_outlive_the_process() {
    let sandbox = ghlflow::sandbox::start(SandboxOptions { people: 4, ..SandboxOptions::default() }).await.unwrap();
    let dir = folder(&sandbox, "");
    let run = |args: &'static [&'static str]| {
        let dir = dir.path().to_owned();
        tokio::task::spawn_blocking(move || crate::util::ghlflow(&dir, args))
    };
    let out = run(&["recipe", "pause", "capsule-people"]).await.unwrap();
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    assert!(crate::util::stdout(&out).contains("recipe `capsule-people` paused"));
    let out = run(&["recipe", "pause", "capsule-peeple"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(crate::util::stderr(&out).contains("capsule-people"), "a hint: {}", crate::util::stderr(&out));

    // Another process: the pause holds.
    let out = run(&["run", "--once", "--recipe", "capsule-people"]).await.unwrap();
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    assert!(crate::util::stdout(&out).contains("polled 0 recipe(s)"), "{}", crate::util::stdout(&out));

    let out = run(&["recipe", "resume", "capsule-people"]).await.unwrap();
    assert!(crate::util::stdout(&out).contains("recipe `capsule-people` resumed"), "{}", crate::util::stdout(&out));
    let out = run(&["run", "--once", "--recipe", "capsule-people"]).await.unwrap();
    assert!(crate::util::stdout(&out).contains("polled 1 recipe(s)"), "{}", crate::util::stdout(&out));
}

// --- in a browser -----------------------------------------------------------------------

/// The Chromium to drive: `GHLFLOW_CHROMIUM`, or `chromium` / `chromium-browser` / `google-chrome`
/// on PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GHLFLOW_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

struct Browser {
    browser: chromiumoxide::Browser,
    _handler: tokio::task::JoinHandle<()>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch(executable: &Path) -> Browser {
        use futures_util::StreamExt as _;
        let profile = tempfile::tempdir().unwrap();
        let config = chromiumoxide::BrowserConfig::builder()
            .chrome_executable(executable)
            .no_sandbox()
            .user_data_dir(profile.path())
            .window_size(1400, 900)
            .viewport(chromiumoxide::handler::viewport::Viewport { width: 1400, height: 900, ..Default::default() })
            .build()
            .unwrap();
        let (browser, mut handler) = chromiumoxide::Browser::launch(config).await.unwrap();
        let handler = tokio::spawn(async move { while handler.next().await.is_some() {} });
        Browser { browser, _handler: handler, _profile: profile }
    }
}

/// Waits until the page's HTML holds `text` (the page refreshes itself, and clicks navigate).
async fn wait_for(page: &chromiumoxide::Page, text: &str) -> String {
    let mut last = String::new();
    for _ in 0..150 {
        if let Ok(html) = page.content().await {
            if html.contains(text) {
                return html;
            }
            last = html;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the page never showed {text:?}; it shows:\n{last}");
}

/// A `ghlflow` child process, killed when dropped.
struct Process(tokio::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn spawn(dir: &Path, args: &[&str]) -> Process {
    Process(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"))
            .args(args)
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap(),
    )
}

async fn until_answers(url: &str) {
    for _ in 0..100 {
        if reqwest::get(url).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_failed_run_is_found_replayed_and_succeeds_and_a_held_batch_is_released() {
    let Some(executable) = chromium() else {
        eprintln!("NOTICE: no Chromium found (install the `chromium` package); the browser test is skipped");
        return;
    };
    let sandbox = ghlflow::sandbox::start(SandboxOptions { people: 5, no_limits: true, ..SandboxOptions::default() })
        .await
        .unwrap();
    let port = free_port();
    let dir = folder(&sandbox, &format!("listen: 127.0.0.1:{port}\n"));
    // Every GHL write fails: the people mirror's runs fail; the copy holds its batch.
    let mut faults = sandbox.faults();
    faults.fail_rate = 1.0;
    sandbox.set_faults(faults).unwrap();
    let once = || {
        let path = dir.path().to_owned();
        tokio::task::spawn_blocking(move || crate::util::ghlflow(&path, &["run", "--once"]))
    };
    let out = once().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", crate::util::stdout(&out));
    faults.fail_rate = 0.0;
    sandbox.set_faults(faults).unwrap();
    // New people: the mirror runs them; its copy, past its backfill, holds the batch.
    sandbox.capsule_add_people(8);
    let out = once().await.unwrap();
    assert!(crate::util::stdout(&out).contains("held"), "{}", crate::util::stdout(&out));

    let _engine = spawn(dir.path(), &["run"]);
    let base = format!("http://127.0.0.1:{port}");
    until_answers(&format!("{base}/healthz")).await;
    let browser = Browser::launch(&executable).await;
    let page = browser.browser.new_page(format!("{base}/")).await.unwrap();

    // The recipes are listed, with the held batch.
    let html = wait_for(&page, "id=\"recipe-held-people\"").await;
    assert!(html.contains("id=\"recipe-capsule-people\""), "{html}");
    assert!(html.contains(" held</a>"), "{html}");
    let screenshots = ghlflow_root().join("docs/screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    page.save_screenshot(
        chromiumoxide::page::ScreenshotParams::builder().full_page(true).build(),
        screenshots.join("recipes.png"),
    )
    .await
    .unwrap();

    // A failed run, found with the filter form.
    page.goto(format!("{base}/runs")).await.unwrap();
    wait_for(&page, "form class=\"filter\"").await;
    page.evaluate(
        "document.querySelector('select[name=recipe]').value = 'capsule-people'; \
         document.querySelector('select[name=status]').value = 'failed';",
    )
    .await
    .unwrap();
    page.find_element("form.filter button").await.unwrap().click().await.unwrap();
    // The list the form asked for: its choices kept, failed runs only.
    wait_for(&page, "<option value=\"failed\" selected").await;
    let html = wait_for(&page, "<table class=\"runs\">").await;
    assert!(html.contains("<option value=\"capsule-people\" selected"), "{html}");
    assert!(page.url().await.unwrap().unwrap_or_default().contains("status=failed"));
    assert!(!html.contains("status-succeeded\">succeeded"), "the filter shows failed runs only: {html}");
    page.find_element("table.runs tbody tr a").await.unwrap().click().await.unwrap();
    wait_for(&page, "Trigger item").await;
    wait_for(&page, "<span class=\"status status-failed\">failed</span></h1>").await;

    // Replayed with the button: it succeeds.
    page.find_element("form button.go").await.unwrap().click().await.unwrap();
    let html = wait_for(&page, "<span class=\"status status-succeeded\">succeeded</span></h1>").await;
    assert!(html.contains("<dt>Replays</dt><dd>1</dd>"), "{html}");
    page.save_screenshot(
        chromiumoxide::page::ScreenshotParams::builder().full_page(true).build(),
        screenshots.join("run.png"),
    )
    .await
    .unwrap();

    // The held batch released from the recipes page: its runs run.
    page.goto(format!("{base}/")).await.unwrap();
    wait_for(&page, "id=\"recipe-held-people\"").await;
    page.find_element("#recipe-held-people form button.go").await.unwrap().click().await.unwrap();
    wait_for(&page, "<h1>Runs</h1>").await;
    page.goto(format!("{base}/")).await.unwrap();
    let html = wait_for(&page, "id=\"recipe-held-people\"").await;
    let row = html.split("id=\"recipe-held-people\"").nth(1).unwrap().split("</tr>").next().unwrap().to_owned();
    assert!(!row.contains(" held</a>"), "the batch is no longer held: {row}");
    // The released runs run in the background; the list of those still queued, refreshing
    // by itself, comes to show none, and they succeeded.
    page.goto(format!("{base}/runs?recipe=held-people&status=queued")).await.unwrap();
    wait_for(&page, "<p class=\"quiet\">No runs.</p>").await;
    page.goto(format!("{base}/runs?recipe=held-people&status=succeeded")).await.unwrap();
    let html = wait_for(&page, "<table class=\"runs\">").await;
    assert!(html.contains("1–8 of 8"), "the 8 new people ran: {html}");

    // `ghlflow recipe pause` reaches the running engine through its control socket; the
    // page shows it (and offers Resume).
    let path = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || crate::util::ghlflow(&path, &["recipe", "pause", "held-people"]))
        .await
        .unwrap();
    assert!(crate::util::stdout(&out).contains("recipe `held-people` paused"), "{}", crate::util::stderr(&out));
    page.goto(format!("{base}/")).await.unwrap();
    let html = wait_for(&page, "<strong>paused</strong>").await;
    assert!(html.contains("action=\"/recipes/held-people/resume\""), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_serve_off_loopback_refuses_a_request_without_credentials() {
    let Some(executable) = chromium() else {
        eprintln!("NOTICE: no Chromium found (install the `chromium` package); the browser test is skipped");
        return;
    };
    let sandbox = ghlflow::sandbox::start(SandboxOptions { people: 2, ..SandboxOptions::default() }).await.unwrap();
    let port = free_port();
    let dir = folder(&sandbox, "server:\n  auth: { type: token, token: page-test-token-1 }\n");
    let _serve = spawn(dir.path(), &["serve", "--listen", &format!("0.0.0.0:{port}")]);
    let base = format!("http://127.0.0.1:{port}");
    until_answers(&format!("{base}/healthz")).await;

    let browser = Browser::launch(&executable).await;
    let page = browser.browser.new_page(format!("{base}/")).await.unwrap();
    let html = wait_for(&page, "credentials required").await;
    assert!(!html.contains("Recipes"), "{html}");

    // With the token the same page answers, read-only.
    let response =
        reqwest::Client::new().get(format!("{base}/")).bearer_auth("page-test-token-1").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("Read-only") && body.contains("id=\"recipe-capsule-people\""), "{body}");
    assert!(!body.contains("name=\"csrf\""), "serve offers no action: {body}");
}
