//! Outbound adapters: implementations of the ports.

pub mod clickhouse;
pub mod disk_space;
pub mod embedded;
pub mod integrity;
pub mod journal;
mod listing_sql;
pub mod outbox;
pub mod quarantine;
mod redact;
pub mod redis;
pub(crate) mod sqlite;
pub mod targets;
