use super::PortError;
use crate::domain::StoredEvent;
use chrono::{DateTime, Utc};

/// A recorded event with its position in the recording order.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEntry {
    pub seq: i64,
    pub event: StoredEvent,
}

/// The durable record of accepted events, read in the order it was written. Routing reads it
/// instead of being told about events, so whatever is recorded is routed, crash or not.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait EventFeed: Send + Sync {
    /// Which feed this is (`embedded`, `journal`): the outbox keeps one cursor per feed.
    fn name(&self) -> &'static str;

    /// The highest position written so far (0 when empty).
    async fn head(&self) -> Result<i64, PortError>;

    /// Entries with `seq > after`, oldest first, at most `max`.
    async fn after(&self, after: i64, max: usize) -> Result<Vec<FeedEntry>, PortError>;
}

/// One event to deliver to one route, on one ordered lane of that route.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub route: String,
    pub lane: u32,
    pub event: StoredEvent,
}

/// A delivery waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    pub id: i64,
    pub route: String,
    pub lane: u32,
    pub event: StoredEvent,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not before this time.
    pub next_at: DateTime<Utc>,
}

/// A delivery that failed for good.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: i64,
    pub route: String,
    pub lane: u32,
    pub event: StoredEvent,
    pub attempts: u32,
    pub last_error: String,
    pub failed_at: DateTime<Utc>,
}

/// Waiting and dead deliveries of one route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteBacklog {
    pub pending: u64,
    pub dead: u64,
}

/// Durable deliveries: what each route still has to receive, and what failed for good.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait Outbox: Send + Sync {
    /// How far `feed` has been read, or `None` before the first enqueue.
    async fn cursor(&self, feed: &str) -> Result<Option<i64>, PortError>;

    /// Records `deliveries` and moves `feed`'s cursor to `cursor`, atomically: after a crash
    /// the feed is read again from the old cursor, and nothing is enqueued twice.
    async fn enqueue(
        &self,
        feed: &str,
        deliveries: &[Delivery],
        cursor: i64,
    ) -> Result<(), PortError>;

    /// The oldest waiting items of one lane of one route, at most `max`, due or not.
    async fn head(&self, route: &str, lane: u32, max: usize) -> Result<Vec<OutboxItem>, PortError>;

    /// The target confirmed these: they are done.
    async fn delivered(&self, ids: &[i64]) -> Result<(), PortError>;

    /// These failed: one more attempt counted, not before `next_at`.
    async fn retry_later(
        &self,
        ids: &[i64],
        next_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), PortError>;

    /// These failed for good: moved to the dead-letter store.
    async fn dead_letter(&self, ids: &[i64], error: &str) -> Result<(), PortError>;

    /// Dead letters, oldest first, optionally of one route, with `id > after`.
    async fn dead_letters(
        &self,
        route: Option<String>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, PortError>;

    /// Moves dead letters back to be delivered again from scratch: those of `route`, or with
    /// the given `ids`, or all. Returns how many.
    async fn replay(&self, route: Option<String>, ids: Option<Vec<i64>>) -> Result<u64, PortError>;

    /// Deletes one dead letter; `false` when there was none with that id.
    async fn delete_dead_letter(&self, id: i64) -> Result<bool, PortError>;

    /// Pending and dead counts of a route.
    async fn backlog(&self, route: &str) -> Result<RouteBacklog, PortError>;
}
