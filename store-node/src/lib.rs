//! The AllSource store node library: event model, the event-store trait, the embedded engine
//! and the backends.

#[cfg(feature = "archive")]
pub mod archive;
pub mod backend;
pub use allsource_core::{error, model, nodeconfig};
pub mod engine;
pub mod fsio;
pub mod index;
pub mod metrics;
pub mod segment;
pub mod server;
pub mod tenant;
pub mod wal;

pub use backend::{EventStore, EventSubscription, StoreResult, SubscriptionTarget};
pub use engine::{Engine, EngineConfig};
pub use error::StoreError;
pub use model::*;
