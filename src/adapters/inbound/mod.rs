//! Inbound adapters: HTTP (OpenAPI) and WebSocket, over a guarded listener.

pub mod edge;
pub mod http;
pub mod listener;
pub mod wire;
pub mod ws;

#[cfg(test)]
pub(crate) mod testing;
