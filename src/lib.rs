//! ghlflow: a self-hosted automation engine for GoHighLevel.
//!
//! Data flows one way through the crate:
//!
//! ```text
//! operations/*.yaml ─▶ catalog ─▶ recipe compile ─▶ scheduler ─▶ executor ─▶ http
//!                                                                          (auth, rate limit,
//!                                                                           retry, pagination)
//! ```
//!
//! - `catalog` reads the operation files (embedded at build time) and compiles them into
//!   typed operations: method, path template, inputs, output shape, pagination, dedupe.
//! - `diagnostic` is how every user file reports problems: `file:line:col: message`, all at
//!   once.
//! - `config` reads ghlflow.yaml: connections, credentials (`${VAR}` from the environment),
//!   where state lives.
//! - `http` sends every request: auth, shared rate-limit budgets, retries, pagination.
//! - `store` says what the engine needs of a state backend (`StateStore`) and holds the sled one,
//!   the only code that touches sled: tokens, cursors, the run journal, history, leases.
//! - `webhook` decides whether a pushed delivery (an instant trigger's event) is genuine and
//!   fresh: GHL's signatures and replay rules, Capsule's path tokens. No server, no I/O.
//! - `limits` holds the bounds on files, templates, responses and server-given waits.
//! - `cli` turns parsed command lines into calls on the modules above and renders results.
//! - `sandbox` (a local emulator of both APIs) and `demo` (the shipped recipes against it)
//!   sit beside the flow, behind the `sandbox` feature, on by default.
//!
//! No module reaches back up the flow.

pub mod catalog;
pub mod cli;
pub mod config;
#[cfg(feature = "sandbox")]
pub mod demo;
pub mod diagnostic;
pub mod engine;
pub mod fsread;
pub mod http;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod recipe;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod store;
pub mod template;
pub mod unknown_keys;
pub mod webhook;
pub mod yaml;
