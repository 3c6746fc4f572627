//! Capsule meetings in a GHL calendar (`recipes/capsule-meetings.yaml`), end to end against
//! the sandbox: each meeting booked once at the instant its owner meant, moves, completions
//! and removals arriving as exactly those changes, and no double booking when writes fail or
//! their answers are lost.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone};
use ghlflow::demo::Workspace;
use ghlflow::sandbox::SandboxOptions;
use ghlflow::store::RunStatus;
use serde_json::Value;

use crate::util::{ghlflow_env, stderr};

async fn workspace(options: SandboxOptions) -> Workspace {
    Workspace::new(SandboxOptions { limits_scale: 100.0, ..options }).await.unwrap()
}

/// The appointments on the sandbox's calendar, by the Capsule task their marker names.
fn appointments_by_task(ws: &Workspace) -> BTreeMap<i64, Vec<Value>> {
    let mut by_task: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
    for a in ws.sandbox.ghl_appointments() {
        let description = a["description"].as_str().unwrap_or_default().to_owned();
        if let Some(rest) = description.split("[capsule task ").nth(1)
            && let Some(id) = rest.split(']').next().and_then(|n| n.parse().ok())
        {
            by_task.entry(id).or_default().push(a);
        }
    }
    by_task
}

/// A recipe's runs of one Capsule task, newest first.
async fn runs_of(ws: &Workspace, recipe: &str, task: i64) -> Vec<ghlflow::store::RunRecord> {
    let item = task.to_string();
    let runs = ws.engine.store().runs(Some(recipe), usize::MAX).await.unwrap();
    runs.into_iter().filter(|r| r.item_id.as_deref() == Some(item.as_str())).collect()
}

fn instant(text: &Value) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(text.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("`{text}` is not an RFC 3339 time: {e}"))
}

/// The instant a wall-clock time names in `zone` (the earlier one when it repeats; a time
/// in the skipped hour moves forward by the gap, as the recipe's `from_zone` reads it).
fn wall_clock(zone: chrono_tz::Tz, day: &str, time: &str) -> DateTime<FixedOffset> {
    let local = NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .unwrap()
        .and_time(NaiveTime::parse_from_str(time, "%H:%M:%S").unwrap());
    let at = match zone.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => t,
        chrono::LocalResult::None => zone.from_local_datetime(&(local + chrono::Duration::hours(1))).unwrap(),
    };
    at.fixed_offset()
}

fn user_in(ws: &Workspace, tz: &str) -> i64 {
    ws.sandbox.capsule_users().into_iter().find(|u| u["timezone"] == tz).unwrap()["id"].as_i64().unwrap()
}

/// Capsule people the mirror already put in GHL.
async fn mirrored_people(ws: &Workspace, n: usize) -> Vec<i64> {
    let mut people: Vec<i64> = Vec::new();
    for id in ws.sandbox.capsule_people() {
        if people.len() < n && ws.engine.store().id_of(&format!("party:{id}")).await.unwrap().is_some() {
            people.push(id);
        }
    }
    assert_eq!(people.len(), n, "not enough mirrored people");
    people
}

struct Meeting {
    task: i64,
    zone: chrono_tz::Tz,
    day: &'static str,
    time: &'static str,
}

/// 50 meetings: half owned in New York on both sides of its 2026 clock changes (the
/// skipped hour and the repeated one included), half in Kolkata (+05:30, no DST).
async fn add_fifty_meetings(ws: &Workspace) -> Vec<Meeting> {
    let new_york = user_in(ws, "America/New_York");
    let kolkata = user_in(ws, "Asia/Kolkata");
    let people = mirrored_people(ws, 10).await;
    let new_york_times = [
        ("2026-03-07", "09:30:00"),
        ("2026-03-08", "02:30:00"), // does not exist: clocks jump from 02:00 to 03:00
        ("2026-03-08", "10:00:00"),
        ("2026-03-09", "09:30:00"),
        ("2026-11-01", "01:30:00"), // happens twice: the first (EDT) is meant
    ];
    let kolkata_times = [
        ("2026-03-07", "09:30:00"),
        ("2026-03-09", "18:45:00"),
        ("2026-12-01", "23:30:00"), // the previous day in UTC
        ("2027-01-15", "00:15:00"),
        ("2026-11-01", "07:00:00"),
    ];
    let mut meetings = Vec::new();
    for i in 0..25 {
        let (day, time) = new_york_times[i % new_york_times.len()];
        let task = ws.sandbox.capsule_add_meeting(people[i % people.len()], new_york, day, time, "Meeting");
        meetings.push(Meeting { task, zone: chrono_tz::America::New_York, day, time });
        let (day, time) = kolkata_times[i % kolkata_times.len()];
        let task = ws.sandbox.capsule_add_meeting(people[(i + 5) % people.len()], kolkata, day, time, "Meeting");
        meetings.push(Meeting { task, zone: chrono_tz::Asia::Kolkata, day, time });
    }
    meetings
}

fn only_appointment(by_task: &BTreeMap<i64, Vec<Value>>, task: i64) -> &Value {
    let found = by_task.get(&task).map(Vec::as_slice).unwrap_or_default();
    assert_eq!(found.len(), 1, "meeting {task} should be booked exactly once: {found:?}");
    &found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_meetings_arrive_once_at_the_owners_instant_and_changes_arrive_as_such() {
    let ws = workspace(SandboxOptions { people: 60, seed: 31, ..SandboxOptions::default() }).await;
    let first = ws.cycle().await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(first.still_failed, 0, "{first:?}");
    let meetings = add_fifty_meetings(&ws).await;

    let r = ws.cycle().await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!((r.failed, r.still_failed, r.waiting), (0, 0, 0), "{r:?}");
    let calendar = ws.sandbox.ghl_calendar_id();
    let by_task = appointments_by_task(&ws);
    for m in &meetings {
        let a = only_appointment(&by_task, m.task);
        let want = wall_clock(m.zone, m.day, m.time);
        assert_eq!(instant(&a["startTime"]), want, "meeting {} ({} {} {})", m.task, m.zone, m.day, m.time);
        assert_eq!(instant(&a["endTime"]) - want, chrono::Duration::minutes(30), "default length, meeting {}", m.task);
        assert_eq!(a["calendarId"], calendar.as_str());
        assert_eq!(a["appointmentStatus"], "confirmed");
        assert_eq!(a["notified"], false, "the contact was sent a notification for meeting {}", m.task);
        assert!(!a["assignedUserId"].as_str().unwrap_or_default().is_empty(), "{a}");
    }

    // Assigned to the GHL user with the owner's email: Dana in New York, Ananya in Kolkata.
    let ghl_user = |email: &str| {
        ws.sandbox.ghl_users().into_iter().find(|u| u["email"] == email).unwrap()["id"].as_str().unwrap().to_owned()
    };
    let (dana, ananya) =
        (ghl_user("dana.whitfield@sandbox-agency.example"), ghl_user("ananya.iyer@sandbox-agency.example"));
    assert_ne!(dana, ananya);
    for m in &meetings {
        let want = if m.zone == chrono_tz::Asia::Kolkata { &ananya } else { &dana };
        assert_eq!(only_appointment(&by_task, m.task)["assignedUserId"], want.as_str(), "meeting {}", m.task);
    }

    // Sent with the owner's offset, not converted to UTC: the create requests' answers echo it.
    let offsets: std::collections::BTreeSet<String> = ws
        .engine
        .store()
        .runs(Some("capsule-meetings"), usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r.steps.into_iter().find(|s| s.id == "book").and_then(|s| s.output))
        .filter_map(|out| out["startTime"].as_str().map(|t| t[19..].to_owned()))
        .collect();
    for offset in ["-05:00", "-04:00", "+05:30"] {
        assert!(offsets.contains(offset), "no meeting was sent with offset {offset}: {offsets:?}");
    }

    // An owner with no GHL user (Marta, in London): the default user (the demo's setting
    // GHL_DEFAULT_USER_ID, the location's first user).
    let london = user_in(&ws, "Europe/London");
    let task =
        ws.sandbox.capsule_add_meeting(mirrored_people(&ws, 1).await[0], london, "2026-07-01", "16:00:00", "Meeting");
    let r = ws.cycle().await;
    assert_eq!((r.succeeded, r.failed), (1, 0), "{r:?}");
    let by_task = appointments_by_task(&ws);
    let a = only_appointment(&by_task, task);
    assert_eq!(a["assignedUserId"], ws.sandbox.ghl_users()[0]["id"], "{a}");
    assert_eq!(instant(&a["startTime"]), wall_clock(chrono_tz::Europe::London, "2026-07-01", "16:00:00"));

    // A second look changes nothing: each meeting stays booked once.
    let again = ws.cycle().await;
    assert_eq!((again.succeeded, again.failed), (0, 0), "{again:?}");
    assert_eq!(appointments_by_task(&ws), by_task);

    // 5 moved, 3 completed, 1 deleted, 1 taken out of the meeting category.
    let moved: Vec<i64> = meetings[0..5].iter().map(|m| m.task).collect();
    for task in &moved {
        assert!(ws.sandbox.capsule_move_task(*task, "2026-12-10", "15:00:00"));
    }
    let completed: Vec<i64> = meetings[5..8].iter().map(|m| m.task).collect();
    for task in &completed {
        assert!(ws.sandbox.capsule_complete_task(*task));
    }
    let deleted = meetings[8].task;
    assert!(ws.sandbox.capsule_delete_task(deleted));
    let recategorised = meetings[9].task;
    assert!(ws.sandbox.capsule_set_task_category(recategorised, "Call"));

    let r = ws.cycle().await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!((r.failed, r.still_failed), (0, 0), "{r:?}");
    let after = appointments_by_task(&ws);
    for (i, m) in meetings.iter().enumerate() {
        let (a, before) = (only_appointment(&after, m.task), only_appointment(&by_task, m.task));
        match i {
            0..5 => {
                let want = wall_clock(m.zone, "2026-12-10", "15:00:00");
                assert_eq!(instant(&a["startTime"]), want, "moved meeting {}", m.task);
                assert_eq!(a["id"], before["id"], "a move keeps the appointment");
                assert_eq!(a["appointmentStatus"], "confirmed");
            }
            5..8 => {
                assert_eq!(a["appointmentStatus"], "showed", "completed meeting {}", m.task);
                assert_eq!(a["startTime"], before["startTime"]);
            }
            8 | 9 => {
                let runs: Vec<_> =
                    runs_of(&ws, "capsule-meetings", m.task).await.into_iter().map(|r| (r.status, r.item)).collect();
                assert_eq!(a["appointmentStatus"], "cancelled", "removed meeting {} ({i}): {runs:?}", m.task);
                assert_eq!(a["startTime"], before["startTime"]);
            }
            _ => assert_eq!(a, before, "meeting {} did not change and must not be touched", m.task),
        }
        assert_eq!(a["notified"], false);
    }
    // The meeting taken out of the category went to capsule-tasks, as an ordinary task.
    let recategorised_run = runs_of(&ws, "capsule-tasks", recategorised)
        .await
        .into_iter()
        .next()
        .expect("capsule-tasks ran the task that left the meetings");
    assert_eq!(recategorised_run.status, RunStatus::Succeeded, "{recategorised_run:?}");
    // No meeting became a GHL task.
    for m in &meetings[10..] {
        let ran =
            runs_of(&ws, "capsule-tasks", m.task).await.iter().filter(|r| r.status != RunStatus::Filtered).count();
        assert_eq!(ran, 0, "meeting {} was also mirrored as a task", m.task);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_failures_and_lost_answers_no_meeting_is_booked_twice() {
    let ws = workspace(SandboxOptions { people: 60, seed: 32, ..SandboxOptions::default() }).await;
    let first = ws.cycle().await;
    assert_eq!(first.still_failed, 0, "{first:?}");
    let meetings = add_fifty_meetings(&ws).await;
    let mut faults = ws.sandbox.faults();
    faults.fail_rate = 0.2;
    faults.lose_responses = 0.1;
    ws.sandbox.set_faults(faults).unwrap();
    for _ in 0..4 {
        let r = ws.cycle().await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        if r.still_failed == 0 {
            break;
        }
    }
    let counts = ws.sandbox.request_counts();
    assert!(counts.failed > 5 && counts.lost > 2, "faults were injected: {counts:?}");
    let by_task = appointments_by_task(&ws);
    for m in &meetings {
        let a = only_appointment(&by_task, m.task);
        assert_eq!(instant(&a["startTime"]), wall_clock(m.zone, m.day, m.time));
    }
    // Nothing on the calendar is booked twice, the seeded meetings included.
    for (task, found) in &by_task {
        assert_eq!(found.len(), 1, "meeting {task} booked {} times", found.len());
    }
}

#[test]
fn validate_names_the_calendar_setting_at_its_line_when_it_is_unset() {
    let dir = tempfile::tempdir().unwrap();
    let out = ghlflow_env(dir.path(), &["init"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let secrets = [("GHL_LOCATION_ID", "loc"), ("GHL_TOKEN", "t"), ("CAPSULE_TOKEN", "c")];
    let out = ghlflow_env(dir.path(), &["validate"], &secrets);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stderr(&out);
    let recipe = std::fs::read_to_string(dir.path().join("recipes/capsule-meetings.yaml")).unwrap();
    let line = recipe.lines().position(|l| l.trim_start().starts_with("GHL_CALENDAR_ID:")).unwrap() + 1;
    assert!(
        text.contains(&format!("recipes/capsule-meetings.yaml:{line}:")) && text.contains("`GHL_CALENDAR_ID`"),
        "{text}"
    );
    assert!(text.contains("ghl.calendars.list_calendars"), "the error says where to find the id: {text}");
    assert!(text.contains("1 problem"), "only the missing setting is reported: {text}");

    // History stays readable while a recipe does not validate; what would run one says why.
    let out = ghlflow_env(dir.path(), &["runs", "list"], &secrets);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ghlflow_env(dir.path(), &["runs", "replay", "1-000000"], &secrets);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`GHL_CALENDAR_ID`"), "{}", stderr(&out));

    let mut with_calendar = secrets.to_vec();
    with_calendar.push(("GHL_CALENDAR_ID", "cal"));
    let out = ghlflow_env(dir.path(), &["validate"], &with_calendar);
    assert!(out.status.success(), "{}", stderr(&out));
}
