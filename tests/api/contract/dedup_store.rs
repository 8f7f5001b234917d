//! The `DedupStore` contract: claims, confirmations and releases answer the same on every
//! store. Runs on the embedded store (dedup state in its own table), Redis and Redis Cluster.

use crate::backends::{
    redis_cluster_or_skip, redis_cluster_prefix, redis_prefix, redis_url_or_skip,
};
use cartstream::adapters::outbound::embedded::{DedupMode, EmbeddedStore};
use cartstream::adapters::outbound::redis::cluster::{
    RedisClusterDedupConfig, RedisClusterDedupStore,
};
use cartstream::adapters::outbound::redis::{RedisDedupConfig, RedisDedupStore};
use cartstream::domain::{DedupKey, EventId};
use cartstream::ports::{Claim, Clock, DedupStore, Lease};
use chrono::{DateTime, Utc};
use std::any::Any;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const HOLD: Duration = Duration::from_secs(60);
const WINDOW: Duration = Duration::from_secs(60);

/// A store under test.
pub struct Subject {
    store: Arc<dyn DedupStore>,
    /// The store's clock, when the test can move it.
    clock: Option<Arc<ManualClock>>,
    /// What must live as long as the store (its directory).
    _keep: Box<dyn Any + Send>,
}

impl Subject {
    /// Lets `d` pass for the store's holds and windows: the embedded store's injected clock
    /// is moved; Redis expires keys on its own clock, so for Redis this is a real wait.
    async fn let_pass(&self, d: Duration) {
        match &self.clock {
            Some(clock) => clock.advance(d),
            None => tokio::time::sleep(d).await,
        }
    }
}

/// A clock that stands still until moved.
struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += chrono::Duration::from_std(d).unwrap();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

async fn embedded() -> Option<Subject> {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock(Mutex::new(Utc::now())));
    let store = EmbeddedStore::open_with(dir.path(), DedupMode::Table, clock.clone()).unwrap();
    Some(Subject {
        store: Arc::new(store),
        clock: Some(clock),
        _keep: Box::new(dir),
    })
}

async fn redis() -> Option<Subject> {
    let mut config = RedisDedupConfig::new(redis_url_or_skip().await?);
    config.key_prefix = redis_prefix();
    Some(Subject {
        store: Arc::new(RedisDedupStore::new(config).unwrap()),
        clock: None,
        _keep: Box::new(()),
    })
}

async fn redis_cluster() -> Option<Subject> {
    let mut config = RedisClusterDedupConfig::new(redis_cluster_or_skip().await?);
    config.key_prefix = redis_cluster_prefix();
    Some(Subject {
        store: Arc::new(RedisClusterDedupStore::new(config).unwrap()),
        clock: None,
        _keep: Box::new(()),
    })
}

/// Event keys in 16 slots only.
async fn redis_cluster_buckets() -> Option<Subject> {
    let mut config = RedisClusterDedupConfig::new(redis_cluster_or_skip().await?);
    config.key_prefix = redis_cluster_prefix();
    config.buckets = 16;
    Some(Subject {
        store: Arc::new(RedisClusterDedupStore::new(config).unwrap()),
        clock: None,
        _keep: Box::new(()),
    })
}

contract_tests! {
    adapters: [embedded, redis, redis_cluster, redis_cluster_buckets],
    checks: [
        claims_tell_new_in_flight_and_duplicate_apart,
        release_frees_the_leases_keys_and_never_a_confirmed_or_foreign_one,
        an_expired_hold_frees_the_key_and_the_late_holder_cannot_take_it_back,
        the_window_expires,
        an_empty_slice_is_answered,
        check_answers,
    ],
}

pub fn keys(ks: &[&str]) -> Vec<DedupKey> {
    ks.iter()
        .map(|k| DedupKey::from(&EventId::parse(k).unwrap()))
        .collect()
}

/// A fresh lease, as the committer takes one per group.
pub fn lease() -> Lease {
    lease_for(HOLD, WINDOW)
}

pub fn lease_for(hold: Duration, window: Duration) -> Lease {
    Lease {
        id: rand::random(),
        hold,
        window,
    }
}

async fn claims_tell_new_in_flight_and_duplicate_apart(s: &Subject) {
    let store = &*s.store;
    let (first, second) = (lease(), lease());
    assert_eq!(
        store.claim(&first, &keys(&["a", "b"])).await.unwrap(),
        [Claim::New, Claim::New]
    );
    assert_eq!(
        store.claim(&second, &keys(&["b", "c"])).await.unwrap(),
        [Claim::InFlight, Claim::New],
        "a held key is in flight, not a duplicate"
    );
    store.confirm(&first, &keys(&["a", "b"])).await.unwrap();
    assert_eq!(
        store
            .claim(&lease(), &keys(&["a", "b", "c", "d"]))
            .await
            .unwrap(),
        [
            Claim::Duplicate,
            Claim::Duplicate,
            Claim::InFlight,
            Claim::New
        ],
        "one confirmation answers for every key of its lease"
    );
}

async fn release_frees_the_leases_keys_and_never_a_confirmed_or_foreign_one(s: &Subject) {
    let store = &*s.store;
    let (confirmed, released, other) = (lease(), lease(), lease());
    store.claim(&confirmed, &keys(&["k-1"])).await.unwrap();
    store.confirm(&confirmed, &keys(&["k-1"])).await.unwrap();
    store.claim(&other, &keys(&["k-3"])).await.unwrap();
    assert_eq!(
        store
            .claim(&released, &keys(&["k-1", "k-2", "k-3"]))
            .await
            .unwrap(),
        [Claim::Duplicate, Claim::New, Claim::InFlight]
    );
    // Given every key, as a careless caller might: only k-2 is the lease's to free.
    store
        .release(&released, &keys(&["k-1", "k-2", "k-3"]))
        .await
        .unwrap();
    store.release(&confirmed, &keys(&["k-1"])).await.unwrap();
    assert_eq!(
        store
            .claim(&lease(), &keys(&["k-1", "k-2", "k-3"]))
            .await
            .unwrap(),
        [Claim::Duplicate, Claim::New, Claim::InFlight],
        "the confirmed key survives release; the released one is free; another lease's stays held"
    );
}

async fn an_expired_hold_frees_the_key_and_the_late_holder_cannot_take_it_back(s: &Subject) {
    let store = &*s.store;
    let ks = keys(&["k-1"]);
    let crashed = lease_for(Duration::from_millis(100), WINDOW);
    assert_eq!(store.claim(&crashed, &ks).await.unwrap(), [Claim::New]);
    s.let_pass(Duration::from_millis(600)).await;
    let taker = lease();
    assert_eq!(
        store.claim(&taker, &ks).await.unwrap(),
        [Claim::New],
        "taken over"
    );
    // The first holder wakes up and gives up: the key is the taker's now.
    store.release(&crashed, &ks).await.unwrap();
    assert_eq!(store.claim(&lease(), &ks).await.unwrap(), [Claim::InFlight]);
    store.confirm(&taker, &ks).await.unwrap();
    assert_eq!(
        store.claim(&lease(), &ks).await.unwrap(),
        [Claim::Duplicate]
    );
}

async fn the_window_expires(s: &Subject) {
    let store = &*s.store;
    let ks = keys(&["k-1"]);
    let short = lease_for(HOLD, Duration::from_millis(300));
    store.claim(&short, &ks).await.unwrap();
    store.confirm(&short, &ks).await.unwrap();
    assert_eq!(
        store.claim(&lease(), &ks).await.unwrap(),
        [Claim::Duplicate]
    );
    s.let_pass(Duration::from_millis(900)).await;
    assert_eq!(store.claim(&lease(), &ks).await.unwrap(), [Claim::New]);
}

async fn an_empty_slice_is_answered(s: &Subject) {
    let store = &*s.store;
    assert_eq!(store.claim(&lease(), &[]).await.unwrap(), []);
    store.confirm(&lease(), &[]).await.unwrap();
    store.release(&lease(), &[]).await.unwrap();
}

async fn check_answers(s: &Subject) {
    s.store.check().await.unwrap();
}
