//! The two APIs' rate limits, counted on real time and reported in their own headers.
//!
//! GHL: 100 requests in any 10 s (a sliding window over arrivals) and 200,000 a day (UTC)
//! per location, reported as `X-RateLimit-Max`, `-Remaining`, `-Interval-Milliseconds`,
//! `-Limit-Daily` and `-Daily-Remaining`; beyond them a 429 with `Retry-After` in seconds.
//! Capsule: 4,000 an hour per token, in a window that starts with the token's first
//! request, reported as `X-RateLimit-Limit`, `-Remaining` and `-Reset` (epoch seconds);
//! beyond it a 429 `{"error":"rate limit reached"}` with no `Retry-After`. Refused requests
//! do not count. A scale multiplies every limit; without limits nothing is refused and the
//! headers report a budget large enough that a client never waits.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::wire::Reply;

const GHL_BURST: f64 = 100.0;
const GHL_INTERVAL: Duration = Duration::from_secs(10);
const GHL_DAILY: f64 = 200_000.0;
const CAPSULE_HOURLY: f64 = 4_000.0;
const HOUR: Duration = Duration::from_secs(3600);
/// What the headers report when limits are off.
const UNLIMITED: u64 = 1_000_000_000;

pub type Headers = Vec<(String, String)>;

#[derive(Debug)]
pub struct Limits {
    enabled: bool,
    ghl_burst: u64,
    ghl_daily: u64,
    capsule_hourly: u64,
    ghl_window: VecDeque<Instant>,
    /// (UTC day number, requests that day).
    ghl_day: (u64, u64),
    /// Per token: when its hour started and how many it used.
    capsule: HashMap<String, (Instant, SystemTime, u64)>,
}

impl Limits {
    /// Real limits times `scale` (at least 1 request each), or none at all.
    pub fn new(scale: f64, no_limits: bool) -> Self {
        let scaled = |n: f64| (n * scale).round().clamp(1.0, UNLIMITED as f64) as u64;
        Limits {
            enabled: !no_limits,
            ghl_burst: scaled(GHL_BURST),
            ghl_daily: scaled(GHL_DAILY),
            capsule_hourly: scaled(CAPSULE_HOURLY),
            ghl_window: VecDeque::new(),
            ghl_day: (0, 0),
            capsule: HashMap::new(),
        }
    }

    /// Counts one GHL request: its headers, or the 429 to answer instead.
    pub fn ghl(&mut self) -> Result<Headers, Reply> {
        if !self.enabled {
            return Ok(ghl_headers(UNLIMITED, UNLIMITED, UNLIMITED, UNLIMITED));
        }
        let now = Instant::now();
        while self.ghl_window.front().is_some_and(|t| now.duration_since(*t) >= GHL_INTERVAL) {
            self.ghl_window.pop_front();
        }
        let epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let today = epoch.as_secs() / 86_400;
        if self.ghl_day.0 != today {
            self.ghl_day = (today, 0);
        }
        let burst_left = self.ghl_burst.saturating_sub(self.ghl_window.len() as u64);
        let daily_left = self.ghl_daily.saturating_sub(self.ghl_day.1);
        if burst_left == 0 || daily_left == 0 {
            let wait = if daily_left == 0 {
                Duration::from_secs(86_400 - epoch.as_secs() % 86_400)
            } else {
                self.ghl_window.front().map(|t| (*t + GHL_INTERVAL).saturating_duration_since(now)).unwrap_or_default()
            };
            let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut reply = Reply::ghl_error(429, "Too Many Requests");
            reply.body = json!({"statusCode": 429, "message": "Too Many Requests"});
            reply.headers = ghl_headers(self.ghl_burst, burst_left, self.ghl_daily, daily_left);
            reply.headers.push(("Retry-After".into(), retry_after.to_string()));
            return Err(reply);
        }
        self.ghl_window.push_back(now);
        self.ghl_day.1 += 1;
        Ok(ghl_headers(self.ghl_burst, burst_left - 1, self.ghl_daily, daily_left - 1))
    }

    /// Counts one Capsule request for `token`.
    pub fn capsule(&mut self, token: &str) -> Result<Headers, Reply> {
        let wall = SystemTime::now();
        if !self.enabled {
            return Ok(capsule_headers(UNLIMITED, UNLIMITED, epoch_secs(wall + HOUR)));
        }
        let now = Instant::now();
        let entry = self.capsule.entry(token.to_owned()).or_insert((now, wall, 0));
        if now.duration_since(entry.0) >= HOUR {
            *entry = (now, wall, 0);
        }
        let reset = epoch_secs(entry.1 + HOUR);
        if entry.2 >= self.capsule_hourly {
            let mut reply = Reply::capsule_error(429, "rate limit reached");
            reply.body = json!({"error": "rate limit reached"});
            reply.headers = capsule_headers(self.capsule_hourly, 0, reset);
            return Err(reply);
        }
        entry.2 += 1;
        Ok(capsule_headers(self.capsule_hourly, self.capsule_hourly - entry.2, reset))
    }
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn ghl_headers(max: u64, remaining: u64, daily: u64, daily_remaining: u64) -> Headers {
    vec![
        ("X-RateLimit-Max".into(), max.to_string()),
        ("X-RateLimit-Remaining".into(), remaining.to_string()),
        ("X-RateLimit-Interval-Milliseconds".into(), GHL_INTERVAL.as_millis().to_string()),
        ("X-RateLimit-Limit-Daily".into(), daily.to_string()),
        ("X-RateLimit-Daily-Remaining".into(), daily_remaining.to_string()),
    ]
}

fn capsule_headers(limit: u64, remaining: u64, reset: u64) -> Headers {
    vec![
        ("X-RateLimit-Limit".into(), limit.to_string()),
        ("X-RateLimit-Remaining".into(), remaining.to_string()),
        ("X-RateLimit-Reset".into(), reset.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(headers: &'a Headers, name: &str) -> &'a str {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default()
    }

    #[test]
    fn ghl_refuses_the_request_past_the_burst_with_retry_after() {
        let mut limits = Limits::new(0.05, false); // 5 per 10 s
        for left in (0..5).rev() {
            let h = limits.ghl().unwrap();
            assert_eq!(header(&h, "X-RateLimit-Remaining"), left.to_string());
            assert_eq!(header(&h, "X-RateLimit-Max"), "5");
            assert_eq!(header(&h, "X-RateLimit-Interval-Milliseconds"), "10000");
        }
        let refused = limits.ghl().unwrap_err();
        assert_eq!(refused.status, 429);
        assert_eq!(header(&refused.headers, "X-RateLimit-Remaining"), "0");
        let retry: u64 = header(&refused.headers, "Retry-After").parse().unwrap();
        assert!((1..=10).contains(&retry), "{retry}");
    }

    #[test]
    fn capsule_counts_per_token_and_gives_a_reset_time() {
        let mut limits = Limits::new(0.001, false); // 4 an hour
        for _ in 0..4 {
            limits.capsule("a").unwrap();
        }
        let refused = limits.capsule("a").unwrap_err();
        assert_eq!(refused.body, json!({"error": "rate limit reached"}));
        assert!(refused.headers.iter().all(|(k, _)| k != "Retry-After"));
        let reset: u64 = header(&refused.headers, "X-RateLimit-Reset").parse().unwrap();
        let now = epoch_secs(SystemTime::now());
        assert!(reset > now && reset <= now + 3600);
        assert!(limits.capsule("b").is_ok(), "another token has its own budget");
    }

    #[test]
    fn without_limits_nothing_is_refused() {
        let mut limits = Limits::new(1.0, true);
        for _ in 0..500 {
            limits.ghl().unwrap();
        }
        assert_eq!(header(&limits.capsule("t").unwrap(), "X-RateLimit-Remaining"), UNLIMITED.to_string());
    }
}
