//! The ingest use case: validate, claim dedup keys, store, confirm, answer.
//!
//! Validation runs on the caller's task. Valid events go to one committer task through a
//! channel; it groups whatever is waiting (from every connection and request) into one dedup
//! claim and one store call, so the backends see large batches and one fsync covers many
//! events. Groups are committed one at a time, which keeps claim order equal to arrival order.

use crate::app::metrics::{Channel, ChannelLabels, Metrics};
use crate::domain::{
    parse_event_owned, parse_fields, CartEvent, DedupKey, EventFields, EventId, Source,
    StoredEvent, ValidationPolicy,
};
use crate::ports::{Claim, Clock, DedupStore, EventStore, Lease, PortError};
pub use crate::ports::{Item, Outcome, Unavailable};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

struct Job {
    events: Vec<CartEvent>,
    source: Source,
    reply: oneshot::Sender<Vec<Outcome>>,
}

/// Handle to the use case, cheap to clone and shared by every inbound adapter.
#[derive(Clone)]
pub struct Ingest {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    policy: ValidationPolicy,
    metrics: Arc<Metrics>,
    tx: mpsc::UnboundedSender<Job>,
}

impl Ingest {
    /// Starts the committer task. It runs until `stop` is cancelled, then commits what was
    /// already submitted and ends.
    pub fn start(
        committer: Committer,
        policy: ValidationPolicy,
        max_batch: usize,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let ingest = Self {
            inner: Arc::new(Inner {
                clock: Arc::clone(&committer.clock),
                policy,
                metrics: Arc::clone(&committer.metrics),
                tx,
            }),
        };
        let task = tokio::spawn(run_committer(committer, rx, max_batch.max(1), stop));
        (ingest, task)
    }

    /// Validates one raw event against the rules, by the server's clock now.
    pub fn validate(&self, raw: Value) -> Item {
        parse_event_owned(raw, &self.inner.policy, self.inner.clock.now(), || {
            EventId::from_random_bytes(rand::random())
        })
    }

    /// Validates one event given by its fields, by the server's clock now.
    pub fn validate_fields(&self, fields: EventFields) -> Item {
        parse_fields(fields, &self.inner.policy, self.inner.clock.now(), || {
            EventId::from_random_bytes(rand::random())
        })
    }

    /// Submits validated items; the future resolves to one outcome per item, in order.
    ///
    /// The items are queued before this returns, so two calls made one after the other are
    /// committed in that order even if their futures are polled later.
    pub fn submit(
        &self,
        items: Vec<Item>,
        source: Source,
    ) -> impl Future<Output = Vec<Outcome>> + Send + 'static {
        let metrics = Arc::clone(&self.inner.metrics);
        let labels = ChannelLabels {
            channel: Channel::from(source),
        };
        metrics
            .received
            .get_or_create(&labels)
            .inc_by(items.len() as u64);
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(items.len());
        let mut valid = Vec::new();
        for item in items {
            match item {
                Ok(e) => {
                    valid.push(e);
                    outcomes.push(None);
                }
                Err(errs) => {
                    metrics.rejected.get_or_create(&labels).inc();
                    outcomes.push(Some(Outcome::Rejected(errs)));
                }
            }
        }
        let pending = if valid.is_empty() {
            None
        } else {
            let (reply, rx) = oneshot::channel();
            let n = valid.len();
            let job = Job {
                events: valid,
                source,
                reply,
            };
            match self.inner.tx.send(job) {
                Ok(()) => Some((rx, n)),
                Err(_) => {
                    // The committer has stopped: answer without recording.
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send(vec![Outcome::Unavailable(Unavailable::ShuttingDown); n]);
                    Some((rx, n))
                }
            }
        };
        async move {
            if let Some((rx, n)) = pending {
                let committed = rx
                    .await
                    .unwrap_or_else(|_| vec![Outcome::Unavailable(Unavailable::ShuttingDown); n]);
                let mut committed = committed.into_iter();
                for slot in outcomes.iter_mut().filter(|o| o.is_none()) {
                    *slot = committed.next();
                }
            }
            outcomes
                .into_iter()
                .map(|o| {
                    let o = o.unwrap_or_else(|| Outcome::Unavailable(Unavailable::ShuttingDown));
                    match &o {
                        Outcome::Accepted(_) => metrics.accepted.get_or_create(&labels).inc(),
                        Outcome::Duplicate(_) => metrics.duplicate.get_or_create(&labels).inc(),
                        Outcome::Unavailable(_) => metrics.unavailable.get_or_create(&labels).inc(),
                        Outcome::Rejected(_) => 0,
                    };
                    o
                })
                .collect()
        }
    }

    /// Submits one validated item; the future resolves to its outcome.
    pub fn submit_one(
        &self,
        item: Item,
        source: Source,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        let outcomes = self.submit(vec![item], source);
        async move {
            outcomes
                .await
                .pop()
                .unwrap_or(Outcome::Unavailable(Unavailable::ShuttingDown))
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }
}

/// Groups in flight at once: one claiming, one storing, one confirming. Claims and stores
/// still happen in arrival order (see [`Pipeline`]).
const PIPELINE_DEPTH: u32 = 3;

async fn run_committer(
    committer: Committer,
    mut rx: mpsc::UnboundedReceiver<Job>,
    max_batch: usize,
    stop: CancellationToken,
) {
    let committer = Arc::new(committer);
    let pipeline = Arc::new(Pipeline::default());
    let slots = Arc::new(tokio::sync::Semaphore::new(PIPELINE_DEPTH as usize));
    let mut jobs: Vec<Job> = Vec::new();
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        // Taken before the group is gathered: the group claims only after the previous one
        // has claimed, so claims follow arrival order.
        let claim_turn = Arc::clone(&pipeline.claim).lock_owned().await;
        let first = tokio::select! {
            biased;
            job = rx.recv() => job,
            () = stop.cancelled() => {
                // Refuse new work, then commit everything already queued.
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        let mut n = first.events.len();
        jobs.push(first);
        while n < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    n += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut events = Vec::with_capacity(n);
        let mut shape = Vec::with_capacity(jobs.len());
        for job in jobs.drain(..) {
            shape.push((job.events.len(), job.reply));
            events.extend(job.events.into_iter().map(|e| (e, job.source)));
        }
        let (committer, pipeline) = (Arc::clone(&committer), Arc::clone(&pipeline));
        tokio::spawn(async move {
            let (outcomes, confirmation) = committer.commit_in(&pipeline, claim_turn, events).await;
            let mut outcomes = outcomes.into_iter();
            for (len, reply) in shape {
                let _ = reply.send(outcomes.by_ref().take(len).collect());
            }
            if let Some(c) = confirmation {
                committer.confirm(&pipeline, c).await;
            }
            drop(slot);
        });
    }
    // Wait for the groups still in flight.
    let _ = slots.acquire_many(PIPELINE_DEPTH).await;
}

/// Keys a group claimed and recorded, to confirm after its answers went out.
struct Confirmation {
    group: u64,
    lease: Lease,
    keys: Vec<DedupKey>,
}

/// Keeps overlapping groups in order. A group takes the `claim` turn to claim its keys, then
/// the `store` turn (before giving the claim turn back) to record its events, so claims and
/// stores both follow arrival order while one group's claim overlaps the previous group's
/// store and confirm. `settled` remembers, until their confirm is done, the keys of groups
/// that have stored (or failed to): a later group that finds such a key still held in the
/// dedup store learns here whether it is a duplicate.
#[derive(Default)]
pub struct Pipeline {
    claim: Arc<tokio::sync::Mutex<()>>,
    store: Arc<tokio::sync::Mutex<()>>,
    settled: std::sync::Mutex<HashMap<DedupKey, (u64, bool)>>,
    next_group: std::sync::atomic::AtomicU64,
}

impl Pipeline {
    fn settled(&self) -> std::sync::MutexGuard<'_, HashMap<DedupKey, (u64, bool)>> {
        self.settled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn settle(&self, group: u64, keys: &[DedupKey], recorded: bool) {
        let mut settled = self.settled();
        for k in keys {
            settled.insert(k.clone(), (group, recorded));
        }
    }

    fn forget(&self, group: u64, keys: &[DedupKey]) {
        let mut settled = self.settled();
        for k in keys {
            if settled.get(k).is_some_and(|(g, _)| *g == group) {
                settled.remove(k);
            }
        }
    }
}

/// Claims, stores and confirms one group of valid events. The core of the use case, driven
/// only through ports.
pub struct Committer {
    pub dedup: Arc<dyn DedupStore>,
    pub store: Arc<dyn EventStore>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// How long an accepted eventId is remembered.
    pub window: Duration,
    /// How long a claim holds a key before it is confirmed or released.
    pub hold: Duration,
    /// What to do while the dedup store cannot answer.
    pub outage: DedupOutage,
    /// Until when the dedup store is not asked, after a failure: a down store must not cost
    /// every group a timeout.
    pub dedup_rest: std::sync::Mutex<Option<Instant>>,
    /// Told whenever events were recorded (routing reads them from the store's feed).
    pub recorded: Arc<tokio::sync::Notify>,
}

/// What the committer does while the dedup store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupOutage {
    /// Keep accepting: duplicates are recognised by the event store's dedup-safe reads.
    FailOpen,
    /// Answer `unavailable` (retryable) until the dedup store is back.
    FailClosed,
}

/// How long the dedup store is left alone after a failure before it is tried again.
const DEDUP_REST: Duration = Duration::from_secs(1);

/// What became of each event of a group before the store call.
enum Plan {
    Store,
    Answer(Outcome),
    /// A repeat, inside this group, of the event at this index.
    RepeatOf(usize),
}

impl Committer {
    fn dedup_is_resting(&self) -> bool {
        let rest = self
            .dedup_rest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rest.is_some_and(|until| Instant::now() < until)
    }

    fn dedup_failed(&self) {
        *self
            .dedup_rest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() + DEDUP_REST);
    }

    /// One outcome per event, in order: one group committed on its own, confirm included.
    pub async fn commit(&self, events: Vec<(CartEvent, Source)>) -> Vec<Outcome> {
        let pipeline = Pipeline::default();
        let turn = Arc::clone(&pipeline.claim).lock_owned().await;
        let (outcomes, confirmation) = self.commit_in(&pipeline, turn, events).await;
        if let Some(c) = confirmation {
            self.confirm(&pipeline, c).await;
        }
        outcomes
    }

    /// Commits one group holding the claim turn of `pipeline`: the outcomes, and the keys to
    /// confirm once they are sent.
    async fn commit_in(
        &self,
        pipeline: &Pipeline,
        claim_turn: tokio::sync::OwnedMutexGuard<()>,
        events: Vec<(CartEvent, Source)>,
    ) -> (Vec<Outcome>, Option<Confirmation>) {
        let group = pipeline
            .next_group
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lease = Lease {
            id: rand::random(),
            hold: self.hold,
            window: self.window,
        };
        let started = Instant::now();
        self.metrics
            .commit_batch_events
            .observe(events.len() as f64);
        let mut plans: Vec<Plan> = Vec::with_capacity(events.len());
        let mut first_by_key: HashMap<DedupKey, usize> = HashMap::new();
        let mut keys: Vec<DedupKey> = Vec::new();
        let mut key_owner: Vec<usize> = Vec::new();
        for (i, (event, _)) in events.iter().enumerate() {
            match DedupKey::of(event) {
                None => plans.push(Plan::Store),
                Some(key) => match first_by_key.get(&key) {
                    Some(&first) => plans.push(Plan::RepeatOf(first)),
                    None => {
                        first_by_key.insert(key.clone(), i);
                        keys.push(key);
                        key_owner.push(i);
                        plans.push(Plan::Store);
                    }
                },
            }
        }

        let mut claimed: Vec<DedupKey> = Vec::with_capacity(keys.len());
        let mut held: Vec<(usize, DedupKey)> = Vec::new();
        if !keys.is_empty() {
            let claims = if self.dedup_is_resting() {
                Err(PortError::Unavailable("resting after a failure".into()))
            } else {
                let t = Instant::now();
                let claims = self.dedup.claim(&lease, &keys).await;
                self.metrics
                    .claim_seconds
                    .observe(t.elapsed().as_secs_f64());
                claims
            };
            match claims {
                Ok(claims) if claims.len() == keys.len() => {
                    for ((key, owner), claim) in keys.into_iter().zip(key_owner).zip(claims) {
                        match claim {
                            Claim::New => claimed.push(key),
                            Claim::Duplicate => {
                                let id = events[owner].0.event_id().clone();
                                plans[owner] = Plan::Answer(Outcome::Duplicate(id));
                            }
                            Claim::InFlight => held.push((owner, key)),
                        }
                    }
                }
                Ok(_) => {
                    return (
                        self.fail_all(
                            &events,
                            "claim",
                            "dedup store answered badly",
                            Unavailable::DedupDown,
                        ),
                        None,
                    )
                }
                Err(e) => {
                    self.dedup_failed();
                    match self.outage {
                        DedupOutage::FailClosed => {
                            let o = self.fail_all(
                                &events,
                                "claim",
                                &e.to_string(),
                                Unavailable::DedupDown,
                            );
                            return (o, None);
                        }
                        DedupOutage::FailOpen => {
                            // The store's dedup-safe read decides instead. Nothing is claimed,
                            // so nothing is confirmed or released later.
                            self.metrics.dedup_fallback.inc_by(keys.len() as u64);
                            match self.store.known(&keys).await {
                                Ok(known) if known.len() == keys.len() => {
                                    for (owner, known) in key_owner.into_iter().zip(known) {
                                        if known {
                                            let id = events[owner].0.event_id().clone();
                                            plans[owner] = Plan::Answer(Outcome::Duplicate(id));
                                        }
                                    }
                                }
                                Ok(_) => {
                                    let o = self.fail_all(
                                        &events,
                                        "known",
                                        "store answered badly",
                                        Unavailable::StoreDown,
                                    );
                                    return (o, None);
                                }
                                Err(e) => {
                                    let o =
                                        self.fail_all(&events, "known", &e.to_string(), reason(&e));
                                    return (o, None);
                                }
                            }
                        }
                    }
                }
            }
        }

        // Wait for the previous group to record its events, then let the next group claim.
        let store_turn = Arc::clone(&pipeline.store).lock_owned().await;
        drop(claim_turn);
        if !held.is_empty() {
            // An earlier group of this process that recorded the key makes this a repeat.
            // Otherwise its holder may have confirmed or released it since our claim, so ask
            // again; a key still held then is held elsewhere (another instance, or a claim a
            // crash left behind), and the event may or may not end up recorded.
            let mut again: Vec<(usize, DedupKey)> = Vec::new();
            {
                let settled = pipeline.settled();
                for (owner, key) in held {
                    if matches!(settled.get(&key), Some((_, true))) {
                        let id = events[owner].0.event_id().clone();
                        plans[owner] = Plan::Answer(Outcome::Duplicate(id));
                    } else {
                        again.push((owner, key));
                    }
                }
            }
            if !again.is_empty() {
                let keys: Vec<DedupKey> = again.iter().map(|(_, k)| k.clone()).collect();
                let claims = match self.dedup.claim(&lease, &keys).await {
                    Ok(c) if c.len() == keys.len() => c,
                    _ => vec![Claim::InFlight; keys.len()],
                };
                for ((owner, key), claim) in again.into_iter().zip(claims) {
                    match claim {
                        Claim::New => claimed.push(key),
                        Claim::Duplicate => {
                            let id = events[owner].0.event_id().clone();
                            plans[owner] = Plan::Answer(Outcome::Duplicate(id));
                        }
                        Claim::InFlight => {
                            plans[owner] =
                                Plan::Answer(Outcome::Unavailable(Unavailable::KeyInFlight));
                        }
                    }
                }
            }
        }

        let received_at = crate::domain::event::to_millis(self.clock.now());
        // The ids answer the clients; the events themselves move into the store call.
        let ids: Vec<EventId> = events.iter().map(|(e, _)| e.event_id().clone()).collect();
        let to_store: Vec<StoredEvent> = events
            .into_iter()
            .zip(&plans)
            .filter(|(_, p)| matches!(p, Plan::Store))
            .map(|((event, source), _)| StoredEvent {
                event,
                received_at,
                source,
            })
            .collect();
        if !to_store.is_empty() {
            let t = Instant::now();
            let stored = self.store.insert(&to_store).await;
            self.metrics
                .store_seconds
                .observe(t.elapsed().as_secs_f64());
            if let Err(e) = stored {
                pipeline.settle(group, &claimed, false);
                drop(store_turn);
                self.metrics.backend_error("store");
                tracing::warn!(cause = %e, events = to_store.len(), "store failed; releasing claims");
                if !claimed.is_empty() {
                    if let Err(e) = self.dedup.release(&lease, &claimed).await {
                        // The hold runs out by itself; until then a retry gets `unavailable`,
                        // never a false `duplicate`.
                        self.metrics.backend_error("release");
                        tracing::warn!(cause = %e, "releasing dedup claims failed");
                    }
                }
                pipeline.forget(group, &claimed);
                return (self.finish(&ids, plans, Some(reason(&e)), started), None);
            }
        }
        pipeline.settle(group, &claimed, true);
        drop(store_turn);
        if !to_store.is_empty() {
            self.recorded.notify_one();
        }
        // The events are durable: the answers can go out now. Confirming the keys follows;
        // until it lands, `settled` answers repeats that find them still held.
        let outcomes = self.finish(&ids, plans, None, started);
        (
            outcomes,
            Some(Confirmation {
                group,
                lease,
                keys: claimed,
            }),
        )
    }

    /// Confirms the keys of a recorded group, then forgets them in `pipeline`.
    async fn confirm(&self, pipeline: &Pipeline, c: Confirmation) {
        if !c.keys.is_empty() {
            if let Err(e) = self.dedup.confirm(&c.lease, &c.keys).await {
                // The events are durable, so they are accepted. Their keys stay held until the
                // hold runs out; after that a retry would be stored again, which the stores
                // absorb because inserts are idempotent per event id.
                self.metrics.backend_error("confirm");
                tracing::warn!(cause = %e, keys = c.keys.len(), "confirming dedup claims failed");
            }
        }
        pipeline.forget(c.group, &c.keys);
    }

    fn finish(
        &self,
        ids: &[EventId],
        plans: Vec<Plan>,
        store_failure: Option<Unavailable>,
        started: Instant,
    ) -> Vec<Outcome> {
        let mut out: Vec<Outcome> = Vec::with_capacity(plans.len());
        for (i, plan) in plans.into_iter().enumerate() {
            let outcome = match plan {
                Plan::Store => match &store_failure {
                    None => Outcome::Accepted(ids[i].clone()),
                    Some(reason) => Outcome::Unavailable(*reason),
                },
                Plan::Answer(o) => o,
                Plan::RepeatOf(first) => match &out[first] {
                    Outcome::Accepted(id) | Outcome::Duplicate(id) => {
                        Outcome::Duplicate(id.clone())
                    }
                    other => other.clone(),
                },
            };
            out.push(outcome);
        }
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        out
    }

    fn fail_all(
        &self,
        events: &[(CartEvent, Source)],
        what: &str,
        cause: &str,
        reason: Unavailable,
    ) -> Vec<Outcome> {
        self.metrics.backend_error(what);
        tracing::warn!(cause, events = events.len(), "{what} failed");
        vec![Outcome::Unavailable(reason); events.len()]
    }
}

/// Why a store failure leaves an event unrecorded.
fn reason(e: &PortError) -> Unavailable {
    match e {
        PortError::Unavailable(_) | PortError::Failed(_) => Unavailable::StoreDown,
        PortError::Full(_) => Unavailable::JournalFull,
    }
}

mod port;

#[cfg(test)]
mod tests;
