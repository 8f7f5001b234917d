//! The composition root: settings become adapters once, here, and the server runs until its
//! shutdown future resolves, then drains.

use crate::adapters::inbound::edge::client::TrustedProxies;
use crate::adapters::inbound::http::{self, Backends, Gate, HttpLimits, HttpState};
use crate::adapters::inbound::listener::{Caps, GuardedAcceptor, Timeouts};
use crate::adapters::inbound::live;
use crate::adapters::inbound::tap::{self, TapState};
use crate::adapters::inbound::ws::{self, WsSettings, WsState};
use crate::adapters::outbound::clickhouse::{ClickHouseConfig, ClickHouseStore, ClusterConfig};
use crate::adapters::outbound::disk_space::StatVfs;
use crate::adapters::outbound::embedded::{DedupMode, EmbeddedStore};
use crate::adapters::outbound::journal::SqliteJournal;
use crate::adapters::outbound::outbox::SqliteOutbox;
use crate::adapters::outbound::quarantine::SqliteQuarantine;
use crate::adapters::outbound::redis::cluster::scripts::ClusterScripts;
use crate::adapters::outbound::redis::cluster::{RedisClusterDedupConfig, RedisClusterDedupStore};
use crate::adapters::outbound::redis::rate::RedisBuckets;
use crate::adapters::outbound::redis::{RedisDedupConfig, RedisDedupStore};
use crate::adapters::outbound::targets::build_target;
use crate::app::access::Access;
use crate::app::config::RouteSettings;
use crate::app::config::{RateLimitScope, Settings};
use crate::app::disk::watch::DiskWatched;
use crate::app::disk::DiskState;
use crate::app::forwarder::health::ForwardingHealth;
use crate::app::forwarder::{FlushPolicy, Forwarder, ForwardingView, Handoff, JournaledStore};
use crate::app::ingest::{Committer, DedupPolicy, Ingest};
use crate::app::integrity::{check_at_startup, Damage};
use crate::app::metrics::Metrics;
use crate::app::rate_limit::{RateLimits, SharedLimits};
use crate::app::retention::Counted;
use crate::app::routing::{Route, RoutePolicy, Routing};
use crate::domain::routing::{RouteMatch, RouteName, RouteRule};
use crate::ports::{
    Clock, DedupStore, EventFeed, EventStore, Journal, Outbox, PortError, Quarantine, Retention,
    RouteAdmin, SystemClock,
};
use lock::DataDirLock;
use poem::{EndpointExt, Server};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) mod lock;

/// The tokio runtime a binary serves on: multi-threaded, with `worker_threads` workers when
/// set (otherwise tokio's default: `TOKIO_WORKER_THREADS`, else one per core).
///
/// # Errors
/// When the runtime cannot start its threads.
pub fn runtime(settings: &Settings) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = settings.worker_threads {
        builder.worker_threads(n);
    }
    builder.build()
}

/// The outbound side of the application.
pub struct Ports {
    /// What the ingest use case records into (the journal, when a remote store is set).
    pub store: Arc<dyn EventStore>,
    pub dedup: Arc<dyn DedupStore>,
    pub clock: Arc<dyn Clock>,
    pub store_kind: &'static str,
    pub dedup_kind: &'static str,
    /// The journal-to-remote-store path, when a remote store is configured.
    pub forwarding: Option<Forwarding>,
    /// The durable record of accepted events in order, which routing reads.
    pub feed: Arc<dyn EventFeed>,
    /// A feed routing read in earlier versions of this setup, with its head now: what it
    /// holds past its saved cursor is routed first, then it is retired (see
    /// [`Routing::retired`]).
    pub retired_feed: Option<(Arc<dyn EventFeed>, i64)>,
    /// Configured routes (none: routing does not run).
    pub routes: Vec<Arc<Route>>,
    /// The event store's deleting of old events, when `retention` is set.
    pub retention: Option<Arc<dyn Retention>>,
}

/// What the forwarder needs; it is started with the application.
pub struct Forwarding {
    pub journal: Arc<dyn Journal>,
    pub remote: Arc<dyn EventStore>,
    pub wake: Arc<Notify>,
    pub policy: FlushPolicy,
    /// Where events the remote store refuses alone are set aside.
    pub quarantine: Arc<dyn Quarantine>,
    pub health: Arc<ForwardingHealth>,
    /// Groups the ingest use case recorded, handed to the forwarder in memory.
    pub handoff: Arc<Handoff>,
}

impl Forwarding {
    /// What the operator endpoints show of it.
    fn view(&self) -> ForwardingView {
        ForwardingView {
            health: Arc::clone(&self.health),
            quarantine: Arc::clone(&self.quarantine),
            remote: Arc::clone(&self.remote),
        }
    }
}

/// The local journal in front of `remote`: the store the ingest use case sees, what the
/// forwarder needs, and the journal (a feed for routing).
///
/// # Errors
/// When the journal cannot be opened.
pub fn journaled(
    settings: &Settings,
    remote: Arc<dyn EventStore>,
) -> Result<(Arc<dyn EventStore>, Forwarding, SqliteJournal), StartupError> {
    let sqlite_journal = SqliteJournal::open(&settings.data_dir, settings.journal_max_bytes)
        .map_err(StartupError::Store)?;
    let journal: Arc<dyn Journal> = Arc::new(sqlite_journal.clone());
    let quarantine: Arc<dyn Quarantine> =
        Arc::new(SqliteQuarantine::open(&settings.data_dir).map_err(StartupError::Store)?);
    let wake = Arc::new(Notify::new());
    let policy = FlushPolicy {
        max_rows: settings.forward_max_rows,
        max_bytes: settings.forward_max_bytes,
        interval: settings.forward_interval,
        backoff_min: std::time::Duration::from_millis(100),
        backoff_max: settings.forward_backoff_max,
    };
    // Two batches: the one being inserted and the next one filling meanwhile. Past that the
    // forwarder is behind, and reads the journal.
    let handoff = Arc::new(Handoff::new(
        policy.max_rows.saturating_mul(2),
        policy.max_bytes.saturating_mul(2),
    ));
    let store = JournaledStore::new(Arc::clone(&journal), Arc::clone(&remote), Arc::clone(&wake))
        .with_quarantine(Arc::clone(&quarantine))
        .with_handoff(Arc::clone(&handoff));
    let forwarding = Forwarding {
        journal,
        remote,
        wake,
        policy,
        quarantine,
        health: Arc::default(),
        handoff,
    };
    Ok((Arc::new(store), forwarding, sqlite_journal))
}

impl Ports {
    /// The adapters the settings ask for: Redis for dedup when `redis_url` is set, ClickHouse
    /// behind the local journal when `clickhouse_url` is set, the embedded store otherwise.
    /// Nothing here waits for a backend: one that is down makes the server not ready, not
    /// unable to start.
    ///
    /// # Errors
    /// When a local database cannot be opened or a backend setting is malformed.
    pub fn from_settings(settings: &Settings) -> Result<Self, StartupError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let mut embedded = LazyEmbedded::new(settings, Arc::clone(&clock));
        let (dedup, dedup_kind) = dedup_side(settings, &mut embedded)?;
        let events = match &settings.clickhouse_url {
            Some(url) => clickhouse_side(settings, url)?,
            None => embedded_side(settings, &mut embedded)?,
        };
        let routes = settings
            .routes
            .iter()
            .map(|r| build_route(r, settings.redis_url.as_deref(), Arc::clone(&clock)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            store: events.store,
            dedup,
            clock,
            store_kind: events.kind,
            dedup_kind,
            forwarding: Some(events.forwarding),
            feed: events.feed,
            retired_feed: events.retired_feed,
            routes,
            retention: settings.retention.and(events.retention),
        })
    }
}

/// The one embedded store, opened only if a side needs it. When it holds both the events and
/// the dedup state, dedup reads the events themselves.
struct LazyEmbedded<'a> {
    settings: &'a Settings,
    mode: DedupMode,
    clock: Arc<dyn Clock>,
    opened: Option<EmbeddedStore>,
}

impl<'a> LazyEmbedded<'a> {
    fn new(settings: &'a Settings, clock: Arc<dyn Clock>) -> Self {
        let redis = settings.redis_url.is_some() || !settings.redis_cluster_nodes.is_empty();
        let mode = match (redis, &settings.clickhouse_url) {
            (false, None) => DedupMode::Events {
                window: settings.dedup_window,
            },
            _ => DedupMode::Table,
        };
        Self {
            settings,
            mode,
            clock,
            opened: None,
        }
    }

    fn get(&mut self) -> Result<EmbeddedStore, StartupError> {
        if let Some(store) = &self.opened {
            return Ok(store.clone());
        }
        let store =
            EmbeddedStore::open_with(&self.settings.data_dir, self.mode, Arc::clone(&self.clock))
                .map_err(StartupError::Store)?;
        self.opened = Some(store.clone());
        Ok(store)
    }
}

/// The dedup store the settings ask for (a Redis Cluster, a single Redis, or the embedded
/// store), with its name.
fn dedup_side(
    settings: &Settings,
    embedded: &mut LazyEmbedded<'_>,
) -> Result<(Arc<dyn DedupStore>, &'static str), StartupError> {
    if !settings.redis_cluster_nodes.is_empty() {
        let config = RedisClusterDedupConfig {
            seeds: settings.redis_cluster_nodes.clone(),
            key_prefix: settings.redis_key_prefix.clone(),
            buckets: settings.redis_cluster_buckets,
            connect_timeout: settings.redis_connect_timeout,
            command_timeout: settings.redis_command_timeout,
        };
        let store = RedisClusterDedupStore::new(config).map_err(StartupError::Backend)?;
        // Still `redis` in `GET /ready` (the API's documented names); its errors say "cluster".
        return Ok((Arc::new(store), "redis"));
    }
    Ok(match &settings.redis_url {
        Some(url) => {
            let config = RedisDedupConfig {
                url: url.clone(),
                key_prefix: settings.redis_key_prefix.clone(),
                pool_size: settings.redis_pool_size,
                connect_timeout: settings.redis_connect_timeout,
                command_timeout: settings.redis_command_timeout,
            };
            let store = RedisDedupStore::new(config).map_err(StartupError::Backend)?;
            (Arc::new(store), "redis")
        }
        None => (Arc::new(embedded.get()?), "embedded"),
    })
}

/// The event side of [`Ports`]: what ingest records into, the journal's way to the event
/// store, the feed routing reads, and an earlier feed to drain first.
struct EventSide {
    store: Arc<dyn EventStore>,
    kind: &'static str,
    forwarding: Forwarding,
    feed: Arc<dyn EventFeed>,
    retired_feed: Option<(Arc<dyn EventFeed>, i64)>,
    /// How the store deletes old events (used when `retention` is set).
    retention: Option<Arc<dyn Retention>>,
}

/// How to reach the ClickHouse at `url` the settings name (also for `migrate-clickhouse`).
pub fn clickhouse_config(settings: &Settings, url: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: url.to_owned(),
        database: settings.clickhouse_database.clone(),
        table: settings.clickhouse_table.clone(),
        user: settings.clickhouse_user.clone(),
        password: settings.clickhouse_password.clone(),
        request_timeout: settings.clickhouse_timeout,
        cluster: settings
            .clickhouse_cluster
            .as_ref()
            .map(|name| ClusterConfig {
                name: name.clone(),
                shard_urls: settings.clickhouse_shard_urls.clone(),
            }),
        manage_tables: settings.clickhouse_manage_tables,
        compression: settings.clickhouse_compression.resolve(
            std::iter::once(url).chain(settings.clickhouse_shard_urls.iter().map(String::as_str)),
        ),
    }
}

/// ClickHouse behind the local journal.
fn clickhouse_side(settings: &Settings, url: &str) -> Result<EventSide, StartupError> {
    let config = clickhouse_config(settings, url);
    let clickhouse = Arc::new(ClickHouseStore::new(config).map_err(StartupError::Backend)?);
    let remote: Arc<dyn EventStore> = Arc::clone(&clickhouse) as Arc<dyn EventStore>;
    let (store, forwarding, journal) = journaled(settings, remote)?;
    Ok(EventSide {
        store,
        kind: "clickhouse",
        forwarding,
        feed: Arc::new(journal),
        retired_feed: None,
        retention: Some(clickhouse),
    })
}

/// The embedded store behind the local journal.
fn embedded_side(
    settings: &Settings,
    embedded: &mut LazyEmbedded<'_>,
) -> Result<EventSide, StartupError> {
    // The events table, indexed by event id and user, takes events in the forwarder's large
    // batches: written one commit group at a time, its random index pages made the embedded
    // store disk-bound. Acks wait for the journal's sequential append, as with ClickHouse.
    let local = embedded.get()?;
    let (store, forwarding, journal) =
        journaled(settings, Arc::new(local.clone()) as Arc<dyn EventStore>)?;
    if matches!(embedded.mode, DedupMode::Events { .. }) {
        // Events the journal still holds are duplicates before they reach the table.
        local.remember_recorded(journal.pending_ids().map_err(StartupError::Store)?);
    }
    // Routing reads the journal, so events are routed as soon as they are acked. Before the
    // journal, it read the events table: what that still holds unrouted is routed first.
    // Taken before the forwarder runs: rows past it came through the journal. (A crash before
    // the catch-up is done makes the next start take it again, later: then some events may be
    // routed twice, never skipped.)
    let through = local.last_rowid().map_err(StartupError::Store)?;
    if settings.retention.is_some() && !local.gives_space_back().map_err(StartupError::Store)? {
        tracing::info!(
            "retention: this data dir's database was made before retention existed: the space of \
             deleted events is reused by new ones (the file stops growing) but not given back \
             to the file system; docs/backends.md, \"Retention\", says how to give it back"
        );
    }
    let retention: Arc<dyn Retention> = Arc::new(local.clone());
    let retired: Arc<dyn EventFeed> = Arc::new(local);
    Ok(EventSide {
        store,
        kind: "embedded",
        forwarding,
        feed: Arc::new(journal),
        retired_feed: Some((retired, through)),
        retention: Some(retention),
    })
}

fn build_route(
    r: &RouteSettings,
    default_redis_url: Option<&str>,
    clock: Arc<dyn Clock>,
) -> Result<Arc<Route>, StartupError> {
    let bad = |e: String| StartupError::Route(r.name.clone(), e);
    let rule = RouteRule {
        name: RouteName::parse(&r.name).map_err(|e| bad(e.to_string()))?,
        matcher: RouteMatch::parse(&r.event_types).map_err(|e| bad(e.to_string()))?,
    };
    let target =
        build_target(&r.target, default_redis_url, clock).map_err(|e| bad(e.to_string()))?;
    let policy = RoutePolicy {
        batch_size: r.batch_size,
        max_attempts: r.max_attempts,
        backoff_min: r.backoff_min,
        backoff_max: r.backoff_max,
        lanes: r.concurrency,
    };
    Ok(Arc::new(Route::new(rule, target, policy)))
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the local store: {0}")]
    Store(PortError),
    #[error("bad backend setting: {0}")]
    Backend(PortError),
    #[error("route {0:?}: {1}")]
    Route(String, String),
    #[error("keys, limits or origins: {0}")]
    Security(String),
    #[error(
        "the data dir {dir:?} is in use by another cartstream (pid {holder}); every instance \
         needs a CARTSTREAM_DATA_DIR of its own"
    )]
    DataDirInUse {
        dir: std::path::PathBuf,
        holder: String,
    },
    #[error(
        "the local database {file:?} is damaged ({detail}); cartstream does not start on it. \
         Stop here and run `cartstream salvage --data-dir {dir:?}`, which keeps every row that \
         can still be read and moves the damaged file aside (README: Damaged files)"
    )]
    Damaged {
        file: std::path::PathBuf,
        detail: String,
        dir: std::path::PathBuf,
    },
    #[error("cannot lock the data dir ({path:?}): {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Every origin a browser page may send from: `cors_origins` and every key's `origins`.
fn allowed_origins(settings: &Settings, access: &Access) -> Result<Vec<String>, StartupError> {
    let mut origins = Vec::new();
    for origin in &settings.cors_origins {
        crate::app::access::check_origin(origin).map_err(|e| {
            StartupError::Security(format!("cors_origins (CARTSTREAM_CORS_ORIGINS): {e}"))
        })?;
        origins.push(origin.clone());
    }
    for (_, key) in access.keys() {
        origins.extend(key.origins.iter().cloned());
    }
    origins.sort();
    origins.dedup();
    Ok(origins)
}

/// The connection deadlines the settings ask for.
fn timeouts(settings: &Settings) -> Timeouts {
    Timeouts {
        head: settings.http_head_timeout,
        body_idle: settings.http_body_idle_timeout,
        body_min_rate: settings.http_body_min_rate,
        keep_alive: settings.http_keep_alive_timeout,
        ws_handshake: settings.ws_handshake_timeout,
    }
}

/// Binds the listener with the connection caps and deadlines the settings ask for.
async fn bind(
    settings: &Settings,
    proxies: TrustedProxies,
    metrics: &Arc<Metrics>,
) -> Result<GuardedAcceptor, StartupError> {
    let addr = settings.listen;
    let caps = Caps {
        total: settings.max_connections,
        per_address: settings.max_connections_per_address,
        proxies,
    };
    GuardedAcceptor::bind(addr, timeouts(settings), caps, Arc::clone(metrics))
        .await
        .map_err(|source| StartupError::Listen { addr, source })
}

/// Routing over the configured routes, or `None` when there are none.
/// With `disk`, the outbox's writes report a full disk to it.
pub(crate) fn routing(
    settings: &Settings,
    ports: &Ports,
    recorded: &Arc<Notify>,
    metrics: &Arc<Metrics>,
    disk: Option<&Arc<DiskState>>,
) -> Result<Option<Arc<Routing>>, StartupError> {
    if ports.routes.is_empty() {
        return Ok(None);
    }
    let outbox: Arc<dyn Outbox> = Arc::new(
        SqliteOutbox::open(&settings.data_dir, Arc::clone(&ports.clock))
            .map_err(StartupError::Store)?,
    );
    let outbox = match disk {
        Some(disk) => Arc::new(DiskWatched::new(outbox, Arc::clone(disk))),
        None => outbox,
    };
    Ok(Some(Arc::new(Routing {
        routes: ports.routes.clone(),
        outbox,
        feed: Arc::clone(&ports.feed),
        retired: ports.retired_feed.clone(),
        recorded: Arc::clone(recorded),
        routed_through: Arc::new(AtomicI64::new(0)),
        metrics: Arc::clone(metrics),
        clock: Arc::clone(&ports.clock),
    })))
}

impl Background {
    /// Starts routing and the forwarder, each when configured. With `disk`, it is sampled
    /// every few seconds and the forwarder's writes report a full disk to it.
    pub(crate) fn start(
        routing: Option<&Arc<Routing>>,
        forwarding: Option<Forwarding>,
        metrics: &Arc<Metrics>,
        clock: Arc<dyn Clock>,
        disk: Option<&Arc<DiskState>>,
    ) -> Self {
        let routing_stop = CancellationToken::new();
        let routing_task = routing.map(|r| tokio::spawn(Arc::clone(r).run(routing_stop.clone())));
        let forwarder_stop = CancellationToken::new();
        let forwarder = forwarding.map(|f| {
            let (journal, remote, quarantine) = match disk {
                Some(disk) => watched(f.journal, f.remote, f.quarantine, disk),
                None => (f.journal, f.remote, f.quarantine),
            };
            let forwarder = Forwarder {
                journal,
                remote,
                policy: f.policy,
                wake: f.wake,
                metrics: Arc::clone(metrics),
                clock,
                routed_through: routing.map(|r| Arc::clone(&r.routed_through)),
                quarantine: Some(quarantine),
                health: f.health,
                handoff: Some(f.handoff),
            };
            tokio::spawn(forwarder.run(forwarder_stop.clone()))
        });
        let disk_stop = CancellationToken::new();
        if let Some(disk) = disk {
            tokio::spawn(Arc::clone(disk).run(disk_stop.clone()));
        }
        Self {
            forwarder_stop,
            forwarder,
            routing_stop,
            routing: routing_task,
            disk_stop,
            retention_stop: CancellationToken::new(),
            retention: None,
        }
    }

    /// Starts deleting events older than `keep` (never one received within the dedup window).
    pub(crate) fn start_retention(
        &mut self,
        store: Counted,
        clock: Arc<dyn Clock>,
        keep: Duration,
        dedup_window: Duration,
    ) {
        let policy = crate::app::retention::RetentionPolicy::new(keep, dedup_window);
        let stop = self.retention_stop.clone();
        self.retention = Some(tokio::spawn(crate::app::retention::run(
            store, clock, policy, stop,
        )));
    }

    /// Stops routing, then flushes the journal, each within `grace`.
    pub(crate) async fn stop(self, grace: Duration) {
        self.disk_stop.cancel();
        if let Some(retention) = self.retention {
            // A step is one short transaction (or one request): it ends quickly.
            self.retention_stop.cancel();
            let _ = tokio::time::timeout(grace, retention).await;
        }
        if let Some(routing) = self.routing {
            // Undelivered events stay in the outbox and go out after the next start.
            self.routing_stop.cancel();
            let _ = tokio::time::timeout(grace, routing).await;
        }
        if let Some(forwarder) = self.forwarder {
            // Flush the journal while the event store answers, within the grace period; what
            // is left stays in the journal and is forwarded after the next start.
            self.forwarder_stop.cancel();
            let abort = forwarder.abort_handle();
            if tokio::time::timeout(grace, forwarder).await.is_err() {
                abort.abort();
                tracing::warn!("the event store did not take the whole journal within {grace:?}; the rest is forwarded after the next start");
            }
        }
    }
}

/// Keys, rate limits, proxies and origins for the HTTP guard; warns when the server is open
/// beyond loopback.
fn gate(
    settings: &Settings,
    proxies: TrustedProxies,
    local_addr: SocketAddr,
    metrics: &Metrics,
) -> Result<Gate, StartupError> {
    let access =
        Access::from_settings(settings).map_err(|e| StartupError::Security(e.to_string()))?;
    let mut rate_limits = RateLimits::new(settings, &access).map_err(StartupError::Security)?;
    if let Some(shared) = shared_limits(settings, metrics)? {
        rate_limits = rate_limits.with_shared(shared);
    }
    let allowed_origins = allowed_origins(settings, &access)?;
    if access.is_open() && !local_addr.ip().is_loopback() {
        tracing::warn!(
            addr = %local_addr,
            "no keys are configured and the server listens beyond loopback: anyone who can \
             reach it may send, read and administer; set CARTSTREAM_API_KEYS, \
             CARTSTREAM_READ_KEYS and CARTSTREAM_ADMIN_KEY (README: Running it on the internet)"
        );
    }
    Ok(Gate {
        access: Arc::new(access),
        rate_limits: Arc::new(rate_limits),
        proxies,
        allowed_origins,
    })
}

/// The shared (Redis) buckets of the event rate limits, unless they are to stay local:
/// `rate_limit_scope`, by default global when Redis is configured.
fn shared_limits(
    settings: &Settings,
    metrics: &Metrics,
) -> Result<Option<SharedLimits>, StartupError> {
    let redis = settings.redis_url.as_deref();
    let cluster = &settings.redis_cluster_nodes;
    let configured = redis.is_some() || !cluster.is_empty();
    let scope = settings.rate_limit_scope.unwrap_or(if configured {
        RateLimitScope::Global
    } else {
        RateLimitScope::Local
    });
    let (prefix, connect, timeout) = (
        settings.rate_limit_key_prefix.clone(),
        settings.redis_connect_timeout,
        settings.rate_limit_redis_timeout,
    );
    let buckets = match (scope, redis) {
        (RateLimitScope::Local, _) => return Ok(None),
        // A cluster: the buckets of one request share a hash tag, so one master runs them.
        (RateLimitScope::Global, None) if !cluster.is_empty() => {
            let scripts = ClusterScripts::new(cluster, connect, timeout);
            RedisBuckets::over(Arc::new(scripts.map_err(StartupError::Backend)?), prefix)
        }
        (RateLimitScope::Global, Some(url)) => {
            RedisBuckets::single(url, prefix, connect, timeout).map_err(StartupError::Backend)?
        }
        (RateLimitScope::Global, None) => {
            return Err(StartupError::Security(
                "rate_limit_scope (CARTSTREAM_RATE_LIMIT_SCOPE) is global, which needs Redis \
                 (CARTSTREAM_REDIS_URL or CARTSTREAM_REDIS_CLUSTER_NODES)"
                    .into(),
            ))
        }
    };
    Ok(Some(SharedLimits {
        buckets: Arc::new(buckets),
        timeout: settings.rate_limit_redis_timeout,
        fallbacks: metrics.rate_limit_fallbacks.clone(),
    }))
}

/// The forwarder's journal, event store and quarantine, reporting a full disk to `disk`.
fn watched(
    journal: Arc<dyn Journal>,
    remote: Arc<dyn EventStore>,
    quarantine: Arc<dyn Quarantine>,
    disk: &Arc<DiskState>,
) -> (Arc<dyn Journal>, Arc<dyn EventStore>, Arc<dyn Quarantine>) {
    (
        Arc::new(DiskWatched::new(journal, Arc::clone(disk))),
        Arc::new(DiskWatched::new(remote, Arc::clone(disk))),
        Arc::new(DiskWatched::new(quarantine, Arc::clone(disk))),
    )
}

/// The data dir's disk, sampled for `/metrics` and `/ready`.
fn disk_state(settings: &Settings, metrics: &Arc<Metrics>) -> Arc<DiskState> {
    Arc::new(DiskState::new(
        settings.data_dir.clone(),
        Box::new(StatVfs {
            dir: settings.data_dir.clone(),
        }),
        settings.disk_warn_free_percent,
        metrics.disk.clone(),
    ))
}

/// What the HTTP adapter takes from the settings.
fn http_limits(settings: &Settings) -> HttpLimits {
    HttpLimits {
        max_event_body_bytes: settings.max_event_body_bytes,
        max_batch_body_bytes: settings.max_batch_body_bytes,
        max_batch_events: settings.max_batch_events,
        read_max_page_bytes: settings.read_max_page_bytes,
        read_queue_timeout: settings.read_queue_timeout,
        cors_max_age: settings.cors_max_age,
    }
}

/// The WebSocket adapter: what it takes from the settings, the rate limits it shares with
/// the HTTP guard, and fresh lifecycle signals.
fn ws_state(
    settings: &Settings,
    ingest: Ingest,
    gate: &Gate,
    metrics: &Arc<Metrics>,
    clock: Arc<dyn Clock>,
) -> Arc<WsState<Ingest>> {
    let ws_settings = WsSettings {
        max_message_bytes: settings.max_message_bytes,
        max_batch_events: settings.max_batch_events,
        ping_interval: settings.ws_ping_interval,
        max_missed_pings: settings.ws_max_missed_pings,
        max_in_flight: settings.ws_max_in_flight,
        drain_timeout: settings.shutdown_timeout,
    };
    Arc::new(WsState {
        ingest,
        settings: ws_settings,
        rate_limits: Arc::clone(&gate.rate_limits),
        metrics: Arc::clone(metrics),
        clock,
        shutdown: CancellationToken::new(),
        connections: TaskTracker::new(),
    })
}

/// A bound, ready-to-run server.
pub struct Application {
    acceptor: GuardedAcceptor,
    local_addr: SocketAddr,
    http: Arc<HttpState<Ingest>>,
    ws: Arc<WsState<Ingest>>,
    /// How long shutdown waits for each stage to drain.
    grace: Duration,
    committer_stop: CancellationToken,
    committer: tokio::task::JoinHandle<()>,
    background: Background,
    /// Held until the application is dropped: no other instance runs on its data dir.
    _data_dir: DataDirLock,
}

/// The tasks that run beside the server (and `cartstream drain`): routing and the forwarder,
/// when configured.
pub(crate) struct Background {
    forwarder_stop: CancellationToken,
    forwarder: Option<tokio::task::JoinHandle<()>>,
    routing_stop: CancellationToken,
    routing: Option<tokio::task::JoinHandle<()>>,
    /// Samples the data dir's free space, when started.
    disk_stop: CancellationToken,
    retention_stop: CancellationToken,
    retention: Option<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Builds the adapters from `settings` and binds the listener.
    ///
    /// # Errors
    /// When the address cannot be bound or the store cannot be opened.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        // Before anything in the data dir is opened.
        let lock = DataDirLock::acquire(&settings.data_dir)?;
        let damage = Arc::new(Damage::default());
        check_at_startup(
            &settings.data_dir,
            settings.integrity_check_timeout,
            &damage,
        )
        .await?;
        let ports = Ports::from_settings(&settings)?;
        Self::assemble(settings, ports, lock, damage).await
    }

    /// Binds the listener and wires the use case to the given ports.
    ///
    /// # Errors
    /// When the data dir is held by another application or the address cannot be bound.
    pub async fn build_with(settings: Settings, ports: Ports) -> Result<Self, StartupError> {
        let lock = DataDirLock::acquire(&settings.data_dir)?;
        Self::assemble(settings, ports, lock, Arc::default()).await
    }

    async fn assemble(
        settings: Settings,
        ports: Ports,
        data_dir: DataDirLock,
        damage: Arc<Damage>,
    ) -> Result<Self, StartupError> {
        let addr = settings.listen;
        let metrics = Arc::new(Metrics::with_tap_buffer(settings.tap_buffer));
        let proxies =
            TrustedProxies::parse(&settings.trusted_proxies).map_err(StartupError::Security)?;
        let acceptor = bind(&settings, proxies.clone(), &metrics).await?;
        let local_addr = acceptor.local_socket_addr().unwrap_or(addr);
        let recorded = Arc::new(Notify::new());
        let disk = disk_state(&settings, &metrics);
        let committer = Committer::new(
            Arc::clone(&ports.dedup),
            Arc::clone(&ports.store),
            Arc::clone(&ports.clock),
            Arc::clone(&metrics),
            DedupPolicy {
                window: settings.dedup_window,
                hold: settings.dedup_hold,
                outage: settings.dedup_outage,
            },
            Arc::clone(&recorded),
        )
        .with_disk(Arc::clone(&disk));
        let committer_stop = CancellationToken::new();
        let (ingest, committer) = Ingest::start(
            committer,
            settings.validation_policy(),
            settings.ingest_max_batch,
            committer_stop.clone(),
        );
        let routing = routing(&settings, &ports, &recorded, &metrics, Some(&disk))?;
        let forwarding = ports.forwarding.as_ref().map(Forwarding::view);
        let mut background = Background::start(
            routing.as_ref(),
            ports.forwarding,
            &metrics,
            Arc::clone(&ports.clock),
            Some(&disk),
        );
        if let (Some(store), Some(keep)) = (ports.retention, settings.retention) {
            tracing::info!(retention = ?keep, "retention: events older than this are deleted in the background");
            let store: Arc<dyn Retention> = Arc::new(DiskWatched::new(store, Arc::clone(&disk)));
            background.start_retention(
                Counted::new(store, ports.store_kind, &metrics),
                Arc::clone(&ports.clock),
                keep,
                settings.dedup_window,
            );
        }
        let gate = gate(&settings, proxies, local_addr, &metrics)?;
        let ws = ws_state(&settings, ingest.clone(), &gate, &metrics, ports.clock);
        let backends = Backends {
            store: ports.store,
            dedup: ports.dedup,
            store_kind: ports.store_kind,
            dedup_kind: ports.dedup_kind,
            reads: Arc::new(Semaphore::new(settings.read_max_concurrency)),
            disk: Some(disk),
            damage,
            forwarding,
        };
        let http = Arc::new(HttpState {
            ingest,
            limits: http_limits(&settings),
            gate,
            backends,
            metrics,
            routing: routing.map(|r| r as Arc<dyn RouteAdmin>),
        });
        Ok(Self {
            acceptor,
            local_addr,
            http,
            ws,
            grace: settings.shutdown_timeout,
            committer_stop,
            committer,
            background,
            _data_dir: data_dir,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The OpenAPI document this server serves.
    pub fn openapi_document(&self) -> String {
        http::openapi_document(Arc::clone(&self.http))
    }

    /// Serves until `shutdown` resolves, then: stops accepting, answers every message already
    /// received, closes WebSockets with 1001, commits what was submitted, and returns.
    ///
    /// # Errors
    /// When the server fails to run.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let grace = self.grace;
        let token = self.ws.shutdown.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: draining connections");
            token.cancel();
        };
        let routes = http::routes(
            Arc::clone(&self.http),
            ws::endpoint(Arc::clone(&self.ws)),
            mounts(&self.http, &self.ws),
        );
        let result = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(routes, signal, Some(grace))
            .await;
        let connections = &self.ws.connections;
        connections.close();
        if tokio::time::timeout(grace, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("some WebSocket connections did not drain within {grace:?}");
        }
        self.committer_stop.cancel();
        let _ = self.committer.await;
        self.background.stop(grace).await;
        tracing::info!("stopped");
        result
    }
}

/// The tap and the live view, mounted by the HTTP adapter.
fn mounts<U>(http: &HttpState<U>, ws: &WsState<U>) -> http::Mounts {
    let tap = Arc::new(TapState {
        tap: Arc::clone(&http.metrics.tap),
        access: Arc::clone(&http.gate.access),
        rate_limits: Arc::clone(&http.gate.rate_limits),
        metrics: Arc::clone(&http.metrics),
        shutdown: ws.shutdown.clone(),
        connections: ws.connections.clone(),
    });
    http::Mounts {
        tap: Some(tap::endpoint(tap).boxed()),
        live: Some(live::endpoint().boxed()),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod runtime_tests {
    use super::*;

    #[test]
    fn the_runtime_has_the_configured_number_of_workers() {
        let mut settings = Settings::default();
        for n in [1, 3] {
            settings.worker_threads = Some(n);
            assert_eq!(runtime(&settings).unwrap().metrics().num_workers(), n);
        }
    }
}
