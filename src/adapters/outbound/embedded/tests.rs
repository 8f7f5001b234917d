use super::*;
use crate::domain::fixtures::{self, rich_metadata};
use crate::domain::{EventId, Source};
use std::sync::Mutex;

/// What every event store does is the event store contract's (`tests/api/contract`); these
/// tests are of what is this store's alone.
fn event(id: &str, ts: &str) -> StoredEvent {
    fixtures::event(id)
        .session("s-1")
        .at(ts)
        .metadata(rich_metadata())
        .received_after(7)
        .via(Source::Ws)
        .stored()
}

const WINDOW: Duration = Duration::from_secs(3600);

/// A lease of its own; the embedded store keeps the phase per key, so ids do not matter.
fn lease(hold: Duration, window: Duration) -> Lease {
    Lease {
        id: rand::random(),
        hold,
        window,
    }
}

/// Claims `keys` under a lease of their own (one the test never confirms or releases).
async fn claim_anew(store: &EmbeddedStore, hold: Duration, keys: &[DedupKey]) -> Vec<Claim> {
    store.claim(&lease(hold, WINDOW), keys).await.unwrap()
}

fn q() -> EventQuery {
    EventQuery::first(100)
}

fn keys(ks: &[&str]) -> Vec<DedupKey> {
    ks.iter()
        .map(|k| DedupKey::from(&EventId::parse(k).unwrap()))
        .collect()
}

#[tokio::test]
async fn a_reopened_store_remembers_events_and_confirmed_keys_but_not_holds() {
    let dir = tempfile::tempdir().unwrap();
    let hold = Duration::from_secs(60);
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .insert(&[event("e-1", "2025-08-10T03:00:00Z")])
            .await
            .unwrap();
        let (confirmed, held) = (lease(hold, WINDOW), lease(hold, WINDOW));
        store.claim(&confirmed, &keys(&["e-1"])).await.unwrap();
        store.claim(&held, &keys(&["e-2"])).await.unwrap();
        store.confirm(&confirmed, &keys(&["e-1"])).await.unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.query(&q()).await.unwrap().events.len(), 1);
    assert_eq!(
        claim_anew(&store, hold, &keys(&["e-1", "e-2"])).await,
        [Claim::Duplicate, Claim::New],
        "an unconfirmed hold dies with the process"
    );
}

#[tokio::test]
async fn in_events_mode_dedup_reads_the_stored_events_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(
        dir.path(),
        DedupMode::Events {
            window: Duration::from_secs(3600),
        },
        Arc::new(SystemClock),
    )
    .unwrap();
    let hold = Duration::from_secs(30);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut fresh = event("e-1", &now);
    fresh.received_at = chrono::Utc::now();
    let mut old = event("e-old", &now);
    old.received_at = chrono::Utc::now() - chrono::Duration::hours(2);
    let first = lease(hold, WINDOW);
    assert_eq!(
        store.claim(&first, &keys(&["e-1"])).await.unwrap(),
        [Claim::New]
    );
    assert_eq!(
        claim_anew(&store, hold, &keys(&["e-1"])).await,
        [Claim::InFlight]
    );
    store.insert(&[fresh, old]).await.unwrap();
    let second = lease(hold, WINDOW);
    store.confirm(&first, &keys(&["e-1"])).await.unwrap();
    assert_eq!(
        store
            .claim(&second, &keys(&["e-1", "e-old", "e-2"]))
            .await
            .unwrap(),
        [Claim::Duplicate, Claim::New, Claim::New],
        "an event received outside the window is no longer a duplicate"
    );
    store
        .release(&second, &keys(&["e-old", "e-2"]))
        .await
        .unwrap();
    assert_eq!(
        claim_anew(&store, hold, &keys(&["e-2"])).await,
        [Claim::New]
    );
}

/// With a journal in front, an event is confirmed before it reaches the `events` table (or,
/// when the forwarder is quick, after): either way it is a duplicate all along, and nothing
/// is remembered for it once the table has it.
#[tokio::test]
async fn in_events_mode_confirmed_events_are_duplicates_before_they_reach_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let window = Duration::from_secs(3600);
    let store = EmbeddedStore::open_with(
        dir.path(),
        DedupMode::Events { window },
        Arc::new(SystemClock),
    )
    .unwrap();
    let hold = Duration::from_secs(30);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut e = event("late", &now);
    e.received_at = chrono::Utc::now();
    let remembered = |s: &EmbeddedStore| {
        let c = lock(&s.inner.claims);
        (c.recorded.len(), c.indexed_early.len())
    };

    // Confirmed first (the journal has it), in the table later.
    let late = lease(hold, window);
    assert_eq!(
        store.claim(&late, &keys(&["late"])).await.unwrap(),
        [Claim::New]
    );
    store.confirm(&late, &keys(&["late"])).await.unwrap();
    assert_eq!(
        claim_anew(&store, hold, &keys(&["late"])).await,
        [Claim::Duplicate]
    );
    assert_eq!(remembered(&store), (1, 0));
    store.insert(std::slice::from_ref(&e)).await.unwrap();
    assert_eq!(remembered(&store), (0, 0), "the table answers now");
    assert_eq!(
        claim_anew(&store, hold, &keys(&["late"])).await,
        [Claim::Duplicate]
    );

    // In the table first, confirmed later.
    let mut early = event("early", &now);
    early.received_at = chrono::Utc::now();
    let early_lease = lease(hold, window);
    assert_eq!(
        store.claim(&early_lease, &keys(&["early"])).await.unwrap(),
        [Claim::New]
    );
    store.insert(&[early]).await.unwrap();
    store
        .confirm(&early_lease, &keys(&["early"]))
        .await
        .unwrap();
    assert_eq!(remembered(&store), (0, 0), "nothing left to remember");
    assert_eq!(
        claim_anew(&store, hold, &keys(&["early"])).await,
        [Claim::Duplicate]
    );

    // Ids a journal still held at startup.
    store.remember_recorded(["held".to_owned()]);
    assert_eq!(
        claim_anew(&store, hold, &keys(&["held"])).await,
        [Claim::Duplicate]
    );
}

/// The filter that spares new ids a look in the table holds, once the store has opened, every
/// id the table held before (read in chunks on a thread of its own) and every id inserted
/// since: none of them is taken for new.
#[tokio::test]
async fn in_events_mode_a_reopened_store_knows_its_old_ids_without_looking_new_ones_up() {
    let dir = tempfile::tempdir().unwrap();
    let window = Duration::from_secs(3600);
    let open = || {
        EmbeddedStore::open_with(
            dir.path(),
            DedupMode::Events { window },
            Arc::new(SystemClock),
        )
        .unwrap()
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // More than one chunk of the scan.
    let old = many("old", seen::SCAN_CHUNK * 2 + 17, &now);
    open().insert(&old).await.unwrap();

    let store = open();
    let complete = |s: &EmbeddedStore| {
        lock(&s.inner.claims)
            .seen
            .as_ref()
            .is_some_and(seen::SeenIds::is_complete)
    };
    let t = std::time::Instant::now();
    while !complete(&store) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the scan never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hold = Duration::from_secs(30);
    let old_keys: Vec<DedupKey> = old
        .iter()
        .map(|e| DedupKey::from(e.event.event_id()))
        .collect();
    let claims = claim_anew(&store, hold, &old_keys).await;
    assert!(
        claims.iter().all(|c| *c == Claim::Duplicate),
        "an old id was taken for new"
    );

    let mut fresh = event("fresh", &now);
    fresh.received_at = chrono::Utc::now();
    store.insert(&[fresh]).await.unwrap();
    assert_eq!(
        claim_anew(&store, hold, &keys(&["fresh", "brand-new"])).await,
        [Claim::Duplicate, Claim::New]
    );
    let mut claims = lock(&store.inner.claims);
    let seen = claims.seen.as_mut().unwrap();
    assert!(
        !seen.may_hold("never-sent", unix_ms(chrono::Utc::now())),
        "a new id is looked up"
    );
}

/// `EXPLAIN QUERY PLAN` of the page `query` asks for, one line per step.
fn plan(conn: &Connection, query: &EventQuery) -> String {
    let (clause, args) = crate::adapters::outbound::listing_sql::page_clause(
        query,
        &crate::adapters::outbound::listing_sql::SQLITE,
    );
    let sql = format!("EXPLAIN QUERY PLAN SELECT * FROM events WHERE 1 = 1{clause}");
    let mut stmt = conn.prepare(&sql).unwrap();
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
        .unwrap();
    rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
}

#[tokio::test]
async fn every_listing_reads_an_index_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store
        .insert(&[
            event("e-1", "2025-01-01T00:00:00Z"),
            event("e-2", "2025-01-02T00:00:00Z"),
        ])
        .await
        .unwrap();
    let conn = Connection::open(dir.path().join("cartstream.db")).unwrap();
    // The planner's statistics, as a store with rows in it would have them.
    conn.execute_batch("ANALYZE").unwrap();
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
    let page_two = crate::domain::PageKey {
        occurred_at_ms: 5,
        received_at_ms: 6,
        event_id: "e-9".into(),
    };
    let cases = [
        ("no filter", q(), "events_in_order"),
        (
            "a time range",
            EventQuery {
                since: Some(at("2025-01-01T00:00:00Z")),
                until: Some(at("2025-02-01T00:00:00Z")),
                ..q()
            },
            "events_in_order",
        ),
        (
            "a user",
            EventQuery {
                user_id: Some("u-1".into()),
                ..q()
            },
            "events_of_user",
        ),
        (
            "a type, page two",
            EventQuery {
                event_type: Some(crate::domain::EventType::ItemAdded),
                after: Some(page_two.clone()),
                ..q()
            },
            "events_of_type",
        ),
        (
            "a user and a time range, page two",
            EventQuery {
                user_id: Some("u-1".into()),
                since: Some(at("2025-01-01T00:00:00Z")),
                after: Some(page_two),
                ..q()
            },
            "events_of_user",
        ),
    ];
    for (what, query, index) in cases {
        let plan = plan(&conn, &query);
        assert!(plan.contains(index), "{what}: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{what} sorts: {plan}");
    }
}

#[tokio::test]
async fn of_two_rows_with_one_id_in_a_batch_the_first_is_kept() {
    // The batch is sorted by id before the insert; the copy that came first still wins.
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut batch: Vec<StoredEvent> = (0..300)
        .map(|i| event(&format!("e-{}", (i * 7919) % 300), "2025-01-01T00:00:00Z"))
        .collect();
    batch.extend((0..300).map(|i| event(&format!("e-{i}"), "2025-01-02T00:00:00Z")));
    store.insert(&batch).await.unwrap();
    let page = store.query(&EventQuery::first(1_000)).await.unwrap();
    assert_eq!(page.events.len(), 300);
    let first = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z").unwrap();
    assert!(page.events.iter().all(|e| e.event.occurred_at() == first));
}

#[tokio::test]
async fn an_old_stores_indexes_are_replaced_and_its_events_still_listed() {
    // The two earlier generations: single-column descending indexes, then descending ones in
    // the listing's full order.
    let generations = [
        "CREATE INDEX events_by_time ON events (occurred_at DESC);
         CREATE INDEX events_by_user ON events (user_id, occurred_at DESC);",
        "CREATE INDEX events_listing_order ON events (occurred_at DESC, received_at DESC, event_id DESC);
         CREATE INDEX events_by_user_order ON events (user_id, occurred_at DESC, received_at DESC, event_id DESC);
         CREATE INDEX events_by_type ON events (event_type, occurred_at DESC, received_at DESC, event_id DESC);",
    ];
    for old in generations {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cartstream.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE events (event_id TEXT PRIMARY KEY NOT NULL, user_id TEXT NOT NULL,
                 session_id TEXT, event_type TEXT NOT NULL, occurred_at INTEGER NOT NULL,
                 received_at INTEGER NOT NULL, source TEXT NOT NULL, metadata TEXT NOT NULL);",
        )
        .unwrap();
        conn.execute_batch(old).unwrap();
        for (i, ms) in [(1, 1_000), (2, 3_000), (3, 2_000)] {
            conn.execute(
                "INSERT INTO events VALUES (?1, 'u-1', NULL, 'item_added', ?2, ?2, 'http', '{}')",
                params![format!("old-{i}"), ms],
            )
            .unwrap();
        }
        drop(conn);
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let conn = Connection::open(&path).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL ORDER BY name")
            .unwrap();
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            names,
            ["events_in_order", "events_of_type", "events_of_user"],
            "{old}"
        );
        let by_user = EventQuery {
            user_id: Some("u-1".into()),
            ..q()
        };
        for query in [q(), by_user] {
            let ids: Vec<String> = store
                .query(&query)
                .await
                .unwrap()
                .events
                .iter()
                .map(|e| e.event.event_id().to_string())
                .collect();
            assert_eq!(ids, ["old-2", "old-3", "old-1"], "newest first: {old}");
        }
    }
}

/// A clock the test sets.
fn set_clock(now: &Arc<Mutex<chrono::DateTime<chrono::Utc>>>) -> Arc<dyn Clock> {
    let now = Arc::clone(now);
    let mut clock = crate::ports::MockClock::new();
    clock.expect_now().returning(move || *lock(&now));
    Arc::new(clock)
}

fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

/// `n` events `{prefix}-{i}` at `ts`, each received 7 ms later.
fn many(prefix: &str, n: usize, ts: &str) -> Vec<StoredEvent> {
    (0..n)
        .map(|i| {
            fixtures::event(&format!("{prefix}-{i}"))
                .at(ts)
                .received_after(7)
                .stored()
        })
        .collect()
}

fn count(store: &EmbeddedStore) -> i64 {
    lock(&store.inner.read)
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn retention_deletes_old_events_in_batches_and_dedup_and_listing_agree() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(Mutex::new(at("2025-03-02T00:00:00Z")));
    let window = Duration::from_secs(86_400);
    let store = EmbeddedStore::open_with(dir.path(), DedupMode::Events { window }, set_clock(&now))
        .unwrap();
    let old = many("old", 2 * EXPIRE_BATCH + 10, "2025-01-01T00:00:00Z");
    store.insert(&old).await.unwrap();
    // Sent with an old timestamp an hour ago: dedup still answers for it, so it stays.
    let mut late = event("late", "2025-01-01T00:00:00Z");
    late.received_at = at("2025-03-01T23:00:00Z");
    let new = many("new", 5, "2025-03-01T00:00:00Z");
    store.insert(&[late]).await.unwrap();
    store.insert(&new).await.unwrap();
    let policy =
        crate::app::retention::RetentionPolicy::new(Duration::from_secs(30 * 86_400), window);
    let expiry = policy.expiry(*lock(&now));

    let mut left = vec![count(&store)];
    let mut deleted = Vec::new();
    loop {
        let step = store.expire_step(expiry).await.unwrap();
        deleted.push(step.events);
        if !step.more {
            break;
        }
        left.push(count(&store));
    }
    left.push(count(&store));
    assert_eq!(
        deleted,
        [EXPIRE_BATCH as u64, EXPIRE_BATCH as u64, 10],
        "each step says how many it deleted"
    );
    let (b, total) = (EXPIRE_BATCH as i64, 2 * EXPIRE_BATCH as i64 + 16);
    assert_eq!(
        left,
        [total, total - b, total - 2 * b, 6],
        "one batch a step, until only what is kept is left"
    );

    let listed: Vec<String> = store
        .query(&q())
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e.event.event_id().as_str().to_owned())
        .collect();
    assert_eq!(listed.len(), 6);
    assert!(listed.contains(&"late".to_owned()) && listed.iter().all(|id| !id.starts_with("old")));
    assert_eq!(
        store
            .known(&keys(&["old-0", "old-4009", "late", "new-0"]))
            .await
            .unwrap(),
        [false, false, true, true],
        "known() says what GET /events lists"
    );
    assert_eq!(
        claim_anew(
            &store,
            Duration::from_secs(30),
            &keys(&["old-0", "late", "new-4"])
        )
        .await,
        [Claim::New, Claim::Duplicate, Claim::Duplicate],
        "a deleted event is not a duplicate (its window ended long ago); a kept one is"
    );

    // A day on, the late event's window is over too and it goes.
    *lock(&now) = at("2025-03-03T00:00:00Z");
    let later = policy.expiry(*lock(&now));
    let step = store.expire_step(later).await.unwrap();
    assert_eq!((step.more, step.events, step.mutations), (false, 1, 0));
    assert_eq!(count(&store), 5);

    // The step reads the listing index from its oldest end, not the whole table.
    let conn = lock(&store.inner.read);
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {EXPIRE_EVENTS}"))
        .unwrap();
    let plan: Vec<String> = stmt
        .query_map(params![0, 0, 1], |r| r.get(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(plan.join("; ").contains("events_in_order"), "{plan:?}");
}

#[tokio::test]
async fn retention_deletes_every_old_event_even_the_last_one_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store
        .insert(&many("old", 3, "2025-01-01T00:00:00Z"))
        .await
        .unwrap();
    let expiry = Expiry {
        occurred_before: at("2025-06-01T00:00:00Z"),
        received_before: at("2025-06-01T00:00:00Z"),
    };
    assert!(!store.expire_step(expiry).await.unwrap().more);
    assert_eq!(count(&store), 0);
    assert!(store.query(&q()).await.unwrap().events.is_empty());
}

fn page_size(store: &EmbeddedStore) -> i64 {
    let conn = lock(&store.inner.read);
    conn.query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap()
}

fn pages(store: &EmbeddedStore) -> (i64, i64) {
    let conn = lock(&store.inner.read);
    let get = |p: &str| conn.query_row(p, [], |r| r.get::<_, i64>(0)).unwrap();
    (get("PRAGMA page_count"), get("PRAGMA freelist_count"))
}

/// Cycles of a day's events in, the day before's out: the size after each day's inserts.
async fn sizes_over_days(store: &EmbeddedStore) -> Vec<i64> {
    let day = chrono::Duration::days(1);
    let start = at("2025-01-01T00:00:00Z");
    let mut sizes = Vec::new();
    for d in 0..6 {
        let ts = (start + day * d).to_rfc3339();
        store
            .insert(&many(&format!("d{d}"), 3_000, &ts))
            .await
            .unwrap();
        sizes.push(pages(store).0);
        let expiry = Expiry {
            occurred_before: start + day * d + chrono::Duration::hours(1),
            received_before: start + day * (d + 1),
        };
        while store.expire_step(expiry).await.unwrap().more {}
    }
    sizes
}

#[tokio::test]
async fn with_retention_a_new_file_gives_space_back_and_stops_growing() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert!(store.gives_space_back().unwrap());
    assert_eq!(page_size(&store), 16_384, "a new file has 16 KiB pages");
    let sizes = sizes_over_days(&store).await;
    let (after, free) = pages(&store);
    assert_eq!(free, 0, "every freed page was given back");
    assert!(
        after < sizes[0] / 4,
        "the file shrank to what is kept: {after} of {sizes:?}"
    );
    assert!(
        sizes[1..].iter().all(|s| *s <= sizes[0] + 8),
        "no growth: {sizes:?}"
    );
}

#[tokio::test]
async fn with_retention_a_file_from_before_reuses_freed_pages_and_stops_growing() {
    let dir = tempfile::tempdir().unwrap();
    // Made by a version before retention: `auto_vacuum = NONE`.
    let conn = Connection::open(dir.path().join("cartstream.db")).unwrap();
    conn.execute_batch("CREATE TABLE before_retention (x INTEGER)")
        .unwrap();
    drop(conn);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert!(!store.gives_space_back().unwrap());
    assert_eq!(
        page_size(&store),
        4_096,
        "a file keeps the page size it was made with"
    );
    let sizes = sizes_over_days(&store).await;
    assert!(pages(&store).1 > 0, "freed pages stay in the file, free");
    assert!(
        sizes[1..].iter().all(|s| *s <= sizes[0] + 8),
        "no growth: {sizes:?}"
    );
}

#[tokio::test]
async fn recent_events_are_written_at_background_priority_and_ones_behind_at_ingests() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(Mutex::new(at("2025-03-02T00:00:00Z")));
    let store = EmbeddedStore::open_with(
        dir.path(),
        DedupMode::Events { window: WINDOW },
        set_clock(&now),
    )
    .unwrap();
    let received = |id: &str, ms_ago: i64| {
        let mut e = event(id, "2025-03-01T00:00:00Z");
        e.received_at = *lock(&now) - chrono::Duration::milliseconds(ms_ago);
        e
    };
    let rows = |events: &[StoredEvent]| events.iter().map(Row::from).collect::<Vec<_>>();
    let recent = [received("r-1", 0), received("r-2", BACKGROUND_FOR_MS - 1)];
    let behind = [received("b-1", 0), received("b-2", BACKGROUND_FOR_MS)];
    assert!(store.inner.writes_in_background(&rows(&recent)));
    assert!(
        !store.inner.writes_in_background(&rows(&behind)),
        "the oldest event of a batch decides"
    );
    let nice = store
        .inner
        .background
        .run(|| Ok(crate::adapters::thread_priority::this_threads_nice()))
        .await
        .unwrap();
    assert_eq!(nice, BACKGROUND_NICE, "the background thread is lowered");

    store.insert(&recent).await.unwrap();
    store.insert(&behind).await.unwrap();
    assert_eq!(count(&store), 4, "both ways store the events");
    let dup = claim_anew(&store, Duration::from_secs(5), &keys(&["r-1", "b-2"])).await;
    assert!(
        dup.iter().all(|c| matches!(c, Claim::Duplicate)),
        "and the table answers for them: {dup:?}"
    );
}
