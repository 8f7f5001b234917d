//! Recording through the local journal: [`JournaledStore`] is the event store the ingest use
//! case sees when a remote store (ClickHouse) is configured. `insert` appends to the journal
//! (so an ack waits for one local fsync, never for the remote store), and the [`Forwarder`]
//! moves journal entries to the remote store in large batches, removing them only once the
//! remote insert succeeded. A crash loses nothing: the journal is replayed on the next start,
//! and the remote store's dedup-safe reads absorb a batch inserted twice.

use crate::app::metrics::Metrics;
use crate::domain::{DedupKey, StoredEvent};
use crate::ports::{
    Clock, EventPage, EventQuery, EventStore, Journal, PageBuilder, PageKey, PortError, Quarantine,
    QuarantinedEvent, Refusal, RefusalCause,
};
use std::collections::VecDeque;
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
    /// Events the remote store refused alone: still recorded, so still known and listed.
    quarantine: Option<Arc<dyn Quarantine>>,
    /// Where recorded groups go to the forwarder in memory, when set.
    handoff: Option<Arc<Handoff>>,
}

impl JournaledStore {
    pub fn new(journal: Arc<dyn Journal>, remote: Arc<dyn EventStore>, wake: Arc<Notify>) -> Self {
        Self {
            journal,
            remote,
            wake,
            quarantine: None,
            handoff: None,
        }
    }

    /// Hands each group recorded through [`EventStore::insert_owned`] to the forwarder
    /// through `handoff`, with its seqs in the journal.
    #[must_use]
    pub fn with_handoff(mut self, handoff: Arc<Handoff>) -> Self {
        self.handoff = Some(handoff);
        self
    }

    /// Also answers for the events set aside in `quarantine`.
    #[must_use]
    pub fn with_quarantine(mut self, quarantine: Arc<dyn Quarantine>) -> Self {
        self.quarantine = Some(quarantine);
        self
    }
}

#[async_trait::async_trait]
impl EventStore for JournaledStore {
    async fn insert(&self, events: &[StoredEvent]) -> Result<(), PortError> {
        self.journal.append(events).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Appends as [`insert`](Self::insert), then hands the group over with the seq its first
    /// event got: only once it is durable, so the forwarder never sends what the journal
    /// lacks.
    async fn insert_owned(&self, events: Vec<StoredEvent>) -> Result<(), PortError> {
        let first_seq = self.journal.append(&events).await?;
        if let Some(handoff) = &self.handoff {
            handoff.put(first_seq, events);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Known when in the journal or in the remote store. The journal is asked first: when it
    /// knows every key, the remote store (perhaps down) is not asked at all.
    /// Known when in the journal, in the quarantine or in the remote store, asked in that
    /// order, each only for the keys the ones before did not know.
    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        let mut known = self.journal.known(keys).await?;
        if let Some(q) = &self.quarantine {
            let rest = unknown(keys, &known);
            if !rest.is_empty() && q.count() > 0 {
                fill(&mut known, q.known(&rest).await?);
            }
        }
        let rest = unknown(keys, &known);
        if !rest.is_empty() {
            fill(&mut known, self.remote.known(&rest).await?);
        }
        Ok(known)
    }

    /// The remote store's page merged with the journal's (and the quarantine's), so a reader
    /// sees every accepted event at once, not only after the next flush.
    async fn query(&self, query: &EventQuery) -> Result<EventPage, PortError> {
        let quarantined = async {
            match &self.quarantine {
                Some(q) => q.query(query).await,
                None => Ok(PageBuilder::new(query).finish()),
            }
        };
        let (remote, pending, quarantined) = tokio::join!(
            self.remote.query(query),
            self.journal.query(query),
            quarantined
        );
        Ok(merge_pages(query, [remote?, pending?, quarantined?]))
    }

    async fn check(&self) -> Result<(), PortError> {
        self.remote.check().await
    }
}

/// The keys `known` does not know yet.
fn unknown(keys: &[DedupKey], known: &[bool]) -> Vec<DedupKey> {
    keys.iter()
        .zip(known)
        .filter(|(_, k)| !**k)
        .map(|(key, _)| key.clone())
        .collect()
}

/// Fills in the answers for the keys `known` did not know, in order.
fn fill(known: &mut [bool], answers: Vec<bool>) {
    let mut answers = answers.into_iter();
    for k in known.iter_mut().filter(|k| !**k) {
        *k = answers.next().unwrap_or(false);
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
    /// Where events the remote store refuses alone are set aside (`None`: never split; a
    /// refused batch is held and retried like any failure).
    pub quarantine: Option<Arc<dyn Quarantine>>,
    /// The current failure, for `GET /ready` and the logs.
    pub health: Arc<health::ForwardingHealth>,
    /// Groups the ingest use case recorded, in memory: forwarded from here while they follow
    /// on from what was forwarded, so the journal is read back only when they do not (`None`:
    /// always read back).
    pub handoff: Option<Arc<Handoff>>,
}

/// What the operator endpoints see of forwarding: its health, and the quarantine with the
/// store to replay it into.
#[derive(Clone)]
pub struct ForwardingView {
    pub health: Arc<health::ForwardingHealth>,
    pub quarantine: Arc<dyn Quarantine>,
    pub remote: Arc<dyn EventStore>,
}

/// How many parts of a refused batch are tried, with none stored, before concluding that the
/// store refuses every row: three halvings (2 + 4 + 8 parts).
const BLIND_PARTS: usize = 14;

impl Forwarder {
    /// Runs until `stop` is cancelled and the journal is empty. After `stop`, it flushes
    /// without waiting for batches to fill; the caller bounds how long it may keep trying.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = self.policy.backoff_min;
        if let Some(q) = &self.quarantine {
            self.metrics.quarantine_size.set(q.count() as i64);
        }
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
                    self.health.succeeded(self.clock.now());
                    self.metrics.forwarding_failing.set(0);
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
                    self.health.failed(&e, self.clock.now(), &stats);
                    self.metrics.forwarding_failing.set(1);
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

    /// The entries after `forwarded`, at most a batch of them, and the seq of the last: handed
    /// over in memory when they are there, read from the journal otherwise.
    async fn next_batch(
        &self,
        forwarded: i64,
    ) -> Result<Option<(Vec<StoredEvent>, i64)>, PortError> {
        let (max_rows, max_bytes) = (self.policy.max_rows, self.policy.max_bytes);
        if let Some(taken) = self
            .handoff
            .as_ref()
            .and_then(|h| h.take(forwarded, max_rows, max_bytes))
        {
            return Ok(Some(taken));
        }
        let entries = self
            .journal
            .oldest_after(forwarded, max_rows, max_bytes)
            .await?;
        let Some(last) = entries.last().map(|e| e.seq) else {
            return Ok(None);
        };
        Ok(Some((entries.into_iter().map(|e| e.event).collect(), last)))
    }

    /// Forwards the next batch after `forwarded`; the last seq it forwarded, if any.
    async fn flush_once(&self, forwarded: i64) -> Result<Option<i64>, PortError> {
        let Some((events, last)) = self.next_batch(forwarded).await? else {
            return Ok(None);
        };
        let quarantined = match self.remote.insert(&events).await {
            Ok(()) => {
                self.metrics.forwarded_inserts.inc();
                Vec::new()
            }
            Err(PortError::Refused(r)) if r.cause == RefusalCause::Data => match &self.quarantine {
                Some(q) => self.split(&events, r, q.as_ref()).await?,
                None => return Err(PortError::Refused(r)),
            },
            Err(e) => return Err(e),
        };
        self.metrics
            .forwarded_events
            .inc_by((events.len() - quarantined.len()) as u64);
        let now = self.clock.now();
        for e in events
            .iter()
            .filter(|e| !quarantined.iter().any(|q| q == e.columns().event_id))
        {
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

impl Forwarder {
    /// The remote store refused `events` for their data: stores them in smaller and smaller
    /// parts, down to single events, and sets aside in `quarantine` those it refuses alone.
    /// Only when some part was stored: a store that refuses every row (a trigger, a check that
    /// fails for all) must hold the journal, not move the traffic aside. Returns the ids set
    /// aside.
    ///
    /// # Errors
    /// Any other failure on the way (the whole batch is retried: parts stored twice are
    /// absorbed by the store's dedup-safe reads), or the refusal when no part was stored.
    async fn split(
        &self,
        events: &[StoredEvent],
        first: Refusal,
        quarantine: &dyn Quarantine,
    ) -> Result<Vec<String>, PortError> {
        let mut parts: VecDeque<&[StoredEvent]> = halves(events).collect();
        let (mut tried, mut stored_any) = (0, false);
        let mut refused: Vec<(&StoredEvent, Refusal)> = Vec::new();
        while let Some(part) = parts.pop_front() {
            if !stored_any && tried >= BLIND_PARTS {
                break;
            }
            tried += 1;
            match self.remote.insert(part).await {
                Ok(()) => {
                    stored_any = true;
                    self.metrics.forwarded_inserts.inc();
                }
                Err(PortError::Refused(r)) if r.cause == RefusalCause::Data => {
                    if let [one] = part {
                        refused.push((one, r));
                    } else {
                        parts.extend(halves(part));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if !stored_any {
            return Err(PortError::Refused(Refusal {
                message: format!(
                    "every part of a batch of {} events was refused, so it is held, not set \
                     aside: {}",
                    events.len(),
                    first.message
                ),
                ..first
            }));
        }
        let now = self.clock.now();
        let items: Vec<QuarantinedEvent> = refused
            .iter()
            .map(|(e, r)| QuarantinedEvent {
                event: (*e).clone(),
                reason: r.message.clone(),
                code: r.code,
                quarantined_at: now,
            })
            .collect();
        quarantine.put(&items).await?;
        self.metrics.quarantined.inc_by(items.len() as u64);
        self.metrics.quarantine_size.set(quarantine.count() as i64);
        for (e, r) in &refused {
            tracing::error!(
                event_id = e.columns().event_id, code = ?r.code, cause = %r.message,
                "the event store refuses this event alone: set aside in the quarantine \
                 (GET /quarantine; README: \"ClickHouse refuses\")"
            );
        }
        Ok(refused
            .into_iter()
            .map(|(e, _)| e.columns().event_id.to_owned())
            .collect())
    }
}

/// `events` in two halves (one part when it is a single event).
fn halves(events: &[StoredEvent]) -> impl Iterator<Item = &[StoredEvent]> {
    let (a, b) = events.split_at(events.len().div_ceil(2));
    [a, b].into_iter().filter(|p| !p.is_empty())
}

/// Up to 50% less, so many instances recovering together do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 - rand::random::<f64>() * 0.5)
}

pub mod handoff;
pub mod health;
pub mod quarantine;

pub use handoff::Handoff;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod failure_tests;

#[cfg(test)]
mod split_tests;

#[cfg(test)]
mod handoff_tests;
