//! clickhouse-reads: the read benchmark of issue 14 on ClickHouse. Creates the table in the
//! layout asked (`new`: what cartstream creates now; `legacy`: the table before issue 14), loads
//! N synthetic events straight into it with `scripts/load-clickhouse-events.sh` (`INSERT ...
//! SELECT FROM numbers(N)`: 200,000 users, 8 types, the last 30 days) unless it already holds
//! them, then times `ClickHouseStore::query` (what `GET /events` runs, without the HTTP layer)
//! for pages of 50: by user, by type, by time range (one random day) and unfiltered; and
//! `known()` (the dedup fallback) for 100 ids, half stored, half not.
//!
//! ```sh
//! cargo run --release --example clickhouse-reads -- --database rd_new_10m --rows 10000000
//! cargo run --release --example clickhouse-reads -- --database rd_old_10m --rows 10000000 \
//!     --layout legacy --samples 10
//! ```
//! The database is left in place for another run; drop it when done.

use cartstream::adapters::outbound::clickhouse::{
    create_legacy_table_sql, ClickHouseConfig, ClickHouseStore,
};
use cartstream::domain::{DedupKey, EventId, EventType};
use cartstream::ports::{EventQuery, EventStore};
use chrono::{Duration as Days, Utc};
use clap::Parser;
use rand::Rng;
use std::time::{Duration, Instant};

/// A random query of one filter.
type MakeQuery = Box<dyn Fn(&mut rand::rngs::ThreadRng) -> EventQuery>;

#[derive(Parser)]
struct Cli {
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    url: String,
    #[arg(long)]
    database: String,
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// `new` or `legacy`.
    #[arg(long, default_value = "new")]
    layout: String,
    /// Timed reads per filter.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Time `known()` only (the legacy layout's pages take seconds each).
    #[arg(long)]
    only_known: bool,
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

async fn load(cli: &Cli, store: &ClickHouseStore) {
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
        .args([&cli.url, db, "cart_events", &cli.rows.to_string()])
        .status()
        .expect("loader");
    assert!(status.success());
    eprintln!("{db}: loaded {} rows in {:?}", cli.rows, started.elapsed());
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    assert!(
        cli.layout == "new" || cli.layout == "legacy",
        "--layout new|legacy"
    );
    let mut config = ClickHouseConfig::new(cli.url.clone());
    config.database = cli.database.clone();
    config.request_timeout = Duration::from_secs(120);
    let store = ClickHouseStore::new(config).unwrap();
    load(&cli, &store).await;
    let mut rng = rand::rng();
    let now = Utc::now();
    let filters: [(&str, MakeQuery); 4] = [
        (
            "user",
            Box::new(|r| EventQuery {
                user_id: Some(format!("u-{}", r.random_range(0..200_000))),
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
    time_known(&cli, &store).await;
    if cli.only_known {
        return;
    }
    for (name, make) in &filters {
        let mut took = Vec::with_capacity(cli.samples);
        let mut listed = 0;
        for _ in 0..cli.samples {
            let q = make(&mut rng);
            let started = Instant::now();
            let page = store.query(&q).await.expect("query");
            took.push(started.elapsed());
            listed += page.events.len();
        }
        took.sort();
        println!(
            "{} layout={} rows={} filter={name} samples={} p50={:.1}ms p99={:.1}ms max={:.1}ms \
             mean_listed={:.1}",
            cli.database,
            cli.layout,
            cli.rows,
            cli.samples,
            percentile(&took, 0.5),
            percentile(&took, 0.99),
            percentile(&took, 1.0),
            listed as f64 / cli.samples as f64,
        );
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
