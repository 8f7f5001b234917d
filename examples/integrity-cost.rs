//! What the integrity check costs per MB: loads N synthetic events through the stores' own
//! writers (the embedded store's `insert` and the journal's `append`, in batches of 4096, as the
//! forwarder and the committer write them) into a fresh data dir, then times `quick_check` and
//! `integrity_check` of each file, as `cartstream check` and the startup check run them, and the
//! journal's batches against their checksums (what `check` and the startup check do next).
//!
//! ```sh
//! cargo run --release --example integrity-cost -- --events 1000000 --dir /tmp/integrity-cost
//! # a journal filled by small groups (an outage under closed-loop clients): 10 a batch
//! cargo run --release --example integrity-cost -- --events 100000 --batch 10 --dir /tmp/ic10
//! ```

use cartstream::adapters::outbound::embedded::EmbeddedStore;
use cartstream::adapters::outbound::integrity::{check_file, Depth};
use cartstream::adapters::outbound::journal::{verify_batches, SqliteJournal};
use cartstream::domain::{EventType, StoredEvent, StoredFields};
use cartstream::ports::{EventStore, Journal};
use chrono::DateTime;
use clap::Parser;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Cli {
    /// Events written into each file.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per write (the forwarder's and the committer's batch).
    #[arg(long, default_value_t = 4096)]
    batch: u64,
    /// A data dir to create (it must not exist).
    #[arg(long)]
    dir: PathBuf,
}

fn mix(n: u64, salt: u64) -> u64 {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 31;
    x.wrapping_mul(0x94d0_49bb_1331_11eb)
}

fn synthetic(n: u64) -> StoredEvent {
    let id = format!("{:016x}-{:016x}", mix(n, 1), mix(n, 2));
    let at = DateTime::from_timestamp_millis(1_780_000_000_000 + (n * 37) as i64).unwrap();
    StoredFields {
        event_id: &id,
        user_id: format!("u-{}", mix(n, 3) % 100_000),
        session_id: Some(format!("s-{}", mix(n, 4) % 1_000_000)),
        event_type: EventType::ALL[(n % 8) as usize].as_str(),
        occurred_at: at,
        received_at: at,
        source: "ws",
        metadata: format!(
            r#"{{"productId":"p-{}","quantity":{}}}"#,
            n % 5000,
            n % 5 + 1
        ),
    }
    .into_stored()
    .expect("a synthetic event is valid")
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    assert!(!cli.dir.exists(), "{} exists", cli.dir.display());
    let store = EmbeddedStore::open(&cli.dir).unwrap();
    let journal = SqliteJournal::open(&cli.dir, u64::MAX).unwrap();
    let started = Instant::now();
    let mut n = 0;
    while n < cli.events {
        let batch: Vec<StoredEvent> = (n..(n + cli.batch).min(cli.events))
            .map(synthetic)
            .collect();
        store.insert(&batch).await.unwrap();
        journal.append(&batch).await.unwrap();
        n += batch.len() as u64;
    }
    drop((store, journal));
    println!(
        "loaded {} events into each file in {:.1?}",
        cli.events,
        started.elapsed()
    );
    for file in ["cartstream.db", "journal.db"] {
        let path = cli.dir.join(file);
        let mb = std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;
        for depth in [Depth::Quick, Depth::Full] {
            let t = Instant::now();
            let verdict = check_file(&path, depth).unwrap();
            let took = t.elapsed().as_secs_f64();
            println!(
                "{file}: {mb:.0} MB, {depth:?}: {took:.2} s, {:.2} ms/MB ({verdict:?})",
                took * 1000.0 / mb
            );
        }
    }
    let path = cli.dir.join("journal.db");
    let mb = std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let t = Instant::now();
    let mut bad = 0;
    let seen = verify_batches(&conn, |_| bad += 1).unwrap();
    let took = t.elapsed().as_secs_f64();
    println!(
        "journal.db: {mb:.0} MB, checksums of {} batches ({} events): {:.3} s, {:.2} ms/MB, \
         {:.0} ns/event ({bad} bad)",
        seen.batches,
        seen.events,
        took,
        took * 1000.0 / mb,
        took * 1e9 / seen.events as f64
    );
}
