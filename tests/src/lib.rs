//! Shared helpers for the integration tests: reading the test environment written by tests/env.
pub mod bins;
pub mod certs;
pub mod ddb;
pub mod env;
