//! Event stores that fail or hold their reads, to drive the `unavailable` and read-bound paths
//! end to end. The failing one is the crate's published fake (`mocks` feature).

use crate::helpers::embedded_ports;
use cartstream::app::startup::Ports;
use cartstream::domain::{DedupKey, StoredEvent};
use cartstream::ports::{EventPage, EventQuery, EventStore, MockEventStore, PortError};
use std::path::Path;
use std::sync::Arc;

/// An event store that cannot record, read or answer its health check.
fn failing_store() -> MockEventStore {
    let injected = || PortError::Unavailable("injected failure".into());
    let mut store = MockEventStore::new();
    store
        .expect_insert_owned()
        .returning(move |_| Err(injected()));
    store.expect_known().returning(move |_| Err(injected()));
    store.expect_query().returning(move |_| Err(injected()));
    store.expect_check().returning(move || Err(injected()));
    store
}

pub fn ports_with_failing_store(dir: &Path) -> Ports {
    Ports {
        store: Arc::new(failing_store()),
        store_kind: "failing",
        ..embedded_ports(dir)
    }
}

/// An embedded store whose reads wait at a gate until the test opens it: a read in flight
/// for as long as a test needs, without timing.
///
/// Not a `MockEventStore`: a mock's expectation for an `async_trait` method returns the
/// method's output, not a future, so it cannot suspend; blocking inside it instead would
/// stall the test's single-threaded runtime, which also runs the server. And every read here
/// is a real read of the embedded store once the gate opens.
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
