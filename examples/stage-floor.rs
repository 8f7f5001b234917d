//! The floor under the closed loop (issue 18): what the two stages every event goes through in
//! order, the dedup claim and the journal's fsynced append, cost by themselves, one call at a
//! time with nothing else running in the process, beside the disk's own fsync.
//!
//! Each round times, in turn: a 4 KiB append + `fdatasync` on the data dir's file system (the
//! loop `scripts/bench-ceiling.sh` measures), the journal's `append` of a group of `--group`
//! events (the service's own `SqliteJournal`, its blocking-pool hand-off included, with a
//! `remove_through` every 100 appends as the forwarder makes), and, with `--redis`, the Redis
//! dedup store's `claim` of as many keys (its `confirm` follows, untimed). It prints each one's
//! p50 and p99 in µs and claim + append against the fsync loop: a closed loop whose every event
//! is claimed, then appended, cannot answer faster than that sum, whatever the scheduling.
//!
//! ```sh
//! cargo run --release --example stage-floor -- --dir /tmp/floor --redis redis://127.0.0.1:6379
//! ```
//!
//! Redis keys go under a fresh `stage-floor:<random>:` prefix with a 60 s window, so they expire
//! by themselves. `--dir` must not exist; it is removed at the end.

use cartstream::adapters::outbound::journal::SqliteJournal;
use cartstream::adapters::outbound::redis::{RedisDedupConfig, RedisDedupStore};
use cartstream::domain::{DedupKey, EventId, EventType, StoredEvent, StoredFields};
use cartstream::ports::{DedupStore, Journal, Lease};
use chrono::Utc;
use clap::Parser;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    /// A data dir to create (it must not exist); on the file system the journal would use.
    #[arg(long)]
    dir: PathBuf,
    /// A single Redis to claim on; without it, only the disk and the journal are timed.
    #[arg(long)]
    redis: Option<String>,
    /// Events (and keys) per group: the closed loop 8 x 1 makes groups of about 2.5.
    #[arg(long, default_value_t = 3)]
    group: usize,
    /// Calls timed per stage and round.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    assert!(!cli.dir.exists(), "{} exists", cli.dir.display());
    std::fs::create_dir_all(&cli.dir).unwrap();
    let journal = SqliteJournal::open(&cli.dir, u64::MAX).unwrap();
    let dedup = cli.redis.as_ref().map(|url| {
        let mut c = RedisDedupConfig::new(url.clone());
        c.key_prefix = format!("stage-floor:{:016x}:", rand::random::<u64>());
        RedisDedupStore::new(c).unwrap()
    });
    // Untimed warm-up: the files, the connection and the script.
    let mut seq = 0u64;
    for _ in 0..50 {
        journal.append(&group(&mut seq, cli.group)).await.unwrap();
    }
    if let Some(d) = &dedup {
        claim(d, &mut seq, cli.group).await;
    }
    println!("round  fsync_p50  fsync_p99  append_p50  append_p99  claim_p50  claim_p99  (claim+append)/fsync at p50");
    for round in 1..=cli.rounds {
        let mut fsyncs = fsync_loop(&cli.dir, cli.calls);
        let mut appends = Vec::with_capacity(cli.calls);
        for i in 0..cli.calls {
            let events = group(&mut seq, cli.group);
            let t = Instant::now();
            let first = journal.append(&events).await.unwrap();
            appends.push(t.elapsed());
            if i % 100 == 99 {
                journal
                    .remove_through(first + events.len() as i64 - 1)
                    .await
                    .unwrap();
            }
        }
        let mut claims = Vec::with_capacity(cli.calls);
        if let Some(d) = &dedup {
            for _ in 0..cli.calls {
                claims.push(claim(d, &mut seq, cli.group).await);
            }
        }
        let (f50, a50, c50) = (
            pct(&mut fsyncs, 50),
            pct(&mut appends, 50),
            pct(&mut claims, 50),
        );
        println!(
            "{round:>5} {f50:>10} {:>10} {a50:>11} {:>11} {c50:>10} {:>10}  {:.2}x",
            pct(&mut fsyncs, 99),
            pct(&mut appends, 99),
            pct(&mut claims, 99),
            (c50 + a50) as f64 / f50 as f64
        );
        std::io::stdout().flush().unwrap();
    }
    drop(journal);
    std::fs::remove_dir_all(&cli.dir).unwrap();
}

/// `calls` appends of 4 KiB, each followed by `fdatasync`, to a new file in `dir`.
fn fsync_loop(dir: &Path, calls: usize) -> Vec<Duration> {
    let path = dir.join("fsync-loop");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let block = [b'x'; 4096];
    let times = (0..calls)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&block).unwrap();
            f.sync_data().unwrap();
            t.elapsed()
        })
        .collect();
    drop(f);
    std::fs::remove_file(&path).unwrap();
    times
}

/// The next `n` events, each with a new id.
fn group(seq: &mut u64, n: usize) -> Vec<StoredEvent> {
    (0..n)
        .map(|_| {
            *seq += 1;
            let now = Utc::now();
            StoredFields {
                event_id: &format!("floor-{seq}"),
                user_id: format!("u-{}", *seq % 1000),
                session_id: Some(format!("s-{}", *seq % 100)),
                event_type: EventType::ItemAdded.as_str(),
                occurred_at: now,
                received_at: now,
                source: "ws",
                metadata: r#"{"productId":"p-1","quantity":2,"price":19.99}"#.to_owned(),
            }
            .into_stored()
            .expect("a valid event")
        })
        .collect()
}

/// Claims `n` new keys, timed, then confirms them.
async fn claim(d: &RedisDedupStore, seq: &mut u64, n: usize) -> Duration {
    let keys: Vec<DedupKey> = (0..n)
        .map(|_| {
            *seq += 1;
            DedupKey::from(&EventId::parse(&format!("floor-{seq}")).unwrap())
        })
        .collect();
    let lease = Lease {
        id: rand::random(),
        hold: Duration::from_secs(30),
        window: Duration::from_secs(60),
    };
    let t = Instant::now();
    d.claim(&lease, &keys).await.unwrap();
    let took = t.elapsed();
    d.confirm(&lease, &keys).await.unwrap();
    took
}

/// The `p`th percentile in µs, 0 for none.
fn pct(v: &mut [Duration], p: usize) -> u128 {
    v.sort_unstable();
    v.get((v.len().max(1) - 1) * p / 100)
        .map_or(0, Duration::as_micros)
}
