//! Waiting for a lease: for work that must happen once across the workers sharing a store
//! (an OAuth refresh, the REST hook subscriptions), whichever worker gets to it first.

use std::time::Duration;

use super::{Store, StoreError};

/// How often a worker looks again at a lease another one holds.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Takes the lease `name` for this worker, trying again within `patience` while another
/// worker holds it. `Ok(false)` when the other kept it all that time.
pub async fn wait_for_lease(store: &Store, name: &str, ttl: Duration, patience: Duration) -> Result<bool, StoreError> {
    let until = tokio::time::Instant::now() + patience;
    loop {
        if store.acquire_lease(name, store.worker(), ttl).await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= until {
            return Ok(false);
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}
