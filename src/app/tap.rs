//! The tap: every event's outcome as it is decided, for whoever watches (`GET /events/tap`).
//!
//! Ingest publishes one item per committed group (or per rejected event) into a lock-free
//! queue, which subscribers move into one ring; each subscriber takes everything new at once,
//! at its own pace. Publishing never waits, nor takes a lock a subscriber holds:
//! the ring keeps the last `buffer` events, and a subscriber that falls further behind loses
//! the oldest and learns how many. With no subscriber, the only cost on the ingest path is
//! one atomic load. The events' wire form is made off the ingest path, once per group, by
//! the first subscriber that sends it.

use crate::domain::{CartEvent, EventColumns, EventType, FieldError, Source, Unavailable};
use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

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
/// copies are freed by the subscribers, on the tap's thread, once they leave the ring).
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
/// texts joined by `sep`, then `suffix`, after a header that the caller makes from the
/// message's length. Sending the whole message to several subscribers shares the buffer
/// instead of copying it (`whole` hands out the `Arc`), and its header goes in the same write.
#[derive(Debug, Default)]
pub struct Pieces {
    /// [`HEADER_ROOM`] bytes, the last of which hold the header, then the message.
    bytes: Arc<Vec<u8>>,
    /// Where the header starts in `bytes`.
    start: usize,
    /// Where each item's text starts and ends in `bytes`.
    spans: Vec<(usize, usize)>,
}

/// The most a message's header may take (a WebSocket frame's takes 2 to 10 bytes).
pub const HEADER_ROOM: usize = 10;

/// A group's whole message as sent, header included: shared, never copied.
#[derive(Debug, Clone)]
pub struct Whole {
    bytes: Arc<Vec<u8>>,
    start: usize,
}

impl Whole {
    /// The header and the message, as written to a subscriber.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// The message without its header.
    #[cfg(test)]
    pub fn message(&self) -> &str {
        text(&self.bytes[HEADER_ROOM..])
    }
}

/// Text that was written as a `str`.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("")
}

impl Pieces {
    /// `f` writes each item's text in turn; `header` writes the header of a message of the
    /// given length at the end of the room it gets, and says how long it is.
    pub fn build<T>(
        items: &[T],
        capacity: usize,
        [prefix, sep, suffix]: [&str; 3],
        header: impl FnOnce(usize, &mut [u8; HEADER_ROOM]) -> usize,
        mut f: impl FnMut(&T, &mut String),
    ) -> Self {
        let mut text = String::with_capacity(HEADER_ROOM + capacity + prefix.len() + suffix.len());
        // Room for the header, written once the message's length is known.
        text.push_str(&" ".repeat(HEADER_ROOM));
        let mut spans = Vec::with_capacity(items.len());
        text.push_str(prefix);
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                text.push_str(sep);
            }
            let begin = text.len();
            f(item, &mut text);
            spans.push((begin, text.len()));
        }
        text.push_str(suffix);
        let mut bytes = text.into_bytes();
        let mut head = [0u8; HEADER_ROOM];
        let len = header(bytes.len() - HEADER_ROOM, &mut head).min(HEADER_ROOM);
        let start = HEADER_ROOM - len;
        bytes[start..HEADER_ROOM].copy_from_slice(&head[start..]);
        Self {
            bytes: Arc::new(bytes),
            start,
            spans,
        }
    }

    /// The text of item `i` (empty past the end).
    pub fn get(&self, i: usize) -> &str {
        self.spans
            .get(i)
            .map_or("", |&(begin, end)| text(&self.bytes[begin..end]))
    }

    /// How long the items' texts joined by the separator are, without prefix and suffix.
    pub fn joined_len(&self) -> usize {
        match (self.spans.first(), self.spans.last()) {
            (Some(&(begin, _)), Some(&(_, end))) => end - begin,
            _ => 0,
        }
    }

    /// The whole message, shared.
    pub fn whole(&self) -> Whole {
        Whole {
            bytes: Arc::clone(&self.bytes),
            start: self.start,
        }
    }
}

/// How often a subscriber with nothing to take looks again. Publishing wakes nobody: every
/// way to wake a task on another thread (a watch channel, a `Notify`) takes a lock that the
/// waiting side takes too, and the tap's thread runs in the idle class, where the kernel may
/// stop it for milliseconds while it holds one.
const POLL: Duration = Duration::from_millis(10);

/// The groups still held for subscribers, oldest first, and the next sequence number. Only
/// subscribers lock it (on the tap's thread): the publisher never waits for it.
#[derive(Default)]
struct Ring {
    groups: VecDeque<Arc<TapGroup>>,
    /// Events in `groups`.
    events: usize,
    head: u64,
    subscribers: usize,
}

impl Ring {
    /// Adds `group`, which starts at `head`.
    fn push(&mut self, group: TapGroup) {
        debug_assert_eq!(group.first, self.head);
        self.head = group.end();
        self.events += group.events.len();
        self.groups.push_back(Arc::new(group));
    }
}

/// The most events that groups taken together are merged into (a few hundred events make a
/// frame of about 100 KiB, well under the adapter's largest).
const MERGED_EVENTS: usize = 512;

/// The publishing side, shared by the ingest use case and the tap endpoint.
pub struct Tap {
    /// Mirrors `Ring::subscribers` for the lock-free check on the ingest path.
    subscribers: AtomicUsize,
    capacity: usize,
    /// Published groups on their way into the ring: a lock-free queue, so that publishing
    /// never waits for a subscriber. A subscriber that held the ring's lock while the kernel
    /// ran something else in its place (the tap's thread has the lowest priority) held up
    /// the committer for as long: up to 12 ms, measured (BENCHMARKS.md, issue 17).
    inbox: Sender<Vec<TapEvent>>,
    /// Its receiving end: subscribers move the groups into the ring, and the publisher drops
    /// the oldest when nobody has looked for as many events as the ring holds.
    inbox_out: Receiver<Vec<TapEvent>>,
    /// Events in `inbox`.
    queued: AtomicUsize,
    /// Events the publisher dropped from `inbox`, for the ring to count as skipped.
    lost: AtomicUsize,
    ring: Mutex<Ring>,
}

impl Tap {
    /// A tap whose subscribers may each lag `buffer` events behind (at least the newest
    /// group is kept, however large).
    pub fn new(buffer: usize) -> Self {
        let (inbox, inbox_out) = crossbeam_channel::unbounded();
        Self {
            subscribers: AtomicUsize::new(0),
            capacity: buffer.max(1),
            inbox,
            inbox_out,
            queued: AtomicUsize::new(0),
            lost: AtomicUsize::new(0),
            ring: Mutex::new(Ring::default()),
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

    /// Publishes a group of events without waiting and without taking a lock; nothing
    /// happens without subscribers. Subscribers pick it up within [`POLL`].
    pub fn publish(&self, events: Vec<TapEvent>) {
        if events.is_empty() || !self.active() {
            return;
        }
        let n = events.len();
        let mut queued = self.queued.fetch_add(n, Ordering::AcqRel) + n;
        // Cannot fail: the tap holds the receiving end too.
        let _ = self.inbox.send(events);
        // Nobody has taken anything for as many events as a subscriber may lag: the oldest
        // waiting groups are skipped for everyone, never the newest.
        while queued > self.capacity && self.inbox_out.len() > 1 {
            let Ok(old) = self.inbox_out.try_recv() else {
                break;
            };
            queued = self.queued.fetch_sub(old.len(), Ordering::AcqRel) - old.len();
            self.lost.fetch_add(old.len(), Ordering::AcqRel);
        }
    }

    /// Moves what was published into the ring (numbering its events, counting what the
    /// publisher dropped) and lets the oldest groups go past the capacity: they are freed
    /// here, on the subscriber's side, not on the ingest path.
    ///
    /// Groups taken together become one, up to [`MERGED_EVENTS`]: subscribers send each group
    /// as one frame, so the committer's many small groups would cost each subscriber a write
    /// (and its client a wake-up) apiece.
    fn take_published(&self, ring: &mut Ring) {
        ring.head += self.lost.swap(0, Ordering::AcqRel) as u64;
        let mut merged: Option<TapGroup> = None;
        let mut next = ring.head;
        for events in self.inbox_out.try_iter() {
            let n = events.len();
            self.queued.fetch_sub(n, Ordering::AcqRel);
            match &mut merged {
                Some(group) if group.events.len() + n <= MERGED_EVENTS => {
                    group.events.extend(events)
                }
                _ => {
                    if let Some(full) = merged.take() {
                        ring.push(full);
                    }
                    merged = Some(TapGroup {
                        first: next,
                        events,
                        wire: OnceLock::new(),
                    });
                }
            }
            next += n as u64;
        }
        if let Some(group) = merged {
            ring.push(group);
        }
        while ring.events > self.capacity && ring.groups.len() > 1 {
            if let Some(old) = ring.groups.pop_front() {
                ring.events -= old.events.len();
            }
        }
    }

    /// A new subscriber, counted until it is dropped; it sees what is published from now on.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let mut ring = self.ring();
        self.take_published(&mut ring);
        if ring.subscribers == 0 {
            // Published after the last subscriber left: for nobody.
            ring.groups.clear();
            ring.events = 0;
        }
        ring.subscribers += 1;
        self.subscribers.store(ring.subscribers, Ordering::Relaxed);
        Subscription {
            next: ring.head,
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
    tap: Arc<Tap>,
}

impl Subscription {
    /// Everything published since the last call, waiting until there is something.
    /// Cancel-safe: nothing is taken before the wait is over.
    pub async fn recv(&mut self) -> Received {
        loop {
            let got = self.take();
            if got.skipped > 0 || !got.groups.is_empty() {
                return got;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn take(&mut self) -> Received {
        let mut ring = self.tap.ring();
        self.tap.take_published(&mut ring);
        let from = ring.groups.partition_point(|g| g.first < self.next);
        let groups: Vec<_> = ring.groups.range(from..).cloned().collect();
        let got: u64 = groups.iter().map(|g| g.events.len() as u64).sum();
        // Whatever of `next..head` is not in `groups` left the ring (or never reached it).
        let skipped = ring.head - self.next - got;
        self.next = ring.head;
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
            self.tap.take_published(&mut ring);
            ring.groups.clear();
            ring.events = 0;
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
        assert_eq!(got.groups.len(), 1, "groups taken together are merged");
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
    /// the publisher (the ingest path), as long as subscribers look; when none has looked for
    /// as many events as the ring holds, the publisher drops the oldest waiting ones, and they
    /// are counted as skipped.
    #[tokio::test]
    async fn groups_that_leave_the_ring_are_dropped_by_a_subscriber() {
        let tap = Arc::new(Tap::new(4));
        let mut sub = tap.subscribe();
        tap.publish(vec![rejected(0), rejected(1)]);
        let got = sub.recv().await;
        assert_eq!((got.skipped, ns(&got)), (0, vec![0, 1]));
        let held = Arc::downgrade(&got.groups[0]);
        drop(got);
        for n in 1..3 {
            tap.publish(vec![rejected(2 * n), rejected(2 * n + 1)]);
        }
        assert!(held.upgrade().is_some(), "the publisher did not drop it");
        let got = sub.recv().await;
        assert_eq!((got.skipped, ns(&got)), (0, vec![2, 3, 4, 5]));
        assert!(held.upgrade().is_none(), "the subscriber dropped it");

        // Nobody looking: at most the ring's capacity waits; older groups are dropped.
        for n in 0..20 {
            tap.publish(vec![rejected(n)]);
        }
        assert_eq!(tap.queued.load(Ordering::Relaxed), 4);
        assert_eq!(tap.inbox_out.len(), 4);
        let got = sub.recv().await;
        assert_eq!((got.skipped, ns(&got)), (16, vec![16, 17, 18, 19]));
        assert_eq!(tap.queued.load(Ordering::Relaxed), 0);
    }

    /// What was published between two looks is taken as one group, as large as a bound.
    #[tokio::test]
    async fn groups_taken_together_are_merged_up_to_a_bound() {
        let tap = Arc::new(Tap::new(4 * MERGED_EVENTS));
        let mut sub = tap.subscribe();
        let part = MERGED_EVENTS / 2 - 1;
        let mut n = 0;
        for size in [part, part, part, 1] {
            tap.publish((n..n + size as u64).map(rejected).collect());
            n += size as u64;
        }
        let got = sub.recv().await;
        let sizes: Vec<_> = got.groups.iter().map(|g| g.events.len()).collect();
        assert_eq!(sizes, [2 * part, part + 1]);
        assert_eq!(ns(&got), (0..n).collect::<Vec<_>>(), "in order");
        assert_eq!(got.groups[1].first, 2 * part as u64);
    }

    /// Publishing takes no lock a subscriber holds: the tap's thread, which runs at the lowest
    /// priority, could be stopped while holding it, and the committer would wait.
    #[tokio::test]
    async fn publishing_never_waits_for_a_subscriber() {
        let tap = Arc::new(Tap::new(100));
        let mut sub = tap.subscribe();
        let ring = tap.ring();
        let (done, finished) = std::sync::mpsc::channel();
        let publisher = Arc::clone(&tap);
        std::thread::spawn(move || {
            publisher.publish(vec![rejected(0)]);
            let _ = done.send(());
        });
        let published = finished.recv_timeout(Duration::from_secs(5));
        drop(ring);
        assert!(published.is_ok(), "publish waited for the ring's lock");
        assert_eq!(ns(&sub.recv().await), vec![0]);
    }

    /// A publish that raced the last subscriber's leaving is not shown to the next one.
    #[tokio::test]
    async fn a_new_subscriber_sees_nothing_published_before_it() {
        let tap = Arc::new(Tap::new(100));
        let first = tap.subscribe();
        tap.publish(vec![rejected(0)]);
        drop(first);
        // As if `active()` had been read just before the drop.
        tap.subscribers.store(1, Ordering::Relaxed);
        tap.publish(vec![rejected(1)]);
        tap.subscribers.store(0, Ordering::Relaxed);
        let mut sub = tap.subscribe();
        tap.publish(vec![rejected(2)]);
        let got = sub.recv().await;
        assert_eq!((got.skipped, ns(&got)), (0, vec![2]));
    }

    #[test]
    fn pieces_hold_one_text_per_item() {
        let header = |len: usize, out: &mut [u8; HEADER_ROOM]| {
            out[HEADER_ROOM - 2..].copy_from_slice(&[0xff, len as u8]);
            2
        };
        let p = Pieces::build(&["a", "", "bc"], 8, ["[", ",", "]"], header, |s, out| {
            out.push_str(s)
        });
        assert_eq!(
            [p.get(0), p.get(1), p.get(2), p.get(3)],
            ["a", "", "bc", ""]
        );
        assert_eq!((p.joined_len(), p.whole().message()), (5, "[a,,bc]"));
        assert_eq!(p.whole().bytes(), b"\xff\x07[a,,bc]");
        let none = Pieces::build(&[] as &[&str], 0, ["[", ",", "]"], header, |s, out| {
            out.push_str(s)
        });
        assert_eq!((none.joined_len(), none.whole().message()), (0, "[]"));
        assert_eq!(none.whole().bytes(), b"\xff\x02[]");
    }
}
