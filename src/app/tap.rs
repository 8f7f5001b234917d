//! The tap: every event's outcome as it is decided, for whoever watches (`GET /events/tap`).
//!
//! Ingest publishes one item per committed group (or per rejected event) into one ring;
//! each subscriber takes everything new at once, at its own pace. Publishing never waits:
//! the ring keeps the last `buffer` events, and a subscriber that falls further behind loses
//! the oldest and learns how many. With no subscriber, the only cost on the ingest path is
//! one atomic load. The events' wire form is made off the ingest path, once per group, by
//! the first subscriber that sends it.

use crate::domain::{CartEvent, EventColumns, EventType, FieldError, Source, Unavailable};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use tokio::sync::watch;

/// What the ingest use case decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TapOutcome {
    Accepted,
    Duplicate,
    Rejected,
    Unavailable,
}

impl TapOutcome {
    pub const ALL: [TapOutcome; 4] = [
        Self::Accepted,
        Self::Duplicate,
        Self::Rejected,
        Self::Unavailable,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Rejected => "rejected",
            Self::Unavailable => "unavailable",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == raw)
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

/// One event on the tap.
#[derive(Debug)]
pub enum TapEvent {
    /// A valid event the committer answered: as recorded (accepted), or as received.
    Committed {
        event: TapRecord,
        outcome: TapOutcome,
        unavailable: Option<Unavailable>,
    },
    /// An event that broke the rules, as the client sent it, and every rule it broke.
    Rejected { raw: Value, errors: Vec<FieldError> },
}

/// A committed event as the tap keeps it: its text fields copied one after the other into one
/// buffer, its other fields as they are. Made on the ingest path while someone watches, so it
/// costs one allocation, where a clone of the event took one per text field (and the group's
/// copies are freed on the tap's side, see [`Ring::retire`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TapRecord {
    /// The event id, the user id, the session id (empty when absent), then the metadata.
    text: String,
    /// Where the event id, the user id and the session id end in `text`.
    ends: [usize; 3],
    has_session: bool,
    event_type: EventType,
    occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub source: Source,
}

impl TapRecord {
    /// `event`, received at `received_at` over `source`.
    pub fn new(event: &CartEvent, received_at: DateTime<Utc>, source: Source) -> Self {
        let id = event.event_id().as_str();
        let user = event.user_id();
        let session = event.session_id();
        let metadata = event.metadata().as_json();
        let session_text = session.unwrap_or("");
        let mut text =
            String::with_capacity(id.len() + user.len() + session_text.len() + metadata.len());
        text.push_str(id);
        let id_end = text.len();
        text.push_str(user);
        let user_end = text.len();
        text.push_str(session_text);
        let session_end = text.len();
        text.push_str(metadata);
        Self {
            text,
            ends: [id_end, user_end, session_end],
            has_session: session.is_some(),
            event_type: event.event_type(),
            occurred_at: event.occurred_at(),
            received_at,
            source,
        }
    }

    pub fn event_id(&self) -> &str {
        &self.text[..self.ends[0]]
    }

    pub fn user_id(&self) -> &str {
        &self.text[self.ends[0]..self.ends[1]]
    }

    pub fn session_id(&self) -> Option<&str> {
        self.has_session
            .then(|| &self.text[self.ends[1]..self.ends[2]])
    }

    pub fn event_type(&self) -> EventType {
        self.event_type
    }

    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }

    /// The metadata object as compact JSON, as stored.
    pub fn metadata(&self) -> &str {
        &self.text[self.ends[2]..]
    }

    /// The event's columns, as a store would write them.
    pub fn columns(&self) -> EventColumns<'_> {
        EventColumns {
            event_id: self.event_id(),
            user_id: self.user_id(),
            session_id: self.session_id(),
            event_type: self.event_type.as_str(),
            occurred_at_ms: self.occurred_at.timestamp_millis(),
            received_at_ms: self.received_at.timestamp_millis(),
            source: self.source.as_str(),
            metadata: self.metadata(),
        }
    }
}

impl TapEvent {
    pub fn outcome(&self) -> TapOutcome {
        match self {
            Self::Committed { outcome, .. } => *outcome,
            Self::Rejected { .. } => TapOutcome::Rejected,
        }
    }

    /// The event's type as sent (a rejected event's may be anything, or absent).
    pub fn event_type(&self) -> Option<&str> {
        match self {
            Self::Committed { event, .. } => Some(event.event_type().as_str()),
            Self::Rejected { raw, .. } => raw.get("eventType").and_then(Value::as_str),
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        match self {
            Self::Committed { event, .. } => Some(event.user_id()),
            Self::Rejected { raw, .. } => raw.get("userId").and_then(Value::as_str),
        }
    }
}

/// One publication: a committed group's events (or one rejected event), in order, with their
/// wire form, made once by the first subscriber that sends them and shared by all.
#[derive(Debug)]
pub struct TapGroup {
    /// The tap's sequence number of the first event (events are numbered as published).
    first: u64,
    pub events: Vec<TapEvent>,
    pub wire: OnceLock<Pieces>,
}

impl TapGroup {
    /// The sequence number after the last event.
    fn end(&self) -> u64 {
        self.first + self.events.len() as u64
    }
}

/// One text per event, kept in one shared buffer that is also a whole message: `prefix`, the
/// texts joined by `sep`, then `suffix`. Sending the whole message to several subscribers
/// shares the buffer instead of copying it (`whole` hands out the `Arc`).
#[derive(Debug, Default)]
pub struct Pieces {
    /// An `Arc<String>` rather than an `Arc<str>`, which would copy the text once more.
    text: Arc<String>,
    /// Where each item's text starts and ends in `text`.
    spans: Vec<(usize, usize)>,
}

impl Pieces {
    /// `f` writes each item's text in turn.
    pub fn build<T>(
        items: &[T],
        capacity: usize,
        [prefix, sep, suffix]: [&str; 3],
        mut f: impl FnMut(&T, &mut String),
    ) -> Self {
        let mut text = String::with_capacity(capacity + prefix.len() + suffix.len());
        let mut spans = Vec::with_capacity(items.len());
        text.push_str(prefix);
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                text.push_str(sep);
            }
            let start = text.len();
            f(item, &mut text);
            spans.push((start, text.len()));
        }
        text.push_str(suffix);
        Self {
            text: Arc::new(text),
            spans,
        }
    }

    /// The text of item `i` (empty past the end).
    pub fn get(&self, i: usize) -> &str {
        self.spans
            .get(i)
            .map_or("", |&(start, end)| &self.text[start..end])
    }

    /// The items' texts joined by the separator, without prefix and suffix.
    pub fn joined(&self) -> &str {
        match (self.spans.first(), self.spans.last()) {
            (Some(&(start, _)), Some(&(_, end))) => &self.text[start..end],
            _ => "",
        }
    }

    /// The whole message, shared.
    pub fn whole(&self) -> Arc<String> {
        Arc::clone(&self.text)
    }
}

/// The groups still held for subscribers, oldest first, and the next sequence number.
#[derive(Default)]
struct Ring {
    groups: VecDeque<Arc<TapGroup>>,
    /// Events in `groups`.
    events: usize,
    head: u64,
    subscribers: usize,
    /// Groups that left `groups`, for a subscriber to drop on the tap's thread: dropping a
    /// group frees each of its events, and the publisher is on the ingest path.
    retired: Vec<Arc<TapGroup>>,
    /// Events in `retired`.
    retired_events: usize,
}

impl Ring {
    /// Keeps `old` for a subscriber to drop, unless as many events as the ring holds wait
    /// already (no subscriber has looked for that long): then it is dropped here.
    fn retire(&mut self, old: Arc<TapGroup>, capacity: usize) {
        if self.retired_events + old.events.len() > capacity {
            return;
        }
        self.retired_events += old.events.len();
        self.retired.push(old);
    }

    /// The retired groups, for the caller to drop once the lock is released.
    fn take_retired(&mut self) -> Vec<Arc<TapGroup>> {
        self.retired_events = 0;
        std::mem::take(&mut self.retired)
    }
}

/// The publishing side, shared by the ingest use case and the tap endpoint.
pub struct Tap {
    /// Mirrors `Ring::subscribers` for the lock-free check on the ingest path.
    subscribers: AtomicUsize,
    capacity: usize,
    ring: Mutex<Ring>,
    /// The ring's `head`, for waking subscribers.
    published: watch::Sender<u64>,
}

impl Tap {
    /// A tap whose subscribers may each lag `buffer` events behind (at least the newest
    /// group is kept, however large).
    pub fn new(buffer: usize) -> Self {
        Self {
            subscribers: AtomicUsize::new(0),
            capacity: buffer.max(1),
            ring: Mutex::new(Ring::default()),
            published: watch::channel(0).0,
        }
    }

    /// Whether anyone listens: the one check on the ingest path.
    #[inline]
    pub fn active(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) != 0
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes a group of events without waiting; nothing happens without subscribers.
    pub fn publish(&self, events: Vec<TapEvent>) {
        if events.is_empty() || !self.active() {
            return;
        }
        let head = {
            let mut ring = self.ring();
            if ring.subscribers == 0 {
                return;
            }
            let group = TapGroup {
                first: ring.head,
                events,
                wire: OnceLock::new(),
            };
            ring.head = group.end();
            ring.events += group.events.len();
            ring.groups.push_back(Arc::new(group));
            while ring.events > self.capacity && ring.groups.len() > 1 {
                if let Some(old) = ring.groups.pop_front() {
                    ring.events -= old.events.len();
                    ring.retire(old, self.capacity);
                }
            }
            ring.head
        };
        self.published.send_replace(head);
    }

    /// A new subscriber, counted until it is dropped; it sees what is published from now on.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let published = self.published.subscribe();
        let mut ring = self.ring();
        ring.subscribers += 1;
        self.subscribers.store(ring.subscribers, Ordering::Relaxed);
        Subscription {
            next: ring.head,
            published,
            tap: Arc::clone(self),
        }
    }

    /// How many events a subscriber may lag behind before the oldest are skipped.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }
}

impl Default for Tap {
    fn default() -> Self {
        Self::new(8192)
    }
}

/// What a subscriber receives at once: everything published since it last looked.
#[derive(Debug, Default)]
pub struct Received {
    /// Events skipped because the subscriber fell more than the buffer behind (they come
    /// before `groups`).
    pub skipped: u64,
    pub groups: Vec<Arc<TapGroup>>,
}

/// One subscriber's place in the ring.
pub struct Subscription {
    /// The sequence number of the next event to receive.
    next: u64,
    published: watch::Receiver<u64>,
    tap: Arc<Tap>,
}

impl Subscription {
    /// Everything published since the last call, waiting until there is something.
    /// Cancel-safe: nothing is taken before the wait is over.
    pub async fn recv(&mut self) -> Received {
        loop {
            self.published.borrow_and_update();
            let got = self.take();
            if got.skipped > 0 || !got.groups.is_empty() {
                return got;
            }
            // The sender lives in the tap this subscription holds: never closed.
            let _ = self.published.changed().await;
        }
    }

    fn take(&mut self) -> Received {
        let mut ring = self.tap.ring();
        let oldest = ring.groups.front().map_or(ring.head, |g| g.first);
        let skipped = oldest.saturating_sub(self.next);
        let from = ring
            .groups
            .partition_point(|g| g.first < self.next.max(oldest));
        let groups = ring.groups.range(from..).cloned().collect();
        self.next = ring.head;
        let retired = ring.take_retired();
        drop(ring);
        // Here, on the subscriber's side, rather than where they were published.
        drop(retired);
        Received { skipped, groups }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut ring = self.tap.ring();
        ring.subscribers -= 1;
        self.tap
            .subscribers
            .store(ring.subscribers, Ordering::Relaxed);
        if ring.subscribers == 0 {
            // Nobody to keep them for.
            ring.groups.clear();
            ring.events = 0;
            ring.take_retired();
        }
    }
}

/// The event type label of a raw event: one of the closed set, or `None`.
pub fn raw_event_type(raw: &Value) -> Option<EventType> {
    raw.get("eventType")
        .and_then(Value::as_str)
        .and_then(EventType::parse)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A rejected event `{"n": n}`, to tell events apart in order (the adapter's tests use it
    /// too).
    pub(crate) fn rejected(n: u64) -> TapEvent {
        TapEvent::Rejected {
            raw: serde_json::json!({ "n": n }),
            errors: Vec::new(),
        }
    }

    fn ns(got: &Received) -> Vec<u64> {
        got.groups
            .iter()
            .flat_map(|g| &g.events)
            .map(|e| match e {
                TapEvent::Rejected { raw, .. } => raw["n"].as_u64().unwrap(),
                TapEvent::Committed { .. } => u64::MAX,
            })
            .collect()
    }

    #[tokio::test]
    async fn inactive_without_subscribers_and_counts_them() {
        let tap = Arc::new(Tap::new(4));
        assert!(!tap.active());
        tap.publish(vec![rejected(0)]);
        let sub = tap.subscribe();
        assert!(tap.active());
        drop(sub);
        assert!(!tap.active());
        assert_eq!(tap.ring().groups.len(), 0);
    }

    #[tokio::test]
    async fn a_subscriber_takes_every_group_published_since_it_last_looked() {
        let tap = Arc::new(Tap::new(100));
        tap.publish(vec![rejected(99)]);
        let mut sub = tap.subscribe();
        tap.publish(vec![rejected(0), rejected(1)]);
        tap.publish(vec![rejected(2)]);
        let got = sub.recv().await;
        assert_eq!((got.skipped, ns(&got)), (0, vec![0, 1, 2]));
        assert_eq!(got.groups.len(), 2, "one item per group");
        let waiting = tokio::spawn(async move { ns(&sub.recv().await) });
        tokio::task::yield_now().await;
        tap.publish(vec![rejected(3)]);
        assert_eq!(waiting.await.unwrap(), vec![3]);
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_how_many_events_it_missed() {
        let tap = Arc::new(Tap::new(4));
        let mut sub = tap.subscribe();
        for n in 0..10 {
            tap.publish(vec![rejected(2 * n), rejected(2 * n + 1)]);
        }
        let got = sub.recv().await;
        assert_eq!((got.skipped, ns(&got)), (16, vec![16, 17, 18, 19]));
        // The newest group is kept even when it alone exceeds the buffer.
        tap.publish((0..6).map(rejected).collect());
        let got = sub.recv().await;
        assert_eq!((got.skipped, got.groups[0].events.len()), (0, 6));
    }

    /// Groups pushed out of the ring are dropped by the next subscriber that looks, not by
    /// the publisher (the ingest path); bounded when nobody looks.
    #[tokio::test]
    async fn groups_that_leave_the_ring_are_dropped_by_a_subscriber() {
        let tap = Arc::new(Tap::new(4));
        let mut sub = tap.subscribe();
        let first = vec![rejected(0), rejected(1)];
        tap.publish(first);
        let held = Arc::downgrade(&tap.ring().groups[0]);
        for n in 1..4 {
            tap.publish(vec![rejected(2 * n), rejected(2 * n + 1)]);
        }
        assert_eq!(tap.ring().retired.len(), 2);
        assert!(held.upgrade().is_some(), "the publisher did not drop it");
        let got = sub.recv().await;
        assert_eq!((got.skipped, ns(&got)), (4, vec![4, 5, 6, 7]));
        assert!(held.upgrade().is_none(), "the subscriber dropped it");
        assert!(tap.ring().retired.is_empty());

        // Nobody looking: at most the ring's capacity waits; older groups are dropped at once.
        for n in 0..20 {
            tap.publish(vec![rejected(n)]);
        }
        let ring = tap.ring();
        assert!(ring.retired_events <= 4, "{}", ring.retired_events);
        let sum: usize = ring.retired.iter().map(|g| g.events.len()).sum();
        assert_eq!(ring.retired_events, sum);
    }

    #[test]
    fn pieces_hold_one_text_per_item() {
        let p = Pieces::build(&["a", "", "bc"], 8, ["[", ",", "]"], |s, out| {
            out.push_str(s)
        });
        assert_eq!(
            [p.get(0), p.get(1), p.get(2), p.get(3)],
            ["a", "", "bc", ""]
        );
        assert_eq!((p.joined(), p.whole().as_str()), ("a,,bc", "[a,,bc]"));
        let none = Pieces::build(&[] as &[&str], 0, ["[", ",", "]"], |s, out| out.push_str(s));
        assert_eq!((none.joined(), none.whole().as_str()), ("", "[]"));
    }
}
