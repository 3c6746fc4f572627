//! One integration test binary (faster to build than many): each module tests one capability
//! from the outside, through the library API or the `ghlflow` binary.

mod fake_api;
mod support;
mod util;

mod catalog_counts;
mod catalog_errors;
mod cli_first_hour;
mod cli_ops;
mod engine;
mod fuzz;
mod hooks;
mod hostile;
mod http_layer;
mod kill_nine;
mod listener;
mod meetings;
mod mirror;
mod mirror_real;
mod page;
mod prism_conformance;
mod recipe_validate;
mod sandbox;
mod sandbox_push;
mod spec_conformance;
mod state_export;
mod store_contract;
mod subscriptions;
mod webhook_verify;
mod workers;
