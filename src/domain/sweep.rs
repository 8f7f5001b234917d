//! When to sweep a map of entries that end (held claims, remembered ids, rate-limit buckets of
//! idle clients): once it has grown past a mark, which each sweep resets to twice what it left,
//! and never below a floor.
//!
//! A fixed threshold is not enough. When every entry is still live (a million events waiting
//! in the journal, ten thousand clients all active), a sweep removes nothing, the map stays
//! over the threshold, and every later call walks all of it again: the cost per call grows
//! with the map. With the mark doubling, a map is walked once each time it doubles, so the
//! cost per insert stays constant; what has ended is gone by the time the map is twice its
//! live size.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct SweepMark {
    /// The size past which the next sweep is due; 0 until the first sweep.
    at: AtomicUsize,
    floor: usize,
}

impl SweepMark {
    /// No sweep until the map holds more than `floor` entries.
    #[must_use]
    pub const fn new(floor: usize) -> Self {
        Self {
            at: AtomicUsize::new(0),
            floor,
        }
    }

    /// Whether a map of `len` entries is due a sweep.
    #[must_use]
    pub fn due(&self, len: usize) -> bool {
        len > self.at.load(Ordering::Relaxed).max(self.floor)
    }

    /// A sweep left `len` entries.
    pub fn swept(&self, len: usize) {
        self.at
            .store(len.saturating_mul(2).max(self.floor), Ordering::Relaxed);
    }

    /// Runs `sweep` (which returns how many entries it left) when a map of `len` entries is
    /// due one.
    pub fn sweep_if_due(&self, len: usize, sweep: impl FnOnce() -> usize) {
        if self.due(len) {
            self.swept(sweep());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inserts 100 entries, every fifth already ended, sweeping whenever due: returns how many
    /// sweeps there were, how many entries they looked at, and how many ended entries are left.
    fn run(mark: &SweepMark) -> (usize, usize, usize) {
        let mut live: Vec<bool> = Vec::new();
        let (mut sweeps, mut looked_at) = (0, 0);
        for i in 0..100 {
            live.push(i % 5 != 0);
            if mark.due(live.len()) {
                sweeps += 1;
                looked_at += live.len();
                live.retain(|l| *l);
                mark.swept(live.len());
            }
        }
        (sweeps, looked_at, live.iter().filter(|l| !**l).count())
    }

    #[test]
    fn a_map_of_live_entries_is_swept_once_a_doubling() {
        let (sweeps, looked_at, ended) = run(&SweepMark::new(8));
        // At 9 entries, then each time the map has doubled since: a handful, not 91.
        assert!(sweeps <= 6, "{sweeps} sweeps");
        assert!(looked_at < 3 * 100, "{looked_at} entries looked at");
        // What has ended is swept with the rest, at worst a doubling late.
        assert!(ended < 20, "{ended} ended entries left");
    }

    #[test]
    fn nothing_is_swept_up_to_the_floor() {
        let mark = SweepMark::new(100);
        assert!(!mark.due(100));
        assert!(mark.due(101));
        // A sweep that leaves little brings the mark back to the floor, not below.
        mark.swept(3);
        assert!(!mark.due(100));
    }
}
