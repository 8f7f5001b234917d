//! Rate limits shared by every instance through Redis: the Lua script against the GCRA
//! arithmetic it mirrors, two servers holding one rate together, and failing open (to the
//! per-instance limit, counted) while Redis is unreachable.

use crate::backends::{random_suffix, redis_prefix, redis_url_or_skip, DEAD_REDIS_URL};
use crate::helpers::*;
use cartstream::adapters::outbound::redis::rate::RedisBuckets;
use cartstream::app::config::RateLimitScope;
use cartstream::domain::gcra::{self, Gcra};
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
    const RATE: u64 = 200;
    const BURST: u64 = 40;
    let (dedup_prefix, rl) = (redis_prefix(), rl_prefix());
    let configure = |s: &mut cartstream::app::config::Settings| {
        s.redis_url = Some(url.clone());
        s.redis_key_prefix = dedup_prefix.clone();
        s.rate_limit_key_prefix = rl.clone();
        s.api_keys = vec!["k-global".into()];
        s.rate_limit_per_second = u32::try_from(RATE).unwrap();
        s.rate_limit_burst = u32::try_from(BURST).unwrap();
        s.max_batch_events = 10;
        // The default 50 ms is for a Redis on a quiet network; this machine runs debug builds
        // of two servers and eight clients on two shared cores. Fallbacks are checked below.
        s.rate_limit_redis_timeout = Duration::from_millis(250);
    };
    let a = Arc::new(TestApp::spawn_with(configure).await);
    let b = Arc::new(TestApp::spawn_with(configure).await);
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
