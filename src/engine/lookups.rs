//! Recipe lookups: reference data (Capsule's users and their time zones, say) that a
//! recipe's templates read as `lookups.<name>`. Each lookup is read at most once per poll of
//! its recipe and shared by every run of that poll, so a thousand tasks cost one request,
//! not a thousand. A run outside a poll (a replay) reuses a recent read or reads it anew.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Engine, connection_view, env_view};
use crate::recipe::{Lookup, Recipe, render_inputs};
use crate::template::context;

/// How long a read stays good for runs outside a poll.
const FRESH_FOR: Duration = Duration::from_secs(10 * 60);

/// A lookup's records and when they were read.
type Read = (Instant, Arc<Value>);

/// Reads by (recipe id, lookup name).
#[derive(Debug, Default)]
pub(super) struct LookupCache(tokio::sync::Mutex<HashMap<(String, String), Read>>);

impl Engine {
    /// A new poll of `recipe` starts: its lookups are read again when first needed.
    pub(super) async fn forget_lookups(&self, recipe: &str) {
        self.lookup_cache.0.lock().await.retain(|(r, _), _| r != recipe);
    }

    /// The records of one lookup (every page, up to the app's page bound).
    pub(super) async fn lookup_records(&self, recipe: &Recipe, lookup: &Lookup) -> Result<Arc<Value>, String> {
        // Held across the read: runs of one poll that start together wait for one read.
        let mut cache = self.lookup_cache.0.lock().await;
        let key = (recipe.id.clone(), lookup.name.clone());
        if let Some((at, value)) = cache.get(&key)
            && at.elapsed() < FRESH_FOR
        {
            return Ok(Arc::clone(value));
        }
        let ctx =
            context(serde_json::json!({"connection": connection_view(&lookup.connection), "env": env_view(recipe)}));
        let fail = |e: String| format!("lookup `{}` ({}): {e}", lookup.name, lookup.operation.key);
        let inputs = render_inputs(&lookup.input, &ctx).map_err(fail)?;
        let mut pager = crate::http::Pager::new(
            &self.client,
            Arc::clone(&lookup.connection),
            Arc::clone(&lookup.operation),
            inputs,
            None,
        );
        let (records, _) = crate::http::collect_all(&mut pager)
            .await
            .map_err(|e| fail(self.config.redactor.redact(&e.to_string())))?;
        let value = Arc::new(Value::Array(records));
        cache.insert(key, (Instant::now(), Arc::clone(&value)));
        Ok(value)
    }
}
