//! The whole server with its production backends: Redis for dedup, ClickHouse (behind the
//! local journal) for storage.

use crate::backends::*;
use crate::helpers::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

struct Backends {
    db: ThrowawayDatabase,
    redis_url: String,
    prefix: String,
}

async fn backends_or_skip() -> Option<Backends> {
    let redis_url = redis_url_or_skip().await?;
    let ch = clickhouse_url_or_skip().await?;
    Some(Backends {
        db: ThrowawayDatabase::new(&ch),
        redis_url,
        prefix: redis_prefix(),
    })
}

async fn spawn(b: &Backends) -> TestApp {
    spawn_routed(b, None).await
}

/// With `webhook`, every event is also routed there (reading the journal as its feed).
async fn spawn_routed(b: &Backends, webhook: Option<String>) -> TestApp {
    let (redis, ch, db, prefix) = (
        b.redis_url.clone(),
        b.db.url.clone(),
        b.db.name.clone(),
        b.prefix.clone(),
    );
    TestApp::spawn_with(move |s| {
        if let Some(url) = webhook {
            s.routes = vec![cartstream::app::config::RouteSettings {
                name: "all".into(),
                event_types: vec![],
                target: cartstream::adapters::outbound::targets::TargetConfig::Webhook(
                    cartstream::adapters::outbound::targets::WebhookConfig::new(url),
                ),
                batch_size: 100,
                max_attempts: 10,
                backoff_min: Duration::from_millis(20),
                backoff_max: Duration::from_millis(100),
                concurrency: 2,
            }];
        }
        s.redis_url = Some(redis);
        s.redis_key_prefix = prefix;
        s.clickhouse_url = Some(ch);
        s.clickhouse_database = db;
        s.forward_interval = Duration::from_millis(100);
    })
    .await
}

async fn table_counts(b: &Backends) -> (u64, u64) {
    let sql = format!(
        "SELECT count(), uniqExact(event_id) FROM `{}`.cart_events FINAL FORMAT TabSeparated",
        b.db.name
    );
    match clickhouse_sql(&b.db.url, &sql).await {
        Ok(body) => {
            let mut parts = body.split_whitespace().map(|p| p.parse::<u64>().unwrap());
            (parts.next().unwrap(), parts.next().unwrap())
        }
        Err(e) if e.contains("doesn't exist") || e.contains("UNKNOWN") => (0, 0),
        Err(e) => panic!("{e}"),
    }
}

async fn stored_ids(b: &Backends) -> HashSet<String> {
    let sql = format!(
        "SELECT event_id FROM `{}`.cart_events FINAL FORMAT TabSeparated",
        b.db.name
    );
    clickhouse_sql(&b.db.url, &sql)
        .await
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn wait_for_rows(b: &Backends, n: u64) -> (u64, u64) {
    let last = poll_until(
        Duration::from_secs(30),
        || table_counts(b),
        |last| last.0 >= n,
    )
    .await;
    assert!(last.0 >= n, "ClickHouse has {last:?} rows, expected {n}");
    last
}

#[tokio::test]
async fn websocket_and_http_events_land_in_clickhouse_and_read_back() {
    let Some(b) = backends_or_skip().await else {
        return;
    };
    let receiver = crate::targets::Receiver::start(200).await;
    let app = spawn_routed(&b, Some(receiver.url.clone())).await;
    let (status, ready) = app.get_json("/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["eventStore"]["backend"], "clickhouse");
    assert_eq!(ready["dedupStore"]["backend"], "redis");

    let (mut ws, _) = app.ws().await;
    let ws_id = unique("ws");
    send_json(
        &mut ws,
        &json!({"type": "cart_event", "data": item_added(&ws_id)}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await["status"], "accepted");
    let http_id = unique("http");
    let mut e = item_added(&http_id);
    let at = chrono::Utc::now() - chrono::Duration::hours(1);
    let at = chrono::DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap();
    e["timestamp"] = json!(at.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string());
    e["metadata"]["note"] = json!("ünïcødé 🛒 корзина 购物车");
    // Readable at once, straight from the journal, before any flush.
    assert_eq!(app.post_event(&e).await.0, 202);
    let (_, body) = app.get_json("/events?userId=user-1&limit=10").await;
    assert_eq!(body["events"].as_array().unwrap().len(), 2, "{body}");

    assert_eq!(wait_for_rows(&b, 2).await, (2, 2));
    // Duplicates across channels, now answered by Redis.
    assert_eq!(app.post_event(&item_added(&ws_id)).await.0, 200);
    send_json(
        &mut ws,
        &json!({"type": "cart_event", "data": item_added(&http_id)}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await["status"], "duplicate");

    let (_, body) = app.get_json("/events?limit=10").await;
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    let http_event = events
        .iter()
        .find(|v| v["eventId"] == http_id.as_str())
        .unwrap();
    assert_eq!(
        http_event["timestamp"],
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "UTC, to the millisecond"
    );
    assert_eq!(http_event["metadata"]["note"], "ünïcødé 🛒 корзина 购物车");
    assert_eq!(http_event["sessionId"], "sess-1");
    let sources = clickhouse_sql(
        &b.db.url,
        &format!(
            "SELECT source FROM `{}`.cart_events FINAL ORDER BY source FORMAT TabSeparated",
            b.db.name
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        sources.split_whitespace().collect::<Vec<_>>(),
        ["http", "ws"]
    );
    // Routed from the journal: both events reached the webhook too.
    let routed: std::collections::HashSet<String> = poll_until(
        Duration::from_secs(20),
        || async {
            receiver
                .requests()
                .iter()
                .flat_map(|r| r.json()["events"].as_array().unwrap().clone())
                .map(|e| e["eventId"].as_str().unwrap().to_owned())
                .collect()
        },
        |routed: &std::collections::HashSet<String>| routed.len() == 2,
    )
    .await;
    assert_eq!(
        routed,
        [ws_id.clone(), http_id.clone()].into_iter().collect()
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn with_backends_down_the_server_starts_not_ready_and_never_claims_accepted() {
    let app = TestApp::spawn_with(|s| {
        s.redis_url = Some(DEAD_REDIS_URL.into());
        s.clickhouse_url = Some(DEAD_CLICKHOUSE_URL.into());
        s.redis_connect_timeout = Duration::from_millis(300);
    })
    .await;
    let (status, body) = app.get_json("/ready").await;
    assert_eq!(status, 503);
    assert_eq!(body["eventStore"]["status"], "down");
    assert_eq!(body["dedupStore"]["status"], "down");
    assert!(
        !body.to_string().contains("hunter2"),
        "no secrets in readiness: {body}"
    );
    let (status, body) = app.post_event(&item_added(&unique("down"))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["retryable"], true);
    assert_eq!(app.get_json("/health").await.0, 200);
}

/// Concurrent WebSocket and HTTP clients send a mix in which 20% of the events repeat an
/// eventId (across clients too) and some are invalid. Afterwards ClickHouse holds each accepted
/// eventId once, and nothing else.
#[tokio::test]
async fn exactly_once_at_rest_under_concurrent_ws_and_http_load() {
    let Some(b) = backends_or_skip().await else {
        return;
    };
    let app = spawn(&b).await;
    const CLIENTS: usize = 6;
    const PER_CLIENT: usize = 500;
    // A shared pool of ids that every client repeats.
    let pool: Vec<String> = (0..100).map(|_| unique("pool")).collect();
    let plan = |client: usize| -> Vec<Value> {
        (0..PER_CLIENT)
            .map(|i| match i % 10 {
                0 | 1 => item_added(&pool[(client * 7 + i) % pool.len()]),
                2 if i % 20 == 2 => json!({"eventId": unique("bad"), "eventType": "item_added"}),
                _ => item_added(&unique(&format!("c{client}"))),
            })
            .collect()
    };
    let sent_from_pool: HashSet<String> = (0..CLIENTS)
        .flat_map(plan)
        .filter_map(|e| e["eventId"].as_str().map(str::to_owned))
        .filter(|id| id.starts_with("pool-"))
        .collect();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let events = plan(client);
        if client % 3 == 2 {
            // HTTP client: batches of 25.
            let http = app.http.clone();
            let url = app.url("/events/batch");
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for chunk in events.chunks(25) {
                    let r: Value = http
                        .post(&url)
                        .json(&json!({"events": chunk}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    for (e, res) in chunk.iter().zip(r["results"].as_array().unwrap()) {
                        seen.push((
                            e["eventId"].as_str().unwrap().to_owned(),
                            res["status"].as_str().unwrap().to_owned(),
                        ));
                    }
                }
                seen
            }));
        } else {
            // WebSocket client: everything pipelined, single events.
            let (mut ws, _) = app.ws().await;
            tasks.push(tokio::spawn(async move {
                for e in &events {
                    ws.feed(Message::text(
                        json!({"type": "cart_event", "data": e}).to_string(),
                    ))
                    .await
                    .unwrap();
                }
                ws.flush().await.unwrap();
                let mut seen = Vec::new();
                for e in &events {
                    let r = recv_json(&mut ws).await;
                    let status = match r["type"].as_str() {
                        Some("event_ack") => r["status"].as_str().unwrap().to_owned(),
                        _ => format!("error:{}", r["code"].as_str().unwrap()),
                    };
                    seen.push((e["eventId"].as_str().unwrap().to_owned(), status));
                }
                seen
            }));
        }
    }
    let mut accepted: HashSet<String> = HashSet::new();
    let mut statuses: HashMap<String, usize> = HashMap::new();
    let mut rejected: HashSet<String> = HashSet::new();
    for t in tasks {
        for (id, status) in t.await.unwrap() {
            *statuses.entry(status.clone()).or_default() += 1;
            match status.as_str() {
                "accepted" => assert!(accepted.insert(id.clone()), "{id} accepted twice"),
                "duplicate" => {}
                "rejected" | "error:validation_failed" => {
                    rejected.insert(id);
                }
                other => panic!("unexpected answer {other} for {id}"),
            }
        }
    }
    let dups = statuses.get("duplicate").copied().unwrap_or(0);
    assert!(
        dups >= CLIENTS * PER_CLIENT / 5 - pool.len(),
        "{statuses:?}"
    );
    for id in &sent_from_pool {
        assert!(
            accepted.contains(id),
            "every pooled id was accepted exactly once: {id}"
        );
    }
    let n = accepted.len() as u64;
    assert_eq!(
        wait_for_rows(&b, n).await,
        (n, n),
        "count = uniqExact = accepted"
    );
    assert_eq!(stored_ids(&b).await, accepted);
    assert!(rejected.iter().all(|id| !accepted.contains(id)));
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let inserts: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cartstream_forwarded_inserts_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        inserts >= 1 && inserts < n / 10,
        "{inserts} INSERTs for {n} events: batched"
    );
    app.stop().await.unwrap();
}
