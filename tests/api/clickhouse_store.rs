//! `ClickHouseStore` against a real ClickHouse (18.16 locally): every column round-trips, reads
//! see each event once, and a dead server answers `Unavailable`.

use crate::backends::{
    clickhouse_sql, clickhouse_url_or_skip, silent_server, ThrowawayDatabase, DEAD_CLICKHOUSE_URL,
};
use cartstream::adapters::outbound::clickhouse::{ClickHouseConfig, ClickHouseStore};
use cartstream::domain::{parse_event, EventId, EventType, Source, StoredEvent, ValidationPolicy};
use cartstream::ports::{EventQuery, EventStore, PortError};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Duration;

/// A store on a throwaway database; keep the guard alive for the whole test.
pub async fn store() -> Option<(ClickHouseStore, ThrowawayDatabase)> {
    let url = clickhouse_url_or_skip().await?;
    let db = ThrowawayDatabase::new(&url);
    let mut config = ClickHouseConfig::new(url);
    config.database = db.name.clone();
    let store = ClickHouseStore::new(config).unwrap();
    store.ensure_schema().await.unwrap();
    Some((store, db))
}

fn stored(raw: Value, received_ms_later: i64, source: Source) -> StoredEvent {
    let ts: DateTime<Utc> = raw["timestamp"].as_str().unwrap().parse().unwrap();
    let event = parse_event(&raw, &ValidationPolicy::protocol_default(), ts, || {
        EventId::from_random_bytes([7; 16])
    })
    .unwrap();
    StoredEvent {
        event,
        received_at: ts + chrono::Duration::milliseconds(received_ms_later),
        source,
    }
}

fn event(id: &str, user: &str, t: &str, ts: &str) -> StoredEvent {
    stored(
        json!({"eventId": id, "userId": user, "eventType": t, "timestamp": ts,
               "metadata": {"productId": "p", "couponCode": "C", "cartValue": 1.5,
                            "itemCount": 2, "orderId": "o"}}),
        5,
        Source::Http,
    )
}

fn q() -> EventQuery {
    EventQuery::first(100)
}

fn ids(v: &[StoredEvent]) -> Vec<&str> {
    v.iter().map(|e| e.event.event_id().as_str()).collect()
}

#[tokio::test]
async fn every_column_round_trips_with_milliseconds_and_unicode() {
    let Some((store, db)) = store().await else {
        return;
    };
    let full = stored(
        json!({"eventId": "e-full", "userId": "ws-test-user-123", "sessionId": "sess-42",
               "eventType": "item_added", "timestamp": "2025-08-10T03:27:04.123Z",
               "metadata": {"productId": "premium-subscription", "quantity": 1, "price": 29.99,
                            "currency": "USD", "note": "🛒 корзина 购物车 كارت",
                            "nested": {"list": [1, 2.5, null, true], "emoji": "👩‍👩‍👧"}}}),
        7,
        Source::Ws,
    );
    let bare = stored(
        json!({"eventId": "e-bare", "userId": "u-2", "eventType": "cart_viewed",
               "timestamp": "2025-08-10T03:27:04.001Z"}),
        999,
        Source::Http,
    );
    store.insert(&[full.clone(), bare.clone()]).await.unwrap();

    let got = store.query(&q()).await.unwrap().events;
    assert_eq!(got, vec![full, bare], "newest first, every field equal");
    assert_eq!(
        got[1].event.session_id(),
        None,
        "absent session stays absent"
    );

    // What downstream readers see in the table itself.
    let row = clickhouse_sql(
        &db.url,
        &format!(
            "SELECT * FROM `{}`.cart_events FINAL WHERE event_id = 'e-full' FORMAT JSONEachRow",
            db.name
        ),
    )
    .await
    .unwrap();
    let row: Value = serde_json::from_str(row.trim()).unwrap();
    assert_eq!(row["user_id"], "ws-test-user-123");
    assert_eq!(row["session_id"], "sess-42");
    assert_eq!(row["event_type"], "item_added");
    assert_eq!(row["occurred_at"], "2025-08-10 03:27:04");
    assert_eq!(row["received_at"], "2025-08-10 03:27:04");
    // 18.16 quotes Int64 in JSON output; newer servers may not.
    let ms = |v: &Value| v.as_i64().or_else(|| v.as_str()?.parse().ok()).unwrap();
    assert_eq!(ms(&row["occurred_at_ms"]), 1_754_796_424_123);
    assert_eq!(ms(&row["received_at_ms"]), 1_754_796_424_130);
    assert_eq!(row["source"], "ws");
    let metadata: Value = serde_json::from_str(row["metadata"].as_str().unwrap()).unwrap();
    assert_eq!(metadata["note"], "🛒 корзина 购物车 كارت");
    assert!(
        !row["metadata"].as_str().unwrap().contains(": "),
        "compact JSON"
    );
    let null_session = clickhouse_sql(
        &db.url,
        &format!(
            "SELECT isNull(session_id) FROM `{}`.cart_events WHERE event_id = 'e-bare'",
            db.name
        ),
    )
    .await
    .unwrap();
    assert_eq!(null_session.trim(), "1");
}

#[tokio::test]
async fn a_repeated_insert_is_seen_once() {
    let Some((store, db)) = store().await else {
        return;
    };
    let e = event("e-1", "u-1", "item_added", "2025-08-10T03:27:04.123Z");
    let other = event("e-2", "u-1", "item_added", "2025-08-10T03:27:05.000Z");
    store.insert(&[e.clone(), e.clone()]).await.unwrap();
    store.insert(&[e.clone(), other]).await.unwrap();
    assert_eq!(
        ids(&store.query(&q()).await.unwrap().events),
        ["e-2", "e-1"]
    );
    let counts = clickhouse_sql(
        &db.url,
        &format!(
            "SELECT count(), uniqExact(event_id) FROM `{}`.cart_events FINAL",
            db.name
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        counts.trim(),
        "2\t2",
        "count() FINAL == uniqExact(event_id)"
    );
}

#[tokio::test]
async fn query_filters_limits_and_orders_newest_first() {
    let Some((store, _db)) = store().await else {
        return;
    };
    store
        .insert(&[
            event("a", "u-1", "item_added", "2025-08-10T03:00:00.000Z"),
            event("b", "u-2", "item_added", "2025-08-10T04:00:00.000Z"),
            event("c", "u-1", "cart_viewed", "2025-08-10T05:00:00.000Z"),
            event("d", "u-1", "item_added", "2025-08-10T06:00:00.000Z"),
            // Partitioned by month: a read spans partitions.
            event("e", "u-1", "item_added", "2025-07-31T23:59:59.999Z"),
        ])
        .await
        .unwrap();
    assert_eq!(
        ids(&store.query(&q()).await.unwrap().events),
        ["d", "c", "b", "a", "e"]
    );
    let mut f = q();
    f.user_id = Some("u-1".into());
    f.event_type = Some(EventType::ItemAdded);
    assert_eq!(ids(&store.query(&f).await.unwrap().events), ["d", "a", "e"]);
    let mut f = q();
    f.since = Some("2025-08-10T04:00:00Z".parse().unwrap());
    f.until = Some("2025-08-10T05:00:00Z".parse().unwrap());
    assert_eq!(
        ids(&store.query(&f).await.unwrap().events),
        ["c", "b"],
        "bounds inclusive"
    );
    let mut f = q();
    f.limit = 2;
    assert_eq!(ids(&store.query(&f).await.unwrap().events), ["d", "c"]);
    let mut f = q();
    f.user_id = Some("nobody' OR '1'='1".into());
    assert!(
        store.query(&f).await.unwrap().events.is_empty(),
        "values are escaped"
    );
}

#[tokio::test]
async fn bounds_are_inclusive_to_the_millisecond() {
    let Some((store, _db)) = store().await else {
        return;
    };
    store
        .insert(&[
            event("m-1", "u", "cart_viewed", "2025-08-10T03:27:04.122Z"),
            event("m-2", "u", "cart_viewed", "2025-08-10T03:27:04.123Z"),
            event("m-3", "u", "cart_viewed", "2025-08-10T03:27:04.124Z"),
        ])
        .await
        .unwrap();
    let mut f = q();
    f.since = Some("2025-08-10T03:27:04.123Z".parse().unwrap());
    f.until = Some("2025-08-10T03:27:04.123Z".parse().unwrap());
    assert_eq!(ids(&store.query(&f).await.unwrap().events), ["m-2"]);
}

#[tokio::test]
async fn the_schema_is_created_on_first_use_and_is_idempotent() {
    let Some(url) = clickhouse_url_or_skip().await else {
        return;
    };
    let db = ThrowawayDatabase::new(&url);
    let mut config = ClickHouseConfig::new(url.clone());
    config.database = db.name.clone();
    config.table = "custom_events".to_owned();
    let store = ClickHouseStore::new(config).unwrap();
    // No ensure_schema: the first insert creates database and table.
    store
        .insert(&[event("s-1", "u", "cart_viewed", "2025-08-10T03:00:00Z")])
        .await
        .unwrap();
    store.ensure_schema().await.unwrap();
    store.ensure_schema().await.unwrap();
    assert_eq!(store.query(&q()).await.unwrap().events.len(), 1);
    let ddl = clickhouse_sql(
        &url,
        &format!("SHOW CREATE TABLE `{}`.custom_events", db.name),
    )
    .await
    .unwrap();
    assert!(ddl.contains("ReplacingMergeTree"), "{ddl}");
    assert!(ddl.contains("ORDER BY event_id"), "{ddl}");
    store.check().await.unwrap();
}

#[tokio::test]
async fn a_store_built_while_clickhouse_is_down_answers_unavailable_without_the_password() {
    let mut config = ClickHouseConfig::new(DEAD_CLICKHOUSE_URL);
    config.user = Some("writer".to_owned());
    config.password = Some("hunter2".to_owned());
    config.request_timeout = Duration::from_secs(5);
    // Building must not touch the network, so startup survives a ClickHouse outage.
    let store = ClickHouseStore::new(config).unwrap();
    let e = event("e-1", "u", "cart_viewed", "2025-08-10T03:00:00Z");
    let calls = async {
        vec![
            store.insert(&[e]).await,
            store.query(&q()).await.map(drop),
            store.check().await,
            store.ensure_schema().await,
        ]
    };
    // Generous bound: only here so a regression fails instead of hanging the suite.
    let results = tokio::time::timeout(Duration::from_secs(60), calls)
        .await
        .expect("calls against a dead ClickHouse must fail, not hang");
    for r in results {
        match r {
            Err(PortError::Unavailable(msg)) => {
                assert!(!msg.contains("hunter2"), "password leaked: {msg}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn credentials_are_sent_and_a_wrong_password_is_never_echoed() {
    let Some(url) = clickhouse_url_or_skip().await else {
        return;
    };
    let mut config = ClickHouseConfig::new(url.clone());
    config.user = Some("default".to_owned());
    config.password = Some(String::new());
    ClickHouseStore::new(config.clone())
        .unwrap()
        .check()
        .await
        .unwrap();

    config.user = Some("cartstream_no_such_user".to_owned());
    config.password = Some("hunter2".to_owned());
    match ClickHouseStore::new(config).unwrap().check().await {
        Err(PortError::Unavailable(msg)) => {
            assert!(!msg.contains("hunter2"), "password leaked: {msg}");
            assert!(
                msg.contains("cartstream_no_such_user"),
                "the server's reason: {msg}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hung_clickhouse_answers_unavailable_after_the_timeout() {
    let addr = silent_server().await;
    let mut config = ClickHouseConfig::new(format!("http://{addr}"));
    config.request_timeout = Duration::from_millis(300);
    let store = ClickHouseStore::new(config).unwrap();
    let e = event("e-1", "u", "cart_viewed", "2025-08-10T03:00:00Z");
    // Generous bound: only here so a regression fails instead of hanging the suite.
    let result = tokio::time::timeout(Duration::from_secs(60), store.insert(&[e]))
        .await
        .expect("a hung ClickHouse must not hang the caller");
    assert!(
        matches!(result, Err(PortError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn known_answers_which_ids_are_stored() {
    let Some((store, _db)) = store().await else {
        return;
    };
    store
        .insert(&[
            event("k-1", "u", "cart_viewed", "2025-08-10T03:00:00Z"),
            event("k-1", "u", "cart_viewed", "2025-08-10T03:00:00Z"),
            event("k:3", "u", "cart_viewed", "2025-08-10T03:00:00Z"),
        ])
        .await
        .unwrap();
    let keys: Vec<cartstream::domain::DedupKey> = ["k-1", "k-2", "k:3"]
        .iter()
        .map(|k| (&EventId::parse(k).unwrap()).into())
        .collect();
    assert_eq!(store.known(&keys).await.unwrap(), [true, false, true]);
    assert_eq!(store.known(&[]).await.unwrap(), Vec::<bool>::new());
}
