//! The AllSource store node library: event model, engine and backends.
