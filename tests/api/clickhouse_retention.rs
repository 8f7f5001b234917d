//! Retention against a real ClickHouse 18.16: on the read layout, old rows go by a delete
//! mutation on the main table and both index tables, one at a time; on a legacy table, whole
//! months past the cutoff are dropped. An event received within the dedup window stays.

use crate::backends::{clickhouse_sql, clickhouse_url_or_skip, ThrowawayDatabase};
use crate::fixtures;
use cartstream::adapters::outbound::clickhouse::{
    create_legacy_table_sql, ClickHouseConfig, ClickHouseStore,
};
use cartstream::domain::{DedupKey, EventId, StoredEvent};
use cartstream::ports::{EventQuery, EventStore, ExpireStep, Expiry, Retention};
use chrono::{DateTime, Duration, SecondsFormat, Utc};

fn key(id: &str) -> DedupKey {
    (&EventId::parse(id).unwrap()).into()
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn store(url: &str, db: &ThrowawayDatabase) -> ClickHouseStore {
    let mut config = ClickHouseConfig::new(url.to_owned());
    config.database = db.name.clone();
    ClickHouseStore::new(config).unwrap()
}

async fn number(url: &str, sql: &str) -> u64 {
    let body = clickhouse_sql(url, sql).await.unwrap();
    body.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{sql}: {body}"))
}

async fn listed(store: &ClickHouseStore) -> Vec<String> {
    let mut ids: Vec<String> = store
        .query(&EventQuery::first(1000))
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e.event.event_id().as_str().to_owned())
        .collect();
    ids.sort();
    ids
}

/// `id` at `occurred`, received at `received`.
fn event(id: &str, occurred: DateTime<Utc>, received: DateTime<Utc>) -> StoredEvent {
    let later = (received - occurred).num_milliseconds();
    fixtures::event(id)
        .at(&stamp(occurred))
        .received_after(later)
        .stored()
}

#[tokio::test]
async fn on_the_read_layout_old_rows_go_by_one_mutation_per_table() {
    let Some(url) = clickhouse_url_or_skip().await else {
        return;
    };
    let db = ThrowawayDatabase::new(&url);
    let store = store(&url, &db);
    store.ensure_schema().await.unwrap();
    let now = Utc::now();
    let old_at = now - Duration::days(60);
    let mut events: Vec<StoredEvent> = (0..20)
        .map(|i| event(&format!("old-{i}"), old_at, old_at))
        .collect();
    // Sent an hour ago with a timestamp that old: dedup still answers for it, so it stays.
    events.push(event("late", old_at, now - Duration::hours(1)));
    events.push(event(
        "new",
        now - Duration::days(1),
        now - Duration::days(1),
    ));
    store.insert(&events).await.unwrap();
    let expiry = Expiry {
        occurred_before: now - Duration::days(30),
        received_before: now - Duration::days(1) + Duration::minutes(1),
    };

    let first = store.expire_step(expiry).await.unwrap();
    let second = store.expire_step(expiry).await.unwrap();
    assert_eq!(
        (first.more, first.mutations, first.events, first.partitions),
        (false, 3, 0, 0),
        "one mutation per table, no row count claimed"
    );
    assert_eq!(second, ExpireStep::default(), "none again within the hour");
    let mutations = format!(
        "SELECT count() FROM system.mutations WHERE database = '{}'",
        db.name
    );
    assert_eq!(
        number(&url, &mutations).await,
        3,
        "one mutation for each of the three tables, however often the step runs"
    );
    let running = format!("{mutations} AND is_done = 0");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while number(&url, &running).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mutations still running after 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    assert_eq!(listed(&store).await, ["late", "new"]);
    for t in ["cart_events", "cart_events_by_user", "cart_events_by_time"] {
        let sql = format!("SELECT count() FROM `{}`.{t}", db.name);
        assert_eq!(number(&url, &sql).await, 2, "{t}");
    }
    assert_eq!(
        store
            .known(&[key("old-0"), key("old-19"), key("late"), key("new")])
            .await
            .unwrap(),
        [false, false, true, true],
        "known() agrees with what is listed"
    );
}

#[tokio::test]
async fn on_a_legacy_table_months_past_the_cutoff_are_dropped_whole() {
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
    let store = store(&url, &db);
    store.ensure_schema().await.unwrap();
    let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    let now = Utc::now();
    let events = vec![
        event(
            "jan",
            at("2025-01-10T00:00:00Z"),
            at("2025-01-10T00:00:01Z"),
        ),
        event(
            "feb",
            at("2025-02-10T00:00:00Z"),
            at("2025-02-10T00:00:01Z"),
        ),
        // In an old month but received within the dedup window: its month stays for now.
        event(
            "feb-late",
            at("2025-02-20T00:00:00Z"),
            now - Duration::hours(1),
        ),
        event(
            "mar",
            at("2025-03-10T00:00:00Z"),
            at("2025-03-10T00:00:01Z"),
        ),
        event(
            "apr",
            at("2025-04-10T00:00:00Z"),
            at("2025-04-10T00:00:01Z"),
        ),
    ];
    store.insert(&events).await.unwrap();
    // The cutoff is in March: January and February have ended before it, March has not.
    let expiry = Expiry {
        occurred_before: at("2025-03-15T00:00:00Z"),
        received_before: now - Duration::days(1),
    };
    let step = store.expire_step(expiry).await.unwrap();
    assert_eq!((step.more, step.partitions, step.mutations), (false, 1, 0));
    let partitions = format!(
        "SELECT groupArray(partition_id) FROM (SELECT DISTINCT partition_id FROM system.parts \
         WHERE database = '{}' AND table = 'cart_events' AND active ORDER BY partition_id) \
         FORMAT TSV",
        db.name
    );
    assert_eq!(
        clickhouse_sql(&url, &partitions).await.unwrap().trim(),
        "['202502','202503','202504']"
    );
    assert_eq!(listed(&store).await, ["apr", "feb", "feb-late", "mar"]);
    assert_eq!(
        store.known(&[key("jan"), key("feb")]).await.unwrap(),
        [false, true]
    );
    let mutations = format!(
        "SELECT count() FROM system.mutations WHERE database = '{}'",
        db.name
    );
    assert_eq!(
        number(&url, &mutations).await,
        0,
        "no mutation on a legacy table"
    );

    // A day later (in the cutoff's terms), February's late event is past its window too.
    let later = Expiry {
        received_before: now + Duration::hours(1),
        ..expiry
    };
    assert_eq!(store.expire_step(later).await.unwrap().partitions, 1);
    assert_eq!(listed(&store).await, ["apr", "mar"]);
}

#[tokio::test]
async fn on_a_cluster_every_shard_deletes_its_old_rows_from_all_three_tables() {
    let Some((store, db)) = crate::clickhouse_cluster::store().await else {
        return;
    };
    let now = Utc::now();
    let old_at = now - Duration::days(60);
    let mut events: Vec<StoredEvent> = (0..40)
        .map(|i| event(&format!("old-{i}"), old_at, old_at))
        .collect();
    events.push(event("late", old_at, now - Duration::hours(1)));
    events.push(event(
        "new",
        now - Duration::days(1),
        now - Duration::days(1),
    ));
    store.insert(&events).await.unwrap();
    let rows = db.rows_per_shard().await;
    assert!(
        rows.iter().all(|&n| n > 0),
        "old rows on every shard: {rows:?}"
    );
    let expiry = Expiry {
        occurred_before: now - Duration::days(30),
        received_before: now - Duration::days(1) + Duration::minutes(1),
    };
    let step = store.expire_step(expiry).await.unwrap();
    assert_eq!(
        (step.more, step.mutations),
        (false, 3 * db.shards.len() as u64),
        "three mutations a shard, counted"
    );

    let mutations = format!(
        "SELECT count() FROM system.mutations WHERE database = '{}'",
        db.name
    );
    let running = format!("{mutations} AND is_done = 0");
    for shard in 0..db.shards.len() {
        assert_eq!(
            db.number(shard, &mutations).await,
            3,
            "shard {shard}: one mutation for each of its three local tables"
        );
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while db.number(shard, &running).await > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "shard {shard}: mutations still running after 60 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    for t in [
        "cart_events_local",
        "cart_events_by_user_local",
        "cart_events_by_time_local",
    ] {
        let mut kept = 0;
        for shard in 0..db.shards.len() {
            let sql = format!("SELECT count() FROM `{}`.{t}", db.name);
            kept += db.number(shard, &sql).await;
        }
        assert_eq!(
            kept, 2,
            "{t}: only `late` and `new` are left, over all shards"
        );
    }
    assert_eq!(listed(&store).await, ["late", "new"]);
    assert_eq!(
        store
            .known(&[key("old-0"), key("old-39"), key("late"), key("new")])
            .await
            .unwrap(),
        [false, false, true, true],
        "known() agrees with what is listed"
    );
}
