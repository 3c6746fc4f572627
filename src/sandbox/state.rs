//! Everything the sandbox holds, behind one mutex: both accounts, the clock, the rate-limit
//! windows, the faults in force, the request counters and what it pushes (hooks, faults). Handlers and the control API take
//! the lock for the length of one synchronous call and never across an await.

use serde::Serialize;
use serde_json::Value;

use super::capsule::{CapsuleData, EntryKind, PartyKind, TaskStatus};
use super::clock::{Clock, Rng};
use super::faults::Faults;
use super::ghl::GhlData;
use super::limits::Limits;
use super::log::RequestLog;
use super::oauth::OAuth;
use super::push::Push;
use super::seed::{Generator, seed};

/// How many requests the sandbox has answered, and how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// Every request to either API (the control API not included).
    pub total: u64,
    pub ghl: u64,
    pub capsule: u64,
    /// GHL requests of operations that write.
    pub ghl_writes: u64,
    /// Answered 429.
    pub rate_limited: u64,
    /// Failed on purpose with a 500, before anything was applied.
    pub failed: u64,
    /// Applied, but the answer was lost on purpose.
    pub lost: u64,
}

/// What the GHL sub-account holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GhlCounts {
    pub contacts: usize,
    pub notes: usize,
    pub tasks: usize,
    pub completed_tasks: usize,
    pub conversations: usize,
    pub messages: usize,
    pub opportunities: usize,
    pub appointments: usize,
}

/// What the Capsule account holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CapsuleCounts {
    pub people: usize,
    pub organisations: usize,
    pub deleted: usize,
    /// Hidden from the token's user, listed as `restrictedParties`.
    pub restricted: usize,
    pub notes: usize,
    pub entries: usize,
    pub open_tasks: usize,
    pub tasks: usize,
}

#[derive(Debug)]
pub struct State {
    pub clock: Clock,
    /// Ids of records created by requests.
    pub ids: Rng,
    /// Which records the control API changes.
    pub picks: Rng,
    /// Whether a request meets a fault.
    pub fault_rng: Rng,
    pub generator: Generator,
    pub capsule: CapsuleData,
    pub ghl: GhlData,
    pub faults: Faults,
    pub limits: Limits,
    /// Access and refresh tokens issued by `/oauth/token`.
    pub oauth: OAuth,
    pub counts: RequestCounts,
    /// Every request to either API, bounded.
    pub log: RequestLog,
    /// `http://127.0.0.1:PORT`, for URLs in answers (Link, nextPageUrl).
    pub base_url: String,
    /// Capsule REST hooks, the GHL webhook URL and key, and the delivery faults.
    pub push: Push,
}

impl State {
    pub fn new(seed_value: u64, people: usize, faults: Faults, limits: Limits, base_url: String) -> Self {
        let seeded = seed(seed_value, people);
        State {
            clock: Clock::new(),
            ids: seeded.ids,
            picks: Rng::new(seed_value.wrapping_add(0x91C5)),
            fault_rng: Rng::new(seed_value.wrapping_add(0xFA17)),
            generator: seeded.generator,
            capsule: seeded.capsule,
            ghl: seeded.ghl,
            faults,
            limits,
            oauth: OAuth::default(),
            counts: RequestCounts::default(),
            log: RequestLog::default(),
            base_url,
            push: Push::new(seed_value, None, None),
        }
    }

    #[cfg(test)]
    pub fn for_tests(seed_value: u64, people: usize) -> Self {
        Self::new(seed_value, people, Faults::default(), Limits::new(1.0, false), "http://127.0.0.1:9".into())
    }

    pub fn ghl_counts(&self) -> GhlCounts {
        let g = &self.ghl;
        GhlCounts {
            contacts: g.contacts.len(),
            notes: g.notes.len(),
            tasks: g.tasks.len(),
            completed_tasks: g.tasks.iter().filter(|t| t.completed).count(),
            conversations: g.conversations.len(),
            messages: g.messages.len(),
            opportunities: g.opportunities.len(),
            appointments: g.events.len(),
        }
    }

    pub fn capsule_counts(&self) -> CapsuleCounts {
        let c = &self.capsule;
        CapsuleCounts {
            people: c.parties.values().filter(|p| p.kind == PartyKind::Person).count(),
            organisations: c.parties.values().filter(|p| p.kind == PartyKind::Organisation).count(),
            deleted: c.deleted.len(),
            restricted: c.restricted.len(),
            notes: c.entries.values().filter(|e| e.kind == EntryKind::Note).count(),
            entries: c.entries.len(),
            open_tasks: c.tasks.values().filter(|t| t.status == TaskStatus::Open).count(),
            tasks: c.tasks.len(),
        }
    }

    /// Every GHL contact as the API shows it, oldest first.
    pub fn ghl_contacts(&self) -> Vec<Value> {
        let mut all: Vec<_> = self.ghl.contacts.values().collect();
        all.sort_by(|a, b| a.added.cmp(&b.added).then_with(|| a.id.cmp(&b.id)));
        all.iter().map(|c| c.json(&self.ghl.location_id)).collect()
    }

    pub fn ghl_notes(&self, contact: &str) -> Vec<Value> {
        self.ghl.notes.iter().filter(|n| n.contact_id == contact).map(|n| n.json()).collect()
    }

    pub fn ghl_tasks(&self, contact: &str) -> Vec<Value> {
        self.ghl.tasks.iter().filter(|t| t.contact_id == contact).map(|t| t.json()).collect()
    }

    /// Every message, oldest first.
    pub fn ghl_messages(&self) -> Vec<Value> {
        self.ghl.messages.iter().map(|m| super::ghl::message_json(m, &self.ghl.location_id)).collect()
    }

    /// Every appointment, with the sandbox-only `notified`.
    pub fn ghl_appointments(&self) -> Vec<Value> {
        let zone = super::ghl::location_zone(self);
        let mut all: Vec<_> = self.ghl.events.iter().collect();
        all.sort_by(|a, b| a.added.cmp(&b.added).then_with(|| a.id.cmp(&b.id)));
        all.iter().map(|e| super::ghl::appointment_json(e, &self.ghl.location_id, zone)).collect()
    }

    /// A Capsule party as `GET /parties/{id}?embed=tags,fields` shows it.
    pub fn capsule_party(&self, id: i64) -> Option<Value> {
        let embed = super::capsule::Embed::parse_list("tags,fields");
        self.capsule.parties.get(&id).map(|p| self.capsule.party_json(p, &embed))
    }

    /// The Capsule users as `GET /users` shows them.
    pub fn capsule_users(&self) -> Vec<Value> {
        self.capsule
            .users
            .iter()
            .map(|u| serde_json::json!({"id": u.id, "username": u.username, "timezone": u.timezone}))
            .collect()
    }
}
