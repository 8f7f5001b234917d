//! The `EventFeed` contract, as routing reads a feed: positions rise in recording order, reads
//! go on from any position, and the head is the last position written. Runs on the embedded
//! store (recording is inserting) and the SQLite journal (recording is appending).

use crate::fixtures::{event, ids};
use cartstream::adapters::outbound::embedded::EmbeddedStore;
use cartstream::adapters::outbound::journal::SqliteJournal;
use cartstream::domain::StoredEvent;
use cartstream::ports::{EventFeed, EventStore, Journal};
use futures_util::future::BoxFuture;
use std::any::Any;
use std::sync::Arc;

/// A feed under test, and how events get recorded into it.
pub struct Subject {
    feed: Arc<dyn EventFeed>,
    record: Box<dyn Fn(Vec<StoredEvent>) -> BoxFuture<'static, ()> + Send + Sync>,
    _keep: Box<dyn Any + Send>,
}

async fn embedded() -> Option<Subject> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let recorder = Arc::clone(&store);
    Some(Subject {
        feed: store,
        record: Box::new(move |events| {
            let store = Arc::clone(&recorder);
            Box::pin(async move { store.insert(&events).await.unwrap() })
        }),
        _keep: Box::new(dir),
    })
}

async fn journal() -> Option<Subject> {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SqliteJournal::open(dir.path(), 1 << 20).unwrap());
    let recorder = Arc::clone(&journal);
    Some(Subject {
        feed: journal,
        record: Box::new(move |events| {
            let journal = Arc::clone(&recorder);
            Box::pin(async move {
                journal.append(&events).await.unwrap();
            })
        }),
        _keep: Box::new(dir),
    })
}

contract_tests! {
    adapters: [embedded, journal],
    checks: [
        the_head_is_the_last_position_written,
        reads_go_on_from_any_position_in_recording_order,
    ],
}

fn events(prefix: &str, n: usize) -> Vec<StoredEvent> {
    (0..n)
        .map(|i| event(&format!("{prefix}{i}")).at_ms(-(i as i64)).stored())
        .collect()
}

async fn the_head_is_the_last_position_written(s: &Subject) {
    assert_eq!(s.feed.head().await.unwrap(), 0, "empty");
    assert!(s.feed.after(0, 10).await.unwrap().is_empty());
    (s.record)(events("a", 3)).await;
    let head = s.feed.head().await.unwrap();
    let all = s.feed.after(0, 10).await.unwrap();
    assert_eq!(all.last().map(|e| e.seq), Some(head));
    assert!(s.feed.after(head, 10).await.unwrap().is_empty());
}

async fn reads_go_on_from_any_position_in_recording_order(s: &Subject) {
    let recorded = [events("a", 3), events("b", 1), events("c", 4)];
    for batch in &recorded {
        (s.record)(batch.clone()).await;
    }
    let want: Vec<StoredEvent> = recorded.concat();
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let got = s.feed.after(after, 3).await.unwrap();
        assert!(got.len() <= 3);
        let Some(last) = got.last() else { break };
        assert!(got.iter().all(|e| e.seq > after), "only past the position");
        assert!(got.windows(2).all(|w| w[0].seq < w[1].seq), "rising");
        after = last.seq;
        seen.extend(got.into_iter().map(|e| e.event));
    }
    assert_eq!(ids(&seen), ids(&want));
    assert_eq!(seen, want);
}
