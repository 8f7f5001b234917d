//! Inbound (HTTP, WebSocket) and outbound (stores) adapters.

pub mod inbound;
pub mod outbound;
