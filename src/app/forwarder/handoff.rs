//! Recorded groups handed from the journal's append to the forwarder in memory. While the
//! forwarder keeps up, it inserts these events as they were recorded instead of reading back
//! what was just written (the checksum, LZ4, postcard and rebuilding every event: about 3,700
//! instructions an event). The journal stays the record: a group is handed over only once its
//! append returned, keyed by the seq its first event got there, and the forwarder marks
//! progress by those seqs as it does for what it reads. What is not here (after a restart, a
//! group that did not fit, the retry of a failed insert) is read from the journal as before.

use crate::domain::StoredEvent;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Groups the journal recorded, by the seq of their first event, until the forwarder takes
/// them. Bounded: a group that would pass the bounds is not kept.
pub struct Handoff {
    state: Mutex<State>,
    max_events: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    groups: BTreeMap<i64, Group>,
    events: usize,
    bytes: usize,
}

struct Group {
    events: Vec<StoredEvent>,
    /// The sum of the events' [`size`]s.
    bytes: usize,
}

impl State {
    fn insert(&mut self, first: i64, group: Group) {
        self.events += group.events.len();
        self.bytes += group.bytes;
        self.groups.insert(first, group);
    }

    fn remove(&mut self, first: i64) -> Option<Group> {
        let group = self.groups.remove(&first)?;
        self.events -= group.events.len();
        self.bytes -= group.bytes;
        Some(group)
    }
}

/// About what an event takes in the journal's encoding, which the forwarder's `max_bytes`
/// counts: its text and a few bytes of lengths and instants.
fn size(e: &StoredEvent) -> usize {
    let ev = &e.event;
    24 + ev.event_id().as_str().len()
        + ev.user_id().len()
        + ev.session_id().map_or(0, str::len)
        + ev.event_type().as_str().len()
        + e.source.as_str().len()
        + ev.metadata().as_json().len()
}

impl Handoff {
    /// Holds at most `max_events` events and about `max_bytes` of them.
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::default(),
            max_events,
            max_bytes,
        }
    }

    // A panic while the lock is held leaves the totals at worst off by one group: they only
    // bound memory, and every group is checked against its seqs when taken.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands over a group the journal recorded with its first event at seq `first_seq` and the
    /// others after it. Not kept when it would pass the bounds (the forwarder is behind).
    pub fn put(&self, first_seq: i64, events: Vec<StoredEvent>) {
        if events.is_empty() {
            return;
        }
        let bytes: usize = events.iter().map(size).sum();
        let mut state = self.state();
        if state.events + events.len() > self.max_events || state.bytes + bytes > self.max_bytes {
            return;
        }
        state.insert(first_seq, Group { events, bytes });
    }

    /// The events with seqs `after + 1`, `after + 2`, … in order, as far as they were handed
    /// over without a gap, at most `max_events` and about `max_bytes` (at least one), with
    /// the seq of the last; `None` when event `after + 1` was not handed over. Events up to
    /// `after` are dropped: they were forwarded from the journal.
    pub fn take(
        &self,
        after: i64,
        max_events: usize,
        max_bytes: usize,
    ) -> Option<(Vec<StoredEvent>, i64)> {
        let mut state = self.state();
        let mut out: Vec<StoredEvent> = Vec::new();
        let mut bytes = 0usize;
        let mut next = after + 1;
        while out.len() < max_events {
            let Some((&first, group)) = state.groups.first_key_value() else {
                break;
            };
            if first > next {
                break; // a gap: what follows is read from the journal
            }
            let end = first + group.events.len() as i64; // one past its last seq
            let Some(Group {
                events: mut group,
                bytes: group_bytes,
            }) = state.remove(first)
            else {
                break;
            };
            if end <= next {
                continue; // forwarded from the journal already
            }
            let whole = first == next
                && out.len() + group.len() <= max_events
                && bytes + group_bytes <= max_bytes;
            let take = if whole {
                bytes += group_bytes;
                group.len()
            } else {
                // What was forwarded from the journal goes; the rest starts at `next`.
                group.drain(..(next - first) as usize);
                let mut take = 0;
                for e in &group {
                    let s = size(e);
                    let first_of_all = out.is_empty() && take == 0;
                    if out.len() + take >= max_events || (!first_of_all && bytes + s > max_bytes) {
                        break;
                    }
                    bytes += s;
                    take += 1;
                }
                if take < group.len() {
                    let rest = group.split_off(take);
                    let rest_bytes = rest.iter().map(size).sum();
                    state.insert(
                        next + take as i64,
                        Group {
                            events: rest,
                            bytes: rest_bytes,
                        },
                    );
                }
                take
            };
            if take == 0 {
                break;
            }
            if out.is_empty() {
                out = group;
            } else {
                // Room for all that may still come, once: appending group after group to a
                // vector grown by doubling moved each event again at every growth.
                let wanted = max_events.min(out.len() + take + state.events);
                out.reserve(wanted.saturating_sub(out.len()));
                out.append(&mut group);
            }
            next += take as i64;
        }
        (!out.is_empty()).then(|| (out, next - 1))
    }

    /// How many events are held now.
    pub fn events_held(&self) -> usize {
        self.state().events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures;

    fn group(prefix: &str, n: usize) -> Vec<StoredEvent> {
        (0..n)
            .map(|i| fixtures::event(&format!("{prefix}{i}")).stored())
            .collect()
    }

    fn ids(events: &[StoredEvent]) -> Vec<&str> {
        events.iter().map(|e| e.event.event_id().as_str()).collect()
    }

    #[test]
    fn groups_that_follow_on_are_taken_in_seq_order_up_to_the_bounds() {
        let h = Handoff::new(100, usize::MAX);
        // Handed over out of order, as overlapping appends may.
        h.put(4, group("b", 2));
        h.put(1, group("a", 3));
        h.put(6, group("c", 3));
        let (events, last) = h.take(0, 4, usize::MAX).unwrap();
        assert_eq!((ids(&events), last), (vec!["a0", "a1", "a2", "b0"], 4));
        let (events, last) = h.take(4, 100, usize::MAX).unwrap();
        assert_eq!((ids(&events), last), (vec!["b1", "c0", "c1", "c2"], 8));
        assert_eq!(h.events_held(), 0);
        assert!(h.take(8, 100, usize::MAX).is_none());
    }

    #[test]
    fn a_gap_is_left_to_the_journal_and_what_it_forwarded_is_dropped() {
        let h = Handoff::new(100, usize::MAX);
        h.put(1, group("a", 3));
        h.put(7, group("c", 2));
        assert!(h.take(0, 100, usize::MAX).is_some());
        // Seqs 4-6 were never handed over: the journal has them.
        assert!(h.take(3, 100, usize::MAX).is_none());
        assert_eq!(h.events_held(), 2, "kept for when the forwarder gets there");
        // The journal's batch ended at 7, inside the group.
        let (events, last) = h.take(7, 100, usize::MAX).unwrap();
        assert_eq!((ids(&events), last), (vec!["c1"], 8));
        assert_eq!(h.events_held(), 0);
        h.put(9, group("d", 2));
        assert!(h.take(20, 100, usize::MAX).is_none());
        assert_eq!(h.events_held(), 0, "groups already forwarded are dropped");
    }

    #[test]
    fn a_batch_stops_at_about_max_bytes_with_at_least_one_event() {
        let h = Handoff::new(100, usize::MAX);
        let g = group("a", 4);
        let one = size(&g[0]);
        h.put(1, g);
        let (events, _) = h.take(0, 100, 1).unwrap();
        assert_eq!(ids(&events), ["a0"], "at least one");
        let (events, last) = h.take(1, 100, 2 * one).unwrap();
        assert_eq!((ids(&events), last), (vec!["a1", "a2"], 3));
    }

    #[test]
    fn a_group_past_the_bounds_is_not_kept() {
        let h = Handoff::new(5, usize::MAX);
        h.put(1, group("a", 3));
        h.put(4, group("b", 3));
        assert_eq!(h.events_held(), 3);
        let (_, last) = h.take(0, 100, usize::MAX).unwrap();
        assert_eq!(last, 3);
        assert!(
            h.take(3, 100, usize::MAX).is_none(),
            "read from the journal"
        );
        let one = size(&group("a", 1)[0]);
        let h = Handoff::new(100, 2 * one);
        h.put(1, group("a", 3));
        assert_eq!(h.events_held(), 0);
    }
}
