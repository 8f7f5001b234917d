//! A fake ingest use case for the inbound adapters' unit tests: the real (pure) validation,
//! and scripted outcomes for the valid events, so a handler's mapping of each [`Outcome`]
//! can be checked without a committer, a store or a clock.

use crate::app::metrics::{Channel, CodeLabels, Metrics};
use crate::app::rate_limit::RateLimits;
use crate::domain::ValidationPolicy;
use crate::domain::{parse_event_owned, parse_fields, EventFields, EventId, Source};
use crate::ports::{Clock, IngestUseCase, Item, Outcome, Unavailable};
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::future::{self, Future};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct FakeIngest {
    /// Answers for the valid items submitted, in order; once empty, each is accepted.
    script: Mutex<VecDeque<Outcome>>,
    /// Each call to `submit`: how many items, from which channel.
    pub calls: Mutex<Vec<(usize, Source)>>,
}

impl FakeIngest {
    /// A fake whose valid items are answered with `outcomes`, in order.
    pub fn answering(outcomes: impl IntoIterator<Item = Outcome>) -> Self {
        Self {
            script: Mutex::new(outcomes.into_iter().collect()),
            calls: Mutex::default(),
        }
    }

    fn answer(&self, item: Item) -> Outcome {
        match item {
            Err(errors) => Outcome::Rejected(errors),
            Ok(event) => {
                let scripted = self.script.lock().unwrap().pop_front();
                scripted.unwrap_or_else(|| Outcome::Accepted(event.event_id().clone()))
            }
        }
    }
}

fn fresh_id() -> EventId {
    EventId::from_random_bytes([7; 16])
}

impl IngestUseCase for FakeIngest {
    fn validate(&self, raw: serde_json::Value) -> Item {
        let policy = ValidationPolicy::protocol_default();
        parse_event_owned(raw, &policy, chrono::Utc::now(), fresh_id)
    }

    fn validate_fields(&self, fields: EventFields) -> Item {
        let policy = ValidationPolicy::protocol_default();
        parse_fields(&fields, &policy, chrono::Utc::now(), fresh_id)
    }

    fn submit(
        &self,
        items: Vec<Item>,
        source: Source,
    ) -> impl Future<Output = Vec<Outcome>> + Send + 'static {
        self.calls.lock().unwrap().push((items.len(), source));
        future::ready(items.into_iter().map(|i| self.answer(i)).collect())
    }

    fn submit_one(
        &self,
        item: Item,
        source: Source,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        self.calls.lock().unwrap().push((1, source));
        future::ready(self.answer(item))
    }
}

/// Rate limits that never refuse.
pub fn no_rate_limits() -> Arc<RateLimits> {
    Arc::new(RateLimits::unlimited())
}

/// Fresh metrics, to read the error counters from.
pub fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new())
}

/// How many error replies with `code` were counted on `channel`.
pub fn errors_counted(metrics: &Metrics, channel: Channel, code: &str) -> u64 {
    metrics
        .errors
        .get_or_create(&CodeLabels {
            channel,
            code: code.to_owned(),
        })
        .get()
}

/// A clock stopped at one instant.
pub struct FixedClock(pub DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// An event id for the tests.
pub fn id(raw: &str) -> EventId {
    EventId::parse(raw).unwrap()
}

/// Every reason an event can be unavailable.
pub const UNAVAILABLE: [Unavailable; 5] = [
    Unavailable::ShuttingDown,
    Unavailable::StoreDown,
    Unavailable::JournalFull,
    Unavailable::KeyInFlight,
    Unavailable::DedupDown,
];
