//! Inbound adapters: HTTP (OpenAPI) and WebSocket.

pub mod http;
pub mod wire;
pub mod ws;
