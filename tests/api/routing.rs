//! Routing end to end: the real server with routes from its configuration, a webhook receiver
//! started by the test, and the real Redis for the stream target.

use crate::backends::*;
use crate::helpers::*;
use crate::targets::{entries, now, verify_signature, Receiver, Stream};
use cartstream::adapters::outbound::targets::{RedisStreamConfig, TargetConfig, WebhookConfig};
use cartstream::app::config::{RouteSettings, Settings};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const SECRET: &str = "whsec-test";

fn webhook_route(name: &str, types: &[&str], url: &str, max_attempts: u32) -> RouteSettings {
    let mut config = WebhookConfig::new(url);
    config.secret = Some(SECRET.into());
    config.timeout = Duration::from_secs(5);
    RouteSettings {
        name: name.into(),
        event_types: types.iter().map(|t| (*t).to_owned()).collect(),
        target: TargetConfig::Webhook(config),
        batch_size: 50,
        max_attempts,
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        concurrency: 2,
    }
}

fn checkout(id: &str) -> Value {
    json!({"eventId": id, "userId": format!("user-{}", id.len() % 3), "eventType": "checkout_started",
           "timestamp": now_rfc3339(), "metadata": {"cartValue": 10.5, "itemCount": 2}})
}

/// Every event id the receiver got, checking each request's signature on the way.
fn received_ids(receiver: &Receiver) -> Vec<String> {
    let mut ids = Vec::new();
    for r in receiver.requests().iter() {
        let sig = r.header("x-cartstream-signature").expect("signed");
        assert!(
            verify_signature(SECRET.as_bytes(), sig, &r.body, now()),
            "signature verifies"
        );
        let body = r.json();
        for e in body["events"].as_array().unwrap() {
            ids.push(e["eventId"].as_str().unwrap().to_owned());
        }
    }
    ids
}

async fn routes(app: &TestApp) -> Value {
    let r = app
        .http
        .get(app.url("/routes"))
        .bearer_auth("admin-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_webhook_gets_every_matching_event_signed_retries_and_dead_letters_with_replay() {
    let receiver = Receiver::start(200).await;
    let url = receiver.url.clone();
    let app = TestApp::spawn_with(move |s: &mut Settings| {
        s.admin_key = Some("admin-1".into());
        s.routes = vec![webhook_route(
            "checkout",
            &["checkout_started", "checkout_completed"],
            &url,
            4,
        )];
    })
    .await;

    // 1. Matching events arrive, signed; others never do.
    let (mut ws, _) = app.ws().await;
    let mut matching = Vec::new();
    for i in 0..30 {
        let id = unique("rt");
        let event = if i % 3 == 0 {
            checkout(&id)
        } else {
            item_added(&id)
        };
        if i % 3 == 0 {
            matching.push(id.clone());
        }
        send_json(&mut ws, &json!({"type": "cart_event", "data": event})).await;
        assert_eq!(recv_json(&mut ws).await["status"], "accepted");
    }
    wait_until("10 deliveries", Duration::from_secs(20), || {
        received_ids(&receiver).len() >= 10
    })
    .await;
    let got: HashSet<String> = received_ids(&receiver).into_iter().collect();
    assert_eq!(
        got,
        matching.iter().cloned().collect::<HashSet<_>>(),
        "every matching event and no other"
    );
    let first = receiver.requests()[0].json();
    let event = &first["events"][0];
    assert_eq!(event["eventType"], "checkout_started");
    assert!(event["receivedAt"].is_string() && event["metadata"]["cartValue"] == 10.5);

    // 2. The receiver fails for a while: retries, then delivery.
    receiver.state.status.store(500, Ordering::SeqCst);
    let retried = unique("retry");
    assert_eq!(app.post_event(&checkout(&retried)).await.0, 202);
    wait_until("a few failed attempts", Duration::from_secs(20), || {
        receiver.requests().len() >= 10 + 2
    })
    .await;
    let r = routes(&app).await;
    assert_eq!(r["routes"][0]["state"], "retrying", "{r}");
    assert!(
        r["routes"][0]["lastError"]["message"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{r}"
    );
    receiver.state.status.store(200, Ordering::SeqCst);
    let delivered = poll_until(
        Duration::from_secs(20),
        || async {
            routes(&app).await["routes"][0]["delivered"]
                .as_u64()
                .unwrap()
        },
        |d| *d == 11,
    )
    .await;
    assert_eq!(delivered, 11, "the retried event was delivered");
    assert_eq!(routes(&app).await["routes"][0]["state"], "ok");

    // 3. It keeps failing: after max_attempts the delivery is a dead letter.
    receiver.state.status.store(503, Ordering::SeqCst);
    let doomed = unique("doomed");
    assert_eq!(app.post_event(&checkout(&doomed)).await.0, 202);
    let dead: Value = poll_until(
        Duration::from_secs(20),
        || async {
            let r = app
                .http
                .get(app.url("/dead-letters?route=checkout"))
                .bearer_auth("admin-1")
                .send()
                .await
                .unwrap();
            r.json().await.unwrap()
        },
        |dead: &Value| {
            dead["deadLetters"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
        },
    )
    .await;
    let letter = &dead["deadLetters"][0];
    assert_eq!(letter["event"]["eventId"], doomed.as_str(), "{dead}");
    assert_eq!(
        (letter["route"].as_str(), letter["attempts"].as_u64()),
        (Some("checkout"), Some(4))
    );
    assert!(letter["lastError"].as_str().unwrap().contains("503"));
    let r = routes(&app).await;
    assert_eq!(r["routes"][0]["deadLetters"], 1);

    // 4. Fixed: replay delivers it.
    receiver.requests().clear();
    receiver.state.status.store(200, Ordering::SeqCst);
    let r = app
        .http
        .post(app.url("/dead-letters/replay"))
        .bearer_auth("admin-1")
        .json(&json!({"route": "checkout"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"replayed": 1}));
    wait_until("the replayed delivery", Duration::from_secs(20), || {
        received_ids(&receiver).contains(&doomed)
    })
    .await;
    let r = poll_until(
        Duration::from_secs(20),
        || routes(&app),
        |r| r["routes"][0]["backlog"] == 0 && r["routes"][0]["state"] == "ok",
    )
    .await;
    assert_eq!(
        (
            r["routes"][0]["deadLetters"].as_u64(),
            r["routes"][0]["state"].as_str()
        ),
        (Some(0), Some("ok")),
        "{r}"
    );
    assert_eq!(
        r["routes"][0]["eventTypes"],
        json!(["checkout_completed", "checkout_started"])
    );
    assert!(r["routes"][0]["target"]
        .as_str()
        .unwrap()
        .starts_with("webhook http://127.0.0.1:"));
    assert!(!r.to_string().contains(SECRET), "no secret in /routes");

    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for prefix in [
        "cartstream_route_delivered_total{route=\"checkout\"}",
        "cartstream_route_failed_attempts_total{route=\"checkout\"}",
        "cartstream_route_dead_lettered_total{route=\"checkout\"} 1",
        "cartstream_route_delivery_latency_seconds_count{route=\"checkout\"}",
        "cartstream_route_backlog{route=\"checkout\"}",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(prefix)),
            "missing {prefix}\n{metrics}"
        );
    }
}

#[tokio::test]
async fn the_operator_api_needs_the_admin_key_and_manages_dead_letters() {
    let receiver = Receiver::start(400).await;
    let url = receiver.url.clone();
    let app = TestApp::spawn_with(move |s: &mut Settings| {
        s.admin_key = Some("admin-1".into());
        s.routes = vec![webhook_route("refused", &[], &url, 10)];
    })
    .await;
    assert_eq!(app.get_json("/routes").await.0, 401);
    assert_eq!(app.get_json("/dead-letters").await.0, 401);
    let r = app
        .http
        .get(app.url("/routes"))
        .header("X-Admin-Key", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // A 400 is a permanent refusal: dead-lettered at the first attempt.
    for _ in 0..3 {
        app.post_event(&item_added(&unique("x"))).await;
    }
    // The first page, once a second page holds the third letter.
    let (page, _) = poll_until(
        Duration::from_secs(20),
        || async {
            let page: Value = app
                .http
                .get(app.url("/dead-letters?limit=2"))
                .header("X-Admin-Key", "admin-1")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let mut second = 0;
            if page["next"].is_i64() {
                let next: Value = app
                    .http
                    .get(app.url(&format!("/dead-letters?limit=2&after={}", page["next"])))
                    .bearer_auth("admin-1")
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                second = next["deadLetters"].as_array().unwrap().len();
            }
            (page, second)
        },
        |(_, second)| *second == 1,
    )
    .await;
    let letters = page["deadLetters"].as_array().unwrap();
    assert_eq!(letters.len(), 2, "{page}");
    assert_eq!(letters[0]["attempts"], 1);
    let id = letters[0]["id"].as_i64().unwrap();
    let del = |id: i64| {
        app.http
            .delete(app.url(&format!("/dead-letters/{id}")))
            .bearer_auth("admin-1")
            .send()
    };
    assert_eq!(del(id).await.unwrap().status().as_u16(), 204);
    let again = del(id).await.unwrap();
    assert_eq!(again.status().as_u16(), 404);
    assert_eq!(again.json::<Value>().await.unwrap()["code"], "not_found");
    let r = app
        .http
        .post(app.url("/dead-letters/replay"))
        .bearer_auth("admin-1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let other = letters[1]["id"].as_i64().unwrap();
    receiver.state.status.store(200, Ordering::SeqCst);
    let r: Value = app
        .http
        .post(app.url("/dead-letters/replay"))
        .bearer_auth("admin-1")
        .json(&json!({"ids": [other, 987654]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"replayed": 1}));
}

#[tokio::test]
async fn a_redis_stream_route_gets_each_event_with_the_documented_fields() {
    let Some(redis_url) = redis_url_or_skip().await else {
        return;
    };
    let stream = Stream::new(&redis_url);
    let (key, url) = (stream.key.clone(), redis_url.clone());
    let app = TestApp::spawn_with(move |s: &mut Settings| {
        s.redis_url = Some(url);
        s.redis_key_prefix = redis_prefix();
        let mut target = RedisStreamConfig::new(key);
        target.maxlen = 1000;
        s.routes = vec![RouteSettings {
            name: "stream".into(),
            event_types: vec![],
            target: TargetConfig::RedisStream(target),
            batch_size: 100,
            max_attempts: 5,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            concurrency: 1,
        }];
    })
    .await;
    let ids: Vec<String> = (0..5).map(|_| unique("st")).collect();
    let mut e = item_added(&ids[0]);
    e["metadata"]["note"] = json!("ü 🛒");
    assert_eq!(app.post_event(&e).await.0, 202);
    for id in &ids[1..] {
        assert_eq!(app.post_event(&item_added(id)).await.0, 202);
    }
    let got = poll_until(
        Duration::from_secs(20),
        || entries(&redis_url, &stream.key),
        |got| got.len() == 5,
    )
    .await;
    assert_eq!(got.len(), 5);
    let ordered: Vec<String> = got
        .iter()
        .map(|(_, f)| f.iter().find(|(k, _)| k == "eventId").unwrap().1.clone())
        .collect();
    assert_eq!(ordered, ids, "one lane: in acceptance order");
    let first: std::collections::HashMap<_, _> = got[0].1.iter().cloned().collect();
    assert_eq!(first["userId"], "user-1");
    assert_eq!(first["sessionId"], "sess-1");
    assert_eq!(first["eventType"], "item_added");
    let meta: Value = serde_json::from_str(&first["metadata"]).unwrap();
    assert_eq!(meta["note"], "ü 🛒");
    assert!(first.contains_key("timestamp") && first.contains_key("receivedAt"));
}

#[tokio::test]
async fn undelivered_events_are_delivered_after_a_restart() {
    let receiver = Receiver::start(500).await;
    let dir = tempfile::tempdir().unwrap();
    let spawn = |url: String, dir: std::path::PathBuf| async move {
        let mut settings = test_settings(&dir);
        settings.routes = vec![webhook_route("hook", &[], &url, 1000)];
        let app = cartstream::app::startup::Application::build(settings)
            .await
            .unwrap();
        let addr = app.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        (addr, stop, handle)
    };
    let (addr, stop, handle) = spawn(receiver.url.clone(), dir.path().to_path_buf()).await;
    let ids: Vec<String> = (0..20).map(|_| unique("rs")).collect();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{addr}/events/batch"))
        .json(&json!({"events": ids.iter().map(|id| item_added(id)).collect::<Vec<_>>()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    wait_until("a failed attempt", Duration::from_secs(20), || {
        !receiver.requests().is_empty()
    })
    .await;
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();

    receiver.state.status.store(200, Ordering::SeqCst);
    receiver.requests().clear();
    let (_addr, stop, handle) = spawn(receiver.url.clone(), dir.path().to_path_buf()).await;
    wait_until("all 20 after the restart", Duration::from_secs(20), || {
        received_ids(&receiver)
            .into_iter()
            .collect::<HashSet<_>>()
            .len()
            == 20
    })
    .await;
    assert_eq!(
        received_ids(&receiver).into_iter().collect::<HashSet<_>>(),
        ids.into_iter().collect()
    );
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

/// Acks never wait for routes: the same load is acked as fast with a webhook that takes 500 ms
/// per request as with no route at all (a generous bound on the ratio, not an absolute time).
#[tokio::test]
async fn a_slow_webhook_does_not_slow_acks() {
    async fn ack_latencies(app: &TestApp) -> Vec<Duration> {
        let (mut ws, _) = app.ws().await;
        let mut out = Vec::new();
        for _ in 0..100 {
            let started = Instant::now();
            send_json(
                &mut ws,
                &json!({"type": "cart_event", "data": item_added(&unique("lat"))}),
            )
            .await;
            assert_eq!(recv_json(&mut ws).await["status"], "accepted");
            out.push(started.elapsed());
        }
        out.sort();
        out
    }
    let receiver = Receiver::start(200).await;
    receiver.state.delay_ms.store(500, Ordering::SeqCst);
    let url = receiver.url.clone();
    let plain = TestApp::spawn().await;
    let routed = TestApp::spawn_with(move |s: &mut Settings| {
        s.routes = vec![webhook_route("slow", &[], &url, 10)];
    })
    .await;
    // Interleave the runs so machine noise hits both alike.
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..2 {
        without.extend(ack_latencies(&plain).await);
        with.extend(ack_latencies(&routed).await);
    }
    without.sort();
    with.sort();
    let p50 = |v: &[Duration]| v[v.len() / 2];
    let p90 = |v: &[Duration]| v[v.len() * 9 / 10];
    eprintln!(
        "FIGURES slow-webhook acks: p50 {:?} vs {:?} without; p90 {:?} vs {:?} without",
        p50(&with),
        p50(&without),
        p90(&with),
        p90(&without)
    );
    assert!(
        !receiver.requests().is_empty(),
        "the slow webhook was being called meanwhile"
    );
    let slack = Duration::from_millis(5);
    assert!(
        p50(&with) <= p50(&without) * 3 + slack,
        "p50 {:?} vs {:?}",
        p50(&with),
        p50(&without)
    );
    assert!(
        p90(&with) <= p90(&without) * 3 + slack,
        "p90 {:?} vs {:?}",
        p90(&with),
        p90(&without)
    );
    assert!(
        p90(&with) < Duration::from_millis(500),
        "no ack waited for the webhook"
    );
}
