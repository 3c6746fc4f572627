//! The sandbox from the outside, through ghlflow's own HTTP client: Capsule's Link paging
//! with `since` and comma lists, deletions and restrictions, GHL's upsert dedupe, the 422 on
//! unknown properties, rate limits with their headers, injected faults, the control API,
//! seeds that repeat, and the real APIs' less obvious answers: a 401 for a missing Version or
//! an unknown user, OAuth tokens that expire, Capsule's 403 for a read-only write, tags
//! replaced by update and upsert, 404 for a contact deleted in GHL, the 10,000-result window
//! of contact search, and documented sort orders (a won deal behind 100 newer ones).

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

    // Everything: 120 people, the 4 users' own parties and 20 organisations, 50 a page.
    let mut pager = Pager::new(&http, Arc::clone(&capsule), Arc::clone(&op), inputs(json!({"perPage": 50})), None);
    let (all, pages) = walk(&mut pager).await;
    assert_eq!((all.len(), pages), (144, 3));
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
    // 300 people, 4 users' parties, 50 organisations.
    assert_eq!((all.len(), pages), (354, 4));
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
async fn matching_follows_edits_and_deletions_of_emails_and_phones() {
    let sandbox = sandbox(10).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let ghl = config.connection("ghl").unwrap();
    let upsert = catalog.get("ghl.contacts.upsert_contact").unwrap();
    let update = catalog.get("ghl.contacts.update_contact").unwrap();
    let delete = catalog.get("ghl.contacts.delete_contact").unwrap();
    let id_of = |body: &Value| body["contact"]["id"].as_str().unwrap().to_owned();

    let first =
        http.execute(ghl, upsert, &inputs(json!({"email": "old@example.org", "phone": "+13125550101"}))).await.unwrap();
    let id = id_of(&first.body);
    http.execute(ghl, update, &inputs(json!({"contactId": id, "email": "New@Example.org", "phone": "+13125550102"})))
        .await
        .unwrap();

    // The old email and phone belong to nobody any more; the new ones find the contact.
    let by_new = http.execute(ghl, upsert, &inputs(json!({"email": "new@example.org"}))).await.unwrap();
    assert_eq!((by_new.body["new"].clone(), id_of(&by_new.body)), (json!(false), id.clone()));
    let by_new_phone = http.execute(ghl, upsert, &inputs(json!({"phone": "+13125550102"}))).await.unwrap();
    assert_eq!(id_of(&by_new_phone.body), id);
    let by_old = http.execute(ghl, upsert, &inputs(json!({"email": "old@example.org"}))).await.unwrap();
    assert_eq!(by_old.body["new"], true, "the old email no longer matches");
    let other = id_of(&by_old.body);
    assert_ne!(other, id);
    let by_old_phone = http
        .execute(ghl, upsert, &inputs(json!({"phone": "+13125550101", "email": "third@example.org"})))
        .await
        .unwrap();
    assert_eq!(by_old_phone.body["new"], true, "the old phone no longer matches");

    // A deleted contact's email is free again.
    http.execute(ghl, delete, &inputs(json!({"contactId": id}))).await.unwrap();
    let after_delete = http.execute(ghl, upsert, &inputs(json!({"email": "new@example.org"}))).await.unwrap();
    assert_eq!(after_delete.body["new"], true);
    assert_ne!(id_of(&after_delete.body), id);
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
    // GHL answers a missing Version with a 401 in its own words, not a 400.
    let r = http.get(format!("{base}/contacts/abc")).header(auth.0, auth.1).send().await.unwrap();
    let (code, body): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap());
    assert_eq!((code, body["message"].as_str()), (401, Some("version header was not found.")));
    let r = http.get(format!("{base}/calendars/events")).header(auth.0, auth.1).header("Version", "2021-07-28");
    let r = r.send().await.unwrap();
    let (code, body): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap());
    assert_eq!(code, 401, "calendars take 2021-04-15");
    assert!(body["message"].as_str().unwrap().starts_with("version header is invalid"), "{body}");
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
    assert_eq!(sandbox.capsule_counts().people, 20 + 4 + 2, "20 seeded, the 4 users' own parties, 2 added");
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

// ---------------------------------------------------------------------------------------
// Where the sandbox follows the real APIs' less obvious answers.

/// A config whose `ghl` connection uses OAuth against the sandbox's token endpoint.
fn oauth_config(catalog: &Catalog, sandbox: &Sandbox, refresh: &str) -> Config {
    let yaml = format!(
        "connections:\n  ghl:\n    app: ghl\n    location_id: {}\n    auth:\n      type: oauth2\n      client_id: cid\n      client_secret: csecret\n      refresh_token: {refresh}\n      token_url: {}/oauth/token\n    base_url: {}\n",
        sandbox.location_id(),
        sandbox.ghl_base_url(),
        sandbox.ghl_base_url()
    );
    Config::parse(&yaml, Path::new("/nonexistent/ghlflow.yaml"), catalog, &|_| None).unwrap_or_else(|d| panic!("{d}"))
}

#[tokio::test]
async fn oauth_tokens_expire_on_the_sandbox_clock_and_one_refresh_brings_them_back() {
    let sandbox = sandbox(5).await;
    let catalog = embedded();
    let grant = sandbox.oauth_grant(Some(3600));
    let config = oauth_config(&catalog, &sandbox, &grant.refresh_token);
    let http = client();
    let ghl = config.connection("ghl").unwrap();
    let list = catalog.get("ghl.users.list_users_by_location").unwrap();
    let ask = inputs(json!({"locationId": sandbox.location_id()}));

    // No access token yet: one refresh, then the call.
    assert_eq!(http.execute(ghl, list, &ask).await.unwrap().status, 200);
    assert_eq!(sandbox.request_count(), 2);
    // The spent refresh token is refused; the issued access token works until it expires.
    let raw = reqwest::Client::new();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", grant.refresh_token.as_str()),
        ("client_id", "c"),
        ("client_secret", "s"),
    ];
    let spent = raw.post(format!("{}/oauth/token", sandbox.ghl_base_url())).form(&form).send().await.unwrap();
    assert_eq!(spent.status().as_u16(), 400);
    let direct = |token: String| {
        raw.get(format!("{}/users/?locationId={}", sandbox.ghl_base_url(), sandbox.location_id()))
            .bearer_auth(token)
            .header("Version", "2021-07-28")
            .send()
    };
    assert_eq!(direct(grant.access_token.clone()).await.unwrap().status().as_u16(), 200);

    // An hour later on the sandbox clock both access tokens answer 401. ghlflow, whose own
    // clock says its token is fresh, sends it, meets the 401, refreshes once and retries once.
    sandbox.advance_clock(Duration::from_secs(3601));
    assert_eq!(direct(grant.access_token.clone()).await.unwrap().status().as_u16(), 401);
    // Capsule says so too, with its challenge header.
    let capsule = raw.get(format!("{}/users", sandbox.capsule_base_url())).bearer_auth(&grant.access_token).send();
    let capsule = capsule.await.unwrap();
    assert_eq!(capsule.status().as_u16(), 401);
    assert!(capsule.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    let body: Value = capsule.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("expired"), "{body}");
    let before = sandbox.request_count();
    assert_eq!(http.execute(ghl, list, &ask).await.unwrap().status, 200);
    assert_eq!(sandbox.request_count() - before, 3, "the call, one refresh, one retry");
}

#[tokio::test]
async fn a_401_for_an_unknown_user_gets_one_refresh_and_one_retry_then_the_apis_own_message() {
    let sandbox = sandbox(5).await;
    let catalog = embedded();
    let grant = sandbox.oauth_grant(None);
    let config = oauth_config(&catalog, &sandbox, &grant.refresh_token);
    let http = client();
    let ghl = config.connection("ghl").unwrap();
    let get_user = catalog.get("ghl.users.get_user").unwrap();
    let err = http.execute(ghl, get_user, &inputs(json!({"userId": "noSuchUser000000000"}))).await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(err.to_string().contains("The user does not exist."), "{err}");
    // First refresh (no token yet), the call, the refresh after its 401, the one retry.
    assert_eq!(sandbox.request_count(), 4);
}

#[tokio::test]
async fn an_unknown_user_id_is_a_401_that_the_user_does_not_exist() {
    let sandbox = sandbox(5).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let ghl = config.connection("ghl").unwrap();
    let users =
        http.execute(ghl, catalog.get("ghl.users.list_users_by_location").unwrap(), &inputs(json!({}))).await.unwrap();
    let user = users.body["users"][0]["id"].as_str().unwrap().to_owned();
    let get_user = catalog.get("ghl.users.get_user").unwrap();
    assert_eq!(http.execute(ghl, get_user, &inputs(json!({"userId": user}))).await.unwrap().body["id"], json!(user));

    let contact = sandbox.ghl_add_contacts(1).remove(0);
    let task = once(&catalog, "ghl.contacts.create_contact_task");
    let body = |assignee: &str| {
        inputs(json!({"contactId": contact, "title": "Call back", "dueDate": "2025-07-01T09:00:00Z",
                      "completed": false, "assignedTo": assignee}))
    };
    let err = http.execute(ghl, &task, &body("noSuchUser000000000")).await.unwrap_err();
    match &err {
        HttpError::Status { status: 401, message, .. } => {
            assert!(message.starts_with("The user does not exist."), "{message}")
        }
        other => panic!("expected the API's 401, got {other}"),
    }
    assert!(sandbox.ghl_tasks(&contact).is_empty(), "nothing was written");
    assert_eq!(http.execute(ghl, &task, &body(&user)).await.unwrap().status, 201);
}

#[tokio::test]
async fn capsule_answers_a_write_from_a_read_only_token_with_403() {
    let sandbox = sandbox(5).await;
    let http = reqwest::Client::new();
    let base = sandbox.capsule_base_url();
    let id = sandbox.capsule_people()[0];
    let writes = [
        http.post(format!("{base}/parties")).json(&json!({"party": {"type": "person", "firstName": "A"}})),
        http.put(format!("{base}/parties/{id}")).json(&json!({"party": {"jobTitle": "CEO"}})),
        http.delete(format!("{base}/parties/{id}")),
        http.post(format!("{base}/tasks")).json(&json!({"task": {"description": "x", "dueOn": "2025-07-01"}})),
    ];
    for write in writes {
        let r = write.bearer_auth("sandbox-capsule-token").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403);
        let challenge = r.headers().get("www-authenticate").unwrap().to_str().unwrap().to_owned();
        assert!(challenge.contains("insufficient_scope"), "{challenge}");
        let body: Value = r.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("read scope only"), "{body}");
    }
    let party = sandbox.capsule_party(id).unwrap();
    assert_ne!(party["jobTitle"], "CEO", "nothing was written");
    let read = http.get(format!("{base}/parties/{id}")).bearer_auth("t").send().await.unwrap();
    assert_eq!(read.status().as_u16(), 200);
}

#[tokio::test]
async fn update_and_upsert_replace_tags_while_the_tag_routes_add_and_remove() {
    let sandbox = sandbox(5).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let ghl = config.connection("ghl").unwrap();
    let run = |key: &str, v: Value| {
        let op = catalog.get(key).unwrap();
        let http = &http;
        async move { http.execute(ghl, op, &inputs(v)).await.unwrap().body }
    };
    let tags = |sandbox: &Sandbox, id: &str| -> Value {
        sandbox.ghl_contacts().into_iter().find(|c| c["id"] == id).unwrap()["tags"].clone()
    };
    let made = run("ghl.contacts.create_contact", json!({"email": "tags@example.com", "tags": ["a", "b"]})).await;
    let id = made["contact"]["id"].as_str().unwrap().to_owned();
    run("ghl.contacts.update_contact", json!({"contactId": id, "city": "Leeds"})).await;
    assert_eq!(tags(&sandbox, &id), json!(["a", "b"]), "no tags given: tags untouched");
    run("ghl.contacts.update_contact", json!({"contactId": id, "tags": ["c"]})).await;
    assert_eq!(tags(&sandbox, &id), json!(["c"]), "update replaces the whole list");
    run("ghl.contacts.add_tags_to_contact", json!({"contactId": id, "tags": ["d"]})).await;
    assert_eq!(tags(&sandbox, &id), json!(["c", "d"]), "the tags route adds");
    run("ghl.contacts.remove_tags_from_contact", json!({"contactId": id, "tags": ["c"]})).await;
    assert_eq!(tags(&sandbox, &id), json!(["d"]), "DELETE with a body removes");
    run("ghl.contacts.upsert_contact", json!({"email": "tags@example.com", "tags": ["e"]})).await;
    assert_eq!(tags(&sandbox, &id), json!(["e"]), "upsert replaces too");
    run("ghl.contacts.upsert_contact", json!({"email": "tags@example.com", "firstName": "Tess"})).await;
    assert_eq!(tags(&sandbox, &id), json!(["e"]), "upsert without tags leaves them");
}

#[tokio::test]
async fn upsert_matches_by_email_first_and_drops_a_phone_that_belongs_to_another_contact() {
    // GoHighLevel/highlevel-api-docs#37: a contact with only a phone, another with only an
    // email; an upsert with both returns the email's contact and does not add the phone.
    let sandbox = sandbox(5).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let ghl = config.connection("ghl").unwrap();
    let create = catalog.get("ghl.contacts.create_contact").unwrap();
    let upsert = catalog.get("ghl.contacts.upsert_contact").unwrap();
    let phone_only = http.execute(ghl, create, &inputs(json!({"phone": "+14155552671", "firstName": "P"}))).await;
    let phone_only = phone_only.unwrap().body["contact"]["id"].as_str().unwrap().to_owned();
    let email_only = http.execute(ghl, create, &inputs(json!({"email": "only@example.com"}))).await.unwrap();
    let email_only = email_only.body["contact"]["id"].as_str().unwrap().to_owned();
    let before = sandbox.ghl_counts().contacts;

    let both = http
        .execute(
            ghl,
            upsert,
            &inputs(json!({"email": "only@example.com", "phone": "+1 415 555 2671", "lastName": "Q"})),
        )
        .await
        .unwrap();
    assert_eq!(both.body["new"], false);
    assert_eq!(both.body["contact"]["id"], json!(email_only));
    assert_eq!(both.body["contact"]["lastName"], "Q");
    assert!(both.body["contact"].get("phone").is_none(), "the phone stays with the other contact: {}", both.body);
    let contacts = sandbox.ghl_contacts();
    let holder = contacts.iter().find(|c| c["id"] == phone_only.as_str()).unwrap();
    assert_eq!(holder["phone"], "+14155552671");
    assert_eq!(sandbox.ghl_counts().contacts, before);
}

#[tokio::test]
async fn a_contact_deleted_or_merged_in_ghl_answers_404_to_every_call_on_its_id() {
    let sandbox = sandbox(5).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let ghl = config.connection("ghl").unwrap();
    let leads = sandbox.ghl_add_contacts(3);
    let (gone, merged, survivor) = (leads[0].clone(), leads[1].clone(), leads[2].clone());
    let email = sandbox.ghl_contacts().into_iter().find(|c| c["id"] == gone.as_str()).unwrap()["email"].clone();

    // Through the control API, as a person in GHL would.
    let control = format!("{}/_sandbox/ghl/contacts", sandbox.ghl_base_url());
    let raw = reqwest::Client::new();
    let r = raw.post(format!("{control}/{gone}/delete")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let again = raw.post(format!("{control}/{gone}/delete")).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 404);
    let tag = catalog.get("ghl.contacts.add_tags_to_contact").unwrap();
    http.execute(ghl, tag, &inputs(json!({"contactId": merged, "tags": ["vip"]}))).await.unwrap();
    let r = raw.post(format!("{control}/{merged}/merge")).json(&json!({"into": survivor})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let calls: [(&str, Value); 7] = [
        ("ghl.contacts.get_contact", json!({})),
        ("ghl.contacts.update_contact", json!({"city": "Leeds"})),
        ("ghl.contacts.delete_contact", json!({})),
        ("ghl.contacts.get_contact_notes", json!({})),
        ("ghl.contacts.create_contact_note", json!({"body": "hello"})),
        ("ghl.contacts.get_contact_tasks", json!({})),
        (
            "ghl.contacts.create_contact_task",
            json!({"title": "t", "dueDate": "2025-07-01T09:00:00Z", "completed": false}),
        ),
    ];
    for id in [&gone, &merged] {
        for (key, extra) in &calls {
            let mut ask = inputs(extra.clone());
            ask.insert("contactId".into(), json!(id));
            let err = http.execute(ghl, &once(&catalog, key), &ask).await.unwrap_err();
            match &err {
                HttpError::Status { status: 404, message, .. } => {
                    assert!(message.starts_with("Contact not found"), "{key}: {message}")
                }
                other => panic!("{key} on {id}: expected 404, got {other}"),
            }
        }
    }
    // An id that never existed stays a 400, as before.
    let get = catalog.get("ghl.contacts.get_contact").unwrap();
    let err = http.execute(ghl, get, &inputs(json!({"contactId": "neverExisted00000000"}))).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    // The deleted contact's email is free again: an upsert makes a new contact.
    let upsert = catalog.get("ghl.contacts.upsert_contact").unwrap();
    let fresh = http.execute(ghl, upsert, &inputs(json!({"email": email}))).await.unwrap();
    assert_eq!(fresh.body["new"], true);
    assert_ne!(fresh.body["contact"]["id"], json!(gone));
    // The survivor of the merge kept its id and took the other's tags.
    let kept = http.execute(ghl, get, &inputs(json!({"contactId": survivor}))).await.unwrap();
    assert_eq!(kept.body["contact"]["tags"], json!(["new lead", "vip"]));
}

#[tokio::test]
async fn capsule_tasks_filter_by_status_and_restricted_parties_reach_their_own_trigger() {
    let sandbox = sandbox(60).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let capsule = Arc::clone(config.connection("capsule").unwrap());
    let tasks = Arc::clone(catalog.get("capsule.tasks.task_updated").unwrap());
    let read = |status: Option<&str>| {
        let mut ask = inputs(json!({"perPage": 100}));
        if let Some(s) = status {
            ask.insert("status".into(), json!(s));
        }
        Pager::new(&http, Arc::clone(&capsule), Arc::clone(&tasks), ask, None)
    };

    let pended = sandbox.capsule_pend_tasks(3);
    assert_eq!(pended.len(), 3);
    let (open, _) = walk(&mut read(None)).await;
    assert!(open.iter().all(|t| t["status"] == "OPEN"), "open only by default");
    assert!(ids(&open).iter().all(|id| !pended.contains(id)));
    let (pending, _) = walk(&mut read(Some("pending"))).await;
    assert!(pending.iter().all(|t| t["status"] == "PENDING"));
    assert!(pended.iter().all(|id| ids(&pending).contains(id)));
    let (all, _) = walk(&mut read(Some("open,completed,pending"))).await;
    assert_eq!(all.len(), sandbox.capsule_counts().tasks);

    // Restricted parties: gone from view, listed beside the deletions, and delivered by the
    // catalog's own trigger over `restrictedParties`.
    let mut hidden = sandbox.capsule_restrict_people(2);
    hidden.sort();
    let get = catalog.get("capsule.parties.get_party").unwrap();
    let err = http.execute(&capsule, get, &inputs(json!({"partyId": hidden[0]}))).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    let restricted = Arc::clone(catalog.get("capsule.parties.party_restricted").unwrap());
    let ask = inputs(json!({"since": "1970-01-01T00:00:00Z"}));
    let (records, _) = walk(&mut Pager::new(&http, Arc::clone(&capsule), restricted, ask, None)).await;
    assert_eq!(ids(&records), hidden);
    assert!(records.iter().all(|r| r["isRestricted"] == true && r["lastName"] == "Private"));
    let deleted = catalog.get("capsule.parties.party_deleted").unwrap();
    let body = http.execute(&capsule, deleted, &inputs(json!({"since": BASE}))).await.unwrap().body;
    assert!(body["parties"].as_array().unwrap().is_empty(), "restriction is not deletion");
}

#[tokio::test]
async fn contact_search_pages_by_number_up_to_10000_results_and_past_them_by_search_after() {
    let sandbox = sandbox(5).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let ghl = Arc::clone(config.connection("ghl").unwrap());
    sandbox.ghl_add_contacts(25);
    let total = sandbox.ghl_counts().contacts;
    let search = once(&catalog, "ghl.contacts.search_contacts");

    // Page numbers: the window ends at 10,000 results whatever the account holds.
    let ok = http.execute(&ghl, &search, &inputs(json!({"page": 20, "pageLimit": 500}))).await.unwrap();
    assert_eq!(ok.body["contacts"].as_array().unwrap().len(), 0);
    let err = http.execute(&ghl, &search, &inputs(json!({"page": 101, "pageLimit": 100}))).await.unwrap_err();
    match &err {
        HttpError::Status { status: 422, message, .. } => {
            assert!(message.contains("must not exceed 10000") && message.contains("searchAfter"), "{message}")
        }
        other => panic!("expected a 422, got {other}"),
    }
    let mixed = inputs(json!({"page": 2, "pageLimit": 5, "searchAfter": [1, "x"]}));
    assert_eq!(http.execute(&ghl, &search, &mixed).await.unwrap_err().status(), Some(422));

    // The trigger's walk uses the cursor of the last contact: every contact once, newest
    // first (the order it sends when none is given).
    let op = Arc::new(search);
    let mut pager = Pager::new(&http, Arc::clone(&ghl), Arc::clone(&op), inputs(json!({"pageLimit": 7})), None);
    assert!(pager.newest_first());
    let (records, pages) = walk(&mut pager).await;
    assert_eq!(records.len(), total);
    assert_eq!(pages as usize, total.div_ceil(7) + usize::from(total % 7 == 0));
    let added: Vec<&str> = records.iter().map(|c| c["dateAdded"].as_str().unwrap()).collect();
    assert!(added.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let mut ids: Vec<&str> = records.iter().map(|c| c["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "no contact twice");
    // With a filter an old contact can join the feed: it must be read whole.
    let filtered = inputs(json!({"filters": [{"field": "tags", "operator": "contains", "value": "vip"}]}));
    assert!(!Pager::new(&http, Arc::clone(&ghl), op, filtered, None).newest_first());
}

#[tokio::test]
async fn list_and_search_endpoints_keep_their_documented_orders() {
    let sandbox = sandbox(5).await;
    let catalog = embedded();
    let config = config(&catalog, &sandbox);
    let http = client();
    let ghl = config.connection("ghl").unwrap();

    // Opportunities: added_desc newest first, added_asc oldest first, nothing else.
    let search = once(&catalog, "ghl.opportunities.search_opportunities");
    let created = |body: &Value| -> Vec<String> {
        body["opportunities"].as_array().unwrap().iter().map(|o| o["createdAt"].as_str().unwrap().to_owned()).collect()
    };
    let desc = http.execute(ghl, &search, &inputs(json!({"order": "added_desc", "limit": 100}))).await.unwrap();
    let asc = http.execute(ghl, &search, &inputs(json!({"order": "added_asc", "limit": 100}))).await.unwrap();
    let (desc, asc) = (created(&desc.body), created(&asc.body));
    assert!(desc.len() > 2);
    assert!(desc.windows(2).all(|w| w[0] >= w[1]), "{desc:?}");
    let mut reversed = asc.clone();
    reversed.reverse();
    assert_eq!(reversed, desc);
    let bad = http.execute(ghl, &search, &inputs(json!({"order": "newest"}))).await.unwrap_err();
    assert_eq!(bad.status(), Some(422));

    // Users: by first and last name unless sorted by dateAdded.
    let users = once(&catalog, "ghl.users.search_users");
    let names = |body: &Value| -> Vec<String> {
        body["users"].as_array().unwrap().iter().map(|u| u["firstName"].as_str().unwrap().to_owned()).collect()
    };
    let ask = |extra: Value| {
        let mut i = inputs(json!({"companyId": sandbox.company_id(), "locationId": sandbox.location_id()}));
        i.extend(inputs(extra));
        i
    };
    let by_name = names(&http.execute(ghl, &users, &ask(json!({}))).await.unwrap().body);
    let mut sorted = by_name.clone();
    sorted.sort();
    assert_eq!(by_name, sorted);
    let oldest = names(&http.execute(ghl, &users, &ask(json!({"sort": "dateAdded"}))).await.unwrap().body);
    let newest = names(
        &http.execute(ghl, &users, &ask(json!({"sort": "dateAdded", "sortDirection": "desc"}))).await.unwrap().body,
    );
    assert_eq!(oldest, ["Priya", "Tom", "Ananya", "Dana"], "the order they were added");
    assert_eq!(newest, ["Dana", "Ananya", "Tom", "Priya"]);
}

#[tokio::test]
async fn a_deal_won_long_after_it_was_created_fires_even_behind_100_newer_won_deals() {
    let ws =
        ghlflow::demo::Workspace::new(SandboxOptions { people: 20, limits_scale: 100.0, ..SandboxOptions::default() })
            .await
            .unwrap();
    let recipe = "ghl-won-deal-follow-up";
    let call = |key: &'static str, v: Value| {
        let ws = &ws;
        async move { ws.ghl_call(key, v).await.unwrap_or_else(|e| panic!("{key}: {e}")) }
    };
    // The oldest open deal: created before every deal made below.
    let oldest =
        call("ghl.opportunities.search_opportunities", json!({"status": "open", "order": "added_asc", "limit": 1}))
            .await;
    let old_id = oldest["opportunities"][0]["id"].as_str().unwrap().to_owned();
    let old_contact = oldest["opportunities"][0]["contactId"].as_str().unwrap().to_owned();
    let pipeline = oldest["opportunities"][0]["pipelineId"].as_str().unwrap().to_owned();

    // 110 newer deals, all won: more than a page of 100.
    for contact in ws.sandbox.ghl_add_contacts(110) {
        let made = call(
            "ghl.opportunities.create_opportunity",
            json!({"pipelineId": pipeline, "contactId": contact, "name": "Quick win", "status": "open"}),
        )
        .await;
        let id = made["opportunity"]["id"].as_str().unwrap().to_owned();
        call("ghl.opportunities.update_opportunity_status", json!({"id": id, "status": "won"})).await;
    }
    // The first poll takes stock (the recipe starts from now).
    let first = ws.engine.run_once(&[recipe.to_owned()]).await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let tasks_before = ws.sandbox.ghl_tasks(&old_contact).len();

    // Now the oldest deal is won: it sits behind 110 won deals already seen.
    call("ghl.opportunities.update_opportunity_status", json!({"id": old_id, "status": "won"})).await;
    let second = ws.engine.run_once(&[recipe.to_owned()]).await;
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    assert_eq!(second.polls.iter().map(|p| p.new).sum::<usize>(), 1, "{:?}", second.polls);
    let tasks = ws.sandbox.ghl_tasks(&old_contact);
    assert_eq!(tasks.len(), tasks_before + 1, "{tasks:?}");
    assert!(tasks.iter().any(|t| t["title"].as_str().unwrap().contains("(won)")), "{tasks:?}");
}

#[tokio::test]
async fn the_control_page_lists_every_route_and_each_listed_route_exists() {
    let sandbox = sandbox(10).await;
    let http = reqwest::Client::new();
    let base = sandbox.ghl_base_url();
    let info: Value = http.get(format!("{base}/_sandbox")).send().await.unwrap().json().await.unwrap();
    let routes: Vec<String> =
        info["routes"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
    assert!(routes.len() >= 15, "{routes:?}");
    let contact = sandbox.ghl_contacts()[0]["id"].as_str().unwrap().to_owned();
    let party = sandbox.capsule_people()[0].to_string();
    for line in &routes {
        let (route, what) = line.split_once(": ").unwrap();
        assert!(!what.trim().is_empty(), "{line}");
        let (method, path) = route.split_once(' ').unwrap();
        // One concrete path per listed route: the first choice of a {a,b} list, a real id.
        let id = if path.contains("/capsule/") { &party } else { &contact };
        let path = path.trim().replace("{id}", id);
        let path = match (path.find('{'), path.find('}')) {
            (Some(a), Some(b)) => format!("{}{}", &path[..a], path[a + 1..b].split(',').next().unwrap()),
            _ => path,
        };
        if path.contains("/delete") || path.contains("/merge") {
            continue; // they change what the other routes look at; tested elsewhere
        }
        let request = match method {
            "GET" => http.get(format!("{base}{path}")),
            "PUT" => http.put(format!("{base}{path}")).body("{}"),
            _ if path.ends_with("/clock/advance") => http.post(format!("{base}{path}")).body(r#"{"seconds": 1}"#),
            _ => http.post(format!("{base}{path}")).body(""),
        };
        let status = request.send().await.unwrap().status();
        assert!(status.is_success(), "{method} {path} answered {status}");
    }
    let won: Value = http
        .post(format!("{base}/_sandbox/ghl/opportunities/win"))
        .body(r#"{"count": 2}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(won["ids"].as_array().unwrap().len(), 2);
}

// ---------------------------------------------------------------------------------------
// Calendars and appointments, as the live API holds them.

/// The seed's location zone.
const CHICAGO: chrono_tz::Tz = chrono_tz::America::Chicago;

/// The live API's words for a slot it would not offer.
const SLOT_TAKEN: &str = "The slot you have selected is no longer available.";

/// A raw GHL call: the status and the JSON body (null when there is none).
async fn ghl_raw(sandbox: &Sandbox, method: &str, path: &str, version: &str, body: Option<Value>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = reqwest::Client::new()
        .request(method, format!("{}{path}", sandbox.ghl_base_url()))
        .bearer_auth("sandbox-ghl-token")
        .header("Version", version);
    if let Some(body) = body {
        r = r.json(&body);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn book(sandbox: &Sandbox, body: Value) -> (u16, Value) {
    ghl_raw(sandbox, "POST", "/calendars/events/appointments", "2021-04-15", Some(body)).await
}

async fn reschedule(sandbox: &Sandbox, id: &str, body: Value) -> (u16, Value) {
    ghl_raw(sandbox, "PUT", &format!("/calendars/events/appointments/{id}"), "2021-04-15", Some(body)).await
}

async fn appointment(sandbox: &Sandbox, id: &str) -> Value {
    let (status, body) =
        ghl_raw(sandbox, "GET", &format!("/calendars/events/appointments/{id}"), "2021-04-15", None).await;
    assert_eq!(status, 200, "{body}");
    body["event"].clone()
}

/// GET /calendars/events for the seeded calendar between two instants (RFC 3339), with
/// more query pairs.
async fn calendar_events(sandbox: &Sandbox, from: &str, to: &str, extra: &str) -> Vec<Value> {
    let ms = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis();
    let path = format!(
        "/calendars/events?locationId={}&calendarId={}&startTime={}&endTime={}{extra}",
        sandbox.location_id(),
        sandbox.ghl_calendar_id(),
        ms(from),
        ms(to)
    );
    let (status, body) = ghl_raw(sandbox, "GET", &path, "2021-04-15", None).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

/// The id of the GHL user with this email.
fn ghl_user(sandbox: &Sandbox, email: &str) -> String {
    let users = sandbox.ghl_users();
    let user = users.iter().find(|u| u["email"] == email).unwrap_or_else(|| panic!("no GHL user {email}"));
    user["id"].as_str().unwrap().to_owned()
}

const DANA: &str = "dana.whitfield@sandbox-agency.example";
const ANANYA: &str = "ananya.iyer@sandbox-agency.example";

/// A booking of the seeded calendar, with more fields.
fn booking(sandbox: &Sandbox, contact: &str, user: &str, start: &str, extra: Value) -> Value {
    let mut body = json!({
        "calendarId": sandbox.ghl_calendar_id(), "locationId": sandbox.location_id(), "contactId": contact,
        "assignedUserId": user, "startTime": start,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// A Monday to Friday at least a week after today, in Chicago.
fn weekday_ahead() -> chrono::NaiveDate {
    use chrono::Datelike;
    let mut day = chrono::Utc::now().with_timezone(&CHICAGO).date_naive() + chrono::Days::new(8);
    while day.weekday().num_days_from_monday() > 4 {
        day = day.succ_opt().unwrap();
    }
    day
}

/// A wall time in Chicago with its offset that day, e.g. `2026-12-09T10:00:00-06:00`.
fn chicago(day: chrono::NaiveDate, hour: u32, minute: u32) -> String {
    use chrono::TimeZone;
    let t = CHICAGO.from_local_datetime(&day.and_hms_opt(hour, minute, 0).unwrap()).unwrap();
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// The free slots `free-slots` offers on a Chicago day.
async fn free_slots(sandbox: &Sandbox, day: chrono::NaiveDate) -> Vec<Value> {
    let ms = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis();
    let path = format!(
        "/calendars/{}/free-slots?startDate={}&endDate={}",
        sandbox.ghl_calendar_id(),
        ms(&chicago(day, 0, 0)),
        ms(&chicago(day, 23, 59))
    );
    let (status, body) = ghl_raw(sandbox, "GET", &path, "2021-04-15", None).await;
    assert_eq!(status, 200, "{body}");
    body[day.format("%Y-%m-%d").to_string()]["slots"].as_array().cloned().unwrap_or_default()
}

fn message(body: &Value) -> String {
    match &body["message"] {
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "),
        other => other.as_str().unwrap_or_default().to_owned(),
    }
}

#[tokio::test]
async fn a_booking_needs_a_calendar_a_user_of_the_location_a_contact_and_a_time_with_an_offset() {
    let sandbox = sandbox(5).await;
    let contact = sandbox.ghl_add_contacts(1).remove(0);
    let dana = ghl_user(&sandbox, DANA);
    let start = chicago(weekday_ahead(), 10, 0);
    let seeded = sandbox.ghl_appointments().len();

    let refused = [
        (json!({"calendarId": "noSuchCalendar000000"}), 400, "Calendar not found"),
        (json!({"assignedUserId": null}), 400, "assignedUserId must be set"),
        (json!({"assignedUserId": ""}), 400, "assignedUserId must be set"),
        (json!({"assignedUserId": "noSuchUser0000000000"}), 401, "The user does not exist."),
        (json!({"contactId": "noSuchContact0000000"}), 400, "Contact not found"),
        // A bare local time names no zone: refused rather than guessed.
        (json!({"startTime": start[..19].to_owned()}), 422, "startTime must be a valid ISO 8601"),
        (json!({"startTime": "next Tuesday"}), 422, "startTime must be a valid ISO 8601"),
        (json!({"endTime": "10:30"}), 422, "endTime must be a valid ISO 8601"),
        (json!({"appointmentStatus": "booked"}), 422, "appointmentStatus must be one of the following values"),
        // `userId` is undocumented, so not in the catalog: an unknown property.
        (json!({"userId": dana}), 422, "property userId should not exist"),
        (json!({"endTime": chicago(weekday_ahead(), 9, 30)}), 400, "endTime must be after startTime"),
    ];
    for (extra, status, words) in refused {
        let mut body = booking(&sandbox, &contact, &dana, &start, extra.clone());
        if extra.get("assignedUserId") == Some(&Value::Null) {
            body.as_object_mut().unwrap().remove("assignedUserId");
        }
        let (code, answer) = book(&sandbox, body).await;
        assert_eq!(code, status, "{extra}: {answer}");
        assert!(message(&answer).contains(words), "{extra}: {answer}");
    }
    assert_eq!(sandbox.ghl_appointments().len(), seeded, "nothing was booked");

    // All in order: booked, 200 (not 201), with the calendar's 30 minutes as the end.
    let (code, answer) =
        book(&sandbox, booking(&sandbox, &contact, &dana, &start, json!({"appointmentStatus": "confirmed"}))).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["startTime"], json!(start));
    assert_eq!(answer["endTime"], json!(chicago(weekday_ahead(), 10, 30)));
    assert_eq!(
        (answer["appointmentStatus"].as_str(), answer["assignedUserId"].as_str()),
        (Some("confirmed"), Some(dana.as_str()))
    );
    assert_eq!(sandbox.ghl_appointments().len(), seeded + 1);
}

#[tokio::test]
async fn slots_must_be_open_free_and_ahead_unless_validation_is_switched_off() {
    let sandbox = sandbox(5).await;
    let contact = sandbox.ghl_add_contacts(1).remove(0);
    let dana = ghl_user(&sandbox, DANA);
    let day = weekday_ahead();
    let at = |h, m| chicago(day, h, m);
    // Free slots: every half hour from 09:00 to 16:30, Chicago time.
    let slots = free_slots(&sandbox, day).await;
    assert_eq!(slots.len(), 16, "{slots:?}");
    assert_eq!((slots[0].as_str(), slots[15].as_str()), (Some(at(9, 0).as_str()), Some(at(16, 30).as_str())));

    let (code, first) = book(&sandbox, booking(&sandbox, &contact, &dana, &at(10, 0), json!({}))).await;
    assert_eq!(code, 200, "{first}");
    let slots = free_slots(&sandbox, day).await;
    assert_eq!(slots.len(), 15);
    assert!(!slots.contains(&json!(at(10, 0))), "a booked slot is no longer offered");

    let saturday = {
        use chrono::Datelike;
        let mut d = day;
        while d.weekday() != chrono::Weekday::Sat {
            d = d.succ_opt().unwrap();
        }
        d
    };
    let past = {
        use chrono::Datelike;
        let mut d = chrono::Utc::now().with_timezone(&CHICAGO).date_naive() - chrono::Days::new(14);
        while d.weekday().num_days_from_monday() > 4 {
            d = d.pred_opt().unwrap();
        }
        chicago(d, 11, 0)
    };
    for (start, why) in [
        (at(10, 0), "taken"),
        (at(9, 45), "overlaps the 10:00 booking"),
        (at(11, 15), "off the half-hour grid"),
        (at(8, 30), "before opening"),
        (at(16, 45), "runs past closing"),
        (at(17, 0), "at closing"),
        (chicago(saturday, 10, 0), "on a Saturday"),
        (past.clone(), "in the past"),
    ] {
        let (code, answer) = book(&sandbox, booking(&sandbox, &contact, &dana, &start, json!({}))).await;
        assert_eq!((code, message(&answer)), (400, SLOT_TAKEN.to_owned()), "{start} ({why})");
    }
    // ignoreDateRange lets a past slot through, but only an open one.
    let (code, answer) =
        book(&sandbox, booking(&sandbox, &contact, &dana, &past, json!({"ignoreDateRange": true}))).await;
    assert_eq!(code, 200, "{answer}");
    let night = past.replace("T11:00", "T22:00");
    let (code, _) = book(&sandbox, booking(&sandbox, &contact, &dana, &night, json!({"ignoreDateRange": true}))).await;
    assert_eq!(code, 400, "closed hours still count with ignoreDateRange");
    // ignoreFreeSlotValidation books anything: a taken slot, a Saturday night.
    for start in [at(10, 0), chicago(saturday, 22, 0)] {
        let (code, answer) =
            book(&sandbox, booking(&sandbox, &contact, &dana, &start, json!({"ignoreFreeSlotValidation": true}))).await;
        assert_eq!(code, 200, "{start}: {answer}");
    }

    // A cancelled appointment frees its slot; a move into a taken slot is refused like a booking.
    let (_, second) = book(&sandbox, booking(&sandbox, &contact, &dana, &at(13, 0), json!({}))).await;
    let second = second["id"].as_str().unwrap().to_owned();
    let (code, _) = book(&sandbox, booking(&sandbox, &contact, &dana, &at(13, 0), json!({}))).await;
    assert_eq!(code, 400);
    let (code, _) = reschedule(&sandbox, &second, json!({"appointmentStatus": "cancelled"})).await;
    assert_eq!(code, 200);
    let (code, third) = book(&sandbox, booking(&sandbox, &contact, &dana, &at(13, 0), json!({}))).await;
    assert_eq!(code, 200, "{third}");
    let third = third["id"].as_str().unwrap().to_owned();
    let (code, answer) = reschedule(&sandbox, &third, json!({"startTime": at(10, 0)})).await;
    assert_eq!((code, message(&answer)), (400, SLOT_TAKEN.to_owned()));
    assert_eq!(appointment(&sandbox, &third).await["startTime"], json!(at(13, 0)), "a refused move changes nothing");
    let (code, _) = reschedule(&sandbox, &third, json!({"startTime": at(14, 0)})).await;
    assert_eq!(code, 200, "a free slot");
    let (code, _) =
        reschedule(&sandbox, &third, json!({"startTime": at(10, 0), "ignoreFreeSlotValidation": true})).await;
    assert_eq!(code, 200);
    // A change that keeps the time is not judged again, though the slot is now doubly taken.
    let (code, _) = reschedule(&sandbox, &third, json!({"title": "Renamed"})).await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn times_keep_their_offsets_and_are_shown_in_the_location_zone() {
    let sandbox = sandbox(5).await;
    let contact = sandbox.ghl_add_contacts(1).remove(0);
    let (dana, ananya) = (ghl_user(&sandbox, DANA), ghl_user(&sandbox, ANANYA));
    // The recipe's bookings: past dates, so slot validation is off.
    let off = json!({"ignoreFreeSlotValidation": true, "toNotify": false});

    // Kolkata's +05:30: 19:30 there is 14:00Z, 09:00 in Chicago (already on CDT, -05:00).
    let (code, kolkata) =
        book(&sandbox, booking(&sandbox, &contact, &ananya, "2026-03-09T19:30:00+05:30", off.clone())).await;
    assert_eq!(code, 200, "{kolkata}");
    assert_eq!(kolkata["startTime"], "2026-03-09T19:30:00+05:30", "echoed as sent");
    assert_eq!(kolkata["endTime"], "2026-03-09T20:00:00+05:30", "the slot's 30 minutes, same offset");
    let shown = appointment(&sandbox, kolkata["id"].as_str().unwrap()).await;
    assert_eq!(
        (shown["startTime"].as_str(), shown["endTime"].as_str()),
        (Some("2026-03-09T09:00:00-05:00"), Some("2026-03-09T09:30:00-05:00"))
    );

    // New York before and after its change to daylight time on 2026-03-08: Chicago's offset
    // changes the same night.
    let (_, before) =
        book(&sandbox, booking(&sandbox, &contact, &dana, "2026-03-06T10:00:00-05:00", off.clone())).await;
    let before_id = before["id"].as_str().unwrap().to_owned();
    assert_eq!(appointment(&sandbox, &before_id).await["startTime"], "2026-03-06T09:00:00-06:00");
    // Moved across the change with only a new start: same length, the new start's offset.
    let (code, moved) = reschedule(
        &sandbox,
        &before_id,
        json!({"startTime": "2026-03-09T11:00:00-04:00", "ignoreFreeSlotValidation": true}),
    )
    .await;
    assert_eq!(code, 200, "{moved}");
    assert_eq!(
        (moved["startTime"].as_str(), moved["endTime"].as_str()),
        (Some("2026-03-09T11:00:00-04:00"), Some("2026-03-09T11:30:00-04:00"))
    );
    let shown = appointment(&sandbox, &before_id).await;
    assert_eq!(
        (shown["startTime"].as_str(), shown["endTime"].as_str()),
        (Some("2026-03-09T10:00:00-05:00"), Some("2026-03-09T10:30:00-05:00"))
    );

    // An appointment over the change itself: 01:30 EST to 03:30 EDT is one hour.
    let (code, night) = book(
        &sandbox,
        booking(
            &sandbox,
            &contact,
            &dana,
            "2026-03-08T01:30:00-05:00",
            json!({"endTime": "2026-03-08T03:30:00-04:00", "ignoreFreeSlotValidation": true}),
        ),
    )
    .await;
    assert_eq!(code, 200, "{night}");
    assert_eq!(
        (night["startTime"].as_str(), night["endTime"].as_str()),
        (Some("2026-03-08T01:30:00-05:00"), Some("2026-03-08T03:30:00-04:00"))
    );
    let shown = appointment(&sandbox, night["id"].as_str().unwrap()).await;
    assert_eq!(
        (shown["startTime"].as_str(), shown["endTime"].as_str()),
        (Some("2026-03-08T00:30:00-06:00"), Some("2026-03-08T01:30:00-06:00"))
    );

    // Z stays Z in the echo.
    let (_, utc) = book(&sandbox, booking(&sandbox, &contact, &dana, "2026-03-10T15:00:00Z", off.clone())).await;
    assert_eq!(
        (utc["startTime"].as_str(), utc["endTime"].as_str()),
        (Some("2026-03-10T15:00:00Z"), Some("2026-03-10T15:30:00Z"))
    );

    // The event list and the contact's appointments agree on the instants.
    let listed = calendar_events(&sandbox, "2026-03-08T00:00:00Z", "2026-03-11T00:00:00Z", "").await;
    let starts: Vec<&str> = listed.iter().filter_map(|e| e["startTime"].as_str()).collect();
    assert_eq!(starts.len(), 4, "{starts:?}");
    for t in [
        "2026-03-09T09:00:00-05:00",
        "2026-03-09T10:00:00-05:00",
        "2026-03-08T00:30:00-06:00",
        "2026-03-10T10:00:00-05:00",
    ] {
        assert!(starts.contains(&t), "{t} not in {starts:?}");
    }
    let (code, body) = ghl_raw(&sandbox, "GET", &format!("/contacts/{contact}/appointments"), "2021-07-28", None).await;
    assert_eq!(code, 200, "{body}");
    let mut plain: Vec<(String, String)> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["startTime"].as_str().unwrap().to_owned(), e["endTime"].as_str().unwrap().to_owned()))
        .collect();
    plain.sort();
    let expected = [
        ("2026-03-08 00:30:00", "2026-03-08 01:30:00"),
        ("2026-03-09 09:00:00", "2026-03-09 09:30:00"),
        ("2026-03-09 10:00:00", "2026-03-09 10:30:00"),
        ("2026-03-10 10:00:00", "2026-03-10 10:30:00"),
    ];
    assert_eq!(plain, expected.map(|(a, b)| (a.to_owned(), b.to_owned())), "YYYY-MM-DD HH:mm:ss in Chicago");
}

#[tokio::test]
async fn appointments_show_up_in_the_contacts_appointments_and_the_calendars_events() {
    let sandbox = sandbox(5).await;
    let contact = sandbox.ghl_add_contacts(1).remove(0);
    let (dana, ananya) = (ghl_user(&sandbox, DANA), ghl_user(&sandbox, ANANYA));
    let off = json!({"ignoreFreeSlotValidation": true, "toNotify": false});
    let with = |description: &str| {
        let mut v = off.clone();
        v["description"] = json!(description);
        v["title"] = json!("Quarterly review");
        v
    };
    let (_, kept) = book(
        &sandbox,
        booking(&sandbox, &contact, &dana, "2026-04-14T10:00:00-04:00", with("Agenda\n[capsule task 123]")),
    )
    .await;
    let (_, dropped) =
        book(&sandbox, booking(&sandbox, &contact, &ananya, "2026-04-15T19:30:00+05:30", with("[capsule task 456]")))
            .await;
    let (kept, dropped) = (kept["id"].as_str().unwrap().to_owned(), dropped["id"].as_str().unwrap().to_owned());
    let (code, answer) =
        reschedule(&sandbox, &dropped, json!({"appointmentStatus": "cancelled", "toNotify": false})).await;
    assert_eq!((code, answer["appointmentStatus"].as_str()), (200, Some("cancelled")));

    // The calendar's events: both, cancelled included, with the description as sent.
    let events = calendar_events(&sandbox, "2026-04-13T00:00:00Z", "2026-04-20T00:00:00Z", "").await;
    let by_id = |events: &[Value], id: &str| events.iter().find(|e| e["id"] == id).cloned();
    let found = by_id(&events, &kept).unwrap();
    assert_eq!(
        (found["description"].as_str(), found["notes"].as_str()),
        (Some("Agenda\n[capsule task 123]"), Some(""))
    );
    assert_eq!(found["contactId"], json!(contact));
    assert_eq!(by_id(&events, &dropped).unwrap()["appointmentStatus"], "cancelled");
    assert!(events.iter().any(|e| e["description"].as_str().is_some_and(|d| d.contains("[capsule task 456]"))));
    // Filtered by user, and by the window.
    let danas =
        calendar_events(&sandbox, "2026-04-13T00:00:00Z", "2026-04-20T00:00:00Z", &format!("&userId={dana}")).await;
    assert_eq!(danas.iter().map(|e| e["id"].as_str().unwrap()).collect::<Vec<_>>(), [kept.as_str()]);
    let early = calendar_events(&sandbox, "2026-04-13T00:00:00Z", "2026-04-14T14:00:00Z", "").await;
    assert!(early.is_empty(), "10:00 EDT is 14:00Z: a window ending then holds nothing");
    let (code, _) = ghl_raw(
        &sandbox,
        "GET",
        &format!("/calendars/events?locationId={}&startTime=1&endTime=2", sandbox.location_id()),
        "2021-04-15",
        None,
    )
    .await;
    assert_eq!(code, 422, "one of calendarId, userId or groupId is needed");
    assert_eq!(appointment(&sandbox, &kept).await["description"], "Agenda\n[capsule task 123]");

    // The contact's appointments: both, with their statuses; notes empty and no description.
    let (code, body) = ghl_raw(&sandbox, "GET", &format!("/contacts/{contact}/appointments"), "2021-07-28", None).await;
    assert_eq!(code, 200, "{body}");
    let mine = body["events"].as_array().unwrap();
    let statuses: std::collections::BTreeMap<&str, &str> =
        mine.iter().map(|e| (e["id"].as_str().unwrap(), e["appointmentStatus"].as_str().unwrap())).collect();
    assert_eq!(statuses, [(kept.as_str(), "new"), (dropped.as_str(), "cancelled")].into_iter().collect());
    assert!(mine.iter().all(|e| e["notes"] == "" && e.get("description").is_none()), "{mine:?}");
    // Another contact's list does not hold them.
    let other = sandbox.ghl_add_contacts(1).remove(0);
    let (_, body) = ghl_raw(&sandbox, "GET", &format!("/contacts/{other}/appointments"), "2021-07-28", None).await;
    assert_eq!(body["events"], json!([]));
}

#[tokio::test]
async fn to_notify_false_is_remembered_and_updates_check_what_they_change() {
    let sandbox = sandbox(5).await;
    let contact = sandbox.ghl_add_contacts(1).remove(0);
    let dana = ghl_user(&sandbox, DANA);
    let day = weekday_ahead();
    let notified = |sandbox: &Sandbox, id: &str| {
        let all = sandbox.ghl_appointments();
        all.iter().find(|a| a["id"] == id).map(|a| a["notified"].as_bool().unwrap())
    };
    let (_, quiet) =
        book(&sandbox, booking(&sandbox, &contact, &dana, &chicago(day, 9, 0), json!({"toNotify": false}))).await;
    let (_, loud) = book(&sandbox, booking(&sandbox, &contact, &dana, &chicago(day, 11, 0), json!({}))).await;
    let (quiet, loud) = (quiet["id"].as_str().unwrap().to_owned(), loud["id"].as_str().unwrap().to_owned());
    assert_eq!((notified(&sandbox, &quiet), notified(&sandbox, &loud)), (Some(false), Some(true)));

    // Quiet changes keep it quiet; a change without toNotify: false would notify.
    let (code, answer) = reschedule(&sandbox, &quiet, json!({"appointmentStatus": "showed", "toNotify": false})).await;
    assert_eq!((code, answer["appointmentStatus"].as_str()), (200, Some("showed")));
    assert_eq!(notified(&sandbox, &quiet), Some(false));

    // Statuses outside the list and unknown ids are refused; a refused change changes nothing.
    let (code, answer) = reschedule(&sandbox, &quiet, json!({"appointmentStatus": "done", "toNotify": false})).await;
    assert_eq!(code, 422, "{answer}");
    assert!(message(&answer).contains("appointmentStatus must be one of the following values"), "{answer}");
    let (code, answer) = reschedule(&sandbox, "noSuchEvent000000000", json!({"title": "x"})).await;
    assert_eq!((code, message(&answer)), (400, "Appointment not found".to_owned()));
    let (code, _) =
        reschedule(&sandbox, &quiet, json!({"assignedUserId": "noSuchUser0000000000", "toNotify": false})).await;
    assert_eq!(code, 401);
    let (code, _) = reschedule(&sandbox, &quiet, json!({"startTime": "2026-12-01T10:00:00", "toNotify": false})).await;
    assert_eq!(code, 422, "a bare local time");
    assert_eq!(appointment(&sandbox, &quiet).await["appointmentStatus"], "showed");

    // A new start alone keeps the length (here 90 minutes), in the new start's offset.
    let (code, _) = reschedule(&sandbox, &loud, json!({"endTime": chicago(day, 12, 30)})).await;
    assert_eq!(code, 200);
    // 14:00 in Chicago, sent in UTC: the answer echoes Z, the event shows Chicago.
    let utc = |t: String| {
        let t = chrono::DateTime::parse_from_rfc3339(&t).unwrap().with_timezone(&chrono::Utc);
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let (code, moved) = reschedule(&sandbox, &loud, json!({"startTime": utc(chicago(day, 14, 0))})).await;
    assert_eq!(code, 200, "{moved}");
    assert_eq!(moved["startTime"], json!(utc(chicago(day, 14, 0))));
    assert_eq!(moved["endTime"], json!(utc(chicago(day, 15, 30))), "the 90 minutes kept");
    assert!(moved["endTime"].as_str().unwrap().ends_with('Z'));
    let shown = appointment(&sandbox, &loud).await;
    assert_eq!(shown["startTime"], json!(chicago(day, 14, 0)));
    assert_eq!(shown["endTime"], json!(chicago(day, 15, 30)));
    let (code, answer) =
        reschedule(&sandbox, &loud, json!({"description": "[capsule task 9]", "toNotify": false})).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(appointment(&sandbox, &loud).await["description"], "[capsule task 9]");
    assert_eq!(notified(&sandbox, &loud), Some(true), "notified once stays notified");
}

#[tokio::test]
async fn capsule_meetings_move_change_category_complete_and_vanish_and_users_have_email_parties() {
    let sandbox = sandbox(10).await;
    let http = reqwest::Client::new();
    let capsule = sandbox.capsule_base_url();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(path).bearer_auth("t").send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Every Capsule user's party exists, with a work email; two of them are GHL users.
    let (_, users) = get(format!("{capsule}/users")).await;
    let ghl_emails: Vec<String> = sandbox.ghl_users().iter().map(|u| u["email"].as_str().unwrap().to_owned()).collect();
    let mut matched = Vec::new();
    for u in users["users"].as_array().unwrap() {
        let (code, party) = get(format!("{capsule}/parties/{}", u["party"]["id"])).await;
        assert_eq!(code, 200, "user {}'s party", u["username"]);
        let email = party["party"]["emailAddresses"][0]["address"].as_str().unwrap().to_owned();
        if ghl_emails.contains(&email) {
            matched.push(u["id"].as_i64().unwrap());
        }
    }
    matched.sort();
    assert_eq!(matched, [1_187_342, 1_201_876], "Ananya and Dana, not Marta or Sofia");
    // The control API's picks leave the users' parties alone.
    let user_parties: Vec<i64> =
        users["users"].as_array().unwrap().iter().map(|u| u["party"]["id"].as_i64().unwrap()).collect();
    assert!(sandbox.capsule_people().iter().all(|p| !user_parties.contains(p)));
    let edited = sandbox.capsule_edit_people(100);
    assert_eq!(edited.len(), 10, "the 10 seeded people, not the users' parties");
    assert!(edited.iter().all(|p| !user_parties.contains(p)));

    let party = sandbox.capsule_people()[3];
    let task = |id: i64| get(format!("{capsule}/tasks/{id}"));
    let id = sandbox.capsule_add_meeting(party, 1_201_876, "2026-12-14", "10:00:00", "Meeting");
    let (_, t) = task(id).await;
    let t = &t["task"];
    assert_eq!(
        (t["category"]["name"].as_str(), t["dueOn"].as_str(), t["dueTime"].as_str()),
        (Some("Meeting"), Some("2026-12-14"), Some("10:00:00"))
    );
    assert_eq!(
        (t["owner"]["id"].as_i64(), t["party"]["id"].as_i64(), t["status"].as_str()),
        (Some(1_201_876), Some(party), Some("OPEN"))
    );
    let updated = t["updatedAt"].as_str().unwrap().to_owned();

    assert!(sandbox.capsule_move_task(id, "2026-12-15", "15:30:00"));
    let (_, t) = task(id).await;
    assert_eq!((t["task"]["dueOn"].as_str(), t["task"]["dueTime"].as_str()), (Some("2026-12-15"), Some("15:30:00")));
    let moved = t["task"]["updatedAt"].as_str().unwrap().to_owned();
    assert!(moved > updated, "{moved} after {updated}");

    assert!(sandbox.capsule_set_task_category(id, "Call"));
    assert!(!sandbox.capsule_set_task_category(id, "No such category"));
    assert!(!sandbox.capsule_move_task(1, "2026-12-15", "15:30:00"), "no task 1");
    let (_, t) = task(id).await;
    assert_eq!(t["task"]["category"]["name"], "Call");
    assert!(t["task"]["updatedAt"].as_str().unwrap() > moved.as_str());

    let entries = sandbox.capsule_counts().entries;
    assert!(sandbox.capsule_complete_task(id));
    assert!(!sandbox.capsule_complete_task(id), "already completed");
    let (_, t) = task(id).await;
    assert_eq!(t["task"]["status"], "COMPLETED");
    assert_eq!(sandbox.capsule_counts().entries, entries + 1, "a Task completed entry");

    let gone = sandbox.capsule_add_meeting(party, 1_187_342, "2026-12-16", "19:30:00", "Meeting");
    let uncategorised = sandbox.capsule_add_meeting(party, 1_187_342, "2026-12-16", "19:30:00", "Nope");
    assert_eq!(task(uncategorised).await.1["task"]["category"], Value::Null);
    assert!(sandbox.capsule_delete_task(gone));
    assert!(!sandbox.capsule_delete_task(gone));
    assert_eq!(task(gone).await.0, 404);
    let listed: Vec<i64> = capsule_pages(&sandbox, "/tasks?status=open,completed,pending&perPage=100")
        .await
        .iter()
        .flat_map(|b| b["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_i64().unwrap()).collect::<Vec<_>>())
        .collect();
    assert!(listed.contains(&id) && listed.contains(&uncategorised) && !listed.contains(&gone));
}

/// The request log: every API request in arrival order, with the budget it counts against,
/// its status, and a write's body; the token endpoint and a refused token reach no budget.
#[tokio::test]
async fn the_request_log_records_every_api_request_with_its_budget_and_status() {
    let sandbox =
        sandbox::start(SandboxOptions { people: 5, limits_scale: 0.02, ..SandboxOptions::default() }).await.unwrap();
    let raw = reqwest::Client::new();
    let ghl = sandbox.ghl_base_url();
    let search = |token: &'static str| {
        raw.post(format!("{ghl}/contacts/search"))
            .bearer_auth(token)
            .header("Version", "2021-07-28")
            .json(&json!({"locationId": sandbox.location_id(), "pageLimit": 1}))
            .send()
    };
    // Two in the GHL budget (100 × 0.02 per 10 s), the third refused with a 429.
    for _ in 0..3 {
        search("sandbox-ghl-token").await.unwrap();
    }
    let capsule = raw.get(format!("{}/users?perPage=1", sandbox.capsule_base_url())).bearer_auth("cap-token");
    assert_eq!(capsule.send().await.unwrap().status().as_u16(), 200);
    let refused = raw.get(format!("{ghl}/users/?locationId={}", sandbox.location_id())).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let token = raw.post(format!("{ghl}/oauth/token")).form(&[("grant_type", "refresh_token")]).send();
    assert_eq!(token.await.unwrap().status().as_u16(), 401);
    let now = sandbox.elapsed_ms();

    let log = sandbox.request_log();
    assert_eq!(log.len(), 6, "{log:#?}");
    let seen: Vec<(sandbox::Api, Option<&str>, &str, &str, u16)> = log
        .iter()
        .map(|r| (r.api, r.counts_against.as_deref(), r.method.as_str(), r.path.as_str(), r.status))
        .collect();
    let location = Some(sandbox.location_id());
    assert_eq!(
        seen,
        [
            (sandbox::Api::Ghl, location, "POST", "/contacts/search", 200),
            (sandbox::Api::Ghl, location, "POST", "/contacts/search", 200),
            (sandbox::Api::Ghl, location, "POST", "/contacts/search", 429),
            (sandbox::Api::Capsule, Some("cap-token"), "GET", "/api/v2/users", 200),
            (sandbox::Api::Ghl, None, "GET", "/users/", 401),
            (sandbox::Api::Ghl, None, "POST", "/oauth/token", 401),
        ]
    );
    assert_eq!(log[3].query.as_deref(), Some("perPage=1"));
    // A write keeps its body, a read none; times only move forward and end before now.
    let body: Value = serde_json::from_str(log[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(body["pageLimit"], 1);
    assert!(log[3].body.is_none() && !log[0].body_cut);
    assert!(log.windows(2).all(|w| w[0].at_ms <= w[1].at_ms) && log[5].at_ms <= now);
}
