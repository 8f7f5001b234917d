//! The data dir's disk as a state of its own: its free space (sampled, exported as metrics,
//! warned about below a threshold) and whether local writes fail for lack of space (which
//! makes the server not ready until writes succeed again or space is freed).
//!
//! Local writes report here: [`DiskState::write_failed`] on a full-disk error,
//! [`DiskState::write_succeeded`] otherwise. Each change of state is logged once, not per
//! write.

pub mod watch;

use crate::ports::{DiskSpace, Space};
use prometheus_client::metrics::gauge::Gauge;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the free space is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Free space past the level at which writes failed that counts as freed: 1% of the file
/// system, at least 1 MiB and at most 64 MiB.
fn margin(total: u64) -> u64 {
    (total / 100).clamp(1 << 20, 64 << 20)
}

/// A change worth one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Free space fell below the warning threshold.
    Low(Space),
    /// Free space is back at or above the warning threshold.
    NoLongerLow(Space),
    /// A write failed for lack of space; the server is not ready.
    Full(String),
    /// A write succeeded again.
    WritesSucceed,
    /// Space was freed since writes failed.
    SpaceFreed(Space),
}

/// Why the disk is full, and the free space then (to tell when space is freed).
#[derive(Debug, Clone)]
struct Full {
    cause: String,
    free_then: Option<u64>,
}

/// The crossing logic, free of I/O and logging.
#[derive(Debug)]
pub struct Machine {
    warn_free_percent: u8,
    low: bool,
    full: Option<Full>,
    last: Option<Space>,
}

impl Machine {
    pub fn new(warn_free_percent: u8) -> Self {
        Self {
            warn_free_percent,
            low: false,
            full: None,
            last: None,
        }
    }

    /// A fresh sample of the free space.
    pub fn sampled(&mut self, space: Space) -> Vec<Change> {
        self.last = Some(space);
        let mut changes = Vec::new();
        // free / total < percent / 100, in integers.
        let low = u128::from(space.free) * 100
            < u128::from(space.total) * u128::from(self.warn_free_percent);
        if low != self.low {
            self.low = low;
            changes.push(if low {
                Change::Low(space)
            } else {
                Change::NoLongerLow(space)
            });
        }
        if let Some(full) = &self.full {
            let freed = full
                .free_then
                .is_some_and(|then| space.free >= then.saturating_add(margin(space.total)));
            if freed {
                self.full = None;
                changes.push(Change::SpaceFreed(space));
            }
        }
        changes
    }

    /// A local write failed for lack of space; `free_now` is the free space, if known.
    pub fn write_failed(&mut self, cause: &str, free_now: Option<u64>) -> Option<Change> {
        if self.full.is_some() {
            return None;
        }
        self.full = Some(Full {
            cause: cause.to_owned(),
            free_then: free_now,
        });
        Some(Change::Full(cause.to_owned()))
    }

    /// A local write succeeded.
    pub fn write_succeeded(&mut self) -> Option<Change> {
        self.full.take().map(|_| Change::WritesSucceed)
    }

    /// Why writes fail, while they do.
    pub fn full_cause(&self) -> Option<&str> {
        self.full.as_ref().map(|f| f.cause.as_str())
    }

    pub fn is_low(&self) -> bool {
        self.low
    }

    pub fn last(&self) -> Option<Space> {
        self.last
    }
}

/// What `GET /ready` says about the disk.
#[derive(Debug, Clone)]
pub struct DiskReport {
    pub data_dir: PathBuf,
    /// Why writes fail for lack of space, while they do.
    pub full: Option<String>,
    /// Free space is below the warning threshold.
    pub low: bool,
    pub space: Option<Space>,
}

/// The gauges the samples set.
#[derive(Clone, Default)]
pub struct DiskGauges {
    pub free_bytes: Gauge,
    pub total_bytes: Gauge,
    pub full: Gauge,
}

/// The shared disk state of one application.
pub struct DiskState {
    data_dir: PathBuf,
    probe: Box<dyn DiskSpace>,
    gauges: DiskGauges,
    machine: Mutex<Machine>,
    /// Mirrors `machine.full` so a successful write costs no lock.
    full: AtomicBool,
}

impl DiskState {
    pub fn new(
        data_dir: PathBuf,
        probe: Box<dyn DiskSpace>,
        warn_free_percent: u8,
        gauges: DiskGauges,
    ) -> Self {
        Self {
            data_dir,
            probe,
            gauges,
            machine: Mutex::new(Machine::new(warn_free_percent)),
            full: AtomicBool::new(false),
        }
    }

    fn machine(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Samples the free space: sets the gauges, logs a crossing of the warning threshold, and
    /// clears a full disk once space is freed.
    pub fn sample(&self) {
        let space = match self.probe.space() {
            Ok(space) => space,
            Err(e) => {
                tracing::debug!(dir = %self.data_dir.display(), cause = %e, "cannot sample the data dir's free space");
                return;
            }
        };
        self.gauges
            .free_bytes
            .set(i64::try_from(space.free).unwrap_or(i64::MAX));
        self.gauges
            .total_bytes
            .set(i64::try_from(space.total).unwrap_or(i64::MAX));
        let changes = {
            let mut machine = self.machine();
            let changes = machine.sampled(space);
            self.set_full(machine.full_cause().is_some());
            changes
        };
        for change in changes {
            self.log(&change);
        }
    }

    /// A local write failed for lack of space (logged once until writes succeed again).
    pub fn write_failed(&self, cause: &str) {
        let free_now = self.probe.space().ok().map(|s| s.free);
        let change = {
            let mut machine = self.machine();
            let change = machine.write_failed(cause, free_now);
            self.set_full(true);
            change
        };
        if let Some(change) = change {
            self.log(&change);
        }
    }

    /// A local write succeeded.
    pub fn write_succeeded(&self) {
        if !self.full.load(Ordering::Acquire) {
            return;
        }
        let change = {
            let mut machine = self.machine();
            let change = machine.write_succeeded();
            self.set_full(false);
            change
        };
        if let Some(change) = change {
            self.log(&change);
        }
    }

    /// The disk's state now; while writes fail, the free space is sampled first, so freed
    /// space shows without waiting for the next sample.
    pub fn report(&self) -> DiskReport {
        if self.full.load(Ordering::Acquire) {
            self.sample();
        }
        let machine = self.machine();
        DiskReport {
            data_dir: self.data_dir.clone(),
            full: machine.full_cause().map(str::to_owned),
            low: machine.is_low(),
            space: machine.last(),
        }
    }

    fn log(&self, change: &Change) {
        let dir = self.data_dir.display();
        match change {
            Change::Low(s) => tracing::warn!(
                dir = %dir, free_bytes = s.free, total_bytes = s.total,
                "the data dir's disk is low on space: free space fell below \
                 CARTSTREAM_DISK_WARN_FREE_PERCENT; free some before writes fail"
            ),
            Change::NoLongerLow(s) => tracing::info!(
                dir = %dir, free_bytes = s.free, total_bytes = s.total,
                "the data dir's disk has enough free space again"
            ),
            Change::Full(cause) => tracing::error!(
                dir = %dir, cause = %cause,
                "the data dir's disk is full: writes fail, new events are answered \
                 unavailable and GET /ready answers 503 until space is freed"
            ),
            Change::WritesSucceed => {
                tracing::info!(dir = %dir, "a write succeeded: the data dir's disk takes writes again");
            }
            Change::SpaceFreed(s) => tracing::info!(
                dir = %dir, free_bytes = s.free,
                "space was freed on the data dir's disk: ready again"
            ),
        }
    }

    /// Called with the machine locked, so the flag follows it.
    fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::Release);
        self.gauges.full.set(i64::from(full));
    }

    /// Samples every [`SAMPLE_INTERVAL`] until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {
                    let me = Arc::clone(&self);
                    // statvfs may block on a sick file system: off the async workers.
                    let _ = tokio::task::spawn_blocking(move || me.sample()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
