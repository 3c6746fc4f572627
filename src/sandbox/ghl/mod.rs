//! The GHL side: one sub-account (location) whose contacts, notes, tasks, conversations,
//! opportunities and appointments change as requests arrive. Each file answers one area;
//! this one holds the records and sends each operation to its handler. Operations with no
//! handler here answer with their catalog sample, so every catalog path responds.

mod calendars;
mod contacts;
mod conversations;
pub(super) mod opportunities;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value, json};

use super::clock::{Ms, iso_ms};
use super::push::{self, GhlKind};
use super::state::State;
use super::wire::{ApiRequest, Reply};
use crate::catalog::Operation;

pub use calendars::{inspect_json as appointment_json, location_zone};
pub use conversations::{message_json, receive as receive_message};

/// A contact: its id, times, and the fields it was given (kept as sent, so everything the
/// API accepts round-trips).
#[derive(Debug, Clone)]
pub struct Contact {
    pub id: String,
    pub added: Ms,
    pub updated: Ms,
    pub fields: Map<String, Value>,
}

impl Contact {
    pub fn text(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str).filter(|s| !s.is_empty())
    }

    pub fn full_name(&self) -> String {
        if let Some(name) = self.text("name")
            && self.text("firstName").is_none()
            && self.text("lastName").is_none()
        {
            return name.to_owned();
        }
        [self.text("firstName"), self.text("lastName")].into_iter().flatten().collect::<Vec<_>>().join(" ")
    }

    pub fn tags(&self) -> Vec<String> {
        match self.fields.get("tags") {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    }

    /// The contact as GHL returns it: what was set, plus the fields GHL derives.
    pub fn json(&self, location: &str) -> Value {
        let mut v = Map::new();
        v.insert("id".into(), json!(self.id));
        v.insert("locationId".into(), json!(location));
        for (k, value) in &self.fields {
            v.insert(k.clone(), value.clone());
        }
        let name = self.full_name();
        if !name.is_empty() {
            v.insert("name".into(), json!(name));
            v.insert("fullNameLowerCase".into(), json!(name.to_lowercase()));
        }
        for (field, lower) in
            [("firstName", "firstNameLowerCase"), ("lastName", "lastNameLowerCase"), ("email", "emailLowerCase")]
        {
            if let Some(text) = self.text(field) {
                v.insert(lower.into(), json!(text.to_lowercase()));
            }
        }
        v.entry("tags").or_insert_with(|| json!([]));
        v.entry("customFields").or_insert_with(|| json!([]));
        v.entry("dnd").or_insert(json!(false));
        v.entry("type").or_insert(json!("lead"));
        v.entry("source").or_insert(Value::Null);
        v.insert("dateAdded".into(), json!(iso_ms(self.added)));
        v.insert("dateUpdated".into(), json!(iso_ms(self.updated)));
        Value::Object(v)
    }
}

#[derive(Debug, Clone)]
pub struct Note {
    pub id: String,
    pub contact_id: String,
    pub body: String,
    pub title: Option<String>,
    pub color: Option<String>,
    pub pinned: bool,
    pub user_id: Option<String>,
    pub added: Ms,
}

impl Note {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id, "body": self.body, "title": self.title, "color": self.color, "pinned": self.pinned,
            "userId": self.user_id, "contactId": self.contact_id, "dateAdded": iso_ms(self.added),
        })
    }
}

/// A contact's task (named so as not to clash with Capsule's).
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub id: String,
    pub contact_id: String,
    pub title: String,
    pub body: Option<String>,
    /// ISO, as sent.
    pub due_date: String,
    pub completed: bool,
    pub assigned_to: Option<String>,
}

impl TaskRecord {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id, "title": self.title, "body": self.body, "dueDate": self.due_date,
            "completed": self.completed, "assignedTo": self.assigned_to, "contactId": self.contact_id,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Conversation {
    pub id: String,
    pub contact_id: String,
    pub added: Ms,
    pub updated: Ms,
    pub last_message_date: Ms,
    pub unread: u32,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub contact_id: String,
    /// As sent in `type`: SMS, Email, WhatsApp...
    pub channel: String,
    pub body: String,
    pub subject: Option<String>,
    pub direction: String,
    pub status: String,
    pub added: Ms,
    pub user_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Opportunity {
    pub id: String,
    pub name: String,
    pub pipeline_id: String,
    pub stage_id: String,
    pub status: String,
    pub monetary_value: f64,
    pub assigned_to: Option<String>,
    pub contact_id: String,
    pub source: String,
    pub created: Ms,
    pub updated: Ms,
    pub last_status_change: Ms,
    pub last_stage_change: Ms,
    pub custom_fields: Vec<Value>,
    pub lost_reason_id: Option<String>,
}

/// An appointment. Its start and end are instants; the offsets they were last sent with
/// are kept so that create and update answers can echo the times as the caller wrote them.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub calendar_id: String,
    pub contact_id: String,
    pub title: String,
    pub appointment_status: String,
    pub assigned_user_id: String,
    pub address: String,
    /// Written by people in GHL; the API has no field that sets it.
    pub notes: String,
    /// `description`, as sent.
    pub description: String,
    pub start: Ms,
    pub end: Ms,
    /// The offsets `startTime` and `endTime` were sent with (seconds east of UTC).
    pub start_offset: i32,
    pub end_offset: i32,
    pub added: Ms,
    pub updated: Ms,
    /// Whether the calendar's notifications and automations would have run for it (a
    /// create or update without `toNotify: false`). Sandbox-only: tests read it.
    pub notified: bool,
}

/// Why a contact id no longer answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gone {
    /// Deleted, through the API or by a person in GHL.
    Deleted,
    /// Merged into this contact by a person in GHL.
    MergedInto(String),
}

/// The sub-account.
#[derive(Debug, Clone)]
pub struct GhlData {
    pub location_id: String,
    pub company_id: String,
    pub location: Value,
    pub users: Vec<Value>,
    pub custom_fields: Vec<Value>,
    pub contacts: BTreeMap<String, Contact>,
    pub notes: Vec<Note>,
    pub tasks: Vec<TaskRecord>,
    pub conversations: Vec<Conversation>,
    pub messages: Vec<Message>,
    pub pipelines: Vec<Value>,
    pub opportunities: Vec<Opportunity>,
    pub calendars: Vec<Value>,
    pub events: Vec<Event>,
    /// Contacts deleted or merged away: their ids answer 404 from then on.
    pub gone: BTreeMap<String, Gone>,
    /// Which contacts may have an email or phone, for duplicate matching.
    pub match_index: MatchIndex,
}

/// The contacts that may hold each email (lowercased) and phone, so that matching an upsert
/// or create against the location does not read every contact: a 200,000-contact backfill
/// would otherwise cost the sandbox time quadratic in its size. It is a superset: every place
/// that gives a contact an email or phone notes it here, and nothing is ever taken out, so a
/// lookup checks each candidate against the contact as it is now (stale entries of an edited
/// or deleted contact drop out there). The ids are ordered, so the first candidate that
/// matches is the one a scan of `contacts` in id order would find.
#[derive(Debug, Clone, Default)]
pub struct MatchIndex {
    email: HashMap<String, BTreeSet<String>>,
    phone: HashMap<String, BTreeSet<String>>,
}

impl MatchIndex {
    /// Indexes every contact of `contacts`.
    pub fn of<'a>(contacts: impl IntoIterator<Item = &'a Contact>) -> Self {
        let mut index = MatchIndex::default();
        for c in contacts {
            index.note(c);
        }
        index
    }

    /// Records the contact's current email and phone (call after any change to them).
    pub fn note(&mut self, contact: &Contact) {
        if let Some(email) = contact.text("email") {
            self.email.entry(email.to_lowercase()).or_default().insert(contact.id.clone());
        }
        if let Some(phone) = contact.text("phone") {
            self.phone.entry(phone.to_owned()).or_default().insert(contact.id.clone());
        }
    }

    /// Contact ids that may have this email (already lowercased), in id order.
    pub fn by_email(&self, email: &str) -> impl Iterator<Item = &String> {
        self.email.get(email).into_iter().flatten()
    }

    /// Contact ids that may have this phone, in id order.
    pub fn by_phone(&self, phone: &str) -> impl Iterator<Item = &String> {
        self.phone.get(phone).into_iter().flatten()
    }
}

/// Answers one GHL request for `op`.
pub fn handle(state: &mut State, op: &Operation, req: &ApiRequest) -> Reply {
    // A user id the location does not have: the live API answers 401 "The user does not
    // exist." (GoHighLevel/highlevel-api-docs#205), which a client must not take for an
    // expired token. Checked for every body `assignedTo`, as the write would fail on it;
    // appointments' `assignedUserId` is checked by the calendar handler (the same answer).
    if let Some(user) = req.body_str("assignedTo").filter(|u| !u.is_empty())
        && !known_user(state, user)
    {
        return no_such_user();
    }
    match op.key.category.as_str() {
        "contacts" => contacts::handle(state, op, req),
        "conversations" => conversations::handle(state, op, req),
        "opportunities" => opportunities::handle(state, op, req),
        "calendars" => calendars::handle(state, op, req),
        "users" => users(state, op, req),
        "locations" if op.key.name == "find_location_by_id" => Reply::ok(json!({"location": state.ghl.location})),
        "custom_fields" => {
            let model = req.query("model").unwrap_or("all");
            let fields: Vec<&Value> =
                state.ghl.custom_fields.iter().filter(|f| model == "all" || f["model"] == model).collect();
            Reply::ok(json!({"customFields": fields}))
        }
        _ => sample(op),
    }
}

/// The location id the catalog's samples use.
const SAMPLE_LOCATION: &str = "ve9EPM428h8vShlRW1KT";

/// The catalog's sample answer, for operations the sandbox keeps no state for, moved to
/// the sandbox's location.
pub fn sample(op: &Operation) -> Reply {
    fn relocate(value: &mut Value) {
        match value {
            Value::String(s) if s == SAMPLE_LOCATION => *s = super::seed::LOCATION_ID.to_owned(),
            Value::Array(items) => items.iter_mut().for_each(relocate),
            Value::Object(map) => map.values_mut().for_each(relocate),
            _ => {}
        }
    }
    let status = if op.method == crate::catalog::Method::Post && op.key.name.starts_with("create") { 201 } else { 200 };
    let mut body = op.sample_output.clone();
    relocate(&mut body);
    Reply { status, body, headers: Vec::new() }
}

/// A JSON number, whole when it is whole (`1800`, not `1800.0`).
pub fn amount(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 1e15 { json!(v as i64) } else { json!(v) }
}

fn users(state: &mut State, op: &Operation, req: &ApiRequest) -> Reply {
    let users = &state.ghl.users;
    match op.key.name.as_str() {
        "list_users_by_location" => Reply::ok(json!({"users": users})),
        // Sorted by first and last name unless `sort` says otherwise, as documented;
        // `sort=dateAdded` is the order the users were added (their place in the list).
        "search_users" => {
            let q = req.query("query").unwrap_or_default().to_lowercase();
            let mut matching: Vec<(usize, &Value)> = users
                .iter()
                .enumerate()
                .filter(|(_, u)| {
                    q.is_empty()
                        || ["name", "email"]
                            .iter()
                            .any(|f| u[*f].as_str().is_some_and(|s| s.to_lowercase().contains(&q)))
                })
                .collect();
            let name = |u: &Value| {
                let part = |f: &str| u[f].as_str().unwrap_or_default().to_lowercase();
                (part("firstName"), part("lastName"))
            };
            match req.query("sort") {
                None => matching.sort_by_key(|(_, u)| name(u)),
                Some("dateAdded") => matching.sort_by_key(|(added, _)| *added),
                Some(other) => {
                    return Reply::ghl_invalid(vec![format!("sort must be dateAdded or left out, not {other}")]);
                }
            }
            match req.query("sortDirection") {
                None | Some("asc") => {}
                Some("desc") => matching.reverse(),
                Some(other) => {
                    return Reply::ghl_invalid(vec![format!("sortDirection must be asc or desc, not {other}")]);
                }
            }
            let matching: Vec<&Value> = matching.into_iter().map(|(_, u)| u).collect();
            let skip = req.query_number("skip").unwrap_or(0.0).max(0.0) as usize;
            let limit = req.query_number("limit").unwrap_or(25.0).max(1.0) as usize;
            let page: Vec<&&Value> = matching.iter().skip(skip).take(limit).collect();
            Reply::ok(json!({"users": page, "count": matching.len()}))
        }
        "get_user" => match users.iter().find(|u| u["id"] == req.param("userId")) {
            Some(u) => Reply::ok(u.clone()),
            None => no_such_user(),
        },
        _ => sample(op),
    }
}

/// Adds `n` contacts as a web form would (control API): new leads with their own email
/// and phone. Returns their ids.
pub fn add_leads(state: &mut State, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let (first, last, local) = state.generator.name();
            let serial = state.ghl.contacts.len() as u64 + state.ids.next_u64() % 1000;
            let now = state.clock.now_ms();
            let mut fields = Map::new();
            fields.insert("firstName".into(), json!(first));
            fields.insert("lastName".into(), json!(last));
            fields.insert("email".into(), json!(format!("{local}.{serial}@example.net")));
            fields.insert("phone".into(), json!(format!("+1312555{:04}", 1000 + serial % 9000)));
            fields.insert("source".into(), json!("website form"));
            fields.insert("tags".into(), json!(["new lead"]));
            let contact = Contact { id: state.ids.ghl_id(), added: now, updated: now, fields };
            let id = contact.id.clone();
            state.ghl.match_index.note(&contact);
            state.ghl.contacts.insert(id.clone(), contact);
            push::ghl_contact(state, "ContactCreate", &id);
            id
        })
        .collect()
}

fn known_user(state: &State, id: &str) -> bool {
    state.ghl.users.iter().any(|u| u["id"] == id)
}

/// The live API's answer for a user id it does not know: a 401, not a 404.
fn no_such_user() -> Reply {
    Reply::ghl_error(401, "The user does not exist.")
}

/// A contact by id; a 400 when the id never existed, a 404 when the contact was deleted or
/// merged away. The live API's answer for a deleted contact is not documented or reported;
/// the sandbox chooses the stricter 404, so a client cannot mistake it for a bad request.
fn existing_contact<'a>(state: &'a State, id: &str) -> Result<&'a Contact, Reply> {
    match state.ghl.contacts.get(id) {
        Some(c) => Ok(c),
        None if state.ghl.gone.contains_key(id) => Err(Reply::ghl_error(404, "Contact not found")),
        None => Err(Reply::ghl_error(400, "Contact not found")),
    }
}

/// Deletes a contact with its notes and tasks; its id answers 404 from then on. False when
/// there is no such contact.
pub fn delete_contact(state: &mut State, id: &str) -> bool {
    // The event carries the contact as it was, so it is built before the contact goes.
    let before = push::ghl_contact_before(state, id);
    let ghl = &mut state.ghl;
    if ghl.contacts.remove(id).is_none() {
        return false;
    }
    ghl.notes.retain(|n| n.contact_id != id);
    ghl.tasks.retain(|t| t.contact_id != id);
    ghl.gone.insert(id.to_owned(), Gone::Deleted);
    if let Some(record) = before {
        push::ghl(state, "ContactDelete", GhlKind::Contact, &record);
    }
    true
}

/// Merges contact `from` into `into`, as a person does in GHL: `into` keeps its own values,
/// takes the fields it lacks and every tag, note and task of `from`; `from` answers 404 from
/// then on (what the live API answers for a merged-away id is not known: the stricter
/// choice).
pub fn merge_contacts(state: &mut State, from: &str, into: &str) -> Result<(), String> {
    if from == into {
        return Err("a contact cannot be merged into itself".into());
    }
    let now = state.clock.now_ms();
    let (gone_before, into_before) = (push::ghl_contact_before(state, from), push::ghl_contact_before(state, into));
    let ghl = &mut state.ghl;
    if !ghl.contacts.contains_key(into) {
        return Err(format!("no contact {into} to merge into"));
    }
    let Some(gone) = ghl.contacts.remove(from) else { return Err(format!("no contact {from}")) };
    if let Some(survivor) = ghl.contacts.get_mut(into) {
        let mut tags = survivor.tags();
        for t in gone.tags() {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        for (k, v) in gone.fields {
            survivor.fields.entry(k).or_insert(v);
        }
        survivor.fields.insert("tags".into(), json!(tags));
        survivor.updated = now;
        ghl.match_index.note(survivor);
    }
    for n in ghl.notes.iter_mut().filter(|n| n.contact_id == from) {
        n.contact_id = into.to_owned();
    }
    for t in ghl.tasks.iter_mut().filter(|t| t.contact_id == from) {
        t.contact_id = into.to_owned();
    }
    ghl.gone.insert(from.to_owned(), Gone::MergedInto(into.to_owned()));
    // What GHL sends for a merge is not documented: the survivor's update and the
    // merged-away contact's deletion are what a receiver mirroring contacts needs.
    if let Some(before) = into_before {
        push::ghl_contact_changed(state, into, &before);
    }
    if let Some(record) = gone_before {
        push::ghl(state, "ContactDelete", GhlKind::Contact, &record);
    }
    Ok(())
}

/// `limit`-style page sizes: a number from 1 to `max`, or `default`.
fn page_size(req: &ApiRequest, name: &str, default: usize, max: usize) -> Result<usize, Reply> {
    match req.query_number(name) {
        None => Ok(default),
        Some(n) if n < 1.0 => Err(Reply::ghl_invalid(vec![format!("{name} must not be less than 1")])),
        Some(n) if n > max as f64 => Err(Reply::ghl_invalid(vec![format!("{name} must not be greater than {max}")])),
        Some(n) => Ok(n as usize),
    }
}

/// A query string for a `nextPageUrl`.
fn query_string(pairs: &[(&str, String)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}
