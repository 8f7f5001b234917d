//! A bb8 pool of multiplexed Redis connections that every Redis adapter shares the handling of:
//! built without touching the network, bounded waits, broken connections dropped, a down Redis
//! reported at once, and messages that name the server without its password.

use super::super::redact::{redact_url, scrub, url_secrets};
use crate::ports::PortError;
use bb8_redis::bb8::{ManageConnection, Pool, RunError};
use bb8_redis::redis::aio::MultiplexedConnection;
use bb8_redis::redis::{self, AsyncConnectionConfig, RedisError};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// How to reach Redis and how long to wait for it.
pub(crate) struct PoolSettings<'a> {
    pub url: &'a str,
    pub pool_size: u32,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

pub(crate) struct RedisPool {
    pool: Pool<Manager>,
    /// Shared with the manager: why connecting last failed, and who is waiting to hear it.
    connect_failures: Arc<ConnectFailures>,
    command_timeout: Duration,
    /// The URL without its password, for messages.
    shown_url: String,
    /// Scrubbed from every error message, in case a driver ever echoes it.
    secrets: Vec<String>,
}

impl RedisPool {
    /// Builds the pool without touching the network: connections open on first use, so a Redis
    /// that is down at startup makes calls answer `Unavailable` instead of crashing the process.
    ///
    /// # Errors
    /// `Failed` when the URL cannot be parsed; the message never contains the password.
    pub fn new(settings: &PoolSettings<'_>) -> Result<Self, PortError> {
        let shown_url = redact_url(settings.url);
        let secrets = url_secrets(settings.url);
        let client = redis::Client::open(settings.url).map_err(|e| {
            PortError::Failed(scrub(&format!("bad Redis URL {shown_url}: {e}"), &secrets))
        })?;
        let connect_failures = Arc::new(ConnectFailures::default());
        let manager = Manager {
            client,
            // The driver's own defaults (1 s to connect, 0.5 s per reply) would otherwise cut
            // the configured timeouts short.
            connection: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(Some(settings.command_timeout)),
            failures: Arc::clone(&connect_failures),
        };
        let pool = Pool::builder()
            .max_size(settings.pool_size.max(1))
            .min_idle(None)
            .connection_timeout(settings.connect_timeout)
            // A PING per checkout would double the round trips; broken connections are
            // recognised by their errors instead (see `Manager::has_broken`).
            .test_on_check_out(false)
            // Report a refused connection now instead of retrying until the timeout; the
            // caller decides about retries.
            .retry_connection(false)
            .build_unchecked(manager);
        Ok(Self {
            pool,
            connect_failures,
            command_timeout: settings.command_timeout,
            shown_url,
            secrets,
        })
    }

    /// The URL without its password.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// Runs `op` on a pooled connection, bounding the connection wait by the connect timeout
    /// and the command by the command timeout. Every error is `Unavailable`, with a message
    /// that names `what` and the server but not the password.
    pub async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, PortError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        // bb8 connects in a background task and lets `get` wait for the whole timeout even when
        // that task failed at once; listening for the failure answers a down Redis right away.
        let failed = self.connect_failures.notify.notified();
        tokio::pin!(failed);
        failed.as_mut().enable();
        let pooled = tokio::select! {
            got = self.pool.get() => got.map_err(|e| match e {
                RunError::User(e) => self.unavailable(what, &e),
                RunError::TimedOut => self.unavailable(
                    what,
                    &format!("no connection within the connect timeout{}",
                        self.connect_failures.last()),
                ),
            })?,
            () = &mut failed => {
                return Err(self.unavailable(
                    what,
                    &format!("cannot connect{}", self.connect_failures.last()),
                ));
            }
        };
        let result = tokio::time::timeout(self.command_timeout, op(pooled.conn.clone())).await;
        // Still holding `pooled`: a connection marked broken here is dropped by the pool when
        // `pooled` goes, instead of failing the next caller too.
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
                {
                    pooled.broken.store(true, Ordering::Relaxed);
                }
                Err(self.unavailable(what, &e))
            }
            Err(_) => {
                // A reply may still arrive on a multiplexed connection, but one that stalls is
                // not worth keeping.
                pooled.broken.store(true, Ordering::Relaxed);
                Err(self.unavailable(
                    what,
                    &format!("no answer within {:?}", self.command_timeout),
                ))
            }
        }
    }

    fn unavailable(&self, what: &str, cause: &dyn fmt::Display) -> PortError {
        PortError::Unavailable(scrub(
            &format!("redis {what} at {}: {cause}", self.shown_url),
            &self.secrets,
        ))
    }
}

/// A pooled multiplexed connection and whether a command on it failed at the connection level.
/// Multiplexed connections do not reconnect by themselves, so a broken one must leave the pool.
struct Conn {
    conn: MultiplexedConnection,
    broken: AtomicBool,
}

#[derive(Default)]
struct ConnectFailures {
    notify: Notify,
    last: Mutex<Option<String>>,
}

impl ConnectFailures {
    fn record(&self, e: &RedisError) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
        self.notify.notify_waiters();
    }

    /// `": <last error>"`, or nothing.
    fn last(&self) -> String {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    }
}

/// Like `bb8_redis::RedisConnectionManager`, but it drops connections that broke and reports
/// connect failures to waiting callers.
struct Manager {
    client: redis::Client,
    connection: AsyncConnectionConfig,
    failures: Arc<ConnectFailures>,
}

impl ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        match self
            .client
            .get_multiplexed_async_connection_with_config(&self.connection)
            .await
        {
            Ok(conn) => Ok(Conn {
                conn,
                broken: AtomicBool::new(false),
            }),
            Err(e) => {
                self.failures.record(&e);
                Err(e)
            }
        }
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        redis::cmd("PING")
            .query_async::<String>(&mut conn.conn)
            .await
            .map(drop)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        *conn.broken.get_mut()
    }
}
