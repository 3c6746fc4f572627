//! The GHL sub-account of the seed.

use std::collections::BTreeMap;

use serde_json::{Map, json};

use super::super::capsule::{CapsuleData, Party};
use super::super::clock::{BASE_MS, Rng, days, iso_ms};
use super::super::ghl::{Contact, Conversation, Event, GhlData, MatchIndex, Message, Note, Opportunity, TaskRecord};
use super::{COMPANY_ID, LOCATION_ID};

/// The GHL sub-account: location, users, custom fields, a pipeline with opportunities, a
/// calendar with appointments, contacts with notes, tasks and conversations.
pub fn seed(rng: &mut Rng, ids: &mut Rng, capsule: &CapsuleData) -> GhlData {
    let loc = LOCATION_ID;
    let admin = ids.ghl_id();
    let rep = ids.ghl_id();
    let user = |id: &str, first: &str, last: &str, email: &str, role: &str| {
        json!({
            "id": id, "name": format!("{first} {last}"), "firstName": first, "lastName": last, "email": email,
            "phone": "+14155550142", "extension": "", "deleted": false, "platformLanguage": "en_US",
            "lcPhone": {}, "scopes": "contacts.write",
            "permissions": {"contactsEnabled": true, "conversationsEnabled": true, "opportunitiesEnabled": true,
                            "appointmentsEnabled": true, "campaignsEnabled": role == "admin",
                            "workflowsEnabled": role == "admin", "settingsEnabled": role == "admin",
                            "paymentsEnabled": role == "admin", "assignedDataOnly": role != "admin"},
            "roles": {"type": "account", "role": role, "locationIds": [loc], "restrictSubAccount": role != "admin"},
        })
    };
    let mut users = vec![
        user(&admin, "Priya", "Raman", "priya.raman@sandbox-agency.example", "admin"),
        user(&rep, "Tom", "Becker", "tom.becker@sandbox-agency.example", "user"),
    ];
    // Two Capsule users also work in GHL, under the same email (Dana in New York, Ananya in
    // Kolkata); the other Capsule users have no GHL user. Their ids come from a copy of the
    // id generator, so the ids of everything after them stay as they were.
    let mut staff_ids = Rng::new(ids.clone().next_u64());
    let mut calendar_members =
        vec![json!({"userId": admin, "priority": 0.5, "meetingLocationType": "custom", "isPrimary": true})];
    for u in capsule.users.iter().filter(|u| [1_201_876, 1_187_342].contains(&u.id)) {
        let id = staff_ids.ghl_id();
        users.push(user(&id, &u.first_name, &u.last_name, &super::user_email(u), "user"));
        calendar_members
            .push(json!({"userId": id, "priority": 0.5, "meetingLocationType": "custom", "isPrimary": false}));
    }
    let location = json!({
        "id": loc, "companyId": COMPANY_ID, "name": "Sandbox Dental & Co", "address": "233 S Wacker Dr",
        "city": "Chicago", "state": "IL", "country": "US", "postalCode": "60606", "website": "https://sandbox-dental.example",
        "timezone": "America/Chicago", "firstName": "Priya", "lastName": "Raman", "email": "office@sandbox-dental.example",
        "phone": "+13125550163", "domain": "book.sandbox-dental.example", "logoUrl": "", "reseller": {},
        "business": {"name": "Sandbox Dental & Co", "address": "233 S Wacker Dr", "city": "Chicago", "state": "IL",
                     "country": "US", "postalCode": "60606", "timezone": "America/Chicago",
                     "website": "https://sandbox-dental.example", "logoUrl": ""},
        "settings": {"allowDuplicateContact": false, "allowDuplicateOpportunity": false,
                     "allowFacebookNameMerge": false, "disableContactTimezone": false},
        "social": {},
    });
    let custom_field = |id: String, name: &str, key: &str, data_type: &str, model: &str, options: &[&str]| {
        json!({
            "id": id, "name": name, "fieldKey": key, "placeholder": "", "dataType": data_type, "position": 0,
            "picklistOptions": options, "picklistImageOptions": [], "isAllowedCustomOption": false,
            "isMultiFileAllowed": false, "maxFileLimit": 0, "locationId": loc, "model": model,
        })
    };
    let custom_fields = vec![
        custom_field(ids.ghl_id(), "Capsule party id", "contact.capsule_party_id", "TEXT", "contact", &[]),
        custom_field(ids.ghl_id(), "Other emails", "contact.other_emails", "LARGE_TEXT", "contact", &[]),
        custom_field(ids.ghl_id(), "Other phones", "contact.other_phones", "LARGE_TEXT", "contact", &[]),
        custom_field(
            ids.ghl_id(),
            "Deal channel",
            "opportunity.deal_channel",
            "SINGLE_OPTIONS",
            "opportunity",
            &["Google Ads", "Referral", "Trade show"],
        ),
    ];

    // Contacts: five of the sub-account's own, and three Capsule people already known here.
    let mut contacts = BTreeMap::new();
    let own = [
        ("Rosa", "Delgado", "rosa.delgado@example.com", "+12055550143", "AL", "Dolomite"),
        ("Marcus", "Chen", "marcus.chen@example.com", "+14155550178", "CA", "San Francisco"),
        ("Li", "Wei", "li.wei@example.com", "+14155550142", "CA", "Oakland"),
        ("Sam", "Lee", "sam.lee@example.net", "+13125550119", "IL", "Chicago"),
        ("Noor", "Haddad", "noor.haddad@example.org", "+12125550187", "NY", "New York"),
    ];
    let mut added = BASE_MS - days(200);
    for (first, last, email, phone, state, city) in own {
        added += days(rng.range(5, 30)) + rng.range(0, 86_399_999);
        let mut fields = Map::new();
        fields.insert("firstName".into(), json!(first));
        fields.insert("lastName".into(), json!(last));
        fields.insert("email".into(), json!(email));
        fields.insert("phone".into(), json!(phone));
        fields.insert("city".into(), json!(city));
        fields.insert("state".into(), json!(state));
        fields.insert("country".into(), json!("US"));
        fields.insert("source".into(), json!("website form"));
        fields.insert("tags".into(), json!(["new lead"]));
        let id = ids.ghl_id();
        contacts.insert(id.clone(), Contact { id, added, updated: added + days(1), fields });
    }
    let known: Vec<&Party> = capsule.people().filter(|p| !p.emails.is_empty()).step_by(7).take(3).collect();
    for p in known {
        added += days(rng.range(1, 5));
        let mut fields = Map::new();
        fields.insert("firstName".into(), json!(p.first_name));
        fields.insert("lastName".into(), json!(p.last_name));
        fields.insert("email".into(), json!(p.emails[0].address));
        fields.insert("source".into(), json!("manual"));
        fields.insert("tags".into(), json!(["imported"]));
        let id = ids.ghl_id();
        contacts.insert(id.clone(), Contact { id, added, updated: added, fields });
    }
    let contact_ids: Vec<String> = {
        let mut all: Vec<&Contact> = contacts.values().collect();
        all.sort_by_key(|c| c.added);
        all.iter().map(|c| c.id.clone()).collect()
    };

    let mut notes = Vec::new();
    let mut tasks = Vec::new();
    for (i, contact) in contact_ids.iter().take(4).enumerate() {
        let at = BASE_MS - days(20 - i as i64);
        notes.push(Note {
            id: ids.ghl_id(),
            contact_id: contact.clone(),
            body: "Prefers text over calls. Interested in the spring promotion.".into(),
            title: Some("Follow-up summary".into()),
            color: None,
            pinned: i == 0,
            user_id: Some(admin.clone()),
            added: at,
        });
        tasks.push(TaskRecord {
            id: ids.ghl_id(),
            contact_id: contact.clone(),
            title: "Call back about quote".into(),
            body: Some("Asked for a price on the annual plan.".into()),
            due_date: iso_ms(BASE_MS + days(i as i64 - 1)),
            completed: i % 2 == 1,
            assigned_to: Some(rep.clone()),
        });
    }

    let stages: Vec<(String, &str)> = ["New lead", "Qualified", "Proposal sent", "Negotiation"]
        .into_iter()
        .map(|name| (format!("{:08x}-5e3b-4a1c-9d2f-{:012x}", ids.next_u64() as u32, ids.next_u64() >> 16), name))
        .collect();
    let pipeline_id = ids.ghl_id();
    let pipelines = vec![json!({
        "id": pipeline_id, "name": "Sales pipeline", "locationId": loc, "showInFunnel": true,
        "showInPieChart": true, "colorRenderMode": "dot",
        "stages": stages.iter().enumerate().map(|(i, (id, name))| json!({
            "id": id, "name": name, "position": i, "showInFunnel": true, "showInPieChart": true,
        })).collect::<Vec<_>>(),
    })];
    let mut opportunities = Vec::new();
    let statuses = ["open", "open", "won", "open", "won", "lost", "open", "won", "abandoned", "open", "won", "open"];
    for (i, status) in statuses.iter().enumerate() {
        let contact = &contact_ids[i % contact_ids.len()];
        let name = contacts.get(contact).map(|c| c.full_name()).unwrap_or_default();
        let created = BASE_MS - days(120) + days(9 * i as i64) + rng.range(0, 86_399_999);
        let updated = created + days(rng.range(1, 8));
        let stage = &stages[if *status == "won" { 3 } else { i % 3 }].0;
        opportunities.push(Opportunity {
            id: ids.ghl_id(),
            name: format!("{name} - {}", ["Annual plan", "Website redesign", "Maintenance contract"][i % 3]),
            pipeline_id: pipeline_id.clone(),
            stage_id: stage.clone(),
            status: (*status).into(),
            monetary_value: (rng.range(8, 120) * 100) as f64,
            assigned_to: Some(if i % 2 == 0 { admin.clone() } else { rep.clone() }),
            contact_id: contact.clone(),
            source: "Website form".into(),
            created,
            updated,
            last_status_change: updated,
            last_stage_change: updated,
            custom_fields: Vec::new(),
            lost_reason_id: None,
        });
    }

    let calendar_id = ids.ghl_id();
    let calendars = vec![json!({
        "id": calendar_id, "locationId": loc, "name": "Discovery Call", "description": "30-minute intro call.",
        "slug": "discovery-call", "calendarType": "round_robin", "eventType": "RoundRobin_OptimizeForAvailability",
        "eventTitle": "{{contact.name}} - Discovery Call", "eventColor": "#039be5", "isActive": true,
        "slotDuration": 30, "slotDurationUnit": "mins", "slotInterval": 30, "slotIntervalUnit": "mins",
        "teamMembers": calendar_members,
        "openHours": [{"daysOfTheWeek": [1, 2, 3, 4, 5], "hours": [{"openHour": 9, "openMinute": 0, "closeHour": 17, "closeMinute": 0}]}],
        "autoConfirm": true, "allowReschedule": true, "allowCancellation": true,
    })];
    let mut events = Vec::new();
    for (i, contact) in contact_ids.iter().enumerate().take(6) {
        let start = BASE_MS + days(i as i64 * 4 - 8) + 3_600_000 * rng.range(0, 6);
        let name = contacts.get(contact).map(|c| c.full_name()).unwrap_or_default();
        events.push(Event {
            id: ids.ghl_id(),
            calendar_id: calendar_id.clone(),
            contact_id: contact.clone(),
            title: format!("Discovery Call with {name}"),
            appointment_status: if i % 3 == 0 { "new".into() } else { "confirmed".into() },
            assigned_user_id: admin.clone(),
            address: "https://meet.google.com/yqp-gogr-wve".into(),
            notes: String::new(),
            description: String::new(),
            start,
            end: start + 1_800_000,
            start_offset: 0,
            end_offset: 0,
            added: start - days(5),
            updated: start - days(4),
            notified: true,
        });
    }

    let mut conversations = Vec::new();
    let mut messages = Vec::new();
    for (i, contact) in contact_ids.iter().take(3).enumerate() {
        let conversation = ids.ghl_id();
        let mut at = BASE_MS - days(10 - i as i64);
        for (k, (direction, body)) in
            [("inbound", "Hi, is the 3pm slot tomorrow still free?"), ("outbound", "Yes! Booked you in. See you then.")]
                .iter()
                .enumerate()
        {
            at += 600_000 * (k as i64 + 1);
            messages.push(Message {
                id: ids.ghl_id(),
                conversation_id: conversation.clone(),
                contact_id: contact.clone(),
                channel: "SMS".into(),
                body: (*body).into(),
                subject: None,
                direction: (*direction).into(),
                status: "delivered".into(),
                added: at,
                user_id: (*direction == "outbound").then(|| admin.clone()),
            });
        }
        conversations.push(Conversation {
            id: conversation,
            contact_id: contact.clone(),
            added: BASE_MS - days(10 - i as i64),
            updated: at,
            last_message_date: at,
            unread: 1,
        });
    }

    let match_index = MatchIndex::of(contacts.values());
    GhlData {
        location_id: loc.into(),
        company_id: COMPANY_ID.into(),
        location,
        users,
        custom_fields,
        contacts,
        notes,
        tasks,
        conversations,
        messages,
        pipelines,
        opportunities,
        calendars,
        events,
        gone: Default::default(),
        match_index,
    }
}
