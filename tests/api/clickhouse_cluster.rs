//! `ClickHouseStore` in cluster mode, against the 2-shard cluster `cartstream_shards` that
//! `scripts/cluster-services.sh start` runs (HTTP 8201/8202 by default): the tables on each
//! shard, events spread over the shards with every copy of one event on one shard, a real
//! server on the cluster, and a shard that is down failing the insert until it is back. What
//! every event store does is in `contract::event_store::clickhouse_cluster`.
//!
//! The shard-down test stops and restarts a shard, so it runs on a second cluster of its own
//! (`CARTSTREAM_TEST_CH_SPARE_CLUSTER_DIR`, default `/tmp/cc-chshard`, started with
//! `CLUSTER_DIR=/tmp/cc-chshard CLUSTER_REDIS_BASE=7400 CLUSTER_CH_OFFSET=400
//! scripts/cluster-services.sh start`), never on the shared one.
//!
//! A cluster that is not reachable skips these tests loudly, or fails them when `CI=true`.

use crate::backends::{clickhouse_sql, loud_skip, random_suffix};
use crate::fixtures::{self, ids};
use crate::helpers::{item_added, poll_until, unique, TestApp};
use cartstream::adapters::outbound::clickhouse::{
    ClickHouseConfig, ClickHouseStore, ClusterConfig,
};
use cartstream::app::config::Settings;
use cartstream::domain::{DedupKey, EventId, StoredEvent};
use cartstream::ports::{EventQuery, EventStore, PortError, RefusalCause};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const CLUSTER: &str = "cartstream_shards";
const SHARDS_ENV: &str = "CARTSTREAM_TEST_CH_SHARD_URLS";
const SPARE_ENV: &str = "CARTSTREAM_TEST_CH_SPARE_CLUSTER_DIR";

/// `None` after a loud skip message, or a panic under `CI=true`.
fn skip_or_fail<T>(msg: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {msg}");
    }
    loud_skip(msg);
    None
}

/// The shards' HTTP URLs when each answers and sees the cluster, else `None` after a loud
/// skip (a panic under `CI=true`).
async fn cluster_or_skip(urls: Vec<String>, how_to_start: &str) -> Option<Vec<String>> {
    for url in &urls {
        let sql = format!("SELECT count() FROM system.clusters WHERE cluster = '{CLUSTER}'");
        match clickhouse_sql(url, &sql).await {
            Ok(n) if n.trim() == urls.len().to_string() => {}
            Ok(n) => {
                return skip_or_fail(&format!(
                    "ClickHouse at {url} lists {} shards in {CLUSTER}, not {}; {how_to_start}",
                    n.trim(),
                    urls.len()
                ));
            }
            Err(e) => {
                return skip_or_fail(&format!(
                    "ClickHouse cluster shard not reachable at {url} ({e}); {how_to_start}"
                ));
            }
        }
    }
    Some(urls)
}

/// The shared cluster's shards (`CARTSTREAM_TEST_CH_SHARD_URLS`, comma-separated; default
/// 8201 and 8202).
pub async fn shards_or_skip() -> Option<Vec<String>> {
    let urls = std::env::var(SHARDS_ENV)
        .unwrap_or_else(|_| "http://127.0.0.1:8201,http://127.0.0.1:8202".to_owned());
    let urls = urls.split(',').map(|u| u.trim().to_owned()).collect();
    cluster_or_skip(urls, "run scripts/cluster-services.sh start").await
}

/// A database on every shard that exists only for one test: dropped on each when this guard
/// goes, even when the test panics.
pub struct ShardedDatabase {
    pub name: String,
    pub shards: Vec<String>,
    _dropped_on: Vec<crate::backends::ThrowawayDatabase>,
}

impl ShardedDatabase {
    pub fn new(shards: &[String]) -> Self {
        let name = format!("chs_test_{}", random_suffix());
        let guards = shards
            .iter()
            .map(|url| {
                let mut g = crate::backends::ThrowawayDatabase::new(url);
                g.name.clone_from(&name);
                g
            })
            .collect();
        Self {
            name,
            shards: shards.to_vec(),
            _dropped_on: guards,
        }
    }

    /// One number from `sql` run on shard `i`.
    pub async fn number(&self, i: usize, sql: &str) -> u64 {
        let body = clickhouse_sql(&self.shards[i], sql).await.unwrap();
        body.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{sql}: {body}"))
    }

    /// Rows in each shard's local table (every copy, before any merge).
    pub async fn rows_per_shard(&self) -> Vec<u64> {
        let mut rows = Vec::new();
        for i in 0..self.shards.len() {
            let sql = format!("SELECT count() FROM `{}`.cart_events_local", self.name);
            rows.push(self.number(i, &sql).await);
        }
        rows
    }

    /// `count()` and `uniqExact(event_id)` of the whole cluster under `FINAL`, through the
    /// `Distributed` table on the first shard (an error before the tables exist).
    pub async fn final_counts(&self) -> Result<(u64, u64), String> {
        let sql = format!(
            "SELECT count(), uniqExact(event_id) FROM `{}`.cart_events FINAL FORMAT TSV",
            self.name
        );
        let body = clickhouse_sql(&self.shards[0], &sql).await?;
        let mut n = body.split_whitespace().map(|v| v.parse().unwrap());
        Ok((n.next().unwrap(), n.next().unwrap()))
    }
}

pub fn cluster_config(url: &str, shards: &[String], database: &str) -> ClickHouseConfig {
    let mut config = ClickHouseConfig::new(url);
    config.database = database.to_owned();
    config.cluster = Some(ClusterConfig {
        name: CLUSTER.to_owned(),
        shard_urls: shards.to_vec(),
    });
    config
}

/// A cluster-mode store on a throwaway database, its tables created; keep the guard alive.
pub async fn store() -> Option<(ClickHouseStore, ShardedDatabase)> {
    let shards = shards_or_skip().await?;
    let db = ShardedDatabase::new(&shards);
    let store = ClickHouseStore::new(cluster_config(&shards[0], &shards, &db.name)).unwrap();
    store.ensure_schema().await.unwrap();
    Some((store, db))
}

fn key(id: &str) -> DedupKey {
    (&EventId::parse(id).unwrap()).into()
}

#[tokio::test]
async fn the_ddl_makes_the_local_layout_and_distributed_tables_on_every_shard() {
    let Some((_store, db)) = store().await else {
        return;
    };
    for url in &db.shards {
        let sql = format!(
            "SELECT name, engine, sharding_key FROM system.tables WHERE database = '{}' \
             ORDER BY name FORMAT TSV",
            db.name
        );
        // `sharding_key` is not in 18.16's system.tables: fall back to the engine alone.
        let tables = match clickhouse_sql(url, &sql).await {
            Ok(t) => t,
            Err(_) => clickhouse_sql(url, &sql.replace(", sharding_key", ""))
                .await
                .unwrap(),
        };
        let tables: Vec<Vec<&str>> = tables.lines().map(|l| l.split('\t').collect()).collect();
        let names: Vec<[&str; 2]> = tables.iter().map(|t| [t[0], t[1]]).collect();
        // The read layout's local tables and views, and a Distributed table over each.
        assert_eq!(
            names,
            [
                ["cart_events", "Distributed"],
                ["cart_events_by_time", "Distributed"],
                ["cart_events_by_time_local", "ReplacingMergeTree"],
                ["cart_events_by_time_local_mv", "MaterializedView"],
                ["cart_events_by_user", "Distributed"],
                ["cart_events_by_user_local", "ReplacingMergeTree"],
                ["cart_events_by_user_local_mv", "MaterializedView"],
                ["cart_events_local", "ReplacingMergeTree"],
            ],
            "{url}"
        );
        let create = clickhouse_sql(
            url,
            &format!("SHOW CREATE TABLE `{}`.cart_events FORMAT TSVRaw", db.name),
        )
        .await
        .unwrap();
        assert!(
            create.contains(&format!(
                "Distributed({CLUSTER}, {}, cart_events_local, cityHash64(event_id))",
                db.name
            )),
            "{url}: {create}"
        );
    }
}

#[tokio::test]
async fn events_spread_over_the_shards_and_every_copy_of_one_stays_on_its_shard() {
    let Some((store, db)) = store().await else {
        return;
    };
    let events: Vec<StoredEvent> = (0..200)
        .map(|i| fixtures::event(&format!("spread-{i}")).at_now().stored())
        .collect();
    store.insert(&events).await.unwrap();
    // Repeats of the first 20, inserted again (as a retried batch would be), with other
    // contents: the later copy is the one FINAL keeps.
    let repeats: Vec<StoredEvent> = (0..20)
        .map(|i| {
            fixtures::event(&format!("spread-{i}"))
                .user("the-repeat")
                .at_now()
                .stored()
        })
        .collect();
    store.insert(&repeats).await.unwrap();

    let rows = db.rows_per_shard().await;
    assert!(
        rows.iter().all(|&n| n > 0),
        "both shards hold rows: {rows:?}"
    );
    assert_eq!(rows.iter().sum::<u64>(), 220, "{rows:?}");
    // No event id on more than one shard: the ids per shard add up to the ids in all.
    let mut ids_per_shard = 0;
    for i in 0..db.shards.len() {
        let sql = format!(
            "SELECT uniqExact(event_id) FROM `{}`.cart_events_local",
            db.name
        );
        ids_per_shard += db.number(i, &sql).await;
    }
    assert_eq!(ids_per_shard, 200, "each id on one shard only");
    assert_eq!(
        db.final_counts().await,
        Ok((200, 200)),
        "FINAL: exactly once"
    );

    // What the service reads goes through the Distributed table, with FINAL.
    let page = store.query(&EventQuery::first(1000)).await.unwrap();
    assert_eq!(page.events.len(), 200);
    let repeated = page
        .events
        .iter()
        .filter(|e| e.event.user_id() == "the-repeat")
        .count();
    assert_eq!(repeated, 20, "the last copy of each repeat is the one read");
    let known = store
        .known(&[key("spread-0"), key("spread-199"), key("never-sent")])
        .await
        .unwrap();
    assert_eq!(known, [true, true, false]);
    eprintln!("FIGURES cluster-spread: rows_per_shard={rows:?} (200 events + 20 repeats)");
}

#[tokio::test]
async fn operator_managed_tables_are_checked_and_what_is_missing_is_named() {
    let Some(shards) = shards_or_skip().await else {
        return;
    };
    let db = ShardedDatabase::new(&shards);
    let mut config = cluster_config(&shards[0], &shards, &db.name);
    config.manage_tables = false;
    let checked = ClickHouseStore::new(config).unwrap();
    // Nothing yet: every table on every server is named.
    let err = checked.ensure_schema().await.unwrap_err();
    let PortError::Failed(msg) = &err else {
        panic!("{err:?}");
    };
    assert!(msg.contains("CARTSTREAM_CLICKHOUSE_MANAGE_TABLES"), "{msg}");
    for url in &shards {
        assert!(
            msg.contains(&format!(
                "`{}`.`cart_events_local` on {url} is missing",
                db.name
            )),
            "{msg}"
        );
    }
    // The operator creates the tables on the first shard only, and a plain table where the
    // second shard's Distributed one belongs.
    let creator = ClickHouseStore::new(cluster_config(&shards[0], &shards[..1], &db.name)).unwrap();
    creator.ensure_schema().await.unwrap();
    let plain =
        cartstream::adapters::outbound::clickhouse::create_table_sql(&db.name, "cart_events");
    clickhouse_sql(
        &shards[1],
        &format!("CREATE DATABASE IF NOT EXISTS `{}`", db.name),
    )
    .await
    .unwrap();
    clickhouse_sql(&shards[1], &plain).await.unwrap();
    let msg = checked.ensure_schema().await.unwrap_err().to_string();
    let second = &shards[1];
    assert!(
        msg.contains(&format!(
            "`{}`.`cart_events_local` on {second} is missing",
            db.name
        )) && msg.contains(&format!(
            "`{}`.`cart_events` on {second} is ReplacingMergeTree, not Distributed",
            db.name
        )) && !msg.contains(&format!("on {} ", shards[0])),
        "{msg}"
    );
    // Events wait (the insert fails, naming the tables) rather than going anywhere else.
    let e = fixtures::event("managed-1").at_now().stored();
    assert!(checked.insert(std::slice::from_ref(&e)).await.is_err());
    // Once the tables are right, the same store works.
    clickhouse_sql(second, &format!("DROP TABLE `{}`.cart_events", db.name))
        .await
        .unwrap();
    let all = ClickHouseStore::new(cluster_config(&shards[0], &shards, &db.name)).unwrap();
    all.ensure_schema().await.unwrap();
    checked.insert(std::slice::from_ref(&e)).await.unwrap();
    let page = checked.query(&EventQuery::first(10)).await.unwrap();
    assert_eq!(ids(&page.events), ["managed-1"]);
}

/// Cluster settings for a test server whose inserts and reads go through `shards[0]`.
fn cluster_settings(s: &mut Settings, shards: &[String], database: &str) {
    s.clickhouse_url = Some(shards[0].clone());
    s.clickhouse_database = database.to_owned();
    s.clickhouse_cluster = Some(CLUSTER.to_owned());
    s.clickhouse_shard_urls = shards.to_vec();
    s.forward_interval = Duration::from_millis(50);
    s.forward_backoff_max = Duration::from_millis(300);
}

/// A metric's value (-1 when the server does not list it).
async fn metric(app: &TestApp, name: &str) -> f64 {
    app.metric(name).await.unwrap_or(-1.0)
}

async fn journal_entries(app: &TestApp) -> f64 {
    metric(app, "cartstream_journal_entries").await
}

#[tokio::test]
async fn a_server_on_the_cluster_stores_events_over_both_shards_and_reads_them_back() {
    let Some(shards) = shards_or_skip().await else {
        return;
    };
    let db = ShardedDatabase::new(&shards);
    let (s2, name) = (shards.clone(), db.name.clone());
    let app = TestApp::spawn_with(move |s| cluster_settings(s, &s2, &name)).await;
    let sent: Vec<String> = (0..60).map(|_| unique("srv")).collect();
    for id in &sent {
        let (status, body) = app.post_event(&item_added(id)).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, body) = app.post_event(&item_added(&sent[0])).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("duplicate")));
    // Forwarded: the journal is empty and the cluster holds each event once.
    let counts = poll_until(
        Duration::from_secs(20),
        || async { (journal_entries(&app).await, db.final_counts().await) },
        |(journal, counts)| *journal == 0.0 && *counts == Ok((60, 60)),
    )
    .await;
    assert_eq!(counts, (0.0, Ok((60, 60))));
    let rows = db.rows_per_shard().await;
    assert!(rows.iter().all(|&n| n > 0), "{rows:?}");
    // Read back through the Distributed table (the journal holds none of them now).
    let (status, page) = app.get_json("/events?limit=100").await;
    assert_eq!(status, 200, "{page}");
    let mut read: Vec<String> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_owned())
        .collect();
    read.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(read, want);
    let (status, ready) = app.get_json("/ready").await;
    assert_eq!(status, 200, "{ready}");
    app.stop().await.unwrap();
}

/// A second cluster that this test may stop shards of, found through its directory; started
/// here (ClickHouse only, on ports 8601/8602) when it is not running, and then stopped when
/// dropped.
struct SpareCluster {
    dir: PathBuf,
    urls: Vec<String>,
    started_here: bool,
}

const SPARE_START: [(&str, &str); 3] = [
    ("CLUSTER_REDIS_BASE", "7400"),
    ("CLUSTER_CH_OFFSET", "400"),
    ("CLUSTER_PARTS", "clickhouse"),
];

impl SpareCluster {
    async fn get_or_skip() -> Option<Self> {
        let dir = PathBuf::from(
            std::env::var(SPARE_ENV).unwrap_or_else(|_| "/tmp/cc-chshard".to_owned()),
        );
        let mut started_here = false;
        if !dir.join("clickhouse-2").join("config.xml").exists() {
            // scripts/cluster-services.sh bounds every wait; it needs root (runuser).
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster-services.sh");
            let out = Command::new(script)
                .arg("start")
                .env("CLUSTER_DIR", &dir)
                .envs(SPARE_START)
                .output()
                .unwrap();
            if !out.status.success() {
                return skip_or_fail(&format!(
                    "cannot start a spare ClickHouse cluster in {}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            started_here = true;
        }
        let how = format!(
            "start it with CLUSTER_DIR={} CLUSTER_REDIS_BASE=7400 CLUSTER_CH_OFFSET=400 \
             CLUSTER_PARTS=clickhouse scripts/cluster-services.sh start (or set {SPARE_ENV})",
            dir.display()
        );
        let mut urls = Vec::new();
        for n in 1..=2 {
            let Some(port) = config_value(&dir.join(format!("clickhouse-{n}")), "http_port") else {
                return skip_or_fail(&format!(
                    "no spare ClickHouse cluster at {}; {how}",
                    dir.display()
                ));
            };
            urls.push(format!("http://127.0.0.1:{port}"));
        }
        // Built first, so a cluster started here is stopped again if it does not answer.
        let mut spare = Self {
            dir,
            urls: Vec::new(),
            started_here,
        };
        spare.urls = cluster_or_skip(urls, &how).await?;
        Some(spare)
    }

    /// Shard `n`'s native port, as its config says (what the Distributed table connects to).
    fn native_port(&self, n: usize) -> String {
        config_value(&self.shard_dir(n), "tcp_port").unwrap()
    }

    fn shard_dir(&self, n: usize) -> PathBuf {
        self.dir.join(format!("clickhouse-{n}"))
    }

    /// Stops shard `n` (1-based) and waits until it no longer answers; the guard starts it
    /// again when dropped.
    async fn stop_shard(&self, n: usize) -> DownShard<'_> {
        let pid = std::fs::read_to_string(self.shard_dir(n).join("pid")).unwrap();
        let pid = pid.trim();
        assert!(
            Command::new("kill")
                .args(["-TERM", pid])
                .status()
                .unwrap()
                .success(),
            "kill {pid}"
        );
        // Gone, not only silent: a server started while the old one still shuts down exits
        // at once (its pid file is taken).
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let gone = poll_until(
            Duration::from_secs(30),
            || std::future::ready(proc.exists()),
            |alive| !alive,
        )
        .await;
        assert!(!gone, "shard {n} (pid {pid}) did not exit");
        DownShard { cluster: self, n }
    }

    /// Starts shard `n` as scripts/cluster-services.sh does and waits until it answers.
    async fn start_shard(&self, n: usize) {
        start_clickhouse(&self.shard_dir(n));
        let url = &self.urls[n - 1];
        let up = poll_until(
            Duration::from_secs(60),
            || clickhouse_sql(url, "SELECT 1"),
            Result::is_ok,
        )
        .await;
        assert!(up.is_ok(), "shard {n} did not come back: {up:?}");
    }
}

/// `<name>value</name>` from the config.xml in `dir`.
fn config_value(dir: &Path, name: &str) -> Option<String> {
    let config = std::fs::read_to_string(dir.join("config.xml")).ok()?;
    let rest = config.split(&format!("<{name}>")).nth(1)?;
    rest.split('<').next().map(str::to_owned)
}

fn start_clickhouse(dir: &Path) {
    let status = Command::new("runuser")
        .args(["-u", "clickhouse", "--", "/usr/sbin/clickhouse-server"])
        .arg(format!(
            "--config-file={}",
            dir.join("config.xml").display()
        ))
        .arg("--daemon")
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .status()
        .unwrap();
    assert!(status.success(), "clickhouse-server in {}", dir.display());
}

/// A stopped shard, started again when this goes (also when the test fails).
struct DownShard<'a> {
    cluster: &'a SpareCluster,
    n: usize,
}

impl DownShard<'_> {
    async fn start(self) {
        let (cluster, n) = (self.cluster, self.n);
        std::mem::forget(self);
        cluster.start_shard(n).await;
    }
}

impl Drop for DownShard<'_> {
    fn drop(&mut self) {
        // Panicking: start it again and wait (blocking: no runtime here) until it listens, so
        // the throwaway database is dropped there too and the next test finds it whole.
        start_clickhouse(&self.cluster.shard_dir(self.n));
        let port = config_value(&self.cluster.shard_dir(self.n), "http_port").unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..300 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[tokio::test]
async fn a_shard_that_is_down_fails_the_insert_and_the_journal_keeps_the_rows_until_it_is_back() {
    let Some(spare) = SpareCluster::get_or_skip().await else {
        return;
    };
    let shards = spare.urls.clone();
    let db = ShardedDatabase::new(&shards);
    let (s2, name) = (shards.clone(), db.name.clone());
    let app = TestApp::spawn_with(move |s| cluster_settings(s, &s2, &name)).await;
    // The tables exist and one event is in before the shard goes.
    let (status, _) = app.post_event(&item_added("before-the-cut")).await;
    assert_eq!(status, 202);
    let before = poll_until(
        Duration::from_secs(20),
        || db.final_counts(),
        |c| *c == Ok((1, 1)),
    )
    .await;
    assert_eq!(before, Ok((1, 1)));

    // The store itself, its tables known: the insert through shard 1 fails, naming the
    // shard that is down.
    let store = ClickHouseStore::new(cluster_config(&shards[0], &shards, &db.name)).unwrap();
    store.ensure_schema().await.unwrap();
    let down = spare.stop_shard(2).await;
    let events: Vec<StoredEvent> = (0..40)
        .map(|i| fixtures::event(&format!("direct-{i}")).at_now().stored())
        .collect();
    let err = store.insert(&events).await.unwrap_err();
    // The server answers for its shard: refused with NETWORK_ERROR (210), worth retrying.
    assert!(
        matches!(&err, PortError::Refused(r) if r.cause == RefusalCause::Busy && r.code == Some(210)),
        "{err:?}"
    );
    let shard_2 = format!("127.0.0.1:{}", spare.native_port(2));
    assert!(err.to_string().contains(&shard_2), "names {shard_2}: {err}");
    eprintln!("FIGURES cluster-shard-down: insert error: {err}");
    // The server: the events are accepted (journaled) in one batch, which the forwarder
    // sends as one insert; it touches both shards, so it fails and stays in the journal.
    let sent: Vec<String> = (0..40).map(|_| unique("cut")).collect();
    let batch: Vec<_> = sent.iter().map(|id| item_added(id)).collect();
    let (status, body) = app.post_batch(&json!({ "events": batch })).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(40)),
        "{body}"
    );
    let held = poll_until(
        Duration::from_secs(10),
        || journal_entries(&app),
        |n| *n == 40.0,
    )
    .await;
    assert_eq!(held, 40.0, "the journal holds the batch");
    let errors_before = metric(&app, "cartstream_flush_errors_total").await;
    let kept = poll_until(
        Duration::from_secs(2),
        || journal_entries(&app),
        |n| *n != 40.0,
    )
    .await;
    assert_eq!(
        kept, 40.0,
        "the journal keeps every row while a shard is down"
    );
    let errors = metric(&app, "cartstream_flush_errors_total").await;
    assert!(
        errors > errors_before,
        "the forwarder kept trying: {errors_before} -> {errors}"
    );
    let (status, _) = app.get_json("/ready").await;
    assert_eq!(status, 503, "not ready while a shard is down");

    down.start().await;
    let after = poll_until(
        Duration::from_secs(60),
        || async { (journal_entries(&app).await, db.final_counts().await) },
        |(journal, counts)| *journal == 0.0 && *counts == Ok((41, 41)),
    )
    .await;
    assert_eq!(after, (0.0, Ok((41, 41))), "every event landed, once");
    let ids_in_ch = clickhouse_sql(
        &shards[0],
        &format!("SELECT event_id FROM `{}`.cart_events FINAL", db.name),
    )
    .await
    .unwrap();
    for id in &sent {
        assert!(ids_in_ch.lines().any(|l| l == id), "{id} missing");
    }
    app.stop().await.unwrap();
}

impl Drop for SpareCluster {
    fn drop(&mut self) {
        if self.started_here {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster-services.sh");
            let _ = Command::new(script)
                .arg("stop")
                .env("CLUSTER_DIR", &self.dir)
                .envs(SPARE_START)
                .status();
        }
    }
}

#[tokio::test]
async fn a_retry_with_another_timestamp_is_listed_once_on_the_cluster() {
    let Some((store, _db)) = store().await else {
        return;
    };
    // Both copies of an id hash to one shard, where its local index rows are too.
    crate::clickhouse_layout::check_retried_events_are_listed_once(&store).await;
}
