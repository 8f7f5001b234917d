//! What every inbound adapter shares: the use case, the stores for reads and readiness, the
//! settings and the lifecycle signals. Built once in [`crate::app::startup`].

use crate::adapters::inbound::http::client::TrustedProxies;
use crate::app::access::Access;
use crate::app::config::Settings;
use crate::app::ingest::Ingest;
use crate::app::metrics::Metrics;
use crate::app::rate_limit::RateLimits;
use crate::ports::{DedupStore, EventStore};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct AppState {
    pub ingest: Ingest,
    pub store: Arc<dyn EventStore>,
    pub dedup: Arc<dyn DedupStore>,
    /// Names of the configured backends, for readiness (`embedded`, `clickhouse`, `redis`).
    pub store_kind: &'static str,
    pub dedup_kind: &'static str,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
    pub rate_limits: RateLimits,
    /// Every configured key, with its scopes, origins and limits.
    pub access: Arc<Access>,
    /// Proxies whose forwarding headers name the client.
    pub proxies: TrustedProxies,
    /// Every browser origin the server allows (`cors_origins` and every key's `origins`);
    /// empty: no CORS and no `Origin` check.
    pub allowed_origins: Vec<String>,
    /// Cancelled when the server starts shutting down; connections then drain and close.
    pub shutdown: CancellationToken,
    /// Every WebSocket connection task, so shutdown can wait for them to drain.
    pub connections: TaskTracker,
    /// Routes, when configured.
    pub routing: Option<Arc<crate::app::routing::Routing>>,
    /// Turns for `GET /events` (`read_max_concurrency` of them): a read holds a page in
    /// memory twice (events and their JSON), so at most this many pages are built at once.
    pub reads: Arc<tokio::sync::Semaphore>,
}
