use super::*;
use crate::adapters::outbound::journal::SqliteJournal;
use crate::app::test_wait::wait_for;
use crate::domain::{fixtures, Source};
use crate::ports::{MockEventStore, TokioClock};
use std::sync::atomic::{AtomicUsize, Ordering};

fn event(id: &str) -> StoredEvent {
    fixtures::event(id).at_now().via(Source::Ws).stored()
}

fn policy(max_rows: usize, interval_ms: u64) -> FlushPolicy {
    FlushPolicy {
        max_rows,
        max_bytes: usize::MAX,
        interval: Duration::from_millis(interval_ms),
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
    }
}

#[tokio::test(start_paused = true)]
async fn entries_are_forwarded_in_batches_and_removed_after_success() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SqliteJournal::open(dir.path(), 1 << 30).unwrap());
    let inserts = Arc::new(AtomicUsize::new(0));
    let rows = Arc::new(AtomicUsize::new(0));
    let mut remote = MockEventStore::new();
    let (i2, r2) = (Arc::clone(&inserts), Arc::clone(&rows));
    remote.expect_insert().returning(move |evs| {
        i2.fetch_add(1, Ordering::SeqCst);
        r2.fetch_add(evs.len(), Ordering::SeqCst);
        Ok(())
    });
    let wake = Arc::new(Notify::new());
    let store = JournaledStore::new(
        journal.clone(),
        Arc::new(MockEventStore::new()),
        wake.clone(),
    );
    // 250 events appended before the forwarder starts: three batches of at most 100.
    for chunk in (0..250).collect::<Vec<_>>().chunks(50) {
        let evs: Vec<StoredEvent> = chunk.iter().map(|i| event(&format!("e{i}"))).collect();
        store.insert(&evs).await.unwrap();
    }
    let stop = CancellationToken::new();
    let fwd = Forwarder {
        journal: journal.clone(),
        remote: Arc::new(remote),
        policy: policy(100, 60_000),
        wake,
        metrics: Arc::new(Metrics::new()),
        clock: Arc::new(TokioClock::start()),
        routed_through: None,
        quarantine: None,
        health: Arc::default(),
        handoff: None,
    };
    let task = tokio::spawn(fwd.run(stop.clone()));
    // Removal follows the remote insert: wait for both, not only the insert.
    wait_for("two full batches forwarded and removed", || {
        rows.load(Ordering::SeqCst) >= 200 && journal.stats().entries <= 50
    })
    .await;
    assert_eq!(
        inserts.load(Ordering::SeqCst),
        2,
        "the partial batch waits for the interval"
    );
    assert_eq!(journal.stats().entries, 50);
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        (inserts.load(Ordering::SeqCst), rows.load(Ordering::SeqCst)),
        (3, 250),
        "stop flushes the rest"
    );
    assert_eq!(journal.stats().entries, 0);
}

// Not on paused time: with an interval of 0 the idle forwarder never lets tokio's clock
// skip ahead.
#[tokio::test]
async fn a_failing_remote_is_retried_and_nothing_is_removed_until_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SqliteJournal::open(dir.path(), 1 << 30).unwrap());
    journal.append(&[event("a"), event("b")]).await.unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let a2 = Arc::clone(&attempts);
    let mut remote = MockEventStore::new();
    remote.expect_insert().returning(move |evs| {
        assert_eq!(evs.len(), 2, "the same batch every time");
        if a2.fetch_add(1, Ordering::SeqCst) < 3 {
            Err(PortError::Unavailable("down".into()))
        } else {
            Ok(())
        }
    });
    let metrics = Arc::new(Metrics::new());
    let fwd = Forwarder {
        journal: journal.clone(),
        remote: Arc::new(remote),
        policy: policy(100, 0),
        wake: Arc::new(Notify::new()),
        metrics: Arc::clone(&metrics),
        clock: Arc::new(TokioClock::start()),
        routed_through: None,
        quarantine: None,
        health: Arc::default(),
        handoff: None,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(fwd.run(stop.clone()));
    wait_for("the journal to drain", || journal.stats().entries == 0).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    assert!(metrics.render().contains("cartstream_flush_errors_total 3"));
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn reads_see_journal_entries_and_remote_rows_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SqliteJournal::open(dir.path(), 1 << 30).unwrap());
    let a = event("a");
    let b = event("b");
    journal.append(&[a.clone(), b.clone()]).await.unwrap();
    let mut remote = MockEventStore::new();
    let a2 = a.clone();
    remote.expect_query().returning(move |_| {
        Ok(EventPage {
            events: vec![a2.clone()],
            more: false,
        })
    });
    let store = JournaledStore::new(journal, Arc::new(remote), Arc::new(Notify::new()));
    let q = EventQuery::first(10);
    let got = store.query(&q).await.unwrap().events;
    let mut ids: Vec<&str> = got.iter().map(|e| e.event.event_id().as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a", "b"]);
}

/// An event `ms` after a fixed instant, so tests can place it in the listing.
fn event_at(id: &str, ms: i64) -> StoredEvent {
    fixtures::event(id).at_ms(ms).via(Source::Ws).stored()
}

#[tokio::test]
async fn pages_over_journal_and_remote_list_every_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SqliteJournal::open(dir.path(), 1 << 30).unwrap());
    let remote =
        crate::adapters::outbound::embedded::EmbeddedStore::open(&dir.path().join("r")).unwrap();
    // Remote rows interleave with journal entries; `both` is forwarded but not yet removed.
    remote
        .insert(&[
            event_at("r1", 10),
            event_at("r2", 8),
            event_at("r3", 6),
            event_at("both", 5),
        ])
        .await
        .unwrap();
    journal
        .append(&[event_at("p1", 7), event_at("both", 5), event_at("p2", 1)])
        .await
        .unwrap();
    let store = JournaledStore::new(journal, Arc::new(remote), Arc::new(Notify::new()));
    let mut q = EventQuery::first(2);
    let mut listed = Vec::new();
    for _ in 0..10 {
        let page = store.query(&q).await.unwrap();
        assert!(!page.events.is_empty() || !page.more);
        listed.extend(
            page.events
                .iter()
                .map(|e| e.event.event_id().as_str().to_owned()),
        );
        if !page.more {
            break;
        }
        q.after = page.events.last().map(PageKey::of);
    }
    assert_eq!(listed, ["r1", "r2", "p1", "r3", "both", "p2"]);
}

#[tokio::test(start_paused = true)]
async fn each_forwarded_event_reports_its_lag_from_receipt_to_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SqliteJournal::open(dir.path(), 1 << 30).unwrap());
    let mut remote = MockEventStore::new();
    remote.expect_insert().returning(|_| Ok(()));
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::start());
    let wake = Arc::new(Notify::new());
    let store = JournaledStore::new(
        journal.clone(),
        Arc::new(MockEventStore::new()),
        wake.clone(),
    );
    // Received 2 s before the clock's now, so the lag is 2 s, whatever the flush interval.
    let evs: Vec<StoredEvent> = (0..3)
        .map(|i| StoredEvent {
            received_at: clock.now() - chrono::Duration::seconds(2),
            ..event(&format!("lag-{i}"))
        })
        .collect();
    store.insert(&evs).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    let fwd = Forwarder {
        journal: journal.clone(),
        remote: Arc::new(remote),
        policy: policy(100, 60_000),
        wake,
        metrics: Arc::clone(&metrics),
        clock,
        routed_through: None,
        quarantine: None,
        health: Arc::default(),
        handoff: None,
    };
    stop.cancel();
    fwd.run(stop).await;
    let text = metrics.render();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {text}"))
    };
    assert_eq!(value("cartstream_store_lag_seconds_count "), 3.0);
    let sum = value("cartstream_store_lag_seconds_sum ");
    assert!((5.9..6.5).contains(&sum), "three lags of about 2 s: {sum}");
}
