//! Refused batches: split to find the events refused alone, held when every one is.

use super::*;
use crate::adapters::outbound::journal::SqliteJournal;
use crate::adapters::outbound::quarantine::SqliteQuarantine;
use crate::app::test_wait::wait_for;
use crate::domain::{fixtures, Source};
use crate::ports::{MockEventStore, TokioClock};
use std::sync::Mutex;

fn event(id: &str, user: &str) -> StoredEvent {
    fixtures::event(id)
        .user(user)
        .at_now()
        .via(Source::Ws)
        .stored()
}

fn refused(code: u32) -> PortError {
    PortError::Refused(Refusal {
        cause: RefusalCause::Data,
        code: Some(code),
        message: format!("Code: {code}, poison"),
    })
}

/// A remote that refuses any insert holding an event of a user in `poison` (all of them when
/// `poison` is `*`), and records what it stored and how many inserts it was sent.
fn remote(
    poison: &'static str,
    stored: &Arc<Mutex<Vec<String>>>,
    calls: &Arc<Mutex<u32>>,
) -> MockEventStore {
    let (stored, calls) = (Arc::clone(stored), Arc::clone(calls));
    let mut remote = MockEventStore::new();
    remote.expect_insert().returning(move |evs| {
        *calls.lock().unwrap() += 1;
        if evs
            .iter()
            .any(|e| poison == "*" || e.columns().user_id == poison)
        {
            return Err(refused(395));
        }
        let mut s = stored.lock().unwrap();
        s.extend(evs.iter().map(|e| e.columns().event_id.to_owned()));
        Ok(())
    });
    remote
        .expect_known()
        .returning(|k| Ok(vec![false; k.len()]));
    remote
}

struct Setup {
    journal: Arc<SqliteJournal>,
    quarantine: Arc<SqliteQuarantine>,
    health: Arc<health::ForwardingHealth>,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

fn start(remote: MockEventStore) -> (Setup, Forwarder) {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SqliteJournal::open(dir.path(), 1 << 30).unwrap());
    let quarantine = Arc::new(SqliteQuarantine::open(dir.path()).unwrap());
    let health = Arc::new(health::ForwardingHealth::default());
    let metrics = Arc::new(Metrics::new());
    let fwd = Forwarder {
        journal: journal.clone(),
        remote: Arc::new(remote),
        policy: FlushPolicy {
            max_rows: 1000,
            max_bytes: usize::MAX,
            interval: Duration::ZERO,
            backoff_min: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
        },
        wake: Arc::new(Notify::new()),
        metrics: Arc::clone(&metrics),
        clock: Arc::new(TokioClock::start()),
        routed_through: None,
        quarantine: Some(quarantine.clone()),
        health: Arc::clone(&health),
        handoff: None,
    };
    let setup = Setup {
        journal,
        quarantine,
        health,
        metrics,
        _dir: dir,
    };
    (setup, fwd)
}

#[tokio::test]
async fn events_refused_alone_are_set_aside_and_the_rest_is_stored() {
    let stored = Arc::default();
    let calls = Arc::default();
    let (s, fwd) = start(remote("poison", &stored, &calls));
    let mut batch: Vec<StoredEvent> = (0..100).map(|i| event(&format!("e{i}"), "u")).collect();
    batch[37] = event("bad-1", "poison");
    batch[80] = event("bad-2", "poison");
    s.journal.append(&batch).await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(fwd.run(stop.clone()));
    wait_for("the journal to drain", || s.journal.stats().entries == 0).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(stored.lock().unwrap().len(), 98);
    let kept = s.quarantine.list(0, 10).await.unwrap();
    let ids: Vec<&str> = kept
        .iter()
        .map(|e| e.item.event.columns().event_id)
        .collect();
    assert_eq!(ids, ["bad-1", "bad-2"]);
    assert_eq!(kept[0].item.code, Some(395));
    // Halving finds two bad events among 100 in a few dozen inserts, not 100.
    let calls = *calls.lock().unwrap();
    assert!(calls <= 30, "{calls} inserts");
    assert_eq!(s.health.failing(), None);
    let text = s.metrics.render();
    assert!(
        text.contains("cartstream_quarantined_events_total 2"),
        "{text}"
    );
    assert!(text.contains("cartstream_quarantine_events 2"), "{text}");
    assert!(
        text.contains("cartstream_forwarded_events_total 98"),
        "{text}"
    );
}

#[tokio::test]
async fn a_store_refusing_every_event_holds_the_journal_and_sets_nothing_aside() {
    let stored = Arc::default();
    let calls = Arc::default();
    let (s, fwd) = start(remote("*", &stored, &calls));
    let batch: Vec<StoredEvent> = (0..100).map(|i| event(&format!("e{i}"), "u")).collect();
    s.journal.append(&batch).await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(fwd.run(stop.clone()));
    wait_for("forwarding to be failing", || s.health.failing().is_some()).await;
    wait_for("a few retries", || *calls.lock().unwrap() > 40).await;
    stop.cancel();
    // A stopped forwarder keeps trying until the caller gives up: abort it.
    task.abort();
    let f = s.health.failing().unwrap();
    assert_eq!((f.class, f.code), ("refused", Some(395)));
    assert!(f.error.contains("held, not set aside"), "{}", f.error);
    assert_eq!(s.quarantine.count(), 0);
    assert_eq!(s.journal.stats().entries, 100);
    assert!(stored.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_single_refused_event_waits_for_evidence_that_others_are_taken() {
    let stored = Arc::default();
    let calls = Arc::default();
    let (s, fwd) = start(remote("poison", &stored, &calls));
    s.journal.append(&[event("bad", "poison")]).await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(fwd.run(stop.clone()));
    wait_for("forwarding to be failing", || s.health.failing().is_some()).await;
    assert_eq!(
        s.quarantine.count(),
        0,
        "alone, it proves nothing about the others"
    );
    // Once another event waits behind it, the batch splits and the poison is set aside.
    s.journal.append(&[event("good", "u")]).await.unwrap();
    wait_for("the journal to drain", || s.journal.stats().entries == 0).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(s.quarantine.count(), 1);
    assert_eq!(*stored.lock().unwrap(), ["good"]);
    assert_eq!(s.health.failing(), None);
}

#[tokio::test]
async fn quarantined_events_stay_known_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SqliteJournal::open(dir.path(), 1 << 30).unwrap());
    let quarantine = Arc::new(SqliteQuarantine::open(dir.path()).unwrap());
    let bad = event("bad", "poison");
    quarantine
        .put(&[QuarantinedEvent {
            event: bad.clone(),
            reason: "refused".into(),
            code: None,
            quarantined_at: bad.received_at,
        }])
        .await
        .unwrap();
    let mut remote = MockEventStore::new();
    remote
        .expect_known()
        .returning(|k| Ok(vec![false; k.len()]));
    remote.expect_query().returning(|_| {
        Ok(EventPage {
            events: Vec::new(),
            more: false,
        })
    });
    let store = JournaledStore::new(journal, Arc::new(remote), Arc::new(Notify::new()))
        .with_quarantine(quarantine);
    let keys = [
        DedupKey::of(&bad.event).unwrap(),
        DedupKey::of(&event("other", "u").event).unwrap(),
    ];
    assert_eq!(store.known(&keys).await.unwrap(), [true, false]);
    let page = store.query(&EventQuery::first(10)).await.unwrap();
    assert_eq!(page.events, [bad]);
}
