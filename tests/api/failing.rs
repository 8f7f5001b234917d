//! An event store that cannot record, to drive the `unavailable` paths end to end.

use crate::helpers::embedded_ports;
use cartstream::app::startup::Ports;
use cartstream::domain::{DedupKey, StoredEvent};
use cartstream::ports::{EventPage, EventQuery, EventStore, PortError};
use std::path::Path;
use std::sync::Arc;

pub struct FailingStore;

#[async_trait::async_trait]
impl EventStore for FailingStore {
    async fn insert(&self, _: &[StoredEvent]) -> Result<(), PortError> {
        Err(PortError::Unavailable("injected failure".into()))
    }
    async fn known(&self, _: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        Err(PortError::Unavailable("injected failure".into()))
    }
    async fn query(&self, _: &EventQuery) -> Result<EventPage, PortError> {
        Err(PortError::Unavailable("injected failure".into()))
    }
    async fn check(&self) -> Result<(), PortError> {
        Err(PortError::Unavailable("injected failure".into()))
    }
}

pub fn ports_with_failing_store(dir: &Path) -> Ports {
    Ports {
        store: Arc::new(FailingStore),
        store_kind: "failing",
        ..embedded_ports(dir)
    }
}
