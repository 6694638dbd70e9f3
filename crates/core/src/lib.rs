//! The contract between the AllSource operator and its store nodes. Everything both sides
//! exchange is defined here once, so the compiler catches a drift between them:
//!
//! - [`model`]: the event model (ids, events, pages, stats, capabilities, limits);
//! - [`error`]: the error every store operation returns, with its HTTP status and code;
//! - [`store`]: the `EventStore` trait every backend implements;
//! - [`registry`]: the tenant registry file the operator writes and the nodes read;
//! - [`nodeconfig`]: the node configuration file the operator writes and the nodes read;
//! - [`tls`]: the TLS file names and the checks of a certificate and key;
//! - [`duration`]: durations as the CRDs and the CLI write them;
//! - [`wire`]: the request and response bodies of the HTTP API;
//! - [`archived`]: the `archived` answer for reads below a tenant's trim point.
//!
//! No I/O: no files, no sockets, no clock beyond what a caller passes in.

pub mod archived;
pub mod duration;
pub mod error;
pub mod model;
pub mod nodeconfig;
pub mod registry;
pub mod store;
pub mod tls;
pub mod wire;

pub use error::StoreError;
pub use store::{EventStore, EventSubscription, StoreResult, SubscriptionTarget};
