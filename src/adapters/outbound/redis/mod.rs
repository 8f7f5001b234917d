//! Dedup state in Redis, shared by every cartstream instance.
//!
//! A key's value says its phase: `"p"` while a request holds it (with the hold as its TTL) and
//! `"c"` once its event is recorded (with the dedup window as its TTL). Every call is one round
//! trip for the whole slice: claims and releases are Lua scripts, so each key's
//! check-and-set is atomic; confirmations are a pipeline.
//!
//! The scripts touch many keys at once, which Redis Cluster only allows when they hash to one
//! slot; this adapter targets a single Redis (or a replicated primary), like the default setup.
//!
//! Like the embedded store, a hold is not owned by the request that took it: `release` frees any
//! held key. So `hold` must outlast the slowest claim-to-confirm path; a request that overruns
//! its hold and then releases could free a key another request has claimed since. And when a
//! claim times out, Redis may still have taken its holds; they lapse after `hold`, and retries
//! meanwhile see `InFlight`, never a false `Duplicate`.

pub(crate) mod pool;

use super::redact::redact_url;
use crate::domain::DedupKey;
use crate::ports::{Claim, DedupStore, PortError};
use bb8_redis::redis::aio::MultiplexedConnection;
use bb8_redis::redis::{self, FromRedisValue, RedisError};
use pool::{PoolSettings, RedisPool};
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Per key: `SET key "p" NX PX hold`; when the key exists, its value tells a confirmed event
/// (`"c"`) from one still held (`"p"`). Returns 0 (new), 1 (duplicate) or 2 (in flight) per key.
/// A value this adapter never writes counts as in flight: neither `accepted` nor `duplicate`
/// would be a safe answer for it.
const CLAIM_LUA: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, 'p', 'NX', 'PX', ARGV[1]) then
    out[i] = 0
  elseif redis.call('GET', key) == 'c' then
    out[i] = 1
  else
    out[i] = 2
  end
end
return out
"#;

/// Deletes only keys still held: a key confirmed meanwhile (by this or any instance) stays.
const RELEASE_LUA: &str = r#"
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == 'p' then
    n = n + redis.call('DEL', key)
  end
end
return n
"#;

static CLAIM: LazyLock<Lua> = LazyLock::new(|| Lua::new(CLAIM_LUA));
static RELEASE: LazyLock<Lua> = LazyLock::new(|| Lua::new(RELEASE_LUA));

/// A script sent as EVALSHA, so a call carries 40 bytes instead of the script. Redis answers
/// NOSCRIPT when it has not seen the script (first use, restart, failover); then EVAL runs it
/// and caches it server-side, so that costs one more round trip once per server.
struct Lua {
    source: &'static str,
    sha1: String,
}

impl Lua {
    fn new(source: &'static str) -> Self {
        use sha1::Digest as _;
        Self {
            source,
            sha1: hex::encode(sha1::Sha1::digest(source.as_bytes())),
        }
    }

    async fn invoke<T: FromRedisValue>(
        &self,
        conn: &mut MultiplexedConnection,
        keys: &[String],
        args: &[u64],
    ) -> Result<T, RedisError> {
        let call = |command: &str, script: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        match call("EVALSHA", &self.sha1).query_async(conn).await {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                call("EVAL", self.source).query_async(conn).await
            }
            other => other,
        }
    }
}

/// Where and how to reach Redis.
#[derive(Clone)]
pub struct RedisDedupConfig {
    /// `redis://[user:password@]host:port[/db]` (no TLS support is compiled in), or
    /// `redis+unix:///path/to/socket`.
    pub url: String,
    /// Prepended to every key, e.g. `cartstream:dedup:`, so several deployments (or tests) can
    /// share one Redis.
    pub key_prefix: String,
    /// Most connections the pool opens. Connections are multiplexed, so a few go a long way.
    pub pool_size: u32,
    /// How long to wait for a connection before answering `Unavailable`.
    pub connect_timeout: Duration,
    /// How long one call (script or pipeline) may take before answering `Unavailable`.
    pub command_timeout: Duration,
}

impl RedisDedupConfig {
    /// The defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "cartstream:dedup:".to_owned(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for RedisDedupConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDedupConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// [`DedupStore`] over a bb8 pool of multiplexed Redis connections.
#[derive(Clone)]
pub struct RedisDedupStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: RedisPool,
    key_prefix: String,
}

impl fmt::Debug for RedisDedupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDedupStore")
            .field("url", &self.inner.pool.shown_url())
            .field("key_prefix", &self.inner.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisDedupStore {
    /// Builds the store without touching the network: connections open on first use, so a
    /// Redis that is down at startup makes calls answer `Unavailable` instead of crashing the
    /// process (the readiness probe reports it).
    ///
    /// # Errors
    /// `Failed` when the URL cannot be parsed; the message never contains the password.
    pub fn new(config: RedisDedupConfig) -> Result<Self, PortError> {
        let pool = RedisPool::new(&PoolSettings {
            url: &config.url,
            pool_size: config.pool_size,
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                key_prefix: config.key_prefix,
            }),
        })
    }

    fn full_keys(&self, keys: &[DedupKey]) -> Vec<String> {
        keys.iter()
            .map(|k| format!("{}{}", self.inner.key_prefix, k.as_str()))
            .collect()
    }
}

fn millis(d: Duration) -> u64 {
    // PX 0 is an error in Redis; a zero duration means "expire as soon as possible".
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait::async_trait]
impl DedupStore for RedisDedupStore {
    async fn claim(&self, keys: &[DedupKey], hold: Duration) -> Result<Vec<Claim>, PortError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full = self.full_keys(keys);
        let hold_ms = millis(hold);
        let codes: Vec<u8> = self
            .inner
            .pool
            .run("claim", |mut conn| async move {
                CLAIM.invoke(&mut conn, &full, &[hold_ms]).await
            })
            .await?;
        if codes.len() != keys.len() {
            return Err(PortError::Failed(format!(
                "redis claim answered {} results for {} keys",
                codes.len(),
                keys.len()
            )));
        }
        codes
            .into_iter()
            .map(|c| match c {
                0 => Ok(Claim::New),
                1 => Ok(Claim::Duplicate),
                2 => Ok(Claim::InFlight),
                other => Err(PortError::Failed(format!(
                    "redis claim answered unknown code {other}"
                ))),
            })
            .collect()
    }

    async fn confirm(&self, keys: &[DedupKey], window: Duration) -> Result<(), PortError> {
        if keys.is_empty() {
            return Ok(());
        }
        let full = self.full_keys(keys);
        let window_ms = millis(window);
        self.inner
            .pool
            .run("confirm", |mut conn| async move {
                let mut pipe = redis::pipe();
                for key in &full {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg("c")
                        .arg("PX")
                        .arg(window_ms)
                        .ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            })
            .await
    }

    async fn release(&self, keys: &[DedupKey]) -> Result<(), PortError> {
        if keys.is_empty() {
            return Ok(());
        }
        let full = self.full_keys(keys);
        self.inner
            .pool
            .run("release", |mut conn| async move {
                RELEASE.invoke::<i64>(&mut conn, &full, &[]).await.map(drop)
            })
            .await
    }

    async fn check(&self) -> Result<(), PortError> {
        self.inner
            .pool
            .run("ping", |mut conn| async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await
            .and_then(|pong| {
                if pong == "PONG" {
                    Ok(())
                } else {
                    Err(PortError::Failed(format!("redis PING answered {pong:?}")))
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_addressed_by_the_sha1_redis_computes() {
        // `redis-cli SCRIPT LOAD "return 1"`
        assert_eq!(
            Lua::new("return 1").sha1,
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }

    #[test]
    fn a_bad_url_is_reported_without_the_password() {
        let err = RedisDedupStore::new(RedisDedupConfig::new("nope://u:hunter2@h")).unwrap_err();
        assert!(matches!(err, PortError::Failed(_)));
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let cfg = RedisDedupConfig::new("redis://u:hunter2@127.0.0.1:1");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
