//! Rate-limit buckets in Redis, shared by every instance: each bucket is one key holding its
//! GCRA theoretical arrival time in microseconds (see `domain::gcra`), and one Lua script
//! checks and debits, request after request, every bucket each request touches. Checks that
//! arrive while a script call is in flight queue and go together in the next call, so under
//! load the calls per second are bounded by the round trip, not by the requests (a request
//! waits at most for the call in flight and its own). The script reads the time from Redis
//! (`TIME`), so the instances' own clocks do not matter. A key expires once its bucket is full
//! again, so idle clients leave nothing behind.
//!
//! The caller gives each request's keys one hash tag, so on a Redis Cluster a batch is one
//! call per slot, pipelined per master by the cluster router in one round trip: a script may
//! only touch one slot's keys (Redis 7's `allow-cross-slot-keys` flag is not used, so this
//! works on every version). [`ScriptRunner`] says where a script runs (a single Redis over
//! one multiplexed connection, or the cluster's masters).

use super::super::redact::{redact_url, scrub, url_secrets};
use super::cluster::slots::key_slot;
use super::Lua;
use crate::domain::gcra::Gcra;
use crate::ports::{PortError, SharedBuckets};
use bb8_redis::redis::aio::MultiplexedConnection;
use bb8_redis::redis::{self, AsyncConnectionConfig, RedisError};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;

/// Takes for a list of requests, in order, each from every one of its buckets or from none,
/// as `domain::gcra::take_all` does. ARGV[1] is the time in µs (empty: Redis's own `TIME`, the
/// normal case; tests pass a fake time), ARGV[2] the number of requests; then per request its
/// number of tokens, its number of keys `m`, and per key its interval in µs and its burst. The
/// requests' keys follow each other in KEYS. Answers per request `1, 0` (taken) or
/// `0, wait in µs`. A request sees what the requests before it took. Times are integers below
/// 2^53, exact in Lua's doubles; `%.0f` writes them back without the exponent `tostring`
/// would use.
const TAKE_LUA: &str = r"
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  -- Redis before 5 replicates scripts verbatim and refuses a write after TIME without this;
  -- from 7 on it is a no-op.
  if redis.replicate_commands then pcall(redis.replicate_commands) end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local out = {}
local a = 3
local k = 0
for q = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[a])
  local m = tonumber(ARGV[a + 1])
  a = a + 2
  local tats = {}
  local wait = 0
  for i = 1, m do
    local interval = tonumber(ARGV[a + 2 * i - 2])
    local burst = tonumber(ARGV[a + 2 * i - 1])
    local tat = tonumber(redis.call('GET', KEYS[k + i]) or '0') or 0
    if tat < now then tat = now end
    local new = tat + n * interval
    local over = new - (now + burst * interval)
    if over > wait then wait = over end
    tats[i] = new
  end
  if wait > 0 then
    out[#out + 1] = 0
    out[#out + 1] = wait
  else
    for i = 1, m do
      local ttl = math.floor((tats[i] - now) / 1000) + 1
      redis.call('SET', KEYS[k + i], string.format('%.0f', tats[i]), 'PX', ttl)
    end
    out[#out + 1] = 1
    out[#out + 1] = 0
  end
  a = a + 2 * m
  k = k + m
end
return out
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

    /// Runs `script` once per call of `calls` (keys, args), all in one round trip where the
    /// runner can (one pipeline per node), and answers each call in order.
    async fn eval_many(
        &self,
        script: &Lua,
        calls: Vec<(Vec<String>, Vec<String>)>,
    ) -> Vec<Result<Vec<i64>, PortError>> {
        let runs = calls
            .into_iter()
            .map(|(keys, args)| self.eval(script, keys, args));
        futures_util::future::join_all(runs).await
    }

    /// Whether one call's keys must share a hash slot (a Redis Cluster): the checks of a
    /// batch are then one call per slot instead of one call.
    fn one_slot_per_call(&self) -> bool {
        false
    }
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

/// At most this many requests go in one script call; more wait for the next call. Bounds how
/// long one script holds Redis (a few hundred µs).
const MAX_BATCH: usize = 512;

/// One request's check: its keys (prefixed) and shapes, and how many tokens.
struct Request {
    keys: Vec<String>,
    /// Per key its interval in µs and its burst.
    shapes: Vec<(u64, u64)>,
    n: u32,
}

/// A request waiting for the next script call, and where its answer goes.
struct Waiting {
    request: Request,
    answer: oneshot::Sender<Result<Option<Duration>, PortError>>,
}

/// Checks waiting for the call in flight to return.
#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// Whether a call (the task sending them) is in flight.
    running: bool,
}

/// [`SharedBuckets`] in Redis. Checks that arrive while a script call is in flight wait for
/// it and then go together in the next call (on a cluster, one call per slot, all pipelined
/// per master in one round trip), as a group commit does: under load the calls per second
/// stay bounded by the round trip, not by the requests.
#[derive(Clone)]
pub struct RedisBuckets {
    runner: Arc<dyn ScriptRunner>,
    key_prefix: String,
    queue: Arc<Mutex<Queue>>,
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
        Self {
            runner,
            key_prefix,
            queue: Arc::default(),
        }
    }

    fn request(&self, buckets: &[(String, Gcra)], n: u32) -> Request {
        Request {
            keys: buckets
                .iter()
                .map(|(k, _)| format!("{}{k}", self.key_prefix))
                .collect(),
            shapes: buckets
                .iter()
                .map(|(_, g)| (g.interval_us(), g.burst()))
                .collect(),
            n,
        }
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
        let mut answers = self.take_many_at(&[(buckets.to_vec(), n)], now_us).await;
        answers.pop().unwrap_or(Ok(None))
    }

    /// Takes for every request of `requests` (buckets, tokens) in order, in one batch as the
    /// queue sends it, at `now_us` (or Redis's time): for tests, as [`Self::take_at`].
    pub async fn take_many_at(
        &self,
        requests: &[(Vec<(String, Gcra)>, u32)],
        now_us: Option<u64>,
    ) -> Vec<Result<Option<Duration>, PortError>> {
        let batch: Vec<Request> = requests
            .iter()
            .map(|(buckets, n)| self.request(buckets, *n))
            .collect();
        run_batch(&*self.runner, &batch, now_us).await
    }

    /// Sends the waiting checks, a batch per call, until none is left.
    async fn drain(runner: Arc<dyn ScriptRunner>, queue: Arc<Mutex<Queue>>) {
        loop {
            let batch: Vec<Waiting> = {
                let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
                if q.waiting.is_empty() {
                    q.running = false;
                    return;
                }
                let take = q.waiting.len().min(MAX_BATCH);
                q.waiting.drain(..take).collect()
            };
            let (requests, answers): (Vec<Request>, Vec<_>) =
                batch.into_iter().map(|w| (w.request, w.answer)).unzip();
            let got = run_batch(&*runner, &requests, None).await;
            for (answer, result) in answers.into_iter().zip(got) {
                // The caller may have stopped waiting (its timeout): nothing to do then.
                let _ = answer.send(result);
            }
        }
    }
}

/// Runs `batch` as one script call, or on a cluster one per slot (in one round trip), and
/// answers each request in order.
async fn run_batch(
    runner: &dyn ScriptRunner,
    batch: &[Request],
    now_us: Option<u64>,
) -> Vec<Result<Option<Duration>, PortError>> {
    let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, r) in batch.iter().enumerate() {
        let slot = match (runner.one_slot_per_call(), r.keys.first()) {
            (true, Some(k)) => key_slot(k.as_bytes()),
            _ => 0,
        };
        groups.entry(slot).or_default().push(i);
    }
    let now = now_us.map(|t| t.to_string()).unwrap_or_default();
    let calls: Vec<(Vec<String>, Vec<String>)> = groups
        .values()
        .map(|idx| {
            let mut keys = Vec::new();
            let mut args = vec![now.clone(), idx.len().to_string()];
            for r in idx.iter().map(|&i| &batch[i]) {
                keys.extend(r.keys.iter().cloned());
                args.push(r.n.to_string());
                args.push(r.keys.len().to_string());
                for (interval, burst) in &r.shapes {
                    args.push(interval.to_string());
                    args.push(burst.to_string());
                }
            }
            (keys, args)
        })
        .collect();
    let mut out: Vec<Result<Option<Duration>, PortError>> =
        (0..batch.len()).map(|_| Ok(None)).collect();
    let answers = runner.eval_many(&TAKE, calls).await;
    for (idx, answer) in groups.values().zip(answers) {
        match answer {
            Ok(codes) if codes.len() == 2 * idx.len() => {
                for (&i, pair) in idx.iter().zip(codes.chunks(2)) {
                    out[i] = verdict(pair);
                }
            }
            Ok(codes) => {
                let e = PortError::Failed(format!(
                    "redis rate limit script answered {} codes for {} requests",
                    codes.len(),
                    idx.len()
                ));
                idx.iter().for_each(|&i| out[i] = Err(e.clone()));
            }
            Err(e) => idx.iter().for_each(|&i| out[i] = Err(e.clone())),
        }
    }
    out
}

/// One request's answer from its two codes.
fn verdict(pair: &[i64]) -> Result<Option<Duration>, PortError> {
    match pair {
        [1, _] => Ok(None),
        [0, wait] => Ok(Some(Duration::from_micros(
            u64::try_from(*wait).unwrap_or(1).max(1),
        ))),
        other => Err(PortError::Failed(format!(
            "redis rate limit script answered {other:?}"
        ))),
    }
}

#[async_trait::async_trait]
impl SharedBuckets for RedisBuckets {
    async fn take(
        &self,
        buckets: &[(String, Gcra)],
        n: u32,
    ) -> Result<Option<Duration>, PortError> {
        if buckets.is_empty() {
            return Ok(None);
        }
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.waiting.push(Waiting {
                request: self.request(buckets, n),
                answer,
            });
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            // A task of its own, so a caller that stops waiting never strands the others.
            tokio::spawn(Self::drain(
                Arc::clone(&self.runner),
                Arc::clone(&self.queue),
            ));
        }
        answered
            .await
            .unwrap_or_else(|_| Err(PortError::Unavailable("rate limit batch lost".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers every request "taken" after a pause, counting calls and requests.
    #[derive(Default)]
    struct Slow {
        calls: AtomicUsize,
        requests: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl ScriptRunner for Slow {
        async fn eval(
            &self,
            _script: &Lua,
            _keys: Vec<String>,
            args: Vec<String>,
        ) -> Result<Vec<i64>, PortError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let n: usize = args[1].parse().unwrap();
            self.requests.fetch_add(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok([1, 0].repeat(n))
        }
    }

    #[tokio::test]
    async fn checks_that_arrive_during_a_call_go_together_in_the_next() {
        let runner = Arc::new(Slow::default());
        let buckets = RedisBuckets::over(runner.clone(), "p:".into());
        let g = Gcra::new(10, 10).unwrap();
        let check = |i: usize| {
            let buckets = buckets.clone();
            async move { buckets.take(&[(format!("{{k:{i}}}:total"), g)], 1).await }
        };
        let first = tokio::spawn(check(0));
        // Let the first call start: the others arrive while it is in flight.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut answers = futures_util::future::join_all((1..100).map(check)).await;
        answers.push(first.await.unwrap());
        assert!(answers.iter().all(|a| *a == Ok(None)));
        assert_eq!(runner.requests.load(Ordering::SeqCst), 100);
        // The first check goes alone; the 99 that queued behind it, in one call.
        assert_eq!(runner.calls.load(Ordering::SeqCst), 2);
    }
}
