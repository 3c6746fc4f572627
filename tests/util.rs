//! Helpers shared by the integration tests: paths to fixtures and to ../shared, and a way to
//! run the built binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared reference folder that sits beside the repository (specs, maps). Overridable
/// with GHLFLOW_SHARED for other layouts.
pub fn shared() -> PathBuf {
    match std::env::var_os("GHLFLOW_SHARED") {
        Some(p) => PathBuf::from(p),
        None => root().join("../shared"),
    }
}

/// Runs the `ghlflow` binary with `args` in `dir`.
pub fn ghlflow(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ghlflow"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("the ghlflow binary runs")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the `ghlflow` binary in `dir` with extra environment variables.
pub fn ghlflow_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ghlflow"));
    c.args(args).current_dir(dir).env("NO_COLOR", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The settings the shipped capsule-meetings recipe takes from the environment, for this
/// sandbox (its calendar, and its first user for owners without a GHL user).
pub fn meeting_settings(sandbox: &ghlflow::sandbox::Sandbox) -> Vec<(&'static str, String)> {
    let user = sandbox.ghl_users()[0]["id"].as_str().unwrap_or_default().to_owned();
    vec![("GHL_CALENDAR_ID", sandbox.ghl_calendar_id()), ("GHL_DEFAULT_USER_ID", user)]
}

/// The `[<prefix>…]` markers the shipped recipes write into a field of each record (a note's
/// body, a task's), to count how many times a record was mirrored.
pub fn markers(items: &[serde_json::Value], field: &str, prefix: &str) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| i[field].as_str())
        .filter_map(|b| b.find(prefix).map(|at| b[at..].split(']').next().unwrap_or_default().to_owned()))
        .collect()
}
