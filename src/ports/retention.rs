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

/// An event store that can forget old events, a step at a time, so the writes it shares its
/// storage with never wait long.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait Retention: Send + Sync {
    /// Does one bounded step of deleting what `expiry` names. `Ok(true)`: more is left now,
    /// call again after a short pause; `Ok(false)`: nothing more until the next round.
    async fn expire_step(&self, expiry: Expiry) -> Result<bool, PortError>;
}
