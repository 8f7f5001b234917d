//! Dedup state in Redis, shared by every cartstream instance.
//!
//! Each claimed event key holds the id of the lease that claimed it, and lives for the dedup
//! window from the claim. The lease's own key, `{prefix}#{lease id}` (`#` is never in an event
//! id), says the phase for all of them at once: `"p"` while held (with the hold as its TTL), `"c"`
//! once the events are recorded (with the window as its TTL, so it outlives its event keys).
//! So a claim costs one `SET NX` per key and a confirmation one `SET` per group, whatever its
//! size. Claims and releases are Lua scripts, so each key's check-and-set is atomic; every call
//! is one round trip.
//!
//! An event key whose lease key is gone was left by a holder that crashed (its hold ran out)
//! or released it: the next claim takes it over. Values `"p"` and `"c"` in event keys, which
//! earlier versions wrote, still read as held and as confirmed.
//!
//! The scripts touch keys they are not given (the lease keys of other holders), which Redis
//! Cluster does not allow; this adapter targets a single Redis (or a replicated primary), like
//! the default setup. [`cluster`] runs the same scripts per hash slot on a Redis Cluster. It also needs Redis not to evict keys (`maxmemory-policy noeviction`, the
//! default): an evicted lease key makes its events look abandoned, so a retry would be recorded
//! twice (the stores absorb that, since inserts are idempotent per event id, but it is not
//! answered `duplicate`).
//!
//! When a holder overruns its hold (a store slower than `hold`), its keys look abandoned and
//! another request may take them over and record the same events again; the stores absorb that
//! as above. When a claim times out, Redis may still have taken its keys; they lapse after
//! `hold`, and retries meanwhile see `InFlight`, never a false `Duplicate`.

pub mod cluster;
pub(crate) mod pool;
pub mod rate;

use super::redact::redact_url;
use crate::domain::DedupKey;
use crate::ports::{Claim, DedupStore, Lease, PortError};
use bb8_redis::redis::{self, FromRedisValue, RedisError, RedisWrite, ToRedisArgs};
use pool::{PoolSettings, RedisPool};
use std::fmt;
use std::io::Write as _;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// KEYS[1] is the lease key, KEYS[2..] the event keys; ARGV is the lease id, the hold and the
/// window in ms, and the prefix of lease keys. Per event key: `SET key id NX PX window`; when the
/// key exists, its holder's lease key tells a confirmed event from one still held, or from one
/// abandoned, which is taken over. Returns one string with a digit per key: `0` (new), `1`
/// (duplicate) or `2` (in flight); one bulk reply is far cheaper to parse than an integer
/// reply per key (about 850 instructions an event with a group's worth of integers). A value
/// this adapter never writes counts as in flight: neither `accepted` nor `duplicate` would be
/// a safe answer for it.
const CLAIM_LUA: &str = r#"
local id, hold, window, leases = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {}
local held = false
for i = 2, #KEYS do
  local key = KEYS[i]
  local code = 0
  if not redis.call('SET', key, id, 'NX', 'PX', window) then
    local holder = redis.call('GET', key)
    if holder == 'c' then
      code = 1
    elseif holder == 'p' or not holder or #holder ~= #id then
      code = 2
    else
      local phase = redis.call('GET', leases .. holder)
      if phase == 'c' then
        code = 1
      elseif phase then
        code = 2
      else
        redis.call('SET', key, id, 'PX', window)
      end
    end
  end
  if code == 0 and not held then
    redis.call('SET', KEYS[1], 'p', 'PX', hold)
    held = true
  end
  out[i - 1] = code
end
return table.concat(out)
"#;

/// KEYS[1] is the lease key, KEYS[2..] the event keys; ARGV[1] is the lease id. Unless the
/// lease was confirmed, deletes it and the event keys it still holds; keys taken over by
/// another lease stay.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == 'c' then
  return 0
end
local n = 0
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    n = n + redis.call('DEL', KEYS[i])
  end
end
redis.call('DEL', KEYS[1])
return n
"#;

static CLAIM: LazyLock<Lua> = LazyLock::new(|| Lua::new(CLAIM_LUA));
static RELEASE: LazyLock<Lua> = LazyLock::new(|| Lua::new(RELEASE_LUA));

/// A script sent as EVALSHA, so a call carries 40 bytes instead of the script. Redis answers
/// NOSCRIPT when it has not seen the script (first use, restart, failover); then EVAL runs it
/// and caches it server-side, so that costs one more round trip once per server.
pub struct Lua {
    source: &'static str,
    sha1: String,
}

impl Lua {
    pub fn new(source: &'static str) -> Self {
        use sha1::Digest as _;
        Self {
            source,
            sha1: hex::encode(sha1::Sha1::digest(source.as_bytes())),
        }
    }

    /// Runs the script on `conn`: EVALSHA, or EVAL when the server has not seen it yet.
    ///
    /// # Errors
    /// Whatever Redis answers.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        conn: &mut (impl redis::aio::ConnectionLike + Send),
        keys: &(impl ToRedisArgs + Sync),
        args: &[&str],
    ) -> Result<T, RedisError> {
        let call = |command: &str, script: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(script).arg(keys.num_of_args()).arg(keys).arg(args);
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

    /// The lease's key, then the event keys, as the scripts take them.
    fn script_keys<'a>(&'a self, lease: &Lease, keys: &'a [DedupKey]) -> ScriptKeys<'a> {
        ScriptKeys {
            lease: self.lease_key(lease),
            prefix: &self.inner.key_prefix,
            keys,
        }
    }

    fn lease_key(&self, lease: &Lease) -> String {
        format!(
            "{}{LEASE_MARK}{}",
            self.inner.key_prefix,
            lease_value(lease)
        )
    }
}

/// A script's keys: the lease's key, then each event key behind the prefix. Each event key is
/// written into the command as it is built, not first into a `String` of its own: a claim
/// has one per event, on the ack path.
struct ScriptKeys<'a> {
    lease: String,
    prefix: &'a str,
    keys: &'a [DedupKey],
}

impl ToRedisArgs for ScriptKeys<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        out.write_arg(self.lease.as_bytes());
        for key in self.keys {
            let mut arg = out.writer_for_next_arg();
            // The writer appends to the command's buffer, which cannot fail.
            let _ = arg.write_all(self.prefix.as_bytes());
            let _ = arg.write_all(key.as_str().as_bytes());
        }
    }

    fn num_of_args(&self) -> usize {
        1 + self.keys.len()
    }
}

/// Between the prefix and a lease id in a lease's key; never part of an event id.
const LEASE_MARK: char = '#';

/// What event keys hold: the lease id as 32 hex digits.
fn lease_value(lease: &Lease) -> String {
    format!("{:032x}", lease.id)
}

/// A claim script's digit for one key.
fn claim_of(code: u8) -> Result<Claim, PortError> {
    match code {
        b'0' => Ok(Claim::New),
        b'1' => Ok(Claim::Duplicate),
        b'2' => Ok(Claim::InFlight),
        other => Err(PortError::Failed(format!(
            "redis claim answered unknown code {:?}",
            char::from(other)
        ))),
    }
}

fn millis(d: Duration) -> u64 {
    // PX 0 is an error in Redis; a zero duration means "expire as soon as possible".
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait::async_trait]
impl DedupStore for RedisDedupStore {
    async fn claim(&self, lease: &Lease, keys: &[DedupKey]) -> Result<Vec<Claim>, PortError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full = self.script_keys(lease, keys);
        let id = lease_value(lease);
        let (hold, window) = (
            millis(lease.hold).to_string(),
            millis(lease.window).to_string(),
        );
        let leases = format!("{}{LEASE_MARK}", self.inner.key_prefix);
        let codes: Vec<u8> = self
            .inner
            .pool
            .run("claim", |mut conn| async move {
                let args = [id.as_str(), &hold, &window, &leases];
                CLAIM.invoke(&mut conn, &full, &args).await
            })
            .await?;
        if codes.len() != keys.len() {
            return Err(PortError::Failed(format!(
                "redis claim answered {} results for {} keys",
                codes.len(),
                keys.len()
            )));
        }
        codes.into_iter().map(claim_of).collect()
    }

    async fn confirm(&self, lease: &Lease, keys: &[DedupKey]) -> Result<(), PortError> {
        if keys.is_empty() {
            return Ok(());
        }
        let key = self.lease_key(lease);
        let window_ms = millis(lease.window);
        self.inner
            .pool
            .run("confirm", |mut conn| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg("c")
                    .arg("PX")
                    .arg(window_ms)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
    }

    async fn release(&self, lease: &Lease, keys: &[DedupKey]) -> Result<(), PortError> {
        if keys.is_empty() {
            return Ok(());
        }
        let full = self.script_keys(lease, keys);
        let id = lease_value(lease);
        self.inner
            .pool
            .run("release", |mut conn| async move {
                RELEASE
                    .invoke::<i64>(&mut conn, &full, &[id.as_str()])
                    .await
                    .map(drop)
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

    #[tokio::test]
    async fn script_keys_are_the_lease_key_then_each_prefixed_event_key() {
        let store = RedisDedupStore::new(RedisDedupConfig::new("redis://127.0.0.1:1")).unwrap();
        let lease = Lease {
            id: 7,
            hold: Duration::from_secs(1),
            window: Duration::from_secs(2),
        };
        let keys: Vec<DedupKey> = ["e-1", "e:2.x_y"]
            .iter()
            .map(|id| DedupKey::of(&crate::domain::fixtures::event(id).cart_event()).unwrap())
            .collect();
        let mut cmd = redis::cmd("EVALSHA");
        let script_keys = store.script_keys(&lease, &keys);
        cmd.arg(&script_keys).arg("after");
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => b"(not a plain argument)".to_vec(),
            })
            .collect();
        let expected: Vec<&[u8]> = vec![
            b"EVALSHA",
            b"cartstream:dedup:#00000000000000000000000000000007",
            b"cartstream:dedup:e-1",
            b"cartstream:dedup:e:2.x_y",
            b"after",
        ];
        assert_eq!(args, expected);
        assert_eq!(script_keys.num_of_args(), 3);
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
