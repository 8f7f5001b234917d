//! Outbound adapters: implementations of the ports.

pub mod clickhouse;
pub mod embedded;
mod redact;
pub mod redis;
