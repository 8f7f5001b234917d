//! Scripts on a Redis Cluster for the rate limits (`redis::rate`): each call's keys share one
//! hash slot, and the call runs on that slot's master through the dedup adapter's [`Router`],
//! so `MOVED`, `ASK`, `TRYAGAIN` and a replica's promotion are followed the same way.

use super::router::{Router, SlotCmd};
use super::script_cmd;
use super::slots::key_slot;
use crate::adapters::outbound::redis::rate::ScriptRunner;
use crate::adapters::outbound::redis::Lua;
use crate::ports::PortError;
use bb8_redis::redis;
use std::fmt;
use std::time::Duration;

/// Runs one-slot scripts on the master that owns their slot.
pub struct ClusterScripts {
    router: Router,
}

impl fmt::Debug for ClusterScripts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterScripts")
            .field("seeds", &self.router.shown())
            .finish_non_exhaustive()
    }
}

impl ClusterScripts {
    /// A router of its own over the cluster at `seeds` (so a rate check is bounded by
    /// `command_timeout`, retries included, and never waits behind a dedup call's longer
    /// one). Touches no network until used.
    ///
    /// # Errors
    /// `Failed` when there is no seed or one cannot be parsed; never with a password in it.
    pub fn new(
        seeds: &[String],
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Self, PortError> {
        Ok(Self {
            router: Router::new(seeds, connect_timeout, command_timeout)?,
        })
    }
}

#[async_trait::async_trait]
impl ScriptRunner for ClusterScripts {
    async fn eval(
        &self,
        script: &Lua,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<i64>, PortError> {
        let Some(first) = keys.first() else {
            return Err(PortError::Failed("a cluster script needs a key".into()));
        };
        let slot = key_slot(first.as_bytes());
        if let Some(other) = keys.iter().find(|k| key_slot(k.as_bytes()) != slot) {
            return Err(PortError::Failed(format!(
                "rate limit keys {first:?} and {other:?} are in different cluster slots"
            )));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cmd: SlotCmd = script_cmd(script, slot, &keys, &args);
        let mut answers = self
            .router
            .run("rate limit", vec![cmd])
            .await
            .map_err(|(_, e)| e)?;
        let answer = answers.pop().unwrap_or(redis::Value::Nil);
        redis::from_redis_value(answer).map_err(|e| {
            PortError::Failed(format!(
                "redis cluster rate limit script answered badly: {e}"
            ))
        })
    }
}
