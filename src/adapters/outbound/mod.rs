//! Outbound adapters: implementations of the ports.

pub mod embedded;
