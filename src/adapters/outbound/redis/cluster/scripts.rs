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

/// One call's keys must share a slot: that slot.
fn slot_of(keys: &[String]) -> Result<u16, PortError> {
    let Some(first) = keys.first() else {
        return Err(PortError::Failed("a cluster script needs a key".into()));
    };
    let slot = key_slot(first.as_bytes());
    match keys.iter().find(|k| key_slot(k.as_bytes()) != slot) {
        Some(other) => Err(PortError::Failed(format!(
            "rate limit keys {first:?} and {other:?} are in different cluster slots"
        ))),
        None => Ok(slot),
    }
}

fn codes(answer: redis::Value) -> Result<Vec<i64>, PortError> {
    redis::from_redis_value(answer).map_err(|e| {
        PortError::Failed(format!(
            "redis cluster rate limit script answered badly: {e}"
        ))
    })
}

#[async_trait::async_trait]
impl ScriptRunner for ClusterScripts {
    async fn eval(
        &self,
        script: &Lua,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<i64>, PortError> {
        self.eval_many(script, vec![(keys, args)])
            .await
            .pop()
            .unwrap_or_else(|| Err(PortError::Failed("no answer".into())))
    }

    /// One command per call, each on its slot's master: one pipeline per master, all masters
    /// at once. A call whose master did not answer in time gets the router's error; the
    /// others keep their answers.
    async fn eval_many(
        &self,
        script: &Lua,
        calls: Vec<(Vec<String>, Vec<String>)>,
    ) -> Vec<Result<Vec<i64>, PortError>> {
        let mut out: Vec<Result<Vec<i64>, PortError>> = Vec::with_capacity(calls.len());
        let mut cmds: Vec<SlotCmd> = Vec::new();
        let mut sent: Vec<usize> = Vec::new();
        for (keys, args) in &calls {
            match slot_of(keys) {
                Ok(slot) => {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    cmds.push(script_cmd(script, slot, keys, &args));
                    sent.push(out.len());
                    out.push(Ok(Vec::new()));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        if cmds.is_empty() {
            return out;
        }
        match self.router.run("rate limit", cmds).await {
            Ok(answers) => {
                for (i, a) in sent.into_iter().zip(answers) {
                    out[i] = codes(a);
                }
            }
            Err((answers, e)) => {
                for (i, a) in sent.into_iter().zip(answers) {
                    out[i] = a.map_or_else(|| Err(e.clone()), codes);
                }
            }
        }
        out
    }

    fn one_slot_per_call(&self) -> bool {
        true
    }
}
