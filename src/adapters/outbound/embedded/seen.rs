//! Which event ids the `events` table may hold, in memory, so that a claim looks up in SQLite
//! only the ids that may be duplicates. Almost every id a client sends is new, and looking each
//! one up (a random B-tree descent on the event id index, on a connection whose page cache the
//! forwarder's commits keep emptying) cost about a third of the embedded server's CPU per
//! event (BENCHMARKS.md, "2026-12-07 09:08").
//!
//! Two Bloom filters of a fixed size, a generation each: an id is added to the current one and
//! looked for in both. Every `period` (the dedup window) the current one becomes the previous
//! one and the old previous one is dropped, so an id stays for at least a period after it was
//! added, and memory stays fixed however long the server runs. A filter never misses an id it
//! holds; when it holds far more ids than it was sized for, it answers "maybe" more often and
//! the store looks up more ids, as it did for every id before.

use super::{lock, Inner};
use crate::adapters::outbound::sqlite::{db_err, open_queue_conn};
use crate::ports::PortError;
use fastbloom::BloomFilter;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

/// Bits of each generation's filter: 8 MiB each, 16 MiB in all. About 0.2 % false positives
/// with 5 million ids in a generation, 4 % with 10 million, and "maybe" for most ids from about
/// 30 million (a dedup window in which the store takes over 350 events a second on average).
const BITS: usize = 1 << 26;
/// Hashes per id: the best for about 8 million ids in [`BITS`].
const HASHES: u32 = 6;

pub(super) struct SeenIds {
    current: BloomFilter,
    previous: BloomFilter,
    /// When `current` started, Unix milliseconds.
    since: i64,
    /// How long a generation lasts, milliseconds: at least the dedup window.
    period: i64,
    /// Whether every id the table held when the store opened has been added: until then
    /// every id may be there.
    complete: bool,
}

impl SeenIds {
    pub(super) fn new(now: i64, period: i64) -> Self {
        Self::with_bits(BITS, now, period)
    }

    fn with_bits(bits: usize, now: i64, period: i64) -> Self {
        let filter = || BloomFilter::with_num_bits(bits).hashes(HASHES);
        Self {
            current: filter(),
            previous: filter(),
            since: now,
            period: period.max(1),
            complete: false,
        }
    }

    /// Remembers `id` for at least a period from `now`.
    pub(super) fn insert(&mut self, id: &str, now: i64) {
        self.turn(now);
        self.current.insert(id);
    }

    /// Whether `id` may be in the table: `false` only for an id never added, or added more
    /// than a period ago, once the ids from before the store opened are all in.
    pub(super) fn may_hold(&mut self, id: &str, now: i64) -> bool {
        if !self.complete {
            return true;
        }
        self.turn(now);
        self.current.contains(id) || self.previous.contains(id)
    }

    /// Every id the table held when the store opened is in.
    pub(super) fn completed(&mut self) {
        self.complete = true;
    }

    #[cfg(test)]
    pub(super) fn is_complete(&self) -> bool {
        self.complete
    }

    /// Starts a new generation when the current one is a period old. An id added at `t` is in
    /// `current` until the first turn after `t`, then in `previous` until the next one, at
    /// least a period later. Every add turns first, so the ids in `current` were all added
    /// within a period of `since`: two periods after it, both generations are done with.
    fn turn(&mut self, now: i64) {
        let age = now.saturating_sub(self.since);
        if age >= self.period {
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
            if age >= self.period.saturating_mul(2) {
                self.previous.clear();
            }
            self.since = now;
        }
    }
}

/// Ids the scan adds under one hold of the claims lock.
pub(super) const SCAN_CHUNK: usize = 10_000;

/// Adds every id the table holds to the store's filter, on a thread of its own, then marks the
/// filter complete: until then claims look every id up, as they did before the filter. Rows
/// the scan's snapshot misses were inserted after it began, and inserts add their ids
/// themselves. The thread stops early when the store is dropped.
pub(super) fn spawn_scan(inner: &Arc<Inner>, path: PathBuf) {
    let weak = Arc::downgrade(inner);
    let spawned = std::thread::Builder::new()
        .name("cartstream-seen-ids".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            match scan(&weak, &path) {
                Ok(Some(n)) => tracing::info!(
                    ids = n,
                    ms = started.elapsed().as_millis(),
                    "embedded dedup: the table's ids are in its filter; new ids are no longer \
                     looked up"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    cause = %e,
                    "embedded dedup: reading the table's ids failed; every claim looks its ids up"
                ),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(cause = %e, "embedded dedup: no thread to read the table's ids");
    }
}

/// How many ids it added; `None` when the store went away first.
fn scan(weak: &Weak<Inner>, path: &std::path::Path) -> Result<Option<usize>, PortError> {
    // One pass over the id index, in order: a small page cache is enough.
    let conn = open_queue_conn(path)?;
    let mut stmt = conn
        .prepare("SELECT event_id FROM events")
        .map_err(db_err)?;
    let mut rows = stmt.query([]).map_err(db_err)?;
    let (mut chunk, mut total) = (Vec::with_capacity(SCAN_CHUNK), 0);
    loop {
        let row = rows.next().map_err(db_err)?;
        if let Some(row) = row {
            chunk.push(row.get::<_, String>(0).map_err(db_err)?);
        }
        if chunk.len() == SCAN_CHUNK || row.is_none() {
            let Some(inner) = weak.upgrade() else {
                return Ok(None);
            };
            let now = inner.now_ms();
            let mut claims = lock(&inner.claims);
            let Some(seen) = &mut claims.seen else {
                return Ok(None);
            };
            total += chunk.len();
            for id in chunk.drain(..) {
                seen.insert(&id, now);
            }
            if row.is_none() {
                seen.completed();
                return Ok(Some(total));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_the_old_ids_are_in_every_id_may_be_held() {
        let mut seen = SeenIds::with_bits(1 << 12, 0, 1_000);
        assert!(seen.may_hold("never-added", 0));
        seen.completed();
        assert!(!seen.may_hold("never-added", 0));
    }

    #[test]
    fn an_id_is_held_for_at_least_a_period_and_then_forgotten() {
        for added_at in [0, 1, 500, 999] {
            let mut seen = SeenIds::with_bits(1 << 12, 0, 1_000);
            seen.completed();
            seen.insert("e1", added_at);
            // Asked often (each ask may turn the generation) and then once after a long gap.
            for now in (added_at..added_at + 1_000).step_by(7) {
                assert!(
                    seen.may_hold("e1", now),
                    "added at {added_at}, asked at {now}"
                );
            }
            assert!(seen.may_hold("e1", added_at + 999));
            assert!(
                !seen.may_hold("e1", added_at + 2_000),
                "added at {added_at}"
            );
        }
    }

    #[test]
    fn a_long_quiet_spell_keeps_the_last_generation() {
        let mut seen = SeenIds::with_bits(1 << 12, 0, 1_000);
        seen.completed();
        seen.insert("e1", 10);
        // Nothing happens for many periods: `e1`, added long ago, is forgotten at the next
        // turn; an id added now is kept.
        seen.insert("e2", 50_000);
        assert!(seen.may_hold("e2", 50_999));
        assert!(!seen.may_hold("e1", 52_000));
    }

    #[test]
    fn many_ids_stay_found() {
        let mut seen = SeenIds::with_bits(1 << 16, 0, 1_000);
        seen.completed();
        let ids: Vec<String> = (0..20_000).map(|i| format!("id-{i}")).collect();
        for id in &ids {
            seen.insert(id, 5);
        }
        // Far more ids than the filter was sized for: it may say "maybe" to strangers, but
        // never "no" to an id it holds.
        assert!(ids.iter().all(|id| seen.may_hold(id, 6)));
    }
}
