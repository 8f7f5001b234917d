//! Outbound adapters: implementations of the ports.

pub mod embedded;
pub mod journal;
pub(crate) mod sqlite;
