//! Seed data: a Capsule account of people and organisations in a dozen countries (names
//! with accents and in other scripts, several emails and phone numbers in each country's
//! national format, addresses with country names, tags, custom fields, notes and emails,
//! open and completed tasks) and a GHL sub-account (users, a pipeline with opportunities,
//! a calendar with appointments, a few contacts, three of whom share an email with a
//! Capsule person, so that a mirror updates them rather than creating them).
//!
//! Everything comes from one generator seeded with `--seed`, so a seed always gives the same
//! data. Phone numbers are valid in their country (a test parses every one), and some
//! people share their organisation's `info@` address, as real accounts do. `tables` holds
//! the names, places and phrases; `ghl` the sub-account.

mod ghl;
mod tables;

use super::capsule::{
    Address, Attachment, CapsuleData, Category, Email, Entry, EntryKind, FieldDefinition, FieldValue, Participant,
    Party, PartyKind, Phone, Tag, Task, TaskStatus, User, Website,
};
use super::clock::{BASE_MS, Ms, Rng, date, days};
use super::ghl::GhlData;
use tables::{
    ABOUTS, City, EMAIL_SUBJECTS, JOB_TITLES, LOCALES, Locale, NOTE_TEMPLATES, SECTORS, SHOWCASE, TASK_DESCRIPTIONS,
};

pub use tables::COUNTRIES;

pub const LOCATION_ID: &str = "sandboxLocation00001";
pub const COMPANY_ID: &str = "sandboxCompany000001";

/// Makes people, notes and tasks: the whole seed at start, and one more of each later when
/// the control API asks.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: Rng,
    /// The organisations made so far, with their locale: people join one from their own
    /// country.
    orgs: Vec<(usize, i64)>,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Generator { rng: Rng::new(seed), orgs: Vec::new() }
    }

    /// A generator for later additions, with its own sequence but the same organisations.
    fn successor(&self, seed: u64) -> Self {
        Generator { rng: Rng::new(seed), orgs: self.orgs.clone() }
    }

    pub fn job_title(&mut self) -> String {
        self.rng.pick(JOB_TITLES).to_string()
    }

    /// A name from any locale: first, last, and an ASCII `first.last` for an email address.
    pub fn name(&mut self) -> (&'static str, &'static str, String) {
        let locale = self.rng.pick(LOCALES);
        let (first, first_ascii) = *self.rng.pick(locale.first);
        let (last, last_ascii) = *self.rng.pick(locale.last);
        (first, last, format!("{first_ascii}.{last_ascii}"))
    }

    /// A mobile number in the named country (one the seed uses; else the UK).
    pub fn mobile_for(&mut self, country: Option<&str>) -> String {
        let locale = LOCALES.iter().find(|l| Some(l.country) == country).unwrap_or(&LOCALES[0]);
        let pattern = *self.rng.pick(locale.mobiles);
        self.digits(pattern)
    }

    fn digits(&mut self, pattern: &str) -> String {
        pattern.chars().map(|c| if c == '#' { char::from(b'0' + self.rng.below(10) as u8) } else { c }).collect()
    }

    /// A time between `from` and `to`, on a whole second.
    fn between(&mut self, from: Ms, to: Ms) -> Ms {
        self.rng.range(from / 1000, (to / 1000).max(from / 1000)) * 1000
    }

    fn address(&mut self, data: &mut CapsuleData, locale: &Locale, city: &City, kind: &str) -> Address {
        let n = self.rng.range(1, 240).to_string();
        Address {
            id: data.item_id(),
            kind: Some(kind.to_owned()),
            street: self.rng.pick(locale.streets).replace("{n}", &n),
            city: city.name.to_owned(),
            state: city.state.map(str::to_owned),
            country: locale.country.to_owned(),
            zip: self.rng.pick(city.zips).to_string(),
        }
    }

    fn organisation(&mut self, data: &mut CapsuleData, li: usize, created: Ms) -> i64 {
        let locale = &LOCALES[li];
        let word = *self.rng.pick(locale.org_words);
        let sector = *self.rng.pick(SECTORS);
        let name = format!("{word} {sector} {}", locale.org_suffix);
        let domain = format!("{}.example", slug(&format!("{word}-{sector}")));
        let city = self.rng.pick(locale.cities);
        let phone = *self.rng.pick(city.phones);
        data.next_party_id += self.rng.range(1, 37);
        let id = data.next_party_id;
        let address = self.address(data, locale, city, "Office");
        let org = Party {
            id,
            kind: PartyKind::Organisation,
            title: None,
            first_name: None,
            last_name: None,
            name: Some(name),
            job_title: None,
            about: None,
            organisation: None,
            owner: Some(data.users[self.rng.below(data.users.len())].id),
            created,
            updated: self.between(created, BASE_MS - days(1)),
            last_contacted: None,
            emails: vec![Email { id: data.item_id(), kind: None, address: format!("info@{domain}") }],
            phones: vec![Phone { id: data.item_id(), kind: Some("Work".into()), number: self.digits(phone) }],
            addresses: vec![address],
            websites: vec![Website {
                id: data.item_id(),
                kind: Some("Work".into()),
                service: "URL".into(),
                address: format!("https://www.{domain}"),
                url: format!("https://www.{domain}"),
            }],
            tags: Vec::new(),
            fields: Vec::new(),
        };
        data.parties.insert(id, org);
        self.orgs.push((li, id));
        id
    }

    /// One person, with emails, phones, addresses, tags and fields.
    fn person(
        &mut self,
        data: &mut CapsuleData,
        (li, fi, la): (usize, usize, usize),
        org: Option<i64>,
        created: Ms,
        updated: Ms,
    ) -> i64 {
        let locale = &LOCALES[li];
        let (first, first_ascii) = locale.first[fi % locale.first.len()];
        let (last, last_ascii) = locale.last[la % locale.last.len()];
        data.next_party_id += self.rng.range(1, 37);
        let id = data.next_party_id;
        let org_domain = org
            .and_then(|o| data.parties.get(&o))
            .and_then(|o| o.emails.first())
            .and_then(|e| e.address.split_once('@').map(|(_, d)| d.to_owned()));

        let mut emails = Vec::new();
        if !self.rng.chance(0.06) {
            match &org_domain {
                // Some people give their organisation's shared mailbox.
                Some(domain) if self.rng.chance(0.03) => emails.push(Email {
                    id: data.item_id(),
                    kind: Some("Work".into()),
                    address: format!("info@{domain}"),
                }),
                Some(domain) => emails.push(Email {
                    id: data.item_id(),
                    kind: Some("Work".into()),
                    address: format!("{first_ascii}.{last_ascii}@{domain}"),
                }),
                None => {}
            }
            let extra = self.rng.below(3);
            for k in 0..extra.max(usize::from(emails.is_empty())) {
                let address = match k {
                    0 => format!("{first_ascii}.{last_ascii}.{}@{}", id % 997, locale.home_domain),
                    _ => format!("{}{last_ascii}{}@example.org", &first_ascii[..1], id % 89),
                };
                let kind = if k == 0 { Some("Home".to_owned()) } else { None };
                emails.push(Email { id: data.item_id(), kind, address });
            }
        }

        let mut phones = Vec::new();
        let city = self.rng.pick(locale.cities);
        for k in 0..self.rng.below(4) {
            let (kind, pattern) = match k {
                0 => ("Work", *self.rng.pick(city.phones)),
                1 => ("Mobile", *self.rng.pick(locale.mobiles)),
                _ => ("Home", *self.rng.pick(city.phones)),
            };
            phones.push(Phone { id: data.item_id(), kind: Some(kind.into()), number: self.digits(pattern) });
        }

        let mut addresses = Vec::new();
        for k in 0..self.rng.below(3) {
            let kind = if k == 0 { if org.is_some() { "Office" } else { "Home" } } else { "Postal" };
            // The first address is where their numbers ring; a postal one may be elsewhere.
            let at = if k == 0 { city } else { self.rng.pick(locale.cities) };
            addresses.push(self.address(data, locale, at, kind));
        }

        let mut websites = Vec::new();
        if self.rng.chance(0.3) {
            let url = format!("https://www.linkedin.com/in/{first_ascii}-{last_ascii}-{}/", id % 1000);
            websites.push(Website {
                id: data.item_id(),
                kind: Some("Work".into()),
                service: "LINKED_IN".into(),
                address: url.clone(),
                url,
            });
        }

        let mut tags = Vec::new();
        for _ in 0..self.rng.below(4) {
            let tag = data.tags[self.rng.below(data.tags.len())].id;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        let mut fields = Vec::new();
        if self.rng.chance(0.4) {
            let born = self.between(days(-12_000), days(9_000));
            fields.push(FieldValue { id: data.item_id(), definition: 926_890, value: date(born) });
        }
        if self.rng.chance(0.5) {
            let source = self.rng.pick(&data.field_definitions[0].options).clone();
            fields.push(FieldValue { id: data.item_id(), definition: 926_886, value: source });
        }
        if self.rng.chance(0.3) {
            fields.push(FieldValue {
                id: data.item_id(),
                definition: 926_891,
                value: self.rng.range(1, 40).to_string(),
            });
        }

        let title = if !locale.titles.is_empty() && self.rng.chance(0.4) {
            Some(self.rng.pick(locale.titles).to_string())
        } else {
            None
        };
        let party = Party {
            id,
            kind: PartyKind::Person,
            title,
            first_name: Some(first.to_owned()),
            last_name: Some(last.to_owned()),
            name: None,
            job_title: self.rng.chance(0.7).then(|| self.rng.pick(JOB_TITLES).to_string()),
            about: self.rng.chance(0.3).then(|| self.rng.pick(ABOUTS).to_string()),
            organisation: org,
            owner: (!self.rng.chance(0.1)).then(|| data.users[self.rng.below(data.users.len())].id),
            created,
            updated,
            last_contacted: self.rng.chance(0.5).then(|| self.between(created, updated)),
            emails,
            phones,
            addresses,
            websites,
            tags,
            fields,
        };
        data.parties.insert(id, party);
        id
    }

    fn random_person(&mut self, data: &mut CapsuleData, created: Ms, updated: Ms) -> i64 {
        let li = self.rng.below(LOCALES.len());
        let fi = self.rng.below(LOCALES[li].first.len());
        let la = self.rng.below(LOCALES[li].last.len());
        // Most people work somewhere in their own country (if it still exists).
        let org = if self.rng.chance(0.65) {
            let local: Vec<i64> = self
                .orgs
                .iter()
                .filter(|(l, id)| *l == li && data.parties.contains_key(id))
                .map(|(_, id)| *id)
                .collect();
            if local.is_empty() { None } else { Some(local[self.rng.below(local.len())]) }
        } else {
            None
        };
        self.person(data, (li, fi, la), org, created, updated)
    }

    /// A new person created at `now` (control API).
    pub fn add_person(&mut self, data: &mut CapsuleData, now: Ms) -> i64 {
        self.random_person(data, now, now)
    }

    fn note(&mut self, data: &mut CapsuleData, party: i64, entry_at: Ms, updated: Ms) -> i64 {
        let Some(p) = data.parties.get(&party) else { return 0 };
        let first = p.first_name.clone().or_else(|| p.name.clone()).unwrap_or_default();
        let city = p.addresses.first().map(|a| a.city.clone()).unwrap_or_else(|| "London".into());
        let email = p.emails.first().map(|e| e.address.clone());
        let name = p.display_name();
        let creator = data.users[self.rng.below(data.users.len())].clone();
        let is_email = email.is_some() && self.rng.chance(0.15);
        let content = self
            .rng
            .pick(NOTE_TEMPLATES)
            .replace("{first}", &first)
            .replace("{city}", &city)
            .replace("{n}", &self.rng.range(2, 40).to_string())
            .replace("{price}", &format!("{}.{:03}", self.rng.range(1, 48), self.rng.range(0, 999)));
        let mut participants = Vec::new();
        let mut subject = None;
        if is_email && let Some(address) = email {
            subject = Some(self.rng.pick(EMAIL_SUBJECTS).to_string());
            participants.push(Participant { id: data.item_id(), address, name, role: "FROM" });
            participants.push(Participant {
                id: data.item_id(),
                address: format!("{}@sandbox-crm.example", creator.username),
                name: creator.name(),
                role: "TO",
            });
        }
        let attachments = if self.rng.chance(0.08) {
            vec![Attachment {
                id: data.item_id(),
                filename: format!("{} – plan.pdf", first),
                content_type: "application/pdf".into(),
                size: self.rng.range(20_000, 900_000) as u64,
            }]
        } else {
            Vec::new()
        };
        // Written a few minutes after the conversation it records.
        let created = entry_at + self.rng.range(5, 400) * 1000;
        data.next_entry_id += self.rng.range(1, 50);
        let entry = Entry {
            id: data.next_entry_id,
            kind: if is_email { EntryKind::Email } else { EntryKind::Note },
            subject,
            content,
            entry_at,
            created,
            updated: updated.max(created),
            creator: creator.id,
            party,
            participants,
            attachments,
        };
        let id = entry.id;
        data.entries.insert(id, entry);
        id
    }

    /// A new note on `party`, dated `now` (control API).
    pub fn add_note(&mut self, data: &mut CapsuleData, party: i64, now: Ms) -> i64 {
        let id = self.note(data, party, now, now);
        if let Some(e) = data.entries.get_mut(&id) {
            e.created = now;
            e.updated = now;
        }
        id
    }

    fn task(&mut self, data: &mut CapsuleData, party: i64, created: Ms, status: TaskStatus) -> i64 {
        let owner = data.parties.get(&party).and_then(|p| p.owner).unwrap_or(data.users[0].id);
        let due = BASE_MS + days(self.rng.range(-90, 60));
        let completed_at = (status == TaskStatus::Completed).then(|| self.between(created, BASE_MS - 60_000));
        let due_time =
            self.rng.chance(0.5).then(|| format!("{:02}:{:02}:00", self.rng.range(8, 17), 15 * self.rng.range(0, 3)));
        data.next_task_id += self.rng.range(1, 40);
        let task = Task {
            id: data.next_task_id,
            description: self.rng.pick(TASK_DESCRIPTIONS).to_string(),
            detail: self.rng.chance(0.4).then(|| "Check the latest notes before calling.".to_owned()),
            category: self.rng.chance(0.7).then(|| self.rng.below(data.categories.len())),
            status,
            party: Some(party),
            owner,
            created,
            updated: completed_at.unwrap_or(created),
            due_on: date(due),
            due_time,
            completed_at,
        };
        let id = task.id;
        if let Some(done) = completed_at {
            data.next_entry_id += self.rng.range(1, 50);
            let record = Entry {
                id: data.next_entry_id,
                kind: EntryKind::Task,
                subject: None,
                content: task.description.clone(),
                entry_at: done,
                created: done,
                updated: done,
                creator: owner,
                party,
                participants: Vec::new(),
                attachments: Vec::new(),
            };
            data.entries.insert(record.id, record);
        }
        data.tasks.insert(id, task);
        id
    }

    /// A new open task on `party`, created `now` (control API).
    pub fn add_task(&mut self, data: &mut CapsuleData, party: i64, now: Ms) -> i64 {
        let id = self.task(data, party, now, TaskStatus::Open);
        if let Some(t) = data.tasks.get_mut(&id) {
            t.due_on = date(now + days(self.rng.range(1, 30)));
        }
        id
    }
}

/// Lower-case ASCII letters, digits and dashes.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let mapped = match c {
            'a'..='z' | '0'..='9' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            'é' | 'è' | 'ê' | 'É' => Some('e'),
            'ô' | 'ö' | 'ø' | 'Ø' | 'Ö' => Some('o'),
            'ä' | 'å' | 'à' | 'Å' | 'Ä' => Some('a'),
            'ü' | 'û' => Some('u'),
            'ñ' => Some('n'),
            'ł' | 'Ł' => Some('l'),
            'ż' | 'Ż' => Some('z'),
            _ => None,
        };
        match mapped {
            Some(c) => out.push(c),
            None if !out.ends_with('-') && !out.is_empty() => out.push('-'),
            None => {}
        }
    }
    let out = out.trim_end_matches('-').to_owned();
    if out.is_empty() { "company".to_owned() } else { out }
}

/// The seeded world, and the generator that continues it.
pub struct Seeded {
    pub capsule: CapsuleData,
    pub ghl: GhlData,
    pub generator: Generator,
    /// For ids of records created while running (GHL contacts, notes, messages...).
    pub ids: Rng,
}

/// Builds everything from `seed`: `people` Capsule people (plus one organisation for every
/// six of them) and the GHL sub-account.
pub fn seed(seed: u64, people: usize) -> Seeded {
    let mut g = Generator::new(seed);
    let mut data = CapsuleData {
        next_party_id: 254_100_500,
        next_entry_id: 311_000_000,
        next_task_id: 147_000_000,
        next_item_id: 568_900_000,
        ..CapsuleData::default()
    };
    data.users = capsule_users();
    data.tags = [
        ("Customer", false),
        ("Prospect", false),
        ("Key Account", false),
        ("Newsletter", false),
        ("Partner", true),
        ("Supplier", false),
        ("VIP", false),
        ("Trade fair 2025", false),
        ("Café network", false),
    ]
    .iter()
    .enumerate()
    .map(|(i, (name, data_tag))| Tag { id: 1_840_250 + i as i64 * 7, name: (*name).to_owned(), data_tag: *data_tag })
    .collect();
    data.field_definitions = vec![
        FieldDefinition {
            id: 926_886,
            name: "Lead Source".into(),
            kind: "list",
            options: ["Referral", "Website", "Trade show", "Cold call", "Partner"].map(String::from).to_vec(),
        },
        FieldDefinition { id: 926_890, name: "Date of Birth".into(), kind: "date", options: Vec::new() },
        FieldDefinition { id: 926_891, name: "Seats".into(), kind: "number", options: Vec::new() },
    ];
    data.categories = [("Meeting", "#1f8dd6"), ("Billing", "#d36c00"), ("Call", "#6fbf4a"), ("Follow-up", "#9b59b6")]
        .iter()
        .enumerate()
        .map(|(i, (name, colour))| Category { id: 88_210 + i as i64, name: (*name).into(), colour: (*colour).into() })
        .collect();

    let oldest = BASE_MS - days(540);
    let orgs = (people / 6).max(3);
    for i in 0..orgs {
        let created = g.between(oldest, BASE_MS - days(30));
        g.organisation(&mut data, i % LOCALES.len(), created);
    }
    let mut person_ids = Vec::with_capacity(people);
    for i in 0..people {
        let created = g.between(oldest, BASE_MS - days(2));
        let updated = if g.rng.chance(0.6) { g.between(created, BASE_MS - days(1)) } else { created };
        let id = match SHOWCASE.get(i) {
            Some(&(li, fi, la)) => {
                let org = g.orgs.iter().find(|(l, _)| *l == li).map(|(_, id)| *id);
                g.person(&mut data, (li, fi, la), org, created, updated)
            }
            None => g.random_person(&mut data, created, updated),
        };
        person_ids.push(id);
    }
    for &id in &person_ids {
        let Some(created) = data.parties.get(&id).map(|p| p.created) else { continue };
        for _ in 0..g.rng.below(4) {
            let at = g.between(created, BASE_MS - days(1));
            let edited = if g.rng.chance(0.2) { g.between(at, BASE_MS - 3_600_000) } else { at };
            g.note(&mut data, id, at, edited);
        }
        for _ in 0..g.rng.below(3) {
            let status = match g.rng.below(20) {
                0..=10 => TaskStatus::Open,
                11..=17 => TaskStatus::Completed,
                _ => TaskStatus::Pending,
            };
            let at = g.between(created, BASE_MS - days(1));
            g.task(&mut data, id, at, status);
        }
    }
    // A few deletions before the sandbox started.
    for k in 0..3 {
        data.next_party_id += 11;
        data.deleted.push((data.next_party_id, BASE_MS - days(10 - 3 * k)));
    }

    let mut ids = Rng::new(seed.wrapping_add(0x1D5));
    let ghl = ghl::seed(&mut g.rng, &mut ids, &data);
    // Added last, with no draw from the generators, so the rest of the seed (and the GHL
    // contacts picked from the people above) stays as it was before users had parties.
    add_user_parties(&mut data);
    Seeded { capsule: data, ghl, generator: g.successor(seed.wrapping_add(0xC0FFEE)), ids }
}

/// A Capsule user's work email, on their own party: Capsule's `/users` carries none, so a
/// client reads it from `GET /parties/{user.party.id}`.
pub fn user_email(u: &User) -> String {
    format!("{}@{USER_DOMAIN}", u.username)
}

/// The firm's own mail domain: Capsule users' parties and the GHL users share it.
pub const USER_DOMAIN: &str = "sandbox-agency.example";

/// Each Capsule user's own person party (Capsule lists them with the other parties), with
/// a work email.
fn add_user_parties(data: &mut CapsuleData) {
    let created = BASE_MS - days(600);
    for u in data.users.clone() {
        let email = Email { id: data.item_id(), kind: Some("Work".into()), address: user_email(&u) };
        data.parties.insert(
            u.party,
            Party {
                id: u.party,
                kind: PartyKind::Person,
                title: None,
                first_name: Some(u.first_name.clone()),
                last_name: Some(u.last_name.clone()),
                name: None,
                job_title: Some("Account manager".into()),
                about: None,
                organisation: None,
                owner: Some(u.id),
                created,
                updated: created,
                last_contacted: None,
                emails: vec![email],
                phones: Vec::new(),
                addresses: Vec::new(),
                websites: Vec::new(),
                tags: Vec::new(),
                fields: Vec::new(),
            },
        );
    }
}

fn capsule_users() -> Vec<User> {
    let user = |id, username: &str, first: &str, last: &str, tz: &str, locale: &str, currency: &str, party| User {
        id,
        username: username.into(),
        first_name: first.into(),
        last_name: last.into(),
        timezone: tz.into(),
        locale: locale.into(),
        currency: currency.into(),
        party,
        last_login: BASE_MS - days(1),
    };
    vec![
        user(674_197, "marta.kowalczyk", "Marta", "Kowalczyk", "Europe/London", "en_GB", "GBP", 254_100_422),
        user(1_187_342, "ananya.iyer", "Ananya", "Iyer", "Asia/Kolkata", "en_IN", "INR", 254_100_437),
        user(1_190_055, "sofia.angstrom", "Sofia", "Ångström", "Europe/Stockholm", "sv_SE", "SEK", 254_100_451),
        user(1_201_876, "dana.whitfield", "Dana", "Whitfield", "America/New_York", "en_US", "USD", 254_100_468),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_data_every_time() {
        let a = seed(5, 60);
        let b = seed(5, 60);
        let people = |s: &Seeded| -> Vec<(i64, String, Vec<String>)> {
            s.capsule
                .parties
                .values()
                .map(|p| (p.id, p.display_name(), p.emails.iter().map(|e| e.address.clone()).collect()))
                .collect()
        };
        assert_eq!(people(&a), people(&b));
        assert_eq!(a.capsule.entries.len(), b.capsule.entries.len());
        assert_eq!(a.ghl.contacts.keys().collect::<Vec<_>>(), b.ghl.contacts.keys().collect::<Vec<_>>());
        assert_ne!(people(&a), people(&seed(6, 60)));
    }

    #[test]
    fn the_default_seed_has_the_awkward_cases() {
        let s = seed(1, 300);
        let people: Vec<&Party> = s.capsule.people().collect();
        // The 300 asked for, and each Capsule user's own party.
        assert_eq!(people.len(), 300 + s.capsule.users.len());
        for u in &s.capsule.users {
            let party = s.capsule.parties.get(&u.party).map(|p| p.emails.iter().map(|e| e.address.clone()).collect());
            assert_eq!(party, Some(vec![user_email(u)]), "user {}", u.username);
        }
        // Two of them are GHL users under the same email; the others are not.
        let ghl_emails: Vec<&str> = s.ghl.users.iter().filter_map(|u| u["email"].as_str()).collect();
        let shared: Vec<&str> = s
            .capsule
            .users
            .iter()
            .filter(|u| ghl_emails.contains(&user_email(u).as_str()))
            .map(|u| u.username.as_str())
            .collect();
        assert_eq!(shared, ["ananya.iyer", "dana.whitfield"]);
        let names: Vec<String> = people.iter().map(|p| p.display_name()).collect();
        for needle in ["Zoë", "José", "Müller", "Ångström", "李"] {
            assert!(names.iter().any(|n| n.contains(needle)), "no {needle}");
        }
        assert!(people.iter().any(|p| p.emails.len() >= 2));
        assert!(people.iter().any(|p| p.phones.len() >= 2));
        assert!(people.iter().any(|p| p.emails.is_empty()));
        let countries: std::collections::BTreeSet<&str> =
            people.iter().flat_map(|p| p.addresses.iter().map(|a| a.country.as_str())).collect();
        for c in ["United Kingdom", "United States", "Germany", "France"] {
            assert!(countries.contains(c), "no address in {c}");
        }
        assert!(s.capsule.parties.values().any(|p| p.kind == PartyKind::Organisation));
        assert!(s.capsule.tasks.values().any(|t| t.status == TaskStatus::Open));
        assert!(s.capsule.tasks.values().any(|t| t.status == TaskStatus::Completed));
        assert!(s.capsule.entries.len() > 300);
        assert!(s.ghl.opportunities.iter().any(|o| o.status == "won"));
        // Timestamps are before the base time, updatedAt never before createdAt.
        assert!(s.capsule.parties.values().all(|p| p.created <= p.updated && p.updated < BASE_MS));
        assert!(s.capsule.entries.values().all(|e| e.created <= e.updated && e.updated < BASE_MS));
        assert!(s.capsule.tasks.values().all(|t| t.created <= t.updated && t.updated < BASE_MS));
    }

    #[test]
    fn every_phone_number_is_valid_in_its_country() {
        let s = seed(1, 300);
        let mut bad = Vec::new();
        for p in s.capsule.parties.values() {
            let country = p.addresses.first().map(|a| a.country.clone());
            for n in &p.phones {
                // A person's numbers are in the country of their locale, which is the country
                // of any address they have; people without an address are checked by pattern.
                if let Some(country) = &country
                    && crate::template::e164(&n.number, country).is_none()
                {
                    bad.push(format!("{} ({country})", n.number));
                }
            }
        }
        assert!(bad.is_empty(), "invalid numbers: {bad:?}");
    }

    #[test]
    fn slugs_are_ascii() {
        assert_eq!(slug("Côté Nord-Hospitality"), "cote-nord-hospitality");
        assert_eq!(slug("Thistle & Oak Studio"), "thistle-oak-studio");
        assert_eq!(slug("青木科技"), "company");
    }
}
