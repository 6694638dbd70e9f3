//! The ArchivePolicy controller. This slice holds the pure builders (see [`build`]): the
//! `batch/v1` CronJob that runs `store-node archive` on the policy's schedule and the one-off Job
//! of the `allsource.io/run-now` annotation. The reconcile loop (fetch, validate, apply, status from
//! Jobs, bucket lifecycle through `store_node::archive::lifecycle`) is not wired yet. This module
//! must never talk to object storage from the operator process except for lifecycle rules.

pub mod build;
