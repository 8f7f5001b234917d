//! A full disk under the data dir: acks turn `unavailable`, `GET /ready` answers 503 naming
//! the disk, and once space is freed the server is ready again by itself and nothing acked
//! is lost; the same when only the forwarder writes. On a small tmpfs, which needs root:
//! skipped loudly otherwise, failed under CI.

use crate::backends::*;
use crate::faults::host_port;
use crate::helpers::*;
use crate::proxy::FaultProxy;
use cartstream::adapters::outbound::disk_space::StatVfs;
use cartstream::app::config::Settings;
use cartstream::ports::DiskSpace;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs mounted on a fresh directory, unmounted when dropped (also when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount_or_skip(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Self { dir }),
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => e.to_string(),
        };
        let msg = format!(
            "cannot mount a tmpfs for the full-disk test ({why}); it needs root \
             (CI runs as root)"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and {msg}");
        }
        loud_skip(&msg);
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server still shutting down may hold files open.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros to `path` until `leave` bytes are free on its file system, give or take less
/// than a page (or it is full). Whole pages, never past `leave`: stopping at the first 64 KiB
/// write that got there left anything from `leave - 64 KiB` up, and a server started in what
/// was left then sometimes could not even open its databases.
fn fill(path: &Path, probe: &StatVfs, leave: u64) {
    const PAGE: u64 = 4096;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        let over = probe.space().unwrap().free.saturating_sub(leave);
        let n = over.min(chunk.len() as u64) / PAGE * PAGE;
        if n == 0 || f.write_all(&chunk[..n as usize]).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
}

/// Posts batches of events for `user` until some are answered `unavailable`; the ids
/// accepted on the way.
async fn send_until_unavailable(app: &TestApp, user: &str) -> HashSet<String> {
    let mut accepted = HashSet::new();
    for _ in 0..2000 {
        let events: Vec<Value> = (0..100).map(|_| event(&unique("disk"), user)).collect();
        let (status, body) = app.post_batch(&json!({ "events": events })).await;
        if status == 503 {
            assert_eq!(body["code"], "unavailable", "{body}");
            return accepted;
        }
        assert_eq!(status, 200, "{body}");
        let mut refused = false;
        for r in body["results"].as_array().unwrap() {
            match r["status"].as_str().unwrap() {
                "accepted" => {
                    accepted.insert(r["eventId"].as_str().unwrap().to_owned());
                }
                "unavailable" => refused = true,
                other => panic!("unexpected {other}: {r}"),
            }
        }
        if refused {
            return accepted;
        }
    }
    panic!("the disk never filled");
}

fn event(id: &str, user: &str) -> Value {
    let mut e = item_added(id);
    e["userId"] = json!(user);
    e
}

/// Waits for `/ready` to say the disk is full, sending an event each time (which must not be
/// accepted while it is); returns the body.
async fn wait_disk_full(app: &TestApp, user: &str, accepted: &mut HashSet<String>) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (status, body) = app.get_json("/ready").await;
        if status == 503 && body["disk"]["status"] == "full" {
            return body;
        }
        last = body;
        // Space inside the files may have been reused meanwhile: keep filling.
        accepted.extend(send_until_unavailable(app, user).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/ready never said the disk is full: {last}");
}

/// Every event of `user`, read through `GET /events` page by page.
async fn stored_ids(app: &TestApp, user: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut path = format!("/events?userId={user}&limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        for e in page["events"].as_array().unwrap() {
            out.insert(e["eventId"].as_str().unwrap().to_owned());
        }
        cursor = page["nextCursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            return out;
        }
    }
    panic!("no end of pages");
}

/// Fills the tmpfs under the server, checks it answers as a full disk, frees the space and
/// checks it recovers by itself; `outage` is cut while filling and restored after (the
/// ClickHouse in front of which the journal grows), if any; then reads back every acked event.
async fn full_disk_round(
    tmpfs: &Tmpfs,
    configure: impl FnOnce(&mut Settings),
    proxy: Option<&FaultProxy>,
) {
    let data_dir: PathBuf = tmpfs.path().join("data");
    let dir = data_dir.clone();
    let app = TestApp::spawn_with(move |s| {
        s.data_dir = dir;
        s.forward_interval = Duration::from_millis(50);
        s.forward_backoff_max = Duration::from_millis(200);
        configure(s);
    })
    .await;
    let user = unique("disk-user");
    let (status, body) = app.get_json("/ready").await;
    assert_eq!(
        (status, &body["disk"]["status"]),
        (200, &json!("ok")),
        "{body}"
    );
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains("cartstream_data_dir_total_bytes 25165824"),
        "the gauges show the 24 MiB tmpfs"
    );
    let mut accepted = send_accepted(&app, &user, 1).await;
    if let Some(p) = proxy {
        p.cut();
    }
    let probe = StatVfs {
        dir: tmpfs.path().to_path_buf(),
    };
    let filler = tmpfs.path().join("filler");
    fill(&filler, &probe, 1 << 20);
    accepted.extend(send_until_unavailable(&app, &user).await);
    let body = wait_disk_full(&app, &user, &mut accepted).await;
    let error = body["disk"]["error"].as_str().unwrap();
    assert!(
        error.contains(&data_dir.display().to_string()),
        "the reason names the data dir: {body}"
    );
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(metrics.contains("cartstream_data_dir_full 1"), "{metrics}");
    // The operator frees space; nothing is sent meanwhile.
    std::fs::remove_file(&filler).unwrap();
    if let Some(p) = proxy {
        p.restore();
    }
    let (status, body) = poll_until(
        Duration::from_secs(30),
        || app.get_json("/ready"),
        |(status, _)| *status == 200,
    )
    .await;
    assert_eq!(status, 200, "ready again by itself: {body}");
    assert_eq!(body["disk"]["status"], "ok", "{body}");
    accepted.extend(send_accepted(&app, &user, 3).await);
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(metrics.contains("cartstream_data_dir_full 0"), "{metrics}");
    // Nothing acked is lost (in journal mode, reads show what reached the event store).
    let found = poll_until(
        Duration::from_secs(60),
        || stored_ids(&app, &user),
        |found| accepted.is_subset(found),
    )
    .await;
    let lost: Vec<_> = accepted.difference(&found).collect();
    eprintln!(
        "FIGURES full-disk: accepted={} found={} lost={}",
        accepted.len(),
        found.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acked but lost: {lost:?}");
    app.stop().await.unwrap();
}

/// Sends `batches` batches of 100 events, all of which must be accepted; their ids.
async fn send_accepted(app: &TestApp, user: &str, batches: usize) -> HashSet<String> {
    let mut accepted = HashSet::new();
    for _ in 0..batches {
        let events: Vec<Value> = (0..100).map(|_| event(&unique("ok"), user)).collect();
        let (status, body) = app.post_batch(&json!({ "events": events })).await;
        assert_eq!(
            (status, body["accepted"].as_u64()),
            (200, Some(100)),
            "{body}"
        );
        for r in body["results"].as_array().unwrap() {
            accepted.insert(r["eventId"].as_str().unwrap().to_owned());
        }
    }
    accepted
}

#[tokio::test]
async fn embedded_a_full_disk_is_not_ready_refuses_events_and_recovers_once_space_is_freed() {
    let Some(tmpfs) = Tmpfs::mount_or_skip("24m") else {
        return;
    };
    full_disk_round(&tmpfs, |_| {}, None).await;
}

#[tokio::test]
async fn journal_a_full_disk_is_not_ready_refuses_events_and_recovers_once_space_is_freed() {
    let (Some(redis), Some(ch_url)) = (redis_url_or_skip().await, clickhouse_url_or_skip().await)
    else {
        return;
    };
    let Some(tmpfs) = Tmpfs::mount_or_skip("24m") else {
        return;
    };
    let db = ThrowawayDatabase::new(&ch_url);
    // ClickHouse is cut while the disk fills, so the journal grows until the disk is full.
    let proxy = FaultProxy::start(host_port(&ch_url)).await;
    let (name, url, prefix) = (db.name.clone(), proxy.url("http"), redis_prefix());
    full_disk_round(
        &tmpfs,
        move |s| {
            s.redis_url = Some(redis);
            s.redis_key_prefix = prefix;
            s.clickhouse_url = Some(url);
            s.clickhouse_database = name;
            s.clickhouse_timeout = Duration::from_secs(1);
        },
        Some(&proxy),
    )
    .await;
}

/// No client sends anything while the disk is full: only the forwarder writes, moving a
/// journal kept from a run in front of a ClickHouse that was down into the embedded store,
/// which has no room for it. The server says so as it does when ingest meets a full disk, and
/// is ready again by itself once space is freed; every acked event ends up stored.
#[tokio::test]
async fn a_full_disk_met_by_the_forwarder_alone_is_not_ready_until_space_is_freed() {
    let Some(tmpfs) = Tmpfs::mount_or_skip("24m") else {
        return;
    };
    let data_dir = tmpfs.path().join("data");
    let user = unique("forwarder-user");
    // Acked in front of a ClickHouse that is down: the events stay in the journal.
    let app = TestApp::spawn_in_with(&data_dir, |s| {
        s.clickhouse_url = Some(DEAD_CLICKHOUSE_URL.to_owned());
        s.clickhouse_timeout = Duration::from_millis(200);
        s.shutdown_timeout = Duration::from_millis(500);
    })
    .await;
    let accepted = send_accepted(&app, &user, 100).await;
    app.stop().await.unwrap();

    // The disk fills; the same data dir is then served by the embedded store, into which the
    // forwarder moves the journal.
    let probe = StatVfs {
        dir: tmpfs.path().to_path_buf(),
    };
    let filler = tmpfs.path().join("filler");
    // Room to open the databases (about 250 KiB on an empty data dir), not to move the 10,000
    // journaled events (several MiB).
    fill(&filler, &probe, 1 << 20);
    let app = TestApp::spawn_in_with(&data_dir, |s| {
        s.forward_interval = Duration::from_millis(50);
        s.forward_backoff_max = Duration::from_millis(200);
    })
    .await;
    let (status, body) = poll_until(
        Duration::from_secs(30),
        || app.get_json("/ready"),
        |(status, body)| *status == 503 && body["disk"]["status"] == "full",
    )
    .await;
    assert_eq!(
        (status, &body["disk"]["status"]),
        (503, &json!("full")),
        "{body}"
    );
    assert_eq!(app.metric("cartstream_data_dir_full").await, Some(1.0));

    std::fs::remove_file(&filler).unwrap();
    let (status, body) = poll_until(
        Duration::from_secs(30),
        || app.get_json("/ready"),
        |(status, _)| *status == 200,
    )
    .await;
    assert_eq!(status, 200, "ready again by itself: {body}");
    let found = poll_until(
        Duration::from_secs(60),
        || stored_ids(&app, &user),
        |found| accepted.is_subset(found),
    )
    .await;
    assert_eq!(found.len(), accepted.len(), "every acked event stored");
    assert!(accepted.is_subset(&found));
    app.stop().await.unwrap();
}
