//! The real cartstream server (same HTTP/WebSocket edge, same ingest use case) over an event
//! store and a dedup store that do nothing: the ceiling, where the pipeline's own cost is all
//! that is left. Every event is `accepted` (nothing is remembered, so nothing is a duplicate).
//!
//! ```sh
//! CARTSTREAM_LISTEN=127.0.0.1:3001 cargo run --release --example discard-server
//! ```

use cartstream::app::config::Settings;
use cartstream::app::startup::{shutdown_signal, Application, Ports};
use cartstream::app::telemetry;
use cartstream::domain::{DedupKey, StoredEvent};
use cartstream::ports::{Claim, DedupStore, EventQuery, EventStore, PortError, SystemClock};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Stores nothing and says it did.
struct DiscardStore;

#[async_trait::async_trait]
impl EventStore for DiscardStore {
    async fn insert(&self, _events: &[StoredEvent]) -> Result<(), PortError> {
        Ok(())
    }
    async fn query(&self, _query: &EventQuery) -> Result<Vec<StoredEvent>, PortError> {
        Ok(Vec::new())
    }
    async fn check(&self) -> Result<(), PortError> {
        Ok(())
    }
}

/// Remembers nothing: every key is new.
struct ForgetfulDedup;

#[async_trait::async_trait]
impl DedupStore for ForgetfulDedup {
    async fn claim(&self, keys: &[DedupKey], _hold: Duration) -> Result<Vec<Claim>, PortError> {
        Ok(vec![Claim::New; keys.len()])
    }
    async fn confirm(&self, _keys: &[DedupKey], _window: Duration) -> Result<(), PortError> {
        Ok(())
    }
    async fn release(&self, _keys: &[DedupKey]) -> Result<(), PortError> {
        Ok(())
    }
    async fn check(&self) -> Result<(), PortError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("discard-server: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings);
    let ports = Ports {
        store: Arc::new(DiscardStore),
        dedup: Arc::new(ForgetfulDedup),
        clock: Arc::new(SystemClock),
        store_kind: "discard",
        dedup_kind: "discard",
        forwarding: None,
    };
    let app = match Application::build_with(settings, ports).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %app.local_addr(), "discard-server listening (stores nothing)");
    match app.run(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("server failed: {e}");
            ExitCode::FAILURE
        }
    }
}
