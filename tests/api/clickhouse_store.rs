//! `ClickHouseStore` against a real ClickHouse (18.16 locally), in what is its alone: the table
//! as other readers see it, the schema, credentials, and a dead or hung server answering
//! `Unavailable`. What every event store does is in `contract::event_store`.

use crate::backends::{
    clickhouse_sql, clickhouse_url_or_skip, silent_server, ThrowawayDatabase, DEAD_CLICKHOUSE_URL,
};
use crate::fixtures::{self, rich_metadata};
use cartstream::adapters::outbound::clickhouse::{
    BodyCompression, ClickHouseConfig, ClickHouseStore,
};
use cartstream::domain::StoredEvent;
use cartstream::ports::{EventQuery, EventStore, PortError, RefusalCause};
use serde_json::Value;
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

#[tokio::test]
async fn without_compression_inserts_and_reads_are_the_same() {
    let Some(url) = clickhouse_url_or_skip().await else {
        return;
    };
    let db = ThrowawayDatabase::new(&url);
    let mut config = ClickHouseConfig::new(url);
    config.database = db.name.clone();
    config.compression = BodyCompression::None;
    let store = ClickHouseStore::new(config).unwrap();
    // In id order, as they are compared below.
    let events = [
        fixtures::event("plain-bare")
            .at("2025-08-10T03:00:00Z")
            .stored(),
        fixtures::full("plain-full").stored(),
    ];
    store.insert(&events).await.unwrap();
    let mut read = store.query(&q()).await.unwrap().events;
    read.sort_by(|a, b| a.event.event_id().as_str().cmp(b.event.event_id().as_str()));
    let columns = |es: &[StoredEvent]| -> Vec<String> {
        es.iter().map(|e| format!("{:?}", e.columns())).collect()
    };
    assert_eq!(columns(&read), columns(&events));
}

fn q() -> EventQuery {
    EventQuery::first(100)
}

fn event(id: &str) -> StoredEvent {
    fixtures::event(id).at("2025-08-10T03:00:00Z").stored()
}

#[tokio::test]
async fn every_column_round_trips_with_milliseconds_and_unicode() {
    let Some((store, db)) = store().await else {
        return;
    };
    let full = fixtures::full("e-full").stored();
    let bare = fixtures::event("e-bare")
        .at("2025-08-10T03:27:04.001Z")
        .stored();
    // Reading back is the event store contract's; this is the table as other readers see it.
    store.insert(&[full, bare]).await.unwrap();

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
    assert_eq!(metadata["note"], rich_metadata()["note"]);
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
async fn a_repeated_insert_is_one_row_to_final_readers() {
    let Some((store, db)) = store().await else {
        return;
    };
    let e = event("e-1");
    let other = event("e-2");
    store.insert(&[e.clone(), e.clone()]).await.unwrap();
    store.insert(&[e, other]).await.unwrap();
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
    store.insert(&[event("s-1")]).await.unwrap();
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
    let e = event("e-1");
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
        // Refused for the credentials (UNKNOWN_USER or WRONG_PASSWORD, by server version).
        Err(PortError::Refused(r)) if r.cause == RefusalCause::Permission => {
            let msg = r.message;
            assert!(!msg.contains("hunter2"), "password leaked: {msg}");
            assert!(
                msg.contains("cartstream_no_such_user"),
                "the server's reason: {msg}"
            );
        }
        other => panic!("expected a refusal for the credentials, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hung_clickhouse_answers_timed_out_after_the_timeout() {
    let addr = silent_server().await;
    let mut config = ClickHouseConfig::new(format!("http://{addr}"));
    config.request_timeout = Duration::from_millis(300);
    let store = ClickHouseStore::new(config).unwrap();
    let e = event("e-1");
    // Generous bound: only here so a regression fails instead of hanging the suite.
    let result = tokio::time::timeout(Duration::from_secs(60), store.insert(&[e]))
        .await
        .expect("a hung ClickHouse must not hang the caller");
    assert!(matches!(result, Err(PortError::TimedOut(_))), "{result:?}");
}
