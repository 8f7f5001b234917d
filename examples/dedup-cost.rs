//! What a dedup claim and a confirm cost against the number of keys in a group, on a single
//! Redis and on a Redis Cluster (event keys where Redis puts them, so a group of k random ids
//! spans about k slots, or in n buckets): the median and 90th percentile of one call, in µs,
//! over fresh groups (every key new).
//!
//! ```sh
//! cargo run --release --example dedup-cost -- \
//!     --single redis://127.0.0.1:6379 \
//!     --cluster redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103 \
//!     --buckets 0,16,64 --sizes 1,10,100,1000 --groups 200
//! ```
//!
//! Keys are written under a fresh `dedup-cost:<random>:` prefix with a 60 s window, so they
//! expire by themselves.

use cartstream::adapters::outbound::redis::cluster::{
    RedisClusterDedupConfig, RedisClusterDedupStore,
};
use cartstream::adapters::outbound::redis::{RedisDedupConfig, RedisDedupStore};
use cartstream::domain::{DedupKey, EventId};
use cartstream::ports::{DedupStore, Lease};
use clap::Parser;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    /// A single Redis.
    #[arg(long)]
    single: Option<String>,
    /// A Redis Cluster's seeds, comma-separated.
    #[arg(long, value_delimiter = ',')]
    cluster: Vec<String>,
    /// Cluster runs, one per bucket count (0: event keys where Redis puts them).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    buckets: Vec<u16>,
    /// Keys per group.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    sizes: Vec<usize>,
    /// Groups timed per size (each claimed, then confirmed).
    #[arg(long, default_value_t = 200)]
    groups: usize,
}

fn prefix() -> String {
    format!("dedup-cost:{:016x}:", rand::random::<u64>())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let mut stores: Vec<(String, Box<dyn DedupStore>)> = Vec::new();
    if let Some(url) = &cli.single {
        let mut c = RedisDedupConfig::new(url.clone());
        c.key_prefix = prefix();
        stores.push(("single".into(), Box::new(RedisDedupStore::new(c).unwrap())));
    }
    for &buckets in cli.buckets.iter().filter(|_| !cli.cluster.is_empty()) {
        let mut c = RedisClusterDedupConfig::new(cli.cluster.clone());
        c.key_prefix = prefix();
        c.buckets = buckets;
        let name = format!("cluster/b{buckets}");
        stores.push((name, Box::new(RedisClusterDedupStore::new(c).unwrap())));
    }
    println!("backend      keys  claim_p50_us  claim_p90_us  confirm_p50_us  confirm_p90_us");
    for (name, store) in &stores {
        // One untimed call first: connections, the slot map and the scripts' NOSCRIPT.
        run_group(&**store, &keys("warm", 0, 10)).await;
        for &size in &cli.sizes {
            let (mut claims, mut confirms) = (Vec::new(), Vec::new());
            for g in 0..cli.groups {
                let ks = keys(&format!("s{size}g{g}"), 0, size);
                let (claim, confirm) = run_group(&**store, &ks).await;
                claims.push(claim);
                confirms.push(confirm);
            }
            println!(
                "{name:<11} {size:>5} {:>13} {:>13} {:>15} {:>15}",
                pct(&mut claims, 50),
                pct(&mut claims, 90),
                pct(&mut confirms, 50),
                pct(&mut confirms, 90),
            );
        }
    }
}

fn keys(tag: &str, from: usize, n: usize) -> Vec<DedupKey> {
    (from..from + n)
        .map(|i| DedupKey::from(&EventId::parse(&format!("{tag}-{i}")).unwrap()))
        .collect()
}

/// One group: claim then confirm, each timed.
async fn run_group(store: &dyn DedupStore, ks: &[DedupKey]) -> (Duration, Duration) {
    let lease = Lease {
        id: rand::random(),
        hold: Duration::from_secs(30),
        window: Duration::from_secs(60),
    };
    let t = Instant::now();
    store.claim(&lease, ks).await.unwrap();
    let claim = t.elapsed();
    let t = Instant::now();
    store.confirm(&lease, ks).await.unwrap();
    (claim, t.elapsed())
}

fn pct(v: &mut [Duration], p: usize) -> u128 {
    v.sort_unstable();
    v[(v.len() - 1) * p / 100].as_micros()
}
