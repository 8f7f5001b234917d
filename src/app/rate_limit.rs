//! Rate limits that hold across connections and channels: events per second per client (one
//! bucket per key and client address, or per address for anonymous clients), an optional total
//! per key, reads per second per client, and failed authentications per address. A WebSocket
//! connection and an HTTP request of the same client draw from the same bucket. Off (no limit)
//! unless configured. An address is an IPv4 address or an IPv6 /64: every address of one /64
//! is one client (`domain::address`), or a host given a /64 would have 2^64 buckets.
//!
//! The event limits are kept in process (governor) unless shared buckets are given
//! ([`RateLimits::with_shared`], Redis when configured): then every instance takes from the
//! same buckets, one round trip per request, and the in-process limiters only decide while
//! the shared buckets do not answer (fail open, bounded per instance). Reads and failed
//! authentications stay per instance: see docs/backends.md, "Rate limits across instances".

use crate::app::access::{Access, KeyId};
use crate::app::config::Settings;
use crate::domain::address::limit_scope;
use crate::domain::gcra::Gcra;
use crate::domain::SweepMark;
use crate::ports::SharedBuckets;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Who is sending: the key it presented (none when the server has no keys) and its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client {
    pub key: Option<KeyId>,
    pub ip: IpAddr,
}

impl Client {
    /// The same client as the limits count it: an IPv6 address by its /64 (`domain::address`).
    fn scoped(self) -> Self {
        Self {
            ip: limit_scope(self.ip),
            ..self
        }
    }
}

pub struct RateLimits {
    /// Clients without a key (the server has none): one bucket per address.
    anonymous: Option<Keyed<IpAddr>>,
    /// Indexed by [`KeyId`].
    keys: Vec<KeyBuckets>,
    reads: Option<Keyed<Client>>,
    auth_failures: Option<Strikes>,
    /// The event buckets again, as shapes for the shared buckets.
    shapes: Shapes,
    global: Option<Global>,
}

/// The event limits' shapes, as [`RateLimits::new`] read them from the settings.
#[derive(Default)]
struct Shapes {
    anonymous: Option<Gcra>,
    /// Indexed by [`KeyId`]: the key's name, its per-client bucket and its total.
    keys: Vec<(String, Option<Gcra>, Option<Gcra>)>,
}

struct KeyBuckets {
    per_client: Option<Keyed<IpAddr>>,
    total: Option<DefaultDirectRateLimiter>,
}

/// Keyed limiters forget idle clients once they track this many, and then each time the
/// clients they track have doubled (every client active: see [`SweepMark`]).
const RETAIN_ABOVE: usize = 10_000;

/// A keyed limiter, and when it next forgets its idle clients.
struct Keyed<K: std::hash::Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    sweep: SweepMark,
}

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    fn new(quota: Quota) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota),
            sweep: SweepMark::new(RETAIN_ABOVE),
        }
    }
}

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
        let mut shapes = Shapes {
            anonymous: Gcra::new(settings.rate_limit_per_second, settings.rate_limit_burst),
            keys: Vec::new(),
        };
        let mut keys = Vec::new();
        for (_, key) in access.keys() {
            let l = key.limits;
            let client_rate = l.per_second.unwrap_or(settings.rate_limit_per_second);
            let client_burst = l.burst.unwrap_or(settings.rate_limit_burst);
            let per_client = quota(
                client_rate,
                client_burst,
                &format!("key {:?}: rate_limit_burst", key.name),
            )?;
            let total_rate = l
                .total_per_second
                .unwrap_or(settings.rate_limit_key_total_per_second);
            let total_burst = l.total_burst.unwrap_or(settings.rate_limit_key_total_burst);
            let total = quota(
                total_rate,
                total_burst,
                &format!(
                    "key {:?}: rate_limit_total_burst (CARTSTREAM_RATE_LIMIT_KEY_TOTAL_BURST)",
                    key.name
                ),
            )?;
            keys.push(KeyBuckets {
                per_client: per_client.map(Keyed::new),
                total: total.map(RateLimiter::direct),
            });
            shapes.keys.push((
                key.name.clone(),
                Gcra::new(client_rate, client_burst),
                Gcra::new(total_rate, total_burst),
            ));
        }
        let reads = NonZeroU32::new(settings.read_rate_limit_per_second).map(|rate| {
            let burst = NonZeroU32::new(settings.read_rate_limit_burst).unwrap_or(rate);
            Keyed::new(Quota::per_second(rate).allow_burst(burst))
        });
        Ok(Self {
            anonymous: default_client.map(Keyed::new),
            keys,
            reads,
            auth_failures: NonZeroU32::new(settings.auth_failures_per_minute).map(Strikes::new),
            shapes,
            global: None,
        })
    }

    /// Shares the event limits through `shared`: each request then takes from buckets every
    /// instance sees (one round trip), and the in-process limiters decide only while `shared`
    /// does not answer. Without any event limit configured, nothing changes (and nothing is
    /// ever sent to `shared`).
    #[must_use]
    pub fn with_shared(mut self, shared: SharedLimits) -> Self {
        let any = self.shapes.anonymous.is_some()
            || self
                .shapes
                .keys
                .iter()
                .any(|(_, c, t)| c.is_some() || t.is_some());
        if any {
            self.global = Some(Global {
                buckets: shared.buckets,
                timeout: shared.timeout,
                fallback: Fallback::new(shared.fallbacks),
            });
        }
        self
    }

    /// Whether the event limits are shared (some are configured, and shared buckets given).
    pub fn is_shared(&self) -> bool {
        self.global.is_some()
    }

    /// Limits that refuse nothing, for the inbound adapters' unit tests.
    #[cfg(test)]
    pub fn unlimited() -> Self {
        Self {
            anonymous: None,
            keys: Vec::new(),
            reads: None,
            auth_failures: None,
            shapes: Shapes::default(),
            global: None,
        }
    }

    /// `Err(wait)` when `events` more events from `client` would exceed its rate (or its key's
    /// total). With shared buckets, one round trip to them, bounded by their timeout; without
    /// (or while they do not answer), decided in process without waiting.
    pub async fn admit_events(&self, client: Client, events: usize) -> Result<(), Duration> {
        let client = client.scoped();
        if let Some(global) = &self.global {
            let buckets = self.shared_buckets(client);
            if buckets.is_empty() {
                return Ok(());
            }
            if let Some(verdict) = global.take(&buckets, events).await {
                return verdict;
            }
        }
        self.check_events(client, events)
    }

    /// The shared buckets `client`'s events take from, each key tagged (`{...}`) with the API
    /// key (or, without keys, the address), so the buckets of one request share a Redis
    /// Cluster slot. The client's own bucket comes first.
    fn shared_buckets(&self, client: Client) -> Vec<(String, Gcra)> {
        let mut buckets = Vec::with_capacity(2);
        match client.key {
            None => {
                if let Some(g) = self.shapes.anonymous {
                    buckets.push((format!("{{a:{}}}", client.ip), g));
                }
            }
            Some(key) => {
                if let Some((name, per_client, total)) = self.shapes.keys.get(key.index()) {
                    if let Some(g) = per_client {
                        buckets.push((format!("{{k:{name}}}:{}", client.ip), *g));
                    }
                    if let Some(g) = total {
                        buckets.push((format!("{{k:{name}}}:total"), *g));
                    }
                }
            }
        }
        buckets
    }

    /// The in-process decision (the embedded default, and the fallback of shared buckets):
    /// `Err(wait)` when `events` more events from `client` would exceed its rate (or its key's
    /// total).
    pub fn check_events(&self, client: Client, events: usize) -> Result<(), Duration> {
        let client = client.scoped();
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
        check_keyed(self.reads.as_ref(), &client.scoped(), NonZeroU32::MIN)
    }

    /// `Err(wait)` while `ip` has used up its failed authentications: then it is refused
    /// before its key is even looked at.
    pub fn auth_blocked(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.auth_failures {
            Some(strikes) => strikes.blocked(limit_scope(ip), Instant::now()),
            None => Ok(()),
        }
    }

    /// Counts a failed authentication from `ip`.
    pub fn auth_failed(&self, ip: IpAddr) {
        if let Some(strikes) = &self.auth_failures {
            strikes.strike(limit_scope(ip), Instant::now());
        }
    }
}

/// What [`RateLimits::with_shared`] needs: the buckets, how long to wait for them, and the
/// counter of decisions taken locally because they did not answer.
pub struct SharedLimits {
    pub buckets: Arc<dyn SharedBuckets>,
    pub timeout: Duration,
    pub fallbacks: Counter,
}

/// Shared event buckets, and what happens while they do not answer.
struct Global {
    buckets: Arc<dyn SharedBuckets>,
    timeout: Duration,
    fallback: Fallback,
}

impl Global {
    /// The shared verdict, or `None` when the local limiters must decide (the buckets failed
    /// or were slow just now, or recently).
    async fn take(
        &self,
        buckets: &[(String, Gcra)],
        events: usize,
    ) -> Option<Result<(), Duration>> {
        if self.fallback.resting(Instant::now()) {
            self.fallback.count.inc();
            return None;
        }
        let n = u32::try_from(events).unwrap_or(u32::MAX);
        let cause = match tokio::time::timeout(self.timeout, self.buckets.take(buckets, n)).await {
            Ok(Ok(wait)) => {
                self.fallback.recovered();
                return Some(wait.map_or(Ok(()), Err));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        self.fallback.failed(Instant::now(), &cause);
        None
    }
}

/// While the shared buckets fail, requests are limited in process: a failure starts a rest
/// of [`Fallback::REST`] during which the buckets are not asked (so a slow Redis costs one
/// timeout a second, not one per request). Every locally decided request is counted; a
/// warning goes out at most every [`Fallback::LOG_EVERY`], so a Redis that comes and goes
/// does not flood the log.
struct Fallback {
    count: Counter,
    origin: Instant,
    /// Milliseconds after `origin` before which the buckets are not asked.
    rest_until_ms: AtomicU64,
    down: AtomicBool,
    /// Milliseconds after `origin` of the last warning, plus one (0: none yet).
    warned_ms: AtomicU64,
}

impl Fallback {
    const REST: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    fn new(count: Counter) -> Self {
        Self {
            count,
            origin: Instant::now(),
            rest_until_ms: AtomicU64::new(0),
            down: AtomicBool::new(false),
            warned_ms: AtomicU64::new(0),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    fn resting(&self, now: Instant) -> bool {
        self.millis(now) < self.rest_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, now: Instant, cause: &str) {
        self.count.inc();
        let at = self.millis(now);
        self.rest_until_ms
            .store(self.millis(now + Self::REST), Ordering::Relaxed);
        self.down.store(true, Ordering::Relaxed);
        if self.warning_due(at) {
            tracing::warn!(
                cause,
                "shared rate limits unavailable: limiting each instance on its own until they \
                 answer (counted in cartstream_rate_limit_fallbacks_total; logged at most \
                 every 10 s)"
            );
        }
    }

    /// Whether a failure `at` (ms after `origin`) is to be logged: the first, and then one
    /// every [`Fallback::LOG_EVERY`]; claimed by one caller only.
    fn warning_due(&self, at: u64) -> bool {
        let every = u64::try_from(Self::LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
        let last = self.warned_ms.load(Ordering::Relaxed);
        (last == 0 || at + 1 >= last.saturating_add(every))
            && self
                .warned_ms
                .compare_exchange(last, at + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn recovered(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            tracing::debug!("shared rate limits answer again");
        }
    }
}

fn count(events: usize) -> NonZeroU32 {
    NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
}

fn check_keyed<K: std::hash::Hash + Eq + Clone>(
    limiter: Option<&Keyed<K>>,
    key: &K,
    n: NonZeroU32,
) -> Result<(), Duration> {
    let Some(Keyed { limiter, sweep }) = limiter else {
        return Ok(());
    };
    sweep.sweep_if_due(limiter.len(), || {
        limiter.retain_recent();
        limiter.len()
    });
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
    /// When addresses whose buckets have refilled are next forgotten.
    sweep: SweepMark,
}

impl Strikes {
    fn new(per_minute: NonZeroU32) -> Self {
        Self {
            per_minute: f64::from(per_minute.get()),
            buckets: Mutex::new(HashMap::new()),
            tracked: AtomicUsize::new(0),
            sweep: SweepMark::new(RETAIN_ABOVE),
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
        self.sweep.sweep_if_due(buckets.len(), || {
            let full = self.per_minute;
            buckets.retain(|_, b| self.refilled(*b, now) < full);
            buckets.len()
        });
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

    /// An ingest key named and valued `name`, with the default limits.
    pub(super) fn key(name: &str) -> KeySettings {
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
    fn every_limit_counts_an_ipv6_client_by_its_64() {
        let (r, _) = limits(|s| {
            s.rate_limit_per_second = 1;
            s.rate_limit_burst = 3;
            s.max_batch_events = 1;
            s.read_rate_limit_per_second = 1;
            s.read_rate_limit_burst = 1;
            s.auth_failures_per_minute = 1;
        });
        let at = |ip: &str| Client {
            key: None,
            ip: ip.parse().unwrap(),
        };
        assert!(r.check_events(at("2001:db8:1:2::1"), 3).is_ok());
        assert!(
            r.check_events(at("2001:db8:1:2::dead:beef"), 1).is_err(),
            "another address of the same /64 shares the bucket"
        );
        assert!(
            r.check_events(at("2001:db8:1:3::1"), 3).is_ok(),
            "the next /64"
        );

        assert!(r.check_read(at("2001:db8:7::1")).is_ok());
        assert!(r.check_read(at("2001:db8:7::2")).is_err());

        r.auth_failed("2001:db8:9::1".parse().unwrap());
        assert!(r.auth_blocked("2001:db8:9::2".parse().unwrap()).is_err());
        assert!(r.auth_blocked("2001:db8:a::1".parse().unwrap()).is_ok());
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

#[cfg(test)]
mod shared_tests {
    use super::tests::key;
    use super::*;
    use crate::domain::gcra;
    use crate::ports::{MockSharedBuckets, PortError};
    use std::collections::HashMap;

    /// Buckets in memory on a clock the test moves: what Redis does, without Redis.
    #[derive(Default)]
    struct FakeBuckets {
        now_us: AtomicU64,
        tats: Mutex<HashMap<String, u64>>,
        calls: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl SharedBuckets for FakeBuckets {
        async fn take(
            &self,
            buckets: &[(String, Gcra)],
            n: u32,
        ) -> Result<Option<Duration>, PortError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let mut tats = self.tats.lock().unwrap();
            let now = self.now_us.load(Ordering::Relaxed);
            let current: Vec<_> = buckets
                .iter()
                .map(|(k, g)| (*g, tats.get(k).copied().unwrap_or(0)))
                .collect();
            match gcra::take_all(&current, now, u64::from(n)) {
                Ok(new) => {
                    for ((k, _), t) in buckets.iter().zip(new) {
                        tats.insert(k.clone(), t);
                    }
                    Ok(None)
                }
                Err(wait) => Ok(Some(Duration::from_micros(wait))),
            }
        }
    }

    /// Two instances' limits (same settings) over one set of buckets, and the key `shop`.
    fn two_instances(buckets: &Arc<FakeBuckets>) -> (RateLimits, RateLimits, Option<KeyId>) {
        let mut shop = key("shop");
        shop.rate_limit_total_per_second = Some(10);
        shop.rate_limit_total_burst = Some(6);
        let mut s = Settings {
            rate_limit_per_second: 10,
            rate_limit_burst: 4,
            max_batch_events: 1,
            ..Settings::default()
        };
        s.keys = vec![shop];
        let access = Access::from_settings(&s).unwrap();
        let build = || {
            RateLimits::new(&s, &access)
                .unwrap()
                .with_shared(SharedLimits {
                    buckets: Arc::clone(buckets) as Arc<dyn SharedBuckets>,
                    timeout: Duration::from_millis(50),
                    fallbacks: Counter::default(),
                })
        };
        (build(), build(), access.lookup("shop"))
    }

    fn at(key: Option<KeyId>, last: u8) -> Client {
        Client {
            key,
            ip: IpAddr::from([10, 0, 0, last]),
        }
    }

    #[tokio::test]
    async fn a_shared_bucket_is_named_by_the_ipv6_clients_64() {
        let buckets = Arc::new(FakeBuckets::default());
        let (a, b, _) = two_instances(&buckets);
        let v6 = |ip: &str| Client {
            key: None,
            ip: ip.parse().unwrap(),
        };
        assert!(a.admit_events(v6("2001:db8:5:6::1"), 4).await.is_ok());
        assert!(
            b.admit_events(v6("2001:db8:5:6:1:2:3:4"), 1).await.is_err(),
            "the same /64 on another instance"
        );
        let names: Vec<String> = buckets.tats.lock().unwrap().keys().cloned().collect();
        assert_eq!(names, ["{a:2001:db8:5:6::}"]);
    }

    #[tokio::test]
    async fn instances_share_one_bucket_per_client_and_one_total_per_key() {
        let buckets = Arc::new(FakeBuckets::default());
        let (a, b, shop) = two_instances(&buckets);
        assert!(a.is_shared());
        // The client's burst is 4, wherever it sends.
        assert!(a.admit_events(at(shop, 1), 3).await.is_ok());
        assert!(b.admit_events(at(shop, 1), 1).await.is_ok());
        let wait = b.admit_events(at(shop, 1), 1).await.unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // The key's total (6) is shared by its clients on both instances; a refused request
        // takes nothing from the client's own bucket.
        assert!(a.admit_events(at(shop, 2), 2).await.is_ok());
        assert!(b.admit_events(at(shop, 3), 1).await.is_err());
        // 100 ms later, one more token in every bucket.
        buckets.now_us.fetch_add(100_000, Ordering::Relaxed);
        assert!(b.admit_events(at(shop, 3), 1).await.is_ok());
        assert!(a.admit_events(at(shop, 2), 1).await.is_err());
        // Locally nothing was taken: the in-process limiters are the fallback only.
        assert!(a.check_events(at(shop, 1), 4).is_ok());
    }

    #[tokio::test]
    async fn without_event_limits_nothing_is_shared_or_asked() {
        let s = Settings::default();
        let access = Access::from_settings(&s).unwrap();
        let mut mock = MockSharedBuckets::new();
        mock.expect_take().never();
        let r = RateLimits::new(&s, &access)
            .unwrap()
            .with_shared(SharedLimits {
                buckets: Arc::new(mock),
                timeout: Duration::from_millis(50),
                fallbacks: Counter::default(),
            });
        assert!(!r.is_shared());
        assert!(r.admit_events(at(None, 1), 1000).await.is_ok());
    }

    #[test]
    fn the_buckets_of_one_request_share_a_hash_tag() {
        let buckets = Arc::new(FakeBuckets::default());
        let (a, _, shop) = two_instances(&buckets);
        let keys: Vec<String> = a
            .shared_buckets(at(shop, 7))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["{k:shop}:10.0.0.7", "{k:shop}:total"]);
    }

    fn failing(calls: usize, answer: fn() -> Result<Option<Duration>, PortError>) -> RateLimits {
        let s = Settings {
            rate_limit_per_second: 1,
            rate_limit_burst: 2,
            max_batch_events: 1,
            ..Settings::default()
        };
        let access = Access::from_settings(&s).unwrap();
        let mut mock = MockSharedBuckets::new();
        mock.expect_take()
            .times(calls)
            .returning(move |_, _| answer());
        RateLimits::new(&s, &access)
            .unwrap()
            .with_shared(SharedLimits {
                buckets: Arc::new(mock),
                timeout: Duration::from_millis(50),
                fallbacks: Counter::default(),
            })
    }

    fn fallbacks(r: &RateLimits) -> u64 {
        r.global.as_ref().unwrap().fallback.count.get()
    }

    #[tokio::test]
    async fn while_redis_fails_the_local_limit_decides_and_redis_rests() {
        let r = failing(1, || Err(PortError::Unavailable("redis down".into())));
        let c = at(None, 1);
        // Fail open, but not unlimited: the local bucket (burst 2) still applies.
        assert!(r.admit_events(c, 2).await.is_ok());
        assert!(r.admit_events(c, 1).await.is_err());
        assert_eq!(fallbacks(&r), 2);
        // Within the rest, Redis is not asked again (the mock allows one call).
        assert!(r
            .global
            .as_ref()
            .unwrap()
            .fallback
            .down
            .load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn after_the_rest_redis_is_asked_again_and_its_answer_counts() {
        let r = failing(2, || Ok(Some(Duration::from_millis(700))));
        let global = r.global.as_ref().unwrap();
        global.fallback.failed(Instant::now(), "test");
        assert!(global.fallback.resting(Instant::now()));
        assert!(!global.fallback.resting(Instant::now() + Fallback::REST));
        global.fallback.rest_until_ms.store(0, Ordering::Relaxed);
        let c = at(None, 1);
        assert_eq!(r.admit_events(c, 1).await, Err(Duration::from_millis(700)));
        assert!(!global.fallback.down.load(Ordering::Relaxed), "recovered");
        assert_eq!(r.admit_events(c, 1).await, Err(Duration::from_millis(700)));
        assert_eq!(fallbacks(&r), 1);
    }

    #[test]
    fn a_flapping_redis_is_logged_at_most_every_ten_seconds() {
        let f = Fallback::new(Counter::default());
        assert!(f.warning_due(0), "the first failure");
        assert!(!f.warning_due(1_000));
        assert!(!f.warning_due(9_999));
        assert!(f.warning_due(10_000));
        assert!(!f.warning_due(10_001));
    }

    /// Shared buckets that never answer.
    struct Stalled;

    #[async_trait::async_trait]
    impl SharedBuckets for Stalled {
        async fn take(&self, _: &[(String, Gcra)], _: u32) -> Result<Option<Duration>, PortError> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_redis_is_given_up_after_the_timeout() {
        let s = Settings {
            rate_limit_per_second: 1,
            rate_limit_burst: 2,
            max_batch_events: 1,
            ..Settings::default()
        };
        let access = Access::from_settings(&s).unwrap();
        let r = RateLimits::new(&s, &access)
            .unwrap()
            .with_shared(SharedLimits {
                buckets: Arc::new(Stalled),
                timeout: Duration::from_millis(50),
                fallbacks: Counter::default(),
            });
        let started = tokio::time::Instant::now();
        assert!(r.admit_events(at(None, 1), 1).await.is_ok());
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert_eq!(fallbacks(&r), 1);
    }
}
