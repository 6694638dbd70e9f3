//! The three AllSource custom resource kinds (group `allsource.io`, version `v1alpha1`) and the
//! vocabulary they share. Types and schema only: no behaviour, no API calls.

pub mod archivepolicy;
pub mod common;
pub mod eventstore;
pub mod tenant;

pub use archivepolicy::{ArchivePolicy, ArchivePolicySpec, ArchivePolicyStatus};
pub use common::*;
pub use eventstore::{EventStore, EventStoreSpec, EventStoreStatus};
pub use tenant::{Tenant, TenantSpec, TenantStatus};
