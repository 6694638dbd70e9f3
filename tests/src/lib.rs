//! Shared helpers for the integration tests: reading the test environment written by tests/env.
pub mod bins;
pub mod ddb;
pub mod env;
