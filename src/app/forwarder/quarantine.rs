//! The operator's side of the quarantine: list, replay into the event store, delete.

use crate::app::metrics::Metrics;
use crate::ports::{EventStore, PortError, Quarantine, QuarantineEntry, RefusalCause};
use std::sync::Arc;

/// Events replayed per insert.
const REPLAY_CHUNK: usize = 1000;

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// Stored in the event store and removed from the quarantine.
    pub replayed: u64,
    /// Refused again, alone: still in the quarantine.
    pub still_refused: u64,
    /// What the event store said for the last of those.
    pub last_error: Option<String>,
}

/// The quarantine with what operators do to it.
#[derive(Clone)]
pub struct QuarantineAdmin {
    pub quarantine: Arc<dyn Quarantine>,
    pub remote: Arc<dyn EventStore>,
    pub metrics: Arc<Metrics>,
}

impl QuarantineAdmin {
    /// Entries with `id > after`, oldest first.
    ///
    /// # Errors
    /// When the quarantine cannot be read.
    pub async fn list(&self, after: i64, limit: usize) -> Result<Vec<QuarantineEntry>, PortError> {
        self.quarantine.list(after, limit).await
    }

    pub fn count(&self) -> u64 {
        self.quarantine.count()
    }

    /// Inserts quarantined events (these ids, or all) into the event store again, in chunks;
    /// each chunk refused for its data is tried event by event, and what is refused alone
    /// stays. An event leaves the quarantine only once the store took it, so a crash or an
    /// outage midway loses nothing.
    ///
    /// # Errors
    /// Any failure other than an event refused alone (the store down, a permission, a
    /// schema): what was replayed before it stays replayed.
    pub async fn replay(&self, ids: Option<Vec<String>>) -> Result<ReplayOutcome, PortError> {
        let mut outcome = ReplayOutcome::default();
        match ids {
            Some(ids) => {
                for chunk in ids.chunks(REPLAY_CHUNK) {
                    let entries = self.quarantine.get(chunk).await?;
                    self.replay_chunk(&entries, &mut outcome).await?;
                }
            }
            None => {
                let mut after = 0;
                loop {
                    let entries = self.quarantine.list(after, REPLAY_CHUNK).await?;
                    let Some(last) = entries.last() else { break };
                    after = last.id;
                    self.replay_chunk(&entries, &mut outcome).await?;
                }
            }
        }
        self.metrics
            .quarantine_size
            .set(self.quarantine.count() as i64);
        Ok(outcome)
    }

    async fn replay_chunk(
        &self,
        entries: &[QuarantineEntry],
        outcome: &mut ReplayOutcome,
    ) -> Result<(), PortError> {
        if entries.is_empty() {
            return Ok(());
        }
        let events: Vec<_> = entries.iter().map(|e| e.item.event.clone()).collect();
        let stored: Vec<&QuarantineEntry> = match self.remote.insert(&events).await {
            Ok(()) => entries.iter().collect(),
            Err(PortError::Refused(r)) if r.cause == RefusalCause::Data => {
                let mut stored = Vec::new();
                for (entry, event) in entries.iter().zip(&events) {
                    match self.remote.insert(std::slice::from_ref(event)).await {
                        Ok(()) => stored.push(entry),
                        Err(PortError::Refused(r)) if r.cause == RefusalCause::Data => {
                            outcome.still_refused += 1;
                            outcome.last_error = Some(r.message);
                        }
                        Err(e) => {
                            self.remove(&stored, outcome).await?;
                            return Err(e);
                        }
                    }
                }
                stored
            }
            Err(e) => return Err(e),
        };
        self.remove(&stored, outcome).await
    }

    async fn remove(
        &self,
        stored: &[&QuarantineEntry],
        outcome: &mut ReplayOutcome,
    ) -> Result<(), PortError> {
        let ids: Vec<String> = stored
            .iter()
            .map(|e| e.item.event.columns().event_id.to_owned())
            .collect();
        outcome.replayed += self.quarantine.remove(&ids).await?;
        Ok(())
    }

    /// Deletes one quarantined event for good; `false` when it was not there.
    ///
    /// # Errors
    /// When the quarantine cannot be written.
    pub async fn delete(&self, event_id: &str) -> Result<bool, PortError> {
        let removed = self.quarantine.remove(&[event_id.to_owned()]).await? > 0;
        self.metrics
            .quarantine_size
            .set(self.quarantine.count() as i64);
        Ok(removed)
    }
}
