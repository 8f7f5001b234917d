use super::*;
use crate::domain::fixtures::{self, rich_metadata};
use crate::domain::{EventId, Source};

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
