//! The status page: plain HTML at `/` (the recipes), `/runs` (the run history, filtered and
//! paged) and `/runs/<id>` (one run), with the actions a person takes on them (replay a run,
//! release or discard a held batch, pause or resume a recipe) as POST forms.
//!
//! Decisions:
//! - HTML is built here in Rust, every value from the state passing through `esc` (item
//!   data comes from the APIs, so it is hostile); there is no script at all, so the
//!   Content-Security-Policy allows none, and styles come from the served `/style.css`.
//! - The page refreshes itself with `<meta http-equiv="refresh">` rather than server-sent
//!   events: that needs no JavaScript (SSE does), holds no connection open per browser tab,
//!   and each refresh is one ordinary, cheap GET. A run's page stops refreshing once the run
//!   has ended.
//! - Actions carry a CSRF token: a random value made when the listener starts, written into
//!   every form and compared in constant time. Another site can make a browser POST here
//!   (with its basic credentials, or to a loopback bind that needs none) but cannot read a
//!   page to learn the token.
//! - Under `ghlflow serve` (no engine running) the page is read-only: no forms, and a POST
//!   is refused.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::Listener;
use crate::engine::{Engine, RecipeOverview, StatusCounts};
use crate::store::{RunId, RunRecord, RunStatus, StepRecord};

/// Runs on one page of the history.
pub const PER_PAGE: usize = 50;

/// Seconds between the page's own refreshes.
const REFRESH_SECS: u32 = 10;

/// The policy of every page: nothing but this origin's stylesheet, forms posting here only.
const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                        frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = include_str!("page.css");

/// The page's routes (the caller puts them behind `require_auth`).
pub(super) fn routes() -> Router<Listener> {
    Router::new()
        .route("/", get(recipes))
        .route("/style.css", get(style))
        .route("/runs", get(runs))
        .route("/runs/{id}", get(run))
        .route("/runs/{id}/replay", post(replay))
        .route("/recipes/{id}/{action}", post(recipe_action))
}

/// A random token for the forms of one listener.
pub(super) fn new_csrf_token() -> Arc<str> {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Arc::from(hex::encode(bytes))
}

/// Escapes text for HTML element content and quoted attribute values.
fn esc(text: &str) -> String {
    handlebars::html_escape(text)
}

/// Encodes a path segment or query value.
fn enc(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn html(status: StatusCode, title: &str, refresh: bool, body: &str) -> Response {
    let mut page = String::with_capacity(body.len() + 1024);
    page.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    page.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    if refresh {
        let _ = write!(page, "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">");
    }
    let _ = write!(page, "<title>{} · ghlflow</title>", esc(title));
    page.push_str("<link rel=\"stylesheet\" href=\"/style.css\"></head><body>");
    page.push_str("<header><a class=\"brand\" href=\"/\">ghlflow</a><nav><a href=\"/\">Recipes</a>");
    page.push_str("<a href=\"/runs\">Runs</a></nav></header><main>");
    page.push_str(body);
    page.push_str("</main></body></html>\n");
    let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response();
    response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    response
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p class=\"error\">{}</p><p><a href=\"/\">Back to the recipes</a></p>",
        esc(status.canonical_reason().unwrap_or("Error")),
        esc(message)
    );
    html(status, status.canonical_reason().unwrap_or("Error"), false, &body)
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// A Unix time as UTC text, with how long ago or ahead it is.
fn when_unix(secs: u64, now: u64) -> String {
    let at = i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| secs.to_string());
    let relative = if secs <= now {
        format!("{} ago", humantime::format_duration(std::time::Duration::from_secs(now - secs)))
    } else {
        format!("in {}", humantime::format_duration(std::time::Duration::from_secs(secs - now)))
    };
    format!("<time title=\"{}\">{}</time>", esc(&at), esc(&relative))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn status_badge(status: RunStatus) -> String {
    let s = status.as_str();
    format!("<span class=\"status status-{s}\">{s}</span>")
}

fn counts(counts: &StatusCounts, partial: bool, recipe: &str) -> String {
    if counts.is_empty() {
        return "<span class=\"quiet\">none</span>".to_owned();
    }
    let mut out = String::new();
    if partial {
        let _ = write!(
            out,
            "<div class=\"quiet\">of the newest {}; more are older</div>",
            crate::engine::RECENT_READ_LIMIT
        );
    }
    for (status, n) in counts {
        let _ = write!(
            out,
            "<a class=\"status status-{status}\" href=\"/runs?recipe={}&amp;status={status}\">{n} {status}</a> ",
            esc(&enc(recipe))
        );
    }
    out
}

/// A POST form with one button and the CSRF token.
fn action_form(listener: &Listener, action: &str, label: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\" class=\"{class}\">{}</button></form>",
        esc(action),
        esc(&listener.csrf),
        esc(label)
    )
}

async fn recipes(State(listener): State<Listener>) -> Response {
    let overviews = match listener.engine.recipe_overviews().await {
        Ok(o) => o,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot read the state: {e}")),
    };
    let now = now_unix();
    let mut body = String::from("<h1>Recipes</h1>");
    if !listener.actions {
        body.push_str(
            "<p class=\"notice\">Read-only: this is <code>ghlflow serve</code>. Nothing is polled; \
             actions need <code>ghlflow run</code>.</p>",
        );
    }
    if overviews.is_empty() {
        body.push_str("<p class=\"quiet\">No recipe is loaded.</p>");
    } else {
        body.push_str(
            "<table class=\"recipes\"><thead><tr><th>Recipe</th><th>Trigger</th><th>Last poll</th>\
             <th>Next poll</th><th>Position</th><th>Runs, last hour</th><th>Runs, last day</th>\
             <th>Held</th><th>Last error</th><th>State</th></tr></thead><tbody>",
        );
        for o in &overviews {
            recipe_row(&mut body, &listener, o, now);
        }
        body.push_str("</tbody></table>");
    }
    html(StatusCode::OK, "Recipes", true, &body)
}

fn recipe_row(body: &mut String, listener: &Listener, o: &RecipeOverview, now: u64) {
    let id = esc(&o.id);
    let id_enc = esc(&enc(&o.id));
    let _ = write!(
        body,
        "<tr class=\"recipe\" id=\"recipe-{id}\"><td><a href=\"/runs?recipe={id_enc}\">{id}</a>\
         <div class=\"quiet\">{}</div><div class=\"quiet\">{} runs in history, {} items seen</div></td>\
         <td><code>{}</code><div class=\"quiet\">{}</div></td>",
        esc(&o.name),
        o.runs_total,
        o.items_seen,
        esc(&o.operation),
        esc(&o.schedule)
    );
    let state = o.state.as_ref();
    match state.and_then(|s| s.last_poll) {
        Some(t) => {
            let _ = write!(body, "<td>{}</td>", when_unix(t, now));
        }
        None => body.push_str("<td class=\"quiet\">not yet</td>"),
    }
    match (o.paused, o.next_poll) {
        (true, _) => body.push_str("<td class=\"quiet\">paused</td>"),
        (false, Some(t)) => {
            let _ = write!(body, "<td>{}</td>", when_unix(t, now));
        }
        (false, None) => body.push_str("<td class=\"quiet\">at the next start</td>"),
    }
    let position = match state {
        None => "<span class=\"quiet\">not yet polled</span>".to_owned(),
        Some(s) => {
            let mut p = match &s.cursor {
                Some(c) => format!("since <code>{}</code>", esc(c)),
                None if s.baselined => "baseline recorded".to_owned(),
                None => "no baseline yet".to_owned(),
            };
            if s.resume.is_some() {
                p.push_str("<div class=\"quiet\">more pages to read</div>");
            }
            p
        }
    };
    let _ = write!(
        body,
        "<td>{position}</td><td>{}</td><td>{}</td>",
        counts(&o.last_hour, o.partial.0, &o.id),
        counts(&o.last_day, o.partial.1, &o.id)
    );
    if o.held == 0 {
        body.push_str("<td class=\"quiet\">0</td>");
    } else {
        let _ = write!(
            body,
            "<td><a class=\"status status-held\" href=\"/runs?recipe={id_enc}&amp;status=held\">{} held</a>",
            o.held
        );
        if listener.actions {
            body.push_str(&action_form(listener, &format!("/recipes/{}/release", enc(&o.id)), "Release", "go"));
            body.push_str(&action_form(listener, &format!("/recipes/{}/discard", enc(&o.id)), "Discard", "stop"));
        }
        body.push_str("</td>");
    }
    match state.and_then(|s| s.last_error.as_deref()) {
        Some(e) => {
            let _ = write!(body, "<td class=\"error\">{}</td>", esc(e));
        }
        None => body.push_str("<td class=\"quiet\">none</td>"),
    }
    body.push_str(if o.paused { "<td><strong>paused</strong>" } else { "<td>active" });
    if listener.actions {
        let (verb, label, class) = if o.paused { ("resume", "Resume", "go") } else { ("pause", "Pause", "stop") };
        body.push_str(&action_form(listener, &format!("/recipes/{}/{verb}", enc(&o.id)), label, class));
    }
    body.push_str("</td></tr>");
}

#[derive(Debug, Deserialize)]
struct RunsQuery {
    recipe: Option<String>,
    status: Option<String>,
    page: Option<usize>,
}

async fn runs(
    State(listener): State<Listener>,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error_page(StatusCode::BAD_REQUEST, "the query is not understood: use ?recipe=ID&status=STATUS&page=N");
    };
    let recipe = query.recipe.filter(|r| !r.is_empty());
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match serde_json::from_value::<RunStatus>(serde_json::Value::String(s.to_owned())) {
            Ok(status) => Some(status),
            Err(_) => {
                let all: Vec<&str> = all_statuses().iter().map(|s| s.as_str()).collect();
                return error_page(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown status `{s}`; use one of: {}", all.join(", ")),
                );
            }
        },
    };
    let page = query.page.unwrap_or(0);
    let found = match listener.engine.runs_page_at(recipe.as_deref(), status, page, PER_PAGE).await {
        Ok(f) => f,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot read the history: {e}")),
    };
    let mut body = String::from("<h1>Runs</h1>");
    filter_form(&mut body, &listener.engine, recipe.as_deref(), status);
    let first = page.saturating_mul(PER_PAGE);
    if found.runs.is_empty() {
        let _ = write!(body, "<p class=\"quiet\">No runs{}.</p>", if found.total > 0 { " on this page" } else { "" });
    } else {
        let _ = write!(
            body,
            "<p class=\"quiet\">{}–{} of {}, newest first</p>",
            first + 1,
            first + found.runs.len(),
            found.total
        );
        body.push_str(
            "<table class=\"runs\"><thead><tr><th>Run</th><th>Recipe</th><th>Status</th><th>Item</th>\
             <th>Created</th><th>Took</th><th>Error</th></tr></thead><tbody>",
        );
        for r in &found.runs {
            run_row(&mut body, r);
        }
        body.push_str("</tbody></table>");
    }
    // Newer and older pages, keeping the filter.
    let link = |p: usize| {
        let mut q = format!("/runs?page={p}");
        if let Some(r) = &recipe {
            let _ = write!(q, "&recipe={}", enc(r));
        }
        if let Some(s) = status {
            let _ = write!(q, "&status={}", s.as_str());
        }
        // The values are percent-encoded already: `&` is the one character left to escape.
        q.replace('&', "&amp;")
    };
    body.push_str("<nav class=\"pager\">");
    if page > 0 {
        let _ = write!(body, "<a rel=\"prev\" href=\"{}\">Newer</a>", link(page - 1));
    }
    if first + found.runs.len() < found.total {
        let _ = write!(body, "<a rel=\"next\" href=\"{}\">Older</a>", link(page + 1));
    }
    body.push_str("</nav>");
    html(StatusCode::OK, "Runs", true, &body)
}

fn all_statuses() -> &'static [RunStatus] {
    use clap::ValueEnum as _;
    RunStatus::value_variants()
}

fn filter_form(body: &mut String, engine: &Engine, recipe: Option<&str>, status: Option<RunStatus>) {
    body.push_str("<form class=\"filter\" method=\"get\" action=\"/runs\"><label>Recipe <select name=\"recipe\">");
    body.push_str("<option value=\"\">any</option>");
    let mut ids: Vec<String> = engine.recipes().iter().map(|r| r.id.clone()).collect();
    // A filter on a recipe no longer loaded still shows as chosen.
    if let Some(r) = recipe
        && !ids.iter().any(|id| id == r)
    {
        ids.push(r.to_owned());
    }
    for id in &ids {
        let selected = if Some(id.as_str()) == recipe { " selected" } else { "" };
        let _ = write!(body, "<option value=\"{0}\"{selected}>{0}</option>", esc(id));
    }
    body.push_str("</select></label> <label>Status <select name=\"status\"><option value=\"\">any</option>");
    for s in all_statuses() {
        let selected = if Some(*s) == status { " selected" } else { "" };
        let _ = write!(body, "<option value=\"{0}\"{selected}>{0}</option>", s.as_str());
    }
    body.push_str("</select></label> <button type=\"submit\">Show</button></form>");
}

fn took(started: Option<&str>, finished: Option<&str>) -> Option<String> {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    let (a, b) = (parse(started?)?, parse(finished?)?);
    let ms = (b - a).num_milliseconds();
    (ms >= 0).then(|| format!("{:.2}s", ms as f64 / 1000.0))
}

fn run_row(body: &mut String, r: &RunRecord) {
    let error = r.error.as_deref().map(|e| truncate(e, 160)).unwrap_or_default();
    let _ = write!(
        body,
        "<tr><td><a href=\"/runs/{}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td><code>{}</code></td>\
         <td>{}</td><td>{}</td><td class=\"error\">{}</td></tr>",
        esc(&enc(r.id.as_str())),
        esc(r.id.as_str()),
        esc(&r.recipe),
        status_badge(r.status),
        esc(r.item_id.as_deref().unwrap_or("")),
        esc(&r.created),
        esc(&took(r.started.as_deref(), r.finished.as_deref()).unwrap_or_default()),
        esc(&error)
    );
}

fn truncate(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

async fn run(State(listener): State<Listener>, Path(id): Path<String>) -> Response {
    // A malformed id names no run.
    let Ok(run_id) = id.parse::<RunId>() else {
        return error_page(StatusCode::NOT_FOUND, &format!("no run `{id}`: run ids look like 1795856233073-000028"));
    };
    let record = match listener.engine.run_record(&run_id).await {
        Ok(Some(r)) => r,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("no run `{id}`")),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot read the run: {e}")),
    };
    let r = &record;
    let mut body = format!("<h1>Run <code>{}</code> {}</h1>", esc(r.id.as_str()), status_badge(r.status));
    let _ = write!(
        body,
        "<dl class=\"facts\"><dt>Recipe</dt><dd><a href=\"/runs?recipe={}\">{}</a></dd>\
         <dt>Item</dt><dd><code>{}</code></dd><dt>Created</dt><dd>{}</dd>",
        esc(&enc(&r.recipe)),
        esc(&r.recipe),
        esc(r.item_id.as_deref().unwrap_or("")),
        esc(&r.created)
    );
    for (label, value) in [("Started", &r.started), ("Finished", &r.finished)] {
        if let Some(v) = value {
            let _ = write!(body, "<dt>{label}</dt><dd>{}</dd>", esc(v));
        }
    }
    if let Some(t) = took(r.started.as_deref(), r.finished.as_deref()) {
        let _ = write!(body, "<dt>Took</dt><dd>{}</dd>", esc(&t));
    }
    if r.replays > 0 {
        let _ = write!(body, "<dt>Replays</dt><dd>{}</dd>", r.replays);
    }
    if let Some(e) = &r.error {
        let _ = write!(body, "<dt>Error</dt><dd class=\"error\">{}</dd>", esc(e));
    }
    body.push_str("</dl>");
    for note in &r.notes {
        let _ = write!(body, "<p class=\"notice\">{}</p>", esc(note));
    }
    if listener.actions && matches!(r.status, RunStatus::Failed | RunStatus::Unsure) {
        body.push_str(&action_form(&listener, &format!("/runs/{}/replay", enc(r.id.as_str())), "Replay", "go"));
    }
    let _ = write!(body, "<h2>Trigger item</h2><pre class=\"json\">{}</pre>", esc(&pretty(&r.item)));
    let _ = write!(body, "<h2>Steps</h2>");
    if r.steps.is_empty() {
        body.push_str("<p class=\"quiet\">No step ran.</p>");
    }
    for (i, step) in r.steps.iter().enumerate() {
        step_section(&mut body, i, step);
    }
    // Refreshes only while the run may still change by itself.
    let changing = r.status.is_open() || r.status == RunStatus::Waiting || r.next_replay_at.is_some();
    html(StatusCode::OK, &format!("Run {}", r.id), changing, &body)
}

fn step_section(body: &mut String, index: usize, s: &StepRecord) {
    let status = serde_json::to_value(s.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let _ = write!(
        body,
        "<section class=\"step\"><h3>{}. {} <code>{}</code> <span class=\"status status-{}\">{}</span></h3>\
         <dl class=\"facts\"><dt>Tries</dt><dd>{}</dd>",
        index + 1,
        esc(&s.id),
        esc(&s.operation),
        esc(&status),
        esc(&status),
        s.attempts
    );
    for (label, value) in [("Started", &s.started), ("Finished", &s.finished)] {
        if let Some(v) = value {
            let _ = write!(body, "<dt>{label}</dt><dd>{}</dd>", esc(v));
        }
    }
    if let Some(ms) = s.duration_ms {
        let _ = write!(body, "<dt>Took</dt><dd>{ms} ms</dd>");
    }
    if let Some(e) = &s.error {
        let _ = write!(body, "<dt>Error</dt><dd class=\"error\">{}</dd>", esc(e));
    }
    body.push_str("</dl>");
    if let Some(input) = &s.input {
        let _ = write!(
            body,
            "<details open><summary>Input</summary><pre class=\"json\">{}</pre></details>",
            esc(&pretty(input))
        );
    }
    if let Some(output) = &s.output {
        let _ = write!(
            body,
            "<details><summary>Response</summary><pre class=\"json\">{}</pre></details>",
            esc(&pretty(output))
        );
    }
    body.push_str("</section>");
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
}

/// Refuses an action on a read-only page or without the form's token.
fn check_action(
    listener: &Listener,
    form: &Result<Form<ActionForm>, axum::extract::rejection::FormRejection>,
) -> Option<Response> {
    use subtle::ConstantTimeEq as _;
    if !listener.actions {
        return Some(error_page(
            StatusCode::FORBIDDEN,
            "`ghlflow serve` shows the state read-only; actions need the running `ghlflow run`",
        ));
    }
    let given = form.as_ref().map(|Form(f)| f.csrf.as_str()).unwrap_or_default();
    if !bool::from(given.as_bytes().ct_eq(listener.csrf.as_bytes())) {
        return Some(error_page(
            StatusCode::FORBIDDEN,
            "the form's token is missing or stale (the engine restarted?): reload the page and try again",
        ));
    }
    None
}

async fn replay(
    State(listener): State<Listener>,
    Path(id): Path<String>,
    form: Result<Form<ActionForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Some(refused) = check_action(&listener, &form) {
        return refused;
    }
    let Ok(run_id) = id.parse::<RunId>() else {
        return error_page(StatusCode::NOT_FOUND, &format!("no run `{id}`"));
    };
    match listener.engine.replay(&run_id).await {
        Ok(_) => Redirect::to(&format!("/runs/{}", enc(&id))).into_response(),
        Err(e @ (crate::engine::EngineError::UnknownRun(_) | crate::engine::EngineError::Refused(_))) => {
            error_page(StatusCode::CONFLICT, &e.to_string())
        }
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn recipe_action(
    State(listener): State<Listener>,
    Path((recipe, action)): Path<(String, String)>,
    form: Result<Form<ActionForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Some(refused) = check_action(&listener, &form) {
        return refused;
    }
    let engine = &listener.engine;
    if engine.recipe(&recipe).is_none() {
        return error_page(StatusCode::NOT_FOUND, &format!("no recipe `{recipe}` is loaded"));
    }
    let done = match action.as_str() {
        "pause" => engine.set_paused(&recipe, true).await.map(|_| ()),
        "resume" => match engine.set_paused(&recipe, false).await {
            Ok(_) => engine.start_queued(&recipe).await.map(|_| ()),
            Err(e) => Err(e),
        },
        "discard" => engine.discard(&recipe).await.map(|_| ()),
        // The released runs run in the background (a batch may be long; the page follows
        // them as it refreshes).
        "release" => engine.release(&recipe).await.map(|ids| {
            if let Some(r) = engine.recipe(&recipe) {
                engine.run_in_background(r, ids);
            }
        }),
        other => {
            return error_page(
                StatusCode::NOT_FOUND,
                &format!("no action `{other}` on a recipe; there are pause, resume, release and discard"),
            );
        }
    };
    match done {
        Ok(()) if action == "release" || action == "discard" => {
            Redirect::to(&format!("/runs?recipe={}", enc(&recipe))).into_response()
        }
        Ok(()) => Redirect::to("/").into_response(),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
