use super::*;
use crate::domain::{parse_event, EventId, Source, ValidationPolicy};
use chrono::{DateTime, Utc};
use serde_json::json;

fn event(id: &str, ts: &str) -> StoredEvent {
    let now: DateTime<Utc> = ts.parse().unwrap();
    let raw = json!({"eventId": id, "userId": "u", "eventType": "cart_viewed", "timestamp": ts,
                     "metadata": {"note": "ünïcode 🛒"}});
    let event = parse_event(&raw, &ValidationPolicy::protocol_default(), now, || {
        EventId::from_random_bytes([2; 16])
    })
    .unwrap();
    StoredEvent {
        event,
        received_at: now,
        source: Source::Http,
    }
}

fn q() -> EventQuery {
    EventQuery {
        user_id: None,
        event_type: None,
        since: None,
        until: None,
        limit: 100,
    }
}

#[tokio::test]
async fn entries_come_back_oldest_first_and_are_removed_through_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let j = SqliteJournal::open(dir.path(), 1 << 20).unwrap();
    let a = event("a", "2025-08-10T03:00:00.001Z");
    let b = event("b", "2025-08-10T03:00:00.002Z");
    let c = event("c", "2025-08-10T03:00:00.003Z");
    j.append(&[a.clone(), b.clone()]).await.unwrap();
    j.append(std::slice::from_ref(&c)).await.unwrap();
    let stats = j.stats();
    assert_eq!(stats.entries, 3);
    assert_eq!(stats.oldest, Some(a.received_at));
    let got = j.oldest_after(0, 2, usize::MAX).await.unwrap();
    assert_eq!(got.iter().map(|e| &e.event).collect::<Vec<_>>(), [&a, &b]);
    j.remove_through(got[1].seq).await.unwrap();
    assert_eq!(j.stats().entries, 1);
    assert_eq!(j.stats().oldest, Some(c.received_at));
    assert_eq!(j.oldest_after(0, 10, usize::MAX).await.unwrap()[0].event, c);
    assert_eq!(j.query(&q()).await.unwrap(), [c]);
}

#[tokio::test]
async fn byte_limits_cut_a_read_but_never_below_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let j = SqliteJournal::open(dir.path(), 1 << 20).unwrap();
    j.append(&[
        event("a", "2025-08-10T03:00:00Z"),
        event("b", "2025-08-10T03:00:01Z"),
    ])
    .await
    .unwrap();
    assert_eq!(j.oldest_after(0, 10, 1).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_full_journal_refuses_and_frees_up_as_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let one = Row::from(&event("a", "2025-08-10T03:00:00Z")).size() as u64;
    let j = SqliteJournal::open(dir.path(), one * 2).unwrap();
    j.append(&[
        event("a", "2025-08-10T03:00:00Z"),
        event("b", "2025-08-10T03:00:01Z"),
    ])
    .await
    .unwrap();
    let err = j
        .append(&[event("c", "2025-08-10T03:00:02Z")])
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Full(_)), "{err}");
    assert_eq!(j.stats().entries, 2, "nothing already in it is dropped");
    let first = j.oldest_after(0, 1, usize::MAX).await.unwrap();
    j.remove_through(first[0].seq).await.unwrap();
    j.append(&[event("c", "2025-08-10T03:00:02Z")])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_reopened_journal_still_holds_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = SqliteJournal::open(dir.path(), 1 << 20).unwrap();
        j.append(&[
            event("a", "2025-08-10T03:00:00Z"),
            event("b", "2025-08-10T03:00:01Z"),
        ])
        .await
        .unwrap();
    }
    let j = SqliteJournal::open(dir.path(), 1 << 20).unwrap();
    let stats = j.stats();
    assert_eq!(stats.entries, 2);
    assert!(stats.bytes > 0);
    assert_eq!(j.oldest_after(0, 10, usize::MAX).await.unwrap().len(), 2);
}
