use super::PortError;
use crate::domain::{DedupKey, StoredEvent};
use std::collections::BTreeMap;

// The listing itself (which events a query selects, in which order) is the domain's.
pub use crate::domain::listing::{newest_first, EventQuery, PageKey};

/// What `GET /events` writes for the event apart from JSON escapes: the page budget's
/// measure, so a store can stop reading rows at the budget without serializing them (a test
/// of `inbound::http::listing` keeps the two equal).
pub fn listed_bytes(s: &StoredEvent) -> usize {
    // `{"eventId":"","userId":"","eventType":"","timestamp":"<24>","metadata":,"receivedAt":"<24>"}`
    const FIXED: usize = 132;
    // `,"sessionId":""`
    const SESSION: usize = 15;
    let e = &s.event;
    FIXED
        + e.event_id().as_str().len()
        + e.user_id().len()
        + e.session_id().map_or(0, |id| SESSION + id.len())
        + e.event_type().as_str().len()
        + e.metadata().as_json().len()
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventPage {
    /// In listing order.
    pub events: Vec<StoredEvent>,
    /// Whether events matching the query come after the last one: the page stopped at its
    /// `limit` or its byte budget, not at the end of the listing.
    pub more: bool,
}

/// Builds a page from events offered in any order, holding no more than the page and one
/// event past it: a store that must scan more than it returns stays bounded in memory.
pub struct PageBuilder {
    limit: usize,
    max_bytes: usize,
    /// A prefix (in listing order) of the events offered so far, each with its size.
    kept: BTreeMap<PageKey, (StoredEvent, usize)>,
    bytes: usize,
}

impl PageBuilder {
    pub fn new(query: &EventQuery) -> Self {
        Self {
            limit: query.limit.max(1),
            max_bytes: query.max_bytes,
            kept: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Takes `e` if it may belong to the page. The caller filters; the same event offered
    /// twice is kept once.
    pub fn offer(&mut self, e: StoredEvent) {
        let size = listed_bytes(&e);
        if let Some((_, old)) = self.kept.insert(PageKey::of(&e), (e, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
        // Drop the last event while the one before it is already past the page: neither can
        // ever be on it (events offered later only push them further back).
        while self.kept.len() >= 2 && self.second_last_is_past_page() {
            if let Some((_, (_, size))) = self.kept.pop_last() {
                self.bytes -= size;
            }
        }
    }

    fn second_last_is_past_page(&self) -> bool {
        let last = self.kept.last_key_value().map_or(0, |(_, (_, size))| *size);
        self.is_past_page(self.kept.len() - 2, self.bytes - last)
    }

    /// Whether the event at `index` of the kept prefix, which ends `bytes` into it, is past
    /// the page. The first event always fits.
    fn is_past_page(&self, index: usize, bytes: usize) -> bool {
        index >= self.limit || (index >= 1 && bytes > self.max_bytes)
    }

    /// Whether an event past the page has been seen: a store reading rows in listing order
    /// can stop reading. Only the last kept event can be past the page (`offer` drops the
    /// others).
    pub fn is_full(&self) -> bool {
        !self.kept.is_empty() && self.is_past_page(self.kept.len() - 1, self.bytes)
    }

    pub fn finish(self) -> EventPage {
        let more = self.is_full();
        let mut events: Vec<StoredEvent> = self.kept.into_values().map(|(e, _)| e).collect();
        if more {
            events.pop();
        }
        EventPage { events, more }
    }
}

/// Where accepted events are kept and read back.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait EventStore: Send + Sync {
    /// Records a batch durably: when this returns `Ok`, every event survives a crash.
    /// Idempotent per event id: inserting an event already stored keeps one copy.
    ///
    /// # Errors
    /// When the batch could not be recorded; then the caller must treat none of it as recorded.
    async fn insert(&self, events: &[StoredEvent]) -> Result<(), PortError>;

    /// Records a batch as [`insert`](Self::insert) does, taking the events: a store that keeps
    /// what it recorded in memory for a while (the journal hands each group to its forwarder)
    /// keeps them without a copy. What the ingest use case calls.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    async fn insert_owned(&self, events: Vec<StoredEvent>) -> Result<(), PortError> {
        self.insert(&events).await
    }

    /// Which of `keys` belong to events already stored: a dedup-safe read, used as the dedup
    /// fallback while the dedup store is down. `Ok(v)[i]` answers for `keys[i]`.
    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError>;

    /// The page of stored events matching `query` that starts after `query.after`, in
    /// listing order ([`PageKey`]), each event once, stopping at `query.limit` events or
    /// `query.max_bytes` (see [`PageBuilder`], which every store uses to decide). A store
    /// holds no more than the page in memory while reading it.
    async fn query(&self, query: &EventQuery) -> Result<EventPage, PortError>;

    /// Whether the store answers, for readiness.
    async fn check(&self) -> Result<(), PortError>;
}

#[cfg(test)]
mod tests;
