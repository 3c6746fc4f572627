//! The sandbox from the outside, through ghlflow's own HTTP client: Capsule's Link paging
//! with `since`, deletions, GHL's upsert dedupe, the 422 on unknown properties, rate limits
//! with their headers, injected faults, the control API, and seeds that repeat.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use ghlflow::catalog::{self, Catalog, Input, InputLocation, InputType, Operation};
use ghlflow::config::{Config, Redactor};
use ghlflow::http::{HttpClient, HttpError, Pager};
use ghlflow::sandbox::{self, Faults, LostAs, Sandbox, SandboxOptions};

/// The sandbox's base time: seeded records are older, changes are newer.
const BASE: &str = "2025-06-02T09:00:00Z";

fn embedded() -> Catalog {
    catalog::load_embedded().unwrap_or_else(|d| panic!("{d}"))
}

async fn sandbox(people: usize) -> Sandbox {
    sandbox::start(SandboxOptions { people, ..SandboxOptions::default() }).await.unwrap()
}

fn config(catalog: &Catalog, sandbox: &Sandbox) -> Config {
    Config::parse(&sandbox.config_yaml(), Path::new("/nonexistent/ghlflow.yaml"), catalog, &|_| None)
        .unwrap_or_else(|d| panic!("{d}"))
}

fn client() -> HttpClient {
    HttpClient::new(None, Redactor::default()).unwrap()
}

fn inputs(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

/// An operation as the catalog has it, but tried once only (faults tests want to see the
/// first answer, not the retries).
fn once(catalog: &Catalog, key: &str) -> Operation {
    let mut op = (**catalog.get(key).unwrap()).clone();
    op.retry.max_attempts = NonZeroU32::new(1).unwrap();
    op
}

async fn walk(pager: &mut Pager<'_>) -> (Vec<Value>, u32) {
    let mut records = Vec::new();
    let mut pages = 0;
    while let Some(page) = pager.next_page().await {
        records.extend(page.unwrap().records);
        pages += 1;
    }
    (records, pages)
}

fn ids(records: &[Value]) -> Vec<i64> {
    let mut ids: Vec<i64> = records.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn capsule_parties_page_by_link_header_and_since_returns_only_the_changes() {
    let sandbox = sandbox(120).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let capsule = Arc::clone(config.connection("capsule").unwrap());
    let op = Arc::clone(catalog.get("capsule.parties.party_updated").unwrap());

    // Everything: 120 people and 20 organisations, 50 a page.
    let mut pager = Pager::new(&http, Arc::clone(&capsule), Arc::clone(&op), inputs(json!({"perPage": 50})), None);
    let (all, pages) = walk(&mut pager).await;
    assert_eq!((all.len(), pages), (140, 3));
    assert!(all.iter().all(|p| p.get("tags").is_none()), "tags only come with embed");

    // 45 edits after the base time: three pages of 20 with `since`, nothing else.
    let mut edited = sandbox.capsule_edit_people(45);
    edited.sort();
    let mut pager = Pager::new(
        &http,
        Arc::clone(&capsule),
        Arc::clone(&op),
        inputs(json!({"since": BASE, "perPage": 20, "embed": "tags,fields"})),
        None,
    );
    let (changed, pages) = walk(&mut pager).await;
    assert_eq!(pages, 3);
    assert_eq!(ids(&changed), edited);
    assert!(changed.iter().all(|p| p["updatedAt"].as_str().unwrap() > BASE && p["tags"].is_array()));

    // A cursor at the latest change sees nothing more until the next edit, which is later.
    let latest = changed.iter().map(|p| p["updatedAt"].as_str().unwrap().to_owned()).max().unwrap();
    let mut pager = Pager::new(&http, Arc::clone(&capsule), Arc::clone(&op), inputs(json!({"since": latest})), None);
    assert!(walk(&mut pager).await.0.is_empty());
    let again = sandbox.capsule_edit_people(1);
    let mut pager = Pager::new(&http, capsule, op, inputs(json!({"since": latest})), None);
    let (next, _) = walk(&mut pager).await;
    assert_eq!(ids(&next), again);
    assert!(next[0]["updatedAt"].as_str().unwrap() > latest.as_str());
}

#[tokio::test]
async fn capsule_links_keep_comma_lists_so_every_page_has_the_same_filter_and_embeds() {
    let sandbox = sandbox(300).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let capsule = Arc::clone(config.connection("capsule").unwrap());

    // Tasks of all three statuses, over several pages of 40: a link that lost everything
    // after the first comma would bring open tasks only from page 2 on.
    let tasks = Arc::clone(catalog.get("capsule.tasks.task_updated").unwrap());
    let filter = inputs(json!({"status": "open,completed,pending", "perPage": 40}));
    let mut pager = Pager::new(&http, Arc::clone(&capsule), tasks, filter, None);
    let (all, pages) = walk(&mut pager).await;
    let total = sandbox.capsule_counts().tasks;
    assert!(total > 100, "{total} tasks");
    assert_eq!((all.len(), pages as usize), (total, total.div_ceil(40)));
    let later = &all[40..];
    for status in ["OPEN", "COMPLETED", "PENDING"] {
        assert!(later.iter().any(|t| t["status"] == status), "no {status} task after page 1");
    }
    let mut seen = ids(&all);
    seen.dedup();
    assert_eq!(seen.len(), total, "no task twice");

    // Parties with three embeds: tags, fields and the full organisation on every page.
    let parties = Arc::clone(catalog.get("capsule.parties.party_updated").unwrap());
    let embed = inputs(json!({"embed": "tags,fields,organisation", "perPage": 100}));
    let mut pager = Pager::new(&http, Arc::clone(&capsule), parties, embed, None);
    let (all, pages) = walk(&mut pager).await;
    assert_eq!((all.len(), pages), (350, 4));
    assert!(all.iter().all(|p| p["tags"].is_array() && p["fields"].is_array()), "embeds kept on every page");
    let last_page = &all[300..];
    assert!(last_page.iter().any(|p| p["organisation"]["type"] == "organisation"), "organisation embedded in full");

    // The header itself: an absolute URL with the query as sent, commas and all.
    let raw = reqwest::Client::new()
        .get(format!("{}/tasks?status=open,completed,pending&perPage=40", sandbox.capsule_base_url()))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    let link = raw.headers().get("link").unwrap().to_str().unwrap().to_owned();
    assert_eq!(
        link,
        format!("<{}/tasks?status=open,completed,pending&perPage=40&page=2>; rel=\"next\"", sandbox.capsule_base_url())
    );
}

#[tokio::test]
async fn deleted_people_are_listed_with_their_deletion_time() {
    let sandbox = sandbox(30).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let capsule = config.connection("capsule").unwrap();
    let op = catalog.get("capsule.parties.party_deleted").unwrap();

    let missing = http.execute(capsule, op, &Map::new()).await;
    assert!(missing.is_err(), "since is required (the client says so before sending)");

    let mut gone = sandbox.capsule_delete_people(3);
    gone.sort();
    let response = http.execute(capsule, op, &inputs(json!({"since": BASE}))).await.unwrap();
    assert_eq!(ids(response.body["parties"].as_array().unwrap()), gone);
    assert!(response.body["parties"][0]["deletedAt"].as_str().unwrap() > BASE);
    assert!(response.body["restrictedParties"].is_array());
    let get = catalog.get("capsule.parties.get_party").unwrap();
    let err = http.execute(capsule, get, &inputs(json!({"partyId": gone[0]}))).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
}

#[tokio::test]
async fn upsert_finds_the_contact_by_email_then_by_phone() {
    let sandbox = sandbox(10).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let ghl = config.connection("ghl").unwrap();
    let upsert = catalog.get("ghl.contacts.upsert_contact").unwrap();
    let before = sandbox.ghl_counts().contacts;

    let first = http
        .execute(
            ghl,
            upsert,
            &inputs(json!({"email": "Zoe.Angstrom@example.se", "firstName": "Zoë", "phone": "+46 8 555 123 45"})),
        )
        .await
        .unwrap();
    assert_eq!(first.body["new"], true);
    assert!(first.body["traceId"].is_string());
    let id = first.body["contact"]["id"].as_str().unwrap().to_owned();
    assert_eq!(first.body["contact"]["phone"], "+46855512345", "stored in E.164");

    let by_email = http
        .execute(ghl, upsert, &inputs(json!({"email": "zoe.angstrom@EXAMPLE.se", "lastName": "Ångström"})))
        .await
        .unwrap();
    assert_eq!((by_email.body["new"].clone(), by_email.body["contact"]["id"].clone()), (json!(false), json!(id)));
    assert_eq!(by_email.body["contact"]["name"], "Zoë Ångström");

    let by_phone =
        http.execute(ghl, upsert, &inputs(json!({"phone": "+46855512345", "city": "Stockholm"}))).await.unwrap();
    assert_eq!(by_phone.body["contact"]["id"], json!(id));
    assert_eq!(sandbox.ghl_counts().contacts, before + 1);

    // A contact seeded in GHL with a Capsule person's email is found, not duplicated.
    let known = sandbox.ghl_contacts().into_iter().find(|c| c["tags"] == json!(["imported"])).unwrap();
    let again =
        http.execute(ghl, upsert, &inputs(json!({"email": known["email"], "tags": ["capsule"]}))).await.unwrap();
    assert_eq!(again.body["contact"]["id"], known["id"]);
    assert_eq!(again.body["contact"]["tags"], json!(["capsule"]), "upsert replaces tags");
    assert_eq!(sandbox.ghl_counts().contacts, before + 1);

    // A national number without a country is not a valid US number: 400, as GHL does.
    let err = http
        .execute(ghl, upsert, &inputs(json!({"email": "x@example.com", "phone": "020 7946 0018"})))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
}

#[tokio::test]
async fn an_unknown_body_property_is_refused_with_422() {
    let sandbox = sandbox(5).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    // The client refuses unknown inputs itself, so teach it one the API does not know.
    let mut op = once(&catalog, "ghl.contacts.upsert_contact");
    op.inputs.push(Input {
        name: "additionalEmails".into(),
        location: InputLocation::Body,
        ty: InputType::Array(None),
        required: false,
        allowed: None,
        help: String::new(),
    });
    let err = http
        .execute(
            config.connection("ghl").unwrap(),
            &op,
            &inputs(json!({"email": "a@example.com", "additionalEmails": ["b@example.com"]})),
        )
        .await
        .unwrap_err();
    match &err {
        HttpError::Status { status: 422, message, .. } => {
            assert!(message.contains("property additionalEmails should not exist"), "{message}")
        }
        other => panic!("expected a 422, got {other}"),
    }
    assert!(sandbox.ghl_contacts().iter().all(|c| c["email"] != "a@example.com"), "nothing was written");
}

#[tokio::test]
async fn requests_pass_the_same_gates_as_on_the_real_apis() {
    let sandbox = sandbox(5).await;
    let base = sandbox.ghl_base_url();
    let http = reqwest::Client::new();
    let auth = ("Authorization", "Bearer t");
    let status = |r: reqwest::Response| r.status().as_u16();

    let r = http.get(format!("{base}/contacts/abc")).header("Version", "2021-07-28").send().await.unwrap();
    assert_eq!(status(r), 401);
    let r = http.get(format!("{base}/contacts/abc")).header(auth.0, auth.1).send().await.unwrap();
    let (code, body): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap());
    assert_eq!((code, body["message"].as_str()), (400, Some("Version header was not found")));
    let r = http.get(format!("{base}/calendars/events")).header(auth.0, auth.1).header("Version", "2021-07-28");
    assert_eq!(status(r.send().await.unwrap()), 400, "calendars take 2021-04-15");
    let r = http
        .post(format!("{base}/contacts/upsert"))
        .header(auth.0, auth.1)
        .header("Version", "2021-07-28")
        .header("Content-Type", "application/json")
        .body("{\"email\": ");
    let r = r.send().await.unwrap();
    let (code, body): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap());
    assert_eq!((code, body["statusCode"].clone()), (400, json!(400)), "malformed JSON is a JSON error");
    let r = http
        .get(format!("{base}/contacts/?locationId=someoneElse"))
        .header(auth.0, auth.1)
        .header("Version", "2021-07-28")
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 403);
    let r = http.get(format!("{base}/contacts?locationId={}", sandbox.location_id())).header(auth.0, auth.1);
    assert_eq!(status(r.header("Version", "2021-07-28").send().await.unwrap()), 404, "the path is /contacts/");
    let r = http.get(format!("{}/parties", sandbox.capsule_base_url())).send().await.unwrap();
    assert_eq!(status(r), 401);
}

#[tokio::test]
async fn past_the_rate_limit_comes_a_429_with_the_real_headers() {
    // GHL: 5 per 10 s at this scale; Capsule: 200 an hour.
    let sandbox =
        sandbox::start(SandboxOptions { people: 5, limits_scale: 0.05, ..SandboxOptions::default() }).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/contacts/?locationId={}", sandbox.ghl_base_url(), sandbox.location_id());
    let get = || http.get(&url).header("Authorization", "Bearer t").header("Version", "2021-07-28").send();
    let header = |r: &reqwest::Response, name: &str| {
        r.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    };
    for left in (0..5).rev() {
        let r = get().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(header(&r, "x-ratelimit-max"), "5");
        assert_eq!(header(&r, "x-ratelimit-remaining"), left.to_string());
        assert_eq!(header(&r, "x-ratelimit-interval-milliseconds"), "10000");
        assert_eq!(header(&r, "x-ratelimit-limit-daily"), "10000");
        assert!(!header(&r, "x-ratelimit-daily-remaining").is_empty());
    }
    let r = get().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");

    // Capsule, per token: 200, then 429 with a reset time and no Retry-After.
    let parties = format!("{}/parties?perPage=1", sandbox.capsule_base_url());
    for _ in 0..200 {
        let r = http.get(&parties).bearer_auth("cap").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let r = http.get(&parties).bearer_auth("cap").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(header(&r, "x-ratelimit-limit"), "200");
    assert!(header(&r, "x-ratelimit-reset").parse::<u64>().unwrap() > 1_700_000_000);
    assert!(r.headers().get("retry-after").is_none());
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"error": "rate limit reached"}));
    let other = http.get(&parties).bearer_auth("another-token").send().await.unwrap();
    assert_eq!(other.status().as_u16(), 200, "each token has its own budget");
    assert!(sandbox.request_counts().rate_limited >= 2);
}

#[tokio::test]
async fn a_lost_answer_leaves_the_write_applied_and_the_client_with_an_error() {
    let sandbox =
        sandbox::start(SandboxOptions { people: 5, lose_responses: 1.0, ..SandboxOptions::default() }).await.unwrap();
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let ghl = config.connection("ghl").unwrap();
    let upsert = once(&catalog, "ghl.contacts.upsert_contact");
    let email = inputs(json!({"email": "lost@example.com", "firstName": "Renée"}));

    let err = http.execute(ghl, &upsert, &email).await.unwrap_err();
    assert!(matches!(err, HttpError::Transport { .. }), "the connection closed without an answer: {err}");
    assert!(err.is_retryable());
    assert!(sandbox.ghl_contacts().iter().any(|c| c["email"] == "lost@example.com"), "but the write happened");
    assert_eq!(sandbox.request_counts().lost, 1);

    // Reads are not faulted.
    let get = catalog.get("ghl.contacts.list_contacts").unwrap();
    http.execute(ghl, get, &Map::new()).await.unwrap();

    // As a 504 instead.
    sandbox.set_faults(Faults { lose_responses: 1.0, lost_as: LostAs::GatewayTimeout, ..Faults::default() }).unwrap();
    let note = once(&catalog, "ghl.contacts.create_contact_note");
    let contact = sandbox.ghl_contacts()[0]["id"].as_str().unwrap().to_owned();
    let err =
        http.execute(ghl, &note, &inputs(json!({"contactId": contact, "body": "Called back"}))).await.unwrap_err();
    assert_eq!(err.status(), Some(504));
    assert!(sandbox.ghl_notes(&contact).iter().any(|n| n["body"] == "Called back"));

    // Once the faults stop, the retried upsert finds what the lost attempt created.
    sandbox.set_faults(Faults::default()).unwrap();
    let retried = http.execute(ghl, &upsert, &email).await.unwrap();
    assert_eq!(retried.body["new"], false);
}

#[tokio::test]
async fn a_failed_write_is_a_500_and_changes_nothing() {
    let sandbox =
        sandbox::start(SandboxOptions { people: 5, fail_rate: 1.0, ..SandboxOptions::default() }).await.unwrap();
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let before = sandbox.ghl_counts();
    let upsert = once(&catalog, "ghl.contacts.upsert_contact");
    let err = http
        .execute(config.connection("ghl").unwrap(), &upsert, &inputs(json!({"email": "fail@example.com"})))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert_eq!(sandbox.ghl_counts(), before);
    assert_eq!(sandbox.request_counts().failed, 1);
}

#[tokio::test]
async fn notes_tasks_messages_and_searches_keep_state() {
    let sandbox = sandbox(5).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let ghl = config.connection("ghl").unwrap();
    let run = |key: &str, v: Value| {
        let op = Arc::clone(catalog.get(key).unwrap());
        let http = &http;
        async move { http.execute(ghl, &op, &inputs(v)).await.unwrap().body }
    };
    let contact = run("ghl.contacts.upsert_contact", json!({"email": "kaethe@example.de", "phone": "+49 30 901820"}))
        .await["contact"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let note = run("ghl.contacts.create_contact_note", json!({"contactId": contact, "body": "Erstes Gespräch"})).await;
    let note_id = note["note"]["id"].as_str().unwrap().to_owned();
    run("ghl.contacts.update_contact_note", json!({"contactId": contact, "id": note_id, "body": "Zweites Gespräch"}))
        .await;
    let notes = run("ghl.contacts.get_contact_notes", json!({"contactId": contact})).await;
    assert_eq!(notes["notes"][0]["body"], "Zweites Gespräch");

    let task = run(
        "ghl.contacts.create_contact_task",
        json!({"contactId": contact, "title": "Rückruf", "dueDate": "2025-06-20T09:00:00Z", "completed": false}),
    )
    .await;
    let task_id = task["task"]["id"].as_str().unwrap().to_owned();
    run("ghl.contacts.complete_contact_task", json!({"contactId": contact, "taskId": task_id, "completed": true}))
        .await;
    assert_eq!(sandbox.ghl_tasks(&contact)[0]["completed"], true);

    let sent = run(
        "ghl.conversations.send_message",
        json!({"type": "SMS", "contactId": contact, "message": "Hallo!", "subType": "SMS", "status": "pending"}),
    )
    .await;
    assert!(sent["messageId"].is_string() && sent["conversationId"].is_string());
    assert!(sandbox.ghl_messages().iter().any(|m| m["body"] == "Hallo!" && m["contactId"] == contact.as_str()));
    let conversations = run("ghl.conversations.search_conversations", json!({"contactId": contact})).await;
    assert_eq!(conversations["conversations"][0]["lastMessageBody"], "Hallo!");

    let newest = run("ghl.contacts.search_contacts", json!({"pageLimit": 2})).await;
    assert_eq!(newest["contacts"][0]["id"], json!(contact), "newest first");
    assert_eq!(newest["contacts"].as_array().unwrap().len(), 2);

    let won = run("ghl.opportunities.search_opportunities", json!({"status": "won"})).await;
    let won = won["opportunities"].as_array().unwrap();
    assert!(!won.is_empty() && won.iter().all(|o| o["status"] == "won"));
    let open = run("ghl.opportunities.search_opportunities", json!({"status": "open"})).await;
    let id = open["opportunities"][0]["id"].as_str().unwrap().to_owned();
    run("ghl.opportunities.update_opportunity_status", json!({"id": id, "status": "won"})).await;
    let got = run("ghl.opportunities.get_opportunity", json!({"id": id})).await;
    assert_eq!(got["opportunity"]["status"], "won");

    let users = run("ghl.users.search_users", json!({})).await;
    assert!(users["count"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn ghl_contacts_page_with_start_after() {
    let sandbox = sandbox(5).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let op = Arc::clone(catalog.get("ghl.contacts.list_contacts").unwrap());
    let total = sandbox.ghl_counts().contacts;
    let ghl = Arc::clone(config.connection("ghl").unwrap());
    let mut pager = Pager::new(&http, ghl, op, inputs(json!({"limit": 3})), None);
    let (records, pages) = walk(&mut pager).await;
    let mut seen: Vec<&str> = records.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(seen.len(), total);
    assert!(pages >= 3);
    seen.dedup();
    assert_eq!(seen.len(), total, "no contact twice");
}

#[tokio::test]
async fn the_control_api_changes_capsule_and_shows_ghl() {
    let sandbox = sandbox(20).await;
    let http = reqwest::Client::new();
    let control = format!("{}/_sandbox", sandbox.ghl_base_url());
    let r = http.post(format!("{control}/capsule/people/add")).body(r#"{"count": 2}"#).send().await.unwrap();
    let added: Value = r.json().await.unwrap();
    assert_eq!(added["ids"].as_array().unwrap().len(), 2);
    assert_eq!(sandbox.capsule_counts().people, 22);
    let party = sandbox.capsule_party(added["ids"][0].as_i64().unwrap()).unwrap();
    assert!(party["createdAt"].as_str().unwrap() > BASE);

    let before = sandbox.ghl_counts().contacts;
    let r = http.post(format!("{control}/ghl/contacts/add")).body(r#"{"count": 3}"#).send().await.unwrap();
    let leads: Value = r.json().await.unwrap();
    assert_eq!(leads["ids"].as_array().unwrap().len(), 3);
    let counts: Value = http.get(format!("{control}/ghl/counts")).send().await.unwrap().json().await.unwrap();
    assert_eq!(counts["contacts"].as_u64().unwrap() as usize, before + 3);
    let emails: std::collections::BTreeSet<String> =
        sandbox.ghl_contacts().iter().filter_map(|c| c["email"].as_str().map(str::to_lowercase)).collect();
    assert_eq!(emails.len(), before + 3, "every lead has its own email");
    let faults: Value = http
        .put(format!("{control}/faults"))
        .body(r#"{"fail_rate": 0.25, "latency_ms": 5}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults["fail_rate"], 0.25);
    assert_eq!(sandbox.faults().latency, Duration::from_millis(5));
    let bad = http.put(format!("{control}/faults")).body(r#"{"fail_rate": 2}"#).send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 422);
    let done = sandbox.capsule_complete_tasks(1);
    assert_eq!(done.len(), 1);
}

/// Every page of a Capsule list, as raw JSON.
async fn capsule_pages(sandbox: &Sandbox, path: &str) -> Vec<Value> {
    let http = reqwest::Client::new();
    let mut next = Some(format!("{}{path}", sandbox.capsule_base_url()));
    let mut bodies = Vec::new();
    while let Some(url) = next.take() {
        let r = http.get(&url).bearer_auth("t").send().await.unwrap();
        let base = url::Url::parse(&url).unwrap();
        next = r.headers().get("link").and_then(|l| {
            let links = http_link::parse_link_header(l.to_str().ok()?, &base).ok()?;
            links.into_iter().find(|l| l.rel == "next").map(|l| l.target.to_string())
        });
        bodies.push(r.json::<Value>().await.unwrap());
    }
    bodies
}

#[tokio::test]
async fn the_same_seed_gives_the_same_accounts() {
    let a = sandbox::start(SandboxOptions { seed: 7, people: 60, ..SandboxOptions::default() }).await.unwrap();
    let b = sandbox::start(SandboxOptions { seed: 7, people: 60, ..SandboxOptions::default() }).await.unwrap();
    let c = sandbox::start(SandboxOptions { seed: 8, people: 60, ..SandboxOptions::default() }).await.unwrap();
    for path in
        ["/parties?perPage=100&embed=tags,fields", "/entries?perPage=100", "/tasks?status=open,completed,pending"]
    {
        let (pa, pb, pc) =
            (capsule_pages(&a, path).await, capsule_pages(&b, path).await, capsule_pages(&c, path).await);
        // Links name the port, which differs; the bodies must not.
        assert_eq!(pa, pb, "{path}");
        assert_ne!(pa, pc, "{path}");
    }
    assert_eq!(a.ghl_contacts(), b.ghl_contacts());
    assert_eq!(a.capsule_edit_people(3), b.capsule_edit_people(3), "control picks repeat too");
}
