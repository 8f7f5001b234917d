//! Nothing acked is ever lost (PROTOCOL.md section 2), with faults injected: ClickHouse or
//! Redis cut behind a proxy, the journal full, the process killed with SIGKILL or stopped with
//! SIGTERM under load. Each test prints its figures (acked vs found in ClickHouse).

use crate::backends::*;
use crate::binary::{run_within, start_binary, stop, Process};
use crate::helpers::*;
use crate::proxy::FaultProxy;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

pub(crate) fn host_port(url: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url.split("://").nth(1).unwrap();
    let hp = rest.rsplit('@').next().unwrap().trim_end_matches('/');
    hp.to_socket_addrs().unwrap().next().unwrap()
}

struct Ch {
    db: ThrowawayDatabase,
}

impl Ch {
    async fn counts(&self) -> (u64, u64) {
        let sql = format!(
            "SELECT count(), uniqExact(event_id) FROM `{}`.cart_events FINAL FORMAT TabSeparated",
            self.db.name
        );
        match clickhouse_sql(&self.db.url, &sql).await {
            Ok(body) => {
                let mut p = body.split_whitespace().map(|x| x.parse::<u64>().unwrap());
                (p.next().unwrap(), p.next().unwrap())
            }
            Err(_) => (0, 0),
        }
    }

    async fn ids(&self) -> HashSet<String> {
        let sql = format!(
            "SELECT event_id FROM `{}`.cart_events FINAL FORMAT TabSeparated",
            self.db.name
        );
        clickhouse_sql(&self.db.url, &sql)
            .await
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the table holds at least `n` rows, or `within` has passed; the counts then.
    async fn wait_for(&self, n: u64, within: Duration) -> (u64, u64) {
        poll_until(within, || self.counts(), |c| c.0 >= n).await
    }
}

/// One client's answers: (eventId, status or `error:<code>`), and ids it sent but never got
/// an answer for.
#[derive(Default)]
struct Answers {
    answered: Vec<(String, String)>,
    unanswered: Vec<String>,
    close_code: Option<u16>,
}

impl Answers {
    fn with(&self, status: &str) -> HashSet<String> {
        self.answered
            .iter()
            .filter(|(_, s)| s == status)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

fn merge(all: Vec<Answers>) -> Answers {
    let mut out = Answers::default();
    for a in all {
        out.answered.extend(a.answered);
        out.unanswered.extend(a.unanswered);
        out.close_code = out.close_code.or(a.close_code);
    }
    out
}

/// Sends `rounds` bursts of `per_round` pipelined events, `pause` apart, reading replies
/// concurrently; stops early if the connection ends.
async fn ws_client(
    ws_url: String,
    rounds: usize,
    per_round: usize,
    pause: Duration,
    acked: Arc<AtomicUsize>,
) -> Answers {
    let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let ids: Vec<String> = (0..rounds * per_round).map(|_| unique("f")).collect();
    let to_send = ids.clone();
    let writer = tokio::spawn(async move {
        for round in to_send.chunks(per_round) {
            for id in round {
                let m = json!({"type": "cart_event", "requestId": id, "data": item_added(id)});
                if tx.feed(Message::text(m.to_string())).await.is_err() {
                    return;
                }
            }
            if tx.flush().await.is_err() {
                return;
            }
            // Paces the load so it spans the fault: a client's rhythm, not a wait for the server.
            tokio::time::sleep(pause).await;
        }
        // Keep the sink alive until the reader is done.
        std::future::pending::<()>().await;
    });
    let mut out = Answers::default();
    let mut next = 0usize;
    // The connection_ack.
    let _ = rx.next().await;
    while next < ids.len() {
        match tokio::time::timeout(Duration::from_secs(60), rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let r: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(r["requestId"], ids[next].as_str(), "replies in order");
                let status = match r["type"].as_str() {
                    Some("event_ack") => r["status"].as_str().unwrap().to_owned(),
                    _ => format!("error:{}", r["code"].as_str().unwrap()),
                };
                if status == "accepted" {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                out.answered.push((ids[next].clone(), status));
                next += 1;
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                out.close_code = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) | Err(_) => break,
        }
    }
    writer.abort();
    out.unanswered = ids[next..].to_vec();
    out
}

async fn http_client(url: String, rounds: usize, per_round: usize, pause: Duration) -> Answers {
    let http = reqwest::Client::new();
    let mut out = Answers::default();
    for _ in 0..rounds {
        let ids: Vec<String> = (0..per_round).map(|_| unique("h")).collect();
        let events: Vec<Value> = ids.iter().map(|id| item_added(id)).collect();
        match http
            .post(format!("{url}/events/batch"))
            .json(&json!({"events": events}))
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                if status == 200 {
                    for (id, res) in ids.iter().zip(body["results"].as_array().unwrap()) {
                        out.answered
                            .push((id.clone(), res["status"].as_str().unwrap().to_owned()));
                    }
                } else {
                    let code = format!("error:{}", body["code"].as_str().unwrap_or("?"));
                    out.answered
                        .extend(ids.into_iter().map(|id| (id, code.clone())));
                }
            }
            Err(_) => out.unanswered.extend(ids),
        }
        // Paces the load so it spans the fault: a client's rhythm, not a wait for the server.
        tokio::time::sleep(pause).await;
    }
    out
}

/// A metric's value, 0 when the server does not list it.
async fn metric(app: &TestApp, name: &str) -> f64 {
    app.metric(name).await.unwrap_or(0.0)
}

#[tokio::test]
async fn clickhouse_cut_during_load_acks_keep_flowing_and_nothing_is_lost() {
    let Some(ch_url) = clickhouse_url_or_skip().await else {
        return;
    };
    let Some(redis_url) = redis_url_or_skip().await else {
        return;
    };
    let ch = Ch {
        db: ThrowawayDatabase::new(&ch_url),
    };
    let proxy = FaultProxy::start(host_port(&ch_url)).await;
    let (db, prefix, proxied) = (ch.db.name.clone(), redis_prefix(), proxy.url("http"));
    let app = TestApp::spawn_with(move |s| {
        s.redis_url = Some(redis_url);
        s.redis_key_prefix = prefix;
        s.clickhouse_url = Some(proxied);
        s.clickhouse_database = db;
        s.clickhouse_timeout = Duration::from_secs(2);
        s.forward_interval = Duration::from_millis(100);
        s.forward_backoff_max = Duration::from_millis(300);
    })
    .await;
    let acked = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(tokio::spawn(ws_client(
            app.ws_url(),
            40,
            25,
            Duration::from_millis(50),
            Arc::clone(&acked),
        )));
    }
    let http = tokio::spawn(http_client(app.url(""), 40, 25, Duration::from_millis(50)));
    // First slow (every chunk to and from ClickHouse delayed), then cut altogether.
    proxy.slow(Duration::from_millis(150));
    let acked_at_slow = acked.load(Ordering::SeqCst);
    wait_until(
        "acks while ClickHouse is slow",
        Duration::from_secs(20),
        || acked.load(Ordering::SeqCst) > acked_at_slow,
    )
    .await;
    proxy.cut();
    let acked_at_cut = acked.load(Ordering::SeqCst);
    // Cut until acks flowed and the journal held them; the clients keep sending meanwhile.
    let journal_during_cut = poll_until(
        Duration::from_secs(20),
        || async {
            if acked.load(Ordering::SeqCst) > acked_at_cut {
                metric(&app, "cartstream_journal_entries").await
            } else {
                0.0
            }
        },
        |entries| *entries > 0.0,
    )
    .await;
    let acked_during_cut = acked.load(Ordering::SeqCst) - acked_at_cut;
    let rows_during_cut = ch.counts().await.0;
    proxy.restore();
    let mut all = Vec::new();
    for c in clients {
        all.push(c.await.unwrap());
    }
    all.push(http.await.unwrap());
    let answers = merge(all);
    let accepted = answers.with("accepted");
    assert_eq!(answers.answered.len(), 4 * 1000, "every message answered");
    assert_eq!(
        accepted.len(),
        4 * 1000,
        "every event accepted, ClickHouse slow, down or not"
    );
    assert!(
        acked_during_cut > 0,
        "acks kept flowing while ClickHouse was cut"
    );
    assert!(journal_during_cut > 0.0, "the journal held the backlog");
    let (count, uniq) = ch
        .wait_for(accepted.len() as u64, Duration::from_secs(60))
        .await;
    let stored = ch.ids().await;
    eprintln!(
        "FIGURES clickhouse-cut: acked={} acked_during_cut={acked_during_cut} rows_during_cut={rows_during_cut} \
         journal_during_cut={journal_during_cut} found={count} uniq={uniq} flush_errors={}",
        accepted.len(),
        metric(&app, "cartstream_flush_errors_total").await
    );
    assert_eq!(
        (count, uniq),
        (accepted.len() as u64, accepted.len() as u64)
    );
    assert_eq!(stored, accepted);
}

async fn redis_cut(policy: &str) -> (Answers, Answers, Ch, TestApp, FaultProxy) {
    let ch_url = clickhouse_url_or_skip().await.unwrap();
    let redis_url = redis_url_or_skip().await.unwrap();
    let ch = Ch {
        db: ThrowawayDatabase::new(&ch_url),
    };
    let proxy = FaultProxy::start(host_port(&redis_url)).await;
    let (db, prefix, proxied) = (ch.db.name.clone(), redis_prefix(), proxy.url("redis"));
    let policy = match policy {
        "fail_open" => cartstream::app::ingest::DedupOutage::FailOpen,
        _ => cartstream::app::ingest::DedupOutage::FailClosed,
    };
    let app = TestApp::spawn_with(move |s| {
        s.redis_url = Some(proxied);
        s.redis_key_prefix = prefix;
        s.redis_connect_timeout = Duration::from_millis(300);
        s.redis_command_timeout = Duration::from_millis(300);
        s.clickhouse_url = Some(ch_url);
        s.clickhouse_database = db;
        s.forward_interval = Duration::from_millis(100);
        s.dedup_outage = policy;
    })
    .await;
    let acked = Arc::new(AtomicUsize::new(0));
    let before = ws_client(app.ws_url(), 4, 25, Duration::ZERO, Arc::clone(&acked)).await;
    assert_eq!(before.with("accepted").len(), 100);
    proxy.cut();
    let during = ws_client(app.ws_url(), 4, 25, Duration::ZERO, Arc::clone(&acked)).await;
    (before, during, ch, app, proxy)
}

#[tokio::test]
async fn redis_cut_fail_open_keeps_accepting_and_still_answers_duplicates() {
    if redis_url_or_skip().await.is_none() || clickhouse_url_or_skip().await.is_none() {
        return;
    }
    let (before, during, ch, app, proxy) = redis_cut("fail_open").await;
    assert_eq!(
        during.with("accepted").len(),
        100,
        "{:?}",
        &during.answered[..3]
    );
    // A repeat of an event accepted before the cut is still a duplicate: the store knows it.
    let old = before.answered[0].0.clone();
    assert_eq!(app.post_event(&item_added(&old)).await.0, 200);
    let new_during = during.answered[0].0.clone();
    assert_eq!(app.post_event(&item_added(&new_during)).await.0, 200);
    assert!(metric(&app, "cartstream_dedup_fallback_total").await > 0.0);
    proxy.restore();
    // After a dedup failure the server rests its dedup store for a second (an in-process timer
    // with no outward sign while fail-open keeps accepting): wait it out. (The fail-closed
    // test below sees the rest end, as 503s turning into 202s.)
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = unique("after");
    assert_eq!(app.post_event(&item_added(&after)).await.0, 202);
    assert_eq!(app.post_event(&item_added(&after)).await.0, 200);
    let mut accepted = before.with("accepted");
    accepted.extend(during.with("accepted"));
    accepted.insert(after);
    let (count, uniq) = ch
        .wait_for(accepted.len() as u64, Duration::from_secs(30))
        .await;
    eprintln!(
        "FIGURES redis-cut-fail-open: acked={} found={count} uniq={uniq}",
        accepted.len()
    );
    assert_eq!(ch.ids().await, accepted);
}

#[tokio::test]
async fn redis_cut_fail_closed_answers_unavailable_and_recovers() {
    if redis_url_or_skip().await.is_none() || clickhouse_url_or_skip().await.is_none() {
        return;
    }
    let (before, during, ch, app, proxy) = redis_cut("fail_closed").await;
    assert!(
        during
            .answered
            .iter()
            .all(|(_, s)| s == "error:unavailable"),
        "{:?}",
        &during.answered[..3]
    );
    let (status, body) = app.post_event(&item_added(&unique("closed"))).await;
    assert_eq!((status, body["retryable"].as_bool()), (503, Some(true)));
    proxy.restore();
    // The client retries an event refused during the cut, as a client would, until the
    // server's dedup rest (one second after the last failure of the store) is over.
    let retry = during.answered[0].0.clone();
    let status = poll_until(
        Duration::from_secs(10),
        || async { app.post_event(&item_added(&retry)).await.0 },
        |status| *status != 503,
    )
    .await;
    assert_eq!(status, 202);
    let mut accepted = before.with("accepted");
    accepted.insert(retry);
    let (count, _) = ch
        .wait_for(accepted.len() as u64, Duration::from_secs(30))
        .await;
    eprintln!(
        "FIGURES redis-cut-fail-closed: acked={} found={count}",
        accepted.len()
    );
    assert_eq!(ch.ids().await, accepted);
}

#[tokio::test]
async fn a_full_journal_answers_unavailable_keeps_what_it_has_and_recovers() {
    let Some(ch_url) = clickhouse_url_or_skip().await else {
        return;
    };
    let ch = Ch {
        db: ThrowawayDatabase::new(&ch_url),
    };
    let proxy = FaultProxy::start(host_port(&ch_url)).await;
    let (db, proxied) = (ch.db.name.clone(), proxy.url("http"));
    let app = TestApp::spawn_with(move |s| {
        s.clickhouse_url = Some(proxied);
        s.clickhouse_database = db;
        s.clickhouse_timeout = Duration::from_secs(1);
        s.journal_max_bytes = 40_000;
        s.forward_interval = Duration::from_millis(50);
        s.forward_backoff_max = Duration::from_millis(200);
    })
    .await;
    proxy.cut();
    let acked = Arc::new(AtomicUsize::new(0));
    // Small bursts: the journal refuses a whole group when it does not fit.
    let answers = ws_client(app.ws_url(), 40, 10, Duration::from_millis(5), acked).await;
    let accepted = answers.with("accepted");
    let refused = answers.with("error:unavailable");
    assert!(
        !accepted.is_empty() && !refused.is_empty(),
        "{} accepted, {} refused",
        accepted.len(),
        refused.len()
    );
    assert_eq!(accepted.len() + refused.len(), 400);
    // Groups are appended whole, so a big group can be refused while a single event still
    // fits: fill the last bytes one event at a time.
    let mut accepted = accepted;
    let mut last = (0, Value::Null);
    for _ in 0..1000 {
        let id = unique("fill");
        last = app.post_event(&item_added(&id)).await;
        if last.0 != 202 {
            break;
        }
        accepted.insert(id);
    }
    let (status, body) = last;
    assert_eq!(
        (status, body["code"].as_str(), body["retryable"].as_bool()),
        (503, Some("unavailable"), Some(true))
    );
    proxy.restore();
    let (count, _) = ch
        .wait_for(accepted.len() as u64, Duration::from_secs(30))
        .await;
    assert_eq!(
        count,
        accepted.len() as u64,
        "everything accepted before the journal filled"
    );
    // Space is free again: a refused event's retry is accepted.
    let retry = refused.iter().next().unwrap().clone();
    let mut accepted_all = accepted.clone();
    let status = poll_until(
        Duration::from_secs(10),
        || async { app.post_event(&item_added(&retry)).await.0 },
        |status| *status == 202,
    )
    .await;
    if status == 202 {
        accepted_all.insert(retry.clone());
    }
    assert!(
        accepted_all.contains(&retry),
        "the service recovers when space frees"
    );
    let (count, uniq) = ch
        .wait_for(accepted_all.len() as u64, Duration::from_secs(30))
        .await;
    eprintln!(
        "FIGURES journal-full: accepted={} refused={} found={count} uniq={uniq}",
        accepted.len(),
        refused.len()
    );
    assert_eq!(ch.ids().await, accepted_all);
}

/// Four WebSocket clients sending 5,000 events each, pipelined in bursts, against `proc`;
/// returns once `n` events are acked, with the clients still sending.
async fn load_until_acked(proc: &Process, n: usize) -> Vec<tokio::task::JoinHandle<Answers>> {
    let ws_url = proc.url.replace("http://", "ws://") + "/events/stream";
    let acked = Arc::new(AtomicUsize::new(0));
    let clients = (0..4)
        .map(|_| {
            tokio::spawn(ws_client(
                ws_url.clone(),
                50,
                100,
                Duration::from_millis(5),
                Arc::clone(&acked),
            ))
        })
        .collect();
    wait_until("events acked under load", Duration::from_secs(120), || {
        acked.load(Ordering::SeqCst) >= n
    })
    .await;
    clients
}

fn production_env(
    ch: &Ch,
    data_dir: &std::path::Path,
    redis_url: &str,
    prefix: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("CARTSTREAM_DATA_DIR", data_dir.display().to_string()),
        ("CARTSTREAM_REDIS_URL", redis_url.to_owned()),
        ("CARTSTREAM_REDIS_KEY_PREFIX", prefix.to_owned()),
        ("CARTSTREAM_CLICKHOUSE_URL", ch.db.url.clone()),
        ("CARTSTREAM_CLICKHOUSE_DATABASE", ch.db.name.clone()),
        ("CARTSTREAM_FORWARD_INTERVAL", "200ms".into()),
        ("CARTSTREAM_DEDUP_HOLD", "2s".into()),
    ]
}

#[tokio::test]
async fn kill_9_under_load_then_restart_loses_nothing_acked_and_retries_are_not_false_duplicates() {
    let Some(ch_url) = clickhouse_url_or_skip().await else {
        return;
    };
    let Some(redis_url) = redis_url_or_skip().await else {
        return;
    };
    let ch = Ch {
        db: ThrowawayDatabase::new(&ch_url),
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = redis_prefix();
    let env = production_env(&ch, dir.path(), &redis_url, &prefix);
    let mut proc = start_binary(&env).await;
    let clients = load_until_acked(&proc, 3000).await;
    proc.child.start_kill().unwrap(); // SIGKILL
    proc.child.wait().await.unwrap();
    let mut all = Vec::new();
    for c in clients {
        all.push(c.await.unwrap());
    }
    let answers = merge(all);
    let accepted = answers.with("accepted");
    assert!(!answers.unanswered.is_empty(), "the kill landed mid-load");

    let proc = start_binary(&env).await;
    let http = reqwest::Client::new();
    // Retry everything that was not answered, as a client would.
    let mut retried_accepted = HashSet::new();
    let mut retried_duplicate = HashSet::new();
    for chunk in answers.unanswered.chunks(250) {
        let mut pending: Vec<String> = chunk.to_vec();
        let events: Vec<Value> = pending.iter().map(|id| item_added(id)).collect();
        // In flight from the killed process until its holds lapse: retried until answered.
        let answered = poll_until(
            Duration::from_secs(20),
            || async {
                let r = http
                    .post(format!("{}/events/batch", proc.url))
                    .json(&json!({"events": events}))
                    .send()
                    .await
                    .unwrap();
                if r.status().as_u16() == 200 {
                    Some(r.json::<Value>().await.unwrap())
                } else {
                    None
                }
            },
            Option::is_some,
        )
        .await;
        if let Some(body) = answered {
            for (id, res) in pending.iter().zip(body["results"].as_array().unwrap()) {
                match res["status"].as_str().unwrap() {
                    "accepted" => retried_accepted.insert(id.clone()),
                    "duplicate" => retried_duplicate.insert(id.clone()),
                    other => panic!("{other}"),
                };
            }
            pending.clear();
        }
        assert!(pending.is_empty(), "retries were answered");
    }
    let mut everything: HashSet<String> = accepted.clone();
    everything.extend(answers.unanswered.iter().cloned());
    let (count, uniq) = ch
        .wait_for(everything.len() as u64, Duration::from_secs(60))
        .await;
    let stored = ch.ids().await;
    eprintln!(
        "FIGURES kill-9: acked_before_kill={} unanswered={} retried_accepted={} retried_duplicate={} found={count} uniq={uniq}",
        accepted.len(),
        answers.unanswered.len(),
        retried_accepted.len(),
        retried_duplicate.len()
    );
    assert!(
        accepted.is_subset(&stored),
        "every acked event reached ClickHouse"
    );
    assert!(
        retried_duplicate.is_subset(&stored),
        "a duplicate answer is never false"
    );
    assert_eq!(stored, everything);
    assert_eq!(count, uniq);
    drop(proc);
}

#[tokio::test]
async fn sigterm_under_load_exits_0_after_answering_and_flushing() {
    let Some(ch_url) = clickhouse_url_or_skip().await else {
        return;
    };
    let Some(redis_url) = redis_url_or_skip().await else {
        return;
    };
    let ch = Ch {
        db: ThrowawayDatabase::new(&ch_url),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut env = production_env(&ch, dir.path(), &redis_url, &redis_prefix());
    // A long interval: only the shutdown flush can bring the rows to ClickHouse in time.
    env.push(("CARTSTREAM_FORWARD_INTERVAL", "1h".into()));
    env.push(("CARTSTREAM_FORWARD_MAX_ROWS", "1000000".into()));
    let proc = start_binary(&env).await;
    let clients = load_until_acked(&proc, 2000).await;
    // SIGTERM; it exits 0 within 60 s.
    stop(proc).await;
    let mut all = Vec::new();
    for c in clients {
        all.push(c.await.unwrap());
    }
    let codes: Vec<Option<u16>> = all.iter().map(|a| a.close_code).collect();
    let answers = merge(all);
    let accepted = answers.with("accepted");
    assert_eq!(
        accepted.len(),
        answers.answered.len(),
        "everything answered was accepted"
    );
    assert!(
        codes.iter().all(|c| *c == Some(1001)),
        "clients saw 1001: {codes:?}"
    );
    let (count, uniq) = ch.counts().await;
    eprintln!(
        "FIGURES sigterm: acked={} unanswered={} found_right_after_exit={count} uniq={uniq}",
        accepted.len(),
        answers.unanswered.len()
    );
    assert_eq!(
        ch.ids().await,
        accepted,
        "flushed on shutdown: every acked event, nothing else"
    );
}

#[tokio::test]
async fn a_second_instance_on_the_same_data_dir_is_refused_and_a_killed_ones_dir_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let envs = [("CARTSTREAM_DATA_DIR", dir.path().display().to_string())];
    let mut first = start_binary(&envs).await;
    let first_pid = first.child.id().unwrap();

    // The second one refuses to start, naming the holder, before it opens anything.
    let second_envs = [
        ("CARTSTREAM_DATA_DIR", dir.path().display().to_string()),
        ("CARTSTREAM_LOG", "info".to_owned()),
    ];
    let (second, said) = run_within(&[], &second_envs, Duration::from_secs(30)).await;
    assert!(!second.status.success(), "{said}");
    assert!(
        said.contains("is in use by another cartstream") && said.contains(&first_pid.to_string()),
        "{said}"
    );
    // The first one is untouched.
    let health = reqwest::get(format!("{}/health", first.url)).await.unwrap();
    assert_eq!(health.status(), 200);

    // kill -9 leaves no lock behind: the operating system releases it with the process.
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    let again = start_binary(&envs).await;
    let health = reqwest::get(format!("{}/health", again.url)).await.unwrap();
    assert_eq!(health.status(), 200);
}
