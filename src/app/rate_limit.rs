//! Rate limits that hold across connections and channels: events per second per client (one
//! bucket per key and client address, or per address for anonymous clients), an optional total
//! per key, reads per second per client, and failed authentications per address. A WebSocket
//! connection and an HTTP request of the same client draw from the same bucket. Off (no limit)
//! unless configured.

use crate::app::access::{Access, KeyId};
use crate::app::config::Settings;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Who is sending: the key it presented (none when the server has no keys) and its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client {
    pub key: Option<KeyId>,
    pub ip: IpAddr,
}

pub struct RateLimits {
    /// Clients without a key (the server has none): one bucket per address.
    anonymous: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Indexed by [`KeyId`].
    keys: Vec<KeyBuckets>,
    reads: Option<DefaultKeyedRateLimiter<Client>>,
    auth_failures: Option<Strikes>,
}

struct KeyBuckets {
    per_client: Option<DefaultKeyedRateLimiter<IpAddr>>,
    total: Option<DefaultDirectRateLimiter>,
}

/// Keyed limiters forget idle clients once they track this many.
const RETAIN_ABOVE: usize = 10_000;

impl RateLimits {
    /// The limits of `settings` for the keys of `access`.
    ///
    /// # Errors
    /// When a burst is below `max_batch_events`: a full batch could then never pass. The
    /// message names both settings.
    pub fn new(settings: &Settings, access: &Access) -> Result<Self, String> {
        let floor = u32::try_from(settings.max_batch_events).unwrap_or(u32::MAX);
        let quota = |rate: u32, burst: u32, name: &str| -> Result<Option<Quota>, String> {
            let Some(per_second) = NonZeroU32::new(rate) else {
                return Ok(None);
            };
            let burst = if burst == 0 { rate } else { burst };
            if burst < floor {
                return Err(format!(
                    "{name}: the burst is {burst}{}, below max_batch_events \
                     (CARTSTREAM_MAX_BATCH_EVENTS) {floor}, so a full batch could never pass; \
                     raise the burst to at least {floor} or lower max_batch_events",
                    if burst == rate {
                        " (one second's worth, as the burst setting is 0)"
                    } else {
                        ""
                    }
                ));
            }
            let burst = NonZeroU32::new(burst).unwrap_or(per_second);
            Ok(Some(Quota::per_second(per_second).allow_burst(burst)))
        };
        let per_client_name = "rate_limit_burst (CARTSTREAM_RATE_LIMIT_BURST)";
        let default_client = quota(
            settings.rate_limit_per_second,
            settings.rate_limit_burst,
            per_client_name,
        )?;
        let mut keys = Vec::new();
        for (_, key) in access.keys() {
            let l = key.limits;
            let per_client = quota(
                l.per_second.unwrap_or(settings.rate_limit_per_second),
                l.burst.unwrap_or(settings.rate_limit_burst),
                &format!("key {:?}: rate_limit_burst", key.name),
            )?;
            let total = quota(
                l.total_per_second
                    .unwrap_or(settings.rate_limit_key_total_per_second),
                l.total_burst.unwrap_or(settings.rate_limit_key_total_burst),
                &format!(
                    "key {:?}: rate_limit_total_burst (CARTSTREAM_RATE_LIMIT_KEY_TOTAL_BURST)",
                    key.name
                ),
            )?;
            keys.push(KeyBuckets {
                per_client: per_client.map(RateLimiter::keyed),
                total: total.map(RateLimiter::direct),
            });
        }
        let reads = NonZeroU32::new(settings.read_rate_limit_per_second).map(|rate| {
            let burst = NonZeroU32::new(settings.read_rate_limit_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Ok(Self {
            anonymous: default_client.map(RateLimiter::keyed),
            keys,
            reads,
            auth_failures: NonZeroU32::new(settings.auth_failures_per_minute).map(Strikes::new),
        })
    }

    /// Limits that refuse nothing, for the inbound adapters' unit tests.
    #[cfg(test)]
    pub fn unlimited() -> Self {
        Self {
            anonymous: None,
            keys: Vec::new(),
            reads: None,
            auth_failures: None,
        }
    }

    /// `Err(wait)` when `events` more events from `client` would exceed its rate (or its key's
    /// total).
    pub fn check_events(&self, client: Client, events: usize) -> Result<(), Duration> {
        let n = count(events);
        match client.key {
            None => check_keyed(self.anonymous.as_ref(), &client.ip, n),
            Some(key) => {
                let Some(buckets) = self.keys.get(key.index()) else {
                    return Ok(());
                };
                // The client's own bucket first, so one client over its rate cannot use up
                // the key's total that every other client shares.
                check_keyed(buckets.per_client.as_ref(), &client.ip, n)?;
                match &buckets.total {
                    None => Ok(()),
                    Some(total) => verdict(total.check_n(n)),
                }
            }
        }
    }

    /// `Err(wait)` when one more read by `client` would exceed the read rate.
    pub fn check_read(&self, client: Client) -> Result<(), Duration> {
        check_keyed(self.reads.as_ref(), &client, NonZeroU32::MIN)
    }

    /// `Err(wait)` while `ip` has used up its failed authentications: then it is refused
    /// before its key is even looked at.
    pub fn auth_blocked(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.auth_failures {
            Some(strikes) => strikes.blocked(ip, Instant::now()),
            None => Ok(()),
        }
    }

    /// Counts a failed authentication from `ip`.
    pub fn auth_failed(&self, ip: IpAddr) {
        if let Some(strikes) = &self.auth_failures {
            strikes.strike(ip, Instant::now());
        }
    }
}

fn count(events: usize) -> NonZeroU32 {
    NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
}

fn check_keyed<K: std::hash::Hash + Eq + Clone>(
    limiter: Option<&DefaultKeyedRateLimiter<K>>,
    key: &K,
    n: NonZeroU32,
) -> Result<(), Duration> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    if limiter.len() > RETAIN_ABOVE {
        limiter.retain_recent();
    }
    verdict(limiter.check_key_n(key, n))
}

fn verdict(
    r: Result<
        Result<(), governor::NotUntil<governor::clock::QuantaInstant>>,
        governor::InsufficientCapacity,
    >,
) -> Result<(), Duration> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
        // More than the burst at once: never possible (startup refuses bursts below a batch).
        Err(_) => Err(Duration::from_secs(1)),
    }
}

/// Failed authentications per address: a token bucket of `per_minute` tokens refilled at
/// `per_minute` a minute; an address with less than one token left is blocked until it has
/// one again. Unlike a governor limiter it can be asked without spending, which is what
/// "blocked?" on every authenticated request needs.
struct Strikes {
    per_minute: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    /// How many addresses are tracked, so the common case (none) takes no lock.
    tracked: AtomicUsize,
}

impl Strikes {
    fn new(per_minute: NonZeroU32) -> Self {
        Self {
            per_minute: f64::from(per_minute.get()),
            buckets: Mutex::new(HashMap::new()),
            tracked: AtomicUsize::new(0),
        }
    }

    fn refilled(&self, (tokens, at): (f64, Instant), now: Instant) -> f64 {
        let gained = now.saturating_duration_since(at).as_secs_f64() * self.per_minute / 60.0;
        (tokens + gained).min(self.per_minute)
    }

    fn blocked(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        // A poisoned lock only means a panic elsewhere mid-update of plain numbers.
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&bucket) = buckets.get(&ip) else {
            return Ok(());
        };
        let tokens = self.refilled(bucket, now);
        if tokens >= 1.0 {
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (1.0 - tokens) * 60.0 / self.per_minute,
        ))
    }

    fn strike(&self, ip: IpAddr, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > RETAIN_ABOVE {
            let full = self.per_minute;
            buckets.retain(|_, b| self.refilled(*b, now) < full);
        }
        let bucket = buckets.entry(ip).or_insert((self.per_minute, now));
        let tokens = self.refilled(*bucket, now);
        *bucket = ((tokens - 1.0).max(0.0), now);
        self.tracked.store(buckets.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::access::Scope;
    use crate::app::config::KeySettings;

    fn limits(configure: impl FnOnce(&mut Settings)) -> (RateLimits, Access) {
        let mut s = Settings::default();
        configure(&mut s);
        let access = Access::from_settings(&s).unwrap();
        (RateLimits::new(&s, &access).unwrap(), access)
    }

    fn anon(ip: [u8; 4]) -> Client {
        Client {
            key: None,
            ip: ip.into(),
        }
    }

    #[test]
    fn off_by_default() {
        let (r, _) = limits(|_| {});
        assert!(r.check_events(anon([127, 0, 0, 1]), 1_000_000).is_ok());
        assert!(r.check_read(anon([127, 0, 0, 1])).is_ok());
    }

    #[test]
    fn the_burst_is_exactly_the_configured_one() {
        let (r, _) = limits(|s| {
            s.rate_limit_per_second = 1;
            s.rate_limit_burst = 3;
            s.max_batch_events = 2;
        });
        let c = anon([10, 0, 0, 1]);
        assert!(r.check_events(c, 3).is_ok());
        let wait = r.check_events(c, 1).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(r.check_events(anon([10, 0, 0, 2]), 1).is_ok(), "own bucket");
    }

    #[test]
    fn a_burst_below_a_full_batch_is_refused_naming_both_settings() {
        let mut s = Settings {
            rate_limit_per_second: 50,
            rate_limit_burst: 50,
            ..Settings::default()
        };
        let access = Access::default();
        let err = RateLimits::new(&s, &access).err().unwrap();
        assert!(err.contains("CARTSTREAM_RATE_LIMIT_BURST"), "{err}");
        assert!(err.contains("CARTSTREAM_MAX_BATCH_EVENTS"), "{err}");
        s.rate_limit_burst = 0;
        let err = RateLimits::new(&s, &access).err().unwrap();
        assert!(err.contains("one second's worth"), "{err}");
        s.rate_limit_burst = 500;
        assert!(RateLimits::new(&s, &access).is_ok());
    }

    fn key(name: &str) -> KeySettings {
        KeySettings {
            name: name.into(),
            key: Some(name.into()),
            sha256: None,
            scopes: vec![Scope::Ingest],
            origins: Vec::new(),
            rate_limit_per_second: None,
            rate_limit_burst: None,
            rate_limit_total_per_second: None,
            rate_limit_total_burst: None,
        }
    }

    #[test]
    fn one_bucket_per_key_and_address_with_a_total_per_key() {
        let mut shop = key("shop");
        shop.rate_limit_total_per_second = Some(1);
        shop.rate_limit_total_burst = Some(5);
        let (r, access) = limits(|s| {
            s.rate_limit_per_second = 1;
            s.rate_limit_burst = 3;
            s.max_batch_events = 1;
            s.keys = vec![shop, key("other")];
        });
        let shop = access.lookup("shop");
        let other = access.lookup("other");
        let at = |key, last| Client {
            key,
            ip: IpAddr::from([10, 0, 0, last]),
        };
        assert!(r.check_events(at(shop, 1), 3).is_ok());
        assert!(r.check_events(at(shop, 1), 1).is_err(), "per address");
        assert!(r.check_events(at(other, 1), 3).is_ok(), "per key");
        assert!(r.check_events(at(shop, 2), 2).is_ok());
        // 5 of the key's total are spent; a third address has its own bucket but no total.
        assert!(r.check_events(at(shop, 3), 1).is_err(), "total per key");
    }

    #[test]
    fn failed_authentications_block_an_address_without_spending_on_asks() {
        let (r, _) = limits(|s| s.auth_failures_per_minute = 2);
        let ip = IpAddr::from([10, 0, 0, 9]);
        assert!(r.auth_blocked(ip).is_ok());
        r.auth_failed(ip);
        assert!(r.auth_blocked(ip).is_ok());
        assert!(r.auth_blocked(ip).is_ok(), "asking spends nothing");
        r.auth_failed(ip);
        let wait = r.auth_blocked(ip).unwrap_err();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(r.auth_blocked(IpAddr::from([10, 0, 0, 8])).is_ok());
    }

    #[test]
    fn strikes_refill_over_time() {
        let s = Strikes::new(NonZeroU32::new(60).unwrap());
        let ip = IpAddr::from([10, 0, 0, 1]);
        let t0 = Instant::now();
        for _ in 0..60 {
            s.strike(ip, t0);
        }
        assert!(s.blocked(ip, t0).is_err());
        assert!(s.blocked(ip, t0 + Duration::from_millis(1_001)).is_ok());
    }
}
