//! Contacts and their notes, tasks, tags and appointments.
//!
//! The sub-account refuses duplicate contacts (GHL's default): upsert looks for an existing
//! contact by email, then by phone, and updates it; create answers 400 when one exists.
//! Phone numbers are stored in E.164, read as US numbers when they have no `+` (the
//! sub-account's country); one that is not a valid number is refused.

use serde_json::{Map, Value, json};

use super::super::push::{self, GhlKind};
use super::super::state::State;
use super::super::wire::{ApiRequest, Reply};
use super::{Contact, Note, TaskRecord, existing_contact, page_size, query_string, sample};
use crate::catalog::Operation;

pub fn handle(state: &mut State, op: &Operation, req: &ApiRequest) -> Reply {
    let contact_id = req.param("contactId").to_owned();
    // Everything at /contacts/{contactId}... needs the contact.
    if !contact_id.is_empty()
        && let Err(reply) = existing_contact(state, &contact_id)
    {
        return reply;
    }
    let location = state.ghl.location_id.clone();
    match op.key.name.as_str() {
        "get_contact" => match state.ghl.contacts.get(&contact_id) {
            Some(c) => Reply::ok(json!({"contact": c.json(&location)})),
            None => Reply::ghl_error(400, "Contact not found"),
        },
        "create_contact" => create(state, req),
        "upsert_contact" => upsert(state, req),
        "update_contact" => update(state, &contact_id, req),
        "delete_contact" => {
            super::delete_contact(state, &contact_id);
            Reply::ok(json!({"succeded": true}))
        }
        "list_contacts" => list(state, req),
        "search_contacts" => search(state, req),
        "get_duplicate_contact" | "find_contact" => {
            let phone = match req.query("number").map(normalize_phone).transpose() {
                Ok(p) => p,
                Err(reply) => return reply,
            };
            let found = find_duplicate(state, req.query("email"), phone.as_deref()).map(|(id, _)| id);
            let contact = found.and_then(|id| state.ghl.contacts.get(&id)).map(|c| c.json(&location));
            Reply::ok(json!({"contact": contact}))
        }
        "add_tags_to_contact" | "remove_tags_from_contact" => {
            let adding = op.key.name == "add_tags_to_contact";
            let given: Vec<String> = tag_list(req.body.get("tags"));
            let now = state.clock.now_ms();
            let before = push::ghl_contact_before(state, &contact_id);
            let Some(contact) = state.ghl.contacts.get_mut(&contact_id) else {
                return Reply::ghl_error(400, "Contact not found");
            };
            let mut tags = contact.tags();
            if adding {
                for t in given {
                    if !tags.contains(&t) {
                        tags.push(t);
                    }
                }
            } else {
                tags.retain(|t| !given.contains(t));
            }
            contact.fields.insert("tags".into(), json!(tags));
            contact.updated = now;
            if let Some(before) = before {
                push::ghl_contact_changed(state, &contact_id, &before);
            }
            if adding { Reply::created(json!({"tags": tags})) } else { Reply::ok(json!({"tags": tags})) }
        }
        "get_contact_notes" => {
            let notes: Vec<Value> =
                state.ghl.notes.iter().filter(|n| n.contact_id == contact_id).map(Note::json).collect();
            Reply::ok(json!({"notes": notes}))
        }
        "get_contact_note_by_id" => match find_note(state, &contact_id, req.param("id")) {
            Some(n) => Reply::ok(json!({"note": state.ghl.notes[n].json()})),
            None => Reply::ghl_error(400, "Note not found"),
        },
        "create_contact_note" => {
            let note = Note {
                id: state.ids.ghl_id(),
                contact_id: contact_id.clone(),
                body: req.body_str("body").unwrap_or_default().to_owned(),
                title: req.body_str("title").map(str::to_owned),
                color: req.body_str("color").map(str::to_owned),
                pinned: req.body.get("pinned").and_then(Value::as_bool).unwrap_or(false),
                user_id: req.body_str("userId").map(str::to_owned),
                added: state.clock.now_ms(),
            };
            let record = note.json();
            state.ghl.notes.push(note);
            push::ghl(state, "NoteCreate", GhlKind::Note, &record);
            Reply::created(json!({"note": record}))
        }
        "update_contact_note" => {
            let Some(n) = find_note(state, &contact_id, req.param("id")) else {
                return Reply::ghl_error(400, "Note not found");
            };
            let note = &mut state.ghl.notes[n];
            if let Some(body) = req.body_str("body") {
                note.body = body.to_owned();
            }
            if let Some(title) = req.body_str("title") {
                note.title = Some(title.to_owned());
            }
            if let Some(color) = req.body_str("color") {
                note.color = Some(color.to_owned());
            }
            if let Some(pinned) = req.body.get("pinned").and_then(Value::as_bool) {
                note.pinned = pinned;
            }
            if let Some(user) = req.body_str("userId") {
                note.user_id = Some(user.to_owned());
            }
            let record = note.json();
            push::ghl(state, "NoteUpdate", GhlKind::Note, &record);
            Reply::ok(json!({"note": record}))
        }
        "delete_contact_note" => match find_note(state, &contact_id, req.param("id")) {
            Some(n) => {
                let record = state.ghl.notes.remove(n).json();
                push::ghl(state, "NoteDelete", GhlKind::Note, &record);
                Reply::ok(json!({"succeded": true}))
            }
            None => Reply::ghl_error(400, "Note not found"),
        },
        "get_contact_tasks" => {
            let tasks: Vec<Value> =
                state.ghl.tasks.iter().filter(|t| t.contact_id == contact_id).map(TaskRecord::json).collect();
            Reply::ok(json!({"tasks": tasks}))
        }
        "get_contact_task_by_id" => match find_task(state, &contact_id, req.param("taskId")) {
            Some(t) => Reply::ok(json!({"task": state.ghl.tasks[t].json()})),
            None => Reply::ghl_error(400, "Task not found"),
        },
        "create_contact_task" => {
            let task = TaskRecord {
                id: state.ids.ghl_id(),
                contact_id: contact_id.clone(),
                title: req.body_str("title").unwrap_or_default().to_owned(),
                body: req.body_str("body").map(str::to_owned),
                due_date: req.body_str("dueDate").unwrap_or_default().to_owned(),
                completed: req.body.get("completed").and_then(Value::as_bool).unwrap_or(false),
                assigned_to: req.body_str("assignedTo").map(str::to_owned),
            };
            let record = task.json();
            state.ghl.tasks.push(task);
            push::ghl(state, "TaskCreate", GhlKind::Task, &record);
            Reply::created(json!({"task": record}))
        }
        "update_contact_task" | "complete_contact_task" => {
            let Some(t) = find_task(state, &contact_id, req.param("taskId")) else {
                return Reply::ghl_error(400, "Task not found");
            };
            let task = &mut state.ghl.tasks[t];
            let was_completed = task.completed;
            if let Some(title) = req.body_str("title") {
                task.title = title.to_owned();
            }
            if let Some(body) = req.body_str("body") {
                task.body = Some(body.to_owned());
            }
            if let Some(due) = req.body_str("dueDate") {
                task.due_date = due.to_owned();
            }
            if let Some(done) = req.body.get("completed").and_then(Value::as_bool) {
                task.completed = done;
            }
            if let Some(user) = req.body_str("assignedTo") {
                task.assigned_to = Some(user.to_owned());
            }
            let record = task.json();
            // GHL has TaskComplete but no event for other task changes.
            if task.completed && !was_completed {
                push::ghl(state, "TaskComplete", GhlKind::Task, &record);
            }
            Reply::ok(json!({"task": record}))
        }
        "delete_contact_task" => match find_task(state, &contact_id, req.param("taskId")) {
            Some(t) => {
                let record = state.ghl.tasks.remove(t).json();
                push::ghl(state, "TaskDelete", GhlKind::Task, &record);
                Reply::ok(json!({"succeded": true}))
            }
            None => Reply::ghl_error(400, "Task not found"),
        },
        "get_contact_appointments" => {
            // Every appointment of the contact, cancelled ones included (with their status).
            let zone = super::calendars::location_zone(state);
            let events: Vec<Value> = state
                .ghl
                .events
                .iter()
                .filter(|e| e.contact_id == contact_id)
                .map(|e| super::calendars::contact_event_json(e, &location, zone))
                .collect();
            Reply::ok(json!({"events": events}))
        }
        _ => sample(op),
    }
}

fn find_note(state: &State, contact: &str, id: &str) -> Option<usize> {
    state.ghl.notes.iter().position(|n| n.contact_id == contact && n.id == id)
}

fn find_task(state: &State, contact: &str, id: &str) -> Option<usize> {
    state.ghl.tasks.iter().position(|t| t.contact_id == contact && t.id == id)
}

/// Tags as GHL keeps them: trimmed, lower case, no empties.
fn tag_list(value: Option<&Value>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(Value::Array(items)) = value {
        for t in items.iter().filter_map(Value::as_str) {
            let t = t.trim().to_lowercase();
            if !t.is_empty() && !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

/// A phone number in E.164 (US when it has no country code), or the 400 GHL gives.
pub fn normalize_phone(raw: &str) -> Result<String, Reply> {
    let raw = raw.trim();
    // With a default region, `phonenumber` strips that region's trunk prefix even from
    // international numbers (+44 131... loses its 1 under US): only national numbers get one.
    let region = if raw.starts_with('+') { None } else { Some(phonenumber::country::Id::US) };
    let parsed = phonenumber::parse(region, raw).ok().filter(phonenumber::is_valid);
    match parsed {
        Some(number) => Ok(number.format().mode(phonenumber::Mode::E164).to_string()),
        None => Err(Reply::ghl_error(400, format!("Invalid phone number: {raw}"))),
    }
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else { return false };
    !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !email.chars().any(char::is_whitespace)
}

/// The fields of a create, update or upsert body, cleaned as GHL stores them. Returns the
/// answer to give instead when a value is refused.
fn contact_fields(req: &ApiRequest) -> Result<Map<String, Value>, Reply> {
    let mut fields = req.body_map();
    fields.remove("locationId");
    fields.remove("createNewIfDuplicateAllowed");
    if let Some(Value::String(email)) = fields.get("email") {
        let email = email.trim().to_owned();
        if !email.is_empty() && !valid_email(&email) {
            return Err(Reply::ghl_invalid(vec!["email must be an email".into()]));
        }
        fields.insert("email".into(), json!(email));
    }
    if let Some(Value::String(phone)) = fields.get("phone")
        && !phone.trim().is_empty()
    {
        let e164 = normalize_phone(phone)?;
        fields.insert("phone".into(), json!(e164));
    }
    if fields.contains_key("tags") {
        let tags = tag_list(fields.get("tags"));
        fields.insert("tags".into(), json!(tags));
    }
    Ok(fields)
}

/// The contact that already has this email (first) or phone, and which field matched.
fn find_duplicate(state: &State, email: Option<&str>, phone: Option<&str>) -> Option<(String, &'static str)> {
    // The index names the contacts that may match; each is checked as it is now, and the
    // first in id order wins, as a scan of `contacts` would find it.
    let index = &state.ghl.match_index;
    let contact = |id: &String| state.ghl.contacts.get(id);
    if let Some(email) = email.map(str::trim).filter(|e| !e.is_empty()) {
        let email = email.to_lowercase();
        if let Some(c) = index
            .by_email(&email)
            .filter_map(contact)
            .find(|c| c.text("email").is_some_and(|e| e.to_lowercase() == email))
        {
            return Some((c.id.clone(), "email"));
        }
    }
    if let Some(phone) = phone.filter(|p| !p.is_empty())
        && let Some(c) = index.by_phone(phone).filter_map(contact).find(|c| c.text("phone") == Some(phone))
    {
        return Some((c.id.clone(), "phone"));
    }
    None
}

fn duplicate_error(state: &State, id: &str, field: &str) -> Reply {
    let name = state.ghl.contacts.get(id).map(Contact::full_name).unwrap_or_default();
    let mut reply = Reply::ghl_error(400, "This location does not allow duplicated contacts.");
    reply.body["meta"] = json!({"contactName": name, "contactId": id, "matchingField": field});
    reply
}

/// Merges `fields` into a contact: values replace, `null` removes, custom fields merge by id.
/// So `tags`, when given, replace the whole tag list (update and upsert alike); when not
/// given, the tags stay. Adding or removing single tags is what `POST`/`DELETE
/// /contacts/{id}/tags` are for.
fn merge(contact: &mut Contact, fields: Map<String, Value>) {
    for (k, v) in fields {
        if v.is_null() {
            contact.fields.remove(&k);
        } else if k == "customFields" {
            let mut merged: Vec<Value> = match contact.fields.get("customFields") {
                Some(Value::Array(items)) => items.clone(),
                _ => Vec::new(),
            };
            for item in v.as_array().cloned().unwrap_or_default() {
                let key = item.get("id").or_else(|| item.get("key")).cloned();
                match merged
                    .iter_mut()
                    .find(|m| key.is_some() && (m.get("id") == key.as_ref() || m.get("key") == key.as_ref()))
                {
                    Some(existing) => *existing = item,
                    None => merged.push(item),
                }
            }
            contact.fields.insert(k, Value::Array(merged));
        } else {
            contact.fields.insert(k, v);
        }
    }
}

fn create(state: &mut State, req: &ApiRequest) -> Reply {
    let fields = match contact_fields(req) {
        Ok(f) => f,
        Err(reply) => return reply,
    };
    let email = fields.get("email").and_then(Value::as_str);
    let phone = fields.get("phone").and_then(Value::as_str);
    if let Some((id, field)) = find_duplicate(state, email, phone) {
        return duplicate_error(state, &id, field);
    }
    let now = state.clock.now_ms();
    let contact = Contact { id: state.ids.ghl_id(), added: now, updated: now, fields };
    let record = contact.json(&state.ghl.location_id);
    state.ghl.match_index.note(&contact);
    state.ghl.contacts.insert(contact.id.clone(), contact);
    push::ghl(state, "ContactCreate", GhlKind::Contact, &record);
    Reply::created(json!({"contact": record}))
}

/// Upsert matches by email first, then by phone. When the email names one contact and the
/// phone belongs to another, the email's contact is updated and the phone is dropped without
/// a word, as the live API does (GoHighLevel/highlevel-api-docs#37): two contacts may not
/// share a number. `tags`, when given, replace the contact's tags (see `merge`).
fn upsert(state: &mut State, req: &ApiRequest) -> Reply {
    let mut fields = match contact_fields(req) {
        Ok(f) => f,
        Err(reply) => return reply,
    };
    let email = fields.get("email").and_then(Value::as_str);
    let phone = fields.get("phone").and_then(Value::as_str);
    let by_email = find_duplicate(state, email, None).map(|(id, _)| id);
    let by_phone = find_duplicate(state, None, phone).map(|(id, _)| id);
    let existing = match (by_email, by_phone) {
        (Some(e), Some(p)) if e != p => {
            fields.remove("phone");
            Some(e)
        }
        (Some(e), _) => Some(e),
        (None, p) => p,
    };
    let now = state.clock.now_ms();
    let trace = trace_id(state);
    let location = state.ghl.location_id.clone();
    let before = existing.as_deref().and_then(|id| push::ghl_contact_before(state, id));
    match existing.and_then(|id| state.ghl.contacts.get_mut(&id)) {
        Some(contact) => {
            merge(contact, fields);
            contact.updated = now;
            state.ghl.match_index.note(contact);
            let (id, record) = (contact.id.clone(), contact.json(&location));
            if let Some(before) = before {
                push::ghl_contact_changed(state, &id, &before);
            }
            Reply::ok(json!({"new": false, "contact": record, "traceId": trace}))
        }
        None => {
            let contact = Contact { id: state.ids.ghl_id(), added: now, updated: now, fields };
            let record = contact.json(&location);
            state.ghl.match_index.note(&contact);
            state.ghl.contacts.insert(contact.id.clone(), contact);
            push::ghl(state, "ContactCreate", GhlKind::Contact, &record);
            Reply::created(json!({"new": true, "contact": record, "traceId": trace}))
        }
    }
}

fn update(state: &mut State, id: &str, req: &ApiRequest) -> Reply {
    let fields = match contact_fields(req) {
        Ok(f) => f,
        Err(reply) => return reply,
    };
    let email = fields.get("email").and_then(Value::as_str);
    let phone = fields.get("phone").and_then(Value::as_str);
    if let Some((other, field)) = find_duplicate(state, email, phone)
        && other != id
    {
        return duplicate_error(state, &other, field);
    }
    let now = state.clock.now_ms();
    let location = state.ghl.location_id.clone();
    let before = push::ghl_contact_before(state, id);
    let Some(contact) = state.ghl.contacts.get_mut(id) else { return Reply::ghl_error(400, "Contact not found") };
    merge(contact, fields);
    contact.updated = now;
    state.ghl.match_index.note(contact);
    let record = contact.json(&location);
    if let Some(before) = before {
        push::ghl_contact_changed(state, id, &before);
    }
    Reply::ok(json!({"succeded": true, "contact": record}))
}

fn trace_id(state: &mut State) -> String {
    let a = state.ids.next_u64();
    let b = state.ids.next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// Whether a contact matches a free-text `query` (name, email, phone, company).
fn matches_query(c: &Contact, query: &str) -> bool {
    let q = query.trim().to_lowercase();
    q.is_empty()
        || c.full_name().to_lowercase().contains(&q)
        || ["email", "phone", "companyName"].iter().any(|f| c.text(f).is_some_and(|v| v.to_lowercase().contains(&q)))
}

/// `GET /contacts/`: oldest first, `startAfter` (dateAdded in ms) and `startAfterId`
/// together name the last contact seen; one without the other is ignored, as GHL does.
fn list(state: &State, req: &ApiRequest) -> Reply {
    let limit = match page_size(req, "limit", 20, 100) {
        Ok(l) => l,
        Err(reply) => return reply,
    };
    let query = req.query("query").unwrap_or_default();
    let mut all: Vec<&Contact> = state.ghl.contacts.values().filter(|c| matches_query(c, query)).collect();
    all.sort_by(|a, b| a.added.cmp(&b.added).then_with(|| a.id.cmp(&b.id)));
    let after = match (req.query_number("startAfter"), req.query("startAfterId")) {
        (Some(at), Some(id)) => Some((at as i64, id)),
        _ => None,
    };
    let start = match after {
        Some((at, id)) => all.iter().position(|c| (c.added, c.id.as_str()) > (at, id)).unwrap_or(all.len()),
        None => 0,
    };
    let page: Vec<&Contact> = all.iter().skip(start).take(limit).copied().collect();
    let last = page.last();
    let more = start + page.len() < all.len();
    let next_url = match last {
        Some(c) if more => {
            let mut pairs = vec![("locationId", state.ghl.location_id.clone())];
            if !query.is_empty() {
                pairs.push(("query", query.to_owned()));
            }
            pairs.push(("limit", limit.to_string()));
            pairs.push(("startAfter", c.added.to_string()));
            pairs.push(("startAfterId", c.id.clone()));
            json!(format!("{}/contacts/?{}", state.base_url, query_string(&pairs)))
        }
        _ => Value::Null,
    };
    let location = &state.ghl.location_id;
    Reply::ok(json!({
        "contacts": page.iter().map(|c| c.json(location)).collect::<Vec<_>>(),
        "count": all.len(),
        "meta": {
            "total": all.len(),
            "nextPageUrl": next_url,
            "startAfterId": last.map(|c| c.id.clone()),
            "startAfter": last.map(|c| c.added),
            "currentPage": Value::Null,
            "nextPage": Value::Null,
            "prevPage": Value::Null,
        },
    }))
}

/// The deepest result page numbers reach: page x pageLimit may not pass it.
pub const SEARCH_WINDOW: usize = 10_000;

/// `POST /contacts/search`: newest first unless `sort` says otherwise; `page` and
/// `pageLimit`, or `searchAfter` (the `searchAfter` of the last contact seen).
///
/// Page numbers reach the first 10,000 results only (the search index's result window, as
/// GHL documents it); beyond that `searchAfter` must be used, and the two may not be mixed.
/// The live API's answer to a page past the window is not documented: the sandbox refuses it
/// with a 422 in GHL's validation shape, naming the fix, rather than an empty page a poller
/// would take for the end of the list.
fn search(state: &State, req: &ApiRequest) -> Reply {
    let body = &req.body;
    let page_limit = body.get("pageLimit").and_then(Value::as_u64).unwrap_or(20) as usize;
    if !(1..=500).contains(&page_limit) {
        return Reply::ghl_invalid(vec!["pageLimit must be between 1 and 500".into()]);
    }
    let has_page = body.get("page").is_some_and(|p| !p.is_null());
    let has_after = body.get("searchAfter").is_some_and(|a| !a.is_null());
    if has_page && has_after {
        return Reply::ghl_invalid(vec!["page and searchAfter cannot be used together".into()]);
    }
    let page = body.get("page").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
    if page.saturating_mul(page_limit) > SEARCH_WINDOW {
        return Reply::ghl_invalid(vec![format!(
            "page * pageLimit must not exceed {SEARCH_WINDOW} (page {page} x pageLimit {page_limit}); \
             use searchAfter to read further"
        )]);
    }
    let query = body.get("query").and_then(Value::as_str).unwrap_or_default();
    let filters = body.get("filters").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut problems = Vec::new();
    for f in &filters {
        check_filter(f, &mut problems);
    }
    if !problems.is_empty() {
        return Reply::ghl_invalid(problems);
    }
    let (sort_field, ascending) = match body.get("sort").and_then(Value::as_array).and_then(|s| s.first()) {
        Some(s) => (
            s.get("field").and_then(Value::as_str).unwrap_or("dateAdded").to_owned(),
            s.get("direction").and_then(Value::as_str) == Some("asc"),
        ),
        None => ("dateAdded".to_owned(), false),
    };
    let location = &state.ghl.location_id;
    let mut found: Vec<(Value, &Contact)> = state
        .ghl
        .contacts
        .values()
        .filter(|c| matches_query(c, query))
        .map(|c| (c.json(location), c))
        .filter(|(json, _)| filters.iter().all(|f| filter_matches(f, json)))
        .collect();
    let key = |json: &Value| -> Value {
        match sort_field.as_str() {
            "dateAdded" | "dateUpdated" => {
                json!(json[&sort_field].as_str().and_then(super::super::clock::parse_iso).unwrap_or(0))
            }
            other => json!(json[other].as_str().unwrap_or_default().to_lowercase()),
        }
    };
    found.sort_by(|(a, ca), (b, cb)| {
        let order = compare(&key(a), &key(b)).then_with(|| ca.id.cmp(&cb.id));
        if ascending { order } else { order.reverse() }
    });
    let total = found.len();
    let start = match body.get("searchAfter").and_then(Value::as_array) {
        Some(after) if after.len() == 2 => found
            .iter()
            .position(|(json, c)| {
                let order =
                    compare(&key(json), &after[0]).then_with(|| c.id.as_str().cmp(after[1].as_str().unwrap_or("")));
                if ascending { order.is_gt() } else { order.is_lt() }
            })
            .unwrap_or(total),
        _ => (page - 1).saturating_mul(page_limit),
    };
    let contacts: Vec<Value> = found
        .into_iter()
        .skip(start)
        .take(page_limit)
        .map(|(mut json, c)| {
            json["searchAfter"] = json!([key(&json), c.id]);
            json
        })
        .collect();
    Reply::ok(json!({"contacts": contacts, "total": total}))
}

fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => a.as_str().unwrap_or_default().cmp(b.as_str().unwrap_or_default()),
    }
}

const OPERATORS: &[&str] = &["eq", "not_eq", "contains", "not_contains", "exists", "not_exists", "range"];

fn check_filter(f: &Value, problems: &mut Vec<String>) {
    if let Some(group) = f.get("filters").and_then(Value::as_array) {
        for inner in group {
            check_filter(inner, problems);
        }
        return;
    }
    match f.get("operator").and_then(Value::as_str) {
        Some(op) if OPERATORS.contains(&op) => {}
        Some(op) => {
            problems.push(format!("filters: operator `{op}` is not supported; use one of {}", OPERATORS.join(", ")))
        }
        None => problems.push("filters: each filter needs field, operator and value".into()),
    }
    if f.get("field").and_then(Value::as_str).is_none() {
        problems.push("filters: each filter needs field, operator and value".into());
    }
}

/// One search filter, `{field, operator, value}` or a group `{group: AND|OR, filters}`.
fn filter_matches(f: &Value, contact: &Value) -> bool {
    if let Some(group) = f.get("filters").and_then(Value::as_array) {
        return match f.get("group").and_then(Value::as_str) {
            Some("OR") => group.iter().any(|g| filter_matches(g, contact)),
            _ => group.iter().all(|g| filter_matches(g, contact)),
        };
    }
    let field = f.get("field").and_then(Value::as_str).unwrap_or_default();
    let actual = &contact[field];
    let wanted = f.get("value").cloned().unwrap_or(Value::Null);
    let text = |v: &Value| v.as_str().map(str::to_lowercase).unwrap_or_else(|| v.to_string().to_lowercase());
    let equal = |v: &Value| match v {
        Value::Array(items) => items.iter().any(|i| text(i) == text(&wanted)),
        other => text(other) == text(&wanted),
    };
    let contains = |v: &Value| match v {
        Value::Array(items) => items.iter().any(|i| text(i).contains(&text(&wanted))),
        Value::Null => false,
        other => text(other).contains(&text(&wanted)),
    };
    match f.get("operator").and_then(Value::as_str).unwrap_or_default() {
        "eq" => equal(actual),
        "not_eq" => !equal(actual),
        "contains" => contains(actual),
        "not_contains" => !contains(actual),
        "exists" => !actual.is_null() && actual != &json!("") && actual != &json!([]),
        "not_exists" => actual.is_null() || actual == &json!("") || actual == &json!([]),
        "range" => {
            let at = actual.as_str().and_then(super::super::clock::parse_iso);
            let bound = |k: &str| wanted.get(k).and_then(Value::as_str).and_then(super::super::clock::parse_iso);
            at.is_some_and(|at| bound("gte").is_none_or(|b| at >= b) && bound("lte").is_none_or(|b| at <= b))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_become_e164_and_bad_ones_are_refused() {
        assert_eq!(normalize_phone("(415) 555-2671").unwrap(), "+14155552671");
        assert_eq!(normalize_phone("+44 20 7946 0018").unwrap(), "+442079460018");
        assert_eq!(normalize_phone("+441314960835").unwrap(), "+441314960835");
        assert_eq!(normalize_phone("+86 138 0655 9157").unwrap(), "+8613806559157");
        assert_eq!(normalize_phone("020 7946 0018").unwrap_err().status, 400);
    }

    #[test]
    fn tags_are_trimmed_lower_case_and_unique() {
        assert_eq!(tag_list(Some(&json!([" VIP", "vip", "Capsule", ""]))), vec!["vip", "capsule"]);
    }

    #[test]
    fn filters_match_fields_groups_and_ranges() {
        let c = json!({"email": "Zoe@Example.com", "tags": ["vip"], "dateAdded": "2025-06-02T09:00:00.000Z"});
        assert!(filter_matches(&json!({"field": "email", "operator": "eq", "value": "zoe@example.com"}), &c));
        assert!(filter_matches(&json!({"field": "tags", "operator": "contains", "value": "vi"}), &c));
        assert!(!filter_matches(&json!({"field": "phone", "operator": "exists"}), &c));
        assert!(filter_matches(
            &json!({"group": "OR", "filters": [
                {"field": "email", "operator": "eq", "value": "nobody"},
                {"field": "dateAdded", "operator": "range", "value": {"gte": "2025-06-01T00:00:00Z"}}
            ]}),
            &c
        ));
    }
}
