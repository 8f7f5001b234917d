//! The real cartstream server (same HTTP/WebSocket edge, same ingest use case) over an event
//! store and a dedup store that do nothing: the ceiling, where the pipeline's own cost is all
//! that is left. Every event is `accepted` (nothing is remembered, so nothing is a duplicate).
//!
//! ```sh
//! CARTSTREAM_LISTEN=127.0.0.1:3001 cargo run --release --example discard-server
//! ```
//!
//! With `DISCARD_WITH_JOURNAL=1` the local journal (under `CARTSTREAM_DATA_DIR`) sits in front
//! of the discarding store exactly as it sits in front of ClickHouse: the difference between
//! the two runs is what the journal costs. With `DISCARD_WITH_REDIS=redis://…` dedup runs on
//! that Redis (under `CARTSTREAM_REDIS_KEY_PREFIX`) instead of forgetting: what Redis costs.

use cartstream::app::config::Settings;
use cartstream::app::startup::{journaled, shutdown_signal, Application, Ports};
use cartstream::app::telemetry;
use cartstream::domain::{DedupKey, StoredEvent};
use cartstream::ports::{
    Claim, DedupStore, EventFeed, EventPage, EventQuery, EventStore, FeedEntry, Lease, PortError,
    SystemClock,
};
use std::process::ExitCode;

/// The same allocator as the service, tuned the same way (`main`), so the ceiling measures the
/// same code.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::Arc;

/// Stores nothing and says it did.
struct DiscardStore;

#[async_trait::async_trait]
impl EventStore for DiscardStore {
    async fn insert(&self, _events: &[StoredEvent]) -> Result<(), PortError> {
        Ok(())
    }
    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        Ok(vec![false; keys.len()])
    }
    async fn query(&self, _query: &EventQuery) -> Result<EventPage, PortError> {
        Ok(EventPage::default())
    }
    async fn check(&self) -> Result<(), PortError> {
        Ok(())
    }
}

/// Nothing recorded, nothing to route.
#[async_trait::async_trait]
impl EventFeed for DiscardStore {
    fn name(&self) -> &'static str {
        "discard"
    }
    async fn head(&self) -> Result<i64, PortError> {
        Ok(0)
    }
    async fn after(&self, _after: i64, _max: usize) -> Result<Vec<FeedEntry>, PortError> {
        Ok(Vec::new())
    }
}

/// Remembers nothing: every key is new.
struct ForgetfulDedup;

#[async_trait::async_trait]
impl DedupStore for ForgetfulDedup {
    async fn claim(&self, _lease: &Lease, keys: &[DedupKey]) -> Result<Vec<Claim>, PortError> {
        Ok(vec![Claim::New; keys.len()])
    }
    async fn confirm(&self, _lease: &Lease, _keys: &[DedupKey]) -> Result<(), PortError> {
        Ok(())
    }
    async fn release(&self, _lease: &Lease, _keys: &[DedupKey]) -> Result<(), PortError> {
        Ok(())
    }
    async fn check(&self) -> Result<(), PortError> {
        Ok(())
    }
}

fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("discard-server: {e}");
            return ExitCode::from(2);
        }
    };
    // The service's runtime, with the same worker threads, so the ceiling is comparable.
    match cartstream::app::startup::runtime(&settings) {
        Ok(runtime) => runtime.block_on(serve(settings)),
        Err(e) => {
            eprintln!("discard-server: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> ExitCode {
    cartstream::app::allocator::start();
    telemetry::init(&settings);
    let with_journal = std::env::var("DISCARD_WITH_JOURNAL").is_ok_and(|v| v == "1");
    let (store, forwarding, feed): (Arc<dyn EventStore>, _, Arc<dyn EventFeed>) = if with_journal {
        // The service's own journal wiring, with a remote store that discards.
        match journaled(&settings, Arc::new(DiscardStore)) {
            Ok((store, forwarding, journal)) => (store, Some(forwarding), Arc::new(journal)),
            Err(e) => {
                eprintln!("discard-server: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        (Arc::new(DiscardStore), None, Arc::new(DiscardStore))
    };
    let dedup: Arc<dyn DedupStore> = match std::env::var("DISCARD_WITH_REDIS") {
        Ok(url) => {
            let mut config = cartstream::adapters::outbound::redis::RedisDedupConfig::new(url);
            config.key_prefix = settings.redis_key_prefix.clone();
            match cartstream::adapters::outbound::redis::RedisDedupStore::new(config) {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    eprintln!("discard-server: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Err(_) => Arc::new(ForgetfulDedup),
    };
    let ports = Ports {
        store,
        dedup,
        clock: Arc::new(SystemClock),
        store_kind: "discard",
        dedup_kind: "discard",
        forwarding,
        feed,
        retired_feed: None,
        retention: None,
        routes: Vec::new(),
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
