//! The forwarder's, routing's and retention's local writes reporting to [`DiskState`], as
//! ingest's do: each port is wrapped, so a full disk found while removing forwarded journal
//! entries, storing a forwarded batch in the embedded store, setting events aside in the
//! quarantine, writing the outbox or deleting old events makes the server not ready too.
//!
//! A write that adds data (the outbox's enqueue, the quarantine's put) succeeding clears the
//! state, as an accepted
//! event's append does; a delete or update succeeding does not (SQLite can delete into pages
//! it already has while inserts still fail), nor does an insert into the remote store, which
//! may be ClickHouse, not this disk. Freed space clears it as always.

use super::DiskState;
use crate::domain::{DedupKey, StoredEvent};
use crate::ports::{
    DeadLetter, Delivery, EventPage, EventQuery, EventStore, ExpireStep, Expiry, Journal,
    JournalEntry, JournalStats, Outbox, OutboxItem, PortError, Quarantine, QuarantineEntry,
    QuarantinedEvent, Retention, RouteBacklog,
};
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// A port whose writes report a full disk to `disk`.
pub struct DiskWatched<T: ?Sized> {
    inner: Arc<T>,
    disk: Arc<DiskState>,
}

impl<T: ?Sized> DiskWatched<T> {
    pub fn new(inner: Arc<T>, disk: Arc<DiskState>) -> Self {
        Self { inner, disk }
    }

    /// A write that only reports failures.
    fn failed<R>(&self, r: Result<R, PortError>) -> Result<R, PortError> {
        if let Err(PortError::NoSpace(cause)) = &r {
            self.disk.write_failed(cause);
        }
        r
    }

    /// A write that adds data: its success shows the disk takes writes again.
    fn added<R>(&self, r: Result<R, PortError>) -> Result<R, PortError> {
        if r.is_ok() {
            self.disk.write_succeeded();
        }
        self.failed(r)
    }
}

#[async_trait::async_trait]
impl Outbox for DiskWatched<dyn Outbox> {
    async fn cursor(&self, feed: &str) -> Result<Option<i64>, PortError> {
        self.inner.cursor(feed).await
    }

    async fn enqueue(
        &self,
        feed: &str,
        deliveries: &[Delivery],
        cursor: i64,
    ) -> Result<(), PortError> {
        self.added(self.inner.enqueue(feed, deliveries, cursor).await)
    }

    async fn head(&self, route: &str, lane: u32, max: usize) -> Result<Vec<OutboxItem>, PortError> {
        self.inner.head(route, lane, max).await
    }

    async fn delivered(&self, ids: &[i64]) -> Result<(), PortError> {
        self.failed(self.inner.delivered(ids).await)
    }

    async fn retry_later(
        &self,
        ids: &[i64],
        next_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), PortError> {
        self.failed(self.inner.retry_later(ids, next_at, error).await)
    }

    async fn dead_letter(&self, ids: &[i64], error: &str) -> Result<(), PortError> {
        self.failed(self.inner.dead_letter(ids, error).await)
    }

    async fn dead_letters(
        &self,
        route: Option<String>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, PortError> {
        self.inner.dead_letters(route, after, limit).await
    }

    async fn replay(&self, route: Option<String>, ids: Option<Vec<i64>>) -> Result<u64, PortError> {
        self.failed(self.inner.replay(route, ids).await)
    }

    async fn delete_dead_letter(&self, id: i64) -> Result<bool, PortError> {
        self.failed(self.inner.delete_dead_letter(id).await)
    }

    async fn backlog(&self, route: &str) -> Result<RouteBacklog, PortError> {
        self.inner.backlog(route).await
    }
}

/// The forwarder's journal: removing forwarded entries reports a full disk.
#[async_trait::async_trait]
impl Journal for DiskWatched<dyn Journal> {
    async fn append(&self, events: &[StoredEvent]) -> Result<i64, PortError> {
        self.added(self.inner.append(events).await)
    }

    async fn oldest_after(
        &self,
        after: i64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<JournalEntry>, PortError> {
        self.inner.oldest_after(after, max_entries, max_bytes).await
    }

    async fn remove_through(&self, upto: i64) -> Result<(), PortError> {
        self.failed(self.inner.remove_through(upto).await)
    }

    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        self.inner.known(keys).await
    }

    async fn query(&self, query: &EventQuery) -> Result<EventPage, PortError> {
        self.inner.query(query).await
    }

    fn stats(&self) -> JournalStats {
        self.inner.stats()
    }
}

/// The forwarder's event store: a forwarded batch the embedded store cannot take for lack of
/// space reports it (ClickHouse never answers `NoSpace`: its disk is not this one).
#[async_trait::async_trait]
impl EventStore for DiskWatched<dyn EventStore> {
    async fn insert(&self, events: &[StoredEvent]) -> Result<(), PortError> {
        self.failed(self.inner.insert(events).await)
    }

    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        self.inner.known(keys).await
    }

    async fn query(&self, query: &EventQuery) -> Result<EventPage, PortError> {
        self.inner.query(query).await
    }

    async fn check(&self) -> Result<(), PortError> {
        self.inner.check().await
    }
}

/// The forwarder's quarantine: setting refused events aside reports a full disk.
#[async_trait::async_trait]
impl Quarantine for DiskWatched<dyn Quarantine> {
    async fn put(&self, events: &[QuarantinedEvent]) -> Result<(), PortError> {
        self.added(self.inner.put(events).await)
    }

    async fn list(&self, after: i64, limit: usize) -> Result<Vec<QuarantineEntry>, PortError> {
        self.inner.list(after, limit).await
    }

    async fn get(&self, event_ids: &[String]) -> Result<Vec<QuarantineEntry>, PortError> {
        self.inner.get(event_ids).await
    }

    async fn remove(&self, event_ids: &[String]) -> Result<u64, PortError> {
        self.failed(self.inner.remove(event_ids).await)
    }

    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        self.inner.known(keys).await
    }

    async fn query(&self, query: &EventQuery) -> Result<EventPage, PortError> {
        self.inner.query(query).await
    }

    fn count(&self) -> u64 {
        self.inner.count()
    }
}

/// Retention's deleting of old events: a step that fails for lack of space (the delete's WAL
/// write, the incremental vacuum) reports it. A step that succeeds does not clear the state:
/// it deletes, which SQLite can do inside pages it has while every insert fails, so clearing
/// on it would make `/ready` flap once a round. Space it gives back clears the state through
/// the free-space samples, as any freed space does.
#[async_trait::async_trait]
impl Retention for DiskWatched<dyn Retention> {
    async fn expire_step(&self, expiry: Expiry) -> Result<ExpireStep, PortError> {
        self.failed(self.inner.expire_step(expiry).await)
    }
}

#[cfg(test)]
mod tests;
