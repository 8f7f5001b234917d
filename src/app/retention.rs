//! Retention: every `every`, events older than `keep` are deleted from the event store, a step
//! at a time with a pause between steps, so ingest never waits behind a large delete.

use crate::app::metrics::Metrics;
use crate::ports::{Clock, Expiry, Retention};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long events are kept and how the deleting is paced.
#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    /// Events whose `timestamp` is older than this are deleted.
    pub keep: Duration,
    /// An event received within this is kept even when older than `keep`: dedup still
    /// answers for it, so it stays listed and known.
    pub dedup_window: Duration,
    /// Time between rounds.
    pub every: Duration,
    /// Time between the steps of one round.
    pub pause: Duration,
}

impl RetentionPolicy {
    /// `keep` and `dedup_window` from the settings; 10 ms between steps (time enough for an
    /// insert waiting on the connection to take it); a round a minute, or every tenth of `keep`
    /// when that is shorter, at most one a second (a short retention, as in a test, is kept to
    /// within a tenth).
    pub fn new(keep: Duration, dedup_window: Duration) -> Self {
        Self {
            keep,
            dedup_window,
            every: (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            pause: Duration::from_millis(10),
        }
    }

    /// What a round started at `now` deletes.
    pub fn expiry(&self, now: chrono::DateTime<chrono::Utc>) -> Expiry {
        let ago =
            |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX / 2);
        Expiry {
            occurred_before: ago(self.keep),
            received_before: ago(self.dedup_window),
        }
    }
}

/// The store retention deletes from, and where what it deletes is counted.
pub struct Counted {
    pub store: Arc<dyn Retention>,
    /// The store's name in the metrics' `store` label (`embedded`, `clickhouse`).
    pub kind: &'static str,
    pub metrics: Arc<Metrics>,
}

impl Counted {
    pub fn new(store: Arc<dyn Retention>, kind: &'static str, metrics: &Arc<Metrics>) -> Self {
        Self {
            store,
            kind,
            metrics: Arc::clone(metrics),
        }
    }
}

/// Runs rounds until `stop`; a failed step ends its round (logged) and the next round tries
/// again.
pub async fn run(
    store: Counted,
    clock: Arc<dyn Clock>,
    policy: RetentionPolicy,
    stop: CancellationToken,
) {
    store.metrics.retention_started(store.kind);
    loop {
        if round(&store, policy.expiry(clock.now()), policy.pause, &stop).await {
            tracing::debug!("retention: round done");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(policy.every) => {}
        }
    }
}

/// Steps until nothing is left, pausing between steps; whether it got there.
async fn round(store: &Counted, expiry: Expiry, pause: Duration, stop: &CancellationToken) -> bool {
    loop {
        match store.store.expire_step(expiry).await {
            Ok(step) => {
                store.metrics.retention_step(store.kind, &step);
                if !step.more {
                    return true;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention: deleting old events failed; trying again next round");
                return false;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::test_wait::wait_for;
    use crate::ports::{ExpireStep, MockRetention, PortError, TokioClock};
    use std::sync::Mutex;

    #[tokio::test(start_paused = true)]
    async fn rounds_step_until_done_pausing_between_steps_and_expire_by_the_clock() {
        let clock = TokioClock::start();
        let start = clock.now();
        let policy = RetentionPolicy {
            every: Duration::from_secs(1),
            ..RetentionPolicy::new(
                Duration::from_secs(30 * 86_400),
                Duration::from_secs(86_400),
            )
        };
        let seen: Arc<Mutex<Vec<(Expiry, tokio::time::Instant)>>> = Arc::default();
        let mut store = MockRetention::new();
        let log = Arc::clone(&seen);
        store.expect_expire_step().returning(move |expiry| {
            let mut log = log.lock().unwrap();
            log.push((expiry, tokio::time::Instant::now()));
            // Round one: three steps; round two: a failure; round three: one step.
            let deleted = |more, events| ExpireStep {
                more,
                events,
                mutations: 1,
                ..ExpireStep::default()
            };
            match log.len() {
                1 | 2 => Ok(deleted(true, 2_000)),
                4 => Err(PortError::Unavailable("disk".into())),
                _ => Ok(deleted(false, 5)),
            }
        });
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let counted = Counted::new(Arc::new(store), "embedded", &metrics);
        let task = tokio::spawn(run(counted, Arc::new(clock), policy, stop.clone()));
        wait_for("three rounds", || seen.lock().unwrap().len() >= 5).await;
        stop.cancel();
        task.await.unwrap();

        let seen = seen.lock().unwrap();
        let day = chrono::Duration::days(1);
        assert_eq!(seen[0].0.occurred_before, start - day * 30);
        assert_eq!(seen[0].0.received_before, start - day);
        assert_eq!(seen[1].1 - seen[0].1, policy.pause, "a pause between steps");
        assert_eq!(seen[2].0, seen[0].0, "one cutoff per round");
        assert_eq!(seen[3].1 - seen[2].1, policy.every, "then the next round");
        let moved = chrono::Duration::from_std(seen[3].1 - seen[0].1).unwrap();
        assert_eq!(seen[3].0.occurred_before, start - day * 30 + moved);
        assert_eq!(
            seen[4].1 - seen[3].1,
            policy.every,
            "a failure ends its round"
        );
        let n = seen.len() as u64;
        // Every step but the failed one counted: 2,000 + 2,000 + 5, then 5 a round.
        let labels = crate::app::metrics::StoreLabels {
            store: "embedded".into(),
        };
        assert_eq!(
            metrics
                .retention_deleted_events
                .get_or_create(&labels)
                .get(),
            4_000 + 5 * (n - 3)
        );
        assert_eq!(
            metrics.retention_mutations.get_or_create(&labels).get(),
            n - 1
        );
        assert_eq!(
            metrics
                .retention_dropped_partitions
                .get_or_create(&labels)
                .get(),
            0
        );
    }
}
