//! Containment for panics in engine tasks. A bug that panics while a recipe polls or runs
//! must not leave the recipe marked busy (never polled again) or its runs `queued` or
//! `running` forever: the panic is caught where the task runs, logged, and the recipe's
//! unfinished runs are failed with a message, so `runs replay` (or autoreplay) resumes them.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;

use std::sync::Arc;

use super::{Engine, EngineError, PollTick, now_iso};
use crate::recipe::Recipe;
use crate::store::RunStatus;

impl Engine {
    /// `poll_and_run` with a panic caught: the tick then reports the panic as its poll's
    /// error, and the recipe's queued and running runs are failed (not in a dry run, which
    /// writes nothing).
    pub async fn poll_and_run_guarded(&self, recipe: &Arc<Recipe>) -> PollTick {
        match catch_panic(self.poll_and_run(recipe)).await {
            Ok(tick) => tick,
            Err(panic) => {
                if !self.options.dry_run {
                    fail_stuck_runs(self, &recipe.id, &panic).await;
                }
                let message = format!("internal error: the poll task panicked: {panic}");
                PollTick { poll: Err(EngineError::Poll { recipe: recipe.id.clone(), message }), runs: Vec::new() }
            }
        }
    }
}

/// Runs `task`, turning a panic into the panic's message.
pub async fn catch_panic<T>(task: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(task).catch_unwind().await.map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned())
    })
}

/// After a panic in `recipe`'s task: every run of it still queued or running fails with
/// `message`, and the store is flushed. Returns how many runs were failed.
pub async fn fail_stuck_runs(engine: &Engine, recipe: &str, message: &str) -> usize {
    tracing::error!(recipe = %recipe, panic = %message, "a poll task panicked; its unfinished runs are marked failed");
    let Ok(open) = engine.store.open_runs().await else { return 0 };
    let mut n = 0;
    // Waiting runs wait for another recipe's id, not for this task: they stay.
    for mut run in
        open.into_iter().filter(|r| r.recipe == recipe && matches!(r.status, RunStatus::Queued | RunStatus::Running))
    {
        run.error = Some(format!(
            "internal error (the engine task panicked: {message}); `ghlflow runs replay {}` resumes it",
            run.id
        ));
        run.finished = Some(now_iso());
        if engine.store.transition(&mut run, RunStatus::Failed).await.is_ok() {
            n += 1;
        }
    }
    let _ = engine.store.flush_async().await;
    n
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::store::{RunId, RunRecord, Store};

    fn engine() -> Engine {
        let catalog = crate::catalog::load_embedded().unwrap();
        let text =
            "connections:\n  ghl: { app: ghl, location_id: L, auth: { type: private_token, token: tok-guard } }\n";
        let config = crate::config::Config::parse(text, Path::new("g.yaml"), &catalog, &|_| None).unwrap();
        let store = Store::temporary().unwrap();
        Engine::with_store(Arc::new(catalog), Arc::new(config), store, Default::default()).unwrap()
    }

    fn run(n: u32, recipe: &str, status: RunStatus) -> RunRecord {
        RunRecord::new(id(n), recipe, status, "1", serde_json::json!({}), now_iso())
    }

    fn id(n: u32) -> RunId {
        RunId::new(1, n)
    }

    #[tokio::test]
    async fn a_panicking_task_is_caught_and_its_recipes_open_runs_fail_with_a_message() {
        let panicked = catch_panic(async { panic!("boom at step 2") }).await;
        assert_eq!(panicked, Err::<(), _>("boom at step 2".to_owned()));
        assert_eq!(catch_panic(async { 7 }).await, Ok(7));

        let engine = engine();
        let mut running = run(2, "welcome", RunStatus::Queued);
        engine
            .store
            .create_runs(&[
                run(1, "welcome", RunStatus::Queued),
                running.clone(),
                run(3, "other", RunStatus::Queued),
                run(4, "welcome", RunStatus::Succeeded),
            ])
            .await
            .unwrap();
        engine.store.transition(&mut running, RunStatus::Running).await.unwrap();
        assert_eq!(fail_stuck_runs(&engine, "welcome", "boom").await, 2);
        for n in [1, 2] {
            let r = engine.store.run(&id(n)).await.unwrap().unwrap();
            assert_eq!(r.status, RunStatus::Failed, "{n}");
            assert!(r.error.as_deref().unwrap_or_default().contains("panicked: boom"), "{:?}", r.error);
        }
        assert_eq!(engine.store.run(&id(3)).await.unwrap().unwrap().status, RunStatus::Queued, "another recipe's run");
        assert_eq!(engine.store.run(&id(4)).await.unwrap().unwrap().status, RunStatus::Succeeded);
        let open: Vec<RunId> = engine.store.open_runs().await.unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(open, [id(3)], "failed runs leave the open index");
    }
}
