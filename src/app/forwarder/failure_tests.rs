//! What the forwarder does when the journal fails: each `Err` branch on a journal call, driven
//! through the published fake. The journal fake keeps just enough state (what is left in it)
//! for the forwarder to loop as it does over the real journal.

use super::*;
use crate::domain::{fixtures, Source};
use crate::ports::{JournalEntry, JournalStats, MockEventStore, MockJournal};
use chrono::Utc;
use std::sync::Mutex;

fn entry(seq: i64) -> JournalEntry {
    JournalEntry {
        seq,
        event: fixtures::event(&format!("e{seq}"))
            .at_now()
            .via(Source::Ws)
            .stored(),
        bytes: 100,
    }
}

fn injected() -> PortError {
    PortError::Unavailable("injected failure".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A journal holding `seqs`: `oldest_after` reads from what is left, `remove_through` removes
/// and logs its argument (after the failures the test set up first), `stats` counts.
fn journal(journal: &mut MockJournal, seqs: &[i64], removed: &Arc<Mutex<Vec<i64>>>) {
    let left = Arc::new(Mutex::new(seqs.to_vec()));
    let l = Arc::clone(&left);
    journal
        .expect_oldest_after()
        .returning(move |after, max, _| {
            let seqs = lock(&l);
            Ok(seqs
                .iter()
                .filter(|s| **s > after)
                .take(max)
                .map(|s| entry(*s))
                .collect())
        });
    let (l, r) = (Arc::clone(&left), Arc::clone(removed));
    journal.expect_remove_through().returning(move |upto| {
        lock(&r).push(upto);
        lock(&l).retain(|s| *s > upto);
        Ok(())
    });
    journal.expect_stats().returning(move || {
        let left = lock(&left);
        JournalStats {
            entries: left.len() as u64,
            bytes: 100 * left.len() as u64,
            oldest: (!left.is_empty()).then(|| Utc::now() - chrono::Duration::seconds(1)),
        }
    });
}

/// A remote store that logs the event ids of each insert.
fn remote(inserted: &Arc<Mutex<Vec<Vec<String>>>>) -> MockEventStore {
    let mut remote = MockEventStore::new();
    let i = Arc::clone(inserted);
    remote.expect_insert().returning(move |events| {
        let ids = events
            .iter()
            .map(|e| e.event.event_id().as_str().to_owned());
        lock(&i).push(ids.collect());
        Ok(())
    });
    remote
}

fn forwarder(journal: MockJournal, remote: MockEventStore, metrics: &Arc<Metrics>) -> Forwarder {
    Forwarder {
        journal: Arc::new(journal),
        remote: Arc::new(remote),
        // Every batch is due at once; retries start after 5 ms.
        policy: FlushPolicy {
            max_rows: 100,
            max_bytes: usize::MAX,
            interval: Duration::ZERO,
            backoff_min: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
        },
        wake: Arc::new(Notify::new()),
        metrics: Arc::clone(metrics),
        clock: Arc::new(crate::ports::SystemClock),
        routed_through: None,
        quarantine: None,
        health: Arc::default(),
        handoff: None,
    }
}

/// Runs `fwd` already stopped: it returns once the journal is empty, which a bounded wait
/// turns into a test failure if it never is.
async fn drain(fwd: Forwarder) {
    let stop = CancellationToken::new();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), fwd.run(stop))
        .await
        .expect("the forwarder drains the journal and returns");
}

#[tokio::test]
async fn a_failed_journal_read_is_counted_and_retried_from_the_same_place() {
    let mut fake = MockJournal::new();
    let reads = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&reads);
    fake.expect_oldest_after()
        .times(2)
        .returning(move |after, _, _| {
            lock(&r).push(after);
            Err(injected())
        });
    let (removed, inserted) = (Arc::default(), Arc::default());
    journal(&mut fake, &[1, 2], &removed);
    let metrics = Arc::new(Metrics::new());
    drain(forwarder(fake, remote(&inserted), &metrics)).await;

    assert_eq!(
        *lock(&reads),
        [0, 0],
        "nothing was forwarded past the failures"
    );
    assert_eq!(*lock(&inserted), [vec!["e1", "e2"]], "then the batch, once");
    assert_eq!(*lock(&removed), [2]);
    assert!(metrics.render().contains("cartstream_flush_errors_total 2"));
}

#[tokio::test]
async fn a_failed_removal_is_tried_again_without_forwarding_anything_twice() {
    let mut fake = MockJournal::new();
    let failed = Arc::new(Mutex::new(Vec::new()));
    let f = Arc::clone(&failed);
    fake.expect_remove_through()
        .times(2)
        .returning(move |upto| {
            lock(&f).push(upto);
            Err(injected())
        });
    let (removed, inserted) = (Arc::default(), Arc::default());
    journal(&mut fake, &[1, 2, 3], &removed);
    let metrics = Arc::new(Metrics::new());
    drain(forwarder(fake, remote(&inserted), &metrics)).await;

    assert_eq!(*lock(&failed), [3, 3]);
    assert_eq!(*lock(&removed), [3], "removed once it could be");
    assert_eq!(*lock(&inserted), [vec!["e1", "e2", "e3"]], "forwarded once");
    assert!(
        metrics.render().contains("cartstream_flush_errors_total 0"),
        "a removal failure is not a flush failure"
    );
}
