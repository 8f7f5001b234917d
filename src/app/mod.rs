//! Use cases, configuration, wiring, startup and shutdown.

pub mod config;
pub mod ingest;
pub mod metrics;
