//! The read layout of issue 14 against a real ClickHouse (and the 2-shard cluster): copies of
//! one event with different timestamps are listed once, as the copy received last; pages walk
//! every time window of an index read; a table from before the layout is read as before and
//! migrated by `migrate_layout` (what `cartstream migrate-clickhouse` runs).

use crate::backends::{clickhouse_sql, clickhouse_url_or_skip, ThrowawayDatabase};
use crate::fixtures;
use cartstream::adapters::outbound::clickhouse::{
    create_legacy_table_sql, ClickHouseConfig, ClickHouseStore,
};
use cartstream::domain::{DedupKey, EventId, EventType, StoredEvent};
use cartstream::ports::{EventQuery, EventStore};
use chrono::{DateTime, Duration, Utc};

fn key(id: &str) -> DedupKey {
    (&EventId::parse(id).unwrap()).into()
}

fn at(ts: &str) -> DateTime<Utc> {
    ts.parse().unwrap()
}

async fn ids(store: &dyn EventStore, query: &EventQuery) -> Vec<String> {
    let page = store.query(query).await.unwrap();
    page.events
        .iter()
        .map(|e| e.event.event_id().as_str().to_owned())
        .collect()
}

/// Two events each stored twice with different timestamps, across a month boundary: `late` was
/// first sent with a timestamp in July and retried without one (so its second copy is in
/// August), `early` the other way round. Returns (the copies in insert order, the newest
/// copy of each).
fn retried() -> (Vec<StoredEvent>, [StoredEvent; 2]) {
    let late_first = fixtures::event("late")
        .user("u-retry")
        .at("2025-07-31T23:59:58.000Z")
        .stored();
    let late_retry = fixtures::event("late")
        .user("u-retry")
        .at("2025-08-01T00:00:05.000Z")
        .stored();
    let early_first = fixtures::event("early")
        .user("u-retry")
        .at("2025-08-01T00:00:01.000Z")
        .stored();
    // Its timestamp is older, but it is received 10 s after the first copy.
    let early_retry = fixtures::event("early")
        .user("u-retry")
        .at("2025-07-31T23:59:50.000Z")
        .received_after(21_000)
        .stored();
    let newest = [late_retry.clone(), early_retry.clone()];
    // The newest copy of `early` goes in first: what counts is when a copy was received.
    (
        vec![late_first, early_retry, late_retry, early_first],
        newest,
    )
}

/// Every kind of read lists each retried event exactly once, as its newest copy, and
/// `known()` finds both.
pub async fn check_retried_events_are_listed_once(store: &ClickHouseStore) {
    let (copies, newest) = retried();
    for c in &copies {
        store.insert(std::slice::from_ref(c)).await.unwrap();
    }
    let expected = ["late", "early"];
    let queries = [
        EventQuery::first(10),
        EventQuery {
            user_id: Some("u-retry".into()),
            ..EventQuery::first(10)
        },
        EventQuery {
            event_type: Some(EventType::CartViewed),
            ..EventQuery::first(10)
        },
        EventQuery {
            since: Some(at("2025-07-01T00:00:00Z")),
            until: Some(at("2025-08-31T00:00:00Z")),
            ..EventQuery::first(10)
        },
        EventQuery {
            user_id: Some("u-retry".into()),
            since: Some(at("2025-07-31T00:00:00Z")),
            ..EventQuery::first(1000)
        },
    ];
    for q in &queries {
        let page = store.query(q).await.unwrap();
        assert_eq!(page.events, newest, "{q:?}");
    }
    // One at a time: the second page starts after the first's event, not at a stale copy.
    let mut q = EventQuery::first(1);
    let mut seen = Vec::new();
    loop {
        let page = store.query(&q).await.unwrap();
        seen.extend(
            page.events
                .iter()
                .map(|e| e.event.event_id().as_str().to_owned()),
        );
        let Some(last) = page.events.last().filter(|_| page.more) else {
            break;
        };
        q.after = Some(cartstream::domain::PageKey::of(last));
    }
    assert_eq!(seen, expected, "pages of one");
    // Where only a stale copy is, nothing is listed.
    let stale_only = EventQuery {
        since: Some(at("2025-07-31T23:59:55Z")),
        until: Some(at("2025-07-31T23:59:59Z")),
        ..EventQuery::first(10)
    };
    assert!(ids(store, &stale_only).await.is_empty());
    let known = store
        .known(&[key("late"), key("early"), key("never")])
        .await
        .unwrap();
    assert_eq!(known, [true, true, false]);
}

async fn single_store(url: &str, db: &ThrowawayDatabase) -> ClickHouseStore {
    let mut config = ClickHouseConfig::new(url.to_owned());
    config.database = db.name.clone();
    ClickHouseStore::new(config).unwrap()
}

#[tokio::test]
async fn a_retry_with_another_timestamp_is_listed_once_as_the_copy_received_last() {
    let Some(url) = clickhouse_url_or_skip().await else {
        return;
    };
    let db = ThrowawayDatabase::new(&url);
    let store = single_store(&url, &db).await;
    store.ensure_schema().await.unwrap();
    check_retried_events_are_listed_once(&store).await;
    // After the merges, the same: they keep the copy received last.
    for t in ["cart_events", "cart_events_by_user", "cart_events_by_time"] {
        let sql = format!("OPTIMIZE TABLE `{}`.{t} FINAL", db.name);
        clickhouse_sql(&url, &sql).await.unwrap();
    }
    let rows = clickhouse_sql(
        &url,
        &format!(
            "SELECT event_id, occurred_at_ms FROM `{}`.cart_events ORDER BY event_id FORMAT TSV",
            db.name
        ),
    )
    .await
    .unwrap();
    let (_, newest) = retried();
    let want: String = [&newest[1], &newest[0]]
        .iter()
        .map(|e| {
            let c = e.columns();
            format!("{}\t{}\n", c.event_id, c.occurred_at_ms)
        })
        .collect();
    assert_eq!(rows, want, "one row per id after the merge, the newest");
    let page = store.query(&EventQuery::first(10)).await.unwrap();
    assert_eq!(page.events, newest);
}

#[tokio::test]
async fn pages_walk_every_window_from_the_future_to_the_oldest_event() {
    let Some(url) = clickhouse_url_or_skip().await else {
        return;
    };
    let db = ThrowawayDatabase::new(&url);
    let store = single_store(&url, &db).await;
    let now = Utc::now();
    // Each in another of the windows (1 h, 8 h, 64 h, ... below now, the future, and before
    // all bounded ones), with a stale copy of one far from its newest.
    let offsets_h = [-3, 0, 2, 5, 30, 200, 2_000, 20_000, 300_000];
    let events: Vec<StoredEvent> = offsets_h
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let t =
                (now - Duration::hours(*h)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            fixtures::event(&format!("w-{i}"))
                .kind(if i % 2 == 0 {
                    "cart_cleared"
                } else {
                    "cart_viewed"
                })
                .at(&t)
                .stored()
        })
        .collect();
    // Two stale copies in the newest window, of events far older: a page must not take
    // their newest copies ahead of the events between.
    let stale: Vec<StoredEvent> = ["w-4", "w-6"]
        .iter()
        .map(|id| {
            fixtures::event(id)
                .at(&now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .received_after(-(Duration::hours(9_000).num_milliseconds()))
                .stored()
        })
        .collect();
    store.insert(&stale).await.unwrap();
    store.insert(&events).await.unwrap();
    let all: Vec<String> = (0..offsets_h.len()).map(|i| format!("w-{i}")).collect();
    for (kind, want) in [
        (None, all.clone()),
        (
            Some(EventType::CartCleared),
            all.iter().step_by(2).cloned().collect::<Vec<_>>(),
        ),
    ] {
        for limit in [1, 2, 3, 4, 100] {
            let mut q = EventQuery {
                event_type: kind,
                ..EventQuery::first(limit)
            };
            let mut seen = Vec::new();
            loop {
                let page = store.query(&q).await.unwrap();
                assert!(page.events.len() <= limit);
                seen.extend(
                    page.events
                        .iter()
                        .map(|e| e.event.event_id().as_str().to_owned()),
                );
                let Some(last) = page.events.last().filter(|_| page.more) else {
                    break;
                };
                q.after = Some(cartstream::domain::PageKey::of(last));
            }
            assert_eq!(seen, want, "{kind:?} by {limit}");
        }
    }
}

#[tokio::test]
async fn a_legacy_table_is_read_as_before_then_migrated_and_kept() {
    let Some(url) = clickhouse_url_or_skip().await else {
        return;
    };
    let db = ThrowawayDatabase::new(&url);
    clickhouse_sql(&url, &format!("CREATE DATABASE `{}`", db.name))
        .await
        .unwrap();
    clickhouse_sql(&url, &create_legacy_table_sql(&db.name, "cart_events"))
        .await
        .unwrap();
    let legacy = single_store(&url, &db).await;
    legacy.ensure_schema().await.unwrap();
    // Three months, a repeat of one event, and a retry across months (two copies FINAL
    // cannot merge on the old table: they are in two partitions).
    let events: Vec<StoredEvent> = (0..30)
        .map(|i| {
            let month = 6 + i % 3;
            fixtures::event(&format!("m-{i}"))
                .user(&format!("u-{}", i % 4))
                .at(&format!("2025-{month:02}-{:02}T10:00:00.000Z", 1 + i))
                .stored()
        })
        .collect();
    legacy.insert(&events).await.unwrap();
    legacy.insert(&events[..5]).await.unwrap();
    assert_eq!(
        tables(&url, &db.name).await,
        "cart_events\n",
        "a legacy table is not changed, and nothing is added beside it"
    );
    assert_eq!(
        legacy
            .query(&EventQuery::first(100))
            .await
            .unwrap()
            .events
            .len(),
        30
    );

    let done = legacy.migrate_layout().await.unwrap();
    assert!(done.renamed);
    assert_eq!(done.copied, ["202506", "202507", "202508"]);
    assert_eq!((done.old_rows, done.new_rows), (35, 35));
    assert_eq!(
        tables(&url, &db.name).await,
        "cart_events\ncart_events_by_time\ncart_events_by_time_mv\ncart_events_by_user\n\
         cart_events_by_user_mv\ncart_events_v1\ncart_events_v1_copied\n"
    );
    // A new store (a restarted cartstream) reads the new layout: every event once.
    let migrated = single_store(&url, &db).await;
    let mut want: Vec<StoredEvent> = events.clone();
    // PageKey's order is the listing order, newest first.
    want.sort_by_key(cartstream::domain::PageKey::of);
    assert_eq!(
        migrated
            .query(&EventQuery::first(100))
            .await
            .unwrap()
            .events,
        want
    );
    let by_user = EventQuery {
        user_id: Some("u-1".into()),
        ..EventQuery::first(100)
    };
    assert_eq!(
        migrated.query(&by_user).await.unwrap().events,
        want.iter()
            .filter(|e| e.event.user_id() == "u-1")
            .cloned()
            .collect::<Vec<_>>()
    );
    assert_eq!(
        migrated
            .known(&[key("m-0"), key("m-29"), key("m-30")])
            .await
            .unwrap(),
        [true, true, false]
    );
    // Run again (as after an interruption): every month is recorded, nothing is copied twice.
    let again = migrated.migrate_layout().await.unwrap();
    assert!(!again.renamed && again.copied.is_empty(), "{again:?}");
    assert_eq!((again.already_copied, again.new_rows), (3, 35));
    let old_rows = clickhouse_sql(
        &url,
        &format!("SELECT count() FROM `{}`.cart_events_v1", db.name),
    )
    .await
    .unwrap();
    assert_eq!(old_rows.trim(), "35", "the old table is kept whole");
}

async fn tables(url: &str, db: &str) -> String {
    let sql =
        format!("SELECT name FROM system.tables WHERE database = '{db}' ORDER BY name FORMAT TSV");
    clickhouse_sql(url, &sql).await.unwrap()
}
