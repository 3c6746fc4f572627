//! The retry policy (data from app.yaml, overridable per operation; a recipe's autoreplay)
//! turned into delays, exponential backoff with jitter and a bounded number of attempts, and
//! the one loop that tries again.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use super::HttpError;
use crate::catalog::RetryPolicy;

/// Calls `attempt` (with its number, from 1) until it succeeds or fails for good: a
/// retryable error is tried again after the policy's next delay, until the delays run out.
/// A 429 that reaches here was not waited out (the server asked for too long): it is not
/// tried again now. `what` names the work in the log.
pub async fn retrying<T, F, Fut>(policy: &RetryPolicy, what: &str, mut attempt: F) -> Result<T, HttpError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, HttpError>>,
{
    let mut delays = delays(policy);
    let mut n = 0;
    loop {
        n += 1;
        match attempt(n).await {
            Err(e) if e.is_retryable() && e.status() != Some(429) => match delays.next() {
                Some(delay) => {
                    tracing::warn!(op = what, attempt = n, error = %e, delay_ms = delay.as_millis() as u64, "retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(e),
            },
            done => return done,
        }
    }
}

/// The waits before each retry: `max_attempts - 1` of them, growing by `multiplier` from
/// `initial_backoff` up to `max_backoff`, each with random jitter.
pub fn delays(policy: &RetryPolicy) -> impl Iterator<Item = Duration> + Send + use<> {
    ExponentialBuilder::default()
        .with_min_delay(policy.initial_backoff)
        .with_max_delay(policy.max_backoff)
        .with_factor(policy.multiplier as f32)
        .with_max_times(policy.max_attempts.get().saturating_sub(1) as usize)
        .with_jitter()
        // backon seeds its jitter with a constant; a random seed keeps concurrent retries
        // from waking together.
        .with_jitter_seed(rand::random())
        .build()
}

/// The longest a request waits for a paused budget (a server's 429 or reset time) before it
/// fails instead: the policy's whole backoff (`max_attempts` × `max_backoff`), and at least a
/// minute. A server asking for more is answered with an error that says until when.
pub fn longest_wait(policy: &RetryPolicy) -> Duration {
    policy.max_backoff.saturating_mul(policy.max_attempts.get()).max(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn grows_is_bounded_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: NonZeroU32::new(5).unwrap(),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            multiplier: 2.0,
        };
        let d: Vec<Duration> = delays(&policy).collect();
        assert_eq!(d.len(), 4);
        assert!(d[0] >= Duration::from_millis(100) && d[0] <= Duration::from_millis(200), "{d:?}");
        assert!(d[3] >= Duration::from_millis(500) && d[3] <= Duration::from_millis(1000), "{d:?}");
        let again: Vec<Duration> = delays(&policy).collect();
        assert_ne!(d, again, "no jitter");
    }
}
