//! Route targets: where the routing core delivers accepted events. Each implements
//! [`RouteTarget`]; [`build_target`] turns a route's `[routes.target]` table into one, so the
//! target is chosen by configuration at startup. `docs/routing.md` documents the keys.

pub mod log;
pub mod redis_stream;
pub mod webhook;

pub use log::{LogConfig, LogLevel, LogTarget};
pub use redis_stream::{RedisStreamConfig, RedisStreamTarget};
pub use webhook::{WebhookConfig, WebhookTarget};

use crate::ports::{Clock, PortError, RouteTarget};
use serde::Deserialize;
use std::sync::Arc;

/// A route's `[routes.target]` table, chosen by its `kind` key.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetConfig {
    Webhook(WebhookConfig),
    RedisStream(RedisStreamConfig),
    Log(LogConfig),
}

/// Builds the target `config` describes, without touching the network; call it inside the
/// Tokio runtime (Redis pools need one). `default_redis_url`
/// (the service's `CARTSTREAM_REDIS_URL`) is where a `redis_stream` target without its own
/// `url` writes. `clock` dates webhook signatures.
///
/// # Errors
/// `Failed` when the configuration is invalid (see each target's `new`); messages contain no
/// secrets.
pub fn build_target(
    config: &TargetConfig,
    default_redis_url: Option<&str>,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn RouteTarget>, PortError> {
    Ok(match config {
        TargetConfig::Webhook(c) => Arc::new(WebhookTarget::new(c.clone(), clock)?),
        TargetConfig::RedisStream(c) => {
            Arc::new(RedisStreamTarget::new(c.clone(), default_redis_url)?)
        }
        TargetConfig::Log(c) => Arc::new(LogTarget::new(c.clone())),
    })
}

/// `humantime_serde` for a `timeout` key, naming the key in the error: inside an internally
/// tagged enum serde loses the path, so `"soon"` would otherwise be reported without it.
fn timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    humantime_serde::deserialize(d)
        .map_err(|e: D::Error| serde::de::Error::custom(format!("`timeout`: {e}")))
}

#[cfg(test)]
mod tests;
