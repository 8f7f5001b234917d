//! The `Journal` contract: appends come back oldest first, reads keep to their limits,
//! removal is by seq, the size limit refuses and frees up, and reads see what the domain's
//! filter selects. Runs on the SQLite journal, the only journal; its own unit tests cover what
//! is its alone (reopening, migration, the blob format).

use super::event_store::{domain_page, edges, queries};
use crate::fixtures::event;
use cartstream::adapters::outbound::journal::SqliteJournal;
use cartstream::domain::{DedupKey, StoredEvent};
use cartstream::ports::{EventQuery, Journal, JournalStats};
use std::sync::Arc;

/// Opens journals under test.
pub struct Subject {
    open: Box<dyn Fn(u64) -> Arc<dyn Journal> + Send + Sync>,
}

impl Subject {
    /// An empty journal holding at most `max_bytes`.
    fn open(&self, max_bytes: u64) -> Arc<dyn Journal> {
        (self.open)(max_bytes)
    }
}

async fn sqlite() -> Option<Subject> {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let opened = std::sync::atomic::AtomicUsize::new(0);
    Some(Subject {
        open: Box::new(move |max_bytes| {
            // A directory of its own per journal, inside the one the subject keeps.
            let n = opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.path().join(n.to_string());
            Arc::new(SqliteJournal::open(&path, max_bytes).unwrap())
        }),
    })
}

contract_tests! {
    adapters: [sqlite],
    checks: [
        entries_come_back_oldest_first_and_are_removed_through_a_seq,
        byte_limits_cut_a_read_but_never_below_one_entry,
        a_full_journal_refuses_and_frees_up_as_it_drains,
        reads_cut_inside_batches_and_go_on_where_they_stopped,
        counts_follow_every_removal_point_across_batches,
        known_answers_which_entries_are_pending,
        every_query_lists_what_the_domain_filter_selects,
    ],
}

const MIB: u64 = 1 << 20;

fn at(id: &str, ts: &str) -> StoredEvent {
    event(id).at(ts).stored()
}

fn many(prefix: &str, n: usize) -> Vec<StoredEvent> {
    (0..n)
        .map(|i| at(&format!("{prefix}{i}"), "2025-08-10T03:00:00Z"))
        .collect()
}

async fn entries_come_back_oldest_first_and_are_removed_through_a_seq(s: &Subject) {
    let j = s.open(MIB);
    let a = at("a", "2025-08-10T03:00:00.001Z");
    let b = at("b", "2025-08-10T03:00:00.002Z");
    let c = at("c", "2025-08-10T03:00:00.003Z");
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
    let page = j.query(&EventQuery::first(100)).await.unwrap();
    assert_eq!(page.events, [c]);
    j.remove_through(got[1].seq + 1).await.unwrap();
    assert_eq!(j.stats(), JournalStats::default());
}

async fn byte_limits_cut_a_read_but_never_below_one_entry(s: &Subject) {
    let j = s.open(MIB);
    j.append(&many("e", 2)).await.unwrap();
    assert_eq!(j.oldest_after(0, 10, 1).await.unwrap().len(), 1);
}

async fn a_full_journal_refuses_and_frees_up_as_it_drains(s: &Subject) {
    // What one such entry counts for, as the journal measures it.
    let measure = s.open(MIB);
    measure.append(&many("a", 1)).await.unwrap();
    let one = measure.stats().bytes;
    let j = s.open(one * 2);
    j.append(&many("a", 2)).await.unwrap();
    let err = j.append(&many("c", 1)).await.unwrap_err();
    assert!(
        matches!(err, cartstream::ports::PortError::Full(_)),
        "{err}"
    );
    assert_eq!(j.stats().entries, 2, "nothing already in it is dropped");
    let first = j.oldest_after(0, 1, usize::MAX).await.unwrap();
    j.remove_through(first[0].seq).await.unwrap();
    j.append(&many("c", 1)).await.unwrap();
}

async fn reads_cut_inside_batches_and_go_on_where_they_stopped(s: &Subject) {
    let j = s.open(MIB);
    let events = many("e", 7);
    j.append(&events[..3]).await.unwrap();
    j.append(&events[3..]).await.unwrap();
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let got = j.oldest_after(after, 2, usize::MAX).await.unwrap();
        let Some(last) = got.last() else { break };
        after = last.seq;
        seen.extend(got.into_iter().map(|e| e.event));
    }
    assert_eq!(seen, events);
    let two = j.oldest_after(1, 2, usize::MAX).await.unwrap();
    assert_eq!(two.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
}

async fn counts_follow_every_removal_point_across_batches(s: &Subject) {
    let j = s.open(MIB);
    for b in 0..10 {
        j.append(&many(&format!("b{b}e"), 3)).await.unwrap();
    }
    let full = j.stats().bytes;
    for through in [1, 2, 3, 7, 15, 16, 29, 30] {
        j.remove_through(through).await.unwrap();
        let stats = j.stats();
        assert_eq!(stats.entries, 30 - through as u64, "through {through}");
        let rest = j.oldest_after(0, 100, usize::MAX).await.unwrap();
        assert_eq!(rest.len() as u64, stats.entries);
        assert_eq!(
            rest.first().map(|e| e.seq),
            (through < 30).then_some(through + 1)
        );
        let left: u64 = rest.iter().map(|e| e.bytes as u64).sum();
        assert_eq!(stats.bytes, left, "through {through}");
        assert!(stats.bytes <= full);
    }
}

async fn known_answers_which_entries_are_pending(s: &Subject) {
    let j = s.open(MIB);
    j.append(&many("k", 3)).await.unwrap();
    j.remove_through(1).await.unwrap();
    let keys: Vec<DedupKey> = ["k0", "k1", "k2", "k3"]
        .iter()
        .map(|id| DedupKey::of(&event(id).cart_event()).unwrap())
        .collect();
    assert_eq!(j.known(&keys).await.unwrap(), [false, true, true, false]);
}

async fn every_query_lists_what_the_domain_filter_selects(s: &Subject) {
    let j = s.open(MIB);
    let stored = edges();
    for chunk in stored.chunks(3) {
        j.append(chunk).await.unwrap();
    }
    for query in queries(&stored) {
        let got = j.query(&query).await.unwrap();
        assert_eq!(got, domain_page(&stored, &query), "{query:?}");
    }
}
