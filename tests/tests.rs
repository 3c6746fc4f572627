//! One integration test binary (faster to build than many): each module tests one capability
//! from the outside, through the library API or the `ghlflow` binary.

mod util;

mod catalog_counts;
mod catalog_errors;
mod cli_ops;
mod spec_conformance;
