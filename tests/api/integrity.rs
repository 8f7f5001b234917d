//! Damaged files in the data dir, black-box: pages of the embedded store and the outbox are
//! overwritten with the server stopped; startup refuses naming the file, `cartstream check`
//! reports the damage, `cartstream salvage` saves the readable rows, and the server then
//! starts, serves the saved events and delivers the saved outbox rows. The same for the
//! journal in front of ClickHouse, whose saved rows are then forwarded. And an outbox row
//! changed inside a sound page: found by its checksum, left out by salvage.

use crate::backends::{
    clickhouse_sql, clickhouse_url_or_skip, random_suffix, ThrowawayDatabase, DEAD_CLICKHOUSE_URL,
};
use crate::binary::{run, start_binary, stop};
use crate::helpers::{item_added, poll_until, unique};
use crate::targets::Receiver;
use serde_json::{json, Value};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

const EVENTS: usize = 3_000;

/// Overwrites the page in the middle of `path` with bytes that are no page.
fn damage_middle_page(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    assert!(len > 40 * 4096, "{} is too small: {len}", path.display());
    let page = (len / 2) / 4096 * 4096;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(page)).unwrap();
    f.write_all(&bytes).unwrap();
    f.sync_all().unwrap();
}

/// One route to `url`, retrying for long.
fn config(dir: &Path, url: &str) -> String {
    let path = dir.join("cartstream.toml");
    std::fs::write(
        &path,
        format!(
            "[[routes]]\nname = \"all\"\nbackoff_min = \"50ms\"\nbackoff_max = \"200ms\"\n\
             max_attempts = 1000\n[routes.target]\nkind = \"webhook\"\nurl = \"{url}\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The route's backlog as `GET /routes` reports it.
async fn backlog(url: &str) -> u64 {
    let (_, body) = get(&format!("{url}/routes")).await;
    body["routes"][0]["backlog"].as_u64().unwrap_or(0)
}

/// A server on `dir` whose route's receiver refuses, holding `EVENTS` events and as many
/// deliveries; stopped cleanly.
async fn fill(envs: &[(&str, String)]) {
    let server = start_binary(envs).await;
    let http = reqwest::Client::new();
    for chunk in 0..EVENTS / 500 {
        let events: Vec<Value> = (0..500)
            .map(|_| item_added(&unique(&format!("salvage{chunk}"))))
            .collect();
        let r = http
            .post(format!("{}/events/batch", server.url))
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let url = server.url.clone();
    let queued = poll_until(
        Duration::from_secs(60),
        || backlog(&url),
        |n| *n >= EVENTS as u64,
    )
    .await;
    assert!(queued >= EVENTS as u64, "backlog {queued}");

    // While the server holds the data dir, salvage is refused.
    let dir = envs
        .iter()
        .find(|(k, _)| *k == "CARTSTREAM_DATA_DIR")
        .unwrap();
    let (out, said) = run(&["salvage", "--data-dir", &dir.1], envs).await;
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("in use by another cartstream"), "{said}");
    stop(server).await;
}

#[tokio::test]
async fn damaged_files_refuse_the_start_and_salvage_keeps_the_readable_rows() {
    let receiver = Receiver::start(503).await;
    let files = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let envs = vec![
        ("CARTSTREAM_DATA_DIR", dir.clone()),
        ("CARTSTREAM_CONFIG", config(files.path(), &receiver.url)),
    ];
    fill(&envs).await;
    let (out, said) = run(&["check", "--data-dir", &dir], &envs).await;
    assert!(out.status.success(), "{said}");
    // A mistyped directory is refused, and not created.
    let typo = data.path().join("typo");
    let typo = typo.to_str().unwrap();
    for command in ["check", "salvage"] {
        let (out, said) = run(&[command, "--data-dir", typo], &envs).await;
        assert!(!out.status.success(), "{said}");
        assert!(said.contains("is not a directory"), "{said}");
    }
    assert!(!data.path().join("typo").exists());

    damage_middle_page(&data.path().join("cartstream.db"));
    damage_middle_page(&data.path().join("outbox.db"));

    // The start is refused, naming the file and the way out.
    let (out, said) = run(&[], &envs).await;
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("cartstream.db") && said.contains("is damaged"),
        "{said}"
    );
    assert!(said.contains("cartstream salvage --data-dir"), "{said}");

    let (out, said) = run(&["check", "--data-dir", &dir, "--full"], &envs).await;
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("cartstream.db: DAMAGED"), "{said}");
    assert!(said.contains("outbox.db: DAMAGED"), "{said}");

    // With no time to check at startup, the server serves and the check, in the background,
    // makes it not ready.
    let mut background = envs.clone();
    background.push(("CARTSTREAM_INTEGRITY_CHECK_TIMEOUT", "0s".into()));
    let mut server = start_binary(&background).await;
    let url = format!("{}/ready", server.url);
    let (status, body) = poll_until(Duration::from_secs(60), || get(&url), |r| r.0 == 503).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["eventStore"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("is damaged")),
        "{body}"
    );
    // Killed and waited for, so its lock is gone before the salvage.
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();

    let (out, said) = run(&["salvage", "--data-dir", &dir], &envs).await;
    assert!(out.status.success(), "{said}");
    let saved = saved_rows(&said, "events");
    assert!(saved > 0, "{said}");
    assert!(saved_rows(&said, "deliveries") > 0, "{said}");
    let aside = std::fs::read_dir(data.path())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().contains(".damaged-")
        })
        .count();
    assert!(aside >= 2, "the damaged files are kept aside");
    let (out, said) = run(&["check", "--data-dir", &dir, "--full"], &envs).await;
    assert!(out.status.success(), "{said}");

    // The server starts, serves the saved events, and delivers the saved deliveries.
    receiver.state.status.store(200, Ordering::SeqCst);
    let before = receiver.requests().len();
    let server = start_binary(&envs).await;
    let (status, page) = get(&format!("{}/events?limit=100", server.url)).await;
    assert_eq!(status, 200, "{page}");
    assert!(!page["events"].as_array().unwrap().is_empty(), "{page}");
    let url = server.url.clone();
    let left = poll_until(Duration::from_secs(60), || backlog(&url), |n| *n == 0).await;
    assert_eq!(left, 0);
    assert!(
        receiver.requests().len() > before,
        "the saved deliveries went out"
    );
}

/// The rows saved of `table`, from salvage's report line "table T: N rows saved, ...".
fn saved_rows(said: &str, table: &str) -> u64 {
    let line = said
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("table {table}:")))
        .unwrap_or_else(|| panic!("no line for table {table}"));
    line.split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_damaged_journal_is_refused_and_its_saved_rows_are_forwarded() {
    let Some(ch_url) = clickhouse_url_or_skip().await else {
        return;
    };
    let mut db = ThrowawayDatabase::new(&ch_url);
    db.name = format!("integrity_test_{}", random_suffix());
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let envs = |clickhouse: &str| {
        vec![
            ("CARTSTREAM_DATA_DIR", dir.clone()),
            ("CARTSTREAM_CLICKHOUSE_URL", clickhouse.to_owned()),
            ("CARTSTREAM_CLICKHOUSE_DATABASE", db.name.clone()),
            ("CARTSTREAM_CLICKHOUSE_TIMEOUT", "2s".to_owned()),
            ("CARTSTREAM_FORWARD_INTERVAL", "100ms".to_owned()),
            ("CARTSTREAM_FORWARD_BACKOFF_MAX", "300ms".to_owned()),
            ("CARTSTREAM_SHUTDOWN_TIMEOUT", "1s".to_owned()),
        ]
    };

    // ClickHouse down: every event stays in the journal, one row each (sent one at a time).
    let server = start_binary(&envs(DEAD_CLICKHOUSE_URL)).await;
    let http = reqwest::Client::new();
    for _ in 0..2_000 {
        let r = http
            .post(format!("{}/events", server.url))
            .json(&item_added(&unique("journal")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    stop(server).await;
    // A check opens and closes the journal, which writes its WAL back into the file.
    let (out, said) = run(&["check", "--data-dir", &dir], &[]).await;
    assert!(out.status.success(), "{said}");
    damage_middle_page(&data.path().join("journal.db"));

    let (out, said) = run(&[], &envs(&ch_url)).await;
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("journal.db") && said.contains("is damaged"),
        "{said}"
    );
    let (out, said) = run(&["check", "--data-dir", &dir], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("journal.db: DAMAGED"), "{said}");
    // A drain is refused as a start is.
    let drain = ["drain", "--data-dir", &dir, "--timeout", "30s"];
    let (out, said) = run(&drain, &envs(&ch_url)).await;
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("journal.db") && said.contains("is damaged"),
        "{said}"
    );

    let (out, said) = run(&["salvage", "--data-dir", &dir], &[]).await;
    assert!(out.status.success(), "{said}");
    let saved = saved_rows(&said, "journal_batches");
    assert!(saved > 0 && saved < 2_000, "{said}");

    // The server starts and forwards every saved row (one event each) to ClickHouse.
    let _server = start_binary(&envs(&ch_url)).await;
    let sql = format!("SELECT count() FROM `{}`.cart_events FORMAT TSV", db.name);
    let stored = poll_until(
        Duration::from_secs(60),
        || async { clickhouse_sql(&ch_url, &sql).await.unwrap_or_default() },
        |n| n.trim() == saved.to_string(),
    )
    .await;
    assert_eq!(stored.trim(), saved.to_string());
}

/// Changes every `from` in the file at `path` to `to` (as long): damage inside a sound page,
/// which SQLite's checks do not see. Every one: a page may keep dead copies of a row that was
/// updated or moved, and only the live one counts.
fn rewrite_in_file(path: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(path).unwrap();
    let mut found = 0;
    let mut at = 0;
    while let Some(i) = bytes[at..]
        .windows(from.len())
        .position(|w| w == from.as_bytes())
    {
        bytes[at + i..at + i + to.len()].copy_from_slice(to.as_bytes());
        at += i + to.len();
        found += 1;
    }
    assert!(found > 0, "{from} is not in {}", path.display());
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn an_outbox_row_changed_inside_a_sound_page_fails_its_checksum_and_salvage_leaves_it_out() {
    let receiver = Receiver::start(503).await;
    let files = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let envs = vec![
        ("CARTSTREAM_DATA_DIR", dir.clone()),
        ("CARTSTREAM_CONFIG", config(files.path(), &receiver.url)),
    ];
    let server = start_binary(&envs).await;
    let ids: Vec<String> = (0..3).map(|i| unique(&format!("checksum{i}"))).collect();
    let http = reqwest::Client::new();
    for id in &ids {
        let r = http
            .post(format!("{}/events", server.url))
            .json(&item_added(id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let url = server.url.clone();
    let queued = poll_until(Duration::from_secs(30), || backlog(&url), |n| *n >= 3).await;
    assert_eq!(queued, 3);
    stop(server).await;
    // Sound to SQLite; the check also writes the WAL back into the file.
    let (out, said) = run(&["check", "--data-dir", &dir, "--full"], &envs).await;
    assert!(out.status.success(), "{said}");

    // One character of the second event's id, inside its delivery row.
    let damaged = &ids[1];
    let changed = format!("{}x", &damaged[..damaged.len() - 1]);
    rewrite_in_file(&data.path().join("outbox.db"), damaged, &changed);

    let (out, said) = run(&["check", "--data-dir", &dir, "--full"], &envs).await;
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("outbox.db: DAMAGED (1 row(s) fail their checksum: deliveries"),
        "{said}"
    );
    let (out, said) = run(&[], &envs).await;
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("outbox.db") && said.contains("is damaged"),
        "{said}"
    );
    let (out, said) = run(&["salvage", "--data-dir", &dir], &envs).await;
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("table deliveries: 2 rows saved")
            && said.contains("1 row(s) left out: they failed their checksum"),
        "{said}"
    );

    // The other two are delivered; the changed one is not sent as it now reads.
    receiver.state.status.store(200, Ordering::SeqCst);
    let before = receiver.requests().len();
    let server = start_binary(&envs).await;
    let url = server.url.clone();
    let left = poll_until(Duration::from_secs(60), || backlog(&url), |n| *n == 0).await;
    assert_eq!(left, 0);
    let mut delivered = receiver.event_ids(before);
    delivered.sort();
    let mut expected = vec![ids[0].clone(), ids[2].clone()];
    expected.sort();
    assert_eq!(delivered, expected);
}

#[tokio::test]
async fn a_journal_batch_changed_inside_a_sound_page_fails_its_checksum_and_salvage_leaves_it_out()
{
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    // ClickHouse unreachable: the events stay in the journal, one batch each (sent one at a
    // time), so the n-th event is batch n.
    let envs = vec![
        ("CARTSTREAM_DATA_DIR", dir.clone()),
        ("CARTSTREAM_CLICKHOUSE_URL", DEAD_CLICKHOUSE_URL.to_owned()),
        ("CARTSTREAM_CLICKHOUSE_TIMEOUT", "1s".to_owned()),
        ("CARTSTREAM_SHUTDOWN_TIMEOUT", "1s".to_owned()),
    ];
    let server = start_binary(&envs).await;
    let ids: Vec<String> = (0..3).map(|i| unique(&format!("batchsum{i}"))).collect();
    let http = reqwest::Client::new();
    for id in &ids {
        let r = http
            .post(format!("{}/events", server.url))
            .json(&item_added(id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    stop(server).await;
    // A clean journal passes, every batch verified; the check also writes the WAL back.
    let (out, said) = run(&["check", "--data-dir", &dir, "--full"], &[]).await;
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("journal.db: ok (3 batch(es) of 3 event(s) verified)"),
        "{said}"
    );

    // One character of the second event's id, inside its batch's blob.
    let damaged = &ids[1];
    let changed = format!("{}x", &damaged[..damaged.len() - 1]);
    rewrite_in_file(&data.path().join("journal.db"), damaged, &changed);

    let (out, said) = run(&["check", "--data-dir", &dir, "--full"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(
            "journal.db: DAMAGED (1 batch(es) damaged: batch 2 (event 2) fails its checksum); \
             with the server stopped, run `cartstream salvage --data-dir"
        ),
        "{said}"
    );
    let (out, said) = run(&[], &envs).await;
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("journal.db") && said.contains("batch 2 (event 2) fails its checksum"),
        "{said}"
    );
    let (out, said) = run(&["salvage", "--data-dir", &dir], &[]).await;
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("table journal_batches: 2 rows saved")
            && said.contains("1 row(s) left out: they failed their checksum (1 event(s)"),
        "{said}"
    );
    let (out, said) = run(&["check", "--data-dir", &dir], &[]).await;
    assert!(out.status.success(), "{said}");

    // On the embedded store, the journal's other two are forwarded and listed; the changed one
    // is not stored as it now reads.
    let server = start_binary(&[("CARTSTREAM_DATA_DIR", dir.clone())]).await;
    let url = format!("{}/events?limit=10", server.url);
    let (status, page) = poll_until(
        Duration::from_secs(30),
        || get(&url),
        |(_, p)| p["events"].as_array().is_some_and(|e| e.len() >= 2),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let mut listed: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventId"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut expected = vec![ids[0].as_str(), ids[2].as_str()];
    expected.sort_unstable();
    assert_eq!(listed, expected);
}
