//! The paging contract of `EventStore::query`, one check of the event store suite.
//!
//! Paging through a listing with a small `limit` and byte budget lists every matching event
//! exactly once, in listing order, while events are inserted between pages; each page keeps
//! to its limit and budget; only the last page says there is no more.

use crate::fixtures::{self, ids};
use cartstream::domain::{EventType, StoredEvent};
use cartstream::ports::{listed_bytes, newest_first, EventQuery, EventStore, PageKey};
use chrono::DateTime;
use serde_json::json;
use std::collections::HashSet;

/// `ms` after the fixtures' instant; `received` ms later it was received; `pad` bytes of
/// metadata.
fn event(id: &str, user: &str, kind: &str, ms: i64, received: i64, pad: usize) -> StoredEvent {
    fixtures::event(id)
        .user(user)
        .kind(kind)
        .at_ms(ms)
        .received_after(received)
        .metadata(json!({"pad": "x".repeat(pad)}))
        .stored()
}

/// 40 events of user `u`, some `cart_viewed`, with shared timestamps (told apart by
/// `receivedAt`, then by id) and sizes that vary, plus 5 of another user.
fn initial() -> Vec<StoredEvent> {
    let mut out = Vec::new();
    for i in 0..40 {
        let kind = if i % 3 == 0 {
            "cart_viewed"
        } else {
            "cart_cleared"
        };
        let (ms, received) = (10_000 + (i / 4) * 1000, (i % 4) / 2);
        let pad = (i % 5) as usize * 60;
        out.push(event(&format!("e{i:02}"), "u", kind, ms, received, pad));
    }
    for i in 0..5 {
        out.push(event(
            &format!("o{i}"),
            "other",
            "cart_viewed",
            10_500 + i,
            0,
            0,
        ));
    }
    out
}

/// Pages through `query` on `reader`, whose store holds `stored`, inserting through
/// `writers` (in turn) after each page an event newer than every page so far and one older
/// than the rest; checks the contract and returns what it inserted.
async fn page_through(
    reader: &dyn EventStore,
    writers: &[&dyn EventStore],
    stored: &[StoredEvent],
    mut query: EventQuery,
    matches: impl Fn(&StoredEvent) -> bool,
) -> Vec<StoredEvent> {
    let mut all: Vec<StoredEvent> = stored.iter().filter(|e| matches(e)).cloned().collect();
    let mut inserted = Vec::new();
    let mut listed: Vec<StoredEvent> = Vec::new();
    for n in 0..200 {
        let page = reader.query(&query).await.unwrap();
        assert!(
            !page.events.is_empty() || !page.more,
            "page {n} is empty yet not last"
        );
        assert!(page.events.len() <= query.limit, "page {n} over its limit");
        let bytes: usize = page.events.iter().map(listed_bytes).sum();
        assert!(
            page.events.len() == 1 || bytes <= query.max_bytes,
            "page {n}: {bytes} bytes over a budget of {}",
            query.max_bytes
        );
        listed.extend(page.events.iter().cloned());
        if !page.more {
            let mut expected = all.clone();
            expected.sort_by(newest_first);
            let got = ids(&listed);
            assert_eq!(got, ids(&expected));
            assert_eq!(got.iter().collect::<HashSet<_>>().len(), got.len());
            return inserted;
        }
        query.after = page.events.last().map(PageKey::of);
        let newer = event(
            &format!("new{n}"),
            "u",
            "cart_viewed",
            90_000 + n as i64,
            0,
            0,
        );
        let older = event(
            &format!("old{n:03}"),
            "u",
            "cart_viewed",
            5_000 - n as i64,
            0,
            0,
        );
        let Some(writer) = writers.get(n % writers.len().max(1)) else {
            continue;
        };
        writer
            .insert(&[newer.clone(), older.clone()])
            .await
            .unwrap();
        if matches(&older) {
            all.push(older.clone());
        }
        inserted.extend([newer, older]);
    }
    panic!("no last page after 200 pages");
}

/// Runs the contract on an empty store, writing through `writers` in turn.
pub async fn pages_by_contract(reader: &dyn EventStore, writers: &[&dyn EventStore]) {
    let initial = initial();
    // Spread over every writer, and one event through two (stored twice, listed once).
    for (i, chunk) in initial.chunks(7).enumerate() {
        writers[i % writers.len()].insert(chunk).await.unwrap();
    }
    if writers.len() > 1 {
        writers[1].insert(&initial[..1]).await.unwrap();
    }
    let budget = 3 * listed_bytes(&initial[0]) + 100;
    let small = EventQuery {
        user_id: Some("u".into()),
        max_bytes: budget,
        ..EventQuery::first(4)
    };
    let mut stored = initial.clone();
    let inserted = page_through(reader, writers, &stored, small.clone(), |e| {
        e.event.user_id() == "u"
    })
    .await;
    assert!(
        inserted.len() > 20,
        "{} inserted while paging",
        inserted.len()
    );
    stored.extend(inserted);

    // Filters combine with the position; a budget smaller than any event gives pages of one.
    let viewed = EventQuery {
        event_type: Some(EventType::CartViewed),
        since: Some(
            DateTime::parse_from_rfc3339("2025-08-10T03:27:10Z")
                .unwrap()
                .into(),
        ),
        max_bytes: 1,
        ..small
    };
    page_through(reader, &[], &stored, viewed, |e| {
        e.event.user_id() == "u"
            && e.event.event_type() == EventType::CartViewed
            && e.event.occurred_at().timestamp_millis() >= 1_754_796_430_000
    })
    .await;
}
