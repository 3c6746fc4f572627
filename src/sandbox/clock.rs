//! The sandbox's own clock and its random numbers.
//!
//! Seeded records are dated before a fixed base time, so a seed always gives the same data.
//! After start, "now" is the real time (never earlier than the base) plus what `advance`
//! added. A restarted sandbox therefore dates its edits after everything an earlier one did,
//! so a state folder that polled the earlier sandbox still sees them as changes (a cursor is
//! never ahead of the new sandbox's clock). "Now" also never repeats: every
//! reading is later than the one before, so an edit always moves `updatedAt` past every
//! earlier timestamp (Capsule's timestamps have whole seconds, so its readings step to the
//! next whole second). The control API can move the clock forward (`advance`), so that
//! tokens expire and records age without a test waiting.

use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};

/// 2025-06-02T09:00:00Z: seeded data is older, everything the sandbox does is newer.
pub const BASE_MS: i64 = 1_748_854_800_000;

const DAY_MS: i64 = 86_400_000;

/// Milliseconds since the Unix epoch.
pub type Ms = i64;

#[derive(Debug)]
pub struct Clock {
    started: Instant,
    /// The reading at `started`: the real time, or the base if that is later.
    start_ms: Ms,
    last: Ms,
    /// Added by `advance`.
    skipped: Ms,
}

impl Clock {
    pub fn new() -> Self {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(BASE_MS))
            .unwrap_or(BASE_MS);
        let start_ms = real.max(BASE_MS);
        Clock { started: Instant::now(), start_ms, last: start_ms, skipped: 0 }
    }

    fn candidate(&self) -> Ms {
        let elapsed = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX / 2);
        (self.start_ms + elapsed + self.skipped).max(self.last + 1)
    }

    /// Moves the clock `ms` forward (never back).
    pub fn advance(&mut self, ms: Ms) {
        self.skipped = self.skipped.saturating_add(ms.max(0));
    }

    /// A reading with millisecond precision (GHL records).
    pub fn now_ms(&mut self) -> Ms {
        self.last = self.candidate();
        self.last
    }

    /// A whole-second reading later than every earlier reading (Capsule records).
    pub fn now_second(&mut self) -> Ms {
        let t = self.candidate();
        self.last = (t + 999).div_euclid(1000) * 1000;
        self.last
    }

    /// The time now, without taking a reading (for checks that write nothing).
    pub fn current(&self) -> Ms {
        self.candidate()
    }

    /// The latest reading, without advancing.
    pub fn peek(&self) -> Ms {
        self.last
    }
}

pub fn datetime(ms: Ms) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// `2025-06-03T14:05:51.120Z`, as GHL writes times.
pub fn iso_ms(ms: Ms) -> String {
    datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `2025-06-03T14:05:51Z`, as Capsule writes times.
pub fn iso_sec(ms: Ms) -> String {
    datetime(ms).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `2025-06-18`.
pub fn date(ms: Ms) -> String {
    datetime(ms).format("%Y-%m-%d").to_string()
}

pub fn days(n: i64) -> Ms {
    n * DAY_MS
}

/// An ISO 8601 date-time (`Z` or an offset, fractions optional) or a date, as milliseconds.
pub fn parse_iso(text: &str) -> Option<Ms> {
    let text = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Some(dt.timestamp_millis());
    }
    if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S") {
        return Some(naive.and_utc().timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|n| n.and_utc().timestamp_millis())
}

/// SplitMix64. The sandbox keeps its own generator rather than `rand`'s `StdRng`, whose
/// output may change between releases: a seed must give the same data for good.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo { lo } else { lo + (self.next_u64() % (hi - lo + 1) as u64) as i64 }
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A GHL-style id: 20 letters and digits.
    pub fn ghl_id(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..20).map(|_| ALPHABET[self.below(ALPHABET.len())] as char).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_only_move_forward() {
        let mut clock = Clock::new();
        let a = clock.now_ms();
        let b = clock.now_ms();
        let c = clock.now_second();
        let d = clock.now_second();
        assert!(a > BASE_MS && b > a && c > b && d > c, "{a} {b} {c} {d}");
        assert_eq!(c % 1000, 0);
        assert_eq!(iso_sec(d).len(), "2025-06-02T09:00:01Z".len());
        assert!(iso_sec(d) > iso_sec(c));
        clock.advance(days(2));
        assert!(clock.now_ms() >= BASE_MS + days(2) && clock.current() > d);
    }

    #[test]
    fn formats_and_parses_times() {
        assert_eq!(iso_ms(BASE_MS), "2025-06-02T09:00:00.000Z");
        assert_eq!(iso_sec(BASE_MS), "2025-06-02T09:00:00Z");
        assert_eq!(date(BASE_MS), "2025-06-02");
        assert_eq!(parse_iso("2025-06-02T09:00:00Z"), Some(BASE_MS));
        assert_eq!(parse_iso("2025-06-02T11:00:00+02:00"), Some(BASE_MS));
        assert_eq!(parse_iso("2025-06-02"), Some(BASE_MS - 9 * 3_600_000));
        assert_eq!(parse_iso("yesterday"), None);
    }

    #[test]
    fn the_generator_is_stable() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::new(8).next_u64(), xs[0]);
        let id = a.ghl_id();
        assert_eq!(id.len(), 20);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn a_restarted_sandbox_dates_its_edits_after_the_real_time_it_starts() {
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let mut clock = Clock::new();
        let first = clock.now_ms();
        assert!(first >= before && first > BASE_MS, "{first} {before}");
        // A second sandbox started later reads later than the first ever did.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut restarted = Clock::new();
        assert!(restarted.now_second() > first);
    }
}
