//! Recording through the local journal: [`JournaledStore`] is the event store the ingest use
//! case sees when a remote store (ClickHouse) is configured. `insert` appends to the journal
//! (so an ack waits for one local fsync, never for the remote store), and the [`Forwarder`]
//! moves journal entries to the remote store in large batches, removing them only once the
//! remote insert succeeded. A crash loses nothing: the journal is replayed on the next start,
//! and the remote store's dedup-safe reads absorb a batch inserted twice.

use crate::app::metrics::Metrics;
use crate::domain::{DedupKey, StoredEvent};
use crate::ports::{
    Clock, EventPage, EventQuery, EventStore, Journal, PageBuilder, PageKey, PortError,
};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// When the forwarder flushes: whichever of rows, bytes or age is reached first.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    /// How long the oldest entry may wait for more to batch with.
    pub interval: Duration,
    /// Retry delays after a failed insert: from `backoff_min`, doubling, capped, with jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// The event store of the ingest use case when a remote store is configured.
pub struct JournaledStore {
    journal: Arc<dyn Journal>,
    remote: Arc<dyn EventStore>,
    wake: Arc<Notify>,
}

impl JournaledStore {
    pub fn new(journal: Arc<dyn Journal>, remote: Arc<dyn EventStore>, wake: Arc<Notify>) -> Self {
        Self {
            journal,
            remote,
            wake,
        }
    }
}

#[async_trait::async_trait]
impl EventStore for JournaledStore {
    async fn insert(&self, events: &[StoredEvent]) -> Result<(), PortError> {
        self.journal.append(events).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Known when in the journal or in the remote store. The journal is asked first: when it
    /// knows every key, the remote store (perhaps down) is not asked at all.
    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        let mut known = self.journal.known(keys).await?;
        let rest: Vec<DedupKey> = keys
            .iter()
            .zip(&known)
            .filter(|(_, k)| !**k)
            .map(|(key, _)| key.clone())
            .collect();
        if rest.is_empty() {
            return Ok(known);
        }
        let mut remote = self.remote.known(&rest).await?.into_iter();
        for k in known.iter_mut().filter(|k| !**k) {
            *k = remote.next().unwrap_or(false);
        }
        Ok(known)
    }

    /// The remote store's page merged with the journal's, so a reader sees every accepted
    /// event at once, not only after the next flush.
    async fn query(&self, query: &EventQuery) -> Result<EventPage, PortError> {
        let (remote, pending) = tokio::join!(self.remote.query(query), self.journal.query(query));
        Ok(merge_pages(query, [remote?, pending?]))
    }

    async fn check(&self) -> Result<(), PortError> {
        self.remote.check().await
    }
}

/// One page from pages of the same query over different sources. A source that stopped
/// early (its `more`) may hold events right after its last one, so nothing listed after that
/// last event may go on the page: the next page starts there and picks them up.
fn merge_pages<const N: usize>(query: &EventQuery, pages: [EventPage; N]) -> EventPage {
    let end = pages
        .iter()
        .filter(|p| p.more)
        .filter_map(|p| p.events.last().map(PageKey::of))
        .min();
    let mut page = PageBuilder::new(query);
    for e in pages.into_iter().flat_map(|p| p.events) {
        if end.as_ref().is_none_or(|end| PageKey::of(&e) <= *end) {
            page.offer(e);
        }
    }
    let mut merged = page.finish();
    merged.more |= end.is_some();
    merged
}

/// Drains the journal into the remote store.
pub struct Forwarder {
    pub journal: Arc<dyn Journal>,
    pub remote: Arc<dyn EventStore>,
    pub policy: FlushPolicy,
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// How old the oldest entry is (journal entries are dated by their `receivedAt`).
    pub clock: Arc<dyn Clock>,
    /// How far routing has read the journal, when routes are configured: entries past it are
    /// kept (though forwarded) until routing has taken them into the outbox.
    pub routed_through: Option<Arc<AtomicI64>>,
}

impl Forwarder {
    /// Runs until `stop` is cancelled and the journal is empty. After `stop`, it flushes
    /// without waiting for batches to fill; the caller bounds how long it may keep trying.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = self.policy.backoff_min;
        // Entries up to here are in the remote store; up to `removed`, gone from the journal.
        let mut forwarded = 0i64;
        let mut removed = 0i64;
        loop {
            let removable = self.removable(forwarded);
            if removable > removed {
                match self.journal.remove_through(removable).await {
                    Ok(()) => removed = removable,
                    Err(e) => {
                        tracing::warn!(cause = %e, "removing forwarded journal entries failed")
                    }
                }
            }
            let stats = self.journal.stats();
            let now = self.clock.now();
            self.metrics.set_journal(&stats, now);
            let stopping = stop.is_cancelled();
            if stats.entries == 0 {
                if stopping {
                    return;
                }
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(self.policy.interval) => {}
                }
                continue;
            }
            let age = stats
                .oldest
                .and_then(|t| (now - t).to_std().ok())
                .unwrap_or_default();
            let due = stopping
                || stats.entries >= self.policy.max_rows as u64
                || stats.bytes >= self.policy.max_bytes as u64
                || age >= self.policy.interval;
            if !due {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(self.policy.interval - age) => {}
                }
                continue;
            }
            match self.flush_once(forwarded).await {
                Ok(Some(last)) => {
                    forwarded = last;
                    backoff = self.policy.backoff_min;
                }
                Ok(None) => {
                    // Everything is forwarded; what is left waits for routing to read it.
                    if stopping && self.removable(forwarded) <= removed {
                        return;
                    }
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = stop.cancelled(), if !stopping => {}
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                Err(e) => {
                    self.metrics.flush_errors.inc();
                    tracing::warn!(cause = %e, retry_in = ?backoff, "forwarding to the event store failed");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(self.policy.backoff_max);
                }
            }
        }
    }

    fn removable(&self, forwarded: i64) -> i64 {
        match &self.routed_through {
            Some(routed) => forwarded.min(routed.load(Ordering::Acquire)),
            None => forwarded,
        }
    }

    /// Forwards the next batch after `forwarded`; the last seq it forwarded, if any.
    async fn flush_once(&self, forwarded: i64) -> Result<Option<i64>, PortError> {
        let entries = self
            .journal
            .oldest_after(forwarded, self.policy.max_rows, self.policy.max_bytes)
            .await?;
        let Some(last) = entries.last().map(|e| e.seq) else {
            return Ok(None);
        };
        let events: Vec<StoredEvent> = entries.into_iter().map(|e| e.event).collect();
        self.remote.insert(&events).await?;
        self.metrics.forwarded_inserts.inc();
        self.metrics.forwarded_events.inc_by(events.len() as u64);
        let now = self.clock.now();
        for e in &events {
            let lag = (now - e.received_at).to_std().unwrap_or_default();
            self.metrics.store_lag_seconds.observe(lag.as_secs_f64());
        }
        tracing::debug!(
            events = events.len(),
            through = last,
            "forwarded a batch to the event store"
        );
        Ok(Some(last))
    }
}

/// Up to 50% less, so many instances recovering together do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 - rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod failure_tests;
