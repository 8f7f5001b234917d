//! Black-box tests: the real server on a random port, driven over HTTP and WebSocket.
//! One binary (modules, not files) so it links once.

mod failing;
mod helpers;
mod http;
mod openapi;
mod ws;
