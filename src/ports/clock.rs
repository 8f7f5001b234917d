use chrono::{DateTime, Utc};

/// The server's clock, the one source of the time of day: validation bounds and `receivedAt`,
/// the embedded store's holds and dedup window, when a route's delivery is due and its retry,
/// dead letters' `failedAt`, the journal's age, webhook signatures. Startup makes one and
/// hands it to each of them. Waiting (sleeps, intervals, timeouts, backoff) is tokio's time,
/// so a test can pause it.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A test clock that moves with tokio's clock: the wall time when it was made, plus however
/// far tokio's time has moved since. Under `tokio::time::pause()` it stands still until a
/// test calls `tokio::time::advance` or the runtime skips ahead to the next timer, so what
/// the code under test reads from the clock and what it waits for with tokio's timers agree.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: DateTime<Utc>,
    start: tokio::time::Instant,
}

#[cfg(test)]
impl TokioClock {
    /// Reads the wall clock once; from then on, follows tokio's time.
    pub fn start() -> Self {
        Self {
            wall: Utc::now(),
            start: tokio::time::Instant::now(),
        }
    }
}

#[cfg(test)]
impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let moved = tokio::time::Instant::now().duration_since(self.start);
        self.wall + chrono::Duration::from_std(moved).unwrap_or_default()
    }
}
