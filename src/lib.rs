//! cartstream: real-time cart event ingestion with per-event acks.
//!
//! Hexagonal layout: [`domain`] holds the pure rules, [`ports`] the traits the rules need from
//! the world, [`adapters`] the inbound (HTTP, WebSocket) and outbound (stores) implementations,
//! and [`app`] the use cases, configuration and wiring.

pub mod adapters;
pub mod app;
pub mod domain;
pub mod ports;
