//! cartstream: real-time cart event ingestion with per-event acks.
//!
//! Hexagonal layout: [`domain`] holds the pure rules, [`ports`] the traits the rules need from
//! the world, [`adapters`] the inbound (HTTP, WebSocket) and outbound (stores) implementations,
//! and [`app`] the use cases, configuration and wiring.
//!
//! Features: `mocks` exports a mockall fake of every port (`ports::MockEventStore` and the
//! others), for unit tests of code built on this crate; see [`ports`] for an example.

pub mod adapters;
pub mod app;
pub mod domain;
pub mod ports;
