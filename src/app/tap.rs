//! The tap: every event's outcome as it is decided, for whoever watches (`GET /events/tap`).
//!
//! Ingest publishes into one `tokio::sync::broadcast` ring; each subscriber reads it at its
//! own pace. Publishing never waits: a subscriber that falls more than the ring's capacity
//! behind loses the oldest items and learns how many (`Lagged`). With no subscriber, the
//! only cost on the ingest path is one atomic load.

use crate::domain::{EventType, FieldError, StoredEvent, Unavailable};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::broadcast;

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
        event: StoredEvent,
        outcome: TapOutcome,
        unavailable: Option<Unavailable>,
    },
    /// An event that broke the rules, as the client sent it, and every rule it broke.
    Rejected { raw: Value, errors: Vec<FieldError> },
}

/// A [`TapEvent`] with its wire form, made once by the first subscriber that sends it.
#[derive(Debug)]
pub struct TapItem {
    pub event: TapEvent,
    pub wire: OnceLock<String>,
}

impl TapItem {
    pub fn outcome(&self) -> TapOutcome {
        match &self.event {
            TapEvent::Committed { outcome, .. } => *outcome,
            TapEvent::Rejected { .. } => TapOutcome::Rejected,
        }
    }

    /// The event's type as sent (a rejected event's may be anything, or absent).
    pub fn event_type(&self) -> Option<&str> {
        match &self.event {
            TapEvent::Committed { event, .. } => Some(event.event.event_type().as_str()),
            TapEvent::Rejected { raw, .. } => raw.get("eventType").and_then(Value::as_str),
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        match &self.event {
            TapEvent::Committed { event, .. } => Some(event.event.user_id()),
            TapEvent::Rejected { raw, .. } => raw.get("userId").and_then(Value::as_str),
        }
    }
}

/// The publishing side, shared by the ingest use case and the tap endpoint.
pub struct Tap {
    subscribers: AtomicUsize,
    capacity: usize,
    tx: broadcast::Sender<Arc<TapItem>>,
}

impl Tap {
    /// A tap whose subscribers may each lag `buffer` items behind.
    pub fn new(buffer: usize) -> Self {
        let capacity = buffer.max(1);
        let (tx, _) = broadcast::channel(capacity);
        Self {
            subscribers: AtomicUsize::new(0),
            capacity,
            tx,
        }
    }

    /// Whether anyone listens: the one check on the ingest path.
    #[inline]
    pub fn active(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) != 0
    }

    /// Publishes without waiting; nothing happens without subscribers.
    pub fn publish(&self, event: TapEvent) {
        let _ = self.tx.send(Arc::new(TapItem {
            event,
            wire: OnceLock::new(),
        }));
    }

    /// A new subscriber, counted until it is dropped.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscription {
            rx: self.tx.subscribe(),
            tap: Arc::clone(self),
        }
    }

    /// How many items a subscriber may lag behind before the oldest are skipped.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }
}

impl Default for Tap {
    fn default() -> Self {
        Self::new(1024)
    }
}

/// What a subscriber receives next.
#[derive(Debug)]
pub enum Received {
    Item(Arc<TapItem>),
    /// This many items were skipped because the subscriber fell behind.
    Skipped(u64),
}

/// One subscriber's place in the ring.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<TapItem>>,
    tap: Arc<Tap>,
}

impl Subscription {
    /// The next item, or how many were skipped; `None` once the tap is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.rx.recv().await {
            Ok(item) => Some(Received::Item(item)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Received::Skipped(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.tap.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The event type label of a raw event: one of the closed set, or `None`.
pub fn raw_event_type(raw: &Value) -> Option<EventType> {
    raw.get("eventType")
        .and_then(Value::as_str)
        .and_then(EventType::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(n: u64) -> TapEvent {
        TapEvent::Rejected {
            raw: serde_json::json!({ "n": n }),
            errors: Vec::new(),
        }
    }

    #[tokio::test]
    async fn inactive_without_subscribers_and_counts_them() {
        let tap = Arc::new(Tap::new(4));
        assert!(!tap.active());
        tap.publish(rejected(0));
        let sub = tap.subscribe();
        assert!(tap.active());
        drop(sub);
        assert!(!tap.active());
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_what_it_missed() {
        let tap = Arc::new(Tap::new(4));
        let mut sub = tap.subscribe();
        for n in 0..10 {
            tap.publish(rejected(n));
        }
        let mut got = 0;
        let mut skipped = 0;
        while got + skipped < 10 {
            match sub.recv().await {
                Some(Received::Item(_)) => got += 1,
                Some(Received::Skipped(n)) => skipped += n,
                None => break,
            }
        }
        assert_eq!((got, skipped), (4, 6));
    }
}
