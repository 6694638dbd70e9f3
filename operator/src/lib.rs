//! AllSource operator: custom resource types (`api`), the CRD generator (`crdgen`), and the
//! controllers that reconcile EventStores, Tenants and ArchivePolicies.

pub mod api;
pub mod controllers;
pub mod crdgen;
pub mod http;
pub mod leader;
pub mod provision;
pub mod rbac;
pub mod resources;
pub mod telemetry;
