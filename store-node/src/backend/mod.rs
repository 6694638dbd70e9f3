//! The event-store API as store-node serves it: the contract (`EventStore` and its types, from
//! `allsource-core`), the cloud backends (from `allsource-backends`, behind cargo features), the
//! in-memory store and the router that sends each tenant to its store.

#[cfg(any(feature = "postgres", feature = "dynamodb", feature = "firestore"))]
pub use allsource_backends::cloud;
#[cfg(feature = "dynamodb")]
pub use allsource_backends::dynamodb;
#[cfg(feature = "firestore")]
pub use allsource_backends::firestore;
#[cfg(feature = "postgres")]
pub use allsource_backends::postgres;
pub use allsource_core::archived;
pub use allsource_core::store::*;

pub mod memory;
pub mod routing;
