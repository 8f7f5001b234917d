use super::PortError;
use chrono::{DateTime, Utc};

/// What retention deletes: events whose `timestamp` is before `occurred_before` and which were
/// received before `received_before` (the dedup window ago), so an event that dedup still
/// answers for is still stored, listed and known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub occurred_before: DateTime<Utc>,
    pub received_before: DateTime<Utc>,
}

/// What one retention step did: whether more is left now, and what it deleted, counted as
/// the store can count it honestly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpireStep {
    /// More is left now: call again after a short pause. `false`: nothing more until the next
    /// round.
    pub more: bool,
    /// Events deleted, where the store knows the number (the embedded store).
    pub events: u64,
    /// Delete mutations issued (ClickHouse: `ALTER TABLE ... DELETE`, one per table and
    /// server; ClickHouse deletes the rows later and does not say how many).
    pub mutations: u64,
    /// Partitions dropped whole (ClickHouse: a legacy table's months).
    pub partitions: u64,
}

/// An event store that can forget old events, a step at a time, so the writes it shares its
/// storage with never wait long.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait Retention: Send + Sync {
    /// Does one bounded step of deleting what `expiry` names; see [`ExpireStep`].
    async fn expire_step(&self, expiry: Expiry) -> Result<ExpireStep, PortError>;
}
