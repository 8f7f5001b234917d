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

/// An embedded store whose reads wait at a gate until the test opens it: a read in flight
/// for as long as a test needs, without timing.
pub struct GatedStore {
    pub inner: Arc<dyn EventStore>,
    /// Opened by the test; each read waits for it.
    pub gate: Arc<tokio::sync::Semaphore>,
    /// Signalled when a read reaches the gate.
    pub reached: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl EventStore for GatedStore {
    async fn insert(&self, events: &[StoredEvent]) -> Result<(), PortError> {
        self.inner.insert(events).await
    }
    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        self.inner.known(keys).await
    }
    async fn query(&self, q: &EventQuery) -> Result<EventPage, PortError> {
        self.reached.notify_one();
        let pass = self.gate.acquire().await;
        drop(pass);
        self.inner.query(q).await
    }
    async fn check(&self) -> Result<(), PortError> {
        self.inner.check().await
    }
}
