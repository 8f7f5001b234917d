//! Route target: each event appended to a Redis Stream with `XADD`, one pipeline per delivery.
//!
//! An entry's fields are the event's JSON fields (see `adapters::event_json`) flattened: strings
//! as they are, `metadata` as compact JSON text, `sessionId` only when the event has one.

use super::super::redis::pool::{PoolSettings, RedisPool};
use crate::adapters::event_json::event_json;
use crate::domain::StoredEvent;
use crate::ports::{DeliveryError, PortError, RouteTarget};
use bb8_redis::redis;
use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// `[routes.target]` with `kind = "redis_stream"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamConfig {
    /// `redis://[user:password@]host:port[/db]`; defaults to the service's
    /// `CARTSTREAM_REDIS_URL`.
    #[serde(default)]
    pub url: Option<String>,
    /// The stream's key, e.g. `cart-events`.
    pub stream: String,
    /// Entries the stream keeps, trimmed approximately (`MAXLEN ~`): Redis trims whole
    /// macro-nodes, so a stream may hold somewhat more.
    #[serde(default = "default_maxlen")]
    pub maxlen: u64,
    /// Most connections the target opens; they are multiplexed, so a few go a long way.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Bounds both connecting and each pipeline, e.g. `"2s"`.
    #[serde(default = "default_timeout", deserialize_with = "super::timeout")]
    pub timeout: Duration,
}

fn default_maxlen() -> u64 {
    100_000
}

fn default_pool_size() -> u32 {
    4
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

impl RedisStreamConfig {
    /// The defaults for everything but the stream; the URL comes from the service's default.
    pub fn new(stream: impl Into<String>) -> Self {
        Self {
            url: None,
            stream: stream.into(),
            maxlen: default_maxlen(),
            pool_size: default_pool_size(),
            timeout: default_timeout(),
        }
    }
}

impl fmt::Debug for RedisStreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamConfig")
            .field(
                "url",
                &self.url.as_deref().map(super::super::redact::redact_url),
            )
            .field("stream", &self.stream)
            .field("maxlen", &self.maxlen)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// [`RouteTarget`] that appends events to a Redis Stream.
pub struct RedisStreamTarget {
    pool: RedisPool,
    stream: String,
    maxlen: u64,
}

impl fmt::Debug for RedisStreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamTarget")
            .field("url", &self.pool.shown_url())
            .field("stream", &self.stream)
            .field("maxlen", &self.maxlen)
            .finish_non_exhaustive()
    }
}

impl RedisStreamTarget {
    /// Builds the target without touching the network (but within a Tokio runtime, which the
    /// connection pool needs): a Redis that is down at startup makes deliveries fail (and be
    /// retried) instead of stopping the service.
    ///
    /// # Errors
    /// `Failed` when there is no URL (neither `url` nor `default_redis_url`), the URL does not
    /// parse, the stream name is empty, `maxlen` is 0 or `timeout` is zero. Messages never
    /// contain the password.
    pub fn new(
        config: RedisStreamConfig,
        default_redis_url: Option<&str>,
    ) -> Result<Self, PortError> {
        let url = config.url.as_deref().or(default_redis_url).ok_or_else(|| {
            PortError::Failed(
                "redis_stream target needs `url` (or the service's CARTSTREAM_REDIS_URL)"
                    .to_owned(),
            )
        })?;
        if config.stream.is_empty() {
            return Err(PortError::Failed(
                "redis_stream target needs a non-empty `stream`".to_owned(),
            ));
        }
        if config.maxlen == 0 {
            return Err(PortError::Failed(
                "redis_stream `maxlen` must be at least 1".to_owned(),
            ));
        }
        if config.timeout.is_zero() {
            return Err(PortError::Failed(
                "redis_stream `timeout` must be more than 0s".to_owned(),
            ));
        }
        let pool = RedisPool::new(&PoolSettings {
            url,
            pool_size: config.pool_size,
            connect_timeout: config.timeout,
            command_timeout: config.timeout,
        })?;
        Ok(Self {
            pool,
            stream: config.stream,
            maxlen: config.maxlen,
        })
    }
}

/// The stream entry's fields for `event`, in `event_json`'s order.
pub fn stream_fields(event: &StoredEvent) -> Vec<(String, String)> {
    let Value::Object(map) = event_json(event) else {
        unreachable!("event_json returns an object")
    };
    map.into_iter()
        .map(|(name, value)| {
            let text = match value {
                Value::String(s) => s,
                // metadata (an object) as compact JSON text
                other => other.to_string(),
            };
            (name, text)
        })
        .collect()
}

#[async_trait::async_trait]
impl RouteTarget for RedisStreamTarget {
    async fn deliver(&self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for event in events {
            let cmd = pipe
                .cmd("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.maxlen)
                .arg("*");
            for (name, value) in stream_fields(event) {
                cmd.arg(name).arg(value);
            }
        }
        let ids: Vec<String> = self
            .pool
            .run("XADD", |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await
            .map_err(|e| match e {
                // The pool's messages already name the server; the variant adds nothing here.
                PortError::Unavailable(m)
                | PortError::Failed(m)
                | PortError::Full(m)
                | PortError::NoSpace(m)
                | PortError::TimedOut(m) => DeliveryError::retryable(m),
                PortError::Refused(r) => DeliveryError::retryable(r.message),
            })?;
        if ids.len() == events.len() {
            Ok(())
        } else {
            Err(DeliveryError::retryable(format!(
                "redis XADD at {} answered {} ids for {} events",
                self.pool.shown_url(),
                ids.len(),
                events.len()
            )))
        }
    }

    fn describe(&self) -> String {
        format!(
            "redis_stream {} stream={}",
            self.pool.shown_url(),
            self.stream
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Inside a runtime, as at startup: the pool needs one, but not a Redis.
    #[tokio::test]
    async fn building_needs_no_redis_and_describe_hides_the_password() {
        let t = RedisStreamTarget::new(
            RedisStreamConfig::new("cart-events"),
            Some("redis://user:hunter2@127.0.0.1:1/2"),
        )
        .unwrap();
        assert_eq!(
            t.describe(),
            "redis_stream redis://user:***@127.0.0.1:1/2 stream=cart-events"
        );
        assert!(!format!("{t:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn the_configured_url_wins_over_the_default() {
        let mut c = RedisStreamConfig::new("s");
        c.url = Some("redis://10.0.0.1:6380".into());
        let t = RedisStreamTarget::new(c, Some("redis://127.0.0.1:6379")).unwrap();
        assert_eq!(t.describe(), "redis_stream redis://10.0.0.1:6380 stream=s");
    }

    #[tokio::test]
    async fn bad_configs_are_rejected_without_the_password() {
        let none = RedisStreamTarget::new(RedisStreamConfig::new("s"), None).unwrap_err();
        assert!(none.to_string().contains("url"), "{none}");
        let bad = RedisStreamTarget::new(RedisStreamConfig::new("s"), Some("nope://u:hunter2@h"))
            .unwrap_err();
        assert!(!bad.to_string().contains("hunter2"), "{bad}");
        assert!(RedisStreamTarget::new(RedisStreamConfig::new(""), Some("redis://h")).is_err());
        let mut c = RedisStreamConfig::new("s");
        c.maxlen = 0;
        assert!(RedisStreamTarget::new(c, Some("redis://h")).is_err());
        let mut c = RedisStreamConfig::new("s");
        c.timeout = Duration::ZERO;
        assert!(RedisStreamTarget::new(c, Some("redis://h")).is_err());
    }
}
