//! `RedisClusterDedupStore` against the real Redis Cluster (7101-7106 by default), in what is
//! its alone: groups spanning every master, the per-slot lease keys it writes, a crashed holder
//! taken over on several masters, and a slot moving to another master under it (ASK while
//! it migrates, MOVED after). What every dedup store does is in `contract::dedup_store`.

use crate::backends::{redis_cluster_or_skip, redis_cluster_prefix};
use crate::contract::dedup_store::{keys, lease, lease_for};
use bb8_redis::redis::{self, aio::MultiplexedConnection, Value};
use cartstream::adapters::outbound::redis::cluster::{
    RedisClusterDedupConfig, RedisClusterDedupStore,
};
use cartstream::domain::DedupKey;
use cartstream::ports::{Claim, DedupStore};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

fn store(seeds: &[String], prefix: &str) -> RedisClusterDedupStore {
    let mut config = RedisClusterDedupConfig::new(seeds.to_vec());
    config.key_prefix = prefix.to_owned();
    RedisClusterDedupStore::new(config).unwrap()
}

/// The cluster as the test sees it, straight from `CLUSTER SLOTS`, with a connection per
/// master: to read what the store wrote, and to move a slot.
struct Raw {
    /// (first slot, last slot, master's port, master's id)
    ranges: Vec<(u16, u16, u16, String)>,
    conns: HashMap<u16, MultiplexedConnection>,
}

impl Raw {
    async fn new(seeds: &[String]) -> Self {
        let mut any = conn(seeds[0].as_str()).await;
        let slots: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut any)
            .await
            .unwrap();
        let Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS answered {slots:?}")
        };
        let mut raw = Self {
            ranges: Vec::new(),
            conns: HashMap::new(),
        };
        for r in ranges {
            let Value::Array(f) = r else { panic!() };
            let (Value::Int(start), Value::Int(end), Value::Array(m)) = (&f[0], &f[1], &f[2])
            else {
                panic!("{f:?}")
            };
            let (Value::Int(port), Value::BulkString(id)) = (&m[1], &m[2]) else {
                panic!("{m:?}")
            };
            let port = u16::try_from(*port).unwrap();
            let id = String::from_utf8(id.clone()).unwrap();
            raw.ranges.push((
                u16::try_from(*start).unwrap(),
                u16::try_from(*end).unwrap(),
                port,
                id,
            ));
            if let std::collections::hash_map::Entry::Vacant(e) = raw.conns.entry(port) {
                e.insert(conn(&format!("redis://127.0.0.1:{port}")).await);
            }
        }
        raw
    }

    fn masters(&self) -> BTreeSet<u16> {
        self.ranges.iter().map(|r| r.2).collect()
    }

    fn owner(&self, slot: u16) -> u16 {
        self.ranges
            .iter()
            .find(|r| (r.0..=r.1).contains(&slot))
            .unwrap()
            .2
    }

    fn id(&self, port: u16) -> String {
        self.ranges.iter().find(|r| r.2 == port).unwrap().3.clone()
    }

    async fn slot(&mut self, key: &str) -> u16 {
        let c = self.conns.values_mut().next().unwrap();
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(c)
            .await
            .unwrap()
    }

    /// `cmd` on the master owning `key`'s slot.
    async fn on_owner<T: redis::FromRedisValue>(&mut self, key: &str, cmd: &str) -> T {
        let slot = self.slot(key).await;
        let port = self.owner(slot);
        redis::cmd(cmd)
            .arg(key)
            .query_async(self.conns.get_mut(&port).unwrap())
            .await
            .unwrap()
    }

    /// The per-slot lease keys of `lease_id` under `prefix`: every key of that name on every
    /// master (`SCAN`, so nothing is guessed).
    async fn lease_keys(&mut self, prefix: &str, lease_id: u128) -> Vec<String> {
        let pattern = format!("{{*}}{prefix}#{lease_id:032x}");
        let mut found = Vec::new();
        for c in self.conns.values_mut() {
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(10_000)
                    .query_async(c)
                    .await
                    .unwrap();
                found.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        found
    }
}

async fn conn(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `n` event ids.
fn ids(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

fn as_keys(ids: &[String]) -> Vec<DedupKey> {
    keys(&ids.iter().map(String::as_str).collect::<Vec<_>>())
}

#[tokio::test]
async fn a_group_spanning_every_master_is_claimed_confirmed_and_released() {
    let Some(seeds) = redis_cluster_or_skip().await else {
        return;
    };
    let prefix = redis_cluster_prefix();
    let store = store(&seeds, &prefix);
    let mut raw = Raw::new(&seeds).await;
    let ids = ids("span", 200);
    let ks = as_keys(&ids);
    let mut slots = BTreeSet::new();
    let mut masters = BTreeSet::new();
    for id in &ids {
        let slot = raw.slot(&format!("{prefix}{id}")).await;
        slots.insert(slot);
        masters.insert(raw.owner(slot));
    }
    assert_eq!(masters, raw.masters(), "the group spans every master");

    let held = lease_for(Duration::from_secs(60), Duration::from_secs(3600));
    assert!(store
        .claim(&held, &ks)
        .await
        .unwrap()
        .iter()
        .all(|c| *c == Claim::New));
    let lease_keys = raw.lease_keys(&prefix, held.id).await;
    assert_eq!(lease_keys.len(), slots.len(), "one lease key per slot");
    for k in &lease_keys {
        assert_eq!(
            raw.on_owner::<Option<String>>(k, "GET").await.as_deref(),
            Some("p")
        );
    }
    let holder = format!("{:032x}", held.id);
    let first = format!("{prefix}{}", ids[0]);
    assert_eq!(
        raw.on_owner::<Option<String>>(&first, "GET").await,
        Some(holder)
    );
    assert!(
        store
            .claim(&lease(), &ks)
            .await
            .unwrap()
            .iter()
            .all(|c| *c == Claim::InFlight),
        "held on every master"
    );

    store.confirm(&held, &ks).await.unwrap();
    for k in &lease_keys {
        assert_eq!(
            raw.on_owner::<Option<String>>(k, "GET").await.as_deref(),
            Some("c")
        );
        let ttl: i64 = raw.on_owner(k, "PTTL").await;
        assert!(
            ttl > 3_500_000,
            "a confirmed lease key lives the window: {ttl}"
        );
    }
    assert!(store
        .claim(&lease(), &ks)
        .await
        .unwrap()
        .iter()
        .all(|c| *c == Claim::Duplicate));

    let other = as_keys(&self::ids("other", 200));
    let released = lease();
    store.claim(&released, &other).await.unwrap();
    store.release(&released, &other).await.unwrap();
    assert!(
        raw.lease_keys(&prefix, released.id).await.is_empty(),
        "lease keys gone"
    );
    assert!(store
        .claim(&lease(), &other)
        .await
        .unwrap()
        .iter()
        .all(|c| *c == Claim::New));
    store.check().await.unwrap();
}

#[tokio::test]
async fn a_crashed_holder_is_taken_over_on_every_master_and_cannot_take_back() {
    let Some(seeds) = redis_cluster_or_skip().await else {
        return;
    };
    let store = store(&seeds, &redis_cluster_prefix());
    let ks = as_keys(&ids("crash", 60));
    let crashed = lease_for(Duration::from_millis(100), Duration::from_secs(60));
    assert!(store
        .claim(&crashed, &ks)
        .await
        .unwrap()
        .iter()
        .all(|c| *c == Claim::New));
    // Redis expires the hold on its own clock: a real wait.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let taker = lease();
    assert!(
        store
            .claim(&taker, &ks)
            .await
            .unwrap()
            .iter()
            .all(|c| *c == Claim::New),
        "abandoned keys are taken over, never answered duplicate"
    );
    store.release(&crashed, &ks).await.unwrap();
    assert!(store
        .claim(&lease(), &ks)
        .await
        .unwrap()
        .iter()
        .all(|c| *c == Claim::InFlight));
    store.confirm(&taker, &ks).await.unwrap();
    assert!(store
        .claim(&lease(), &ks)
        .await
        .unwrap()
        .iter()
        .all(|c| *c == Claim::Duplicate));
}

/// Moves `slot` from master `from` to master `to` as `redis-cli --cluster reshard` does:
/// IMPORTING / MIGRATING here, then [`finish_move`]: `MIGRATE` every key, `SETSLOT NODE` on
/// every master.
async fn move_slot(raw: &mut Raw, slot: u16, from: u16, to: u16) {
    let (from_id, to_id) = (raw.id(from), raw.id(to));
    setslot(raw, to, slot, &["IMPORTING", &from_id]).await;
    setslot(raw, from, slot, &["MIGRATING", &to_id]).await;
}

async fn finish_move(raw: &mut Raw, slot: u16, from: u16, to: u16) {
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1000)
            .query_async(raw.conns.get_mut(&from).unwrap())
            .await
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query_async(raw.conns.get_mut(&from).unwrap())
            .await
            .unwrap();
    }
    // The target first, then the source, then the others, as redis-cli does.
    let to_id = raw.id(to);
    let others = raw.masters().into_iter().filter(|p| *p != to && *p != from);
    for port in [to, from].into_iter().chain(others.collect::<Vec<_>>()) {
        setslot(raw, port, slot, &["NODE", &to_id]).await;
    }
}

async fn setslot(raw: &mut Raw, port: u16, slot: u16, args: &[&str]) {
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(args)
        .query_async(raw.conns.get_mut(&port).unwrap())
        .await
        .unwrap();
}

/// Puts the slot back where it was, even when the test fails half-way.
struct MoveBack {
    seeds: Vec<String>,
    slot: u16,
    home: u16,
    away: u16,
    done: bool,
}

impl Drop for MoveBack {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (seeds, slot, home, away) = (self.seeds.clone(), self.slot, self.home, self.away);
        // Drop is synchronous and may run while panicking: a runtime of its own, on a thread.
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let mut raw = Raw::new(&seeds).await;
                for port in [home, away] {
                    let _: Result<(), _> = redis::cmd("CLUSTER")
                        .arg("SETSLOT")
                        .arg(slot)
                        .arg("STABLE")
                        .query_async(raw.conns.get_mut(&port).unwrap())
                        .await;
                }
                if raw.owner(slot) != home {
                    move_slot(&mut raw, slot, away, home).await;
                    finish_move(&mut raw, slot, away, home).await;
                }
            });
        })
        .join()
        .unwrap();
    }
}

#[tokio::test]
async fn claims_follow_a_slot_moving_to_another_master_without_an_error() {
    let Some(seeds) = redis_cluster_or_skip().await else {
        return;
    };
    // A hash tag in the prefix puts every event key of this test in one slot (its lease keys
    // follow by construction), so the test moves that slot and no other.
    let prefix = format!("{{{}}}:", redis_cluster_prefix());
    let store = store(&seeds, &prefix);
    let mut raw = Raw::new(&seeds).await;
    let slot = raw.slot(&format!("{prefix}x")).await;
    let home = raw.owner(slot);
    let away = *raw.masters().iter().find(|p| **p != home).unwrap();

    let (confirmed, held, asked) = (lease(), lease(), lease());
    store.claim(&confirmed, &keys(&["a", "b"])).await.unwrap();
    store.confirm(&confirmed, &keys(&["a", "b"])).await.unwrap();
    assert_eq!(
        store.claim(&held, &keys(&["c"])).await.unwrap(),
        [Claim::New]
    );

    let mut back = MoveBack {
        seeds: seeds.clone(),
        slot,
        home,
        away,
        done: false,
    };
    move_slot(&mut raw, slot, home, away).await;
    // Half-moved: the source answers ASK for keys it does not have, and the target TRYAGAIN
    // for a script whose keys it does not all have yet (Redis refuses multi-key commands on a
    // slot being moved). The claim keeps asking until the move is done.
    let during = tokio::spawn({
        let store = store.clone();
        async move { store.claim(&asked, &keys(&["d", "e"])).await }
    });
    // Pacing: let the claim meet the half-moved slot before the move finishes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    finish_move(&mut raw, slot, home, away).await;
    assert_eq!(
        during.await.unwrap().unwrap(),
        [Claim::New, Claim::New],
        "a claim during the move waits for it, without an error"
    );

    // The store's slot map still says `home`: MOVED, refresh, retry, no error.
    assert_eq!(
        store
            .claim(&lease(), &keys(&["a", "c", "d", "f"]))
            .await
            .unwrap(),
        [
            Claim::Duplicate,
            Claim::InFlight,
            Claim::InFlight,
            Claim::New
        ]
    );
    store.confirm(&held, &keys(&["c"])).await.unwrap();
    store.release(&asked, &keys(&["d", "e"])).await.unwrap();
    assert_eq!(
        store.claim(&lease(), &keys(&["c", "d"])).await.unwrap(),
        [Claim::Duplicate, Claim::New]
    );
    let moved: u16 = {
        let c = raw.conns.get_mut(&away).unwrap();
        let n: i64 = redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query_async(c)
            .await
            .unwrap();
        u16::try_from(n).unwrap()
    };
    assert!(moved >= 4, "the keys live on the new master: {moved}");

    move_slot(&mut raw, slot, away, home).await;
    finish_move(&mut raw, slot, away, home).await;
    back.done = true;
    assert_eq!(
        store.claim(&lease(), &keys(&["a", "c"])).await.unwrap(),
        [Claim::Duplicate, Claim::Duplicate],
        "and back again"
    );
}

/// `(master's port, its replica's port)` pairs from `CLUSTER NODES`.
async fn pairs(seeds: &[String]) -> Vec<(u16, u16)> {
    let mut c = conn(seeds[0].as_str()).await;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await
        .unwrap();
    let port = |addr: &str| -> u16 {
        let hostport = addr.split('@').next().unwrap();
        hostport.rsplit_once(':').unwrap().1.parse().unwrap()
    };
    let lines: Vec<Vec<&str>> = nodes.lines().map(|l| l.split(' ').collect()).collect();
    let mut out = Vec::new();
    for m in lines
        .iter()
        .filter(|f| f[2].contains("master") && !f[2].contains("fail"))
    {
        if let Some(r) = lines
            .iter()
            .find(|f| f[3] == m[0] && !f[2].contains("fail"))
        {
            out.push((port(m[1]), port(r[1])));
        }
    }
    out
}

/// `ROLE`'s first word, and for a replica its link's state (`connected` once in sync).
async fn role(port: u16) -> String {
    let mut c = conn(&format!("redis://127.0.0.1:{port}")).await;
    let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut c).await.unwrap();
    let word = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
        other => format!("{other:?}"),
    };
    match word(&role[0]).as_str() {
        "slave" => format!("slave {}", word(&role[3])),
        other => other.to_owned(),
    }
}

/// `CLUSTER FAILOVER` on `replica`, then waits (at most 15 s) until it is a master and its
/// old master a replica in sync with it (a second failover before that times out).
async fn fail_over_to(replica: u16, master: u16) {
    let mut c = conn(&format!("redis://127.0.0.1:{replica}")).await;
    let _: () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query_async(&mut c)
        .await
        .unwrap();
    let settled = crate::helpers::poll_until(
        Duration::from_secs(15),
        || async { (role(replica).await, role(master).await) },
        |(r, m)| r == "master" && m == "slave connected",
    )
    .await;
    assert_eq!(
        settled,
        ("master".into(), "slave connected".into()),
        "failover to {replica}"
    );
}

/// The failover tests share one cluster: one at a time.
static FAILOVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn claims_keep_working_while_a_replica_takes_over_its_master() {
    let _one_at_a_time = FAILOVER.lock().await;
    let Some(cluster) = crate::backends::redis_failover_cluster_or_skip().await else {
        return;
    };
    let seeds = cluster.seeds.clone();
    let store = store(&seeds, &redis_cluster_prefix());
    let confirmed_ids = as_keys(&ids("confirmed", 60));
    let held_ids = as_keys(&ids("held", 60));
    let (confirmed, held) = (lease(), lease());
    store.claim(&confirmed, &confirmed_ids).await.unwrap();
    store.confirm(&confirmed, &confirmed_ids).await.unwrap();
    store.claim(&held, &held_ids).await.unwrap();
    let (master, replica) = pairs(&seeds).await[0];

    // Claims go on all along, each over every master; none may fail.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move {
            let (mut done, mut n) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let ks = as_keys(&ids(&format!("load{n}"), 30));
                let got = store.claim(&lease(), &ks).await;
                assert!(
                    got.as_ref()
                        .is_ok_and(|c| c.iter().all(|c| *c == Claim::New)),
                    "claim {n} during the failover: {got:?}"
                );
                done += 1;
            }
            done
        }
    });
    fail_over_to(replica, master).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done = load.await.unwrap();
    assert!(done > 0);

    // After the promotion (the store's map still names the old master: MOVED, refresh).
    let dup = store.claim(&lease(), &confirmed_ids).await.unwrap();
    assert!(dup.iter().all(|c| *c == Claim::Duplicate), "{dup:?}");
    let inflight = store.claim(&lease(), &held_ids).await.unwrap();
    assert!(
        inflight.iter().all(|c| *c == Claim::InFlight),
        "{inflight:?}"
    );
    store.confirm(&held, &held_ids).await.unwrap();
    let dup = store.claim(&lease(), &held_ids).await.unwrap();
    assert!(dup.iter().all(|c| *c == Claim::Duplicate), "{dup:?}");
    store.check().await.unwrap();
    // The roles stay swapped: masters refuse to vote for a second failover of the same slots
    // within twice the node timeout, and the next run takes whichever master has a replica.
}

/// `CONFIG GET name` on `port`.
async fn config_get(port: u16, name: &str) -> String {
    let mut c = conn(&format!("redis://127.0.0.1:{port}")).await;
    let got: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(&mut c)
        .await
        .unwrap();
    got[1].clone()
}

#[tokio::test]
async fn a_stopped_master_answers_unavailable_until_its_replica_takes_over_never_wrong() {
    let _one_at_a_time = FAILOVER.lock().await;
    let Some(cluster) = crate::backends::redis_failover_cluster_or_skip().await else {
        return;
    };
    let seeds = cluster.seeds.clone();
    let store = store(&seeds, &redis_cluster_prefix());
    let confirmed_ids = as_keys(&ids("confirmed", 60));
    let confirmed = lease();
    store.claim(&confirmed, &confirmed_ids).await.unwrap();
    store.confirm(&confirmed, &confirmed_ids).await.unwrap();
    let (master, replica) = pairs(&seeds).await[0];
    // What it takes to start the master again as `scripts/cluster-services.sh` did, so the
    // cluster gets its replica back (and `stop` still finds it by its pid file).
    let (dir, pidfile, logfile) = (
        config_get(master, "dir").await,
        config_get(master, "pidfile").await,
        config_get(master, "logfile").await,
    );
    // The replica has the confirmation before its master goes (replication is asynchronous:
    // what a master acked and had not sent is lost with it, as with any Redis failover).
    let mut m = conn(&format!("redis://127.0.0.1:{master}")).await;
    let synced: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query_async(&mut m)
        .await
        .unwrap();
    assert_eq!(synced, 1);
    let _: Option<()> = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query_async(&mut m)
        .await
        .ok();

    let (mut unavailable, mut n, started) = (0, 0, std::time::Instant::now());
    loop {
        n += 1;
        let ks = as_keys(&ids(&format!("outage{n}"), 30));
        match store.claim(&lease(), &ks).await {
            Ok(c) => {
                assert!(c.iter().all(|c| *c == Claim::New), "claim {n}: {c:?}");
                if role(replica).await == "master" {
                    break;
                }
            }
            Err(cartstream::ports::PortError::Unavailable(_)) => unavailable += 1,
            Err(e) => panic!("claim {n}: {e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no promotion in 20 s"
        );
    }
    let dup = store.claim(&lease(), &confirmed_ids).await.unwrap();
    assert!(dup.iter().all(|c| *c == Claim::Duplicate), "{dup:?}");
    // Ready again: a fresh store (whose first map may still name the stopped master) too.
    store.check().await.unwrap();
    self::store(&seeds, "x").check().await.unwrap();
    eprintln!(
        "master {master} stopped: {unavailable} of {n} claims unavailable, promotion of \
         {replica} seen after {:?}",
        started.elapsed()
    );

    let status = std::process::Command::new("redis-server")
        .args([
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            &master.to_string(),
        ])
        .args(["--dir", &dir, "--cluster-enabled", "yes"])
        .args([
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ])
        .args(["--save", "", "--appendonly", "no", "--pidfile", &pidfile])
        .args(["--logfile", &logfile])
        .status()
        .unwrap();
    assert!(status.success());
    let back = crate::helpers::poll_until(
        Duration::from_secs(15),
        || async {
            match redis::Client::open(format!("redis://127.0.0.1:{master}").as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
            {
                Ok(_) => role(master).await,
                Err(e) => e.to_string(),
            }
        },
        |r| r == "slave connected",
    )
    .await;
    assert_eq!(
        back, "slave connected",
        "the old master is back as a replica"
    );
}

#[tokio::test]
async fn the_server_dedups_on_a_cluster_named_by_its_seeds() {
    let Some(seeds) = redis_cluster_or_skip().await else {
        return;
    };
    let prefix = redis_cluster_prefix();
    let app = crate::helpers::TestApp::spawn_with(move |s| {
        s.redis_cluster_nodes = seeds;
        s.redis_key_prefix = prefix;
    })
    .await;
    let (status, ready) = app.get_json("/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["dedupStore"]["backend"], "redis");
    let events: Vec<serde_json::Value> = (0..50)
        .map(|i| crate::helpers::item_added(&crate::helpers::unique(&format!("rc{i}"))))
        .collect();
    let (status, body) = app
        .post_batch(&serde_json::json!({ "events": events }))
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(50)),
        "{body}"
    );
    let (status, body) = app
        .post_batch(&serde_json::json!({ "events": events }))
        .await;
    assert_eq!(
        (status, body["duplicates"].as_u64()),
        (200, Some(50)),
        "{body}"
    );
}
