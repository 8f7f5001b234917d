//! What routing does when the outbox, a feed or a target fails: each `Err` branch of the
//! router and the lane workers, driven through the published fakes. The outbox fake keeps
//! just enough state (the saved cursors, the waiting items) for the workers to loop as they do
//! over the real outbox.

use super::*;
use crate::app::test_wait::wait_for;
use crate::domain::routing::{RouteMatch, RouteName};
use crate::domain::{fixtures, Source, StoredEvent};
use crate::ports::{
    DeliveryError, MockEventFeed, MockOutbox, MockRouteTarget, PortError, RouteBacklog,
};
use std::collections::HashMap;
use std::time::Instant;

const ROUTE: &str = "crm";

fn event(id: &str) -> StoredEvent {
    fixtures::event(id).at_now().via(Source::Ws).stored()
}

fn entries(seqs: std::ops::RangeInclusive<i64>) -> Vec<FeedEntry> {
    seqs.map(|seq| FeedEntry {
        seq,
        event: event(&format!("e{seq}")),
    })
    .collect()
}

fn item(id: i64) -> OutboxItem {
    OutboxItem {
        id,
        route: ROUTE.into(),
        lane: 0,
        event: event(&format!("e{id}")),
        attempts: 0,
        next_at: Utc::now() - chrono::Duration::seconds(1),
    }
}

fn injected() -> PortError {
    PortError::Unavailable("injected failure".into())
}

/// A shared log of calls, written by the fakes and read by the test.
struct Log<T>(Arc<Mutex<Vec<T>>>);

impl<T> Default for Log<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<T> Clone for Log<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: Clone> Log<T> {
    fn push(&self, v: T) {
        lock(&self.0).push(v);
    }
    fn get(&self) -> Vec<T> {
        lock(&self.0).clone()
    }
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A feed named `journal` whose `after` is logged and answered by `answer`, after the
/// failures the test set up first.
fn feed(
    feed: &mut MockEventFeed,
    log: &Log<i64>,
    answer: impl Fn(i64) -> Vec<FeedEntry> + Send + 'static,
) {
    feed.expect_name().return_const("journal");
    let log = log.clone();
    feed.expect_after().returning(move |after, _| {
        log.push(after);
        Ok(answer(after))
    });
}

/// Cursors the outbox saved, by feed: `cursor` answers from it, `enqueue` writes it.
type Cursors = Arc<Mutex<HashMap<String, i64>>>;

/// Cursor and enqueue answers that save like the real outbox, logging each enqueue as
/// `(cursor, deliveries)`; the backlog report always answers.
fn saving_cursors(outbox: &mut MockOutbox, cursors: &Cursors, enqueued: &Log<(i64, usize)>) {
    let c = Arc::clone(cursors);
    outbox
        .expect_cursor()
        .returning(move |feed| Ok(lock(&c).get(feed).copied()));
    let (c, log) = (Arc::clone(cursors), enqueued.clone());
    outbox
        .expect_enqueue()
        .returning(move |feed, deliveries, cursor| {
            log.push((cursor, deliveries.len()));
            lock(&c).insert(feed.to_owned(), cursor);
            Ok(())
        });
    outbox
        .expect_backlog()
        .returning(|_| Ok(RouteBacklog::default()));
}

/// Lane answers over a list of waiting items that `delivered` and `dead_letter` remove, as the
/// real outbox does (after the failures the test set up first).
fn waiting_items(outbox: &mut MockOutbox, items: Vec<OutboxItem>) -> Arc<Mutex<Vec<OutboxItem>>> {
    let waiting = Arc::new(Mutex::new(items));
    let w = Arc::clone(&waiting);
    outbox
        .expect_head()
        .returning(move |_, _, _| Ok(lock(&w).clone()));
    let w = Arc::clone(&waiting);
    outbox.expect_delivered().returning(move |ids| {
        lock(&w).retain(|i| !ids.contains(&i.id));
        Ok(())
    });
    let w = Arc::clone(&waiting);
    outbox.expect_dead_letter().returning(move |ids, _| {
        lock(&w).retain(|i| !ids.contains(&i.id));
        Ok(())
    });
    waiting
}

/// A router with nothing to route (its feed is empty at cursor 0), so only the lane works.
fn idle_router(outbox: &mut MockOutbox, feed_fake: &mut MockEventFeed) {
    let cursors: Cursors = Arc::new(Mutex::new(HashMap::from([("journal".into(), 0)])));
    saving_cursors(outbox, &cursors, &Log::default());
    feed(feed_fake, &Log::default(), |_| Vec::new());
}

fn route(target: MockRouteTarget, backoff_min: Duration) -> Arc<Route> {
    Arc::new(Route::new(
        RouteRule {
            name: RouteName::parse(ROUTE).unwrap(),
            matcher: RouteMatch::parse(&[]).unwrap(),
        },
        Arc::new(target),
        RoutePolicy {
            batch_size: 10,
            max_attempts: 3,
            backoff_min,
            backoff_max: backoff_min * 4,
            lanes: 1,
        },
    ))
}

/// A target whose `deliver` logs the event ids of each call and answers `answer(call)`.
fn target(
    log: &Log<Vec<String>>,
    answer: impl Fn(usize) -> Result<(), DeliveryError> + Send + 'static,
) -> MockRouteTarget {
    let mut target = MockRouteTarget::new();
    let log = log.clone();
    target.expect_deliver().returning(move |events| {
        let ids = events
            .iter()
            .map(|e| e.event.event_id().as_str().to_owned());
        log.push(ids.collect());
        answer(log.len() - 1)
    });
    target
}

struct Running {
    routing: Arc<Routing>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn routing_over(
    outbox: MockOutbox,
    feed: MockEventFeed,
    routes: Vec<Arc<Route>>,
    at: i64,
) -> Routing {
    Routing {
        routes,
        outbox: Arc::new(outbox),
        feed: Arc::new(feed),
        retired: None,
        recorded: Arc::new(Notify::new()),
        routed_through: Arc::new(AtomicI64::new(at)),
        metrics: Arc::new(Metrics::new()),
        clock: Arc::new(crate::ports::SystemClock),
    }
}

fn start(outbox: MockOutbox, feed: MockEventFeed, routes: Vec<Arc<Route>>, at: i64) -> Running {
    let routing = Arc::new(routing_over(outbox, feed, routes, at));
    let stop = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&routing).run(stop.clone()));
    Running {
        routing,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn a_start_cursor_that_cannot_be_read_or_saved_is_retried_until_saved_at_the_head() {
    let mut outbox = MockOutbox::new();
    let mut feed_fake = MockEventFeed::new();
    outbox
        .expect_cursor()
        .times(1)
        .returning(|_| Err(injected()));
    feed_fake
        .expect_head()
        .times(1)
        .returning(|| Err(injected()));
    feed_fake.expect_head().returning(|| Ok(9));
    outbox
        .expect_enqueue()
        .times(1)
        .returning(|_, _, _| Err(injected()));
    let (cursors, enqueued, read) = (Cursors::default(), Log::default(), Log::default());
    saving_cursors(&mut outbox, &cursors, &enqueued);
    feed(&mut feed_fake, &read, |_| Vec::new());
    let running = start(outbox, feed_fake, Vec::new(), 0);

    wait_for("the feed to be read", || !read.is_empty()).await;
    assert_eq!(read.get()[0], 9, "routing starts at the head it saved");
    assert_eq!(enqueued.get(), [(9, 0)], "the head is saved once it can be");
    assert_eq!(lock(&cursors).get("journal"), Some(&9));
    assert_eq!(running.routing.routed_through.load(Ordering::Acquire), 9);
    running.stop().await;
}

#[tokio::test]
async fn a_failed_feed_read_is_retried_from_the_same_cursor() {
    let mut outbox = MockOutbox::new();
    let mut feed_fake = MockEventFeed::new();
    let (enqueued, read) = (Log::default(), Log::default());
    let r = read.clone();
    feed_fake
        .expect_after()
        .times(1)
        .returning(move |after, _| {
            r.push(after);
            Err(injected())
        });
    let cursors: Cursors = Arc::new(Mutex::new(HashMap::from([("journal".into(), 5)])));
    saving_cursors(&mut outbox, &cursors, &enqueued);
    feed(&mut feed_fake, &read, |after| {
        if after == 5 {
            entries(6..=7)
        } else {
            Vec::new()
        }
    });
    let running = start(outbox, feed_fake, Vec::new(), 0);

    wait_for("the entries to be enqueued", || !enqueued.is_empty()).await;
    assert_eq!(enqueued.get(), [(7, 0)]);
    assert_eq!(running.routing.routed_through.load(Ordering::Acquire), 7);
    running.stop().await;
    assert_eq!(
        read.get()[..3],
        [5, 5, 7],
        "the failed read, the same again, then on"
    );
}

#[tokio::test]
async fn a_failed_enqueue_keeps_the_cursor_and_enqueues_the_same_entries_again() {
    let mut outbox = MockOutbox::new();
    let mut feed_fake = MockEventFeed::new();
    let failed = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&failed);
    outbox.expect_enqueue().times(1).returning(move |_, _, _| {
        f.store(true, Ordering::SeqCst);
        Err(injected())
    });
    let cursors: Cursors = Arc::new(Mutex::new(HashMap::from([("journal".into(), 5)])));
    let (enqueued, read) = (Log::default(), Log::default());
    saving_cursors(&mut outbox, &cursors, &enqueued);
    feed(&mut feed_fake, &read, |after| {
        if after == 5 {
            entries(6..=7)
        } else {
            Vec::new()
        }
    });
    outbox.expect_head().returning(|_, _, _| Ok(Vec::new()));
    let mut target = MockRouteTarget::new();
    target.expect_deliver().never();
    let route = route(target, Duration::from_millis(10));
    let running = start(outbox, feed_fake, vec![route], 5);

    wait_for("the enqueue to fail", || failed.load(Ordering::SeqCst)).await;
    // While it is retried, the forwarder may remove nothing past the kept cursor.
    assert_eq!(running.routing.routed_through.load(Ordering::Acquire), 5);
    wait_for("the entries to be enqueued", || !enqueued.is_empty()).await;
    assert_eq!(enqueued.get(), [(7, 2)], "both entries, once they could be");
    assert_eq!(read.get()[..2], [5, 5], "read again from the kept cursor");
    assert_eq!(lock(&cursors).get("journal"), Some(&7));
    assert_eq!(running.routing.routed_through.load(Ordering::Acquire), 7);
    running.stop().await;
}

#[tokio::test]
async fn a_failed_outbox_read_is_retried_by_the_lane() {
    let mut outbox = MockOutbox::new();
    let mut feed_fake = MockEventFeed::new();
    outbox
        .expect_head()
        .times(1)
        .returning(|_, _, _| Err(injected()));
    let waiting = waiting_items(&mut outbox, vec![item(1)]);
    idle_router(&mut outbox, &mut feed_fake);
    let calls = Log::default();
    let running = start(
        outbox,
        feed_fake,
        vec![route(target(&calls, |_| Ok(())), Duration::from_millis(10))],
        0,
    );

    wait_for("the delivery", || lock(&waiting).is_empty()).await;
    assert_eq!(calls.get(), [vec!["e1".to_owned()]]);
    running.stop().await;
}

#[tokio::test]
async fn a_delivery_that_cannot_be_marked_done_is_delivered_again_not_failed() {
    let mut outbox = MockOutbox::new();
    let mut feed_fake = MockEventFeed::new();
    outbox
        .expect_delivered()
        .times(1)
        .returning(|_| Err(injected()));
    let waiting = waiting_items(&mut outbox, vec![item(1), item(2)]);
    idle_router(&mut outbox, &mut feed_fake);
    let calls = Log::default();
    let route = route(target(&calls, |_| Ok(())), Duration::from_millis(10));
    let running = start(outbox, feed_fake, vec![Arc::clone(&route)], 0);

    wait_for("the deliveries to be done", || lock(&waiting).is_empty()).await;
    running.stop().await;
    let both = vec!["e1".to_owned(), "e2".to_owned()];
    assert_eq!(calls.get(), [both.clone(), both], "at least once: again");
    assert_eq!(route.status.failed_attempts.load(Ordering::Relaxed), 0);
    assert_eq!(route.status.dead_lettered.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_failed_dead_lettering_is_not_counted_and_is_tried_again() {
    let mut outbox = MockOutbox::new();
    let mut feed_fake = MockEventFeed::new();
    let dead = Log::default();
    let d = dead.clone();
    outbox
        .expect_dead_letter()
        .times(1)
        .returning(move |ids, _| {
            d.push(ids.to_vec());
            Err(injected())
        });
    outbox.expect_retry_later().never();
    let waiting = waiting_items(&mut outbox, vec![item(1)]);
    idle_router(&mut outbox, &mut feed_fake);
    let calls = Log::default();
    let refuse = |_| Err(DeliveryError::permanent("400 bad request"));
    let route = route(target(&calls, refuse), Duration::from_millis(10));
    let running = start(outbox, feed_fake, vec![Arc::clone(&route)], 0);

    wait_for("the dead letter", || lock(&waiting).is_empty()).await;
    running.stop().await;
    assert_eq!(dead.get(), [vec![1]], "the failed attempt");
    assert_eq!(calls.len(), 2, "refused again, then dead-lettered");
    assert_eq!(route.status.dead_lettered.load(Ordering::Relaxed), 1);
    assert_eq!(route.status.failed_attempts.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_failed_retry_schedule_holds_the_lane_for_the_backoff() {
    let mut outbox = MockOutbox::new();
    let mut feed_fake = MockEventFeed::new();
    let scheduled = Log::default();
    let s = scheduled.clone();
    outbox
        .expect_retry_later()
        .times(1)
        .returning(move |ids, _, _| {
            s.push(ids.to_vec());
            Err(injected())
        });
    let waiting = waiting_items(&mut outbox, vec![item(1)]);
    idle_router(&mut outbox, &mut feed_fake);
    let attempts = Log::default();
    let mut target = MockRouteTarget::new();
    let a = attempts.clone();
    target.expect_deliver().returning(move |_| {
        a.push(Instant::now());
        match a.len() {
            1 => Err(DeliveryError::retryable("500 internal error")),
            _ => Ok(()),
        }
    });
    // The backoff before the first retry: 400 ms, less up to half (jitter).
    let backoff_min = Duration::from_millis(400);
    let route = route(target, backoff_min);
    let running = start(outbox, feed_fake, vec![Arc::clone(&route)], 0);

    wait_for("the retry", || lock(&waiting).is_empty()).await;
    running.stop().await;
    assert_eq!(scheduled.get(), [vec![1]]);
    let attempts = attempts.get();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts[1] - attempts[0] >= backoff_min / 2,
        "the item still looks due to the outbox; the lane waits anyway"
    );
    assert_eq!(route.status.failed_attempts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_retired_feed_that_fails_is_retried_and_caught_up_before_the_new_feed() {
    let mut outbox = MockOutbox::new();
    let mut retired = MockEventFeed::new();
    let mut feed_fake = MockEventFeed::new();
    outbox
        .expect_cursor()
        .withf(|feed| feed == "embedded")
        .times(1)
        .returning(|_| Err(injected()));
    let (retired_reads, r) = (Log::default(), Log::default());
    let rr = retired_reads.clone();
    retired.expect_after().times(1).returning(move |after, _| {
        rr.push(after);
        Err(injected())
    });
    retired.expect_name().return_const("embedded");
    // The retired feed holds 2 to 4; only what it held at the start (up to 3) is its own.
    feed(&mut retired, &retired_reads, |after| match after {
        1 => entries(2..=4),
        _ => entries(4..=4),
    });
    let cursors: Cursors = Arc::new(Mutex::new(HashMap::from([
        ("journal".into(), 10),
        ("embedded".into(), 1),
    ])));
    let enqueued = Log::default();
    saving_cursors(&mut outbox, &cursors, &enqueued);
    // The retired feed's cursor when the new feed is first read.
    let (c, new_reads) = (Arc::clone(&cursors), r.clone());
    feed_fake.expect_name().return_const("journal");
    feed_fake.expect_after().returning(move |_, _| {
        new_reads.push(lock(&c).get("embedded").copied());
        Ok(Vec::new())
    });
    let routing = Arc::new(Routing {
        retired: Some((Arc::new(retired), 3)),
        ..routing_over(outbox, feed_fake, Vec::new(), 0)
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&routing).run(stop.clone()));

    wait_for("the new feed to be read", || !r.is_empty()).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(r.get()[0], Some(RETIRED), "caught up and retired first");
    assert_eq!(
        retired_reads.get(),
        [1, 1, 3],
        "the failed read, again, then on"
    );
    assert_eq!(enqueued.get(), [(3, 0), (RETIRED, 0)]);
}

#[tokio::test]
async fn a_failed_backlog_read_leaves_the_gauges_and_is_read_again() {
    let mut outbox = MockOutbox::new();
    let mut feed_fake = MockEventFeed::new();
    let reads = Log::default();
    let r = reads.clone();
    outbox.expect_backlog().returning(move |_| {
        r.push(());
        match r.len() {
            1 => Err(injected()),
            _ => Ok(RouteBacklog {
                pending: 4,
                dead: 1,
            }),
        }
    });
    outbox.expect_head().returning(|_, _, _| Ok(Vec::new()));
    idle_router(&mut outbox, &mut feed_fake);
    let mut target = MockRouteTarget::new();
    target.expect_deliver().never();
    let running = start(outbox, feed_fake, vec![route(target, Duration::ZERO)], 0);
    let labels = crate::app::metrics::RouteLabels {
        route: ROUTE.into(),
    };
    let metrics = Arc::clone(&running.routing.metrics);
    let gauges = move || {
        (
            metrics.route_backlog.get_or_create(&labels).get(),
            metrics.route_dead_letters.get_or_create(&labels).get(),
        )
    };

    wait_for("the failed read", || !reads.is_empty()).await;
    assert_eq!(gauges(), (0, 0), "nothing reported from a failed read");
    wait_for("the next read", || reads.len() > 1).await;
    wait_for("the gauges", || gauges() == (4, 1)).await;
    running.stop().await;
}
