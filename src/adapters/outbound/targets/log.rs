//! Route target: each event written to the service's log, for operators who want to see what a
//! route would send. It logs payloads (user ids, metadata), which the service otherwise keeps
//! out of its logs, so it exists only where an operator configures it.

use crate::adapters::event_json::event_json;
use crate::domain::StoredEvent;
use crate::ports::{DeliveryError, RouteTarget};
use serde::Deserialize;

/// The `tracing` target the events are logged under, e.g. for `RUST_LOG` filters.
pub const LOG_TARGET: &str = "cartstream::route_log";

/// `[routes.target]` with `kind = "log"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The level events are logged at; `info` unless set.
    #[serde(default)]
    pub level: LogLevel,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
}

/// [`RouteTarget`] that logs each event's JSON; it never fails.
#[derive(Debug, Clone)]
pub struct LogTarget {
    level: LogLevel,
}

impl LogTarget {
    pub fn new(config: LogConfig) -> Self {
        Self {
            level: config.level,
        }
    }
}

#[async_trait::async_trait]
impl RouteTarget for LogTarget {
    async fn deliver(&self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        for event in events {
            let event = event_json(event);
            // `tracing`'s macros need the level at compile time.
            match self.level {
                LogLevel::Trace => tracing::trace!(target: LOG_TARGET, %event, "routed event"),
                LogLevel::Debug => tracing::debug!(target: LOG_TARGET, %event, "routed event"),
                LogLevel::Info => tracing::info!(target: LOG_TARGET, %event, "routed event"),
                LogLevel::Warn => tracing::warn!(target: LOG_TARGET, %event, "routed event"),
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "log".to_owned()
    }
}
