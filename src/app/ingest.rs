//! The ingest use case: validate, claim dedup keys, store, confirm, answer.
//!
//! Validation runs on the caller's task. Valid events go to one committer task through a
//! channel; it groups whatever is waiting (from every connection and request) into one dedup
//! claim and one store call, so the backends see large batches and one fsync covers many
//! events. Up to three groups are in flight (one claiming while the one before stores), and
//! claims and stores each keep arrival order. While a group stores, the next one is gathered
//! only when its claim, begun then, would end about as that store does (the stages' running
//! means): events that arrive meanwhile join it instead of waiting for one more store.

use crate::app::disk::DiskState;
use crate::app::metrics::{Channel, ChannelCounts, Metrics};
use crate::app::tap::{TapEvent, TapOutcome, TapRecord};
use crate::domain::{
    parse_event_owned, parse_fields, CartEvent, DedupKey, EventFields, EventId, EventType,
    GroupPlan, KeyMap, Source, StoredEvent, ValidationPolicy, WrongLength,
};
use crate::ports::{Claim, Clock, DedupStore, EventStore, Lease, PortError};
pub use crate::ports::{Item, Outcome, Unavailable};
use serde_json::Value;
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
        let event_type = crate::app::tap::raw_event_type(&raw);
        let copy = self.inner.metrics.tap.active().then(|| raw.clone());
        let item = parse_event_owned(raw, &self.inner.policy, self.inner.clock.now(), || {
            EventId::from_random_bytes(rand::random())
        });
        self.rejected(&item, event_type, copy);
        item
    }

    /// Validates one event given by its fields, by the server's clock now.
    pub fn validate_fields(&self, fields: EventFields) -> Item {
        // Validation only reads the fields, so a rejected event's are still here to show.
        self.validate_fields_then(fields, |fields| Some(fields_json(fields)))
    }

    /// Validates one event given by its fields; `as_sent` rebuilds it whole for the tap, only
    /// when it is rejected while someone watches (no copy is made otherwise).
    pub fn validate_fields_as_sent(
        &self,
        fields: EventFields,
        as_sent: &dyn Fn() -> Value,
    ) -> Item {
        self.validate_fields_then(fields, |_| Some(as_sent()))
    }

    /// Validates `fields`; a rejection is counted, and shown on the tap as `raw` makes it of
    /// the fields (called only for a rejection while someone watches: nothing is copied for
    /// an event that passes).
    fn validate_fields_then(
        &self,
        fields: EventFields,
        raw: impl FnOnce(EventFields) -> Option<Value>,
    ) -> Item {
        let event_type = fields
            .event_type
            .as_ref()
            .and_then(Value::as_str)
            .and_then(EventType::parse);
        let item = parse_fields(&fields, &self.inner.policy, self.inner.clock.now(), || {
            EventId::from_random_bytes(rand::random())
        });
        let raw = (item.is_err() && self.inner.metrics.tap.active())
            .then(|| raw(fields))
            .flatten();
        self.rejected(&item, event_type, raw);
        item
    }

    /// Counts a rejection by its event type and shows it on the tap (`raw` is there only
    /// while someone watches).
    fn rejected(&self, item: &Item, event_type: Option<EventType>, raw: Option<Value>) {
        if let Err(errors) = item {
            let metrics = &self.inner.metrics;
            metrics.by_type.add(event_type, TapOutcome::Rejected, 1);
            if let Some(raw) = raw {
                metrics.tap.publish(vec![TapEvent::Rejected {
                    raw,
                    errors: errors.clone(),
                }]);
            }
        }
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
        let channel = Channel::from(source);
        let counts = metrics.by_channel.of(channel);
        counts.received.inc_by(items.len() as u64);
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(items.len());
        let mut valid = Vec::new();
        for item in items {
            match item {
                Ok(e) => {
                    valid.push(e);
                    outcomes.push(None);
                }
                Err(errs) => {
                    counts.rejected.inc();
                    outcomes.push(Some(Outcome::Rejected(errs)));
                }
            }
        }
        let pending = self.queue(valid, source);
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
                    let o = o.unwrap_or(Outcome::Unavailable(Unavailable::ShuttingDown));
                    count(metrics.by_channel.of(channel), &o);
                    o
                })
                .collect()
        }
    }

    /// Queues valid events for the committer: where their outcomes will come, and how many.
    fn queue(
        &self,
        events: Vec<CartEvent>,
        source: Source,
    ) -> Option<(oneshot::Receiver<Vec<Outcome>>, usize)> {
        if events.is_empty() {
            return None;
        }
        let (reply, rx) = oneshot::channel();
        let n = events.len();
        let job = Job {
            events,
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
}

/// An event given by its fields as the JSON object it came as (for the tap).
fn fields_json(fields: EventFields) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("eventId", fields.event_id),
        ("userId", fields.user_id),
        ("sessionId", fields.session_id),
        ("eventType", fields.event_type),
        ("timestamp", fields.timestamp),
        ("metadata", fields.metadata),
    ] {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    }
    Value::Object(m)
}

/// Counts a committed outcome by its kind; rejections are counted when they are found.
fn count(counts: &ChannelCounts, outcome: &Outcome) {
    let counter = match outcome {
        Outcome::Accepted(_) => &counts.accepted,
        Outcome::Duplicate(_) => &counts.duplicate,
        Outcome::Unavailable(_) => &counts.unavailable,
        Outcome::Rejected(_) => return,
    };
    counter.inc();
}

/// What a committed group's counters and tap need of its events, taken before they move into
/// the store call: their types always (for `cartstream_events_total`), and whether someone
/// watches the tap, in which case the group's events are kept for it ([`Held`]): those not
/// stored moved, a copy of those stored (the store takes them, and the journal hands them on).
struct Seen {
    types: Vec<EventType>,
    tap: bool,
}

impl Seen {
    fn before(metrics: &Metrics, events: &[(CartEvent, Source)]) -> Self {
        Self {
            types: events.iter().map(|(e, _)| e.event_type()).collect(),
            tap: metrics.tap.active(),
        }
    }

    /// Counts the outcomes by type.
    fn count(&self, metrics: &Metrics, outcomes: &[Outcome]) {
        let mut counts = [[0u64; 4]; EventType::ALL.len()];
        for (t, o) in self.types.iter().zip(outcomes) {
            counts[*t as usize][tap_outcome(o).index()] += 1;
        }
        for (t, row) in EventType::ALL.iter().zip(counts) {
            for (o, n) in TapOutcome::ALL.iter().zip(row) {
                if n > 0 {
                    metrics.by_type.add(Some(*t), *o, n);
                }
            }
        }
    }
}

/// Publishes a group on the tap: its events in order (`held`), each with what the tap shows of
/// its outcome. Accepted events keep the `receivedAt` they were recorded with; the others get
/// `now`.
fn publish(
    metrics: &Metrics,
    held: Held,
    kinds: Vec<(TapOutcome, Option<Unavailable>)>,
    now: chrono::DateTime<chrono::Utc>,
) {
    // One publication for the group; the subscribers serialize it, off this task. Sized up
    // front: `into_events` cannot tell its length, and growing the vector by doubling copied
    // each event several times (about 330 instructions per event while watched).
    let mut group = Vec::with_capacity(kinds.len());
    group.extend(
        held.into_events(now)
            .zip(kinds)
            .map(|(mut event, (outcome, unavailable))| {
                if outcome != TapOutcome::Accepted {
                    event.received_at = now;
                }
                TapEvent::Committed {
                    event,
                    outcome,
                    unavailable,
                }
            }),
    );
    metrics.tap.publish(group);
}

/// What the tap shows of an outcome: its kind, and why when unavailable.
fn tap_kind(o: &Outcome) -> (TapOutcome, Option<Unavailable>) {
    let unavailable = match o {
        Outcome::Unavailable(u) => Some(*u),
        _ => None,
    };
    (tap_outcome(o), unavailable)
}

/// A group's events kept for the tap: a copy of those the store recorded (or tried to), as
/// stored, and the others, as received (moved). Empty unless kept.
#[derive(Default)]
struct Held {
    stored: Vec<TapRecord>,
    others: Vec<(CartEvent, Source)>,
    /// For each of the group's events in order, whether it is in `stored`; empty when every
    /// one is in `others`.
    in_stored: Vec<bool>,
}

impl Held {
    /// Every event not stored, as received.
    fn unstored(events: Vec<(CartEvent, Source)>) -> Self {
        Self {
            others: events,
            ..Self::default()
        }
    }

    /// The group's events in their order; those not stored get `received_at` `now`.
    fn into_events(self, now: chrono::DateTime<chrono::Utc>) -> impl Iterator<Item = TapRecord> {
        let mut stored = self.stored.into_iter();
        let mut others = self.others.into_iter();
        let n = stored.len() + others.len();
        let in_stored = self.in_stored;
        (0..n).map_while(move |i| {
            if in_stored.get(i).copied().unwrap_or(false) {
                stored.next()
            } else {
                others
                    .next()
                    .map(|(event, source)| TapRecord::new(&event, now, source))
            }
        })
    }
}

fn tap_outcome(o: &Outcome) -> TapOutcome {
    match o {
        Outcome::Accepted(_) => TapOutcome::Accepted,
        Outcome::Duplicate(_) => TapOutcome::Duplicate,
        Outcome::Rejected(_) => TapOutcome::Rejected,
        Outcome::Unavailable(_) => TapOutcome::Unavailable,
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
        if let Some(delay) = pipeline.gather_delay() {
            pause(delay).await;
        }
        let Some(first) = next_job(&mut rx, &stop).await else {
            break;
        };
        let batch = gather(first, &mut rx, max_batch, &mut jobs);
        let (committer, pipeline) = (Arc::clone(&committer), Arc::clone(&pipeline));
        tokio::spawn(async move {
            committer
                .commit_and_reply(&pipeline, claim_turn, batch)
                .await;
            drop(slot);
        });
    }
    // Wait for the groups still in flight.
    let _ = slots.acquire_many(PIPELINE_DEPTH).await;
}

/// Waits `d`: on tokio's timer from 2 ms, which ticks in milliseconds; below that, on a blocking
/// thread, whose sleep overshoots by tens of microseconds rather than up to a millisecond.
async fn pause(d: Duration) {
    if d >= Duration::from_millis(2) {
        tokio::time::sleep(d).await;
    } else {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
    }
}

/// The next job to commit; `None` once `stop` was cancelled and the queue is drained.
async fn next_job(rx: &mut mpsc::UnboundedReceiver<Job>, stop: &CancellationToken) -> Option<Job> {
    tokio::select! {
        biased;
        job = rx.recv() => job,
        () = stop.cancelled() => {
            // Refuse new work, then commit everything already queued.
            rx.close();
            rx.recv().await
        }
    }
}

/// The valid events of several jobs, committed as one group, and where their answers go.
struct Batch {
    events: Vec<(CartEvent, Source)>,
    /// How many of the events, in order, each reply answers.
    replies: Vec<(usize, oneshot::Sender<Vec<Outcome>>)>,
}

/// `first` and the jobs already waiting, until about `max_batch` events, as one batch.
/// `jobs` is scratch space, kept between calls.
fn gather(
    first: Job,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    max_batch: usize,
    jobs: &mut Vec<Job>,
) -> Batch {
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
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs.drain(..) {
        replies.push((job.events.len(), job.reply));
        events.extend(job.events.into_iter().map(|e| (e, job.source)));
    }
    Batch { events, replies }
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
    settled: std::sync::Mutex<KeyMap<DedupKey, (u64, bool)>>,
    next_group: std::sync::atomic::AtomicU64,
    pace: Arc<std::sync::Mutex<Pace>>,
}

/// How long the stages take, for [`Pipeline::gather_delay`]: running means of a group's time
/// from its gathering until it is ready to store (its claim) and of a store turn held, and
/// when the group storing now took its turn.
#[derive(Default)]
struct Pace {
    claim_us: f64,
    store_us: f64,
    storing_since: Option<Instant>,
}

impl Pace {
    /// Moves the running mean `mean` a tenth of the way towards `sample`.
    fn observe(mean: &mut f64, sample: Duration) {
        let us = sample.as_secs_f64() * 1e6;
        *mean = if *mean == 0.0 {
            us
        } else {
            *mean + 0.1 * (us - *mean)
        };
    }
}

/// Waits shorter than this are not worth a hand-off to a sleeping thread.
const MIN_GATHER_DELAY: Duration = Duration::from_micros(50);
/// The longest the next group's gathering is put off.
const MAX_GATHER_DELAY: Duration = Duration::from_millis(20);

/// The store turn of a [`Pipeline`], held until dropped; how long it was held goes into the
/// pipeline's pace.
struct StoreTurn {
    _turn: tokio::sync::OwnedMutexGuard<()>,
    since: Instant,
    pace: Arc<std::sync::Mutex<Pace>>,
}

impl Drop for StoreTurn {
    fn drop(&mut self) {
        // Runs before `_turn` is released, so the next holder's `storing_since` is not undone.
        let mut pace = lock(&self.pace);
        Pace::observe(&mut pace.store_us, self.since.elapsed());
        pace.storing_since = None;
    }
}

impl Pipeline {
    /// Waits for the store turn: the previous group has recorded its events.
    async fn store_turn(&self) -> StoreTurn {
        let turn = Arc::clone(&self.store).lock_owned().await;
        let since = Instant::now();
        lock(&self.pace).storing_since = Some(since);
        StoreTurn {
            _turn: turn,
            since,
            pace: Arc::clone(&self.pace),
        }
    }

    /// A group became ready to store `took` after it was gathered.
    fn claimed_in(&self, took: Duration) {
        Pace::observe(&mut lock(&self.pace).claim_us, took);
    }

    /// How long to put off gathering the next group, so that its claim ends about when the
    /// group storing now does. Gathered at once, the next group would claim and then wait for
    /// the rest of that store, and events arriving meanwhile would wait for one more store
    /// after it; gathered later, they join it, and the store is kept as busy. `None` when no
    /// group is storing or the claim takes about as long as a store.
    fn gather_delay(&self) -> Option<Duration> {
        let pace = lock(&self.pace);
        let since = pace.storing_since?;
        let left = pace.store_us - pace.claim_us - since.elapsed().as_secs_f64() * 1e6;
        let left = Duration::from_secs_f64(left.max(0.0) * 1e-6);
        (left >= MIN_GATHER_DELAY).then(|| left.min(MAX_GATHER_DELAY))
    }

    fn next_group(&self) -> u64 {
        self.next_group
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn settled(&self) -> std::sync::MutexGuard<'_, KeyMap<DedupKey, (u64, bool)>> {
        lock(&self.settled)
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
            // One lookup for the usual case, the key still this group's; a later group that
            // settled the same key since keeps it.
            if let Some((key, (g, recorded))) = settled.remove_entry(k) {
                if g != group {
                    settled.insert(key, (g, recorded));
                }
            }
        }
    }
}

/// Claims, stores and confirms one group of valid events. The core of the use case, driven
/// only through ports; what the stores' answers mean is decided by the domain's
/// [`GroupPlan`].
pub struct Committer {
    dedup: Arc<dyn DedupStore>,
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    policy: DedupPolicy,
    /// Until when the dedup store is not asked, after a failure: a down store must not cost
    /// every group a timeout.
    dedup_rest: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Told whenever events were recorded (routing reads them from the store's feed).
    recorded: Arc<tokio::sync::Notify>,
    /// Told whether local writes succeed or fail for lack of space, when set.
    disk: Option<Arc<DiskState>>,
}

/// How the committer uses the dedup store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupPolicy {
    /// How long an accepted eventId is remembered.
    pub window: Duration,
    /// How long a claim holds a key before it is confirmed or released.
    pub hold: Duration,
    /// What to do while the dedup store cannot answer.
    pub outage: DedupOutage,
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

/// One group on its way through [`Committer::commit_in`].
struct Group {
    id: u64,
    lease: Lease,
    started: Instant,
    plan: GroupPlan,
}

impl Committer {
    /// A committer claiming on `dedup` and recording in `store`, telling `recorded` whenever
    /// events were recorded.
    pub fn new(
        dedup: Arc<dyn DedupStore>,
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        policy: DedupPolicy,
        recorded: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            dedup,
            store,
            clock,
            metrics,
            policy,
            dedup_rest: std::sync::Mutex::new(None),
            recorded,
            disk: None,
        }
    }

    /// Reports to `disk` whether the store's writes succeed or fail for lack of space.
    #[must_use]
    pub fn with_disk(mut self, disk: Arc<DiskState>) -> Self {
        self.disk = Some(disk);
        self
    }

    fn dedup_is_resting(&self) -> bool {
        let rest = lock(&self.dedup_rest);
        rest.is_some_and(|until| tokio::time::Instant::now() < until)
    }

    fn dedup_failed(&self) {
        *lock(&self.dedup_rest) = Some(tokio::time::Instant::now() + DEDUP_REST);
    }

    /// One outcome per event, in order: one group committed on its own, confirm included.
    pub async fn commit(&self, events: Vec<(CartEvent, Source)>) -> Vec<Outcome> {
        let pipeline = Pipeline::default();
        let turn = Arc::clone(&pipeline.claim).lock_owned().await;
        let (outcomes, confirmation, _) = self.commit_in(&pipeline, turn, events, false).await;
        if let Some(c) = confirmation {
            self.confirm(&pipeline, c).await;
        }
        outcomes
    }

    /// Commits one batch, sends each job its answers, then confirms the keys.
    async fn commit_and_reply(
        &self,
        pipeline: &Pipeline,
        claim_turn: tokio::sync::OwnedMutexGuard<()>,
        batch: Batch,
    ) {
        let seen = Seen::before(&self.metrics, &batch.events);
        let (outcomes, confirmation, held) = self
            .commit_in(pipeline, claim_turn, batch.events, seen.tap)
            .await;
        seen.count(&self.metrics, &outcomes);
        // What the tap shows of each outcome, taken before the outcomes go to the clients;
        // the tap itself is published once they are answered.
        let kinds: Option<Vec<_>> = seen.tap.then(|| outcomes.iter().map(tap_kind).collect());
        let now = self.clock.now();
        let mut outcomes = outcomes.into_iter();
        for (len, reply) in batch.replies {
            let _ = reply.send(outcomes.by_ref().take(len).collect());
        }
        if let Some(kinds) = kinds {
            publish(&self.metrics, held, kinds, now);
        }
        if let Some(c) = confirmation {
            self.confirm(pipeline, c).await;
        }
    }

    /// Commits one group holding the claim turn of `pipeline`: the outcomes, the keys to
    /// confirm once they are sent, and the events kept if `keep` (for the tap).
    async fn commit_in(
        &self,
        pipeline: &Pipeline,
        claim_turn: tokio::sync::OwnedMutexGuard<()>,
        events: Vec<(CartEvent, Source)>,
        keep: bool,
    ) -> (Vec<Outcome>, Option<Confirmation>, Held) {
        let mut group = Group {
            id: pipeline.next_group(),
            lease: Lease {
                id: rand::random(),
                hold: self.policy.hold,
                window: self.policy.window,
            },
            started: Instant::now(),
            plan: GroupPlan::new(events.iter().map(|(e, _)| DedupKey::of(e))),
        };
        self.metrics
            .commit_batch_events
            .observe(events.len() as f64);
        if let Err(reason) = self.claim_or_fall_back(&mut group, events.len()).await {
            let outcomes = vec![Outcome::Unavailable(reason); events.len()];
            let held = if keep {
                Held::unstored(events)
            } else {
                Held::default()
            };
            return (outcomes, None, held);
        }
        // Wait for the previous group to record its events, then let the next group claim.
        pipeline.claimed_in(group.started.elapsed());
        let store_turn = pipeline.store_turn().await;
        drop(claim_turn);
        self.resolve_in_flight(pipeline, &mut group).await;
        self.store_and_settle(pipeline, store_turn, group, events, keep)
            .await
    }

    /// Asks the dedup store about the group's keys or, when it cannot answer and the server
    /// fails open, the event store's dedup-safe read. `Err` when neither answered: then every
    /// one of the group's `n` events answers that reason, and nothing is held for it.
    async fn claim_or_fall_back(&self, group: &mut Group, n: usize) -> Result<(), Unavailable> {
        if group.plan.keys().is_empty() {
            return Ok(());
        }
        match self.claim(&group.lease, group.plan.keys()).await {
            Ok(claims) => group.plan.apply_claims(&claims).map_err(|WrongLength| {
                self.failed(
                    n,
                    "claim",
                    "dedup store answered badly",
                    Unavailable::DedupDown,
                )
            }),
            Err(e) => match self.policy.outage {
                DedupOutage::FailClosed => {
                    Err(self.failed(n, "claim", &e.to_string(), Unavailable::DedupDown))
                }
                DedupOutage::FailOpen => self.fall_back(&mut group.plan, n).await,
            },
        }
    }

    /// Claims `keys`, unless the dedup store is resting after a failure. Only a failure of
    /// the store itself starts a rest: a refusal while resting must not extend it, or clients
    /// retrying faster than the rest would keep the store unasked for good.
    async fn claim(&self, lease: &Lease, keys: &[DedupKey]) -> Result<Vec<Claim>, PortError> {
        if self.dedup_is_resting() {
            return Err(PortError::Unavailable("resting after a failure".into()));
        }
        let t = Instant::now();
        let claims = self.dedup.claim(lease, keys).await;
        self.metrics
            .claim_seconds
            .observe(t.elapsed().as_secs_f64());
        if claims.is_err() {
            self.dedup_failed();
        }
        claims
    }

    /// The store's dedup-safe read decides instead of a claim. Nothing is claimed, so nothing
    /// is confirmed or released later.
    async fn fall_back(&self, plan: &mut GroupPlan, n: usize) -> Result<(), Unavailable> {
        self.metrics.dedup_fallback.inc_by(plan.keys().len() as u64);
        match self.store.known(plan.keys()).await {
            Ok(known) => plan.apply_known(&known).map_err(|WrongLength| {
                self.failed(n, "known", "store answered badly", Unavailable::StoreDown)
            }),
            Err(e) => Err(self.failed(n, "known", &e.to_string(), reason(&e))),
        }
    }

    /// Decides the keys the claim found in flight. An earlier group of this process that
    /// recorded the key makes this a repeat. Otherwise its holder may have confirmed or
    /// released it since our claim, so ask again; a key still held then is held elsewhere
    /// (another instance, or a claim a crash left behind), and the event may or may not end
    /// up recorded.
    async fn resolve_in_flight(&self, pipeline: &Pipeline, group: &mut Group) {
        if group.plan.keys().is_empty() {
            return;
        }
        {
            let settled = pipeline.settled();
            group
                .plan
                .apply_settled(|key| matches!(settled.get(key), Some((_, true))));
        }
        if group.plan.keys().is_empty() {
            return;
        }
        let claims = self.dedup.claim(&group.lease, group.plan.keys()).await;
        group.plan.apply_reclaims(claims.ok().as_deref());
    }

    /// Records the events the plan keeps and settles the group's keys in `pipeline` before
    /// giving up the store turn: the outcomes, the keys to confirm once they are sent, and the
    /// events kept for the tap if `keep`.
    async fn store_and_settle(
        &self,
        pipeline: &Pipeline,
        store_turn: StoreTurn,
        group: Group,
        events: Vec<(CartEvent, Source)>,
        keep: bool,
    ) -> (Vec<Outcome>, Option<Confirmation>, Held) {
        let received_at = crate::domain::event::to_millis(self.clock.now());
        // The ids answer the clients; the events themselves move into the store call.
        let ids: Vec<EventId> = events.iter().map(|(e, _)| e.event_id().clone()).collect();
        let mut held = Held::default();
        if keep {
            held.in_stored = group.plan.stores().collect();
        }
        let mut to_store: Vec<StoredEvent> = Vec::with_capacity(events.len());
        for ((event, source), stores) in events.into_iter().zip(group.plan.stores()) {
            if stores {
                to_store.push(StoredEvent {
                    event,
                    received_at,
                    source,
                });
            } else if keep {
                held.others.push((event, source));
            }
        }
        let recorded = to_store.len();
        // The store takes the events (the journal hands them to its forwarder); while someone
        // watches, the tap gets a copy of each, one allocation apiece.
        if keep {
            held.stored = to_store
                .iter()
                .map(|e| TapRecord::new(&e.event, e.received_at, e.source))
                .collect();
        }
        let stored = self.insert(to_store).await;
        if let Err(e) = stored {
            pipeline.settle(group.id, group.plan.claimed(), false);
            drop(store_turn);
            self.release(pipeline, &group, &e, recorded).await;
            return (self.finish(&group, ids, Some(reason(&e))), None, held);
        }
        pipeline.settle(group.id, group.plan.claimed(), true);
        drop(store_turn);
        if recorded > 0 {
            self.recorded.notify_one();
        }
        // The events are durable: the answers can go out now. Confirming the keys follows;
        // until it lands, `settled` answers repeats that find them still held.
        let outcomes = self.finish(&group, ids, None);
        let confirmation = Confirmation {
            group: group.id,
            lease: group.lease,
            keys: group.plan.into_claimed(),
        };
        (outcomes, Some(confirmation), held)
    }

    /// Records `events`, timed; no call when there are none.
    async fn insert(&self, events: Vec<StoredEvent>) -> Result<(), PortError> {
        if events.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let stored = self.store.insert_owned(events).await;
        self.metrics
            .store_seconds
            .observe(t.elapsed().as_secs_f64());
        if let Some(disk) = &self.disk {
            match &stored {
                Ok(()) => disk.write_succeeded(),
                Err(PortError::NoSpace(cause)) => disk.write_failed(cause),
                Err(_) => {}
            }
        }
        stored
    }

    /// After `events` events failed to be stored: releases the group's claims so a retry is
    /// not a false duplicate, then forgets them in `pipeline`.
    async fn release(&self, pipeline: &Pipeline, group: &Group, e: &PortError, events: usize) {
        self.metrics.backend_error("store");
        if matches!(e, PortError::NoSpace(_)) && self.disk.is_some() {
            // Logged once per state change by the disk state, not per group.
            tracing::debug!(cause = %e, events, "store failed; releasing claims");
        } else {
            tracing::warn!(cause = %e, events, "store failed; releasing claims");
        }
        let claimed = group.plan.claimed();
        if !claimed.is_empty() {
            if let Err(e) = self.dedup.release(&group.lease, claimed).await {
                // The hold runs out by itself; until then a retry gets `unavailable`,
                // never a false `duplicate`.
                self.metrics.backend_error("release");
                tracing::warn!(cause = %e, "releasing dedup claims failed");
            }
        }
        pipeline.forget(group.id, claimed);
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

    /// The group's outcomes, given the events' ids and why storing failed, if it did.
    fn finish(
        &self,
        group: &Group,
        ids: Vec<EventId>,
        store_failure: Option<Unavailable>,
    ) -> Vec<Outcome> {
        let outcomes = group.plan.resolve(ids, store_failure);
        self.metrics
            .commit_seconds
            .observe(group.started.elapsed().as_secs_f64());
        outcomes
    }

    /// Counts and logs a failure that leaves all `events` of a group unrecorded; the reason
    /// they answer.
    fn failed(&self, events: usize, what: &str, cause: &str, reason: Unavailable) -> Unavailable {
        self.metrics.backend_error(what);
        tracing::warn!(cause, events, "{what} failed");
        reason
    }
}

/// Why a store failure leaves an event unrecorded.
fn reason(e: &PortError) -> Unavailable {
    match e {
        PortError::Unavailable(_)
        | PortError::Failed(_)
        | PortError::NoSpace(_)
        | PortError::TimedOut(_)
        | PortError::Refused(_) => Unavailable::StoreDown,
        PortError::Full(_) => Unavailable::JournalFull,
    }
}

mod port;

#[cfg(test)]
mod tests;

/// Locks `m`; what it guards stays usable after a panic elsewhere (plain numbers and maps).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
