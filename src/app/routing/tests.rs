use super::*;
use crate::adapters::outbound::embedded::EmbeddedStore;
use crate::adapters::outbound::outbox::SqliteOutbox;
use crate::app::test_wait::{wait_for, wait_until};
use crate::domain::routing::{RouteMatch, RouteName};
use crate::domain::{fixtures, Source, StoredEvent};
use crate::ports::{DeliveryError, EventStore, TokioClock};
use serde_json::json;
use std::sync::atomic::AtomicUsize;

/// A target that records what it receives and fails the first `fail_first` calls.
#[derive(Default)]
struct Recorder {
    received: Mutex<Vec<String>>,
    calls: AtomicUsize,
    fail_first: AtomicUsize,
    permanent: AtomicBool,
}

#[async_trait::async_trait]
impl RouteTarget for Recorder {
    async fn deliver(&self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_first.load(Ordering::SeqCst) {
            return Err(if self.permanent.load(Ordering::SeqCst) {
                DeliveryError::permanent("400 bad request")
            } else {
                DeliveryError::retryable("500 internal error")
            });
        }
        let mut r = self.received.lock().unwrap();
        r.extend(
            events
                .iter()
                .map(|e| e.event.event_id().as_str().to_owned()),
        );
        Ok(())
    }

    fn describe(&self) -> String {
        "recorder".into()
    }
}

fn event(id: &str, user: &str, t: &str) -> StoredEvent {
    fixtures::event(id)
        .user(user)
        .kind(t)
        .metadata(json!({"productId": "p", "cartValue": 1, "itemCount": 1}))
        .at_now()
        .via(Source::Ws)
        .stored()
}

fn policy(max_attempts: u32, lanes: u32) -> RoutePolicy {
    RoutePolicy {
        batch_size: 10,
        max_attempts,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        lanes,
    }
}

struct Harness {
    store: EmbeddedStore,
    routing: Arc<Routing>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(dir: &std::path::Path, routes: Vec<Arc<Route>>) -> Harness {
    let store = EmbeddedStore::open(dir).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::start());
    let routing = Arc::new(Routing {
        routes,
        outbox: Arc::new(SqliteOutbox::open(dir, Arc::clone(&clock)).unwrap()),
        feed: Arc::new(store.clone()),
        retired: None,
        recorded: Arc::new(Notify::new()),
        routed_through: Arc::new(AtomicI64::new(0)),
        metrics: Arc::new(Metrics::new()),
        clock,
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&routing).run(stop.clone()));
    Harness {
        store,
        routing,
        stop,
        task,
    }
}

impl Harness {
    async fn record(&self, events: &[StoredEvent]) {
        self.store.insert(events).await.unwrap();
        self.routing.recorded.notify_one();
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn route(name: &str, types: &[&str], target: Arc<Recorder>, policy: RoutePolicy) -> Arc<Route> {
    let types: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
    Arc::new(Route::new(
        RouteRule {
            name: RouteName::parse(name).unwrap(),
            matcher: RouteMatch::parse(&types).unwrap(),
        },
        target,
        policy,
    ))
}

/// Waits until the router has saved its starting cursor: events recorded from then on are
/// routed.
async fn started(routing: &Routing) {
    wait_until("the router's starting cursor", || async {
        let feed = routing.feed.name();
        routing.outbox.cursor(feed).await.unwrap().is_some()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn matching_events_reach_each_route_in_order_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let checkout = Arc::new(Recorder::default());
    let all = Arc::new(Recorder::default());
    let h = start(
        dir.path(),
        vec![
            route(
                "checkout",
                &["checkout_started"],
                Arc::clone(&checkout),
                policy(3, 1),
            ),
            route("all", &[], Arc::clone(&all), policy(3, 4)),
        ],
    );
    started(&h.routing).await;
    let events: Vec<StoredEvent> = (0..30)
        .map(|i| {
            let t = if i % 3 == 0 {
                "checkout_started"
            } else {
                "item_added"
            };
            event(&format!("e{i:02}"), &format!("user-{}", i % 5), t)
        })
        .collect();
    for chunk in events.chunks(7) {
        h.record(chunk).await;
    }
    wait_for("all 30", || all.received.lock().unwrap().len() == 30).await;
    wait_for("10 checkouts", || {
        checkout.received.lock().unwrap().len() == 10
    })
    .await;
    let got = checkout.received.lock().unwrap().clone();
    let want: Vec<String> = (0..30).step_by(3).map(|i| format!("e{i:02}")).collect();
    assert_eq!(got, want, "one lane: the order they were recorded in");
    // With four lanes, each user's events still arrive in order.
    let all_got = all.received.lock().unwrap().clone();
    for user in 0..5 {
        let mine: Vec<&String> = all_got
            .iter()
            .filter(|id| id[1..].parse::<usize>().unwrap() % 5 == user)
            .collect();
        let mut sorted = mine.clone();
        sorted.sort();
        assert_eq!(mine, sorted, "user-{user} in order");
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_until_they_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let target = Arc::new(Recorder::default());
    target.fail_first.store(3, Ordering::SeqCst);
    let h = start(
        dir.path(),
        vec![route("r", &[], Arc::clone(&target), policy(10, 1))],
    );
    started(&h.routing).await;
    h.record(&[
        event("a", "u", "cart_viewed"),
        event("b", "u", "cart_viewed"),
    ])
    .await;
    let status = &h.routing.routes[0].status;
    wait_for("delivery", || status.delivered.load(Ordering::SeqCst) == 2).await;
    assert_eq!(target.received.lock().unwrap().len(), 2);
    assert_eq!(target.calls.load(Ordering::SeqCst), 4);
    assert_eq!(status.failed_attempts.load(Ordering::SeqCst), 3);
    assert_eq!(status.delivered.load(Ordering::SeqCst), 2);
    assert!(!status.failing.load(Ordering::SeqCst));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn after_max_attempts_deliveries_are_dead_lettered_and_replay_delivers_them() {
    let dir = tempfile::tempdir().unwrap();
    let target = Arc::new(Recorder::default());
    target.fail_first.store(3, Ordering::SeqCst);
    let h = start(
        dir.path(),
        vec![route("r", &[], Arc::clone(&target), policy(3, 1))],
    );
    started(&h.routing).await;
    h.record(&[event("a", "u", "cart_viewed")]).await;
    let outbox = Arc::clone(&h.routing.outbox);
    wait_until("a dead letter", || async {
        !outbox
            .dead_letters(None, None, 10)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let dead = outbox.dead_letters(None, None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].attempts, dead[0].last_error.as_str()),
        (3, "500 internal error")
    );
    assert!(target.received.lock().unwrap().is_empty());
    assert_eq!(outbox.replay(Some("r".into()), None).await.unwrap(), 1);
    h.routing.routes[0].wake.notify_waiters();
    wait_for("the replayed delivery", || {
        target.received.lock().unwrap().len() == 1
    })
    .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_permanent_refusal_is_dead_lettered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let target = Arc::new(Recorder::default());
    target.fail_first.store(1, Ordering::SeqCst);
    target.permanent.store(true, Ordering::SeqCst);
    let h = start(
        dir.path(),
        vec![route("r", &[], Arc::clone(&target), policy(10, 1))],
    );
    started(&h.routing).await;
    h.record(&[event("a", "u", "cart_viewed")]).await;
    let outbox = Arc::clone(&h.routing.outbox);
    wait_for("a dead letter", || {
        h.routing.routes[0]
            .status
            .dead_lettered
            .load(Ordering::SeqCst)
            == 1
    })
    .await;
    assert_eq!(
        outbox.dead_letters(None, None, 10).await.unwrap()[0].attempts,
        1
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn undelivered_events_are_delivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let down = Arc::new(Recorder::default());
    down.fail_first.store(usize::MAX, Ordering::SeqCst);
    let h = start(
        dir.path(),
        vec![route("r", &[], Arc::clone(&down), policy(1000, 1))],
    );
    started(&h.routing).await;
    h.record(&[
        event("a", "u", "cart_viewed"),
        event("b", "v", "cart_viewed"),
    ])
    .await;
    wait_for("a failed attempt", || down.calls.load(Ordering::SeqCst) > 0).await;
    h.stop().await;

    let up = Arc::new(Recorder::default());
    let h = start(
        dir.path(),
        vec![route("r", &[], Arc::clone(&up), policy(1000, 1))],
    );
    wait_for("delivery after restart", || {
        up.received.lock().unwrap().len() == 2
    })
    .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn events_recorded_before_routes_existed_are_not_routed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .insert(&[event("old", "u", "cart_viewed")])
            .await
            .unwrap();
    }
    let target = Arc::new(Recorder::default());
    let h = start(
        dir.path(),
        vec![route("r", &[], Arc::clone(&target), policy(3, 1))],
    );
    started(&h.routing).await;
    h.record(&[event("new", "u", "cart_viewed")]).await;
    wait_for("the new event", || {
        target.received.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(target.received.lock().unwrap()[0], "new");
    h.stop().await;
}

#[test]
fn backoff_doubles_up_to_the_cap_with_jitter() {
    let p = RoutePolicy {
        batch_size: 1,
        max_attempts: 10,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        lanes: 1,
    };
    for (attempts, full) in [
        (0, 100),
        (1, 200),
        (2, 400),
        (3, 800),
        (4, 1000),
        (40, 1000),
    ] {
        let d = backoff(&p, attempts).as_millis() as u64;
        assert!(d <= full && d >= full / 2, "attempt {attempts}: {d} ms");
    }
}

/// A setup whose routing read the embedded events table now reads a journal in front of it:
/// what the table held unrouted when the process started is routed first, then the table's
/// cursor is retired, and rows that came later (through the journal) are not routed twice.
#[tokio::test(start_paused = true)]
async fn a_retired_feed_is_caught_up_once_then_the_new_feed_is_routed() {
    use crate::adapters::outbound::journal::SqliteJournal;
    use crate::ports::{Journal, Outbox};

    let dir = tempfile::tempdir().unwrap();
    let table = EmbeddedStore::open(dir.path()).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::start());
    let outbox = Arc::new(SqliteOutbox::open(dir.path(), Arc::clone(&clock)).unwrap());
    // The old router had taken the table through its first row.
    table
        .insert(&[event("old-1", "u", "cart_viewed")])
        .await
        .unwrap();
    outbox.enqueue("embedded", &[], 1).await.unwrap();
    table
        .insert(&[
            event("old-2", "u", "cart_viewed"),
            event("old-3", "u", "cart_viewed"),
        ])
        .await
        .unwrap();
    let through = table.last_rowid().unwrap();
    // Rows past `through` came through the journal, which routing reads itself.
    table
        .insert(&[event("new-1", "u", "cart_viewed")])
        .await
        .unwrap();
    let journal = SqliteJournal::open(dir.path(), 1 << 20).unwrap();

    let target = Arc::new(Recorder::default());
    let routing = Arc::new(Routing {
        routes: vec![route("r", &[], Arc::clone(&target), policy(3, 1))],
        outbox: Arc::clone(&outbox) as Arc<dyn Outbox>,
        feed: Arc::new(journal.clone()),
        retired: Some((Arc::new(table.clone()), through)),
        recorded: Arc::new(Notify::new()),
        routed_through: Arc::new(AtomicI64::new(0)),
        metrics: Arc::new(Metrics::new()),
        clock,
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&routing).run(stop.clone()));
    started(&routing).await;
    journal
        .append(&[event("new-1", "u", "cart_viewed")])
        .await
        .unwrap();
    routing.recorded.notify_one();
    wait_for("three deliveries", || {
        target.received.lock().unwrap().len() == 3
    })
    .await;
    // Nothing more can come once both feeds are taken in and the outbox is empty.
    let head = journal.head().await.unwrap();
    wait_until("routing to go idle", || async {
        routing.routed_through.load(Ordering::Acquire) == head
            && outbox.cursor("embedded").await.unwrap() == Some(RETIRED)
            && outbox.backlog("r").await.unwrap().pending == 0
    })
    .await;
    assert_eq!(
        *target.received.lock().unwrap(),
        ["old-2", "old-3", "new-1"]
    );
    assert_eq!(outbox.cursor("embedded").await.unwrap(), Some(RETIRED));
    stop.cancel();
    task.await.unwrap();
}
