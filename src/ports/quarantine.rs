use super::{EventPage, EventQuery, PortError};
use crate::domain::{DedupKey, StoredEvent};
use chrono::{DateTime, Utc};

/// An accepted event the event store refused on its own (the rest of its batch was stored):
/// kept aside, still recorded, until an operator replays or deletes it.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantinedEvent {
    pub event: StoredEvent,
    /// What the event store answered for this event alone.
    pub reason: String,
    /// The event store's error code, when it gave one.
    pub code: Option<u32>,
    pub quarantined_at: DateTime<Utc>,
}

/// A quarantined event with its place in the list.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineEntry {
    /// Increasing with the time it was set aside; the listing's cursor.
    pub id: i64,
    pub item: QuarantinedEvent,
}

/// Where the forwarder sets aside the events the event store refuses one by one. Each event
/// is there at most once (by `eventId`). An event in it counts as recorded: the dedup fallback
/// and `GET /events` see it.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait Quarantine: Send + Sync {
    /// Keeps `events` durably (it survives a crash once this returns `Ok`); an event already
    /// there keeps its entry.
    async fn put(&self, events: &[QuarantinedEvent]) -> Result<(), PortError>;

    /// Entries with `id > after`, oldest first, at most `limit`.
    async fn list(&self, after: i64, limit: usize) -> Result<Vec<QuarantineEntry>, PortError>;

    /// The entries of these event ids (those that are there), oldest first.
    async fn get(&self, event_ids: &[String]) -> Result<Vec<QuarantineEntry>, PortError>;

    /// Deletes the entries of these event ids; how many there were.
    async fn remove(&self, event_ids: &[String]) -> Result<u64, PortError>;

    /// Which of `keys` are quarantined.
    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError>;

    /// The page of quarantined events that `query` asks for, as
    /// [`EventStore::query`](super::EventStore::query) pages.
    async fn query(&self, query: &EventQuery) -> Result<EventPage, PortError>;

    /// How many events are quarantined, kept in memory.
    fn count(&self) -> u64;
}
