//! The AllSource store node library: event model, the event-store trait, the embedded engine
//! and the backends.

pub mod backend;
pub mod error;
pub mod metrics;
pub mod model;
pub mod server;
pub mod tenant;

pub use backend::{EventStore, EventSubscription, StoreResult, SubscriptionTarget};
pub use error::StoreError;
pub use model::*;
