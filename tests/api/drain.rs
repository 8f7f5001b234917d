//! `cartstream drain --data-dir DIR`, black-box: the real binary accepts events while its
//! ClickHouse and one route's receiver refuse, is killed with SIGKILL, and `drain` then
//! forwards and delivers everything its data dir held.

use crate::backends::DEAD_CLICKHOUSE_URL;
use crate::backends::{clickhouse_sql, clickhouse_url_or_skip, random_suffix, ThrowawayDatabase};
use crate::binary::{run, start_binary};
use crate::helpers::{item_added, unique};
use crate::targets::Receiver;
use std::collections::HashSet;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::Ordering;

/// Runs `cartstream drain` on `dir` with `envs` and returns its output (stdout then stderr).
async fn drain(dir: &Path, envs: &[(&str, String)], timeout: &str) -> (Output, String) {
    let dir = dir.display().to_string();
    // The drain must take its data dir from the flag, never from the environment.
    let mut all = vec![(
        "CARTSTREAM_DATA_DIR",
        "/nonexistent/not-this-one".to_owned(),
    )];
    all.extend(envs.iter().cloned());
    run(&["drain", "--data-dir", &dir, "--timeout", timeout], &all).await
}

/// Two routes: `all` to a receiver that refuses (retryably) until the drain, `refused` to one
/// that refuses for good (every event becomes a dead letter).
fn config(dir: &Path, all: &str, refused: &str) -> String {
    let path = dir.join("cartstream.toml");
    let route = |name: &str, url: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nbackoff_min = \"50ms\"\nbackoff_max = \"200ms\"\n\
             max_attempts = 1000\n[routes.target]\nkind = \"webhook\"\nurl = \"{url}\"\n"
        )
    };
    std::fs::write(&path, route("all", all) + &route("refused", refused)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn drain_forwards_and_delivers_what_a_killed_instance_left_and_empties_its_journal() {
    let Some(ch_url) = clickhouse_url_or_skip().await else {
        return;
    };
    let mut db = ThrowawayDatabase::new(&ch_url);
    db.name = format!("chs_test_{}", random_suffix());
    let all = Receiver::start(503).await;
    let refused = Receiver::start(400).await;
    let files = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = config(files.path(), &all.url, &refused.url);
    let common = |clickhouse: &str| {
        vec![
            ("CARTSTREAM_CONFIG", config.clone()),
            ("CARTSTREAM_CLICKHOUSE_URL", clickhouse.to_owned()),
            ("CARTSTREAM_CLICKHOUSE_DATABASE", db.name.clone()),
            ("CARTSTREAM_CLICKHOUSE_TIMEOUT", "2s".to_owned()),
            ("CARTSTREAM_FORWARD_INTERVAL", "100ms".to_owned()),
            ("CARTSTREAM_FORWARD_BACKOFF_MAX", "300ms".to_owned()),
        ]
    };

    // The instance: ClickHouse down, so every accepted event stays in its journal.
    let mut server_env = common(DEAD_CLICKHOUSE_URL);
    server_env.push(("CARTSTREAM_DATA_DIR", data.path().display().to_string()));
    let mut server = start_binary(&server_env).await;
    let http = reqwest::Client::new();
    let sent: Vec<String> = (0..30).map(|_| unique("drain")).collect();
    for id in &sent {
        let r = http
            .post(format!("{}/events", server.url))
            .json(&item_added(id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{id}");
    }
    let repeat = http
        .post(format!("{}/events", server.url))
        .json(&item_added(&sent[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        repeat.status(),
        200,
        "a repeat is a duplicate, not accepted again"
    );

    // While the instance runs, its data dir is refused.
    let (out, said) = drain(data.path(), &common(&ch_url), "5s").await;
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("in use by another cartstream"), "{said}");

    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();

    // ClickHouse still down: the drain gives up at its timeout, exits 1 and says what is left.
    let (out, said) = drain(data.path(), &common(DEAD_CLICKHOUSE_URL), "2s").await;
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("NOT drained") && said.contains("30 journal entries left"),
        "{said}"
    );

    // A working ClickHouse, and the receiver takes deliveries now.
    all.state.status.store(200, Ordering::SeqCst);
    let before = all.requests().len();
    let (out, said) = drain(data.path(), &common(&ch_url), "60s").await;
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("forwarded 30 events")
            && said.contains("0 journal entries left")
            && said.contains("route \"all\": delivered 30 events")
            && said.contains("drained in ")
            && said.contains("s: nothing left"),
        "{said}"
    );
    // `refused` refused every event for good: 30 dead letters in all, whether the instance
    // or the drain made them, and none pending.
    assert!(
        said.contains("0 deliveries left, 30 dead letters in its outbox"),
        "{said}"
    );

    // Every accepted event is in ClickHouse exactly once, and delivered.
    let sql = format!(
        "SELECT count(), uniqExact(event_id) FROM `{}`.cart_events FINAL FORMAT TSV",
        db.name
    );
    let counts = clickhouse_sql(&ch_url, &sql).await.unwrap();
    assert_eq!(counts.split_whitespace().collect::<Vec<_>>(), ["30", "30"]);
    let raw = format!("SELECT count() FROM `{}`.cart_events", db.name);
    assert_eq!(clickhouse_sql(&ch_url, &raw).await.unwrap().trim(), "30");
    let ids = format!("SELECT event_id FROM `{}`.cart_events", db.name);
    let stored: HashSet<String> = clickhouse_sql(&ch_url, &ids)
        .await
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let sent_set: HashSet<String> = sent.iter().cloned().collect();
    assert_eq!(stored, sent_set);
    let delivered: HashSet<String> = all.event_ids(before).into_iter().collect();
    assert_eq!(delivered, sent_set);

    // The journal is empty: a second drain has nothing to do.
    let (out, said) = drain(data.path(), &common(&ch_url), "10s").await;
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("forwarded 0 events") && said.contains("0 journal entries left"),
        "{said}"
    );
}

#[tokio::test]
async fn drain_refuses_a_data_dir_that_does_not_exist() {
    let (out, said) = drain(Path::new("/nonexistent/cartstream-data"), &[], "5s").await;
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("/nonexistent/cartstream-data"), "{said}");
    assert!(!Path::new("/nonexistent/cartstream-data").exists());
}
