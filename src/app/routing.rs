//! Routing accepted events to downstream targets, at least once, never on the ack path.
//!
//! The router (the feed task of `Routing::run`) reads the durable record of accepted events
//! (the feed) in order and enqueues one delivery per matching route into the outbox, moving
//! its cursor in the same transaction. One worker per lane of each route then delivers from
//! the outbox in batches, in order, retrying failures with capped exponential backoff and
//! jitter; what keeps failing (or is refused for good) moves to the dead-letter store, from
//! which operators replay it.

use crate::app::metrics::{Metrics, RouteLabels};
use crate::domain::routing::{partition, RouteRule};
use crate::domain::StoredEvent;
use crate::ports::{
    Clock, Delivery, DeliveryError, EventFeed, FeedEntry, Outbox, OutboxItem, RouteTarget,
};
use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How one route delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Most events per `deliver` call.
    pub batch_size: usize,
    /// Failed attempts after which a delivery moves to the dead-letter store.
    pub max_attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Ordered lanes delivered in parallel; one user's events always take the same lane.
    pub lanes: u32,
}

/// What operators see of a route between restarts.
#[derive(Debug, Default)]
pub struct RouteStatus {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Whether the latest attempt failed.
    pub failing: AtomicBool,
    pub last_error: Mutex<Option<(String, DateTime<Utc>)>>,
    pub last_delivered_at: Mutex<Option<DateTime<Utc>>>,
}

/// A configured route.
pub struct Route {
    pub rule: RouteRule,
    pub target: Arc<dyn RouteTarget>,
    pub policy: RoutePolicy,
    pub status: RouteStatus,
    /// Wakes this route's workers when the router enqueued something.
    pub wake: Notify,
}

impl Route {
    pub fn new(rule: RouteRule, target: Arc<dyn RouteTarget>, policy: RoutePolicy) -> Self {
        Self {
            rule,
            target,
            policy,
            status: RouteStatus::default(),
            wake: Notify::new(),
        }
    }

    pub fn name(&self) -> &str {
        self.rule.name.as_str()
    }
}

/// Everything routing runs on.
pub struct Routing {
    pub routes: Vec<Arc<Route>>,
    pub outbox: Arc<dyn Outbox>,
    pub feed: Arc<dyn EventFeed>,
    /// A feed read before `feed` took its place (the embedded store's events table, before a
    /// journal stood in front of it), with its head when the process started: what it holds
    /// past its saved cursor up to there is routed before anything of `feed`, once; then its
    /// cursor is set to [`RETIRED`]. (Entries past that head came through `feed`.)
    pub retired: Option<(Arc<dyn EventFeed>, i64)>,
    /// Notified when events were recorded.
    pub recorded: Arc<Notify>,
    /// How far the feed has been taken into the outbox (the forwarder keeps journal entries
    /// past it).
    pub routed_through: Arc<AtomicI64>,
    pub metrics: Arc<Metrics>,
    /// When a delivery is due, when to retry it, and the times operators see.
    pub clock: Arc<dyn Clock>,
}

/// One ordered lane of a route, as its worker sees it.
struct Lane {
    route: Arc<Route>,
    index: u32,
    labels: RouteLabels,
}

impl Lane {
    fn name(&self) -> &str {
        self.route.name()
    }
}

const FEED_BATCH: usize = 1_000;
/// The saved cursor of a retired feed: nothing is left to route from it.
pub const RETIRED: i64 = i64::MAX;
const IDLE_POLL: Duration = Duration::from_millis(250);
const ERROR_PAUSE: Duration = Duration::from_millis(500);

impl Routing {
    /// Runs the router and every route's workers until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(Arc::clone(&self).route_feed(stop.clone()));
        for route in &self.routes {
            for lane in 0..route.policy.lanes.max(1) {
                tasks.spawn(Arc::clone(&self).deliver_lane(Arc::clone(route), lane, stop.clone()));
            }
        }
        tasks.spawn(Arc::clone(&self).report_backlog(stop.clone()));
        while tasks.join_next().await.is_some() {}
    }

    /// Where the router starts: its saved cursor, or (first run with routes) the feed's head,
    /// saved at once so events recorded from now on are never skipped.
    async fn start_cursor(&self, stop: &CancellationToken) -> Option<i64> {
        let feed = self.feed.name();
        loop {
            let saved = match self.outbox.cursor(feed).await {
                Ok(Some(c)) => return Some(c),
                Ok(None) => match self.feed.head().await {
                    Ok(head) => self.outbox.enqueue(feed, &[], head).await.map(|()| head),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match saved {
                Ok(c) => return Some(c),
                Err(e) => tracing::warn!(cause = %e, "routing cannot read its cursor; retrying"),
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(ERROR_PAUSE) => {}
            }
        }
    }

    async fn route_feed(self: Arc<Self>, stop: CancellationToken) {
        // The new feed's cursor is saved first, so nothing recorded while the retired feed
        // is caught up is skipped.
        let Some(mut cursor) = self.start_cursor(&stop).await else {
            return;
        };
        self.routed_through.store(cursor, Ordering::Release);
        if let Some((retired, through)) = &self.retired {
            self.catch_up(retired.as_ref(), *through, &stop).await;
        }
        let feed = self.feed.name();
        while !stop.is_cancelled() {
            let entries = match self.feed.after(cursor, FEED_BATCH).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(cause = %e, "routing cannot read recorded events; retrying");
                    pause(&stop, ERROR_PAUSE).await;
                    continue;
                }
            };
            let Some(last) = entries.last().map(|e| e.seq) else {
                tokio::select! {
                    () = self.recorded.notified() => {}
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            };
            if self.enqueue(feed, &entries, last, &stop).await {
                cursor = last;
                self.routed_through.store(cursor, Ordering::Release);
            }
        }
    }

    /// Routes what `retired` holds past its saved cursor up to `through`, then retires it. A
    /// feed with no saved cursor was never routed from, so there is nothing to catch up.
    async fn catch_up(&self, retired: &dyn EventFeed, through: i64, stop: &CancellationToken) {
        let feed = retired.name();
        while !stop.is_cancelled() {
            let cursor = match self.outbox.cursor(feed).await {
                Ok(None | Some(RETIRED)) => return,
                Ok(Some(c)) => c,
                Err(e) => {
                    tracing::warn!(cause = %e, "routing cannot read its cursor; retrying");
                    pause(stop, ERROR_PAUSE).await;
                    continue;
                }
            };
            let entries = match retired.after(cursor, FEED_BATCH).await {
                Ok(mut e) => {
                    e.retain(|e| e.seq <= through);
                    e
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "routing cannot read recorded events; retrying");
                    pause(stop, ERROR_PAUSE).await;
                    continue;
                }
            };
            let last = entries.last().map_or(RETIRED, |e| e.seq);
            if self.enqueue(feed, &entries, last, stop).await && last == RETIRED {
                tracing::info!(
                    feed,
                    "routing caught up with the feed it read before; retired it"
                );
                return;
            }
        }
    }

    /// Enqueues the deliveries `entries` make and saves `cursor` for `feed`, in one step;
    /// false (after a pause) when that failed.
    async fn enqueue(
        &self,
        feed: &str,
        entries: &[FeedEntry],
        cursor: i64,
        stop: &CancellationToken,
    ) -> bool {
        let mut deliveries = Vec::new();
        let mut touched = vec![false; self.routes.len()];
        for entry in entries {
            for (i, route) in self.routes.iter().enumerate() {
                if route.rule.matcher.matches(&entry.event.event) {
                    touched[i] = true;
                    deliveries.push(Delivery {
                        route: route.name().to_owned(),
                        lane: partition(entry.event.event.user_id(), route.policy.lanes),
                        event: entry.event.clone(),
                    });
                }
            }
        }
        if let Err(e) = self.outbox.enqueue(feed, &deliveries, cursor).await {
            tracing::warn!(cause = %e, "enqueueing deliveries failed; retrying");
            pause(stop, ERROR_PAUSE).await;
            return false;
        }
        for (route, touched) in self.routes.iter().zip(touched) {
            if touched {
                route.wake.notify_waiters();
            }
        }
        true
    }

    /// Delivers one lane of `route` in order, a batch of due items at a time, until `stop`.
    async fn deliver_lane(self: Arc<Self>, route: Arc<Route>, lane: u32, stop: CancellationToken) {
        let labels = RouteLabels {
            route: route.name().to_owned(),
        };
        let lane = Lane {
            route,
            index: lane,
            labels,
        };
        while !stop.is_cancelled() {
            let Some(due) = self.next_due(&lane, &stop).await else {
                continue;
            };
            let events: Vec<_> = due.iter().map(|i| i.event.clone()).collect();
            match lane.route.target.deliver(&events).await {
                Ok(()) => self.delivered(&lane, &due, &events).await,
                Err(e) => self.failed(&lane, &due, &e, &stop).await,
            }
        }
    }

    /// The lane's items due now, from its head; `None` after waiting (for work, for the
    /// head's backoff, or after a read error), when the caller should look again.
    async fn next_due(&self, lane: &Lane, stop: &CancellationToken) -> Option<Vec<OutboxItem>> {
        let route = &lane.route;
        let items = match self
            .outbox
            .head(lane.name(), lane.index, route.policy.batch_size)
            .await
        {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(route = %lane.name(), cause = %e, "reading the outbox failed");
                pause(stop, ERROR_PAUSE).await;
                return None;
            }
        };
        let now = self.clock.now();
        let Some(first) = items.first() else {
            tokio::select! {
                () = route.wake.notified() => {}
                () = stop.cancelled() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            return None;
        };
        if first.next_at > now {
            // The lane's head is waiting out its backoff: nothing behind it may overtake.
            let wait = (first.next_at - now).to_std().unwrap_or_default();
            pause(stop, wait).await;
            return None;
        }
        Some(items.into_iter().take_while(|i| i.next_at <= now).collect())
    }

    /// After the target took `due`: out of the outbox, counted, and timed.
    async fn delivered(&self, lane: &Lane, due: &[OutboxItem], events: &[StoredEvent]) {
        let done = self.clock.now();
        let ids: Vec<i64> = due.iter().map(|i| i.id).collect();
        if let Err(e) = self.outbox.delivered(&ids).await {
            // Delivered again later: at least once.
            tracing::warn!(route = %lane.name(), cause = %e, "marking deliveries done failed");
        }
        let status = &lane.route.status;
        status
            .delivered
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        status.failing.store(false, Ordering::Relaxed);
        *lock(&status.last_delivered_at) = Some(done);
        self.metrics
            .route_delivered
            .get_or_create(&lane.labels)
            .inc_by(ids.len() as u64);
        let latency = self.metrics.route_latency.get_or_create(&lane.labels);
        for e in events {
            latency.observe((done - e.received_at).num_milliseconds().max(0) as f64 / 1000.0);
        }
    }

    /// After the target failed `due`: what failed for good or too often becomes a dead
    /// letter, the rest is retried after a backoff.
    async fn failed(
        &self,
        lane: &Lane,
        due: &[OutboxItem],
        e: &DeliveryError,
        stop: &CancellationToken,
    ) {
        let route = &lane.route;
        route.status.failed_attempts.fetch_add(1, Ordering::Relaxed);
        route.status.failing.store(true, Ordering::Relaxed);
        *lock(&route.status.last_error) = Some((e.message.clone(), self.clock.now()));
        self.metrics
            .route_failures
            .get_or_create(&lane.labels)
            .inc();
        let (dead, retry): (Vec<&OutboxItem>, Vec<&OutboxItem>) = due
            .iter()
            .partition(|i| !e.retryable || i.attempts + 1 >= route.policy.max_attempts);
        tracing::warn!(route = %lane.name(), lane = lane.index, cause = %e.message,
            events = due.len(), dead_lettered = dead.len(), "delivery failed");
        if !dead.is_empty() {
            self.dead_letter(lane, &dead, &e.message).await;
        }
        if !retry.is_empty() {
            self.retry_later(lane, &retry, &e.message, stop).await;
        }
    }

    async fn dead_letter(&self, lane: &Lane, dead: &[&OutboxItem], error: &str) {
        let ids: Vec<i64> = dead.iter().map(|i| i.id).collect();
        match self.outbox.dead_letter(&ids, error).await {
            Ok(()) => {
                lane.route
                    .status
                    .dead_lettered
                    .fetch_add(ids.len() as u64, Ordering::Relaxed);
                self.metrics
                    .route_dead_lettered
                    .get_or_create(&lane.labels)
                    .inc_by(ids.len() as u64);
            }
            Err(err) => {
                tracing::warn!(route = %lane.name(), cause = %err, "dead-lettering failed")
            }
        }
    }

    /// Schedules `retry` (non-empty, head first) after the head's backoff; when that cannot
    /// be saved, waits the backoff here instead.
    async fn retry_later(
        &self,
        lane: &Lane,
        retry: &[&OutboxItem],
        error: &str,
        stop: &CancellationToken,
    ) {
        let ids: Vec<i64> = retry.iter().map(|i| i.id).collect();
        let delay = backoff(&lane.route.policy, retry[0].attempts);
        let next = self.clock.now() + chrono::Duration::from_std(delay).unwrap_or_default();
        if let Err(err) = self.outbox.retry_later(&ids, next, error).await {
            tracing::warn!(route = %lane.name(), cause = %err, "scheduling a retry failed");
            pause(stop, delay).await;
        }
    }

    async fn report_backlog(self: Arc<Self>, stop: CancellationToken) {
        while !stop.is_cancelled() {
            for route in &self.routes {
                if let Ok(b) = self.outbox.backlog(route.name()).await {
                    let labels = RouteLabels {
                        route: route.name().to_owned(),
                    };
                    self.metrics
                        .route_backlog
                        .get_or_create(&labels)
                        .set(b.pending as i64);
                    self.metrics
                        .route_dead_letters
                        .get_or_create(&labels)
                        .set(b.dead as i64);
                }
            }
            pause(&stop, Duration::from_secs(1)).await;
        }
    }
}

/// Capped exponential backoff with jitter (down to half), for the attempt after `attempts`.
pub fn backoff(policy: &RoutePolicy, attempts: u32) -> Duration {
    let exp = policy
        .backoff_min
        .saturating_mul(1u32.checked_shl(attempts.min(30)).unwrap_or(u32::MAX));
    let capped = exp.min(policy.backoff_max);
    capped.mul_f64(1.0 - rand::random::<f64>() * 0.5)
}

async fn pause(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

mod admin;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod failure_tests;
