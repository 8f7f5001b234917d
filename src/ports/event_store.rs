use super::PortError;
use crate::domain::{DedupKey, EventType, StoredEvent};
use chrono::{DateTime, Utc};

/// Filters of `GET /events`. All bounds are inclusive, on the event's `timestamp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    pub user_id: Option<String>,
    pub event_type: Option<EventType>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// 1..=1000.
    pub limit: usize,
}

/// The order [`EventStore::query`] answers in: newest `timestamp` first, then the latest
/// received, then by id.
pub fn newest_first(a: &StoredEvent, b: &StoredEvent) -> std::cmp::Ordering {
    (b.event.occurred_at(), b.received_at, b.event.event_id()).cmp(&(
        a.event.occurred_at(),
        a.received_at,
        a.event.event_id(),
    ))
}

/// Where accepted events are kept and read back.
#[cfg_attr(test, mockall::automock)]
#[async_trait::async_trait]
pub trait EventStore: Send + Sync {
    /// Records a batch durably: when this returns `Ok`, every event survives a crash.
    /// Idempotent per event id: inserting an event already stored keeps one copy.
    ///
    /// # Errors
    /// When the batch could not be recorded; then the caller must treat none of it as recorded.
    async fn insert(&self, events: &[StoredEvent]) -> Result<(), PortError>;

    /// Which of `keys` belong to events already stored: a dedup-safe read, used as the dedup
    /// fallback while the dedup store is down. `Ok(v)[i]` answers for `keys[i]`.
    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError>;

    /// Stored events matching `query`, newest `timestamp` first, each event once.
    async fn query(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, PortError>;

    /// Whether the store answers, for readiness.
    async fn check(&self) -> Result<(), PortError>;
}
