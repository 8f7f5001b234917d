use super::*;
use crate::domain::{parse_event, EventId, EventType, Source, ValidationPolicy};
use chrono::{DateTime, Utc};
use serde_json::json;

fn event(id: &str, user: &str, t: &str, ts: &str) -> StoredEvent {
    let raw = json!({"eventId": id, "userId": user, "eventType": t, "timestamp": ts,
        "sessionId": "s-1",
        "metadata": {"productId": "p-ü", "couponCode": "C", "cartValue": 1.5, "itemCount": 2, "orderId": "o",
                     "nested": {"emoji": "🛒", "list": [1, 2.5, null]}}});
    let now = DateTime::parse_from_rfc3339(ts)
        .unwrap()
        .with_timezone(&Utc);
    let e = parse_event(&raw, &ValidationPolicy::protocol_default(), now, || {
        EventId::from_random_bytes([1; 16])
    })
    .unwrap();
    StoredEvent {
        event: e,
        received_at: now + chrono::Duration::milliseconds(7),
        source: Source::Ws,
    }
}

const HOLD: Duration = Duration::from_secs(30);
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

/// A store whose clock follows tokio's (paused) time: `tokio::time::advance` moves it.
fn open_on_tokio_time(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open_with(
        dir,
        DedupMode::Table,
        Arc::new(crate::ports::TokioClock::start()),
    )
    .unwrap()
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
async fn insert_and_read_back_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let e = event("e-1", "u-1", "item_added", "2025-08-10T03:27:04.123Z");
    store.insert(std::slice::from_ref(&e)).await.unwrap();
    let got = store.query(&q()).await.unwrap().events;
    assert_eq!(got, vec![e]);
}

#[tokio::test]
async fn inserting_twice_keeps_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let e = event("e-1", "u-1", "item_added", "2025-08-10T03:27:04.123Z");
    store.insert(&[e.clone(), e.clone()]).await.unwrap();
    store.insert(std::slice::from_ref(&e)).await.unwrap();
    assert_eq!(store.query(&q()).await.unwrap().events.len(), 1);
}

#[tokio::test]
async fn query_filters_and_orders_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store
        .insert(&[
            event("a", "u-1", "item_added", "2025-08-10T03:00:00.000Z"),
            event("b", "u-2", "item_added", "2025-08-10T04:00:00.000Z"),
            event("c", "u-1", "cart_viewed", "2025-08-10T05:00:00.000Z"),
            event("d", "u-1", "item_added", "2025-08-10T06:00:00.000Z"),
        ])
        .await
        .unwrap();
    let ids = |v: Vec<StoredEvent>| {
        v.iter()
            .map(|e| e.event.event_id().as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.query(&q()).await.unwrap().events),
        ["d", "c", "b", "a"]
    );
    let mut f = q();
    f.user_id = Some("u-1".into());
    f.event_type = Some(EventType::ItemAdded);
    assert_eq!(ids(store.query(&f).await.unwrap().events), ["d", "a"]);
    let mut f = q();
    f.since = Some("2025-08-10T04:00:00Z".parse().unwrap());
    f.until = Some("2025-08-10T05:00:00Z".parse().unwrap());
    assert_eq!(
        ids(store.query(&f).await.unwrap().events),
        ["c", "b"],
        "bounds inclusive"
    );
    let mut f = q();
    f.limit = 1;
    assert_eq!(ids(store.query(&f).await.unwrap().events), ["d"]);
}

#[tokio::test]
async fn claims_are_held_until_confirmed_or_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let hold = Duration::from_secs(60);
    let day = Duration::from_secs(86_400);
    let (a, b) = (lease(hold, day), lease(hold, day));
    let ks = keys(&["k-1", "k-2"]);
    assert_eq!(store.claim(&a, &ks[..1]).await.unwrap(), [Claim::New]);
    assert_eq!(store.claim(&b, &ks[1..]).await.unwrap(), [Claim::New]);
    assert_eq!(
        store.claim(&lease(hold, day), &ks).await.unwrap(),
        [Claim::InFlight, Claim::InFlight]
    );
    store.confirm(&a, &ks[..1]).await.unwrap();
    store.release(&b, &ks[1..]).await.unwrap();
    assert_eq!(
        store.claim(&lease(hold, day), &ks).await.unwrap(),
        [Claim::Duplicate, Claim::New],
        "a released key is free again"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_hold_frees_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_on_tokio_time(dir.path());
    let ks = keys(&["k-1"]);
    store
        .claim(&lease(Duration::from_millis(20), WINDOW), &ks)
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(40)).await;
    assert_eq!(
        store
            .claim(&lease(Duration::from_secs(1), WINDOW), &ks)
            .await
            .unwrap(),
        [Claim::New]
    );
}

#[tokio::test]
async fn the_window_expires() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let ks = keys(&["k-1"]);
    let hold = Duration::from_secs(5);
    let short = lease(hold, Duration::from_millis(30));
    store.claim(&short, &ks).await.unwrap();
    store.confirm(&short, &ks).await.unwrap();
    assert_eq!(claim_anew(&store, hold, &ks).await, [Claim::Duplicate]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(claim_anew(&store, hold, &ks).await, [Claim::New]);
}

#[tokio::test]
async fn a_reopened_store_remembers_events_and_confirmed_keys_but_not_holds() {
    let dir = tempfile::tempdir().unwrap();
    let hold = Duration::from_secs(60);
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .insert(&[event("e-1", "u", "cart_viewed", "2025-08-10T03:00:00Z")])
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
async fn known_answers_which_ids_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store
        .insert(&[event("e-1", "u", "cart_viewed", "2025-08-10T03:00:00Z")])
        .await
        .unwrap();
    assert_eq!(
        store.known(&keys(&["e-0", "e-1"])).await.unwrap(),
        [false, true]
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
    let mut fresh = event("e-1", "u", "cart_viewed", &now);
    fresh.received_at = chrono::Utc::now();
    let mut old = event("e-old", "u", "cart_viewed", &now);
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
    let mut e = event("late", "u", "cart_viewed", &now);
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
    let mut early = event("early", "u", "cart_viewed", &now);
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

#[tokio::test(start_paused = true)]
async fn a_lease_ends_only_its_own_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_on_tokio_time(dir.path());
    let ks = keys(&["k-1"]);
    let late = lease(Duration::from_millis(20), WINDOW);
    store.claim(&late, &ks).await.unwrap();
    tokio::time::advance(Duration::from_millis(40)).await;
    let taker = lease(HOLD, WINDOW);
    assert_eq!(store.claim(&taker, &ks).await.unwrap(), [Claim::New]);
    // The holder whose hold ran out gives up: the taker's hold stays.
    store.release(&late, &ks).await.unwrap();
    assert_eq!(claim_anew(&store, HOLD, &ks).await, [Claim::InFlight]);
    store.release(&taker, &ks).await.unwrap();
    assert_eq!(claim_anew(&store, HOLD, &ks).await, [Claim::New]);
}
