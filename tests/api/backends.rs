//! Real Redis and ClickHouse for the adapter tests, with per-test isolation: a random key prefix
//! in Redis, a throwaway database in ClickHouse.
//!
//! A backend that is not reachable skips the test loudly, or fails it when `CI=true`, so CI can
//! never go green without having run them. `scripts/ensure-services.sh` starts both.

use bb8_redis::redis;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

pub const REDIS_ENV: &str = "CARTSTREAM_TEST_REDIS_URL";
pub const CLICKHOUSE_ENV: &str = "CARTSTREAM_TEST_CLICKHOUSE_URL";

/// An address where nothing listens: connections are refused at once.
pub const DEAD_REDIS_URL: &str = "redis://user:hunter2@127.0.0.1:1";
pub const DEAD_CLICKHOUSE_URL: &str = "http://127.0.0.1:1";

fn unreachable<T>(what: &str, url: &str, cause: &str) -> Option<T> {
    let msg = format!(
        "{what} not reachable at {url} ({cause}); run scripts/ensure-services.sh \
         (or set the URL in the environment)"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {msg}");
    }
    loud_skip(&msg);
    None
}

/// Writes straight to the process's stderr: libtest captures `eprintln!`, and a skip nobody
/// sees is as bad as a pass nobody earned.
pub fn loud_skip(msg: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {msg} ***\n");
}

/// The Redis to test against, or `None` (after a loud message) when it is down outside CI.
pub async fn redis_url_or_skip() -> Option<String> {
    let url = std::env::var(REDIS_ENV).unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let ping = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(5), ping).await {
        Ok(Ok(_)) => Some(url),
        Ok(Err(e)) => unreachable("Redis", &url, &e.to_string()),
        Err(_) => unreachable("Redis", &url, "no answer within 5 s"),
    }
}

/// The ClickHouse HTTP endpoint to test against, or `None` (after a loud message) when it is
/// down outside CI.
pub async fn clickhouse_url_or_skip() -> Option<String> {
    let url = std::env::var(CLICKHOUSE_ENV).unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned());
    match clickhouse_sql(&url, "SELECT 1").await {
        Ok(body) if body.trim() == "1" => Some(url),
        Ok(body) => unreachable("ClickHouse", &url, &format!("SELECT 1 answered {body:?}")),
        Err(e) => unreachable("ClickHouse", &url, &e),
    }
}

/// Runs one statement over ClickHouse's HTTP interface and returns the body.
pub async fn clickhouse_sql(url: &str, sql: &str) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .post(url)
        .body(sql.to_owned())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

pub fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A key prefix no other test (or run) uses.
pub fn redis_prefix() -> String {
    format!("cartstream-test:{}:", random_suffix())
}

/// A database that exists only for one test: dropped when this guard goes, even when the test
/// panics.
pub struct ThrowawayDatabase {
    pub url: String,
    pub name: String,
}

impl ThrowawayDatabase {
    /// Names a fresh database; the store under test creates it.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            name: format!("cartstream_test_{}", random_suffix()),
        }
    }
}

impl Drop for ThrowawayDatabase {
    fn drop(&mut self) {
        // Drop runs outside async and maybe while panicking: plain blocking HTTP/1.0, best effort.
        let sql = format!("DROP DATABASE IF EXISTS `{}`", self.name);
        let _ = blocking_post(&self.url, &sql);
    }
}

fn blocking_post(url: &str, body: &str) -> std::io::Result<()> {
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST / HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut sink = Vec::new();
    s.read_to_end(&mut sink)?;
    Ok(())
}

/// A TCP server that accepts connections and never answers: a hung backend. Lives until the
/// test's runtime ends.
pub async fn silent_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

pub const REDIS_CLUSTER_ENV: &str = "CARTSTREAM_TEST_REDIS_CLUSTER_NODES";
/// A Redis Cluster the failover test may fail over: not the shared one.
pub const REDIS_FAILOVER_ENV: &str = "CARTSTREAM_TEST_REDIS_FAILOVER_NODES";

/// The Redis Cluster to test against (its seed URLs), or `None` (after a loud message) when it
/// is down or not `cluster_state:ok` outside CI. `scripts/cluster-services.sh start` starts it.
pub async fn redis_cluster_or_skip() -> Option<Vec<String>> {
    let default = (7101..=7106)
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let seeds = std::env::var(REDIS_CLUSTER_ENV).unwrap_or(default);
    cluster_or_skip("Redis Cluster (scripts/cluster-services.sh start)", &seeds).await
}

/// A Redis Cluster the failover tests may disturb: the one `CARTSTREAM_TEST_REDIS_FAILOVER_NODES`
/// names, or else one started here for the test alone (Redis only, on 7301-7306, by
/// `scripts/cluster-services.sh`) and stopped when this is dropped. Never the shared one.
pub struct FailoverCluster {
    pub seeds: Vec<String>,
    started_in: Option<std::path::PathBuf>,
}

const FAILOVER_START: [(&str, &str); 3] = [
    ("CLUSTER_REDIS_BASE", "7300"),
    ("CLUSTER_CH_OFFSET", "300"),
    ("CLUSTER_PARTS", "redis"),
];

fn cluster_services(dir: &std::path::Path, verb: &str) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster-services.sh");
    std::process::Command::new(script)
        .arg(verb)
        .env("CLUSTER_DIR", dir)
        .envs(FAILOVER_START)
        .output()
        .unwrap()
}

impl Drop for FailoverCluster {
    fn drop(&mut self) {
        if let Some(dir) = &self.started_in {
            cluster_services(dir, "stop");
        }
    }
}

/// The failover tests' cluster, or `None` (after a loud message) when it cannot be had outside
/// CI. Callers run one at a time: a cluster started here takes fixed ports.
pub async fn redis_failover_cluster_or_skip() -> Option<FailoverCluster> {
    if let Ok(seeds) = std::env::var(REDIS_FAILOVER_ENV) {
        let seeds = cluster_or_skip("the failover tests' Redis Cluster", &seeds).await?;
        return Some(FailoverCluster {
            seeds,
            started_in: None,
        });
    }
    let dir = std::env::temp_dir().join("cartstream-failover-cluster");
    let out = cluster_services(&dir, "start");
    // Built first, so what was started is stopped again if it does not answer.
    let mut cluster = FailoverCluster {
        seeds: Vec::new(),
        started_in: Some(dir),
    };
    if !out.status.success() {
        return unreachable(
            "a Redis Cluster of the failover tests' own (scripts/cluster-services.sh, or \
             CARTSTREAM_TEST_REDIS_FAILOVER_NODES)",
            "127.0.0.1:7301-7306",
            &String::from_utf8_lossy(&out.stderr),
        );
    }
    let seeds = (7301..=7303)
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    cluster.seeds = cluster_or_skip("the failover tests' Redis Cluster", &seeds).await?;
    Some(cluster)
}

async fn cluster_or_skip(what: &str, seeds: &str) -> Option<Vec<String>> {
    let seeds: Vec<String> = seeds.split(',').map(|s| s.trim().to_owned()).collect();
    let shown = seeds.join(",");
    let info = async {
        let client = redis::Client::open(seeds[0].as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async::<String>(&mut conn)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(5), info).await {
        Ok(Ok(info)) if info.contains("cluster_state:ok") => Some(seeds),
        Ok(Ok(_)) => unreachable(what, &shown, "cluster_state is not ok"),
        Ok(Err(e)) => unreachable(what, &shown, &e.to_string()),
        Err(_) => unreachable(what, &shown, "no answer within 5 s"),
    }
}

/// A key prefix for the cluster tests no other test (or run) uses.
pub fn redis_cluster_prefix() -> String {
    format!("rc-test:{}:", random_suffix())
}
