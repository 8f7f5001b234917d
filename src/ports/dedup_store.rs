use super::PortError;
use crate::domain::DedupKey;
use std::time::Duration;

/// The state of a dedup key when a claim asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Nobody holds the key: it is now held, pending, for the caller.
    New,
    /// An event with this key was confirmed within the dedup window.
    Duplicate,
    /// Another request holds the key and has not yet confirmed or released it. The event may or
    /// may not end up recorded, so neither `accepted` nor `duplicate` is a safe answer yet.
    InFlight,
}

/// Remembers which event ids were accepted within the dedup window.
///
/// Two-phase so that a failure between claim and durable recording can never turn the
/// client's retry into a false `duplicate`: [`claim`](DedupStore::claim) holds keys for a short
/// time, [`confirm`](DedupStore::confirm) makes them last the whole window once the events are
/// recorded, and [`release`](DedupStore::release) (or the hold running out, after a crash) frees
/// them again.
#[cfg_attr(test, mockall::automock)]
#[async_trait::async_trait]
pub trait DedupStore: Send + Sync {
    /// Claims `keys`, holding each new one for `hold`. `Ok(v)[i]` answers for `keys[i]`; keys
    /// must be distinct. One round trip for the whole slice.
    ///
    /// # Errors
    /// Only when the store cannot answer; then no key was claimed.
    async fn claim(&self, keys: &[DedupKey], hold: Duration) -> Result<Vec<Claim>, PortError>;

    /// Marks claimed keys as accepted for `window` from now.
    async fn confirm(&self, keys: &[DedupKey], window: Duration) -> Result<(), PortError>;

    /// Frees claimed keys whose events were not recorded, so a retry is accepted.
    async fn release(&self, keys: &[DedupKey]) -> Result<(), PortError>;

    /// Whether the store answers, for readiness.
    async fn check(&self) -> Result<(), PortError>;
}
