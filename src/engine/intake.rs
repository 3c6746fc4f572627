//! Instant triggers: the records of a verified hook delivery become queued runs of the
//! recipes listening for its event, journaled and flushed before the listener answers.
//!
//! A record runs once whichever way it arrives. It is marked seen the way a poll marks it
//! (its id, and its change time when the trigger dedupes on one), in the same commit as its
//! run; the store skips a run whose item is already marked with that change or a later one.
//! A delivery whose record carries no change time (GHL's contact events) is marked at the
//! delivery's time, so the reconciling poll that later reads the same change does not run
//! it again (see `store::mark_covers`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::poll::{item_identity, new_run, scalar};
use super::{Engine, EngineError};
use crate::catalog::Operation;
use crate::config::Connection;
use crate::recipe::Recipe;
use crate::store::{DeliveryCommit, RunId, RunStatus};

/// What became of one delivery.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Recipes listening for the event.
    pub recipes: usize,
    /// The runs created, by recipe (to execute now).
    pub runs: Vec<(Arc<Recipe>, Vec<RunId>)>,
    /// Records already run (by an earlier delivery or a poll).
    pub already_seen: usize,
}

impl Accepted {
    /// The delivery's result as `/metrics` counts it.
    pub fn result(&self) -> &'static str {
        if self.recipes == 0 {
            "unmatched"
        } else if self.runs.iter().all(|(_, ids)| ids.is_empty()) {
            "duplicate"
        } else {
            "accepted"
        }
    }

    /// The answer's body.
    pub fn summary(&self) -> Value {
        json!({
            "status": self.result(),
            "runs": self.runs.iter().map(|(_, ids)| ids.len()).sum::<usize>(),
            "already_seen": self.already_seen,
        })
    }
}

impl Engine {
    /// The configured connections to `app`.
    pub fn connections_of_app(&self, app: &str) -> Vec<Arc<Connection>> {
        self.config.connections.values().filter(|c| c.app.id == app).cloned().collect()
    }

    /// The Capsule subscriptions ghlflow made, as the hook check wants them.
    pub async fn capsule_hooks(&self) -> Result<Vec<(crate::webhook::CapsuleHook, String)>, EngineError> {
        Ok(self
            .store
            .hook_subscriptions()
            .await?
            .into_iter()
            .map(|s| {
                let hook = crate::webhook::CapsuleHook { token: s.token, event: s.event, hook_id: s.hook_id };
                (hook, s.connection)
            })
            .collect())
    }

    /// Whether a GHL delivery with this `webhookId` was recorded before.
    pub async fn delivery_seen(&self, webhook_id: &str) -> Result<bool, EngineError> {
        Ok(self.store.delivery_seen(webhook_id).await?)
    }

    /// Records the runs of one delivery of `event` on `connection`: each record of each body,
    /// for each recipe listening, unless it ran already. Everything is on disk when this
    /// returns; the caller executes the runs (`execute_runs`) after answering.
    pub async fn accept_delivery(
        &self,
        connection: &Connection,
        event: &str,
        bodies: Vec<Value>,
        delivery: Option<&str>,
        received: DateTime<Utc>,
    ) -> Result<Accepted, EngineError> {
        let mut accepted = Accepted::default();
        let listening: Vec<(Arc<Recipe>, Arc<Operation>)> = self
            .recipes()
            .into_iter()
            .filter_map(|recipe| {
                let op = recipe
                    .trigger
                    .listens
                    .iter()
                    .find(|l| l.connection.name == connection.name && l.event == event)
                    .map(|l| Arc::clone(&l.operation))?;
                Some((recipe, op))
            })
            .collect();
        accepted.recipes = listening.len();
        for (recipe, op) in listening {
            let mut commit = DeliveryCommit { delivery: delivery.map(str::to_owned), ..Default::default() };
            for body in &bodies {
                let records = op.output.as_ref().map(|o| o.records(body)).unwrap_or_default();
                for record in records {
                    let (id, mark) = hook_identity(&recipe, &op, record, received);
                    let run = new_run(self, &recipe, RunStatus::Queued, id.clone(), record.clone());
                    commit.runs.push((run, id, mark));
                }
            }
            let offered = commit.runs.len();
            let created = self.store.commit_delivery(&recipe.id, &commit).await?;
            accepted.already_seen += offered - created.len();
            accepted.runs.push((recipe, created));
        }
        if accepted.recipes == 0
            && let Some(id) = delivery
        {
            // Nothing listens: still remembered, so a replay of it is refused like any other.
            let commit = DeliveryCommit { delivery: Some(id.to_owned()), ..Default::default() };
            self.store.commit_delivery("", &commit).await?;
        }
        // Durable before the answer: a process killed after it loses nothing.
        self.store.flush_async().await?;
        Ok(accepted)
    }
}

/// A delivered record's id and seen mark, as the recipe's poll would give them. A record
/// without the change time its trigger dedupes on is marked at the delivery's time.
fn hook_identity(recipe: &Recipe, op: &Operation, record: &Value, received: DateTime<Utc>) -> (String, String) {
    let delivered_at = || {
        record
            .get("timestamp")
            .map(scalar)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| received.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    // Every delivered record is an item of its own: keyed by its id.
    item_identity(op.output.as_ref(), recipe.trigger.dedupe, true, record, delivered_at)
}
