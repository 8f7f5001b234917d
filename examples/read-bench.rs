//! read-bench: the read benchmark of issue 14. Loads N synthetic events straight into a store
//! (`--users`, 200,000 by default; 8 types; the last 30 days), unless it already holds them, then times pages
//! of 50 of `GET /events`: by user, by type, by time range (one random day) and unfiltered;
//! and, on ClickHouse, `known()` (the dedup fallback) for 100 ids, half stored, half not.
//!
//! - `--store clickhouse` (the default): the table in the layout asked (`new`: what cartstream
//!   creates now; `legacy`: the table before issue 14), loaded by
//!   `scripts/load-clickhouse-events.sh` (`INSERT ... SELECT FROM numbers(N)`).
//! - `--store embedded --data-dir DIR`: the embedded default, loaded through its own writer
//!   (`EventStore::insert`, in batches of 5,000).
//! - `--via store` (the default) times the store's `query()`, what `GET /events` runs;
//!   `--via http` starts `target/release/cartstream` on that store (port 3191) and times
//!   `GET /events` over HTTP from this process, so the figure includes the server's HTTP layer,
//!   JSON and, for ClickHouse, the merge with the local journal.
//!
//! ```sh
//! cargo build --release --bin cartstream --example read-bench
//! target/release/examples/read-bench --database rd_new_10m --rows 10000000 --via http
//! target/release/examples/read-bench --database rd_old_10m --rows 10000000 --layout legacy --samples 10
//! target/release/examples/read-bench --store embedded --data-dir /tmp/rd-emb-1m --rows 1000000 --via http
//! ```
//! The database or data dir is left in place for another run; drop it when done.

use cartstream::adapters::outbound::clickhouse::{
    create_legacy_table_sql, ClickHouseConfig, ClickHouseStore,
};
use cartstream::adapters::outbound::embedded::EmbeddedStore;
use cartstream::domain::{DedupKey, EventId, EventType, StoredEvent, StoredFields};
use cartstream::ports::{EventQuery, EventStore};
use chrono::{DateTime, Duration as Days, SecondsFormat, Utc};
use clap::Parser;
use rand::Rng;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A random query of one filter.
type MakeQuery = Box<dyn Fn(&mut rand::rngs::ThreadRng) -> EventQuery>;

#[derive(Parser)]
struct Cli {
    /// `clickhouse` or `embedded`.
    #[arg(long, default_value = "clickhouse")]
    store: String,
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    url: String,
    /// The ClickHouse database (with `--store clickhouse`).
    #[arg(long, default_value = "rd_bench")]
    database: String,
    /// The embedded store's data dir (with `--store embedded`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Distinct users in the synthetic events (a user has rows / users events).
    #[arg(long, default_value_t = 200_000)]
    users: u64,
    /// `new` or `legacy` (ClickHouse only).
    #[arg(long, default_value = "new")]
    layout: String,
    /// Timed reads per filter.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Time `known()` only (the legacy layout's pages take seconds each).
    #[arg(long)]
    only_known: bool,
    /// `store` (the store's `query()`) or `http` (`GET /events` on a server started here).
    #[arg(long, default_value = "store")]
    via: String,
    /// The server `--via http` starts.
    #[arg(long, default_value = "target/release/cartstream")]
    server: PathBuf,
    #[arg(long, default_value_t = 3191)]
    port: u16,
}

async fn sql(url: &str, body: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--fail-with-body", url, "--data-binary", body])
        .output()
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "{body}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn load_clickhouse(cli: &Cli, store: &ClickHouseStore) {
    let db = &cli.database;
    if cli.layout == "legacy" {
        sql(&cli.url, &format!("CREATE DATABASE IF NOT EXISTS `{db}`")).await;
        sql(&cli.url, &create_legacy_table_sql(db, "cart_events")).await;
    }
    store.ensure_schema().await.expect("schema");
    let count = sql(&cli.url, &format!("SELECT count() FROM `{db}`.cart_events")).await;
    let count: u64 = count.trim().parse().unwrap();
    if count >= cli.rows {
        eprintln!("{db}: {count} rows already");
        return;
    }
    let started = Instant::now();
    let status = std::process::Command::new("scripts/load-clickhouse-events.sh")
        .args([
            &cli.url,
            db,
            "cart_events",
            &cli.rows.to_string(),
            &cli.users.to_string(),
        ])
        .status()
        .expect("loader");
    assert!(status.success());
    eprintln!("{db}: loaded {} rows in {:?}", cli.rows, started.elapsed());
}

/// A well-mixed 64-bit hash of `(n, salt)` (splitmix64), for synthetic columns.
fn mix(n: u64, salt: u64) -> u64 {
    let mut z = n.wrapping_add(salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Synthetic event `n`, shaped as `scripts/load-clickhouse-events.sh` shapes it: `users`
/// users, 8 types, a time in the 30 days before `start_ms + 30 days`, received 0-2 s later.
fn synthetic(n: u64, users: u64, start_ms: i64) -> StoredEvent {
    const MONTH_MS: u64 = 30 * 24 * 3600 * 1000;
    let id = format!("{:016x}-{:016x}", mix(n, 1), mix(n, 2));
    let occurred = start_ms + (mix(n, 5) % MONTH_MS) as i64;
    let received = occurred + (n % 2000) as i64;
    let at = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap();
    StoredFields {
        event_id: &id,
        user_id: format!("u-{}", mix(n, 3) % users),
        session_id: (!n.is_multiple_of(3)).then(|| format!("s-{}", mix(n, 4) % 1_000_000)),
        event_type: EventType::ALL[(n % 8) as usize].as_str(),
        occurred_at: at(occurred),
        received_at: at(received),
        source: if n.is_multiple_of(2) { "ws" } else { "http" },
        metadata: format!(
            r#"{{"productId":"p-{}","quantity":{}}}"#,
            n % 5000,
            n % 5 + 1
        ),
    }
    .into_stored()
    .expect("a synthetic event is valid")
}

/// Loads the embedded store through its own writer, unless a previous run did (a marker file
/// in the data dir holds the count).
async fn load_embedded(cli: &Cli, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("data dir");
    let marker = dir.join("read-bench-rows");
    let have: u64 = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if have >= cli.rows {
        eprintln!("{}: {have} rows already", dir.display());
        return;
    }
    let store = EmbeddedStore::open(dir).expect("embedded store");
    let start_ms = Utc::now().timestamp_millis() - 30 * 24 * 3600 * 1000;
    let started = Instant::now();
    let mut n = have;
    while n < cli.rows {
        let end = (n + 5_000).min(cli.rows);
        let batch: Vec<StoredEvent> = (n..end)
            .map(|i| synthetic(i, cli.users, start_ms))
            .collect();
        store.insert(&batch).await.expect("insert");
        n = end;
        std::fs::write(&marker, n.to_string()).expect("marker");
    }
    eprintln!(
        "{}: loaded {} rows in {:?}",
        dir.display(),
        cli.rows - have,
        started.elapsed()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// What the reads are timed on.
enum Reader {
    Store(Arc<dyn EventStore>),
    Http {
        client: reqwest::Client,
        base: String,
        server: Box<tokio::process::Child>,
    },
}

impl Reader {
    /// Starts the server on the benchmark's store and waits until it is ready.
    async fn http(cli: &Cli, scratch: &std::path::Path) -> Reader {
        let mut cmd = tokio::process::Command::new(&cli.server);
        cmd.env("CARTSTREAM_LISTEN", format!("127.0.0.1:{}", cli.port))
            .env("CARTSTREAM_LOG", "warn")
            .env("CARTSTREAM_READ_RATE_LIMIT_PER_SECOND", "0")
            .kill_on_drop(true);
        if cli.store == "embedded" {
            cmd.env("CARTSTREAM_DATA_DIR", cli.data_dir.as_ref().unwrap());
        } else {
            cmd.env("CARTSTREAM_DATA_DIR", scratch)
                .env("CARTSTREAM_CLICKHOUSE_URL", &cli.url)
                .env("CARTSTREAM_CLICKHOUSE_DATABASE", &cli.database);
        }
        let server = cmd
            .spawn()
            .expect("start the server (cargo build --release first)");
        let base = format!("http://127.0.0.1:{}", cli.port);
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = client.get(format!("{base}/ready")).send().await {
                if r.status().is_success() {
                    return Reader::Http {
                        client,
                        base,
                        server: Box::new(server),
                    };
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server at {base} was not ready within 30 s");
    }

    /// One page of `q`; how many events it listed.
    async fn page(&self, q: &EventQuery) -> usize {
        match self {
            Reader::Store(store) => store.query(q).await.expect("query").events.len(),
            Reader::Http { client, base, .. } => {
                let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
                let mut params = vec![("limit", q.limit.to_string())];
                params.extend(q.user_id.clone().map(|u| ("userId", u)));
                params.extend(q.event_type.map(|t| ("eventType", t.as_str().to_owned())));
                params.extend(q.since.map(|t| ("since", time(t))));
                params.extend(q.until.map(|t| ("until", time(t))));
                let r = client
                    .get(format!("{base}/events"))
                    .query(&params)
                    .send()
                    .await
                    .expect("GET /events");
                assert!(r.status().is_success(), "GET /events: {}", r.status());
                let body: serde_json::Value = r.json().await.expect("JSON");
                body["events"].as_array().expect("events").len()
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    assert!(
        cli.layout == "new" || cli.layout == "legacy",
        "--layout new|legacy"
    );
    assert!(cli.via == "store" || cli.via == "http", "--via store|http");
    let scratch = tempfile::tempdir().expect("scratch dir");
    let (name, ch_store, store): (String, _, Arc<dyn EventStore>) = match cli.store.as_str() {
        "clickhouse" => {
            let mut config = ClickHouseConfig::new(cli.url.clone());
            config.database = cli.database.clone();
            config.request_timeout = Duration::from_secs(120);
            let store = ClickHouseStore::new(config).unwrap();
            load_clickhouse(&cli, &store).await;
            let shared = Arc::new(store.clone());
            (
                format!("{} layout={}", cli.database, cli.layout),
                Some(store),
                shared,
            )
        }
        "embedded" => {
            let dir = cli
                .data_dir
                .clone()
                .expect("--data-dir with --store embedded");
            load_embedded(&cli, &dir).await;
            let store = Arc::new(EmbeddedStore::open(&dir).expect("embedded store"));
            (format!("embedded {}", dir.display()), None, store)
        }
        other => panic!("--store clickhouse|embedded, not {other}"),
    };
    if let Some(ch) = &ch_store {
        time_known(&cli, ch).await;
    }
    if cli.only_known {
        return;
    }
    let reader = if cli.via == "http" {
        // The server opens the store itself.
        drop(store);
        Reader::http(&cli, scratch.path()).await
    } else {
        Reader::Store(store)
    };
    let mut rng = rand::rng();
    let now = Utc::now();
    let users = cli.users;
    let filters: [(&str, MakeQuery); 4] = [
        (
            "user",
            Box::new(move |r| EventQuery {
                user_id: Some(format!("u-{}", r.random_range(0..users))),
                ..EventQuery::first(50)
            }),
        ),
        (
            "type",
            Box::new(|r| EventQuery {
                event_type: Some(EventType::ALL[r.random_range(0..8)]),
                ..EventQuery::first(50)
            }),
        ),
        (
            "time",
            Box::new(move |r| {
                let since = now - Days::days(30) + Days::minutes(r.random_range(0..29 * 24 * 60));
                EventQuery {
                    since: Some(since),
                    until: Some(since + Days::days(1)),
                    ..EventQuery::first(50)
                }
            }),
        ),
        ("none", Box::new(|_| EventQuery::first(50))),
    ];
    for (filter, make) in &filters {
        let mut took = Vec::with_capacity(cli.samples);
        let mut listed = 0;
        for _ in 0..cli.samples {
            let q = make(&mut rng);
            let started = Instant::now();
            listed += reader.page(&q).await;
            took.push(started.elapsed());
        }
        took.sort();
        println!(
            "{name} rows={} users={users} via={} filter={filter} samples={} p50={:.1}ms p99={:.1}ms \
             max={:.1}ms mean_listed={:.1}",
            cli.rows,
            cli.via,
            cli.samples,
            percentile(&took, 0.5),
            percentile(&took, 0.99),
            percentile(&took, 1.0),
            listed as f64 / cli.samples as f64,
        );
    }
    if let Reader::Http { mut server, .. } = reader {
        let _ = server.kill().await;
    }
}

/// `known()` for batches of 100 ids, 50 of them stored (taken from the table), 50 not.
async fn time_known(cli: &Cli, store: &ClickHouseStore) {
    let stored = sql(
        &cli.url,
        &format!(
            "SELECT event_id FROM `{}`.cart_events WHERE cityHash64(event_id) % 1000 = 7 LIMIT 5000",
            cli.database
        ),
    )
    .await;
    let stored: Vec<&str> = stored.lines().collect();
    let key = |id: &str| -> DedupKey { (&EventId::parse(id).unwrap()).into() };
    let mut took = Vec::with_capacity(cli.samples);
    for round in 0..cli.samples {
        let keys: Vec<DedupKey> = (0..50)
            .map(|i| key(stored[(round * 50 + i) % stored.len()]))
            .chain((0..50).map(|i| key(&format!("missing-{round}-{i}"))))
            .collect();
        let started = Instant::now();
        let found = store.known(&keys).await.expect("known");
        took.push(started.elapsed());
        assert_eq!(found.iter().filter(|f| **f).count(), 50);
    }
    took.sort();
    println!(
        "{} layout={} rows={} known(100 ids) samples={} p50={:.1}ms p99={:.1}ms max={:.1}ms",
        cli.database,
        cli.layout,
        cli.rows,
        cli.samples,
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        percentile(&took, 1.0),
    );
}
