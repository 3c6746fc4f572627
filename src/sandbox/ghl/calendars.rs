//! The sub-account's calendar and its appointments, held to the rules the live API applies:
//! the calendar must exist, an appointment needs an assigned user of the location and a
//! contact, its times need an offset, and unless `ignoreFreeSlotValidation` is true the slot
//! must be one the calendar offers (open hours, on its slot grid, in the future, not taken
//! by another live appointment of the calendar). Free slots are computed by the same rule,
//! so what `free-slots` offers is exactly what a validated booking accepts.
//!
//! Times: an appointment is stored as two instants plus the offsets they were sent with.
//! Create and update answers echo the times in those offsets (as the catalog's sample does);
//! the event list and `get_appointment` show them in the location's zone with its offset
//! (America/Chicago for the seed); a contact's appointments use the spec's
//! `YYYY-MM-DD HH:mm:ss`, in the location's zone as well (the spec does not say which zone;
//! the location's is the one GHL shows everywhere else).

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Offset, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};

use super::super::clock::{Ms, datetime, iso_ms};
use super::super::push::{self, GhlKind};
use super::super::state::State;
use super::super::wire::{ApiRequest, Reply};
use super::{Event, existing_contact, known_user, no_such_user, sample};
use crate::catalog::Operation;

/// The zone when the location names none (or one chrono-tz does not know).
const DEFAULT_ZONE: Tz = chrono_tz::America::Chicago;

/// The live API's answer for a slot it would not offer. The wording is what public GHL
/// clients match on for a taken or unavailable slot (a 400 from
/// POST /calendars/events/appointments); GHL documents none of its slot errors.
const SLOT_TAKEN: &str = "The slot you have selected is no longer available.";

/// Without either user field the live API refuses the booking; this is the wording reported
/// in GoHighLevel/highlevel-api-docs#23. `userId` is undocumented and not in the catalog,
/// so the sandbox's input check refuses it as an unknown property before it gets here.
const NO_USER: &str = "Either userId or assignedUserId must be set";

const DAY_MS: Ms = 86_400_000;

pub fn handle(state: &mut State, op: &Operation, req: &ApiRequest) -> Reply {
    let location = state.ghl.location_id.clone();
    let zone = location_zone(state);
    match op.key.name.as_str() {
        "list_calendars" => Reply::ok(json!({"calendars": state.ghl.calendars})),
        "get_calendar_by_id" => match calendar(state, req.param("calendarId")) {
            Some(c) => Reply::ok(json!({"calendar": c})),
            None => Reply::ghl_error(400, "Calendar not found"),
        },
        "get_free_slots" => free_slots(state, req, zone),
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
            let in_group = |calendar_id: &str| {
                group.is_none_or(|g| {
                    state.ghl.calendars.iter().any(|c| c["id"] == calendar_id && c["groupId"].as_str() == Some(g))
                })
            };
            // Cancelled appointments stay in the list, with their status: a client matching
            // its own bookings (by a marker in the description) must still find them.
            let events: Vec<Value> = state
                .ghl
                .events
                .iter()
                .filter(|e| calendar.is_none_or(|c| e.calendar_id == c))
                .filter(|e| user.is_none_or(|u| e.assigned_user_id == u))
                .filter(|e| in_group(&e.calendar_id))
                .filter(|e| e.end > start && e.start < end)
                .map(|e| event_json(e, &location, zone))
                .collect();
            Reply::ok(json!({"events": events}))
        }
        "get_appointment" => match state.ghl.events.iter().find(|e| e.id == req.param("eventId")) {
            Some(e) => Reply::ok(json!({"event": event_json(e, &location, zone)})),
            None => Reply::ghl_error(400, "Appointment not found"),
        },
        "create_appointment" => match create(state, req, zone) {
            Ok(event) => {
                let body = echo_json(&event, &location);
                if push::ghl_on(state) {
                    let record = event_json(&event, &location, zone);
                    push::ghl(state, "AppointmentCreate", GhlKind::Appointment, &record);
                }
                state.ghl.events.push(event);
                // The spec and the catalog give 200 for a booking, not 201.
                Reply::ok(body)
            }
            Err(reply) => reply,
        },
        "update_appointment" => update(state, req, zone, &location),
        _ => sample(op),
    }
}

fn calendar<'a>(state: &'a State, id: &str) -> Option<&'a Value> {
    state.ghl.calendars.iter().find(|c| c["id"] == id)
}

/// The location's time zone.
pub fn location_zone(state: &State) -> Tz {
    state.ghl.location["timezone"].as_str().and_then(|z| z.parse::<Tz>().ok()).unwrap_or(DEFAULT_ZONE)
}

/// A date-time with an offset (`Z` or `±HH:MM`): the instant and the offset in seconds.
/// A bare local time is refused: the live API's handling of one is not documented, and
/// guessing a zone would book the wrong hour without a word (the strictest choice).
fn parse_time(req: &ApiRequest, field: &str) -> Result<Option<(Ms, i32)>, Reply> {
    let Some(text) = req.body_str(field) else { return Ok(None) };
    match DateTime::parse_from_rfc3339(text.trim()) {
        Ok(t) => Ok(Some((t.timestamp_millis(), t.offset().local_minus_utc()))),
        Err(_) => Err(Reply::ghl_invalid(vec![format!(
            "{field} must be a valid ISO 8601 date string with a time zone offset (e.g. 2024-10-29T10:00:00-05:00)"
        )])),
    }
}

/// The calendar's slot length (`slotDuration` in `slotDurationUnit`), 30 minutes if unset.
fn slot_length(calendar: &Value) -> Ms {
    minutes(calendar, "slotDuration", "slotDurationUnit").unwrap_or(30 * 60_000)
}

/// The calendar's slot grid step (`slotInterval`), its slot length if unset.
fn slot_step(calendar: &Value) -> Ms {
    minutes(calendar, "slotInterval", "slotIntervalUnit").unwrap_or_else(|| slot_length(calendar))
}

fn minutes(calendar: &Value, field: &str, unit: &str) -> Option<Ms> {
    let n = calendar[field].as_i64().filter(|n| *n > 0)?;
    let per = match calendar[unit].as_str() {
        Some("hours") => 3_600_000,
        _ => 60_000,
    };
    Some(n * per)
}

/// The calendar's open windows on a local date, as instants. `openHours[].daysOfTheWeek`
/// counts from Sunday = 0.
fn open_windows(calendar: &Value, date: NaiveDate, zone: Tz) -> Vec<(Ms, Ms)> {
    let weekday = i64::from(date.weekday().num_days_from_sunday());
    let at = |hour: i64, minute: i64| -> Option<Ms> {
        let naive = date.and_hms_opt(u32::try_from(hour).ok()?, u32::try_from(minute).ok()?, 0)?;
        // A wall time skipped by a clock change has no instant; an ambiguous one takes
        // the earlier.
        zone.from_local_datetime(&naive).earliest().map(|t| t.timestamp_millis())
    };
    let mut windows = Vec::new();
    for rule in calendar["openHours"].as_array().into_iter().flatten() {
        let days = rule["daysOfTheWeek"].as_array();
        if !days.is_some_and(|d| d.iter().any(|d| d.as_i64() == Some(weekday))) {
            continue;
        }
        for h in rule["hours"].as_array().into_iter().flatten() {
            let field = |name: &str| h[name].as_i64().unwrap_or(0);
            if let (Some(open), Some(close)) =
                (at(field("openHour"), field("openMinute")), at(field("closeHour"), field("closeMinute")))
                && open < close
            {
                windows.push((open, close));
            }
        }
    }
    windows
}

/// Whether `[start, end)` is a slot the calendar offers: in the future (unless
/// `allow_past`), inside one open window, on the slot grid counted from the window's
/// opening, and not overlapping another live (not cancelled) appointment of the calendar
/// other than `except`. The grid check is the strict reading of "a free slot": public GHL
/// clients report that the live API compares the time against the slots free-slots would
/// return (GHL documents none of this).
fn slot_offered(
    state: &State,
    calendar: &Value,
    (start, end): (Ms, Ms),
    except: Option<&str>,
    zone: Tz,
    allow_past: bool,
) -> bool {
    if !allow_past && start <= state.clock.current() {
        return false;
    }
    let date = datetime(start).with_timezone(&zone).date_naive();
    let step = slot_step(calendar);
    let in_window = open_windows(calendar, date, zone)
        .into_iter()
        .any(|(open, close)| open <= start && end <= close && (start - open) % step == 0);
    in_window && !overlaps(state, calendar, start, end, except)
}

fn overlaps(state: &State, calendar: &Value, start: Ms, end: Ms, except: Option<&str>) -> bool {
    state.ghl.events.iter().any(|e| {
        calendar["id"] == e.calendar_id.as_str()
            && Some(e.id.as_str()) != except
            && e.appointment_status != "cancelled"
            && e.start < end
            && start < e.end
    })
}

/// Checks a new or moved appointment's time. With `ignoreFreeSlotValidation` nothing is
/// checked; with only `ignoreDateRange` a past start is allowed but the slot must still be
/// open and free.
fn check_slot(
    state: &State,
    req: &ApiRequest,
    calendar: &Value,
    (start, end): (Ms, Ms),
    except: Option<&str>,
    zone: Tz,
) -> Result<(), Reply> {
    if end <= start {
        return Err(Reply::ghl_error(400, "endTime must be after startTime"));
    }
    if req.body.get("ignoreFreeSlotValidation").and_then(Value::as_bool) == Some(true) {
        return Ok(());
    }
    let ignore_range = req.body.get("ignoreDateRange").and_then(Value::as_bool) == Some(true);
    let free = slot_offered(state, calendar, (start, end), except, zone, ignore_range);
    if free { Ok(()) } else { Err(Reply::ghl_error(400, SLOT_TAKEN)) }
}

fn create(state: &mut State, req: &ApiRequest, zone: Tz) -> Result<Event, Reply> {
    let contact = req.body_str("contactId").unwrap_or_default().to_owned();
    existing_contact(state, &contact)?;
    let calendar_id = req.body_str("calendarId").unwrap_or_default().to_owned();
    let Some(calendar) = calendar(state, &calendar_id).cloned() else {
        return Err(Reply::ghl_error(400, "Calendar not found"));
    };
    let user = req.body_str("assignedUserId").unwrap_or_default().to_owned();
    if user.is_empty() {
        return Err(Reply::ghl_error(400, NO_USER));
    }
    if !known_user(state, &user) {
        return Err(no_such_user());
    }
    let Some((start, start_offset)) = parse_time(req, "startTime")? else {
        return Err(Reply::ghl_invalid(vec!["startTime should not be empty".into()]));
    };
    let (end, end_offset) = parse_time(req, "endTime")?.unwrap_or((start + slot_length(&calendar), start_offset));
    check_slot(state, req, &calendar, (start, end), None, zone)?;
    let now = state.clock.now_ms();
    let name = state.ghl.contacts.get(&contact).map(|c| c.full_name()).unwrap_or_default();
    Ok(Event {
        id: state.ids.ghl_id(),
        calendar_id,
        contact_id: contact,
        title: req.body_str("title").map(str::to_owned).unwrap_or(format!("Appointment with {name}")),
        appointment_status: req.body_str("appointmentStatus").unwrap_or("new").to_owned(),
        assigned_user_id: user,
        address: req.body_str("address").unwrap_or_default().to_owned(),
        notes: String::new(),
        description: req.body_str("description").unwrap_or_default().to_owned(),
        start,
        end,
        start_offset,
        end_offset,
        added: now,
        updated: now,
        notified: notifies(req),
    })
}

/// `toNotify` defaults to true: only an explicit false keeps the calendar's notifications
/// and automations from running.
fn notifies(req: &ApiRequest) -> bool {
    req.body.get("toNotify").and_then(Value::as_bool) != Some(false)
}

fn update(state: &mut State, req: &ApiRequest, zone: Tz, location: &str) -> Reply {
    let id = req.param("eventId").to_owned();
    let Some(current) = state.ghl.events.iter().find(|e| e.id == id).cloned() else {
        return Reply::ghl_error(400, "Appointment not found");
    };
    let calendar_id = req.body_str("calendarId").unwrap_or(&current.calendar_id).to_owned();
    let Some(calendar) = calendar(state, &calendar_id).cloned() else {
        return Reply::ghl_error(400, "Calendar not found");
    };
    if let Some(user) = req.body_str("assignedUserId") {
        if user.is_empty() {
            return Reply::ghl_error(400, NO_USER);
        }
        if !known_user(state, user) {
            return no_such_user();
        }
    }
    let (start, end) = match (parse_time(req, "startTime"), parse_time(req, "endTime")) {
        (Err(reply), _) | (_, Err(reply)) => return reply,
        (Ok(start), Ok(end)) => (start, end),
    };
    // A new start without an end keeps the appointment's length, in the new start's offset.
    let new_start = start.unwrap_or((current.start, current.start_offset));
    let new_end = end.unwrap_or(match start {
        Some((s, offset)) => (s + (current.end - current.start), offset),
        None => (current.end, current.end_offset),
    });
    let moved = new_start.0 != current.start || new_end.0 != current.end || calendar_id != current.calendar_id;
    if moved && let Err(reply) = check_slot(state, req, &calendar, (new_start.0, new_end.0), Some(&id), zone) {
        return reply;
    }
    let now = state.clock.now_ms();
    let Some(e) = state.ghl.events.iter_mut().find(|e| e.id == id) else {
        return Reply::ghl_error(400, "Appointment not found");
    };
    (e.start, e.start_offset) = new_start;
    (e.end, e.end_offset) = new_end;
    e.calendar_id = calendar_id;
    for (field, target) in [
        ("title", &mut e.title),
        ("appointmentStatus", &mut e.appointment_status),
        ("assignedUserId", &mut e.assigned_user_id),
        ("address", &mut e.address),
        ("description", &mut e.description),
    ] {
        if let Some(v) = req.body_str(field) {
            *target = v.to_owned();
        }
    }
    // Any change made without `toNotify: false` runs the calendar's notifications.
    e.notified |= notifies(req);
    e.updated = now;
    let answer = echo_json(e, location);
    let record = event_json(e, location, zone);
    push::ghl(state, "AppointmentUpdate", GhlKind::Appointment, &record);
    Reply::ok(answer)
}

/// `free-slots`: the slots a validated booking would accept, per local date, in the
/// asked zone (the location's by default). At most 31 days, as the live API allows.
fn free_slots(state: &State, req: &ApiRequest, zone: Tz) -> Reply {
    let Some(calendar) = calendar(state, req.param("calendarId")) else {
        return Reply::ghl_error(400, "Calendar not found");
    };
    let (Some(from), Some(to)) = (req.query("startDate").and_then(epoch), req.query("endDate").and_then(epoch)) else {
        return Reply::ghl_invalid(vec!["startDate and endDate must be epoch milliseconds".into()]);
    };
    if to < from || to - from > 31 * DAY_MS {
        return Reply::ghl_error(400, "The date range must be at most 31 days");
    }
    let shown: Tz = match req.query("timezone") {
        Some(name) => match name.parse() {
            Ok(z) => z,
            Err(_) => return Reply::ghl_invalid(vec![format!("timezone {name} is not a valid IANA time zone")]),
        },
        None => zone,
    };
    let user = req.query("userId");
    let length = slot_length(calendar);
    let step = slot_step(calendar);
    let mut days = serde_json::Map::new();
    let mut date = datetime(from).with_timezone(&zone).date_naive();
    let last = datetime(to).with_timezone(&zone).date_naive();
    while date <= last {
        let mut slots = Vec::new();
        for (open, close) in open_windows(calendar, date, zone) {
            let mut start = open;
            while start + length <= close {
                let end = start + length;
                let user_busy = user.is_some_and(|u| {
                    state.ghl.events.iter().any(|e| {
                        e.assigned_user_id == u && e.appointment_status != "cancelled" && e.start < end && start < e.end
                    })
                });
                if (from..=to).contains(&start)
                    && !user_busy
                    && slot_offered(state, calendar, (start, end), None, zone, false)
                {
                    slots.push(json!(in_zone(start, shown)));
                }
                start += step;
            }
        }
        if !slots.is_empty() {
            days.insert(date.format("%Y-%m-%d").to_string(), json!({"slots": slots}));
        }
        let Some(next) = date.succ_opt() else { break };
        date = next;
    }
    Reply::ok(Value::Object(days))
}

fn epoch(text: &str) -> Option<Ms> {
    text.trim().parse::<i64>().ok()
}

/// Epoch milliseconds (a number or a numeric string), or an ISO date-time.
fn epoch_or_iso(text: &str) -> Option<Ms> {
    epoch(text).or_else(|| super::super::clock::parse_iso(text))
}

/// `2026-03-09T09:00:00-05:00`: an instant in a zone, with that zone's offset then.
fn in_zone(ms: Ms, zone: Tz) -> String {
    datetime(ms).with_timezone(&zone).to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// An instant in a fixed offset (`Z` for UTC), as a caller wrote it.
fn in_offset(ms: Ms, offset: i32) -> String {
    let offset = FixedOffset::east_opt(offset).unwrap_or(Utc.fix());
    datetime(ms).with_timezone(&offset).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `2026-03-09 09:00:00` in the zone: the spec's format for a contact's appointments.
fn plain(ms: Ms, zone: Tz) -> String {
    datetime(ms).with_timezone(&zone).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The create and update answer (AppointmentSchemaResponse): the times as they were sent.
fn echo_json(e: &Event, location: &str) -> Value {
    json!({
        "id": e.id, "calendarId": e.calendar_id, "locationId": location, "contactId": e.contact_id,
        "startTime": in_offset(e.start, e.start_offset), "endTime": in_offset(e.end, e.end_offset),
        "title": e.title, "meetingLocationType": "custom", "appointmentStatus": e.appointment_status,
        "assignedUserId": e.assigned_user_id, "address": e.address, "isRecurring": false, "rrule": "",
    })
}

/// An appointment as the event list and `get_appointment` show it (CalendarEventDTO).
pub fn event_json(e: &Event, location: &str, zone: Tz) -> Value {
    json!({
        "id": e.id, "calendarId": e.calendar_id, "locationId": location, "contactId": e.contact_id,
        "groupId": "", "title": e.title, "status": "booked", "appointmentStatus": e.appointment_status,
        "assignedUserId": e.assigned_user_id, "users": [e.assigned_user_id], "address": e.address,
        "notes": e.notes, "description": e.description, "startTime": in_zone(e.start, zone),
        "endTime": in_zone(e.end, zone), "isRecurring": false, "dateAdded": iso_ms(e.added),
        "dateUpdated": iso_ms(e.updated), "assignedResources": [],
        "createdBy": {"source": "third_party", "userId": Value::Null},
    })
}

/// An appointment as `GET /contacts/{id}/appointments` shows it (GetEventSchema): plain
/// local times, and no `description`, which that schema lacks. Whether GHL copies the
/// description into `notes` there is documented nowhere, so `notes` carries only the
/// appointment's own notes (empty for API bookings): the strict reading.
pub fn contact_event_json(e: &Event, location: &str, zone: Tz) -> Value {
    json!({
        "id": e.id, "calendarId": e.calendar_id, "status": "booked", "title": e.title,
        "assignedUserId": e.assigned_user_id, "notes": e.notes, "startTime": plain(e.start, zone),
        "endTime": plain(e.end, zone), "address": e.address, "locationId": location, "contactId": e.contact_id,
        "groupId": "", "appointmentStatus": e.appointment_status, "users": [e.assigned_user_id],
        "dateAdded": plain(e.added, zone), "dateUpdated": plain(e.updated, zone), "assignedResources": [],
    })
}

/// An appointment for the sandbox's Rust API: the event as listed, plus `notified`.
pub fn inspect_json(e: &Event, location: &str, zone: Tz) -> Value {
    let mut v = event_json(e, location, zone);
    v["notified"] = json!(e.notified);
    v
}
