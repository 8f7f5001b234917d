//! Use cases, configuration, wiring, startup and shutdown.

pub mod access;
pub mod allocator;
pub mod config;
pub mod disk;
pub mod drain;
pub mod forwarder;
pub mod ingest;
pub mod integrity;
pub mod metrics;
pub mod rate_limit;
pub mod retention;
pub mod routing;
pub mod startup;
pub mod tap;
pub mod telemetry;
#[cfg(test)]
mod test_wait;
