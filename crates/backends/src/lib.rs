//! The cloud backends of the AllSource event store. Each is an
//! [`EventStore`](allsource_core::EventStore) the gateway serves, and each module also holds the
//! layout the operator provisions (PostgreSQL DDL, DynamoDB table and IAM policy, Firestore
//! collections and indexes), so the two can never disagree. One cargo feature per backend.

#[cfg(any(feature = "postgres", feature = "dynamodb", feature = "firestore"))]
pub mod cloud;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(feature = "firestore")]
pub mod firestore;
#[cfg(feature = "postgres")]
pub mod postgres;
