use super::PortError;
use crate::domain::gcra::Gcra;
use std::time::Duration;

/// Rate-limit buckets kept where every instance sees them, so N instances behind a load
/// balancer enforce one limit together instead of N limits side by side.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait SharedBuckets: Send + Sync {
    /// Takes `n` tokens from every bucket of `buckets` (a key naming the bucket, and its
    /// shape) or from none of them, atomically and on the store's own clock, in one round trip.
    /// The keys of one call share a Redis Cluster hash tag (`{...}`), so they live on one node.
    /// `Ok(None)` when taken; `Ok(Some(wait))` when refused, `wait` being how long until the
    /// tokens are there.
    ///
    /// # Errors
    /// `Unavailable` when the store cannot answer; the caller then limits locally.
    async fn take(&self, buckets: &[(String, Gcra)], n: u32)
        -> Result<Option<Duration>, PortError>;
}
