//! Conversations and messages. Sending a message files it in the contact's conversation
//! (opened on the first message); nothing is delivered anywhere.

use serde_json::{Value, json};

use super::super::clock::{Ms, iso_ms};
use super::super::push::{self, GhlKind};
use super::super::state::State;
use super::super::wire::{ApiRequest, Reply};
use super::{Conversation, Message, existing_contact, page_size, sample};
use crate::catalog::Operation;

pub fn handle(state: &mut State, op: &Operation, req: &ApiRequest) -> Reply {
    match op.key.name.as_str() {
        "send_message" => send(state, req),
        "create_conversation" => {
            let contact = req.body_str("contactId").unwrap_or_default().to_owned();
            if let Err(reply) = existing_contact(state, &contact) {
                return reply;
            }
            if let Some(existing) = state.ghl.conversations.iter().find(|c| c.contact_id == contact) {
                let mut reply = Reply::ghl_error(400, "Conversation already exists");
                reply.body["conversationId"] = json!(existing.id);
                return reply;
            }
            let id = open(state, &contact);
            let c = state.ghl.conversations.iter().find(|c| c.id == id).cloned();
            let location = state.ghl.location_id.clone();
            Reply::created(json!({"success": true, "conversation": c.map(|c| json!({
                "id": c.id, "contactId": c.contact_id, "locationId": location, "deleted": false,
                "dateAdded": iso_ms(c.added), "dateUpdated": iso_ms(c.updated),
                "lastMessageDate": iso_ms(c.last_message_date), "assignedTo": Value::Null,
            }))}))
        }
        "search_conversations" => search(state, req),
        "get_conversation" => match state.ghl.conversations.iter().find(|c| c.id == req.param("conversationId")) {
            Some(c) => Reply::ok(json!({
                "id": c.id, "contactId": c.contact_id, "locationId": state.ghl.location_id, "deleted": false,
                "inbox": true, "type": 1, "unreadCount": c.unread, "starred": false, "assignedTo": Value::Null,
            })),
            None => Reply::ghl_error(400, "Conversation not found"),
        },
        "get_messages_by_conversation" => messages(state, req),
        "get_message_by_id" => match state.ghl.messages.iter().find(|m| m.id == req.param("id")) {
            Some(m) => Reply::ok(message_json(m, &state.ghl.location_id)),
            None => Reply::ghl_error(400, "Message not found"),
        },
        _ => sample(op),
    }
}

/// GHL's message type: the name and the number it uses.
fn message_type(channel: &str) -> (&'static str, u32) {
    match channel {
        "Email" => ("TYPE_EMAIL", 3),
        "WhatsApp" => ("TYPE_WHATSAPP", 19),
        "FB" => ("TYPE_FACEBOOK", 11),
        "IG" => ("TYPE_INSTAGRAM", 18),
        "Live_Chat" => ("TYPE_LIVE_CHAT", 29),
        "RCS" => ("TYPE_RCS", 36),
        "TIKTOK" => ("TYPE_TIKTOK", 37),
        "Custom" => ("TYPE_CUSTOM_SMS", 20),
        _ => ("TYPE_SMS", 2),
    }
}

pub fn message_json(m: &Message, location: &str) -> Value {
    let (name, number) = message_type(&m.channel);
    let mut v = json!({
        "id": m.id, "type": number, "messageType": name, "direction": m.direction, "status": m.status,
        "body": m.body, "contentType": if m.channel == "Email" { "text/html" } else { "text/plain" },
        "contactId": m.contact_id, "conversationId": m.conversation_id, "locationId": location,
        "dateAdded": iso_ms(m.added), "attachments": [], "source": "api", "meta": {},
    });
    if let Some(user) = &m.user_id {
        v["userId"] = json!(user);
    }
    if let Some(subject) = &m.subject {
        v["meta"] = json!({"email": {"subject": subject}});
    }
    v
}

/// Sends the webhook for the message just added. The event names the channel in
/// `messageType` as the published examples do (`SMS`, `Email`), where the API's message
/// record has `TYPE_SMS`.
fn push_last_message(state: &mut State, event_type: &str) {
    if !push::ghl_on(state) {
        return;
    }
    let Some(m) = state.ghl.messages.last() else { return };
    let mut record = message_json(m, &state.ghl.location_id);
    record["messageType"] = json!(m.channel);
    push::ghl(state, event_type, GhlKind::Message, &record);
}

/// A message from the contact, as when they reply by SMS or email (control API): stored in
/// their conversation (opened if need be, one unread more) and sent as `InboundMessage`.
/// Returns the message id; None when there is no such contact.
pub fn receive(state: &mut State, contact_id: &str, channel: &str, body: &str) -> Option<String> {
    if !state.ghl.contacts.contains_key(contact_id) {
        return None;
    }
    let conversation = open(state, contact_id);
    let now = state.clock.now_ms();
    let id = state.ids.ghl_id();
    state.ghl.messages.push(Message {
        id: id.clone(),
        conversation_id: conversation.clone(),
        contact_id: contact_id.to_owned(),
        channel: channel.to_owned(),
        body: body.to_owned(),
        subject: None,
        direction: "inbound".into(),
        status: "delivered".into(),
        added: now,
        user_id: None,
    });
    if let Some(c) = state.ghl.conversations.iter_mut().find(|c| c.id == conversation) {
        c.last_message_date = now;
        c.updated = now;
        c.unread += 1;
    }
    push_last_message(state, "InboundMessage");
    Some(id)
}

/// The contact's conversation, opened if it has none. Returns its id.
fn open(state: &mut State, contact: &str) -> String {
    if let Some(c) = state.ghl.conversations.iter().find(|c| c.contact_id == contact) {
        return c.id.clone();
    }
    let now = state.clock.now_ms();
    let id = state.ids.ghl_id();
    state.ghl.conversations.push(Conversation {
        id: id.clone(),
        contact_id: contact.to_owned(),
        added: now,
        updated: now,
        last_message_date: now,
        unread: 0,
    });
    id
}

fn send(state: &mut State, req: &ApiRequest) -> Reply {
    let contact_id = req.body_str("contactId").unwrap_or_default().to_owned();
    let channel = req.body_str("type").unwrap_or("SMS").to_owned();
    let contact = match existing_contact(state, &contact_id) {
        Ok(c) => c,
        Err(reply) => return reply,
    };
    let text = req.body_str("message").or_else(|| req.body_str("html")).unwrap_or_default().to_owned();
    let has_attachments = req.body.get("attachments").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    if text.is_empty() && !has_attachments {
        return Reply::ghl_invalid(vec!["message should not be empty".into()]);
    }
    match channel.as_str() {
        "SMS" | "WhatsApp" | "RCS" if contact.text("phone").is_none() && req.body_str("toNumber").is_none() => {
            return Reply::ghl_error(400, "Missing phone number for the contact");
        }
        "Email" if contact.text("email").is_none() && req.body_str("emailTo").is_none() => {
            return Reply::ghl_error(400, "Missing email for the contact");
        }
        _ => {}
    }
    let conversation = open(state, &contact_id);
    let now: Ms = state.clock.now_ms();
    let id = state.ids.ghl_id();
    state.ghl.messages.push(Message {
        id: id.clone(),
        conversation_id: conversation.clone(),
        contact_id,
        channel: channel.clone(),
        body: text,
        subject: req.body_str("subject").map(str::to_owned),
        direction: "outbound".into(),
        status: if req.body.get("scheduledTimestamp").is_some() { "scheduled".into() } else { "pending".into() },
        added: now,
        user_id: None,
    });
    if let Some(c) = state.ghl.conversations.iter_mut().find(|c| c.id == conversation) {
        c.last_message_date = now;
        c.updated = now;
    }
    push_last_message(state, "OutboundMessage");
    let mut body = json!({
        "conversationId": conversation, "messageId": id, "messageIds": [id], "msg": "Message queued successfully.",
    });
    if channel == "Email" {
        body["emailMessageId"] = json!(state.ids.ghl_id());
    }
    Reply::created(body)
}

/// `GET /conversations/search`: latest message first; `startAfterDate` is the
/// `lastMessageDate` of the last conversation seen.
fn search(state: &State, req: &ApiRequest) -> Reply {
    let limit = match page_size(req, "limit", 20, 100) {
        Ok(l) => l,
        Err(reply) => return reply,
    };
    let ghl = &state.ghl;
    let query = req.query("query").unwrap_or_default().to_lowercase();
    let ascending = req.query("sort") == Some("asc");
    let mut found: Vec<&Conversation> = ghl
        .conversations
        .iter()
        .filter(|c| req.query("contactId").is_none_or(|id| c.contact_id == id))
        .filter(|c| req.query("id").is_none_or(|id| c.id == id))
        .filter(|c| {
            query.is_empty()
                || ghl.contacts.get(&c.contact_id).is_some_and(|k| {
                    k.full_name().to_lowercase().contains(&query)
                        || k.text("email").is_some_and(|e| e.to_lowercase().contains(&query))
                })
        })
        .collect();
    found.sort_by(|a, b| a.last_message_date.cmp(&b.last_message_date).then_with(|| a.id.cmp(&b.id)));
    if !ascending {
        found.reverse();
    }
    let total = found.len();
    let after = req.query_number("startAfterDate").map(|n| n as i64);
    let items: Vec<Value> = found
        .into_iter()
        .filter(|c| after.is_none_or(|a| if ascending { c.last_message_date > a } else { c.last_message_date < a }))
        .take(limit)
        .map(|c| {
            let contact = ghl.contacts.get(&c.contact_id);
            let last = ghl.messages.iter().rev().find(|m| m.conversation_id == c.id);
            let name = contact.map(|k| k.full_name()).unwrap_or_default();
            json!({
                "id": c.id, "contactId": c.contact_id, "locationId": ghl.location_id,
                "fullName": name, "contactName": name,
                "email": contact.and_then(|k| k.text("email")), "phone": contact.and_then(|k| k.text("phone")),
                "lastMessageBody": last.map(|m| m.body.clone()),
                "lastMessageType": last.map(|m| message_type(&m.channel).0),
                "lastMessageDate": c.last_message_date, "dateAdded": c.added, "dateUpdated": c.updated,
                "type": "TYPE_PHONE", "unreadCount": c.unread,
            })
        })
        .collect();
    Reply::ok(json!({"conversations": items, "total": total}))
}

/// `GET /conversations/{id}/messages`: newest first, `lastMessageId` continues after it.
fn messages(state: &State, req: &ApiRequest) -> Reply {
    let limit = match page_size(req, "limit", 20, 100) {
        Ok(l) => l,
        Err(reply) => return reply,
    };
    let id = req.param("conversationId");
    if !state.ghl.conversations.iter().any(|c| c.id == id) {
        return Reply::ghl_error(400, "Conversation not found");
    }
    let mut all: Vec<&Message> = state.ghl.messages.iter().filter(|m| m.conversation_id == id).collect();
    all.sort_by(|a, b| b.added.cmp(&a.added).then_with(|| b.id.cmp(&a.id)));
    let start = match req.query("lastMessageId") {
        Some(last) => all.iter().position(|m| m.id == last).map(|i| i + 1).unwrap_or(all.len()),
        None => 0,
    };
    let page: Vec<&Message> = all.iter().skip(start).take(limit).copied().collect();
    let more = start + page.len() < all.len();
    Reply::ok(json!({"messages": {
        "lastMessageId": page.last().map(|m| m.id.clone()),
        "nextPage": more,
        "messages": page.iter().map(|m| message_json(m, &state.ghl.location_id)).collect::<Vec<_>>(),
    }}))
}
