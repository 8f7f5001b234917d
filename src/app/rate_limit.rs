//! Per-client rate limits in events per second: one bucket per WebSocket connection and one
//! per HTTP client address. Off (no limit) unless configured.

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

pub struct RateLimits {
    quota: Option<Quota>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

/// A bucket for one connection.
pub struct ConnectionLimit(DefaultDirectRateLimiter);

impl RateLimits {
    /// `per_second == 0` turns limiting off. The burst is at least one full batch, so a batch
    /// of the largest allowed size can always pass eventually.
    pub fn new(per_second: u32, burst: u32, max_batch_events: usize) -> Self {
        let Some(rate) = NonZeroU32::new(per_second) else {
            return Self {
                quota: None,
                per_address: None,
            };
        };
        let floor = u32::try_from(max_batch_events).unwrap_or(u32::MAX);
        let burst = if burst == 0 { per_second } else { burst }.max(floor);
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate));
        Self {
            quota: Some(quota),
            per_address: Some(RateLimiter::keyed(quota)),
        }
    }

    pub fn for_connection(&self) -> Option<ConnectionLimit> {
        self.quota.map(|q| ConnectionLimit(RateLimiter::direct(q)))
    }

    /// `Err(wait)` when `events` more events from `addr` would exceed the rate.
    pub fn check_address(&self, addr: IpAddr, events: usize) -> Result<(), Duration> {
        let Some(limiter) = &self.per_address else {
            return Ok(());
        };
        if limiter.len() > 10_000 {
            limiter.retain_recent();
        }
        let n =
            NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(&addr, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            Err(_) => Err(Duration::from_secs(1)),
        }
    }
}

impl ConnectionLimit {
    /// `Err(wait)` when `events` more events would exceed the rate.
    pub fn check(&self, events: usize) -> Result<(), Duration> {
        let n =
            NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        match self.0.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            Err(_) => Err(Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default() {
        let r = RateLimits::new(0, 0, 500);
        assert!(r.for_connection().is_none());
        assert!(r.check_address([127, 0, 0, 1].into(), 1_000_000).is_ok());
    }

    #[test]
    fn a_connection_is_limited_after_its_burst() {
        let r = RateLimits::new(1, 3, 2);
        let c = r.for_connection().unwrap();
        assert!(c.check(3).is_ok());
        let wait = c.check(1).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
    }

    #[test]
    fn addresses_have_separate_buckets() {
        let r = RateLimits::new(1, 1, 1);
        assert!(r.check_address([10, 0, 0, 1].into(), 1).is_ok());
        assert!(r.check_address([10, 0, 0, 1].into(), 1).is_err());
        assert!(r.check_address([10, 0, 0, 2].into(), 1).is_ok());
    }
}
