//! The traits the use cases need from the world. Batch-shaped: a Redis pipeline or a ClickHouse
//! insert per batch is where the speed is. Shared as `Arc<dyn Port>` so adapters are chosen at
//! runtime.
//!
//! # Fakes
//!
//! Every port has a [mockall](https://docs.rs/mockall) fake named after it (`MockEventStore`,
//! `MockDedupStore`, `MockJournal`, `MockOutbox`, `MockEventFeed`, `MockRouteTarget`,
//! `MockClock`). The crate's unit tests always have them; code built on the crate gets them
//! with the `mocks` feature, for its own tests:
//!
//! ```toml
//! [dev-dependencies]
//! cartstream = { version = "0.1", features = ["mocks"] }
//! ```
//!
//! A method of an `async_trait` port is faked with the value it returns, not a future.
#![cfg_attr(
    feature = "mocks",
    doc = r#"
A unit test of your own code over a port (this example runs as a doctest with the feature):

```
use cartstream::domain::StoredEvent;
use cartstream::ports::{EventStore, MockEventStore, PortError};

/// Your code: records a batch and says whether the client should try again.
async fn record(store: &dyn EventStore, events: &[StoredEvent]) -> &'static str {
    match store.insert(events).await {
        Ok(()) => "recorded",
        Err(_) => "try again later",
    }
}

// Your test: the store is down once, then records.
let mut store = MockEventStore::new();
store
    .expect_insert()
    .times(1)
    .returning(|_| Err(PortError::Unavailable("ClickHouse is down".into())));
store.expect_insert().times(1).returning(|_| Ok(()));

let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
assert_eq!(rt.block_on(record(&store, &[])), "try again later");
assert_eq!(rt.block_on(record(&store, &[])), "recorded");
// Dropping the fake checks its expectations: each `times(1)` was met.
```
"#
)]

mod clock;
mod dedup_store;
mod disk_space;
mod event_store;
mod ingest;
mod journal;
mod outbox;
mod quarantine;
mod retention;
mod route_admin;
mod route_target;
mod shared_buckets;

#[cfg(test)]
pub use clock::TokioClock;
pub use clock::{Clock, SystemClock};
pub use dedup_store::{Claim, DedupStore, Lease};
pub use disk_space::{DiskSpace, Space};
pub use event_store::{
    listed_bytes, newest_first, EventPage, EventQuery, EventStore, PageBuilder, PageKey,
};
pub use ingest::{IngestUseCase, Item, Outcome, Unavailable};
pub use journal::{Journal, JournalEntry, JournalStats};
pub use outbox::{DeadLetter, Delivery, EventFeed, FeedEntry, Outbox, OutboxItem, RouteBacklog};
pub use quarantine::{Quarantine, QuarantineEntry, QuarantinedEvent};
pub use retention::{ExpireStep, Expiry, Retention};
pub use route_admin::{RouteAdmin, RouteReport};
pub use route_target::{DeliveryError, RouteTarget};
pub use shared_buckets::SharedBuckets;

#[cfg(any(test, feature = "mocks"))]
pub use clock::MockClock;
#[cfg(any(test, feature = "mocks"))]
pub use dedup_store::MockDedupStore;
#[cfg(any(test, feature = "mocks"))]
pub use event_store::MockEventStore;
#[cfg(any(test, feature = "mocks"))]
pub use journal::MockJournal;
#[cfg(any(test, feature = "mocks"))]
pub use outbox::{MockEventFeed, MockOutbox};
#[cfg(any(test, feature = "mocks"))]
pub use quarantine::MockQuarantine;
#[cfg(any(test, feature = "mocks"))]
pub use retention::MockRetention;
#[cfg(any(test, feature = "mocks"))]
pub use route_target::MockRouteTarget;
#[cfg(any(test, feature = "mocks"))]
pub use shared_buckets::MockSharedBuckets;

/// What an outbound adapter reports when it cannot do its job. Adapters map their own
/// infrastructure errors into this at their edge.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PortError {
    /// The backend cannot be reached or refused to work; trying again later may succeed.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered, but not as the contract says (corrupt data, bad schema).
    #[error("backend failed: {0}")]
    Failed(String),
    /// A bounded local resource (the journal) is full; it frees up as it drains.
    #[error("full: {0}")]
    Full(String),
    /// A local write failed because the disk under the data dir is full (`SQLITE_FULL`,
    /// `ENOSPC`); it succeeds again once space is freed.
    #[error("no space left on the disk: {0}")]
    NoSpace(String),
    /// The backend did not answer within the time allowed; trying again later may succeed.
    #[error("backend timed out: {0}")]
    TimedOut(String),
    /// The backend answered with an error of its own: what it said, and what it means.
    #[error("backend refused: {0}")]
    Refused(Refusal),
}

/// A request the backend answered with an error of its own, classified so the caller knows
/// whether waiting helps, and an operator what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub cause: RefusalCause,
    /// The server's own error code, when it gave one (ClickHouse's `Code: N`).
    pub code: Option<u32>,
    /// What the server said, with where and what was asked; no secrets.
    pub message: String,
}

/// Why a backend refused, as far as its answer tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCause {
    /// Overloaded or in a transient state (too many parts, a quota, a replica catching up):
    /// the same request may succeed later.
    Busy,
    /// The credentials may not do this (wrong password, a read-only user, access denied):
    /// every request fails until an operator changes the grants.
    Permission,
    /// The table is not what the service writes (a missing table or column, a changed
    /// type): every request fails until the table is fixed.
    Schema,
    /// The table refused the data: perhaps only some rows, which a smaller request would
    /// find.
    Data,
}

impl PortError {
    /// The class an operator sees for this failure: `unreachable`, `timeout`, `refused`,
    /// `schema_mismatch`, `no_space`, `full` or `failed`.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unreachable",
            Self::TimedOut(_) => "timeout",
            Self::Refused(r) if r.cause == RefusalCause::Schema => "schema_mismatch",
            Self::Refused(_) => "refused",
            Self::NoSpace(_) => "no_space",
            Self::Full(_) => "full",
            Self::Failed(_) => "failed",
        }
    }

    /// The backend's own error code, when it refused with one.
    pub fn code(&self) -> Option<u32> {
        match self {
            Self::Refused(r) => r.code,
            _ => None,
        }
    }
}
