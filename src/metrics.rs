//! What the process counts, for `/metrics`: one registry per process, in the Prometheus text
//! format (through the `prometheus-client` crate).
//!
//! The engine, the HTTP layer, the scheduler and the listener record into `metrics()`. Label
//! values are bounded: recipe ids, operation keys, app and connection names, statuses and
//! results, never an item, run or contact id.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub recipe: String,
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub app: String,
    /// The HTTP status, or `error` when no answer came.
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub app: String,
    /// One connection is one GHL location or one Capsule user.
    pub connection: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecipeLabels {
    pub recipe: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub source: String,
    /// `accepted`, `duplicate`, `unmatched`, `forged`, `stale`, `too_large`, `malformed`...
    pub result: String,
}

/// Every metric the process keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    step_seconds: Family<OperationLabels, Histogram>,
    requests: Family<RequestLabels, Counter>,
    rate_limited: Family<ConnectionLabels, Counter>,
    budget_remaining: Family<ConnectionLabels, Gauge>,
    poll_lateness: Histogram,
    flush_seconds: Histogram,
    hook_events: Family<HookLabels, Counter>,
    held: Family<RecipeLabels, Gauge>,
    live_workers: Gauge,
}

fn seconds_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("ghlflow");
        let runs = Family::<RunLabels, Counter>::default();
        registry.register("runs", "Runs that ended (or were set aside), by recipe and status", runs.clone());
        let step_seconds = Family::<OperationLabels, Histogram>::new_with_constructor(seconds_histogram);
        registry.register_with_unit(
            "step_duration",
            "How long each step took, retries included, by operation",
            Unit::Seconds,
            step_seconds.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "Requests sent to the APIs, by app and answer status", requests.clone());
        let rate_limited = Family::<ConnectionLabels, Counter>::default();
        registry.register("rate_limited", "429 answers met, by connection", rate_limited.clone());
        let budget_remaining = Family::<ConnectionLabels, Gauge>::default();
        registry.register(
            "rate_budget_remaining",
            "Requests left in the current rate-limit window, as the API last said, by connection",
            budget_remaining.clone(),
        );
        let poll_lateness = seconds_histogram();
        registry.register_with_unit(
            "poll_lateness",
            "How long after its due time each poll started",
            Unit::Seconds,
            poll_lateness.clone(),
        );
        let flush_seconds = seconds_histogram();
        registry.register_with_unit(
            "journal_flush",
            "How long each flush of the state store to disk took",
            Unit::Seconds,
            flush_seconds.clone(),
        );
        let hook_events = Family::<HookLabels, Counter>::default();
        registry.register("hook_events", "Instant-trigger deliveries, by source and result", hook_events.clone());
        let held = Family::<RecipeLabels, Gauge>::default();
        registry.register("held_runs", "Runs held for release (hold_above), by recipe", held.clone());
        let live_workers = Gauge::default();
        registry.register(
            "live_workers",
            "Workers alive on this state store at the last heartbeat",
            live_workers.clone(),
        );
        Metrics {
            registry,
            runs,
            step_seconds,
            requests,
            rate_limited,
            budget_remaining,
            poll_lateness,
            flush_seconds,
            hook_events,
            held,
            live_workers,
        }
    }

    pub fn run_ended(&self, recipe: &str, status: &str) {
        self.runs_ended(recipe, status, 1);
    }

    pub fn runs_ended(&self, recipe: &str, status: &str, runs: u64) {
        self.runs.get_or_create(&RunLabels { recipe: recipe.to_owned(), status: status.to_owned() }).inc_by(runs);
    }

    pub fn step_took(&self, operation: &str, took: Duration) {
        self.step_seconds
            .get_or_create(&OperationLabels { operation: operation.to_owned() })
            .observe(took.as_secs_f64());
    }

    /// A request was answered with `status`, or (`None`) got no answer.
    pub fn request(&self, app: &str, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.requests.get_or_create(&RequestLabels { app: app.to_owned(), status }).inc();
    }

    pub fn rate_limited(&self, app: &str, connection: &str) {
        self.rate_limited
            .get_or_create(&ConnectionLabels { app: app.to_owned(), connection: connection.to_owned() })
            .inc();
    }

    pub fn budget_remaining(&self, app: &str, connection: &str, remaining: u64) {
        let labels = ConnectionLabels { app: app.to_owned(), connection: connection.to_owned() };
        self.budget_remaining.get_or_create(&labels).set(remaining.min(i64::MAX as u64) as i64);
    }

    pub fn poll_late(&self, late: Duration) {
        self.poll_lateness.observe(late.as_secs_f64());
    }

    pub fn flushed(&self, took: Duration) {
        self.flush_seconds.observe(took.as_secs_f64());
    }

    pub fn hook_event(&self, source: &str, result: &str) {
        self.hook_events.get_or_create(&HookLabels { source: source.to_owned(), result: result.to_owned() }).inc();
    }

    pub fn held(&self, recipe: &str, runs: usize) {
        self.held.get_or_create(&RecipeLabels { recipe: recipe.to_owned() }).set(runs as i64);
    }

    pub fn set_live_workers(&self, live: usize) {
        self.live_workers.set(live as i64);
    }

    /// The whole registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_parses_and_names_follow_the_conventions() {
        let m = Metrics::new();
        m.run_ended("people", "succeeded");
        m.run_ended("people", "succeeded");
        m.step_took("ghl.contacts.upsert_contact", Duration::from_millis(12));
        m.request("ghl", Some(201));
        m.request("capsule", None);
        m.held("people", 3);
        let text = m.encode();
        assert!(text.contains("ghlflow_runs_total{recipe=\"people\",status=\"succeeded\"} 2"), "{text}");
        assert!(text.contains("# UNIT ghlflow_step_duration_seconds seconds"), "{text}");
        assert!(text.contains("ghlflow_http_requests_total{app=\"capsule\",status=\"error\"} 1"), "{text}");
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
        let held = scrape.samples.iter().find(|s| s.metric == "ghlflow_held_runs").expect("held_runs");
        assert!(matches!(held.value, prometheus_parse::Value::Gauge(v) if v == 3.0), "{held:?}");
    }
}
