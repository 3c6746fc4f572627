//! The bounds that keep hostile or careless input from crashing, hanging or exhausting the
//! process, in one place so they can be read together.
//!
//! Each bound is far above anything a real recipe, configuration or API answer needs and
//! far below what would hurt the machine. Crossing one is always a clear, located error
//! (a file refused, a template refused at compile time, a step failed with a message),
//! never a panic or a silent truncation. The checks themselves live beside the code they
//! protect; this module only owns the numbers and the render budget that templates share.

use std::cell::Cell;

/// The largest user file read (ghlflow.yaml, a recipe, an operations file).
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// How deep blocks (`{{#if}}`, `{{#each}}`) and sub-expressions (`(lower (trim x))`) may nest
/// in one template. Rendering recurses once per level, and so does the template parser.
pub const MAX_TEMPLATE_NESTING: usize = 32;

/// The most text one template may render.
pub const MAX_RENDERED_BYTES: usize = 4 * 1024 * 1024;

/// The most work one template render may do: one unit per helper call and per `#each`
/// iteration, plus the size (bytes or elements) of every value a helper builds and every
/// byte written. Tens of thousands of units cover any real mapping; this stops runaway
/// nesting (`#each` inside `#each` over `split` lists) within a second or two.
pub const MAX_RENDER_WORK: u64 = 8_000_000;

/// The default cap on one HTTP response body, when the app does not set its own.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 32 * 1024 * 1024;

/// The longest wait a server may ask for (Retry-After, X-RateLimit-Reset, a rate window)
/// that is honoured as given; a longer one is clamped to this and logged.
pub const MAX_SERVER_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

thread_local! {
    /// Work left in the render running on this thread (None: no render is running).
    static WORK_LEFT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Why a render was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkExceeded;

impl std::fmt::Display for WorkExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the template does too much work (over {MAX_RENDER_WORK} units: nested `#each` over long lists or helpers building huge values); simplify it"
        )
    }
}

/// Runs `f` (one template render) with a fresh work budget on this thread.
pub fn with_render_budget<T>(f: impl FnOnce() -> T) -> T {
    let outer = WORK_LEFT.with(|w| w.replace(Some(MAX_RENDER_WORK)));
    let result = f();
    WORK_LEFT.with(|w| w.set(outer));
    result
}

/// Spends `units` of the running render's budget; an error once it is used up. Outside a
/// render this does nothing.
pub fn spend(units: u64) -> Result<(), WorkExceeded> {
    WORK_LEFT.with(|w| match w.get() {
        None => Ok(()),
        Some(left) if left >= units => {
            w.set(Some(left - units));
            Ok(())
        }
        Some(_) => {
            w.set(Some(0));
            Err(WorkExceeded)
        }
    })
}

/// The size of a JSON value for the work budget: bytes of text, one per other scalar and
/// container entry. Walking the value costs about as much as building it did.
pub fn value_cost(v: &serde_json::Value) -> u64 {
    use serde_json::Value;
    match v {
        Value::String(s) => 1 + s.len() as u64,
        Value::Array(items) => 1 + items.iter().map(value_cost).sum::<u64>(),
        Value::Object(m) => 1 + m.iter().map(|(k, v)| k.len() as u64 + value_cost(v)).sum::<u64>(),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_runs_out_and_is_restored_after_the_render() {
        assert_eq!(spend(u64::MAX), Ok(()), "outside a render nothing is counted");
        with_render_budget(|| {
            assert_eq!(spend(MAX_RENDER_WORK - 1), Ok(()));
            assert_eq!(spend(1), Ok(()));
            assert_eq!(spend(1), Err(WorkExceeded));
        });
        assert_eq!(spend(u64::MAX), Ok(()));
        assert_eq!(value_cost(&serde_json::json!(["ab", {"k": 1}])), 1 + 3 + (1 + 1 + 1));
    }
}
