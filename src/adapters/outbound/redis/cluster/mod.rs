//! Dedup state on Redis Cluster, with the single-node adapter's keys, scripts and contract.
//!
//! A script may only touch keys of one hash slot, and a claim must read the lease key of
//! whoever holds an event key. So a lease has one key per slot its group touches,
//! `{T}<prefix>#<lease id>`, where `T` is a short tag whose slot is that slot (one per slot,
//! computed once): the lease keys of every holder of a slot's event keys are then in that
//! slot too. Event keys stay `<prefix><eventId>`, in whatever slot Redis puts them.
//!
//! - claim: per slot, the single-node claim script on that slot's event keys, with that slot's
//!   lease key and lease prefix;
//! - confirm: per slot, `SET {T}<prefix>#<id> c PX window`;
//! - release: per slot, the single-node release script.
//!
//! The commands of a call are grouped by the master that owns their slot: one pipeline per
//! master, all masters at once (see `router.rs`). A group of `k` keys costs one round trip
//! however many masters it spans, and the slots it spans set how many commands those
//! pipelines carry: at most `min(k, 16384)`, so a confirm costs a `SET` per slot instead of one
//! per group; with `buckets = n`, at most `n` (docs/backends.md has the measurements).
//!
//! When a master cannot answer within the command timeout (down, before its replica takes
//! over), the whole call answers `Unavailable`, so the dedup outage policy decides for the
//! whole group, not only for that master's keys. What a failed claim took on the other masters
//! is released at once (or lapses after the hold), so its retry is never a false duplicate.

mod router;
pub mod scripts;
pub(crate) mod slots;

use super::{claim_of, lease_value, millis, Lua, CLAIM, LEASE_MARK, RELEASE};
use crate::domain::DedupKey;
use crate::ports::{Claim, DedupStore, Lease, PortError};
use bb8_redis::redis::{self, Cmd, Value};
use router::{Router, SlotCmd};
use slots::{key_slot, slot_tag, SLOTS};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Where and how to reach a Redis Cluster.
#[derive(Clone)]
pub struct RedisClusterDedupConfig {
    /// `redis://[user:password@]host:port` of some of the cluster's nodes; the others are
    /// found with `CLUSTER SLOTS`. Every node is reached with the first seed's credentials.
    pub seeds: Vec<String>,
    /// Prepended to every key, as for a single Redis.
    pub key_prefix: String,
    /// `0`: event keys are `<prefix><eventId>`, in whatever slot Redis puts them, so a group
    /// of `k` keys spans about `k` slots. `n`: event keys are `<prefix>{T}<eventId>`, `T` the
    /// tag of one of `n` slots spread evenly over the 16384 (chosen by the event id), so a
    /// group spans at most `n` slots, and a confirm costs at most `n` `SET`s; the cluster is
    /// then balanced in steps of `1/n`. Changing it forgets the window, as a new prefix does.
    pub buckets: u16,
    /// How long to wait for a connection to a node.
    pub connect_timeout: Duration,
    /// How long one call may take, redirections and failover retries included, before
    /// answering `Unavailable`.
    pub command_timeout: Duration,
}

impl RedisClusterDedupConfig {
    /// The defaults for everything but the seeds.
    pub fn new(seeds: Vec<String>) -> Self {
        Self {
            seeds,
            key_prefix: "cartstream:dedup:".to_owned(),
            buckets: 0,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for RedisClusterDedupConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seeds: Vec<String> = self
            .seeds
            .iter()
            .map(|s| super::super::redact::redact_url(s))
            .collect();
        f.debug_struct("RedisClusterDedupConfig")
            .field("seeds", &seeds)
            .field("key_prefix", &self.key_prefix)
            .field("buckets", &self.buckets)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// [`DedupStore`] over a Redis Cluster.
#[derive(Clone)]
pub struct RedisClusterDedupStore {
    inner: Arc<Inner>,
}

struct Inner {
    router: Router,
    key_prefix: String,
    buckets: u16,
}

impl fmt::Debug for RedisClusterDedupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterDedupStore")
            .field("seeds", &self.inner.router.shown())
            .field("key_prefix", &self.inner.key_prefix)
            .finish_non_exhaustive()
    }
}

/// A group's keys in one slot, as the scripts take them: the lease's key for the slot first.
struct SlotKeys {
    slot: u16,
    /// Indexes into the caller's keys, in order.
    index: Vec<usize>,
    /// The slot's lease key, then the event keys.
    script_keys: Vec<String>,
}

impl RedisClusterDedupStore {
    /// Builds the store without touching the network, like the single-node one.
    ///
    /// # Errors
    /// `Failed` when there is no seed or one cannot be parsed; never with a password in it.
    pub fn new(config: RedisClusterDedupConfig) -> Result<Self, PortError> {
        let router = Router::new(
            &config.seeds,
            config.connect_timeout,
            config.command_timeout,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                router,
                key_prefix: config.key_prefix,
                buckets: config.buckets.min(SLOTS),
            }),
        })
    }

    /// `{T}<prefix>#`: the start of every lease key in `slot`.
    fn leases_in(&self, slot: u16) -> String {
        format!(
            "{{{}}}{}{LEASE_MARK}",
            slot_tag(slot),
            self.inner.key_prefix
        )
    }

    /// An event's key: `<prefix><eventId>`, or with buckets `<prefix>{T}<eventId>`.
    fn event_key(&self, k: &DedupKey) -> String {
        let (prefix, id) = (&self.inner.key_prefix, k.as_str());
        match u32::from(self.inner.buckets) {
            0 => format!("{prefix}{id}"),
            n => {
                let bucket = u32::from(key_slot(id.as_bytes())) % n;
                // Spread evenly, so buckets spread over masters as the slots do.
                let slot = u16::try_from(bucket * u32::from(SLOTS) / n).unwrap_or(0);
                format!("{prefix}{{{}}}{id}", slot_tag(slot))
            }
        }
    }

    /// The group's keys per slot, slots in ascending order.
    fn by_slot(&self, lease: &Lease, keys: &[DedupKey]) -> Vec<SlotKeys> {
        let id = lease_value(lease);
        let mut slots: BTreeMap<u16, SlotKeys> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            let key = self.event_key(k);
            let slot = key_slot(key.as_bytes());
            let entry = slots.entry(slot).or_insert_with(|| SlotKeys {
                slot,
                index: Vec::new(),
                script_keys: vec![format!("{}{id}", self.leases_in(slot))],
            });
            entry.index.push(i);
            entry.script_keys.push(key);
        }
        slots.into_values().collect()
    }

    /// Runs `cmds`, each on its slot's master.
    async fn run(&self, what: &str, cmds: Vec<SlotCmd>) -> Result<Vec<Value>, PortError> {
        self.inner.router.run(what, cmds).await.map_err(|(_, e)| e)
    }

    /// Frees, in the background, the slots of a claim that answered: its other slots could
    /// not, so the claim as a whole answers `Unavailable` and must leave nothing held.
    fn undo_claim(&self, lease: &Lease, groups: &[SlotKeys], answered: &[Option<Value>]) {
        let id = lease_value(lease);
        let cmds: Vec<SlotCmd> = groups
            .iter()
            .zip(answered)
            .filter(|(_, a)| a.is_some())
            .map(|(g, _)| script_cmd(&RELEASE, g.slot, &g.script_keys, &[id.as_str()]))
            .collect();
        if cmds.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            // If this fails too, the hold runs out: until then retries see `InFlight`.
            if let Err(e) = this.run("release after a failed claim", cmds).await {
                tracing::warn!(cause = %e, "releasing a partial cluster claim failed");
            }
        });
    }
}

/// `EVALSHA` of `lua` on `keys` (all in `slot`), with `EVAL` as its `NOSCRIPT` fallback.
fn script_cmd(lua: &Lua, slot: u16, keys: &[String], args: &[&str]) -> SlotCmd {
    let call = |command: &str, script: &str| {
        let mut cmd = redis::cmd(command);
        cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
        cmd
    };
    SlotCmd {
        slot,
        cmd: call("EVALSHA", &lua.sha1),
        eval: Some(call("EVAL", lua.source)),
    }
}

/// A claim script's codes as claims.
fn claims_of(value: Value, expected: usize) -> Result<Vec<Claim>, PortError> {
    let codes: Vec<u8> = redis::from_redis_value(value)
        .map_err(|e| PortError::Failed(format!("redis cluster claim answered badly: {e}")))?;
    if codes.len() != expected {
        return Err(PortError::Failed(format!(
            "redis cluster claim answered {} results for {expected} keys",
            codes.len()
        )));
    }
    codes.into_iter().map(claim_of).collect()
}

#[async_trait::async_trait]
impl DedupStore for RedisClusterDedupStore {
    async fn claim(&self, lease: &Lease, keys: &[DedupKey]) -> Result<Vec<Claim>, PortError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let groups = self.by_slot(lease, keys);
        let id = lease_value(lease);
        let (hold, window) = (
            millis(lease.hold).to_string(),
            millis(lease.window).to_string(),
        );
        let cmds = groups
            .iter()
            .map(|g| {
                let leases = self.leases_in(g.slot);
                let args = [id.as_str(), &hold, &window, &leases];
                script_cmd(&CLAIM, g.slot, &g.script_keys, &args)
            })
            .collect();
        let answers = match self.inner.router.run("claim", cmds).await {
            Ok(answers) => answers,
            Err((answered, e)) => {
                self.undo_claim(lease, &groups, &answered);
                return Err(e);
            }
        };
        let mut claims = vec![Claim::InFlight; keys.len()];
        for (g, answer) in groups.iter().zip(answers) {
            for (i, c) in g.index.iter().zip(claims_of(answer, g.index.len())?) {
                claims[*i] = c;
            }
        }
        Ok(claims)
    }

    async fn confirm(&self, lease: &Lease, keys: &[DedupKey]) -> Result<(), PortError> {
        if keys.is_empty() {
            return Ok(());
        }
        let window_ms = millis(lease.window);
        let cmds = self
            .by_slot(lease, keys)
            .into_iter()
            .map(|g| {
                let mut cmd = Cmd::new();
                cmd.arg("SET")
                    .arg(&g.script_keys[0])
                    .arg("c")
                    .arg("PX")
                    .arg(window_ms);
                SlotCmd {
                    slot: g.slot,
                    cmd,
                    eval: None,
                }
            })
            .collect();
        self.run("confirm", cmds).await.map(drop)
    }

    async fn release(&self, lease: &Lease, keys: &[DedupKey]) -> Result<(), PortError> {
        if keys.is_empty() {
            return Ok(());
        }
        let id = lease_value(lease);
        let cmds = self
            .by_slot(lease, keys)
            .iter()
            .map(|g| script_cmd(&RELEASE, g.slot, &g.script_keys, &[id.as_str()]))
            .collect();
        self.run("release", cmds).await.map(drop)
    }

    /// Pings every master the slot map names; when one does not answer, reads the map again
    /// (a replica may have taken over) and pings the masters it names.
    async fn check(&self) -> Result<(), PortError> {
        let router = &self.inner.router;
        let ping_all = |masters: Vec<String>| async move {
            let pings = masters.iter().map(|m| router.ping(m)).collect::<Vec<_>>();
            futures_util::future::join_all(pings)
                .await
                .into_iter()
                .collect::<Result<(), PortError>>()
        };
        if ping_all(router.masters(false).await?).await.is_ok() {
            return Ok(());
        }
        ping_all(router.masters(true).await?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_seed_is_reported_without_the_password() {
        let config = RedisClusterDedupConfig::new(vec!["nope://u:hunter2@h".into()]);
        let err = RedisClusterDedupStore::new(config).unwrap_err();
        assert!(matches!(err, PortError::Failed(_)));
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(RedisClusterDedupStore::new(RedisClusterDedupConfig::new(vec![])).is_err());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let cfg = RedisClusterDedupConfig::new(vec!["redis://u:hunter2@127.0.0.1:1".into()]);
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn with_buckets_a_group_spans_at_most_that_many_slots() {
        let mut config = RedisClusterDedupConfig::new(vec!["redis://127.0.0.1:1".into()]);
        config.buckets = 8;
        let store = RedisClusterDedupStore::new(config).unwrap();
        let keys: Vec<DedupKey> = (0..500)
            .map(|i| DedupKey::from(&crate::domain::EventId::parse(&format!("e-{i}")).unwrap()))
            .collect();
        let groups = store.by_slot(
            &Lease {
                id: 1,
                hold: Duration::ZERO,
                window: Duration::ZERO,
            },
            &keys,
        );
        let slots: Vec<u16> = groups.iter().map(|g| g.slot).collect();
        assert_eq!(slots, [0, 2048, 4096, 6144, 8192, 10240, 12288, 14336]);
        for g in &groups {
            assert!(g
                .script_keys
                .iter()
                .all(|k| key_slot(k.as_bytes()) == g.slot));
        }
    }

    #[test]
    fn a_lease_has_one_key_per_slot_and_it_lives_in_that_slot() {
        let store = RedisClusterDedupStore::new(RedisClusterDedupConfig::new(vec![
            "redis://127.0.0.1:1".into(),
        ]))
        .unwrap();
        let lease = Lease {
            id: 7,
            hold: Duration::from_secs(1),
            window: Duration::from_secs(1),
        };
        let ids = ["a", "b", "c", "d", "e"];
        let keys: Vec<DedupKey> = ids
            .iter()
            .map(|k| DedupKey::from(&crate::domain::EventId::parse(k).unwrap()))
            .collect();
        let groups = store.by_slot(&lease, &keys);
        let mut seen: Vec<usize> = groups.iter().flat_map(|g| g.index.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2, 3, 4], "every key in exactly one group");
        for g in &groups {
            for k in &g.script_keys {
                assert_eq!(key_slot(k.as_bytes()), g.slot, "{k}");
            }
            assert!(g.script_keys[0].ends_with(&format!("cartstream:dedup:#{:032x}", 7)));
        }
    }
}
