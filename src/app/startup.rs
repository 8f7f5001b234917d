//! The composition root: settings become adapters once, here, and the server runs until its
//! shutdown future resolves, then drains.

use crate::adapters::inbound::http;
use crate::adapters::outbound::embedded::EmbeddedStore;
use crate::app::config::Settings;
use crate::app::ingest::{Committer, Ingest};
use crate::app::metrics::Metrics;
use crate::app::rate_limit::RateLimits;
use crate::app::state::AppState;
use crate::ports::{Clock, DedupStore, EventStore, PortError, SystemClock};
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::Server;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The outbound side of the application.
pub struct Ports {
    pub store: Arc<dyn EventStore>,
    pub dedup: Arc<dyn DedupStore>,
    pub clock: Arc<dyn Clock>,
    pub store_kind: &'static str,
    pub dedup_kind: &'static str,
}

impl Ports {
    /// The adapters the settings ask for: the embedded store unless backends are configured.
    ///
    /// # Errors
    /// When the embedded store cannot be opened.
    pub fn from_settings(settings: &Settings) -> Result<Self, StartupError> {
        let embedded = EmbeddedStore::open(&settings.data_dir).map_err(StartupError::Store)?;
        Ok(Self {
            store: Arc::new(embedded.clone()),
            dedup: Arc::new(embedded),
            clock: Arc::new(SystemClock),
            store_kind: "embedded",
            dedup_kind: "embedded",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Store(PortError),
}

/// A bound, ready-to-run server.
pub struct Application {
    acceptor: TcpAcceptor,
    local_addr: SocketAddr,
    state: Arc<AppState>,
    committer_stop: CancellationToken,
    committer: tokio::task::JoinHandle<()>,
}

impl Application {
    /// Builds the adapters from `settings` and binds the listener.
    ///
    /// # Errors
    /// When the address cannot be bound or the store cannot be opened.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let ports = Ports::from_settings(&settings)?;
        Self::build_with(settings, ports).await
    }

    /// Binds the listener and wires the use case to the given ports.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn build_with(settings: Settings, ports: Ports) -> Result<Self, StartupError> {
        let addr = settings.listen;
        let acceptor = TcpListener::bind(addr)
            .into_acceptor()
            .await
            .map_err(|source| StartupError::Listen { addr, source })?;
        let local_addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .unwrap_or(addr);
        let metrics = Arc::new(Metrics::new());
        let committer = Committer {
            dedup: Arc::clone(&ports.dedup),
            store: Arc::clone(&ports.store),
            clock: Arc::clone(&ports.clock),
            metrics: Arc::clone(&metrics),
            window: settings.dedup_window,
            hold: settings.dedup_hold,
        };
        let committer_stop = CancellationToken::new();
        let (ingest, committer) = Ingest::start(
            committer,
            settings.validation_policy(),
            settings.ingest_max_batch,
            committer_stop.clone(),
        );
        let state = Arc::new(AppState {
            ingest,
            store: ports.store,
            dedup: ports.dedup,
            store_kind: ports.store_kind,
            dedup_kind: ports.dedup_kind,
            metrics,
            rate_limits: RateLimits::new(
                settings.rate_limit_per_second,
                settings.rate_limit_burst,
                settings.max_batch_events,
            ),
            settings: Arc::new(settings),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
        });
        Ok(Self {
            acceptor,
            local_addr,
            state,
            committer_stop,
            committer,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The OpenAPI document this server serves.
    pub fn openapi_document(&self) -> String {
        http::openapi_document(Arc::clone(&self.state))
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
        let state = self.state;
        let grace = state.settings.shutdown_timeout;
        let token = state.shutdown.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: draining connections");
            token.cancel();
        };
        let result = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(http::routes(Arc::clone(&state)), signal, Some(grace))
            .await;
        state.connections.close();
        if tokio::time::timeout(grace, state.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("some WebSocket connections did not drain within {grace:?}");
        }
        self.committer_stop.cancel();
        let _ = self.committer.await;
        tracing::info!("stopped");
        result
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
