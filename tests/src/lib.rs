//! The test harness of the integration suites (tests/tests): the environment written by
//! tests/env, the workspace's binaries, certificates, the in-process operator and kube helpers,
//! the pod runner, and the recording Firestore Admin API.
pub mod bins;
pub mod certs;
pub mod ddb;
pub mod env;
pub mod firestore_admin;
pub mod operator;
pub mod podrunner;
