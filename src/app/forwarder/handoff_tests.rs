//! The forwarder with the journal's handoff: groups recorded while it keeps up are forwarded
//! from memory, the journal is read for whatever is not there, and either way the remote store
//! gets the same rows in the same order.

use super::*;
use crate::adapters::outbound::journal::SqliteJournal;
use crate::domain::{fixtures, Source};
use crate::ports::{JournalEntry, JournalStats, MockEventStore, TokioClock};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The journal, counting how often the forwarder reads it back.
struct Counted {
    inner: SqliteJournal,
    reads: AtomicUsize,
}

#[async_trait::async_trait]
impl Journal for Counted {
    async fn append(&self, events: &[StoredEvent]) -> Result<i64, PortError> {
        self.inner.append(events).await
    }

    async fn oldest_after(
        &self,
        after: i64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<JournalEntry>, PortError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.oldest_after(after, max_entries, max_bytes).await
    }

    async fn remove_through(&self, upto: i64) -> Result<(), PortError> {
        self.inner.remove_through(upto).await
    }

    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        self.inner.known(keys).await
    }

    async fn query(&self, query: &EventQuery) -> Result<EventPage, PortError> {
        self.inner.query(query).await
    }

    fn stats(&self) -> JournalStats {
        self.inner.stats()
    }
}

/// Events of every shape a row can take: with and without a session and metadata, from
/// each source.
fn events(prefix: &str, n: usize) -> Vec<StoredEvent> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            match i % 3 {
                0 => fixtures::full(&id).stored(),
                1 => fixtures::event(&id).at_now().via(Source::Ws).stored(),
                _ => fixtures::event(&id)
                    .session("s-1")
                    .kind("item_added")
                    .metadata(serde_json::json!({"productId": "p-1"}))
                    .via(Source::Http)
                    .stored(),
            }
        })
        .collect()
}

/// What the remote store writes of each event, in order.
fn rows(events: &[StoredEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{:?}", e.columns()))
        .collect()
}

/// A journaled store and its forwarder (batches of at most `max_rows`), with or without the
/// handoff, over a remote store that fails its first `failures` inserts and records the rows
/// of the others.
struct Setup {
    journal: Arc<Counted>,
    store: JournaledStore,
    forwarder: Forwarder,
    rows: Arc<Mutex<Vec<String>>>,
    handoff: Arc<Handoff>,
}

fn setup(dir: &std::path::Path, with_handoff: bool, max_rows: usize, failures: usize) -> Setup {
    let journal = Arc::new(Counted {
        inner: SqliteJournal::open(dir, 1 << 30).unwrap(),
        reads: AtomicUsize::new(0),
    });
    let rows = Arc::new(Mutex::new(Vec::new()));
    let (r2, calls) = (Arc::clone(&rows), AtomicUsize::new(0));
    let mut remote = MockEventStore::new();
    remote.expect_insert().returning(move |evs| {
        if calls.fetch_add(1, Ordering::SeqCst) < failures {
            return Err(PortError::Unavailable("down".into()));
        }
        r2.lock().unwrap().extend(self::rows(evs));
        Ok(())
    });
    let wake = Arc::new(Notify::new());
    let handoff = Arc::new(Handoff::new(1_000, usize::MAX));
    let mut store = JournaledStore::new(
        Arc::clone(&journal) as Arc<dyn Journal>,
        Arc::new(MockEventStore::new()),
        Arc::clone(&wake),
    );
    if with_handoff {
        store = store.with_handoff(Arc::clone(&handoff));
    }
    let forwarder = Forwarder {
        journal: Arc::clone(&journal) as Arc<dyn Journal>,
        remote: Arc::new(remote),
        policy: FlushPolicy {
            max_rows,
            max_bytes: usize::MAX,
            interval: Duration::from_secs(60),
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
        },
        wake,
        metrics: Arc::new(Metrics::new()),
        clock: Arc::new(TokioClock::start()),
        routed_through: None,
        quarantine: None,
        health: Arc::default(),
        handoff: with_handoff.then(|| Arc::clone(&handoff)),
    };
    Setup {
        journal,
        store,
        forwarder,
        rows,
        handoff,
    }
}

impl Setup {
    /// Runs the forwarder until the journal is empty (it is stopped first, so it flushes
    /// without waiting for batches to fill): the rows the remote store got.
    async fn forward_all(self) -> (Vec<String>, usize) {
        let stop = CancellationToken::new();
        stop.cancel();
        self.forwarder.run(stop).await;
        assert_eq!(self.journal.stats().entries, 0, "the journal is emptied");
        let rows = self.rows.lock().unwrap().clone();
        (rows, self.journal.reads.load(Ordering::SeqCst))
    }
}

#[tokio::test]
async fn groups_recorded_while_the_forwarder_keeps_up_are_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), true, 100, 0);
    let all = events("e", 150);
    for group in all.chunks(50) {
        s.store.insert_owned(group.to_vec()).await.unwrap();
    }
    assert_eq!(s.handoff.events_held(), 150);
    let handoff = Arc::clone(&s.handoff);
    let (got, reads) = s.forward_all().await;
    assert_eq!(got, rows(&all), "every event once, in order");
    assert_eq!(reads, 0, "nothing read back from the journal");
    assert_eq!(handoff.events_held(), 0);
}

#[tokio::test]
async fn what_the_handoff_lacks_is_read_from_the_journal_then_the_handoff_follows_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), true, 30, 0);
    // 70 entries written before a restart: in the journal only.
    let before = events("old", 70);
    s.journal.append(&before).await.unwrap();
    // Then groups recorded by this process, handed over.
    let after = events("new", 80);
    for group in after.chunks(40) {
        s.store.insert_owned(group.to_vec()).await.unwrap();
    }
    let (got, reads) = s.forward_all().await;
    assert_eq!(got, rows(&[before, after].concat()));
    // 1-30, 31-60 and 61-90 (to the end of the journal's batch of 30) from the journal;
    // 91-150 from the handoff, whose first group starts at 71.
    assert_eq!(reads, 3);
}

#[tokio::test]
async fn a_failed_insert_is_retried_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), true, 100, 1);
    let all = events("e", 60);
    for group in all.chunks(20) {
        s.store.insert_owned(group.to_vec()).await.unwrap();
    }
    let (got, reads) = s.forward_all().await;
    assert_eq!(
        got,
        rows(&all),
        "the failed batch is sent again, whole, once"
    );
    assert_eq!(reads, 1, "the retry reads the journal");
}

#[tokio::test]
async fn the_handoff_and_the_journal_give_the_same_rows() {
    let all = events("e", 90);
    let mut results = Vec::new();
    for with_handoff in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let s = setup(dir.path(), with_handoff, 40, 0);
        for group in all.chunks(25) {
            s.store.insert_owned(group.to_vec()).await.unwrap();
        }
        results.push(s.forward_all().await);
    }
    let (handed, journal) = (&results[0], &results[1]);
    assert_eq!(handed.0, journal.0);
    assert_eq!(handed.0, rows(&all));
    assert_eq!(
        (handed.1, journal.1),
        (0, 3),
        "journal reads with and without the handoff"
    );
}
