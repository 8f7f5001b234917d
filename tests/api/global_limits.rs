//! Rate limits shared by every instance through Redis: the Lua script against the GCRA
//! arithmetic it mirrors, two servers holding one rate together, and failing open (to the
//! per-instance limit, counted) while Redis is unreachable, and the same script on a Redis
//! Cluster.

use crate::backends::{random_suffix, redis_prefix, redis_url_or_skip, DEAD_REDIS_URL};
use crate::helpers::*;
use cartstream::adapters::outbound::redis::cluster::scripts::ClusterScripts;
use cartstream::adapters::outbound::redis::rate::{RedisBuckets, ScriptRunner};
use cartstream::adapters::outbound::redis::Lua;
use cartstream::app::config::RateLimitScope;
use cartstream::domain::gcra::{self, Gcra};
use cartstream::ports::{PortError, SharedBuckets};
use futures_util::SinkExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn rl_prefix() -> String {
    format!("gl-test:{}:", random_suffix())
}

#[tokio::test]
async fn the_redis_script_does_the_gcra_arithmetic_exactly() {
    let Some(url) = redis_url_or_skip().await else {
        return;
    };
    let two = Duration::from_secs(2);
    let redis = RedisBuckets::single(&url, rl_prefix(), two, two).unwrap();
    let client = Gcra::new(7, 12).unwrap();
    let total = Gcra::new(3, 20).unwrap();
    let names = ["{k:t}:1.2.3.4".to_owned(), "{k:t}:total".to_owned()];
    let mut tats = [0u64; 2];
    let mut now: u64 = 1_764_000_000_000_000;
    // A fixed pseudo-random schedule: bursts, pauses, takes of 1 to 8, one or both buckets.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let (mut taken, mut refused) = (0, 0);
    for _ in 0..400 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        now += (seed >> 33) % 400_000;
        let n = 1 + (seed >> 20) % 8;
        let both = !seed.is_multiple_of(3);
        let shapes: Vec<(String, Gcra)> = if both {
            vec![(names[0].clone(), client), (names[1].clone(), total)]
        } else {
            vec![(names[0].clone(), client)]
        };
        let current: Vec<(Gcra, u64)> = shapes
            .iter()
            .enumerate()
            .map(|(i, (_, g))| (*g, tats[i]))
            .collect();
        let want = gcra::take_all(&current, now, n);
        let got = redis
            .take_at(&shapes, u32::try_from(n).unwrap(), Some(now))
            .await
            .unwrap();
        match want {
            Ok(new) => {
                assert_eq!(got, None, "at {now} taking {n}");
                tats[..new.len()].copy_from_slice(&new);
                taken += 1;
            }
            Err(wait) => {
                assert_eq!(
                    got,
                    Some(Duration::from_micros(wait)),
                    "at {now} taking {n}"
                );
                refused += 1;
            }
        }
    }
    assert!(
        taken > 50 && refused > 50,
        "{taken} taken, {refused} refused"
    );
}

/// Accepted events, counted from HTTP batch answers and WebSocket batch acks.
#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    limited: AtomicU64,
}

async fn http_sender(app: Arc<TestApp>, key: &'static str, until: Instant, tally: Arc<Tally>) {
    while Instant::now() < until {
        let events: Vec<Value> = (0..10).map(|_| item_added(&unique("g"))).collect();
        let r = app
            .http
            .post(app.url("/events/batch"))
            .header("X-API-Key", key)
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        match status {
            200 | 202 | 207 => {
                let n = body["accepted"].as_u64().expect("accepted count");
                tally.accepted.fetch_add(n, Ordering::Relaxed);
            }
            429 => {
                tally.limited.fetch_add(1, Ordering::Relaxed);
            }
            other => panic!("{other}: {body}"),
        }
    }
}

async fn ws_sender(app: Arc<TestApp>, key: &'static str, until: Instant, tally: Arc<Tally>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}?apiKey={key}", app.ws_url()))
        .await
        .unwrap();
    recv_json(&mut ws).await;
    while Instant::now() < until {
        let events: Vec<Value> = (0..10).map(|_| item_added(&unique("w"))).collect();
        send_json(
            &mut ws,
            &json!({"type": "cart_event_batch", "requestId": "r", "data": events}),
        )
        .await;
        let reply = recv_json(&mut ws).await;
        match reply["type"].as_str() {
            Some("batch_ack") => {
                let n = reply["accepted"].as_u64().expect("accepted count");
                tally.accepted.fetch_add(n, Ordering::Relaxed);
            }
            Some("error") if reply["code"] == "rate_limited" => {
                tally.limited.fetch_add(1, Ordering::Relaxed);
            }
            _ => panic!("{reply}"),
        }
    }
    let _ = ws.send(Message::Close(None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_hold_one_rate_together() {
    let Some(url) = redis_url_or_skip().await else {
        return;
    };
    let (dedup_prefix, rl) = (redis_prefix(), rl_prefix());
    hold_one_rate_together(|s| {
        s.redis_url = Some(url.clone());
        s.redis_key_prefix = dedup_prefix.clone();
        s.rate_limit_key_prefix = rl.clone();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_redis_cluster_hold_one_rate_together() {
    let Some(seeds) = crate::backends::redis_cluster_or_skip().await else {
        return;
    };
    let (dedup_prefix, rl) = (gl2_prefix(), gl2_prefix());
    hold_one_rate_together(|s| {
        s.redis_cluster_nodes = seeds.clone();
        s.redis_key_prefix = dedup_prefix.clone();
        s.rate_limit_key_prefix = rl.clone();
    })
    .await;
}

/// A key prefix of the cluster rate tests no other test (or run) uses.
fn gl2_prefix() -> String {
    format!("gl2-test:{}:", random_suffix())
}

/// Two servers on the Redis that `redis` configures, three HTTP and one WebSocket sender on
/// each, all on one API key: together they get the key's rate, not twice it.
async fn hold_one_rate_together(redis: impl Fn(&mut cartstream::app::config::Settings)) {
    const RATE: u64 = 200;
    const BURST: u64 = 40;
    let configure = |s: &mut cartstream::app::config::Settings| {
        s.api_keys = vec!["k-global".into()];
        s.rate_limit_per_second = u32::try_from(RATE).unwrap();
        s.rate_limit_burst = u32::try_from(BURST).unwrap();
        s.max_batch_events = 10;
        // The default 50 ms is for a Redis on a quiet network; this machine runs debug builds
        // of two servers and eight clients on two shared cores. Fallbacks are checked below.
        s.rate_limit_redis_timeout = Duration::from_millis(250);
        redis(s);
    };
    let a = Arc::new(TestApp::spawn_with(configure).await);
    let b = Arc::new(TestApp::spawn_with(configure).await);
    // One event through each first, so the clock below does not start on cold connections
    // (a cluster's slot map, its masters); then the bucket refills to its burst.
    for app in [&a, &b] {
        let events = vec![item_added(&unique("warm"))];
        let r = app
            .http
            .post(app.url("/events/batch"))
            .header("X-API-Key", "k-global")
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(4);
    let mut senders = Vec::new();
    for app in [&a, &b] {
        for _ in 0..3 {
            senders.push(tokio::spawn(http_sender(
                Arc::clone(app),
                "k-global",
                until,
                Arc::clone(&tally),
            )));
        }
        senders.push(tokio::spawn(ws_sender(
            Arc::clone(app),
            "k-global",
            until,
            Arc::clone(&tally),
        )));
    }
    for s in senders {
        s.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = tally.accepted.load(Ordering::Relaxed);
    let limited = tally.limited.load(Ordering::Relaxed);
    // Every send that started before `until` may have been granted: the rate over the whole
    // time, plus the burst.
    #[allow(clippy::cast_precision_loss)] // small counts
    let expected = RATE as f64 * elapsed + BURST as f64;
    #[allow(clippy::cast_precision_loss)]
    let ratio = accepted as f64 / expected;
    eprintln!(
        "global limit: {accepted} accepted, {limited} refused in {elapsed:.2} s on two \
         instances; allowed {expected:.0} (ratio {ratio:.3})"
    );
    // Every check was decided in Redis, none by an instance alone (which would let more in).
    for app in [&a, &b] {
        let (_, metrics) = app.get_text("/metrics").await;
        assert!(
            metrics.contains("cartstream_rate_limit_fallbacks_total 0"),
            "{metrics}"
        );
    }
    assert!(limited > 0, "the clients did push past the limit");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "accepted {accepted}, expected {expected:.0} (ratio {ratio:.3})"
    );
}

#[tokio::test]
async fn with_redis_unreachable_the_local_limit_applies_and_fallbacks_are_counted() {
    let app = TestApp::spawn_with_ports(
        |s| {
            // Rate limits only: the dedup and event stores are embedded (the ports below).
            s.redis_url = Some(DEAD_REDIS_URL.into());
            s.rate_limit_scope = Some(RateLimitScope::Global);
            s.rate_limit_key_prefix = rl_prefix();
            s.rate_limit_per_second = 1;
            s.rate_limit_burst = 20;
            s.max_batch_events = 10;
        },
        embedded_ports,
    )
    .await;
    let batch = || json!({"events": (0..10).map(|_| item_added(&unique("d"))).collect::<Vec<_>>()});
    let started = Instant::now();
    // Fail open: accepted while Redis is down...
    assert_eq!(app.post_batch(&batch()).await.0, 200);
    assert_eq!(app.post_batch(&batch()).await.0, 200);
    // ...but not unlimited: this instance's own bucket (burst 20) is empty.
    assert_eq!(app.post_batch(&batch()).await.0, 429);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a refused connection is given up at once, not after a timeout"
    );
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains("cartstream_rate_limit_fallbacks_total 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn global_scope_without_redis_is_refused_at_startup() {
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = test_settings(tmp.path());
    settings.rate_limit_scope = Some(RateLimitScope::Global);
    settings.rate_limit_per_second = 10;
    settings.rate_limit_burst = 500;
    let err = cartstream::app::startup::Application::build(settings)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("CARTSTREAM_RATE_LIMIT_SCOPE"),
        "{err}"
    );
}

/// The seed nodes of the Redis Cluster to test against (`scripts/cluster-services.sh start`),
/// or `None` (after a loud message) when it does not answer outside CI.
async fn redis_cluster_or_skip() -> Option<redis::cluster_async::ClusterConnection> {
    let nodes = std::env::var("CARTSTREAM_TEST_REDIS_CLUSTER_NODES").unwrap_or_else(|_| {
        "redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103".to_owned()
    });
    let connect = async {
        let client = redis::cluster::ClusterClient::new(nodes.split(',').collect::<Vec<_>>())?;
        let mut conn = client.get_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    };
    let cause = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(conn)) => return Some(conn),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 5 s".to_owned(),
    };
    let msg = format!(
        "Redis Cluster not reachable at {nodes} ({cause}); run scripts/cluster-services.sh start"
    );
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI=true and {msg}"
    );
    crate::backends::loud_skip(&msg);
    None
}

/// Scripts run on whichever cluster node owns their keys' slot (the cluster client routes
/// EVALSHA by its first key and follows MOVED/ASK).
struct ClusterRunner(redis::cluster_async::ClusterConnection);

#[async_trait::async_trait]
impl ScriptRunner for ClusterRunner {
    async fn eval(
        &self,
        script: &Lua,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<i64>, PortError> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        script
            .invoke(&mut self.0.clone(), &keys, &args)
            .await
            .map_err(|e| PortError::Unavailable(e.to_string()))
    }

    fn one_slot_per_call(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn on_a_redis_cluster_each_request_is_one_script_on_the_node_of_its_key() {
    let Some(conn) = redis_cluster_or_skip().await else {
        return;
    };
    let buckets = RedisBuckets::over(Arc::new(ClusterRunner(conn.clone())), rl_prefix());
    let client = Gcra::new(10, 5).unwrap();
    let total = Gcra::new(10, 8).unwrap();
    // Keys of many API keys spread over the cluster's slots (and so its nodes); the two
    // buckets of one request share a tag, so no call is refused with CROSSSLOT.
    let mut slots = std::collections::HashSet::new();
    for k in 0..30 {
        let pair = |ip: u8| {
            vec![
                (format!("{{k:key-{k}}}:10.0.0.{ip}"), client),
                (format!("{{k:key-{k}}}:total"), total),
            ]
        };
        assert_eq!(buckets.take(&pair(1), 5).await.unwrap(), None);
        let wait = buckets.take(&pair(1), 1).await.unwrap().expect("refused");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another address of the same key: its own bucket, but only 3 left in the total.
        assert!(buckets.take(&pair(2), 4).await.unwrap().is_some());
        assert_eq!(buckets.take(&pair(2), 3).await.unwrap(), None);
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("{{k:key-{k}}}"))
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        slots.insert(slot / 5462);
    }
    assert_eq!(
        slots.len(),
        3,
        "the keys reached all three masters' slot ranges"
    );
}

/// Batches of requests over a few keys (some sharing buckets) against the GCRA sums taken one
/// request after the other, at fixed times: what the queue sends as one call answers each
/// request as if it had come alone, in order.
async fn batches_match_the_sums(buckets: &RedisBuckets) {
    let client = Gcra::new(50, 6).unwrap();
    let total = Gcra::new(20, 10).unwrap();
    // Three keys (tags), each with two addresses and a total: 9 buckets.
    let names: Vec<(String, Gcra)> = (0..3)
        .flat_map(|k| {
            [
                (format!("{{k:b{k}}}:1"), client),
                (format!("{{k:b{k}}}:2"), client),
                (format!("{{k:b{k}}}:total"), total),
            ]
        })
        .collect();
    let mut tats = vec![0u64; names.len()];
    let mut now: u64 = 1_764_000_000_000_000;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let (mut taken, mut refused) = (0, 0);
    for _ in 0..40 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        now += (seed >> 33) % 300_000;
        let mut requests = Vec::new();
        let mut touched = Vec::new();
        for _ in 0..1 + (seed >> 50) % 12 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let key = usize::try_from((seed >> 40) % 3).unwrap();
            let addr = usize::try_from((seed >> 44) % 2).unwrap();
            let idx = [3 * key + addr, 3 * key + 2];
            let n = 1 + (seed >> 20) % 4;
            requests.push((
                idx.iter().map(|&i| names[i].clone()).collect::<Vec<_>>(),
                u32::try_from(n).unwrap(),
            ));
            touched.push((idx, n));
        }
        let got = buckets.take_many_at(&requests, Some(now)).await;
        for ((idx, n), got) in touched.into_iter().zip(got) {
            let current: Vec<(Gcra, u64)> = idx.iter().map(|&i| (names[i].1, tats[i])).collect();
            match gcra::take_all(&current, now, n) {
                Ok(new) => {
                    assert_eq!(got, Ok(None), "at {now} taking {n} from {idx:?}");
                    for (&i, t) in idx.iter().zip(new) {
                        tats[i] = t;
                    }
                    taken += 1;
                }
                Err(wait) => {
                    assert_eq!(got, Ok(Some(Duration::from_micros(wait))), "at {now}");
                    refused += 1;
                }
            }
        }
    }
    assert!(
        taken > 30 && refused > 30,
        "{taken} taken, {refused} refused"
    );
}

#[tokio::test]
async fn a_batch_of_requests_is_answered_in_order_as_the_gcra_sums_say() {
    let Some(url) = redis_url_or_skip().await else {
        return;
    };
    let two = Duration::from_secs(2);
    let prefix = format!("gl2-test:{}:", random_suffix());
    batches_match_the_sums(&RedisBuckets::single(&url, prefix, two, two).unwrap()).await;
}

#[tokio::test]
async fn on_a_redis_cluster_a_batch_is_one_call_per_slot_answered_as_the_sums_say() {
    let Some(seeds) = crate::backends::redis_cluster_or_skip().await else {
        return;
    };
    let two = Duration::from_secs(2);
    let runner = ClusterScripts::new(&seeds, two, two).unwrap();
    let prefix = format!("gl2-test:{}:", random_suffix());
    batches_match_the_sums(&RedisBuckets::over(Arc::new(runner), prefix)).await;
}
