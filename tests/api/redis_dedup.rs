//! `RedisDedupStore` against a real Redis, in what is its alone: instances sharing a prefix,
//! the keys it writes, scripts, and a Redis that is down, restarted or hung. What every dedup
//! store does is in `contract::dedup_store`.

use crate::backends::{redis_prefix, redis_url_or_skip, silent_server, DEAD_REDIS_URL};
use crate::contract::dedup_store::{keys, lease, lease_for};
use crate::helpers::poll_until;
use bb8_redis::redis;
use cartstream::adapters::outbound::redis::{RedisDedupConfig, RedisDedupStore};
use cartstream::ports::{Claim, DedupStore, PortError};
use std::time::Duration;

const HOLD: Duration = Duration::from_secs(60);

fn config(url: &str, prefix: &str) -> RedisDedupConfig {
    let mut c = RedisDedupConfig::new(url);
    c.key_prefix = prefix.to_owned();
    c
}

/// A store on the test Redis under a fresh prefix, and the prefix.
async fn store() -> Option<(RedisDedupStore, String)> {
    let url = redis_url_or_skip().await?;
    let prefix = redis_prefix();
    Some((RedisDedupStore::new(config(&url, &prefix)).unwrap(), prefix))
}

async fn raw_conn() -> redis::aio::MultiplexedConnection {
    let url = redis_url_or_skip().await.unwrap();
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test]
async fn instances_sharing_a_prefix_see_each_others_claims() {
    let Some((a, prefix)) = store().await else {
        return;
    };
    let url = redis_url_or_skip().await.unwrap();
    let b = RedisDedupStore::new(config(&url, &prefix)).unwrap();
    let ks = keys(&["shared"]);
    let held = lease();
    assert_eq!(a.claim(&held, &ks).await.unwrap(), [Claim::New]);
    assert_eq!(b.claim(&lease(), &ks).await.unwrap(), [Claim::InFlight]);
    a.confirm(&held, &ks).await.unwrap();
    assert_eq!(b.claim(&lease(), &ks).await.unwrap(), [Claim::Duplicate]);
}

#[tokio::test]
async fn keys_live_under_the_prefix_and_the_lease_outlives_its_keys() {
    let Some((store, prefix)) = store().await else {
        return;
    };
    let ks = keys(&["e-1", "e-2"]);
    let day = lease_for(HOLD, Duration::from_secs(3600));
    store.claim(&day, &ks).await.unwrap();
    let mut conn = raw_conn().await;
    let id = format!("{:032x}", day.id);
    let lease_key = format!("{prefix}#{id}");
    for k in ["e-1", "e-2"] {
        let key = format!("{prefix}{k}");
        assert_eq!(get(&mut conn, &key).await.as_deref(), Some(id.as_str()));
        let ttl = pttl(&mut conn, &key).await;
        assert!(ttl > 3_500_000 && ttl <= 3_600_000, "event key ttl {ttl}");
    }
    assert_eq!(get(&mut conn, &lease_key).await.as_deref(), Some("p"));
    let ttl = pttl(&mut conn, &lease_key).await;
    assert!(ttl > 0 && ttl <= 60_000, "held lease ttl {ttl}");

    store.confirm(&day, &ks).await.unwrap();
    assert_eq!(get(&mut conn, &lease_key).await.as_deref(), Some("c"));
    let lease_ttl = pttl(&mut conn, &lease_key).await;
    let key_ttl = pttl(&mut conn, &format!("{prefix}e-1")).await;
    assert!(
        lease_ttl >= key_ttl && lease_ttl <= 3_600_000,
        "lease ttl {lease_ttl}, key ttl {key_ttl}"
    );
}

#[tokio::test]
async fn a_claim_that_finds_only_duplicates_leaves_no_lease_behind() {
    let Some((store, prefix)) = store().await else {
        return;
    };
    let ks = keys(&["d-1"]);
    let first = lease();
    store.claim(&first, &ks).await.unwrap();
    store.confirm(&first, &ks).await.unwrap();
    let again = lease();
    assert_eq!(store.claim(&again, &ks).await.unwrap(), [Claim::Duplicate]);
    let mut conn = raw_conn().await;
    assert_eq!(
        get(&mut conn, &format!("{prefix}#{:032x}", again.id)).await,
        None
    );
}

#[tokio::test]
async fn keys_written_by_earlier_versions_still_read_as_held_and_confirmed() {
    let Some((store, prefix)) = store().await else {
        return;
    };
    let mut conn = raw_conn().await;
    for (k, v) in [("old-held", "p"), ("old-confirmed", "c"), ("foreign", "x")] {
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}{k}"))
            .arg(v)
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .claim(&lease(), &keys(&["old-held", "old-confirmed", "foreign"]))
            .await
            .unwrap(),
        [Claim::InFlight, Claim::Duplicate, Claim::InFlight]
    );
}

#[tokio::test]
async fn scripts_are_reloaded_after_redis_forgets_them() {
    let Some((store, _)) = store().await else {
        return;
    };
    store.claim(&lease(), &keys(&["x"])).await.unwrap();
    let mut conn = raw_conn().await;
    // Other tests' calls meanwhile just take the EVAL fallback too.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let second = lease();
    assert_eq!(
        store.claim(&second, &keys(&["x", "y"])).await.unwrap(),
        [Claim::InFlight, Claim::New]
    );
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    store.release(&second, &keys(&["y"])).await.unwrap();
    assert_eq!(
        store.claim(&lease(), &keys(&["y"])).await.unwrap(),
        [Claim::New]
    );
}

#[tokio::test]
async fn an_empty_slice_needs_no_redis() {
    let store = RedisDedupStore::new(config(DEAD_REDIS_URL, "p:")).unwrap();
    assert_eq!(store.claim(&lease(), &[]).await.unwrap(), []);
    store.confirm(&lease(), &[]).await.unwrap();
    store.release(&lease(), &[]).await.unwrap();
}

#[tokio::test]
async fn a_store_built_while_redis_is_down_answers_unavailable_without_the_password() {
    // Building must not touch the network, so startup survives a Redis outage.
    let store = RedisDedupStore::new(config(DEAD_REDIS_URL, "p:")).unwrap();
    let ks = keys(&["k"]);
    let l = lease();
    // Generous bound: only here so a regression fails instead of hanging the suite.
    let calls = async {
        vec![
            store.claim(&l, &ks).await.map(drop),
            store.confirm(&l, &ks).await,
            store.release(&l, &ks).await,
            store.check().await,
        ]
    };
    let results = tokio::time::timeout(Duration::from_secs(60), calls)
        .await
        .expect("calls against a dead Redis must fail, not hang");
    for r in results {
        match r {
            Err(PortError::Unavailable(msg)) => {
                assert!(!msg.contains("hunter2"), "password leaked: {msg}");
                assert!(msg.contains("127.0.0.1:1"), "names the backend: {msg}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}

/// A redis-server of this test's own on a free port, so it can be stopped and restarted
/// without disturbing the shared one.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn start(port: u16) -> Option<Self> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot run redis-server ({e}); run scripts/ensure-services.sh");
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("CI=true and {msg}");
                }
                crate::backends::loud_skip(&msg);
                return None;
            }
        };
        let own = Self {
            port,
            child: Some(child),
        };
        let client = redis::Client::open(own.url()).unwrap();
        let answers = poll_until(
            Duration::from_secs(10),
            || async {
                match client.get_multiplexed_async_connection().await {
                    Ok(mut c) => redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            },
            |answers| *answers,
        )
        .await;
        assert!(
            answers,
            "own redis-server on port {port} did not answer within 10 s"
        );
        Some(own)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_store_recovers_when_redis_comes_back() {
    let port = free_port();
    let Some(mut redis) = OwnRedis::start(port).await else {
        return;
    };
    let store = RedisDedupStore::new(config(&redis.url(), "p:")).unwrap();
    assert_eq!(
        store.claim(&lease(), &keys(&["a"])).await.unwrap(),
        [Claim::New]
    );

    redis.stop();
    assert!(matches!(
        store.claim(&lease(), &keys(&["b"])).await,
        Err(PortError::Unavailable(_))
    ));
    assert!(matches!(
        store.check().await,
        Err(PortError::Unavailable(_))
    ));

    let Some(_redis) = OwnRedis::start(port).await else {
        return;
    };
    // The pooled connection broke with the old server; it must not fail calls any more.
    store.check().await.unwrap();
    assert_eq!(
        store.claim(&lease(), &keys(&["a", "b"])).await.unwrap(),
        [Claim::New, Claim::New],
        "the restarted Redis is empty"
    );
}

#[tokio::test]
async fn a_hung_redis_answers_unavailable_after_the_timeouts() {
    let addr = silent_server().await;
    let mut cfg = config(&format!("redis://:hunter2@{addr}"), "p:");
    cfg.connect_timeout = Duration::from_millis(300);
    cfg.command_timeout = Duration::from_millis(300);
    let store = RedisDedupStore::new(cfg).unwrap();
    // Generous bound: only here so a regression fails instead of hanging the suite.
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        store.claim(&lease(), &keys(&["k"])),
    )
    .await
    .expect("a hung Redis must not hang the caller");
    match result {
        Err(PortError::Unavailable(msg)) => assert!(!msg.contains("hunter2"), "{msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
