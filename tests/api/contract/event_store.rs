//! The `EventStore` contract: what every store does with events, the same way.
//!
//! Runs on the embedded store, ClickHouse, and the journaled store (the local journal in
//! front of a remote store, as the server runs with ClickHouse configured) over each. The
//! journaled store's writes are spread over the journal and its remote store, so its reads
//! merge both. [`every_query_lists_what_the_domain_filter_selects`] holds the three ways of
//! filtering (the journal's `EventQuery::matches`, SQLite's SQL, ClickHouse's SQL) to the one
//! definition.

use super::paging::pages_by_contract;
use crate::fixtures::{event, full, ids, rich_metadata};
use cartstream::adapters::outbound::embedded::EmbeddedStore;
use cartstream::adapters::outbound::journal::SqliteJournal;
use cartstream::app::forwarder::JournaledStore;
use cartstream::domain::{DedupKey, EventId, EventType, StoredEvent};
use cartstream::ports::{EventQuery, EventStore, PageBuilder, PageKey};
use chrono::{DateTime, Utc};
use std::any::Any;
use std::sync::Arc;

/// A store under test.
pub struct Subject {
    /// What the checks read from (and write to, unless they spread writes).
    store: Arc<dyn EventStore>,
    /// `store`, then any store whose events `store` also lists (a journaled store's remote
    /// store, which the forwarder would have written).
    writers: Vec<Arc<dyn EventStore>>,
    /// What must live as long as the store: its directory, its throwaway database.
    _keep: Box<dyn Any + Send>,
}

impl Subject {
    fn alone(store: Arc<dyn EventStore>, keep: impl Any + Send) -> Self {
        Self {
            writers: vec![Arc::clone(&store)],
            store,
            _keep: Box::new(keep),
        }
    }

    /// A journaled store over `remote`, with a journal of its own.
    fn journaled(remote: Arc<dyn EventStore>, keep: impl Any + Send) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(SqliteJournal::open(dir.path(), 1 << 30).unwrap());
        let store: Arc<dyn EventStore> = Arc::new(JournaledStore::new(
            journal,
            Arc::clone(&remote),
            Default::default(),
        ));
        Self {
            writers: vec![Arc::clone(&store), remote],
            store,
            _keep: Box::new((dir, keep)),
        }
    }

    /// Inserts `events` spread over the writers in turn, one batch each.
    async fn insert_spread(&self, events: &[StoredEvent]) {
        for (i, e) in events.iter().enumerate() {
            let writer = &self.writers[i % self.writers.len()];
            writer.insert(std::slice::from_ref(e)).await.unwrap();
        }
    }
}

async fn embedded() -> Option<Subject> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    Some(Subject::alone(store, dir))
}

async fn clickhouse() -> Option<Subject> {
    let (store, db) = crate::clickhouse_store::store().await?;
    Some(Subject::alone(Arc::new(store), db))
}

async fn journaled_over_embedded() -> Option<Subject> {
    let dir = tempfile::tempdir().unwrap();
    let remote = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    Some(Subject::journaled(remote, dir))
}

async fn journaled_over_clickhouse() -> Option<Subject> {
    let (remote, db) = crate::clickhouse_store::store().await?;
    Some(Subject::journaled(Arc::new(remote), db))
}

/// Sharded over the 2-shard cluster, read and written through its `Distributed` table.
async fn clickhouse_cluster() -> Option<Subject> {
    let (store, db) = crate::clickhouse_cluster::store().await?;
    Some(Subject::alone(Arc::new(store), db))
}

contract_tests! {
    adapters: [
        embedded,
        clickhouse,
        journaled_over_embedded,
        journaled_over_clickhouse,
        clickhouse_cluster,
    ],
    checks: [
        an_event_reads_back_with_every_field,
        inserting_again_keeps_one_copy,
        query_filters_and_orders_newest_first,
        every_query_lists_what_the_domain_filter_selects,
        known_answers_which_ids_are_stored,
        pages_keep_to_the_contract_while_events_arrive,
        check_answers,
    ],
}

fn q() -> EventQuery {
    EventQuery::first(100)
}

fn at(ts: &str) -> DateTime<Utc> {
    ts.parse().unwrap()
}

async fn listed(store: &dyn EventStore, query: &EventQuery) -> Vec<StoredEvent> {
    store.query(query).await.unwrap().events
}

async fn an_event_reads_back_with_every_field(s: &Subject) {
    let full = full("e-full").stored();
    let bare = event("e-bare")
        .user("u-2")
        .at("2025-08-10T03:27:04.001Z")
        .received_after(999)
        .stored();
    s.store.insert(&[full.clone(), bare.clone()]).await.unwrap();
    let got = listed(&*s.store, &q()).await;
    assert_eq!(got, [full, bare], "newest first, every field equal");
    assert_eq!(got[1].event.session_id(), None, "no session stays none");
}

async fn inserting_again_keeps_one_copy(s: &Subject) {
    let e = event("e-1").at("2025-08-10T03:27:04.123Z").stored();
    let other = event("e-2").at("2025-08-10T03:27:05.000Z").stored();
    s.store.insert(&[e.clone(), e.clone()]).await.unwrap();
    s.store.insert(&[e.clone(), other]).await.unwrap();
    for writer in &s.writers {
        writer.insert(std::slice::from_ref(&e)).await.unwrap();
    }
    assert_eq!(ids(&listed(&*s.store, &q()).await), ["e-2", "e-1"]);
}

/// Four events a day apart and one in the month before (ClickHouse partitions by month, so a
/// read spans partitions), by user and type.
fn five() -> Vec<StoredEvent> {
    [
        ("a", "u-1", "item_added", "2025-08-10T03:00:00.000Z"),
        ("b", "u-2", "item_added", "2025-08-10T04:00:00.000Z"),
        ("c", "u-1", "cart_viewed", "2025-08-10T05:00:00.000Z"),
        ("d", "u-1", "item_added", "2025-08-10T06:00:00.000Z"),
        ("e", "u-1", "item_added", "2025-07-31T23:59:59.999Z"),
    ]
    .iter()
    .map(|(id, user, kind, ts)| {
        event(id)
            .user(user)
            .kind(kind)
            .at(ts)
            .metadata(rich_metadata())
            .received_after(5)
            .stored()
    })
    .collect()
}

async fn query_filters_and_orders_newest_first(s: &Subject) {
    s.insert_spread(&five()).await;
    let store = &*s.store;
    assert_eq!(ids(&listed(store, &q()).await), ["d", "c", "b", "a", "e"]);
    let mut f = q();
    f.user_id = Some("u-1".into());
    f.event_type = Some(EventType::ItemAdded);
    assert_eq!(ids(&listed(store, &f).await), ["d", "a", "e"]);
    let mut f = q();
    f.since = Some(at("2025-08-10T04:00:00Z"));
    f.until = Some(at("2025-08-10T05:00:00Z"));
    assert_eq!(
        ids(&listed(store, &f).await),
        ["c", "b"],
        "bounds inclusive"
    );
    f.since = Some(at("2025-08-10T04:00:00.001Z"));
    f.until = Some(at("2025-08-10T04:59:59.999Z"));
    assert!(listed(store, &f).await.is_empty(), "to the millisecond");
    let mut f = q();
    f.limit = 2;
    let page = store.query(&f).await.unwrap();
    assert_eq!(ids(&page.events), ["d", "c"]);
    assert!(page.more);
    let mut f = q();
    f.user_id = Some("nobody' OR '1'='1".into());
    assert!(listed(store, &f).await.is_empty(), "values are escaped");
}

/// Events that sit on every edge a filter has: shared timestamps told apart by `receivedAt`
/// and then by id, neighbours a millisecond apart, another month.
pub fn edges() -> Vec<StoredEvent> {
    let mut out = five();
    for (id, ms, received) in [
        ("m-1", 499, 0),
        ("m-2", 500, 0),
        ("m-3", 501, 0),
        ("r-1", 500, 1),
        ("r-2", 500, 2),
        ("s-1", 3_600_000, 2),
        ("s-2", 3_600_000, 2),
    ] {
        let kind = if ms == 500 {
            "item_added"
        } else {
            "cart_viewed"
        };
        let e = event(id)
            .user("u")
            .kind(kind)
            .at_ms(ms)
            .received_after(received)
            .metadata(rich_metadata());
        out.push(e.stored());
    }
    out
}

/// The queries to try: every combination of the filters' edges.
pub fn queries(events: &[StoredEvent]) -> Vec<EventQuery> {
    let t = |ms: i64| Some(crate::fixtures::t0() + chrono::Duration::milliseconds(ms));
    let users = [None, Some("u-1"), Some("u"), Some("nobody' OR '1'='1")];
    let kinds = [
        None,
        Some(EventType::ItemAdded),
        Some(EventType::CartViewed),
    ];
    let bounds = [
        (None, None),
        (t(500), None),
        (None, t(500)),
        (t(500), t(500)),
    ];
    let key = |id: &str| {
        let e = events.iter().find(|e| e.event.event_id().as_str() == id);
        Some(PageKey::of(e.unwrap()))
    };
    let starts = [None, key("r-1"), key("s-1"), key("c")];
    let mut out = Vec::new();
    for user in users {
        for kind in kinds {
            for (since, until) in bounds {
                for after in &starts {
                    for limit in [2, 100] {
                        out.push(EventQuery {
                            user_id: user.map(str::to_owned),
                            event_type: kind,
                            since,
                            until,
                            after: after.clone(),
                            ..EventQuery::first(limit)
                        });
                    }
                }
            }
        }
    }
    out
}

/// The page the domain says `query` lists from `stored`.
pub fn domain_page(stored: &[StoredEvent], query: &EventQuery) -> cartstream::ports::EventPage {
    let mut page = PageBuilder::new(query);
    for e in stored.iter().filter(|e| query.matches(e)) {
        page.offer(e.clone());
    }
    page.finish()
}

async fn every_query_lists_what_the_domain_filter_selects(s: &Subject) {
    let stored = edges();
    s.insert_spread(&stored).await;
    for query in queries(&stored) {
        let got = s.store.query(&query).await.unwrap();
        let want = domain_page(&stored, &query);
        assert_eq!(
            (ids(&got.events), got.more),
            (ids(&want.events), want.more),
            "{query:?}"
        );
        assert_eq!(got, want, "{query:?}");
    }
}

async fn known_answers_which_ids_are_stored(s: &Subject) {
    let e = |id: &str| event(id).stored();
    s.store
        .insert(&[e("k-1"), e("k-1"), e("k:3")])
        .await
        .unwrap();
    let keys: Vec<DedupKey> = ["k-1", "k-2", "k:3"]
        .iter()
        .map(|k| (&EventId::parse(k).unwrap()).into())
        .collect();
    assert_eq!(s.store.known(&keys).await.unwrap(), [true, false, true]);
    assert_eq!(s.store.known(&[]).await.unwrap(), Vec::<bool>::new());
}

async fn pages_keep_to_the_contract_while_events_arrive(s: &Subject) {
    let writers: Vec<&dyn EventStore> = s.writers.iter().map(|w| &**w).collect();
    pages_by_contract(&*s.store, &writers).await;
}

async fn check_answers(s: &Subject) {
    s.store.check().await.unwrap();
}
