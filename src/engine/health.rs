//! Whether the engine is doing its work, for `/readyz`: the scheduler's loop turns, the state
//! store answers, and no recipe's poll is stuck.
//!
//! "Stuck" is about progress, not duration: a backfill of 100,000 people within GHL's rate
//! limit legitimately polls for hours, but it reads a page or finishes a run every few
//! seconds. A recipe whose poll has done neither for `STUCK_AFTER` is stuck.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a poll may go without reading a page or finishing a run before it counts as
/// stuck. Longer than any wait the HTTP layer makes for a rate limit (it fails instead).
pub const STUCK_AFTER: Duration = Duration::from_secs(10 * 60);

/// How long the scheduler's loop may stay still before the engine is not ready.
pub const SCHEDULER_SILENT_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Health {
    /// When the scheduler's loop last turned; `None` when no scheduler runs (`run --once`).
    beat: Mutex<Option<Instant>>,
    /// Recipes polling now, and when each last made progress.
    polling: Mutex<HashMap<String, Instant>>,
    /// The last heartbeat's failure, if it failed (the store did not answer).
    store_error: Mutex<Option<String>>,
}

impl Health {
    /// The scheduler's loop turned.
    pub fn beat(&self) {
        *self.beat.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// A recipe's poll began.
    pub fn poll_started(&self, recipe: &str) {
        self.polling.lock().unwrap_or_else(|p| p.into_inner()).insert(recipe.to_owned(), Instant::now());
    }

    /// A recipe made progress (a page read, a run finished): counts only while it polls.
    pub fn progress(&self, recipe: &str) {
        if let Some(at) = self.polling.lock().unwrap_or_else(|p| p.into_inner()).get_mut(recipe) {
            *at = Instant::now();
        }
    }

    /// The recipes polling now.
    pub fn polling_now(&self) -> std::collections::HashSet<String> {
        self.polling.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// What the last heartbeat to the state store gave: `None` when it answered.
    pub fn store_answered(&self, error: Option<String>) {
        *self.store_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// A recipe's poll and its runs are done.
    pub fn poll_done(&self, recipe: &str) {
        self.polling.lock().unwrap_or_else(|p| p.into_inner()).remove(recipe);
    }

    /// What keeps the engine from being ready, if anything, at `now`.
    pub fn problems(&self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &*self.store_error.lock().unwrap_or_else(|p| p.into_inner()) {
            out.push(format!("the state store does not answer the heartbeat: {e}"));
        }
        match *self.beat.lock().unwrap_or_else(|p| p.into_inner()) {
            None => out.push("the scheduler is not running".to_owned()),
            Some(at) if now.saturating_duration_since(at) > SCHEDULER_SILENT_AFTER => {
                out.push(format!("the scheduler has not turned for {}s", now.saturating_duration_since(at).as_secs()))
            }
            Some(_) => {}
        }
        let polling = self.polling.lock().unwrap_or_else(|p| p.into_inner());
        let mut stuck: Vec<String> = polling
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) > STUCK_AFTER)
            .map(|(recipe, at)| {
                format!(
                    "recipe `{recipe}` is stuck: its poll has made no progress for {}s",
                    now.saturating_duration_since(*at).as_secs()
                )
            })
            .collect();
        stuck.sort();
        out.extend(stuck);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_a_turning_scheduler_and_no_stuck_poll() {
        let health = Health::default();
        let start = Instant::now();
        assert_eq!(health.problems(start), ["the scheduler is not running"]);
        health.beat();
        assert!(health.problems(Instant::now()).is_empty());
        let later = Instant::now() + SCHEDULER_SILENT_AFTER + Duration::from_secs(5);
        assert!(
            health.problems(later)[0].starts_with("the scheduler has not turned for"),
            "{:?}",
            health.problems(later)
        );

        health.progress("people");
        assert!(health.problems(Instant::now() + STUCK_AFTER * 2).len() == 1, "progress alone starts no poll");
        health.poll_started("people");
        health.beat();
        let much_later = Instant::now() + STUCK_AFTER + Duration::from_secs(1);
        let problems = health.problems(much_later);
        assert!(problems.iter().any(|p| p.starts_with("recipe `people` is stuck")), "{problems:?}");
        // Progress resets the clock; a finished poll is never stuck.
        health.progress("people");
        assert!(!health.problems(Instant::now()).iter().any(|p| p.contains("people")));
        health.poll_done("people");
        assert!(!health.problems(much_later).iter().any(|p| p.contains("people")));
    }
}
