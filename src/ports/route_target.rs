use crate::domain::StoredEvent;

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// `false` when the target refused the delivery for good (e.g. an HTTP 400): retrying the
    /// same events cannot succeed, so they go straight to the dead-letter store.
    pub retryable: bool,
    /// For operators (`GET /routes`, dead letters); never contains a secret.
    pub message: String,
}

impl DeliveryError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

/// A downstream service that accepted events are routed to. Targets see each event with the
/// same fields `GET /events` returns (see `adapters::event_json`).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait RouteTarget: Send + Sync {
    /// Delivers `events` (one or more, in order). `Ok` only once the target has confirmed all
    /// of them; on `Err` the caller retries the whole batch later, so a target may see events
    /// again (delivery is at least once).
    async fn deliver(&self, events: &[StoredEvent]) -> Result<(), DeliveryError>;

    /// A short description for operators, e.g. `webhook http://host/path`, secrets removed.
    fn describe(&self) -> String;
}
