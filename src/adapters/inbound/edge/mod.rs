//! What the inbound adapters share, so none of them imports another: the client's address
//! behind trusted proxies (the listener caps connections by it, the HTTP guard rate-limits
//! by it), the authenticated [`Caller`] the HTTP guard hands to the handlers and to the
//! WebSocket upgrade, and the one JSON error response.

pub mod client;

use crate::adapters::inbound::wire::ErrorBody;
use crate::app::access::KeyId;
use crate::app::metrics::{Channel, Metrics};
use crate::app::rate_limit::Client;
use poem::http::StatusCode;
use poem::Response;

/// The authenticated sender of a request, put in its extensions by the HTTP guard.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Client);

impl Caller {
    pub fn key(&self) -> Option<KeyId> {
        self.0.key
    }
}

/// An HTTP answer with the contract's error body, counted as an HTTP error reply.
pub fn json_error(metrics: &Metrics, status: StatusCode, body: ErrorBody) -> Response {
    metrics.error(Channel::Http, body.code.as_str());
    let text = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
    Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(text)
}
