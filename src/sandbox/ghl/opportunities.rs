//! Opportunities in the sub-account's pipeline, and the pipeline itself.

use serde_json::{Value, json};

use super::super::clock::iso_ms;
use super::super::push::{self, GhlKind};
use super::super::state::State;
use super::super::wire::{ApiRequest, Reply};
use super::{GhlData, Opportunity, amount, existing_contact, page_size, query_string, sample};
use crate::catalog::Operation;

pub fn handle(state: &mut State, op: &Operation, req: &ApiRequest) -> Reply {
    let id = req.param("id").to_owned();
    match op.key.name.as_str() {
        "list_pipelines" => Reply::ok(json!({"pipelines": state.ghl.pipelines})),
        "search_opportunities" => search(state, req),
        "get_opportunity" => match state.ghl.opportunities.iter().find(|o| o.id == id) {
            Some(o) => Reply::ok(json!({"opportunity": opportunity_json(&state.ghl, o, false)})),
            None => Reply::ghl_error(400, "Opportunity not found"),
        },
        "create_opportunity" => create(state, req),
        "update_opportunity" | "update_opportunity_status" => {
            let now = state.clock.now_ms();
            let stages = stage_ids(&state.ghl);
            let Some(o) = state.ghl.opportunities.iter_mut().find(|o| o.id == id) else {
                return Reply::ghl_error(400, "Opportunity not found");
            };
            let before = o.clone();
            if let Some(stage) = req.body_str("pipelineStageId") {
                if !stages.iter().any(|s| s == stage) {
                    return Reply::ghl_error(400, "Pipeline stage not found");
                }
                if o.stage_id != stage {
                    o.stage_id = stage.to_owned();
                    o.last_stage_change = now;
                }
            }
            if let Some(status) = req.body_str("status")
                && o.status != status
            {
                o.status = status.to_owned();
                o.last_status_change = now;
            }
            if let Some(name) = req.body_str("name") {
                o.name = name.to_owned();
            }
            if let Some(value) = req.body.get("monetaryValue").and_then(Value::as_f64) {
                o.monetary_value = value;
            }
            if let Some(user) = req.body_str("assignedTo") {
                o.assigned_to = Some(user.to_owned());
            }
            if let Some(reason) = req.body_str("lostReasonId") {
                o.lost_reason_id = Some(reason.to_owned());
            }
            if let Some(Value::Array(fields)) = req.body.get("customFields") {
                o.custom_fields = fields.clone();
            }
            o.updated = now;
            let o = o.clone();
            changed(state, &before, &o);
            if op.key.name == "update_opportunity_status" {
                Reply::ok(json!({"succeded": true}))
            } else {
                Reply::ok(json!({"opportunity": opportunity_json(&state.ghl, &o, false)}))
            }
        }
        "delete_opportunity" => {
            let Some(gone) = state.ghl.opportunities.iter().position(|o| o.id == id) else {
                return Reply::ghl_error(400, "Opportunity not found");
            };
            let o = state.ghl.opportunities.remove(gone);
            emit(state, "OpportunityDelete", &o);
            Reply::ok(json!({"succeded": true}))
        }
        _ => sample(op),
    }
}

fn stage_ids(ghl: &GhlData) -> Vec<String> {
    ghl.pipelines
        .iter()
        .flat_map(|p| p["stages"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect()
}

fn opportunity_json(ghl: &GhlData, o: &Opportunity, with_extras: bool) -> Value {
    let contact = ghl.contacts.get(&o.contact_id).map(|c| {
        json!({
            "id": c.id, "name": c.full_name(), "companyName": c.text("companyName").unwrap_or_default(),
            "email": c.text("email"), "phone": c.text("phone"), "tags": c.tags(),
        })
    });
    let mut v = json!({
        "id": o.id, "name": o.name, "monetaryValue": amount(o.monetary_value), "pipelineId": o.pipeline_id,
        "pipelineStageId": o.stage_id, "assignedTo": o.assigned_to, "status": o.status, "source": o.source,
        "lastStatusChangeAt": iso_ms(o.last_status_change), "lastStageChangeAt": iso_ms(o.last_stage_change),
        "lastActionDate": iso_ms(o.updated), "indexVersion": 1, "createdAt": iso_ms(o.created),
        "updatedAt": iso_ms(o.updated), "contactId": o.contact_id, "locationId": ghl.location_id,
        "contact": contact, "lostReasonId": o.lost_reason_id, "customFields": o.custom_fields, "followers": [],
        "externalObjectId": Value::Null,
    });
    if with_extras {
        v["notes"] = json!([]);
        v["tasks"] = json!([]);
        v["calendarEvents"] = json!([]);
    }
    v
}

fn create(state: &mut State, req: &ApiRequest) -> Reply {
    let contact = req.body_str("contactId").unwrap_or_default().to_owned();
    if let Err(reply) = existing_contact(state, &contact) {
        return reply;
    }
    let pipeline = req.body_str("pipelineId").unwrap_or_default().to_owned();
    let Some(p) = state.ghl.pipelines.iter().find(|p| p["id"] == pipeline.as_str()) else {
        return Reply::ghl_error(400, "Pipeline not found");
    };
    let first_stage = p["stages"][0]["id"].as_str().unwrap_or_default().to_owned();
    if state.ghl.opportunities.iter().any(|o| o.contact_id == contact && o.pipeline_id == pipeline) {
        return Reply::ghl_error(400, "Can not create duplicate opportunity for the contact.");
    }
    let now = state.clock.now_ms();
    let o = Opportunity {
        id: state.ids.ghl_id(),
        name: req.body_str("name").unwrap_or_default().to_owned(),
        pipeline_id: pipeline,
        stage_id: req.body_str("pipelineStageId").map(str::to_owned).unwrap_or(first_stage),
        status: req.body_str("status").unwrap_or("open").to_owned(),
        monetary_value: req.body.get("monetaryValue").and_then(Value::as_f64).unwrap_or(0.0),
        assigned_to: req.body_str("assignedTo").map(str::to_owned),
        contact_id: contact,
        source: String::new(),
        created: now,
        updated: now,
        last_status_change: now,
        last_stage_change: now,
        custom_fields: req.body.get("customFields").and_then(Value::as_array).cloned().unwrap_or_default(),
        lost_reason_id: None,
    };
    let body = json!({"opportunity": opportunity_json(&state.ghl, &o, false)});
    emit(state, "OpportunityCreate", &o);
    state.ghl.opportunities.push(o);
    Reply::created(body)
}

/// `GET /opportunities/search`: newest first (or oldest, `order=added_asc`); `startAfter`
/// (createdAt in ms) and `startAfterId` continue after the last one seen, `page` also works.
fn search(state: &State, req: &ApiRequest) -> Reply {
    let limit = match page_size(req, "limit", 20, 100) {
        Ok(l) => l,
        Err(reply) => return reply,
    };
    let ghl = &state.ghl;
    let status = req.query("status").unwrap_or("all");
    let q = req.query("q").unwrap_or_default().to_lowercase();
    let mut found: Vec<&Opportunity> = ghl
        .opportunities
        .iter()
        .filter(|o| status == "all" || o.status == status)
        .filter(|o| req.query("pipeline_id").is_none_or(|p| o.pipeline_id == p))
        .filter(|o| req.query("pipeline_stage_id").is_none_or(|s| o.stage_id == s))
        .filter(|o| req.query("contact_id").is_none_or(|c| o.contact_id == c))
        .filter(|o| req.query("assigned_to").is_none_or(|u| o.assigned_to.as_deref() == Some(u)))
        .filter(|o| req.query("id").is_none_or(|id| o.id == id))
        .filter(|o| q.is_empty() || o.name.to_lowercase().contains(&q))
        .collect();
    // `order`: added_desc (newest first) or added_asc. The spec names only added_asc and no
    // default; the sandbox lists newest first when none is given and refuses other values.
    let ascending = match req.query("order") {
        None | Some("added_desc") => false,
        Some("added_asc") => true,
        Some(other) => {
            return Reply::ghl_invalid(vec![format!("order must be one of added_asc, added_desc, not {other}")]);
        }
    };
    found.sort_by(|a, b| {
        let order = a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id));
        if ascending { order } else { order.reverse() }
    });
    let total = found.len();
    let page_number = req.query_number("page").map(|p| p.max(1.0) as usize).unwrap_or(1);
    let start = match (req.query_number("startAfter"), req.query("startAfterId")) {
        (Some(at), Some(id)) => found
            .iter()
            .position(|o| {
                let key = (o.created, o.id.as_str());
                if ascending { key > (at as i64, id) } else { key < (at as i64, id) }
            })
            .unwrap_or(total),
        _ => (page_number - 1).saturating_mul(limit),
    };
    let page: Vec<&Opportunity> = found.iter().skip(start).take(limit).copied().collect();
    let last = page.last();
    let more = start + page.len() < total;
    let extras = ["getTasks", "getNotes", "getCalendarEvents"].iter().any(|k| req.query(k) == Some("true"));
    let next_url = match last {
        Some(o) if more => json!(format!(
            "{}/opportunities/search?{}",
            state.base_url,
            query_string(&[
                ("location_id", ghl.location_id.clone()),
                ("status", status.to_owned()),
                ("order", if ascending { "added_asc" } else { "added_desc" }.to_owned()),
                ("limit", limit.to_string()),
                ("startAfter", o.created.to_string()),
                ("startAfterId", o.id.clone()),
            ])
        )),
        _ => Value::Null,
    };
    Reply::ok(json!({
        "opportunities": page.iter().map(|o| opportunity_json(ghl, o, extras)).collect::<Vec<_>>(),
        "meta": {
            "total": total,
            "nextPageUrl": next_url,
            "startAfterId": last.map(|o| o.id.clone()),
            "startAfter": last.map(|o| o.created),
            "currentPage": page_number,
            "nextPage": if more { json!(page_number + 1) } else { Value::Null },
            "prevPage": if page_number > 1 { json!(page_number - 1) } else { Value::Null },
        },
        "aggregations": {},
    }))
}

/// Wins `n` open opportunities, as a salesperson would in GHL; returns their ids.
pub fn win(state: &mut State, n: usize) -> Vec<String> {
    let now = state.clock.now_ms();
    let mut won = Vec::new();
    for o in state.ghl.opportunities.iter_mut().filter(|o| o.status == "open").take(n) {
        let before = o.clone();
        o.status = "won".to_owned();
        o.last_status_change = now;
        o.updated = now;
        won.push((before, o.clone()));
    }
    for (before, after) in &won {
        changed(state, before, after);
    }
    won.into_iter().map(|(_, o)| o.id).collect()
}

/// Sends `event_type` for an opportunity.
fn emit(state: &mut State, event_type: &str, o: &Opportunity) {
    if push::ghl_on(state) {
        let record = opportunity_json(&state.ghl, o, false);
        push::ghl(state, event_type, GhlKind::Opportunity, &record);
    }
}

/// The events of a changed opportunity: `OpportunityUpdate`, then one for each of the
/// stage, status, owner and value that changed. Whether GHL sends `OpportunityUpdate`
/// besides the specific ones is not documented; the sandbox sends both.
fn changed(state: &mut State, before: &Opportunity, after: &Opportunity) {
    let specific = [
        ("OpportunityStageUpdate", before.stage_id != after.stage_id),
        ("OpportunityStatusUpdate", before.status != after.status),
        ("OpportunityAssignedToUpdate", before.assigned_to != after.assigned_to),
        ("OpportunityMonetaryValueUpdate", before.monetary_value != after.monetary_value),
    ];
    emit(state, "OpportunityUpdate", after);
    for (event_type, _) in specific.iter().filter(|(_, changed)| *changed) {
        emit(state, event_type, after);
    }
}
