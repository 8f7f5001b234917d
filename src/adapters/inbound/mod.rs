//! Inbound adapters: HTTP and WebSocket.
