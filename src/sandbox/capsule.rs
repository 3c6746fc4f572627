//! The Capsule side: parties, entries, tasks, users and countries, served read-only under
//! `/api/v2` the way Capsule pages them (`page`/`perPage` and a `Link` header), and changed
//! only through the control API (edits, deletions, new people, completed tasks).

use std::collections::BTreeMap;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};

use super::clock::{Ms, iso_sec, parse_iso};
use super::push::{self, CapsuleRecord};
use super::seed::COUNTRIES;
use super::state::State;
use super::wire::{ApiRequest, Reply};

const PERSON_PICTURE: &str = "https://capsulecrm.com/theme/default/images/person_avatar_70.png";
const ORG_PICTURE: &str = "https://capsulecrm.com/theme/default/images/org_avatar_70.png";

/// The largest page Capsule serves; larger `perPage` values are clamped to it.
const MAX_PER_PAGE: usize = 100;
const DEFAULT_PER_PAGE: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartyKind {
    Person,
    Organisation,
}

#[derive(Debug, Clone)]
pub struct Email {
    pub id: i64,
    pub kind: Option<String>,
    pub address: String,
}

#[derive(Debug, Clone)]
pub struct Phone {
    pub id: i64,
    pub kind: Option<String>,
    pub number: String,
}

#[derive(Debug, Clone)]
pub struct Address {
    pub id: i64,
    pub kind: Option<String>,
    pub street: String,
    pub city: String,
    pub state: Option<String>,
    pub country: String,
    pub zip: String,
}

#[derive(Debug, Clone)]
pub struct Website {
    pub id: i64,
    pub kind: Option<String>,
    pub service: String,
    pub address: String,
    pub url: String,
}

#[derive(Debug, Clone)]
pub struct FieldValue {
    pub id: i64,
    pub definition: i64,
    pub value: String,
}

#[derive(Debug, Clone)]
pub struct Party {
    pub id: i64,
    pub kind: PartyKind,
    pub title: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Organisations only.
    pub name: Option<String>,
    pub job_title: Option<String>,
    pub about: Option<String>,
    pub organisation: Option<i64>,
    pub owner: Option<i64>,
    pub created: Ms,
    pub updated: Ms,
    pub last_contacted: Option<Ms>,
    pub emails: Vec<Email>,
    pub phones: Vec<Phone>,
    pub addresses: Vec<Address>,
    pub websites: Vec<Website>,
    pub tags: Vec<i64>,
    pub fields: Vec<FieldValue>,
}

impl Party {
    pub fn display_name(&self) -> String {
        match self.kind {
            PartyKind::Organisation => self.name.clone().unwrap_or_default(),
            PartyKind::Person => {
                let parts: Vec<&str> =
                    [self.first_name.as_deref(), self.last_name.as_deref()].into_iter().flatten().collect();
                parts.join(" ")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Note,
    Email,
    /// The record of a completed task.
    Task,
}

#[derive(Debug, Clone)]
pub struct Participant {
    pub id: i64,
    pub address: String,
    pub name: String,
    pub role: &'static str,
}

#[derive(Debug, Clone)]
pub struct Attachment {
    pub id: i64,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: i64,
    pub kind: EntryKind,
    pub subject: Option<String>,
    pub content: String,
    pub entry_at: Ms,
    pub created: Ms,
    pub updated: Ms,
    pub creator: i64,
    pub party: i64,
    pub participants: Vec<Participant>,
    pub attachments: Vec<Attachment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Open,
    Completed,
    Pending,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Open => "OPEN",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Pending => "PENDING",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "open" => Some(TaskStatus::Open),
            "completed" => Some(TaskStatus::Completed),
            "pending" => Some(TaskStatus::Pending),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: i64,
    pub description: String,
    pub detail: Option<String>,
    pub category: Option<usize>,
    pub status: TaskStatus,
    pub party: Option<i64>,
    pub owner: i64,
    pub created: Ms,
    pub updated: Ms,
    /// `YYYY-MM-DD`.
    pub due_on: String,
    /// `HH:MM:SS` in the owner's time zone.
    pub due_time: Option<String>,
    pub completed_at: Option<Ms>,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
    pub timezone: String,
    pub locale: String,
    pub currency: String,
    pub party: i64,
    pub last_login: Ms,
}

impl User {
    pub fn name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }
}

#[derive(Debug, Clone)]
pub struct Tag {
    pub id: i64,
    pub name: String,
    pub data_tag: bool,
}

#[derive(Debug, Clone)]
pub struct FieldDefinition {
    pub id: i64,
    pub name: String,
    pub kind: &'static str,
    pub options: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Category {
    pub id: i64,
    pub name: String,
    pub colour: String,
}

/// Everything the Capsule account holds.
#[derive(Debug, Clone, Default)]
pub struct CapsuleData {
    pub users: Vec<User>,
    pub parties: BTreeMap<i64, Party>,
    /// Deleted parties: id and when.
    pub deleted: Vec<(i64, Ms)>,
    /// Parties that still exist but that the token's user may no longer see (restricted
    /// to other teams), with their kind: `/parties/deleted` lists them as `restrictedParties`.
    pub restricted: BTreeMap<i64, PartyKind>,
    pub entries: BTreeMap<i64, Entry>,
    pub tasks: BTreeMap<i64, Task>,
    pub tags: Vec<Tag>,
    pub field_definitions: Vec<FieldDefinition>,
    pub categories: Vec<Category>,
    pub next_party_id: i64,
    pub next_entry_id: i64,
    pub next_task_id: i64,
    /// Ids of emails, phones, addresses, websites, field values, participants, attachments.
    pub next_item_id: i64,
}

impl CapsuleData {
    pub fn item_id(&mut self) -> i64 {
        self.next_item_id += 1;
        self.next_item_id
    }

    pub fn people(&self) -> impl Iterator<Item = &Party> {
        self.parties.values().filter(|p| p.kind == PartyKind::Person)
    }

    /// The people other than the users' own parties: the ones the control API edits,
    /// deletes and adds to (a user's party stays put, so the owner's email stays readable).
    pub fn contacts(&self) -> impl Iterator<Item = &Party> {
        self.people().filter(|p| !self.users.iter().any(|u| u.party == p.id))
    }

    fn user(&self, id: i64) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    // -----------------------------------------------------------------------------------
    // JSON, as Capsule writes it.

    fn user_short(&self, id: i64) -> Value {
        match self.user(id) {
            Some(u) => json!({
                "id": u.id,
                "username": u.username,
                "name": u.name(),
                "pictureURL": format!(
                    "https://facehub.appspot.com/default/person?text={}&size=100",
                    utf8_percent_encode(&initials(&u.name()), NON_ALPHANUMERIC)
                ),
                "deleted": false,
            }),
            None => Value::Null,
        }
    }

    fn user_json(&self, u: &User, embed_party: bool) -> Value {
        let mut v = json!({
            "id": u.id,
            "username": u.username,
            "name": u.name(),
            "status": "ACTIVE",
            "locale": u.locale,
            "currency": u.currency,
            "timezone": u.timezone,
            "lastLoginAt": iso_sec(u.last_login),
            "taskReminder": true,
        });
        let party = if embed_party {
            json!({"id": u.party, "type": "person", "firstName": u.first_name, "lastName": u.last_name,
                   "pictureURL": PERSON_PICTURE})
        } else {
            json!({"id": u.party})
        };
        v["party"] = party;
        v
    }

    /// The short form used inside other records.
    pub fn party_short(&self, id: i64) -> Value {
        match self.parties.get(&id) {
            Some(p) => match p.kind {
                PartyKind::Person => json!({
                    "id": p.id, "type": "person", "firstName": p.first_name, "lastName": p.last_name,
                    "pictureURL": PERSON_PICTURE,
                }),
                PartyKind::Organisation => {
                    json!({"id": p.id, "type": "organisation", "name": p.name, "pictureURL": ORG_PICTURE})
                }
            },
            None => json!({"id": id}),
        }
    }

    pub fn party_json(&self, p: &Party, embed: &Embed) -> Value {
        let mut v = Map::new();
        v.insert("id".into(), json!(p.id));
        v.insert(
            "type".into(),
            json!(match p.kind {
                PartyKind::Person => "person",
                PartyKind::Organisation => "organisation",
            }),
        );
        v.insert("about".into(), json!(p.about));
        match p.kind {
            PartyKind::Person => {
                v.insert("title".into(), json!(p.title));
                v.insert("firstName".into(), json!(p.first_name));
                v.insert("lastName".into(), json!(p.last_name));
                v.insert("jobTitle".into(), json!(p.job_title));
            }
            PartyKind::Organisation => {
                v.insert("name".into(), json!(p.name));
            }
        }
        v.insert("createdAt".into(), json!(iso_sec(p.created)));
        v.insert("updatedAt".into(), json!(iso_sec(p.updated)));
        if p.kind == PartyKind::Person {
            let org = match p.organisation.and_then(|id| self.parties.get(&id)) {
                Some(org) if embed.has("organisation") => self.party_json(org, &Embed::default()),
                Some(org) => json!({"id": org.id, "name": org.name, "pictureURL": ORG_PICTURE}),
                None => Value::Null,
            };
            v.insert("organisation".into(), org);
        }
        v.insert("lastContactedAt".into(), json!(p.last_contacted.map(iso_sec)));
        v.insert("owner".into(), p.owner.map(|o| self.user_short(o)).unwrap_or(Value::Null));
        v.insert("team".into(), Value::Null);
        v.insert("pictureURL".into(), json!(if p.kind == PartyKind::Person { PERSON_PICTURE } else { ORG_PICTURE }));
        v.insert("enrichment".into(), Value::Null);
        v.insert(
            "addresses".into(),
            p.addresses
                .iter()
                .map(|a| {
                    json!({"id": a.id, "type": a.kind, "street": a.street, "city": a.city, "state": a.state,
                           "country": a.country, "zip": a.zip})
                })
                .collect(),
        );
        v.insert(
            "phoneNumbers".into(),
            p.phones.iter().map(|n| json!({"id": n.id, "type": n.kind, "number": n.number})).collect(),
        );
        v.insert(
            "websites".into(),
            p.websites
                .iter()
                .map(|w| json!({"id": w.id, "type": w.kind, "address": w.address, "service": w.service, "url": w.url}))
                .collect(),
        );
        v.insert(
            "emailAddresses".into(),
            p.emails.iter().map(|e| json!({"id": e.id, "type": e.kind, "address": e.address})).collect(),
        );
        if embed.has("tags") {
            let tags: Vec<Value> = p
                .tags
                .iter()
                .filter_map(|id| self.tags.iter().find(|t| t.id == *id))
                .map(|t| json!({"id": t.id, "name": t.name, "dataTag": t.data_tag}))
                .collect();
            v.insert("tags".into(), Value::Array(tags));
        }
        if embed.has("fields") {
            let fields: Vec<Value> = p
                .fields
                .iter()
                .map(|f| {
                    let name = self.field_definitions.iter().find(|d| d.id == f.definition).map(|d| d.name.clone());
                    json!({"id": f.id, "definition": {"id": f.definition, "name": name}, "value": f.value,
                           "tagId": Value::Null})
                })
                .collect();
            v.insert("fields".into(), Value::Array(fields));
        }
        if embed.has("missingImportantFields") {
            v.insert("missingImportantFields".into(), json!(p.emails.is_empty() || p.phones.is_empty()));
        }
        Value::Object(v)
    }

    pub fn entry_json(&self, e: &Entry, embed: &Embed) -> Value {
        let (kind, activity) = match e.kind {
            EntryKind::Note => ("note", json!({"id": -1, "name": "Note"})),
            EntryKind::Email => ("email", json!({"id": -2, "name": "Email"})),
            EntryKind::Task => ("task", json!({"id": -4, "name": "Task completed"})),
        };
        let party = match self.parties.get(&e.party) {
            Some(p) if embed.has("party") => self.party_json(p, &Embed::default()),
            _ => self.party_short(e.party),
        };
        let mut v = json!({
            "id": e.id,
            "type": kind,
            "content": e.content,
            "entryAt": iso_sec(e.entry_at),
            "createdAt": iso_sec(e.created),
            "updatedAt": iso_sec(e.updated),
            "creator": self.user(e.creator).map(|u| json!({"id": u.id, "username": u.username, "name": u.name()})),
            "activityType": activity,
            "party": party,
            "attachments": e.attachments.iter().map(|a| json!({
                "id": a.id, "filename": a.filename, "contentType": a.content_type, "size": a.size,
            })).collect::<Vec<_>>(),
            "kase": Value::Null,
            "opportunity": Value::Null,
        });
        if e.kind == EntryKind::Email {
            v["subject"] = json!(e.subject);
            v["participants"] = e
                .participants
                .iter()
                .map(|p| json!({"id": p.id, "address": p.address, "name": p.name, "role": p.role}))
                .collect();
            v["parties"] = json!([self.party_short(e.party)]);
        }
        v
    }

    pub fn task_json(&self, t: &Task, embed: &Embed) -> Value {
        let party = match t.party {
            Some(id) => match self.parties.get(&id) {
                Some(p) if embed.has("party") => self.party_json(p, &Embed::default()),
                _ => self.party_short(id),
            },
            None => Value::Null,
        };
        let category = t
            .category
            .and_then(|i| self.categories.get(i))
            .map(|c| json!({"id": c.id, "name": c.name, "colour": c.colour}));
        json!({
            "id": t.id,
            "category": category,
            "description": t.description,
            "detail": t.detail,
            "status": t.status.as_str(),
            "party": party,
            "opportunity": Value::Null,
            "kase": Value::Null,
            "owner": self.user_short(t.owner),
            "daysAfter": Value::Null,
            "taskDelayRule": Value::Null,
            "nextTask": Value::Null,
            "active": true,
            "createdAt": iso_sec(t.created),
            "updatedAt": iso_sec(t.updated),
            "dueOn": t.due_on,
            "dueTime": t.due_time,
            "completedBy": if t.status == TaskStatus::Completed {
                self.user(t.owner).map(|u| json!(u.username)).unwrap_or(Value::Null)
            } else {
                Value::Null
            },
            "completedAt": t.completed_at.map(iso_sec),
            "taskDayDelayRule": "TRACK_DAYS",
            "overrideToCurrentUser": Value::Null,
            "repeat": Value::Null,
            "hasTrack": false,
        })
    }
}

fn initials(name: &str) -> String {
    name.split_whitespace().filter_map(|w| w.chars().next()).collect()
}

/// The `embed` parameter: which extras to include.
#[derive(Debug, Default)]
pub struct Embed(Vec<String>);

impl Embed {
    pub fn parse(req: &ApiRequest) -> Self {
        Self::parse_list(req.query("embed").unwrap_or_default())
    }

    /// `tags,fields,organisation`.
    pub fn parse_list(list: &str) -> Self {
        Embed(list.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
    }

    pub fn has(&self, what: &str) -> bool {
        self.0.iter().any(|e| e == what)
    }
}

// ---------------------------------------------------------------------------------------
// Handlers

/// Answers one Capsule request. `name` is the catalog operation's name, or one of the few
/// extra routes Capsule has beyond the catalog.
pub fn handle(state: &mut State, name: &str, req: &ApiRequest, path: &str) -> Reply {
    let embed = Embed::parse(req);
    let data = &state.capsule;
    let pages = Pages { base: &state.base_url, path, req };
    match name {
        "party_updated" => {
            let since = match since(req) {
                Ok(s) => s,
                Err(reply) => return reply,
            };
            let parties: Vec<&Party> = data.parties.values().filter(|p| since.is_none_or(|s| p.updated > s)).collect();
            pages.reply("parties", parties, |p| data.party_json(p, &embed))
        }
        "get_party" => get_party(data, req.param("partyId"), &embed),
        // Two catalog triggers read this endpoint: one its `parties`, one its
        // `restrictedParties`.
        "party_deleted" | "party_restricted" => {
            let since = match since(req) {
                Ok(Some(s)) => s,
                Ok(None) => return Reply::capsule_invalid("party", "since", "since is required".into()),
                Err(reply) => return reply,
            };
            let deleted: Vec<&(i64, Ms)> = data.deleted.iter().filter(|(_, at)| *at > since).collect();
            let mut reply = pages.reply("parties", deleted, |(id, at)| json!({"id": id, "deletedAt": iso_sec(*at)}));
            // Restricted parties carry no time, so `since` cannot filter them: every answer
            // lists them all (on each page; a reader dedupes by id).
            reply.body["restrictedParties"] =
                data.restricted.iter().map(|(id, kind)| restricted_json(*id, *kind)).collect();
            reply
        }
        "party_entries" => {
            let Some(id) = req.param("partyId").parse::<i64>().ok().filter(|id| data.parties.contains_key(id)) else {
                return Reply::capsule_not_found();
            };
            let mut entries: Vec<&Entry> = data.entries.values().filter(|e| e.party == id).collect();
            newest_first(&mut entries);
            pages.reply("entries", entries, |e| data.entry_json(e, &embed))
        }
        "entry_updated" => {
            let mut entries: Vec<&Entry> = data.entries.values().collect();
            newest_first(&mut entries);
            pages.reply("entries", entries, |e| data.entry_json(e, &embed))
        }
        "task_updated" => {
            let wanted = match req.query("status") {
                None => vec![TaskStatus::Open],
                Some(list) => match list.split(',').map(TaskStatus::parse).collect::<Option<Vec<_>>>() {
                    Some(w) => w,
                    None => {
                        return Reply::capsule_invalid(
                            "task",
                            "status",
                            format!("status `{list}` is invalid; use open, completed, pending"),
                        );
                    }
                },
            };
            let tasks: Vec<&Task> = data.tasks.values().filter(|t| wanted.contains(&t.status)).collect();
            pages.reply("tasks", tasks, |t| data.task_json(t, &embed))
        }
        "list_users" => {
            let users: Vec<&User> = data.users.iter().collect();
            pages.reply("users", users, |u| data.user_json(u, embed.has("party")))
        }
        "list_countries" => pages.reply(
            "countries",
            COUNTRIES.iter().collect(),
            |c| json!({"alpha2Code": c.alpha2, "alpha3Code": c.alpha3, "numericCode": c.numeric, "name": c.name}),
        ),
        // Beyond the catalog: what a client commonly asks for next.
        "current_user" => match data.users.first() {
            Some(u) => Reply::ok(json!({"user": data.user_json(u, true)})),
            None => Reply::capsule_not_found(),
        },
        "get_entry" => match req.param("entryId").parse::<i64>().ok().and_then(|id| data.entries.get(&id)) {
            Some(e) => Reply::ok(json!({"entry": data.entry_json(e, &embed)})),
            None => Reply::capsule_not_found(),
        },
        "get_task" => match req.param("taskId").parse::<i64>().ok().and_then(|id| data.tasks.get(&id)) {
            Some(t) => Reply::ok(json!({"task": data.task_json(t, &embed)})),
            None => Reply::capsule_not_found(),
        },
        "search_parties" => {
            let q = req.query("q").unwrap_or_default().to_lowercase();
            let parties: Vec<&Party> = data
                .parties
                .values()
                .filter(|p| {
                    p.display_name().to_lowercase().contains(&q)
                        || p.emails.iter().any(|e| e.address.to_lowercase().contains(&q))
                })
                .collect();
            pages.reply("parties", parties, |p| data.party_json(p, &embed))
        }
        "list_tags" => Reply::ok(json!({"tags": data.tags.iter().map(tag_json).collect::<Vec<_>>()})),
        "field_definitions" => {
            let definitions: Vec<Value> = data.field_definitions.iter().enumerate().map(definition_json).collect();
            Reply::ok(json!({ "definitions": definitions }))
        }
        "activity_types" => Reply::ok(json!({"activityTypes": [
            {"id": -1, "name": "Note", "icon": "note", "updateLastContacted": false},
            {"id": -2, "name": "Email", "icon": "email", "updateLastContacted": true},
            {"id": -4, "name": "Task completed", "icon": "task", "updateLastContacted": false},
        ]})),
        _ => Reply::capsule_not_found(),
    }
}

fn tag_json(t: &Tag) -> Value {
    json!({"id": t.id, "name": t.name, "description": Value::Null, "dataTag": t.data_tag})
}

fn definition_json((i, d): (usize, &FieldDefinition)) -> Value {
    json!({
        "id": d.id, "type": d.kind, "description": Value::Null, "important": false, "displayOrder": i + 1,
        "name": d.name, "tag": Value::Null, "captureRule": Value::Null, "options": d.options,
    })
}

/// `GET /parties/{id}` or, with commas, up to ten at once.
fn get_party(data: &CapsuleData, ids: &str, embed: &Embed) -> Reply {
    let parsed: Option<Vec<i64>> = ids.split(',').map(|s| s.trim().parse::<i64>().ok()).collect();
    let Some(parsed) = parsed else { return Reply::capsule_not_found() };
    if parsed.len() > 10 {
        return Reply::capsule_invalid("party", "id", "too many ids".into());
    }
    if parsed.len() == 1 {
        return match data.parties.get(&parsed[0]) {
            Some(p) => Reply::ok(json!({"party": data.party_json(p, embed)})),
            None => Reply::capsule_not_found(),
        };
    }
    let parties: Vec<Value> =
        parsed.iter().filter_map(|id| data.parties.get(id)).map(|p| data.party_json(p, embed)).collect();
    Reply::ok(json!({"parties": parties}))
}

/// A restricted party as `/parties/deleted` shows it: a stub named "Private".
fn restricted_json(id: i64, kind: PartyKind) -> Value {
    const PICTURE: &str = "https://facehub.capsule.run/default/person?text=P&size=100";
    match kind {
        PartyKind::Person => json!({"id": id, "type": "person", "firstName": Value::Null, "lastName": "Private",
                                    "pictureURL": PICTURE, "isRestricted": true}),
        PartyKind::Organisation => json!({"id": id, "type": "organisation", "name": "Private",
                                          "pictureURL": PICTURE, "isRestricted": true}),
    }
}

/// The singular name Capsule's errors give a resource (`parties` → `party`).
pub fn resource(category: &str) -> &str {
    match category {
        "parties" => "party",
        "entries" => "entry",
        "tasks" => "task",
        "users" => "user",
        "countries" => "country",
        other => other,
    }
}

fn newest_first(entries: &mut [&Entry]) {
    entries.sort_by(|a, b| b.entry_at.cmp(&a.entry_at).then(b.id.cmp(&a.id)));
}

/// The `since` parameter: None when absent, a 422 when unreadable.
fn since(req: &ApiRequest) -> Result<Option<Ms>, Reply> {
    match req.query("since") {
        None => Ok(None),
        Some(text) => match parse_iso(text) {
            Some(ms) => Ok(Some(ms)),
            None => Err(Reply::capsule_invalid(
                "party",
                "since",
                format!("since `{text}` is not an ISO 8601 date-time (e.g. 2025-06-01T08:00:00Z)"),
            )),
        },
    }
}

/// Capsule's paging: `page` (from 1) and `perPage` (1 to 100, default 50), with a `Link`
/// header naming the next and previous pages by their full URL, other parameters kept.
struct Pages<'a> {
    base: &'a str,
    path: &'a str,
    req: &'a ApiRequest,
}

impl Pages<'_> {
    fn reply<T>(&self, key: &str, items: Vec<T>, render: impl Fn(&T) -> Value) -> Reply {
        let page = self.req.query_number("page").map(|p| p.max(1.0) as usize).unwrap_or(1);
        let per_page = self
            .req
            .query_number("perPage")
            .map(|p| (p.max(1.0) as usize).min(MAX_PER_PAGE))
            .unwrap_or(DEFAULT_PER_PAGE);
        let start = (page - 1).saturating_mul(per_page);
        let rendered: Vec<Value> = items.iter().skip(start).take(per_page).map(render).collect();
        let mut links = Vec::new();
        if start + per_page < items.len() {
            links.push(format!("<{}>; rel=\"next\"", self.url(page + 1)));
        }
        if page > 1 {
            links.push(format!("<{}>; rel=\"prev\"", self.url(page - 1)));
        }
        let reply = Reply::ok(json!({ key: rendered }));
        if links.is_empty() { reply } else { reply.with_header("Link", links.join(", ")) }
    }

    /// The request's own URL, absolute, with another page number: every other parameter is
    /// kept in the order sent, and commas are written as commas (`embed=tags,fields`,
    /// `status=open,completed`), as in Capsule's documented links.
    fn url(&self, page: usize) -> String {
        let encode = |text: &str| utf8_percent_encode(text, LINK_QUERY).to_string();
        let mut parts: Vec<String> = Vec::new();
        let mut wrote_page = false;
        for (k, v) in &self.req.query {
            if k == "page" {
                if !wrote_page {
                    parts.push(format!("page={page}"));
                    wrote_page = true;
                }
            } else {
                parts.push(format!("{}={}", encode(k), encode(v)));
            }
        }
        if !wrote_page {
            parts.push(format!("page={page}"));
        }
        format!("{}/api/v2{}?{}", self.base, self.path, parts.join("&"))
    }
}

/// What a query value in a Link keeps as it is: RFC 3986's unreserved characters and commas.
const LINK_QUERY: &percent_encoding::AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b',');

// ---------------------------------------------------------------------------------------
// Changes made through the control API. Each picks its records with the state's own
// generator, so a sequence of calls on a seed is repeatable.

/// Picks up to `n` distinct items.
fn pick<T: Copy>(state: &mut State, mut pool: Vec<T>, n: usize) -> Vec<T> {
    let n = n.min(pool.len());
    for i in 0..n {
        let j = i + state.picks.below(pool.len() - i);
        pool.swap(i, j);
    }
    pool.truncate(n);
    pool
}

/// Edits `n` people (job title, about, a phone number or a tag) and moves their
/// `updatedAt` to now. Returns their ids.
pub fn edit_people(state: &mut State, n: usize) -> Vec<i64> {
    let ids: Vec<i64> = state.capsule.contacts().map(|p| p.id).collect();
    let ids = pick(state, ids, n);
    let now = state.clock.now_second();
    for (i, id) in ids.iter().enumerate() {
        let change = state.picks.below(4);
        let country = state.capsule.parties.get(id).and_then(|p| p.addresses.first()).map(|a| a.country.clone());
        let job = state.generator.job_title();
        let number = state.generator.mobile_for(country.as_deref());
        let tag = state.capsule.tags.get(state.picks.below(state.capsule.tags.len().max(1))).map(|t| t.id);
        let phone_id = state.capsule.item_id();
        let Some(p) = state.capsule.parties.get_mut(id) else { continue };
        match change {
            0 => p.job_title = Some(job),
            1 => {
                let line = format!("Updated in the sandbox (edit {}).", i + 1);
                p.about = Some(match &p.about {
                    Some(a) => format!("{a} {line}"),
                    None => line,
                });
            }
            2 => p.phones.push(Phone { id: phone_id, kind: Some("Mobile".into()), number }),
            _ => {
                if let Some(tag) = tag
                    && !p.tags.contains(&tag)
                {
                    p.tags.push(tag);
                } else {
                    p.job_title = Some(job);
                }
            }
        }
        p.updated = now;
    }
    push::capsule_each(state, "party/updated", &ids, CapsuleRecord::Party);
    ids
}

/// Deletes `n` people, with their entries and tasks (Capsule cascades), and lists them
/// under `/parties/deleted`.
pub fn delete_people(state: &mut State, n: usize) -> Vec<i64> {
    let ids: Vec<i64> = state.capsule.contacts().map(|p| p.id).collect();
    let ids = pick(state, ids, n);
    // Sent while the parties are still there to show (the payload is the party as it was).
    push::capsule_each(state, "party/deleted", &ids, CapsuleRecord::Party);
    let now = state.clock.now_second();
    let data = &mut state.capsule;
    for id in &ids {
        data.parties.remove(id);
        data.deleted.push((*id, now));
    }
    data.entries.retain(|_, e| !ids.contains(&e.party));
    data.tasks.retain(|_, t| t.party.is_none_or(|p| !ids.contains(&p)));
    ids
}

/// Restricts `n` people: they stay in the account but vanish from the token user's view
/// (lists, `GET /parties/{id}`, their entries and tasks) and appear under `/parties/deleted`
/// as `restrictedParties`.
pub fn restrict_people(state: &mut State, n: usize) -> Vec<i64> {
    let ids: Vec<i64> = state.capsule.contacts().map(|p| p.id).collect();
    let ids = pick(state, ids, n);
    let data = &mut state.capsule;
    for id in &ids {
        if let Some(p) = data.parties.remove(id) {
            data.restricted.insert(*id, p.kind);
        }
    }
    data.entries.retain(|_, e| !ids.contains(&e.party));
    data.tasks.retain(|_, t| t.party.is_none_or(|p| !ids.contains(&p)));
    ids
}

/// Sets `n` open tasks to PENDING (no longer relevant, not completed), as Capsule does when
/// their opportunity closes; `updatedAt` moves to now.
pub fn pend_tasks(state: &mut State, n: usize) -> Vec<i64> {
    let ids: Vec<i64> = state.capsule.tasks.values().filter(|t| t.status == TaskStatus::Open).map(|t| t.id).collect();
    let ids = pick(state, ids, n);
    let now = state.clock.now_second();
    for id in &ids {
        if let Some(t) = state.capsule.tasks.get_mut(id) {
            t.status = TaskStatus::Pending;
            t.updated = now;
        }
    }
    push::capsule_each(state, "task/updated", &ids, CapsuleRecord::Task);
    ids
}

/// Adds `n` new people, created now.
pub fn add_people(state: &mut State, n: usize) -> Vec<i64> {
    let now = state.clock.now_second();
    let ids: Vec<i64> = (0..n).map(|_| state.generator.add_person(&mut state.capsule, now)).collect();
    push::capsule_each(state, "party/created", &ids, CapsuleRecord::Party);
    ids
}

/// Adds a note to each of `n` people, dated now.
pub fn add_notes(state: &mut State, n: usize) -> Vec<i64> {
    let ids: Vec<i64> = state.capsule.contacts().map(|p| p.id).collect();
    let ids = pick(state, ids, n);
    let now = state.clock.now_second();
    ids.into_iter().map(|party| state.generator.add_note(&mut state.capsule, party, now)).collect()
}

/// Rewrites `n` notes: `updatedAt` moves to now, `entryAt` stays (as in Capsule).
pub fn edit_notes(state: &mut State, n: usize) -> Vec<i64> {
    let ids: Vec<i64> = state.capsule.entries.values().filter(|e| e.kind == EntryKind::Note).map(|e| e.id).collect();
    let ids = pick(state, ids, n);
    let now = state.clock.now_second();
    for id in &ids {
        if let Some(e) = state.capsule.entries.get_mut(id) {
            e.content = format!("{}\n\n_Edited: follow-up agreed for next week._", e.content);
            e.updated = now;
        }
    }
    ids
}

/// Adds an open task to each of `n` people.
pub fn add_tasks(state: &mut State, n: usize) -> Vec<i64> {
    let ids: Vec<i64> = state.capsule.contacts().map(|p| p.id).collect();
    let ids = pick(state, ids, n);
    let now = state.clock.now_second();
    let ids: Vec<i64> = ids.into_iter().map(|party| state.generator.add_task(&mut state.capsule, party, now)).collect();
    push::capsule_each(state, "task/created", &ids, CapsuleRecord::Task);
    ids
}

/// Gives one person a new job title now; false when there is no such person.
pub fn touch_person(state: &mut State, id: i64) -> bool {
    let now = state.clock.now_second();
    let job = state.generator.job_title();
    let Some(p) = state.capsule.parties.get_mut(&id) else { return false };
    p.job_title = Some(job);
    p.updated = now;
    push::capsule(state, "party/updated", CapsuleRecord::Party(id));
    true
}

/// Takes one person's first tag off; returns the tag's name.
pub fn untag_person(state: &mut State, id: i64) -> Option<String> {
    let now = state.clock.now_second();
    let p = state.capsule.parties.get_mut(&id)?;
    if p.tags.is_empty() {
        return None;
    }
    let tag = p.tags.remove(0);
    p.updated = now;
    push::capsule(state, "party/updated", CapsuleRecord::Party(id));
    state.capsule.tags.iter().find(|t| t.id == tag).map(|t| t.name.clone())
}

/// Adds an open task with a set due date and time (the owner's wall clock).
pub fn add_timed_task(state: &mut State, party: i64, owner: i64, due_on: &str, due_time: Option<&str>) -> i64 {
    let id = timed_task(state, party, owner, due_on, due_time);
    push::capsule(state, "task/created", CapsuleRecord::Task(id));
    id
}

fn timed_task(state: &mut State, party: i64, owner: i64, due_on: &str, due_time: Option<&str>) -> i64 {
    let now = state.clock.now_second();
    let id = state.generator.add_task(&mut state.capsule, party, now);
    if let Some(t) = state.capsule.tasks.get_mut(&id) {
        t.owner = owner;
        t.due_on = due_on.to_owned();
        t.due_time = due_time.map(str::to_owned);
    }
    id
}

/// Adds an open task in the category named `category` (none if no category has that
/// name) to `party`, owned by `owner`, due at `due_time` on `due_on` on the owner's clock.
pub fn add_meeting(state: &mut State, party: i64, owner: i64, due_on: &str, due_time: &str, category: &str) -> i64 {
    let id = timed_task(state, party, owner, due_on, Some(due_time));
    let category = state.capsule.categories.iter().position(|c| c.name == category);
    if let Some(t) = state.capsule.tasks.get_mut(&id) {
        t.category = category;
    }
    push::capsule(state, "task/created", CapsuleRecord::Task(id));
    id
}

/// Moves a task to a new due date and time; its `updatedAt` moves to now. False when there
/// is no such task.
pub fn move_task(state: &mut State, id: i64, due_on: &str, due_time: Option<&str>) -> bool {
    let now = state.clock.now_second();
    let Some(t) = state.capsule.tasks.get_mut(&id) else { return false };
    t.due_on = due_on.to_owned();
    t.due_time = due_time.map(str::to_owned);
    t.updated = now;
    push::capsule(state, "task/updated", CapsuleRecord::Task(id));
    true
}

/// Puts a task in the category named `name`; false when there is no such task or category.
pub fn set_task_category(state: &mut State, id: i64, name: &str) -> bool {
    let Some(category) = state.capsule.categories.iter().position(|c| c.name == name) else { return false };
    let now = state.clock.now_second();
    let Some(t) = state.capsule.tasks.get_mut(&id) else { return false };
    t.category = Some(category);
    t.updated = now;
    push::capsule(state, "task/updated", CapsuleRecord::Task(id));
    true
}

/// Deletes a task: it leaves `/tasks` for good (Capsule keeps no list of deleted tasks, and
/// has no REST hook event for it either). False when there is no such task.
pub fn delete_task(state: &mut State, id: i64) -> bool {
    state.capsule.tasks.remove(&id).is_some()
}

/// Completes one open task (filing its "Task completed" entry); false when there is no
/// such task or it is not open.
pub fn complete_task(state: &mut State, id: i64) -> bool {
    if state.capsule.tasks.get(&id).is_none_or(|t| t.status != TaskStatus::Open) {
        return false;
    }
    let now = state.clock.now_second();
    complete(state, &[id], now);
    true
}

/// Completes `n` open tasks; each completion also files a "Task completed" entry, as
/// Capsule does.
pub fn complete_tasks(state: &mut State, n: usize) -> Vec<i64> {
    let ids: Vec<i64> = state.capsule.tasks.values().filter(|t| t.status == TaskStatus::Open).map(|t| t.id).collect();
    let ids = pick(state, ids, n);
    let now = state.clock.now_second();
    complete(state, &ids, now);
    ids
}

fn complete(state: &mut State, ids: &[i64], now: Ms) {
    for id in ids {
        let data = &mut state.capsule;
        let Some(t) = data.tasks.get_mut(id) else { continue };
        t.status = TaskStatus::Completed;
        t.completed_at = Some(now);
        t.updated = now;
        push::capsule(state, "task/completed", CapsuleRecord::Task(*id));
        let data = &mut state.capsule;
        let Some(t) = data.tasks.get(id) else { continue };
        let (party, owner, content) = (t.party, t.owner, t.description.clone());
        if let Some(party) = party {
            data.next_entry_id += 1;
            let entry = Entry {
                id: data.next_entry_id,
                kind: EntryKind::Task,
                subject: None,
                content,
                entry_at: now,
                created: now,
                updated: now,
                creator: owner,
                party,
                participants: Vec::new(),
                attachments: Vec::new(),
            };
            data.entries.insert(entry.id, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::state::State;

    fn request(query: &[(&str, &str)]) -> ApiRequest {
        ApiRequest {
            params: Default::default(),
            query: query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: json!({}),
        }
    }

    #[test]
    fn pages_carry_next_and_prev_links_that_keep_the_other_parameters() {
        let state = State::for_tests(1, 120);
        let req = request(&[("since", "2020-01-01T00:00:00+00:00"), ("perPage", "50"), ("page", "2")]);
        let pages = Pages { base: &state.base_url, path: "/parties", req: &req };
        let reply = pages.reply("parties", (0..120).collect(), |i| json!(i));
        assert_eq!(reply.body["parties"].as_array().unwrap().len(), 50);
        assert_eq!(reply.body["parties"][0], 50);
        let link = &reply.headers[0].1;
        assert!(link.contains("since=2020-01-01T00%3A00%3A00%2B00%3A00&perPage=50&page=3>; rel=\"next\""), "{link}");
        assert!(link.contains("page=1>; rel=\"prev\""), "{link}");

        let last = request(&[("perPage", "50"), ("page", "3")]);
        let pages = Pages { base: &state.base_url, path: "/parties", req: &last };
        let reply = pages.reply("parties", (0..120).collect(), |i| json!(i));
        assert_eq!(reply.body["parties"].as_array().unwrap().len(), 20);
        assert!(!reply.headers[0].1.contains("next"));
    }

    #[test]
    fn since_filters_parties_and_deleted_needs_it() {
        let mut state = State::for_tests(1, 40);
        let edited = edit_people(&mut state, 3);
        let since = iso_sec(super::super::clock::BASE_MS);
        let reply = handle(&mut state, "party_updated", &request(&[("since", &since)]), "/parties");
        let ids: Vec<i64> =
            reply.body["parties"].as_array().unwrap().iter().map(|p| p["id"].as_i64().unwrap()).collect();
        let mut expected = edited.clone();
        expected.sort();
        assert_eq!(ids, expected);

        let reply = handle(&mut state, "party_deleted", &request(&[]), "/parties/deleted");
        assert_eq!(reply.status, 422);
        let gone = delete_people(&mut state, 2);
        let reply = handle(&mut state, "party_deleted", &request(&[("since", &since)]), "/parties/deleted");
        let ids: Vec<i64> =
            reply.body["parties"].as_array().unwrap().iter().map(|p| p["id"].as_i64().unwrap()).collect();
        assert_eq!(ids, gone);
        assert!(reply.body["parties"][0]["deletedAt"].as_str().unwrap() > since.as_str());
        assert!(state.capsule.entries.values().all(|e| !gone.contains(&e.party)));
    }

    #[test]
    fn tasks_default_to_open_and_completing_files_an_entry() {
        let mut state = State::for_tests(3, 60);
        let open = handle(&mut state, "task_updated", &request(&[("perPage", "100")]), "/tasks");
        assert!(open.body["tasks"].as_array().unwrap().iter().all(|t| t["status"] == "OPEN"));
        let entries_before = state.capsule.entries.len();
        let done = complete_tasks(&mut state, 2);
        assert_eq!(done.len(), 2);
        assert!(state.capsule.entries.len() > entries_before);
        let all = handle(
            &mut state,
            "task_updated",
            &request(&[("status", "open,completed,pending"), ("perPage", "100")]),
            "/tasks",
        );
        let t = all.body["tasks"].as_array().unwrap().iter().find(|t| t["id"] == done[0]).unwrap().clone();
        assert_eq!(t["status"], "COMPLETED");
        assert!(t["completedAt"].is_string());
    }

    #[test]
    fn embeds_add_tags_and_fields_only_when_asked() {
        let mut state = State::for_tests(1, 20);
        let plain = handle(&mut state, "party_updated", &request(&[]), "/parties");
        assert!(plain.body["parties"][0].get("tags").is_none());
        let full = handle(&mut state, "party_updated", &request(&[("embed", "tags,fields")]), "/parties");
        assert!(full.body["parties"][0]["tags"].is_array());
        assert!(full.body["parties"][0]["fields"].is_array());
    }
}
