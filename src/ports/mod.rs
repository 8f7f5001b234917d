//! The traits the use cases need from the world. Batch-shaped: a Redis pipeline or a ClickHouse
//! insert per batch is where the speed is. Shared as `Arc<dyn Port>` so adapters are chosen at
//! runtime; mockall fakes them in unit tests.

mod clock;
mod dedup_store;
mod event_store;
mod ingest;
mod journal;
mod outbox;
mod route_admin;
mod route_target;

pub use clock::{Clock, SystemClock};
pub use dedup_store::{Claim, DedupStore, Lease};
pub use event_store::{
    listed_bytes, newest_first, EventPage, EventQuery, EventStore, PageBuilder, PageKey,
};
pub use ingest::{IngestUseCase, Item, Outcome, Unavailable};
pub use journal::{Journal, JournalEntry, JournalStats};
pub use outbox::{DeadLetter, Delivery, EventFeed, FeedEntry, Outbox, OutboxItem, RouteBacklog};
pub use route_admin::{RouteAdmin, RouteReport};
pub use route_target::{DeliveryError, RouteTarget};

#[cfg(test)]
pub use clock::MockClock;
#[cfg(test)]
pub use dedup_store::MockDedupStore;
#[cfg(test)]
pub use event_store::MockEventStore;
#[cfg(test)]
pub use journal::MockJournal;
#[cfg(test)]
pub use outbox::{MockEventFeed, MockOutbox};
#[cfg(test)]
pub use route_target::MockRouteTarget;

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
}
