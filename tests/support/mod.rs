//! Helpers shared by test modules.

pub mod postgres;
