//! Request budgets: one per (app, location or company, or Capsule user), shared by every
//! recipe and call in the process.
//!
//! A budget holds the app's limits (`100/10s`, `200000/1d`, `4000/1h`). Short windows are
//! tracked exactly (a log of send times: at most `count` in any `interval`, which satisfies a
//! server that counts in sliding or fixed windows alike); the daily limit is a counter. What
//! the server reports in its X-RateLimit-* headers corrects the budget downward (other
//! clients may spend it too), and a 429 pauses the whole budget until the wait it names.
//!
//! Several workers on one PostgreSQL store share each budget's sliding windows through the
//! store (`take_request_slot`): a send needs a slot in this process's budget and then one in
//! the store's log, which every worker sees, so the limits hold across them together. The
//! daily counter and 429 pauses stay per process (the daily limit is 2,000 times the short
//! one; a 429 is answered to the worker that got it).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use tokio::time::Instant;

use crate::catalog::{Rate, RateLimitHeaders};
use crate::limits::MAX_SERVER_WAIT;
use crate::store::{RequestSlot, Store};

/// The longest burst window a server's X-RateLimit-Interval-Milliseconds is believed for;
/// GHL's is 10 s. A longer one is ignored (and logged): believing `u64::MAX` ms would stop
/// every request on the budget for good.
const MAX_SERVER_WINDOW: Duration = Duration::from_secs(3600);

/// A wait the server asked for, clamped to `MAX_SERVER_WAIT`; an absurd one is logged.
pub fn clamp_server_wait(wait: Duration, header: &str) -> Duration {
    if wait > MAX_SERVER_WAIT {
        tracing::warn!(
            header,
            asked_s = wait.as_secs(),
            clamped_s = MAX_SERVER_WAIT.as_secs(),
            "the server asked for an absurd wait; clamped"
        );
        MAX_SERVER_WAIT
    } else {
        wait
    }
}

/// Windows longer than this, or allowing more requests than `EXACT_MAX`, are counted rather
/// than logged.
const EXACT_MAX: u32 = 10_000;

#[derive(Debug)]
enum Window {
    /// At most `count` sends in any `interval`: the times of the sends, oldest first, kept for
    /// two intervals (see `correct`).
    Sliding { count: u32, interval: Duration, sent: VecDeque<Instant> },
    /// At most `count` sends per `interval`, counted from `started`.
    Counted { count: u32, interval: Duration, started: Instant, used: u32 },
}

impl Window {
    fn new(rate: &Rate, now: Instant) -> Self {
        let count = rate.count.get();
        if count <= EXACT_MAX {
            Window::Sliding { count, interval: rate.interval, sent: VecDeque::with_capacity(count as usize) }
        } else {
            Window::Counted { count, interval: rate.interval, started: now, used: 0 }
        }
    }

    /// How long until one more send fits; zero when it fits now.
    fn wait(&mut self, now: Instant) -> Duration {
        match self {
            Window::Sliding { count, interval, sent } => {
                while sent.front().is_some_and(|t| now.duration_since(*t) >= *interval * 2) {
                    sent.pop_front();
                }
                let in_window = sent.len() - sent.partition_point(|t| now.duration_since(*t) >= *interval);
                if (in_window as u32) < *count {
                    Duration::ZERO
                } else {
                    let oldest = sent[sent.len() - *count as usize];
                    (oldest + *interval).saturating_duration_since(now)
                }
            }
            Window::Counted { count, interval, started, used } => {
                if now.duration_since(*started) >= *interval {
                    *started = now;
                    *used = 0;
                }
                if *used < *count { Duration::ZERO } else { (*started + *interval).saturating_duration_since(now) }
            }
        }
    }

    fn record(&mut self, now: Instant) {
        match self {
            Window::Sliding { sent, .. } => sent.push_back(now),
            Window::Counted { used, .. } => *used += 1,
        }
    }

    /// The answer to the send recorded at `at` has arrived: count that send from `now`
    /// instead. Every entry was recorded at the time it was made, so `now` is the latest and
    /// the log stays in order.
    fn settle(&mut self, at: Instant, now: Instant) {
        if let Window::Sliding { sent, .. } = self {
            if let Some(i) = sent.iter().rposition(|t| *t == at) {
                sent.remove(i);
            }
            sent.push_back(now);
        }
    }

    /// The server said, in the answer to a request sent at `sent_at`, that only `remaining`
    /// are left: what it counted beyond our own sends was spent by someone else, so count
    /// that as spent now. The server counted when the request arrived, not now: entries
    /// that have left our window since may still have been in its window then, so our side
    /// is everything recorded after `sent_at - interval`, not after `now - interval`.
    fn correct(&mut self, remaining: u32, sent_at: Instant, now: Instant) {
        let _ = self.wait(now); // drop entries older than two intervals first
        match self {
            Window::Sliding { count, interval, sent } => {
                let ours = sent.len() - sent.partition_point(|t| sent_at.duration_since(*t) >= *interval);
                let available = count.saturating_sub(ours as u32);
                for _ in remaining..available {
                    sent.push_back(now);
                }
            }
            Window::Counted { count, used, .. } => *used = (*used).max(count.saturating_sub(remaining)),
        }
    }

    fn interval(&self) -> Duration {
        match self {
            Window::Sliding { interval, .. } | Window::Counted { interval, .. } => *interval,
        }
    }
}

#[derive(Debug)]
struct State {
    windows: Vec<Window>,
    paused_until: Option<Instant>,
}

/// A request let through by `Budget::acquire`. The server counts a request when it arrives,
/// which is some time between the send and the answer, and that time varies: counting it
/// from the send would let the next window open a little early whenever an earlier request
/// took longer to arrive than a later one, and a sliding-window server answers 429. So the
/// request is counted from the moment its answer arrives (or it was abandoned): dropping the
/// permit moves it there.
#[derive(Debug)]
pub struct Permit<'b> {
    budget: &'b Budget,
    at: Instant,
    /// The slots taken in the store's shared windows: (window key, slot).
    shared: Vec<(String, u64)>,
}

impl Permit<'_> {
    /// When the request was let through.
    pub fn sent_at(&self) -> Instant {
        self.at
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = self.budget.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for w in state.windows.iter_mut() {
            w.settle(self.at, now);
        }
    }
}

/// One shared request budget.
#[derive(Debug)]
pub struct Budget {
    headers: RateLimitHeaders,
    state: Mutex<State>,
    /// Where the budget is shared with other workers: the store, and the budget's name.
    shared: Option<(Store, String)>,
}

impl Budget {
    pub fn new(limits: &[Rate], headers: RateLimitHeaders) -> Self {
        let now = Instant::now();
        let mut windows: Vec<Window> = limits.iter().map(|r| Window::new(r, now)).collect();
        windows.sort_by_key(Window::interval);
        Budget { headers, state: Mutex::new(State { windows, paused_until: None }), shared: None }
    }

    /// The budget shared through `store` (PostgreSQL) with every worker on it, as `name`.
    pub fn shared_through(mut self, store: Store, name: String) -> Self {
        self.shared = Some((store, name));
        self
    }

    /// Takes a slot in each of the store's shared windows, waiting while one is full; the
    /// wait is `Err` when it would be longer than `longest`.
    async fn take_shared(&self, longest: Duration) -> Result<Vec<(String, u64)>, Duration> {
        let Some((store, name)) = &self.shared else { return Ok(Vec::new()) };
        let windows: Vec<(u32, Duration)> = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state
                .windows
                .iter()
                .filter_map(|w| match w {
                    Window::Sliding { count, interval, .. } => Some((*count, *interval)),
                    Window::Counted { .. } => None,
                })
                .collect()
        };
        let started = Instant::now();
        let mut slots = Vec::new();
        for (count, interval) in windows {
            let key = format!("{name}/{}ms", interval.as_millis());
            loop {
                let wait = match store.take_request_slot(&key, count, interval).await {
                    Ok(RequestSlot::Taken(slot)) => {
                        slots.push((key, slot));
                        break;
                    }
                    Ok(RequestSlot::Wait(wait)) => wait,
                    Err(e) => {
                        // Without the store no worker can tell what the others sent: wait.
                        tracing::warn!(budget = %key, error = %e, "the shared request budget cannot be read; waiting");
                        Duration::from_secs(1)
                    }
                };
                if started.elapsed() + wait > longest {
                    return Err(started.elapsed() + wait);
                }
                tokio::time::sleep(wait).await;
            }
        }
        Ok(slots)
    }

    /// The answer to `permit`'s request arrived (or it was abandoned): its shared slots count
    /// from now, as the local windows do when the permit is dropped.
    pub async fn settle_shared(&self, permit: &Permit<'_>) {
        if let Some((store, _)) = &self.shared {
            for (key, slot) in &permit.shared {
                if let Err(e) = store.settle_request_slot(key, *slot).await {
                    tracing::warn!(budget = %key, error = %e, "could not settle a shared request slot");
                }
            }
        }
    }

    /// Waits until one more request fits every window, then counts it; hold the permit until
    /// the answer has arrived.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            let wait = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let mut wait = state.paused_until.map(|t| t.saturating_duration_since(now)).unwrap_or_default();
                for w in state.windows.iter_mut() {
                    wait = wait.max(w.wait(now));
                }
                if wait.is_zero() {
                    state.paused_until = None;
                    for w in state.windows.iter_mut() {
                        w.record(now);
                    }
                    return Permit { budget: self, at: now, shared: Vec::new() };
                }
                wait
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Like `acquire`, but when the budget is paused (by a server's 429 or reset time) for
    /// longer than `longest`, gives up at once with how long the pause has left, instead of
    /// holding the caller's task that long.
    pub async fn acquire_within(&self, longest: Duration) -> Result<Permit<'_>, Duration> {
        let paused_for = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.paused_until.map(|t| t.saturating_duration_since(Instant::now())).unwrap_or_default()
        };
        if paused_for > longest {
            return Err(paused_for);
        }
        let mut permit = self.acquire().await;
        permit.shared = self.take_shared(longest).await?;
        Ok(permit)
    }

    /// Stops every request on this budget for `wait` (at most `MAX_SERVER_WAIT`).
    pub fn pause(&self, wait: Duration) {
        let wait = wait.min(MAX_SERVER_WAIT);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + wait;
        state.paused_until = Some(state.paused_until.map_or(until, |t| t.max(until)));
    }

    /// Corrects the budget from the rate-limit headers of the answer to a request sent at
    /// `sent_at` (its permit's `sent_at`). Returns what the API says is left in its shortest
    /// window, when it says.
    pub fn observe(&self, headers: &HeaderMap, sent_at: Instant) -> Option<u64> {
        let num =
            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match self.headers {
            RateLimitHeaders::Ghl => {
                // The burst window is the shortest; the daily one the longest.
                if let (Some(max), Some(ms)) = (num("x-ratelimit-max"), num("x-ratelimit-interval-milliseconds"))
                    && let Some(Window::Sliding { count, interval, .. }) = state.windows.first_mut()
                    && max > 0
                    && ms > 0
                {
                    if Duration::from_millis(ms) > MAX_SERVER_WINDOW {
                        tracing::warn!(interval_ms = ms, "ignoring an absurd X-RateLimit-Interval-Milliseconds");
                    } else {
                        *count = max.min(u64::from(EXACT_MAX)) as u32;
                        *interval = Duration::from_millis(ms);
                    }
                }
                if let Some(remaining) = num("x-ratelimit-remaining")
                    && let Some(w) = state.windows.first_mut()
                {
                    w.correct(remaining.min(u64::from(u32::MAX)) as u32, sent_at, now);
                }
                if let Some(daily) = num("x-ratelimit-daily-remaining")
                    && state.windows.len() > 1
                    && let Some(w) = state.windows.last_mut()
                {
                    w.correct(daily.min(u64::from(u32::MAX)) as u32, sent_at, now);
                }
            }
            RateLimitHeaders::Capsule => {
                if let Some(remaining) = num("x-ratelimit-remaining") {
                    if let Some(w) = state.windows.first_mut() {
                        w.correct(remaining.min(u64::from(u32::MAX)) as u32, sent_at, now);
                    }
                    if remaining == 0
                        && let Some(reset) = num("x-ratelimit-reset")
                    {
                        let until = now + clamp_server_wait(until_epoch(reset), "x-ratelimit-reset");
                        state.paused_until = Some(state.paused_until.map_or(until, |t| t.max(until)));
                    }
                }
            }
        }
        num("x-ratelimit-remaining")
    }

    /// How long a 429 asks us to wait: Retry-After (seconds or a date), else the reset time
    /// (Capsule) or the burst window (GHL), else the shortest window.
    pub fn wait_after_429(&self, headers: &HeaderMap) -> Duration {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        if let Some(wait) = retry_after(headers) {
            return wait;
        }
        if let Some(reset) = text("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok()) {
            return clamp_server_wait(until_epoch(reset), "x-ratelimit-reset");
        }
        if let Some(ms) = text("x-ratelimit-interval-milliseconds").and_then(|v| v.parse::<u64>().ok()) {
            return clamp_server_wait(Duration::from_millis(ms), "x-ratelimit-interval-milliseconds");
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.windows.first().map(Window::interval).unwrap_or(Duration::from_secs(10))
    }
}

/// The wait a `Retry-After` header asks for, in either of its forms (seconds, or an HTTP
/// date), clamped to `MAX_SERVER_WAIT`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(clamp_server_wait(Duration::from_secs_f64(secs.min(1.0e12)), "retry-after"));
    }
    let at = httpdate_parse(v).ok()?;
    Some(clamp_server_wait(at.duration_since(SystemTime::now()).unwrap_or_default(), "retry-after"))
}

/// Time from now until a Unix timestamp (seconds); zero if it has passed.
fn until_epoch(epoch_secs: u64) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Duration::from_secs(epoch_secs).saturating_sub(now)
}

/// RFC 7231 dates, e.g. `Wed, 21 Oct 2015 07:28:00 GMT`.
fn httpdate_parse(text: &str) -> Result<SystemTime, ()> {
    let dt = chrono::DateTime::parse_from_rfc2822(text).map_err(|_| ())?;
    UNIX_EPOCH.checked_add(Duration::from_secs(dt.timestamp().max(0) as u64)).ok_or(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::parse_rate;

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_nothing_else() {
        let one = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("retry-after", v.parse().unwrap());
            retry_after(&h)
        };
        assert_eq!(one("120"), Some(Duration::from_secs(120)));
        assert_eq!(one(" 1.5 "), Some(Duration::from_millis(1500)));
        let in_two_minutes = chrono::Utc::now() + chrono::TimeDelta::seconds(120);
        let date = in_two_minutes.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let wait = one(&date).expect("an HTTP date is a wait");
        assert!((Duration::from_secs(115)..=Duration::from_secs(121)).contains(&wait), "{wait:?} for {date}");
        assert_eq!(one("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO), "a date in the past waits nothing");
        assert_eq!(one("-5"), None);
        assert_eq!(one("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn never_lets_more_than_the_limit_through_in_any_window() {
        let budget = Budget::new(&[parse_rate("100/10s").unwrap()], RateLimitHeaders::Ghl);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..250 {
            budget.acquire().await;
            times.push(Instant::now().duration_since(start));
        }
        for (i, t) in times.iter().enumerate().skip(100) {
            assert!(*t >= times[i - 100] + Duration::from_secs(10), "request {i} at {t:?} breaks the window");
        }
        // And it is not slower than it must be: 250 requests need just over 20 s.
        assert!(times[249] <= Duration::from_millis(20_100), "{:?}", times[249]);
    }

    #[tokio::test(start_paused = true)]
    async fn server_headers_lower_the_budget_and_a_pause_stops_everyone() {
        let budget =
            Budget::new(&[parse_rate("100/10s").unwrap(), parse_rate("200000/1d").unwrap()], RateLimitHeaders::Ghl);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        budget.observe(&h, Instant::now());
        let start = Instant::now();
        budget.acquire().await;
        assert!(Instant::now().duration_since(start) >= Duration::from_secs(10));

        budget.pause(Duration::from_secs(3));
        let start = Instant::now();
        budget.acquire().await;
        assert!(Instant::now().duration_since(start) >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_counts_from_when_its_answer_arrived() {
        let budget = Budget::new(&[parse_rate("100/10s").unwrap()], RateLimitHeaders::Ghl);
        let start = Instant::now();
        let mut permits = Vec::new();
        for _ in 0..100 {
            permits.push(budget.acquire().await);
        }
        // The answers take 2 s: the server may have counted them as late as that.
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(permits);
        budget.acquire().await;
        assert!(Instant::now().duration_since(start) >= Duration::from_secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn a_remaining_count_is_read_as_of_when_the_request_was_sent() {
        let budget = Budget::new(&[parse_rate("100/10s").unwrap()], RateLimitHeaders::Ghl);
        budget.acquire().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        for _ in 0..99 {
            budget.acquire().await;
        }
        tokio::time::sleep(Duration::from_millis(9_999)).await;
        // The first has left the window; the other 99 leave it while this one is on its way,
        // but the server still counted them when it arrived: nobody else spent anything.
        let sent_at = budget.acquire().await.sent_at();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        budget.observe(&h, sent_at);
        let start = Instant::now();
        budget.acquire().await;
        assert_eq!(Instant::now(), start, "our own requests were taken for someone else's");
    }

    #[test]
    fn reads_retry_after_in_seconds_and_capsule_reset() {
        let budget = Budget::new(&[parse_rate("4000/1h").unwrap()], RateLimitHeaders::Capsule);
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(budget.wait_after_429(&h), Duration::from_secs(7));
        let mut h = HeaderMap::new();
        let reset = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 30;
        h.insert("x-ratelimit-reset", reset.to_string().parse().unwrap());
        let wait = budget.wait_after_429(&h);
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(30), "{wait:?}");
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;
    use crate::catalog::parse_rate;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_server_times_are_clamped_and_never_panic_or_hang() {
        let capsule = Budget::new(&[parse_rate("4000/1h").unwrap()], RateLimitHeaders::Capsule);
        let max = headers(&[("x-ratelimit-reset", "18446744073709551615"), ("x-ratelimit-remaining", "0")]);
        assert_eq!(capsule.wait_after_429(&max), MAX_SERVER_WAIT);
        capsule.observe(&max, Instant::now()); // overflowed an Instant before
        assert!(capsule.acquire_within(Duration::from_secs(60)).await.is_err(), "paused for a day: fail fast");

        let ghl = Budget::new(&[parse_rate("100/10s").unwrap()], RateLimitHeaders::Ghl);
        let far = headers(&[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")]);
        assert_eq!(ghl.wait_after_429(&far), MAX_SERVER_WAIT);
        assert_eq!(ghl.wait_after_429(&headers(&[("retry-after", "1e300")])), MAX_SERVER_WAIT);
        assert_eq!(
            ghl.wait_after_429(&headers(&[("x-ratelimit-interval-milliseconds", "18446744073709551615")])),
            MAX_SERVER_WAIT
        );
        // An absurd burst window is not believed: the next requests still go at once.
        let absurd = headers(&[
            ("x-ratelimit-max", "1"),
            ("x-ratelimit-interval-milliseconds", "18446744073709551615"),
            ("x-ratelimit-remaining", "99"),
        ]);
        ghl.observe(&absurd, Instant::now());
        let start = Instant::now();
        for _ in 0..5 {
            ghl.acquire_within(Duration::from_secs(60)).await.unwrap();
        }
        assert_eq!(Instant::now(), start);
        ghl.pause(Duration::MAX);
        assert!(ghl.acquire_within(Duration::from_secs(60)).await.is_err());
    }
}
