//! Rate-limit buckets in Redis, shared by every instance: each bucket is one key holding its
//! GCRA theoretical arrival time in microseconds (see `domain::gcra`), and one Lua script
//! checks and debits every bucket a request touches, so a request costs one round trip (one
//! EVALSHA). The script reads the time from Redis (`TIME`), so the instances' own clocks do
//! not matter. A key expires once its bucket is full again, so idle clients leave nothing
//! behind.
//!
//! The script only touches the keys it is given, and the caller gives keys with one hash tag
//! per call, so it runs unchanged on a Redis Cluster node: [`ScriptRunner`] says where a
//! script runs (a single Redis over one multiplexed connection, or whichever cluster node
//! owns the slot).

use super::super::redact::{redact_url, scrub, url_secrets};
use super::Lua;
use crate::domain::gcra::Gcra;
use crate::ports::{PortError, SharedBuckets};
use bb8_redis::redis::aio::MultiplexedConnection;
use bb8_redis::redis::{self, AsyncConnectionConfig, RedisError};
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// ARGV[1] is the number of tokens, ARGV[2] the time in µs (empty: Redis's own `TIME`, the
/// normal case; tests pass a fake time), then per key its interval in µs and its burst. Takes
/// the tokens from every bucket or none, as `domain::gcra::take_all` does, and answers
/// `{1, 0}` (taken) or `{0, wait in µs}`. Times are integers below 2^53, exact in Lua's
/// doubles; `%.0f` writes them back without the exponent `tostring` would use.
const TAKE_LUA: &str = r"
local n = tonumber(ARGV[1])
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  -- Redis before 5 replicates scripts verbatim and refuses a write after TIME without this;
  -- from 7 on it is a no-op.
  if redis.replicate_commands then pcall(redis.replicate_commands) end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tats = {}
local wait = 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[1 + 2 * i])
  local burst = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  local new = tat + n * interval
  local over = new - (now + burst * interval)
  if over > wait then wait = over end
  tats[i] = new
end
if wait > 0 then
  return {0, wait}
end
for i = 1, #KEYS do
  local ttl = math.floor((tats[i] - now) / 1000) + 1
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
end
return {1, 0}
";

static TAKE: LazyLock<Lua> = LazyLock::new(|| Lua::new(TAKE_LUA));

/// Where a script runs. Every key of one call shares a hash slot, so a single Redis and a
/// Redis Cluster (the node that owns the slot) can both run it in one round trip.
#[async_trait::async_trait]
pub trait ScriptRunner: Send + Sync {
    /// Runs `script` with `keys` and `args` and returns its array of integers.
    ///
    /// # Errors
    /// `Unavailable` when Redis cannot answer (down, slow, refused).
    async fn eval(
        &self,
        script: &Lua,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<i64>, PortError>;
}

/// One multiplexed connection shared by every check, opened on first use and again after it
/// broke. Unlike the pool (which lends a connection to one call for its whole round trip),
/// every check in flight is pipelined on it: a few hundred pipelined WebSocket messages
/// checked at once queued behind a pool of 16 and ran into the timeout.
struct Multiplexed {
    client: redis::Client,
    config: AsyncConnectionConfig,
    conn: tokio::sync::RwLock<Option<MultiplexedConnection>>,
    shown_url: String,
    secrets: Vec<String>,
}

impl Multiplexed {
    fn new(
        url: &str,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Self, PortError> {
        let (shown_url, secrets) = (redact_url(url), url_secrets(url));
        let client = redis::Client::open(url).map_err(|e| {
            PortError::Failed(scrub(&format!("bad Redis URL {shown_url}: {e}"), &secrets))
        })?;
        Ok(Self {
            client,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(command_timeout)),
            conn: tokio::sync::RwLock::new(None),
            shown_url,
            secrets,
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(conn) = self.conn.read().await.as_ref() {
            return Ok(conn.clone());
        }
        let mut slot = self.conn.write().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    fn unavailable(&self, cause: &RedisError) -> PortError {
        PortError::Unavailable(scrub(
            &format!("redis rate limit at {}: {cause}", self.shown_url),
            &self.secrets,
        ))
    }
}

#[async_trait::async_trait]
impl ScriptRunner for Multiplexed {
    async fn eval(
        &self,
        script: &Lua,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<i64>, PortError> {
        let mut conn = self.connection().await.map_err(|e| self.unavailable(&e))?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match script.invoke(&mut conn, &keys, &args).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
                {
                    // A multiplexed connection does not reconnect by itself.
                    *self.conn.write().await = None;
                }
                Err(self.unavailable(&e))
            }
        }
    }
}

/// [`SharedBuckets`] in Redis.
#[derive(Clone)]
pub struct RedisBuckets {
    runner: Arc<dyn ScriptRunner>,
    key_prefix: String,
}

impl fmt::Debug for RedisBuckets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBuckets")
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBuckets {
    /// Buckets in the single Redis at `url`, under `key_prefix`, over one multiplexed
    /// connection of their own (so a slow dedup claim never holds up a rate check). Touches
    /// no network until used. Connecting may take `connect_timeout`, a script
    /// `command_timeout`.
    ///
    /// # Errors
    /// `Failed` when the URL cannot be parsed; the message never contains the password.
    pub fn single(
        url: &str,
        key_prefix: String,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Self, PortError> {
        let runner = Multiplexed::new(url, connect_timeout, command_timeout)?;
        Ok(Self::over(Arc::new(runner), key_prefix))
    }

    /// Buckets run by `runner` (a single Redis, a cluster), under `key_prefix`.
    pub fn over(runner: Arc<dyn ScriptRunner>, key_prefix: String) -> Self {
        Self { runner, key_prefix }
    }

    /// Takes as [`SharedBuckets::take`] does, at a time the caller chooses (µs) instead of
    /// Redis's: for tests that hold the script to the arithmetic of `domain::gcra`.
    ///
    /// # Errors
    /// As [`SharedBuckets::take`].
    pub async fn take_at(
        &self,
        buckets: &[(String, Gcra)],
        n: u32,
        now_us: Option<u64>,
    ) -> Result<Option<Duration>, PortError> {
        if buckets.is_empty() {
            return Ok(None);
        }
        let keys = buckets
            .iter()
            .map(|(k, _)| format!("{}{k}", self.key_prefix))
            .collect();
        let mut args = Vec::with_capacity(2 + 2 * buckets.len());
        args.push(n.to_string());
        args.push(now_us.map(|t| t.to_string()).unwrap_or_default());
        for (_, g) in buckets {
            args.push(g.interval_us().to_string());
            args.push(g.burst().to_string());
        }
        let answer = self.runner.eval(&TAKE, keys, args).await?;
        match answer.as_slice() {
            [1, _] => Ok(None),
            [0, wait] => Ok(Some(Duration::from_micros(
                u64::try_from(*wait).unwrap_or(1).max(1),
            ))),
            other => Err(PortError::Failed(format!(
                "redis rate limit script answered {other:?}"
            ))),
        }
    }
}

#[async_trait::async_trait]
impl SharedBuckets for RedisBuckets {
    async fn take(
        &self,
        buckets: &[(String, Gcra)],
        n: u32,
    ) -> Result<Option<Duration>, PortError> {
        self.take_at(buckets, n, None).await
    }
}
