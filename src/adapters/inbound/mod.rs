//! Inbound adapters: HTTP (OpenAPI) and WebSocket, over a guarded listener. Each drives the
//! ingest use case through [`crate::ports::IngestUseCase`] with settings of its own, built in
//! [`crate::app::startup`]; none imports another, and what they share is in [`edge`] and
//! [`wire`].

pub mod edge;
pub mod http;
pub mod listener;
pub mod live;
pub mod tap;
pub mod wire;
pub mod ws;

#[cfg(test)]
pub(crate) mod testing;
