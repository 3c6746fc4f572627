//! The sub-account's calendar and its appointments. Times are shown in the sub-account's
//! time zone (America/Chicago), with the offset, as GHL shows them.

use serde_json::{Value, json};

use super::super::clock::{Ms, datetime, iso_ms, parse_iso};
use super::super::state::State;
use super::super::wire::{ApiRequest, Reply};
use super::{Event, existing_contact, sample};
use crate::catalog::Operation;

const ZONE: chrono_tz::Tz = chrono_tz::America::Chicago;

pub fn handle(state: &mut State, op: &Operation, req: &ApiRequest) -> Reply {
    let location = state.ghl.location_id.clone();
    match op.key.name.as_str() {
        "list_calendars" => Reply::ok(json!({"calendars": state.ghl.calendars})),
        "get_calendar_by_id" => match state.ghl.calendars.iter().find(|c| c["id"] == req.param("calendarId")) {
            Some(c) => Reply::ok(json!({"calendar": c})),
            None => Reply::ghl_error(400, "Calendar not found"),
        },
        "list_calendar_events" => {
            let (calendar, user, group) = (req.query("calendarId"), req.query("userId"), req.query("groupId"));
            if calendar.is_none() && user.is_none() && group.is_none() {
                return Reply::ghl_invalid(vec!["one of calendarId, userId or groupId is required".into()]);
            }
            let (Some(start), Some(end)) =
                (req.query("startTime").and_then(epoch_or_iso), req.query("endTime").and_then(epoch_or_iso))
            else {
                return Reply::ghl_invalid(vec!["startTime and endTime must be epoch milliseconds".into()]);
            };
            let events: Vec<Value> = state
                .ghl
                .events
                .iter()
                .filter(|e| calendar.is_none_or(|c| e.calendar_id == c))
                .filter(|e| user.is_none_or(|u| e.assigned_user_id == u))
                .filter(|e| e.end > start && e.start < end)
                .map(|e| event_json(e, &location))
                .collect();
            Reply::ok(json!({"events": events}))
        }
        "get_appointment" => match state.ghl.events.iter().find(|e| e.id == req.param("eventId")) {
            Some(e) => Reply::ok(json!({"event": event_json(e, &location)})),
            None => Reply::ghl_error(400, "Appointment not found"),
        },
        "create_appointment" => {
            let contact = req.body_str("contactId").unwrap_or_default().to_owned();
            if let Err(reply) = existing_contact(state, &contact) {
                return reply;
            }
            let calendar = req.body_str("calendarId").unwrap_or_default().to_owned();
            if !state.ghl.calendars.iter().any(|c| c["id"] == calendar.as_str()) {
                return Reply::ghl_error(400, "Calendar not found");
            }
            let Some(start) = req.body_str("startTime").and_then(parse_iso) else {
                return Reply::ghl_invalid(vec!["startTime must be an ISO 8601 date-time".into()]);
            };
            let end = req.body_str("endTime").and_then(parse_iso).unwrap_or(start + 1_800_000);
            let now = state.clock.now_ms();
            let name = state.ghl.contacts.get(&contact).map(|c| c.full_name()).unwrap_or_default();
            let event = Event {
                id: state.ids.ghl_id(),
                calendar_id: calendar,
                contact_id: contact,
                title: req.body_str("title").map(str::to_owned).unwrap_or(format!("Appointment with {name}")),
                appointment_status: req.body_str("appointmentStatus").unwrap_or("new").to_owned(),
                assigned_user_id: req.body_str("assignedUserId").unwrap_or_default().to_owned(),
                address: req.body_str("address").unwrap_or_default().to_owned(),
                notes: req.body_str("description").unwrap_or_default().to_owned(),
                start,
                end,
                added: now,
                updated: now,
            };
            let body = event_json(&event, &location);
            state.ghl.events.push(event);
            Reply::created(body)
        }
        "update_appointment" => {
            let now = state.clock.now_ms();
            let Some(e) = state.ghl.events.iter_mut().find(|e| e.id == req.param("eventId")) else {
                return Reply::ghl_error(400, "Appointment not found");
            };
            if let Some(start) = req.body_str("startTime").and_then(parse_iso) {
                let length = e.end - e.start;
                e.start = start;
                e.end = req.body_str("endTime").and_then(parse_iso).unwrap_or(start + length);
            }
            for (field, target) in [
                ("title", &mut e.title),
                ("appointmentStatus", &mut e.appointment_status),
                ("assignedUserId", &mut e.assigned_user_id),
                ("address", &mut e.address),
                ("description", &mut e.notes),
            ] {
                if let Some(v) = req.body_str(field) {
                    *target = v.to_owned();
                }
            }
            e.updated = now;
            Reply::ok(event_json(e, &location))
        }
        _ => sample(op),
    }
}

/// Epoch milliseconds (a number or a numeric string), or an ISO date-time.
fn epoch_or_iso(text: &str) -> Option<Ms> {
    text.trim().parse::<i64>().ok().or_else(|| parse_iso(text))
}

fn local(ms: Ms) -> String {
    datetime(ms).with_timezone(&ZONE).to_rfc3339()
}

pub fn event_json(e: &Event, location: &str) -> Value {
    json!({
        "id": e.id, "calendarId": e.calendar_id, "locationId": location, "contactId": e.contact_id,
        "title": e.title, "status": "booked", "appointmentStatus": e.appointment_status,
        "assignedUserId": e.assigned_user_id, "users": [e.assigned_user_id], "address": e.address,
        "notes": e.notes, "startTime": local(e.start), "endTime": local(e.end), "isRecurring": false,
        "dateAdded": iso_ms(e.added), "dateUpdated": iso_ms(e.updated), "assignedResources": [],
        "createdBy": {"source": "third_party", "userId": Value::Null},
    })
}
