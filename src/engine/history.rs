//! What the engine recorded, as the command line, the demo and the page ask for it: one
//! run, a page of history, and the one change a demo makes to a trigger (a full scan due).

use super::{Engine, EngineError};
use crate::store::{RunId, RunRecord, RunStatus};

impl Engine {
    /// One run, assembled from the journal.
    pub async fn run(&self, id: &RunId) -> Result<Option<RunRecord>, EngineError> {
        Ok(self.store.run(id).await?)
    }

    /// Runs newest first, optionally of one recipe and in one status: at most `limit`, and
    /// how many match in all.
    pub async fn history(
        &self,
        recipe: Option<&str>,
        status: Option<RunStatus>,
        limit: usize,
    ) -> Result<(Vec<RunRecord>, usize), EngineError> {
        Ok(self.store.runs_page(recipe, status, limit).await?)
    }

    /// Makes a recipe's next poll read its whole feed of changes (`full_scan_every`), as if
    /// that long had passed since the last full read.
    pub async fn make_full_scan_due(&self, recipe: &str) -> Result<(), EngineError> {
        if let Some(mut state) = self.store.trigger_state(recipe).await?
            && state.last_full_scan.take().is_some()
        {
            self.store.save_trigger_state(recipe, &state).await?;
        }
        Ok(())
    }

    /// The subscriptions ghlflow made at the APIs for instant triggers (Capsule REST hooks).
    pub async fn hook_subscriptions(&self) -> Result<Vec<crate::store::HookSubscription>, EngineError> {
        Ok(self.store.hook_subscriptions().await?)
    }
}
