use super::PortError;
use crate::domain::DedupKey;
use std::time::Duration;

// What a claim answers is a plain value the domain's dedup plan reads.
pub use crate::domain::Claim;

/// One group's claim on its keys: who holds them, how long they are held before being
/// confirmed or released, and how long they are remembered once confirmed.
///
/// Every key of a group is claimed, then confirmed or released, under the same lease, so a
/// store may keep the phase once per lease rather than once per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Unique across every instance sharing the store for as long as `window` (random bits).
    pub id: u128,
    /// How long new keys stay held when neither confirmed nor released (a crash).
    pub hold: Duration,
    /// How long confirmed keys are remembered: from the claim or from the confirmation, at the
    /// store's choice; the two are at most `hold` apart.
    pub window: Duration,
}

/// Remembers which event ids were accepted within the dedup window.
///
/// Two-phase so that a failure between claim and durable recording can never turn the
/// client's retry into a false `duplicate`: [`claim`](DedupStore::claim) holds keys for a short
/// time, [`confirm`](DedupStore::confirm) makes them last the whole window once the events are
/// recorded, and [`release`](DedupStore::release) (or the hold running out, after a crash) frees
/// them again.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait DedupStore: Send + Sync {
    /// Claims `keys` under `lease`. `Ok(v)[i]` answers for `keys[i]`; keys must be distinct.
    /// One round trip for the whole slice. A lease may claim more than once before it is
    /// confirmed or released.
    ///
    /// # Errors
    /// Only when the store cannot answer; then no key was claimed.
    async fn claim(&self, lease: &Lease, keys: &[DedupKey]) -> Result<Vec<Claim>, PortError>;

    /// Marks the keys claimed under `lease` as accepted. `keys` are all of them: a lease is
    /// confirmed whole, never in part.
    async fn confirm(&self, lease: &Lease, keys: &[DedupKey]) -> Result<(), PortError>;

    /// Frees the keys claimed under `lease` (all of them, given as `keys`), whose events were
    /// not recorded, so a retry is accepted. Keys held under another lease are left alone.
    async fn release(&self, lease: &Lease, keys: &[DedupKey]) -> Result<(), PortError>;

    /// Whether the store answers, for readiness.
    async fn check(&self) -> Result<(), PortError>;
}
