use super::{EventPage, EventQuery, PortError};
use crate::domain::{DedupKey, StoredEvent};
use chrono::{DateTime, Utc};

/// One journal entry: an accepted event not yet confirmed by the event store.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    /// Increasing with append order; entries are read oldest first.
    pub seq: i64,
    pub event: StoredEvent,
    /// What the entry counts for against the journal's size limit.
    pub bytes: usize,
}

/// What the journal holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub entries: u64,
    pub bytes: u64,
    /// `receivedAt` of the oldest entry.
    pub oldest: Option<DateTime<Utc>>,
}

/// The durable local buffer in front of a remote event store: an `accepted` ack waits only for
/// [`append`](Journal::append); a forwarder moves entries on and removes them once stored.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait Journal: Send + Sync {
    /// Appends a batch durably (it survives a crash once this returns `Ok`): the seq its first
    /// event got, the others following it in order (for an empty batch, the seq the next event
    /// will get).
    ///
    /// # Errors
    /// [`PortError::Full`] when the batch would pass the size limit (nothing is appended);
    /// other errors when nothing could be written.
    async fn append(&self, events: &[StoredEvent]) -> Result<i64, PortError>;

    /// The oldest entries with `seq > after`, at most `max_entries` of them and about
    /// `max_bytes` (always at least one entry when any exists).
    async fn oldest_after(
        &self,
        after: i64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<JournalEntry>, PortError>;

    /// Removes every entry with `seq <= upto`.
    async fn remove_through(&self, upto: i64) -> Result<(), PortError>;

    /// Which of `keys` have an entry not yet forwarded.
    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError>;

    /// The page of entries not yet forwarded that `query` asks for, as
    /// [`EventStore::query`](super::EventStore::query) pages.
    async fn query(&self, query: &EventQuery) -> Result<EventPage, PortError>;

    /// Counts, kept in memory: cheap enough to call on every loop.
    fn stats(&self) -> JournalStats;
}
