//! Inbound (HTTP, WebSocket) and outbound (stores, journal, route targets) adapters.

pub mod event_json;
pub mod inbound;
pub mod outbound;
pub(crate) mod thread_priority;
