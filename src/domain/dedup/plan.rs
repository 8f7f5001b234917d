//! The dedup decision for one group of events, without I/O.
//!
//! The committer asks the stores; this plan says what their answers mean. It is built from
//! the group's dedup keys, then told, in this order, what the dedup store answered for the
//! group's keys ([`GroupPlan::apply_claims`], or the event store's fallback read,
//! [`GroupPlan::apply_known`]), which keys found in flight an earlier group of this process
//! has recorded ([`GroupPlan::apply_settled`]) and what a second claim answered for the rest
//! ([`GroupPlan::apply_reclaims`]). It then says which events to store and, given whether
//! storing worked, the one outcome of every event ([`GroupPlan::resolve`]).

use super::{Claim, DedupKey, KeyHasher, KeyMap};
use crate::domain::event::EventId;
use crate::domain::outcome::{Outcome, Unavailable};
use std::collections::hash_map::Entry;

/// What is decided so far for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// To be stored: its key is claimed (or not asked yet), or it has none.
    Store,
    /// An event with its key was accepted before, within the window.
    Duplicate,
    /// Its key is held by someone else; decided by the settled check and the second claim.
    Held,
    /// Cannot be answered now.
    Unavailable(Unavailable),
    /// Repeats the earlier event of this group at this index, so it answers what that one does.
    RepeatOf(usize),
}

/// An answer whose length differs from the number of keys asked about: a store broke its
/// contract, so none of the answers can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongLength;

/// The dedup decision for one group of events: which event is the first of its key, which
/// repeats another of the group, what each claim answer means, and one outcome per event.
#[derive(Debug)]
pub struct GroupPlan {
    steps: Vec<Step>,
    /// The keys whose answer the plan waits for, each with the event it decides: first every
    /// distinct key of the group, in order of first appearance; after the claim, the keys
    /// found in flight; after the settled check, those still to claim again.
    asking: Vec<DedupKey>,
    askers: Vec<usize>,
    /// Keys claimed for this group: to confirm once the events are stored, or to release.
    claimed: Vec<DedupKey>,
}

impl GroupPlan {
    /// The plan for events with these dedup keys, in order (`None`: the event cannot repeat).
    pub fn new(keys: impl IntoIterator<Item = Option<DedupKey>>) -> Self {
        let keys: Vec<Option<DedupKey>> = keys.into_iter().collect();
        let n = keys.len();
        let mut steps = Vec::with_capacity(n);
        {
            // Borrows the keys rather than cloning them, and is sized for the group at once:
            // growing it would hash every key again at each step.
            let mut first_by_key: KeyMap<&str, usize> =
                KeyMap::with_capacity_and_hasher(n, KeyHasher::default());
            for (i, key) in keys.iter().enumerate() {
                steps.push(match key {
                    None => Step::Store,
                    Some(key) => match first_by_key.entry(key.as_str()) {
                        Entry::Occupied(first) => Step::RepeatOf(*first.get()),
                        Entry::Vacant(first) => {
                            first.insert(i);
                            Step::Store
                        }
                    },
                });
            }
        }
        // Each key's first event asks: the one with a key that is still to be stored.
        let mut asking = Vec::with_capacity(n);
        let mut askers = Vec::with_capacity(n);
        for (i, key) in keys.into_iter().enumerate() {
            if let (Some(key), Step::Store) = (key, steps[i]) {
                asking.push(key);
                askers.push(i);
            }
        }
        let claimed = Vec::with_capacity(asking.len());
        Self {
            steps,
            asking,
            askers,
            claimed,
        }
    }

    /// The keys to ask about now: distinct, index-aligned with the answer expected.
    pub fn keys(&self) -> &[DedupKey] {
        &self.asking
    }

    /// Reads the dedup store's claim on [`keys`](Self::keys): a new key is claimed and its
    /// event stored, a duplicate is answered, a key in flight waits for
    /// [`apply_settled`](Self::apply_settled) and [`apply_reclaims`](Self::apply_reclaims).
    ///
    /// # Errors
    /// When there is not one answer per key; then nothing was applied.
    pub fn apply_claims(&mut self, answers: &[Claim]) -> Result<(), WrongLength> {
        if answers.len() != self.asking.len() {
            return Err(WrongLength);
        }
        let keys = std::mem::take(&mut self.asking);
        let owners = std::mem::take(&mut self.askers);
        for ((key, owner), claim) in keys.into_iter().zip(owners).zip(answers) {
            match claim {
                Claim::New => self.claimed.push(key),
                Claim::Duplicate => self.steps[owner] = Step::Duplicate,
                Claim::InFlight => {
                    self.steps[owner] = Step::Held;
                    self.asking.push(key);
                    self.askers.push(owner);
                }
            }
        }
        Ok(())
    }

    /// Reads the event store's answer on [`keys`](Self::keys) instead of a claim, while the
    /// dedup store cannot answer: a known key is a duplicate, any other is stored. Nothing is
    /// claimed, so nothing is left to ask.
    ///
    /// # Errors
    /// When there is not one answer per key; then nothing was applied.
    pub fn apply_known(&mut self, known: &[bool]) -> Result<(), WrongLength> {
        if known.len() != self.asking.len() {
            return Err(WrongLength);
        }
        for (&owner, &known) in self.askers.iter().zip(known) {
            if known {
                self.steps[owner] = Step::Duplicate;
            }
        }
        self.asking.clear();
        self.askers.clear();
        Ok(())
    }

    /// Settles the keys found in flight that an earlier group of this process has recorded
    /// (`recorded` says which): their events are duplicates. The others stay in
    /// [`keys`](Self::keys), to be claimed again.
    pub fn apply_settled(&mut self, recorded: impl Fn(&DedupKey) -> bool) {
        let mut kept = 0;
        for i in 0..self.asking.len() {
            let owner = self.askers[i];
            if recorded(&self.asking[i]) {
                self.steps[owner] = Step::Duplicate;
            } else {
                self.asking.swap(kept, i);
                self.askers[kept] = owner;
                kept += 1;
            }
        }
        self.asking.truncate(kept);
        self.askers.truncate(kept);
    }

    /// Reads the second claim on the keys still in flight, `None` when the store did not
    /// answer. A key still held is held elsewhere (another instance, or a claim a crash left
    /// behind) and its event may or may not end up recorded: it answers
    /// [`Unavailable::KeyInFlight`], as does every key of an answer of the wrong length.
    pub fn apply_reclaims(&mut self, answers: Option<&[Claim]>) {
        let answers = answers.filter(|a| a.len() == self.asking.len());
        let keys = std::mem::take(&mut self.asking);
        let owners = std::mem::take(&mut self.askers);
        for (i, (key, owner)) in keys.into_iter().zip(owners).enumerate() {
            self.steps[owner] = match answers.map_or(Claim::InFlight, |a| a[i]) {
                Claim::New => {
                    self.claimed.push(key);
                    Step::Store
                }
                Claim::Duplicate => Step::Duplicate,
                Claim::InFlight => Step::Unavailable(Unavailable::KeyInFlight),
            };
        }
    }

    /// Whether each event is to be stored, in order.
    pub fn stores(&self) -> impl Iterator<Item = bool> + '_ {
        self.steps.iter().map(|s| *s == Step::Store)
    }

    /// The keys claimed for this group, to confirm once its events are stored or to release.
    pub fn claimed(&self) -> &[DedupKey] {
        &self.claimed
    }

    /// Gives up the claimed keys, for the confirmation that follows the answers.
    pub fn into_claimed(self) -> Vec<DedupKey> {
        self.claimed
    }

    /// One outcome per event, in order, given the events' ids and why storing failed (`None`
    /// when it worked or nothing was to be stored). A repeat answers what its first answers,
    /// as a duplicate when that one is recorded; a key never settled answers `KeyInFlight`.
    pub fn resolve(&self, ids: Vec<EventId>, store_failure: Option<Unavailable>) -> Vec<Outcome> {
        debug_assert_eq!(ids.len(), self.steps.len(), "one id per event");
        let mut out: Vec<Outcome> = Vec::with_capacity(self.steps.len());
        for (step, id) in self.steps.iter().zip(ids) {
            let outcome = match *step {
                Step::Store => match store_failure {
                    None => Outcome::Accepted(id),
                    Some(reason) => Outcome::Unavailable(reason),
                },
                Step::Duplicate => Outcome::Duplicate(id),
                Step::Held => Outcome::Unavailable(Unavailable::KeyInFlight),
                Step::Unavailable(reason) => Outcome::Unavailable(reason),
                Step::RepeatOf(first) => match &out[first] {
                    Outcome::Accepted(id) | Outcome::Duplicate(id) => {
                        Outcome::Duplicate(id.clone())
                    }
                    other => other.clone(),
                },
            };
            out.push(outcome);
        }
        out
    }
}

#[cfg(test)]
mod tests;
