//! The operator side of routing: what the operator API asks of it. A driving port like
//! [`super::IngestUseCase`], but behind `Arc<dyn>`: it is called once per operator request,
//! never per event.

use super::{DeadLetter, PortError};
use chrono::{DateTime, Utc};

/// One configured route as an operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteReport {
    pub name: String,
    /// The event types it takes, as configured.
    pub event_types: Vec<String>,
    /// Where it delivers, without secrets.
    pub target: String,
    /// The latest attempt failed and deliveries are waiting for a retry.
    pub retrying: bool,
    /// Deliveries waiting.
    pub backlog: u64,
    /// Deliveries that failed for good.
    pub dead_letters: u64,
    /// Counts since the server started.
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
    /// The latest failure and when it happened.
    pub last_error: Option<(String, DateTime<Utc>)>,
    pub last_delivered_at: Option<DateTime<Utc>>,
}

/// Route administration. # Errors: only when the outbox cannot be read or written.
#[async_trait::async_trait]
pub trait RouteAdmin: Send + Sync {
    /// Every configured route, in configuration order.
    async fn routes(&self) -> Result<Vec<RouteReport>, PortError>;

    /// Dead letters, oldest first, optionally of one route, with `id > after`.
    async fn dead_letters(
        &self,
        route: Option<String>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, PortError>;

    /// Moves dead letters back to be delivered again (those of `route`, or with `ids`) and
    /// wakes the routes. Returns how many.
    async fn replay(&self, route: Option<String>, ids: Option<Vec<i64>>) -> Result<u64, PortError>;

    /// Deletes one dead letter; `false` when there was none with that id.
    async fn delete_dead_letter(&self, id: i64) -> Result<bool, PortError>;
}
