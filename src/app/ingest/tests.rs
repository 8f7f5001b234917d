use super::*;
use crate::domain::{fixtures, parse_event};
use crate::ports::{MockClock, MockDedupStore, MockEventStore};
use chrono::{TimeZone, Utc};
use mockall::predicate::always;
use serde_json::json;

fn clock() -> Arc<dyn Clock> {
    let mut c = MockClock::new();
    c.expect_now()
        .returning(|| Utc.with_ymd_and_hms(2025, 8, 10, 3, 27, 4).unwrap());
    Arc::new(c)
}

fn committer(dedup: MockDedupStore, store: MockEventStore) -> Committer {
    committer_on(dedup, store, DedupOutage::FailClosed)
}

fn committer_on(dedup: MockDedupStore, store: MockEventStore, outage: DedupOutage) -> Committer {
    Committer::new(
        Arc::new(dedup),
        Arc::new(store),
        clock(),
        Arc::new(Metrics::new()),
        DedupPolicy {
            window: Duration::from_secs(86_400),
            hold: Duration::from_secs(30),
            outage,
        },
        Arc::new(tokio::sync::Notify::new()),
    )
}

fn ev(id: &str) -> (CartEvent, Source) {
    (fixtures::event(id).cart_event(), Source::Http)
}

fn no_id() -> (CartEvent, Source) {
    let raw = json!({"userId": "u", "eventType": "cart_viewed"});
    let e = parse_event(
        &raw,
        &ValidationPolicy::protocol_default(),
        Utc.with_ymd_and_hms(2025, 8, 10, 3, 27, 4).unwrap(),
        || EventId::from_random_bytes(rand::random()),
    )
    .unwrap();
    (e, Source::Ws)
}

fn id(s: &str) -> EventId {
    EventId::parse(s).unwrap()
}

thread_local! {
    /// The lease a mocked claim saw, for the confirm that follows it (one runtime thread).
    static CLAIMED_UNDER: std::cell::Cell<Option<u128>> = const { std::cell::Cell::new(None) };
}

fn key_strs(keys: &[DedupKey]) -> Vec<String> {
    keys.iter().map(|k| k.as_str().to_owned()).collect()
}

#[tokio::test]
async fn new_events_are_claimed_stored_and_confirmed_in_one_call_each() {
    let mut dedup = MockDedupStore::new();
    dedup
        .expect_claim()
        .withf(|lease, keys| {
            key_strs(keys) == ["a", "b"]
                && lease.hold == Duration::from_secs(30)
                && lease.window == Duration::from_secs(86_400)
        })
        .times(1)
        .returning(|lease, k| {
            CLAIMED_UNDER.with(|c| c.set(Some(lease.id)));
            Ok(vec![Claim::New; k.len()])
        });
    dedup
        .expect_confirm()
        .withf(|lease, keys| {
            key_strs(keys) == ["a", "b"] && CLAIMED_UNDER.with(|c| c.get()) == Some(lease.id)
        })
        .times(1)
        .returning(|_, _| Ok(()));
    let mut store = MockEventStore::new();
    store
        .expect_insert_owned()
        .withf(|evs| evs.len() == 2 && evs[0].received_at.timestamp() == 1_754_796_424)
        .times(1)
        .returning(|_| Ok(()));
    let out = committer(dedup, store).commit(vec![ev("a"), ev("b")]).await;
    assert_eq!(
        out,
        [Outcome::Accepted(id("a")), Outcome::Accepted(id("b"))]
    );
}

#[tokio::test]
async fn a_duplicate_is_answered_and_not_stored() {
    let mut dedup = MockDedupStore::new();
    dedup
        .expect_claim()
        .returning(|_, _| Ok(vec![Claim::Duplicate, Claim::New]));
    dedup
        .expect_confirm()
        .withf(|_, keys| key_strs(keys) == ["b"])
        .times(1)
        .returning(|_, _| Ok(()));
    let mut store = MockEventStore::new();
    store
        .expect_insert_owned()
        .withf(|evs| evs.len() == 1 && evs[0].event.event_id().as_str() == "b")
        .times(1)
        .returning(|_| Ok(()));
    let out = committer(dedup, store).commit(vec![ev("a"), ev("b")]).await;
    assert_eq!(
        out,
        [Outcome::Duplicate(id("a")), Outcome::Accepted(id("b"))]
    );
}

#[tokio::test]
async fn all_duplicates_make_no_store_call() {
    let mut dedup = MockDedupStore::new();
    dedup
        .expect_claim()
        .returning(|_, _| Ok(vec![Claim::Duplicate]));
    dedup.expect_confirm().never();
    let mut store = MockEventStore::new();
    store.expect_insert_owned().never();
    let out = committer(dedup, store).commit(vec![ev("a")]).await;
    assert_eq!(out, [Outcome::Duplicate(id("a"))]);
}

#[tokio::test]
async fn a_store_failure_releases_the_claims_so_a_retry_is_not_a_false_duplicate() {
    let mut dedup = MockDedupStore::new();
    dedup
        .expect_claim()
        .returning(|_, k| Ok(vec![Claim::New; k.len()]));
    dedup
        .expect_release()
        .withf(|_, keys| key_strs(keys) == ["a", "b"])
        .times(1)
        .returning(|_, _| Ok(()));
    dedup.expect_confirm().never();
    let mut store = MockEventStore::new();
    store
        .expect_insert_owned()
        .times(1)
        .returning(|_| Err(PortError::Unavailable("disk on fire".into())));
    let out = committer(dedup, store).commit(vec![ev("a"), ev("b")]).await;
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Unavailable(_))),
        "{out:?}"
    );
    // The backend's words stay in the logs: the client hears a typed reason.
    assert_eq!(out[0], Outcome::Unavailable(Unavailable::StoreDown));
}

#[tokio::test]
async fn a_dedup_failure_stores_nothing() {
    let mut dedup = MockDedupStore::new();
    dedup
        .expect_claim()
        .returning(|_, _| Err(PortError::Unavailable("redis down".into())));
    let mut store = MockEventStore::new();
    store.expect_insert_owned().never();
    let out = committer(dedup, store).commit(vec![ev("a")]).await;
    assert!(matches!(out[0], Outcome::Unavailable(_)));
}

#[tokio::test]
async fn a_confirm_failure_still_accepts_the_durable_events() {
    let mut dedup = MockDedupStore::new();
    dedup
        .expect_claim()
        .returning(|_, k| Ok(vec![Claim::New; k.len()]));
    dedup
        .expect_confirm()
        .returning(|_, _| Err(PortError::Unavailable("gone".into())));
    let mut store = MockEventStore::new();
    store.expect_insert_owned().returning(|_| Ok(()));
    let c = committer(dedup, store);
    let out = c.commit(vec![ev("a")]).await;
    assert_eq!(out, [Outcome::Accepted(id("a"))]);
    assert!(c
        .metrics
        .render()
        .contains("cartstream_backend_errors_total{reason=\"confirm\"} 1"));
}

#[tokio::test]
async fn an_in_flight_key_is_unavailable_not_duplicate() {
    let mut dedup = MockDedupStore::new();
    dedup
        .expect_claim()
        .returning(|_, _| Ok(vec![Claim::InFlight]));
    let mut store = MockEventStore::new();
    store.expect_insert_owned().never();
    let out = committer(dedup, store).commit(vec![ev("a")]).await;
    assert!(matches!(out[0], Outcome::Unavailable(_)));
}

#[tokio::test]
async fn an_in_flight_key_freed_before_the_second_claim_is_stored_and_confirmed() {
    let mut dedup = MockDedupStore::new();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    dedup
        .expect_claim()
        .withf(|_, keys| key_strs(keys) == ["a"])
        .times(2)
        .returning(
            move |_, _| match calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
                0 => Ok(vec![Claim::InFlight]),
                _ => Ok(vec![Claim::New]),
            },
        );
    dedup
        .expect_confirm()
        .withf(|_, keys| key_strs(keys) == ["a"])
        .times(1)
        .returning(|_, _| Ok(()));
    let mut store = MockEventStore::new();
    store
        .expect_insert_owned()
        .withf(|evs| evs.len() == 1)
        .times(1)
        .returning(|_| Ok(()));
    let out = committer(dedup, store).commit(vec![ev("a")]).await;
    assert_eq!(out, [Outcome::Accepted(id("a"))]);
}

#[tokio::test]
async fn a_claim_answer_of_the_wrong_length_stores_nothing_and_does_not_rest_the_store() {
    let mut dedup = MockDedupStore::new();
    dedup.expect_claim().times(2).returning(|_, _| Ok(vec![]));
    dedup.expect_confirm().never();
    dedup.expect_release().never();
    let mut store = MockEventStore::new();
    store.expect_insert_owned().never();
    let c = committer(dedup, store);
    let out = c.commit(vec![ev("a"), ev("b")]).await;
    assert_eq!(out, vec![Outcome::Unavailable(Unavailable::DedupDown); 2]);
    // A store that answers, however badly, is asked again at once (claim: times(2)).
    let out = c.commit(vec![ev("a")]).await;
    assert_eq!(out, [Outcome::Unavailable(Unavailable::DedupDown)]);
    assert!(c
        .metrics
        .render()
        .contains("cartstream_backend_errors_total{reason=\"claim\"} 2"));
}

#[tokio::test]
async fn repeats_inside_one_group_are_claimed_once_and_answered_duplicate() {
    let mut dedup = MockDedupStore::new();
    dedup
        .expect_claim()
        .withf(|_, keys| key_strs(keys) == ["a", "b"])
        .returning(|_, k| Ok(vec![Claim::New; k.len()]));
    dedup.expect_confirm().returning(|_, _| Ok(()));
    let mut store = MockEventStore::new();
    store
        .expect_insert_owned()
        .withf(|evs| evs.len() == 2)
        .returning(|_| Ok(()));
    let out = committer(dedup, store)
        .commit(vec![ev("a"), ev("a"), ev("b"), ev("a")])
        .await;
    assert_eq!(
        out,
        [
            Outcome::Accepted(id("a")),
            Outcome::Duplicate(id("a")),
            Outcome::Accepted(id("b")),
            Outcome::Duplicate(id("a")),
        ]
    );
}

#[tokio::test]
async fn generated_ids_skip_dedup() {
    let mut dedup = MockDedupStore::new();
    dedup.expect_claim().never();
    dedup.expect_confirm().never();
    let mut store = MockEventStore::new();
    store.expect_insert_owned().times(1).returning(|_| Ok(()));
    let out = committer(dedup, store).commit(vec![no_id()]).await;
    assert!(matches!(out[0], Outcome::Accepted(_)));
}

#[tokio::test]
async fn a_partial_batch_keeps_order_across_rejections_and_groups() {
    let mut dedup = MockDedupStore::new();
    dedup
        .expect_claim()
        .with(always(), always())
        .returning(|_, k| {
            Ok(k.iter()
                .map(|k| {
                    if k.as_str() == "dup" {
                        Claim::Duplicate
                    } else {
                        Claim::New
                    }
                })
                .collect())
        });
    dedup.expect_confirm().returning(|_, _| Ok(()));
    let mut store = MockEventStore::new();
    store.expect_insert_owned().returning(|_| Ok(()));
    let stop = CancellationToken::new();
    let (ingest, task) = Ingest::start(
        committer(dedup, store),
        ValidationPolicy::protocol_default(),
        100,
        stop.clone(),
    );
    let items = vec![
        ingest.validate(json!({"eventId": "ok-1", "userId": "u", "eventType": "cart_viewed"})),
        ingest.validate(json!({"eventId": "bad", "eventType": "cart_viewed"})),
        ingest.validate(json!({"eventId": "dup", "userId": "u", "eventType": "cart_viewed"})),
        ingest.validate(json!([])),
        ingest.validate(json!({"eventId": "ok-2", "userId": "u", "eventType": "cart_viewed"})),
    ];
    let first = ingest.submit(items, Source::Http);
    let second =
        ingest.submit(
            vec![ingest
                .validate(json!({"eventId": "ok-1", "userId": "u", "eventType": "cart_viewed"}))],
            Source::Ws,
        );
    let out = first.await;
    assert_eq!(out[0], Outcome::Accepted(id("ok-1")));
    assert!(matches!(&out[1], Outcome::Rejected(e) if e[0].field == "userId"));
    assert_eq!(out[2], Outcome::Duplicate(id("dup")));
    assert!(matches!(&out[3], Outcome::Rejected(e) if e[0].field.is_empty()));
    assert_eq!(out[4], Outcome::Accepted(id("ok-2")));
    assert_eq!(
        second.await,
        [Outcome::Duplicate(id("ok-1"))],
        "the second call, grouped with the first, sees its event as a repeat"
    );
    let text = ingest.metrics().render();
    assert!(
        text.contains("cartstream_events_received_total{channel=\"http\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("cartstream_events_rejected_total{channel=\"http\"} 2"),
        "{text}"
    );

    stop.cancel();
    task.await.unwrap();
    let late = ingest
        .submit(
            vec![ingest.validate(json!({"userId": "u", "eventType": "cart_viewed"}))],
            Source::Http,
        )
        .await;
    assert!(
        matches!(late[0], Outcome::Unavailable(_)),
        "after shutdown nothing is claimed as accepted"
    );
}

#[tokio::test]
async fn fail_open_decides_duplicates_by_the_store_and_rests_the_dedup_store() {
    let mut dedup = MockDedupStore::new();
    dedup
        .expect_claim()
        .times(1)
        .returning(|_, _| Err(PortError::Unavailable("redis down".into())));
    dedup.expect_confirm().never();
    dedup.expect_release().never();
    let mut store = MockEventStore::new();
    store
        .expect_known()
        .withf(|keys| key_strs(keys) == ["old", "new"] || key_strs(keys) == ["later"])
        .returning(|keys| Ok(keys.iter().map(|k| k.as_str() == "old").collect()));
    store
        .expect_insert_owned()
        .withf(|evs| evs.len() == 1)
        .times(2)
        .returning(|_| Ok(()));
    let c = committer_on(dedup, store, DedupOutage::FailOpen);
    let out = c.commit(vec![ev("old"), ev("new")]).await;
    assert_eq!(
        out,
        [Outcome::Duplicate(id("old")), Outcome::Accepted(id("new"))]
    );
    // Within the rest period the dedup store is not asked again (claim: times(1)).
    let out = c.commit(vec![ev("later")]).await;
    assert_eq!(out, [Outcome::Accepted(id("later"))]);
    assert!(c
        .metrics
        .render()
        .contains("cartstream_dedup_fallback_total 3"));
}

#[tokio::test]
async fn fail_open_with_the_store_unreadable_claims_nothing_accepted() {
    let mut dedup = MockDedupStore::new();
    dedup
        .expect_claim()
        .returning(|_, _| Err(PortError::Unavailable("redis down".into())));
    let mut store = MockEventStore::new();
    store
        .expect_known()
        .returning(|_| Err(PortError::Unavailable("store down too".into())));
    store.expect_insert_owned().never();
    let c = committer_on(dedup, store, DedupOutage::FailOpen);
    let out = c.commit(vec![ev("a")]).await;
    assert!(matches!(out[0], Outcome::Unavailable(_)));
}

/// An event store that takes its time, so consecutive groups overlap; it says when an
/// insert has started.
struct SlowStore(
    crate::adapters::outbound::embedded::EmbeddedStore,
    Arc<tokio::sync::Notify>,
);

#[async_trait::async_trait]
impl EventStore for SlowStore {
    async fn insert(&self, events: &[StoredEvent]) -> Result<(), PortError> {
        self.1.notify_one();
        // Slow on purpose: the store turn is held this long, while later groups claim.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.0.insert(events).await
    }
    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        self.0.known(keys).await
    }
    async fn query(
        &self,
        q: &crate::ports::EventQuery,
    ) -> Result<crate::ports::EventPage, PortError> {
        self.0.query(q).await
    }
    async fn check(&self) -> Result<(), PortError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_repeat_claimed_while_the_first_is_being_stored_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = crate::adapters::outbound::embedded::EmbeddedStore::open(dir.path()).unwrap();
    let storing = Arc::new(tokio::sync::Notify::new());
    let committer = Committer::new(
        Arc::new(embedded.clone()),
        Arc::new(SlowStore(embedded.clone(), Arc::clone(&storing))),
        Arc::new(crate::ports::SystemClock),
        Arc::new(Metrics::new()),
        DedupPolicy {
            window: Duration::from_secs(3600),
            hold: Duration::from_secs(30),
            outage: DedupOutage::FailClosed,
        },
        Arc::new(tokio::sync::Notify::new()),
    );
    let stop = CancellationToken::new();
    let (ingest, task) = Ingest::start(
        committer,
        ValidationPolicy::protocol_default(),
        100,
        stop.clone(),
    );
    let event = || json!({"eventId": "x", "userId": "u", "eventType": "cart_viewed"});
    let first = ingest.submit(vec![ingest.validate(event())], Source::Ws);
    // Once the first group is storing, the second claims while it stores.
    storing.notified().await;
    let started = std::time::Instant::now();
    let second = ingest.submit(vec![ingest.validate(event())], Source::Http);
    let third = ingest.submit(
        vec![ingest.validate(json!({"eventId": "y", "userId": "u", "eventType": "cart_viewed"}))],
        Source::Http,
    );
    assert_eq!(first.await, [Outcome::Accepted(id("x"))]);
    assert_eq!(second.await, [Outcome::Duplicate(id("x"))]);
    assert_eq!(third.await, [Outcome::Accepted(id("y"))]);
    assert!(started.elapsed() < Duration::from_millis(1000));
    stop.cancel();
    task.await.unwrap();
    let stored = embedded
        .query(&crate::ports::EventQuery::first(10))
        .await
        .unwrap()
        .events;
    assert_eq!(stored.len(), 2, "x once, y once");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_while_the_dedup_store_rests_does_not_extend_the_rest() {
    let mut dedup = MockDedupStore::new();
    let mut calls = 0;
    dedup.expect_claim().times(2).returning(move |_, k| {
        calls += 1;
        if calls == 1 {
            Err(PortError::Unavailable("redis down".into()))
        } else {
            Ok(vec![Claim::New; k.len()])
        }
    });
    dedup.expect_confirm().returning(|_, _| Ok(()));
    let mut store = MockEventStore::new();
    store.expect_insert_owned().times(1).returning(|_| Ok(()));
    let c = committer(dedup, store);
    let down = [Outcome::Unavailable(Unavailable::DedupDown)];
    assert_eq!(c.commit(vec![ev("a")]).await, down);
    // Inside the rest: refused without asking the store.
    tokio::time::advance(DEDUP_REST / 2).await;
    assert_eq!(c.commit(vec![ev("a")]).await, down);
    // The rest counts from the store's failure, not from the refusal: it is over now.
    tokio::time::advance(DEDUP_REST / 2 + Duration::from_millis(10)).await;
    assert_eq!(c.commit(vec![ev("a")]).await, [Outcome::Accepted(id("a"))]);
}

/// A clock one second later at every reading, so "recorded at" and "now" differ.
fn ticking_clock() -> Arc<dyn Clock> {
    let next = std::sync::atomic::AtomicI64::new(1_754_796_424);
    let mut c = MockClock::new();
    c.expect_now().returning(move || {
        let s = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Utc.timestamp_opt(s, 0).unwrap()
    });
    Arc::new(c)
}

/// Commits `events` as one batch of the committer task while one subscriber watches the tap:
/// what each job was answered, and (outcome, event id, receivedAt in s) of what the tap showed.
async fn tapped(
    dedup: MockDedupStore,
    store: MockEventStore,
    events: Vec<(CartEvent, Source)>,
) -> (Vec<Outcome>, Vec<(TapOutcome, String, i64)>) {
    let metrics = Arc::new(Metrics::new());
    let c = Committer::new(
        Arc::new(dedup),
        Arc::new(store),
        ticking_clock(),
        Arc::clone(&metrics),
        DedupPolicy {
            window: Duration::from_secs(86_400),
            hold: Duration::from_secs(30),
            outage: DedupOutage::FailClosed,
        },
        Arc::new(tokio::sync::Notify::new()),
    );
    let mut sub = metrics.tap.subscribe();
    let (reply, answer) = oneshot::channel();
    let batch = Batch {
        replies: vec![(events.len(), reply)],
        events,
    };
    let pipeline = Pipeline::default();
    let turn = Arc::clone(&pipeline.claim).lock_owned().await;
    c.commit_and_reply(&pipeline, turn, batch).await;
    let got = sub.recv().await;
    let shown = got
        .groups
        .iter()
        .flat_map(|g| &g.events)
        .map(|e| match e {
            TapEvent::Committed { event, outcome, .. } => (
                *outcome,
                event.event_id().to_owned(),
                event.received_at.timestamp(),
            ),
            TapEvent::Rejected { .. } => panic!("no rejection was committed"),
        })
        .collect();
    (answer.await.unwrap(), shown)
}

#[tokio::test]
async fn the_tap_shows_the_group_in_order_accepted_as_recorded_the_rest_as_of_now() {
    let mut dedup = MockDedupStore::new();
    dedup
        .expect_claim()
        .withf(|_, keys| key_strs(keys) == ["a", "b", "c"])
        .returning(|_, _| Ok(vec![Claim::New, Claim::Duplicate, Claim::New]));
    dedup.expect_confirm().returning(|_, _| Ok(()));
    let mut store = MockEventStore::new();
    store
        .expect_insert_owned()
        .withf(|evs| evs.len() == 2)
        .returning(|_| Ok(()));
    let (answers, shown) = tapped(dedup, store, vec![ev("a"), ev("b"), ev("a"), ev("c")]).await;
    assert_eq!(
        answers,
        [
            Outcome::Accepted(id("a")),
            Outcome::Duplicate(id("b")),
            Outcome::Duplicate(id("a")),
            Outcome::Accepted(id("c")),
        ]
    );
    // The clock's first reading is the recording time; a later one is "now".
    let recorded = shown[0].2;
    let now = shown[1].2;
    assert!(now > recorded, "{shown:?}");
    assert_eq!(
        shown,
        [
            (TapOutcome::Accepted, "a".to_owned(), recorded),
            (TapOutcome::Duplicate, "b".to_owned(), now),
            (TapOutcome::Duplicate, "a".to_owned(), now),
            (TapOutcome::Accepted, "c".to_owned(), recorded),
        ]
    );
}

#[tokio::test]
async fn the_tap_shows_a_group_the_store_refused_as_unavailable_as_of_now() {
    let mut dedup = MockDedupStore::new();
    dedup
        .expect_claim()
        .returning(|_, _| Ok(vec![Claim::New, Claim::Duplicate]));
    dedup.expect_release().returning(|_, _| Ok(()));
    let mut store = MockEventStore::new();
    store
        .expect_insert_owned()
        .returning(|_| Err(PortError::Unavailable("disk on fire".into())));
    let (_, shown) = tapped(dedup, store, vec![ev("a"), ev("b")]).await;
    let outcomes: Vec<_> = shown.iter().map(|(o, id, _)| (*o, id.as_str())).collect();
    assert_eq!(
        outcomes,
        [(TapOutcome::Unavailable, "a"), (TapOutcome::Duplicate, "b")]
    );
    // Both as of the same reading, after the one the store call was given.
    assert_eq!(shown[0].2, shown[1].2);
    assert!(shown[0].2 > 1_754_796_424, "{shown:?}");
}

/// The next group is gathered at once unless a group is storing and the claim is known to take
/// less time than a store; then it waits for the difference, less what the store has run.
#[tokio::test]
async fn the_next_group_is_gathered_so_that_its_claim_ends_with_the_store() {
    let pipeline = Pipeline::default();
    assert_eq!(pipeline.gather_delay(), None, "no group is storing");

    pipeline.claimed_in(Duration::from_micros(300));
    let turn = pipeline.store_turn().await;
    {
        let mut pace = lock(&pipeline.pace);
        pace.store_us = 1000.0;
        pace.storing_since = Some(Instant::now());
    }
    let delay = pipeline.gather_delay().expect("a store is running");
    assert!(
        delay <= Duration::from_micros(700) && delay > Duration::from_micros(500),
        "{delay:?}"
    );

    lock(&pipeline.pace).storing_since = Some(Instant::now() - Duration::from_micros(680));
    assert_eq!(
        pipeline.gather_delay(),
        None,
        "too little left to be worth a pause"
    );

    {
        let mut pace = lock(&pipeline.pace);
        pace.store_us = 60_000.0;
        pace.storing_since = Some(Instant::now());
    }
    assert_eq!(pipeline.gather_delay(), Some(MAX_GATHER_DELAY));

    lock(&pipeline.pace).claim_us = 70_000.0;
    assert_eq!(
        pipeline.gather_delay(),
        None,
        "the claim takes longer than a store"
    );

    drop(turn);
    assert_eq!(
        pipeline.gather_delay(),
        None,
        "the store turn was given back"
    );
    let pace = lock(&pipeline.pace);
    assert!(pace.store_us < 60_000.0, "the turn held went into the mean");
}

#[test]
fn running_means_start_at_the_first_sample_and_move_a_tenth_of_the_way() {
    let mut mean = 0.0;
    Pace::observe(&mut mean, Duration::from_micros(500));
    assert_eq!(mean, 500.0);
    Pace::observe(&mut mean, Duration::from_micros(1500));
    assert!((mean - 600.0).abs() < 1e-6, "{mean}");
}
