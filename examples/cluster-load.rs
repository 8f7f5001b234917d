//! Load and checks for the multi-instance test (`scripts/cluster-test.sh`): two cartstream
//! instances behind a balancer, on a Redis Cluster and a sharded ClickHouse.
//!
//! - `load`: WebSocket and HTTP batches through the balancer, and repeats of accepted events
//!   sent straight to the *other* instance (the balancer names the one that answered in
//!   `X-Served-By`). Every event that gets no final answer (a dropped connection, `unavailable`,
//!   a timeout) is sent again with the same id and body, as a client would, until it has one.
//!   Writes the ledger: every id sent, every id that must be stored, and how often each was
//!   answered `accepted` (never more than once, or the run fails).
//! - `verify`: waits for ClickHouse to hold what the ledger says must be stored, then checks
//!   that under `FINAL` it holds each of those exactly once and nothing that was never sent.
//! - `rate`: sends as fast as it can with one key to both instances; from the first refusal after
//!   a warm-up (the burst is spent then), prints how many events were accepted (and how many
//!   requests were refused), for a rate limit shared by both.
//!
//! `cargo run --release --example cluster-load -- load --help`.

use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[path = "support/cli.rs"]
mod cli;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Load(LoadArgs),
    Verify(VerifyArgs),
    Rate(RateArgs),
}

#[derive(Args)]
struct LoadArgs {
    /// The balancer's base URL.
    #[arg(long)]
    via: String,
    /// Each instance's own base URL, in the order of the balancer's servers s1, s2, ...
    #[arg(long, value_delimiter = ',')]
    direct: Vec<String>,
    /// How long new events are sent; retries go on for `--grace` more at most.
    #[arg(long, value_parser = cli::parse_duration, default_value = "10s")]
    duration: Duration,
    #[arg(long, value_parser = cli::parse_duration, default_value = "90s")]
    grace: Duration,
    #[arg(long, default_value_t = 4)]
    ws_workers: usize,
    #[arg(long, default_value_t = 2)]
    http_workers: usize,
    /// New events per message.
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// Share of all events sent that are repeats of accepted ones.
    #[arg(long, default_value_t = 0.2)]
    repeat: f64,
    #[arg(long)]
    api_key: Option<String>,
    /// Where the ledger goes: `PREFIX.sent` (every id sent), `PREFIX.stored` (every id that
    /// must be stored), `PREFIX.json` (the summary).
    #[arg(long)]
    out: String,
}

#[derive(Args)]
struct VerifyArgs {
    /// The ledger's prefix, as given to `load --out`.
    #[arg(long)]
    ledger: String,
    /// ClickHouse HTTP URL to read through (the Distributed table's server).
    #[arg(long)]
    clickhouse: String,
    #[arg(long)]
    table: String,
    /// How long to wait for the forwarders to bring every event.
    #[arg(long, value_parser = cli::parse_duration, default_value = "60s")]
    wait: Duration,
}

#[derive(Args)]
struct RateArgs {
    #[arg(long, value_delimiter = ',')]
    direct: Vec<String>,
    #[arg(long)]
    api_key: Option<String>,
    /// How long answers are counted, from the first refusal after the warm-up.
    #[arg(long, value_parser = cli::parse_duration, default_value = "6s")]
    duration: Duration,
    /// Sent first and not counted; counting starts at the first refusal after it, when the burst
    /// is spent, so what is counted is the rate alone.
    #[arg(long, value_parser = cli::parse_duration, default_value = "2s")]
    warmup: Duration,
    #[arg(long, default_value_t = 4)]
    workers: usize,
    #[arg(long, default_value_t = 10)]
    batch: usize,
}

// ----------------------------------------------------------------------------------------------
// The ledger

#[derive(Default)]
struct Entry {
    body: String,
    accepted: u32,
    duplicate: u32,
    /// The instance that answered `accepted`, when known.
    accepted_by: Option<usize>,
}

#[derive(Default)]
struct Ledger {
    entries: Mutex<HashMap<String, Entry>>,
    /// Recently accepted ids, for repeats.
    recent: Mutex<VecDeque<(String, usize)>>,
    statuses: Mutex<BTreeMap<String, u64>>,
    repeats_sent: AtomicU64,
    per_instance: Mutex<BTreeMap<usize, u64>>,
}

/// What one event's answer means for the client.
enum Outcome {
    /// `accepted` or `duplicate`: done.
    Final,
    /// `rejected`: done, and a bug in this generator.
    Rejected,
    /// Anything else: send it again.
    Retry,
}

impl Ledger {
    fn new_event(&self, worker: usize, seq: u64) -> (String, String) {
        let id = uuid::Uuid::new_v4().to_string();
        let user = seq % 500;
        let body = format!(
            r#"{{"eventId":"{id}","userId":"cl-user-{user}","sessionId":"cl-sess-{worker}","eventType":"item_added","metadata":{{"productId":"sku-{seq}","quantity":1,"price":9.5,"currency":"EUR"}}}}"#
        );
        self.entries.lock().unwrap().insert(
            id.clone(),
            Entry {
                body: body.clone(),
                ..Entry::default()
            },
        );
        (id, body)
    }

    fn body(&self, id: &str) -> String {
        self.entries.lock().unwrap()[id].body.clone()
    }

    fn answer(&self, id: &str, status: &str, instance: Option<usize>) -> Outcome {
        *self
            .statuses
            .lock()
            .unwrap()
            .entry(status.to_owned())
            .or_default() += 1;
        match status {
            "accepted" => {
                let mut entries = self.entries.lock().unwrap();
                let e = entries.get_mut(id).expect("an id this run sent");
                e.accepted += 1;
                e.accepted_by = instance;
                drop(entries);
                if let Some(i) = instance {
                    *self.per_instance.lock().unwrap().entry(i).or_default() += 1;
                    let mut recent = self.recent.lock().unwrap();
                    if recent.len() == 10_000 {
                        recent.pop_front();
                    }
                    recent.push_back((id.to_owned(), i));
                }
                Outcome::Final
            }
            "duplicate" => {
                if let Some(e) = self.entries.lock().unwrap().get_mut(id) {
                    e.duplicate += 1;
                }
                Outcome::Final
            }
            "rejected" => Outcome::Rejected,
            _ => Outcome::Retry,
        }
    }

    /// Up to `n` accepted ids, each with the instance that accepted it.
    fn repeats(&self, n: usize, seed: u64) -> Vec<(String, usize)> {
        let recent = self.recent.lock().unwrap();
        if recent.is_empty() {
            return Vec::new();
        }
        (0..n)
            .map(|i| {
                let at = (seed
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(i as u64 * 7919)
                    % recent.len() as u64) as usize;
                recent[at].clone()
            })
            .collect()
    }
}

// ----------------------------------------------------------------------------------------------
// Sending

/// One batch's per-event statuses, in order, and the instance that answered (when known).
type Answers = (Vec<String>, Option<usize>);

fn instance_of(served_by: Option<&str>) -> Option<usize> {
    served_by?
        .strip_prefix('s')?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

fn batch_statuses(reply: &Value, n: usize) -> Result<Vec<String>, String> {
    let results = reply["results"]
        .as_array()
        .ok_or_else(|| format!("no results in {reply}"))?;
    if results.len() != n {
        return Err(format!(
            "{n} events answered with {} results",
            results.len()
        ));
    }
    Ok(results
        .iter()
        .map(|r| r["status"].as_str().unwrap_or("?").to_owned())
        .collect())
}

async fn post_batch(
    http: &reqwest::Client,
    base: &str,
    key: Option<&str>,
    bodies: &[String],
) -> Result<Answers, String> {
    let body = format!(r#"{{"events":[{}]}}"#, bodies.join(","));
    let mut req = http
        .post(format!("{base}/events/batch"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let resp = req.send().await.map_err(|e| format!("send: {e}"))?;
    let instance = instance_of(
        resp.headers()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok()),
    );
    let status = resp.status();
    let reply: Value = resp.json().await.map_err(|e| format!("reply: {e}"))?;
    if status.as_u16() != 200 {
        let code = reply["code"].as_str().unwrap_or("?");
        return Ok((vec![code.to_owned(); bodies.len()], instance));
    }
    Ok((batch_statuses(&reply, bodies.len())?, instance))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(base: &str, key: Option<&str>) -> Result<(Ws, Option<usize>), String> {
    let url = format!("{}/events/stream", base.replacen("http", "ws", 1));
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(k) = key {
        req.headers_mut()
            .insert("x-api-key", k.parse().map_err(|_| "bad key")?);
    }
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| format!("connect: {e}"))?;
    let instance = instance_of(
        resp.headers()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok()),
    );
    let first = next_json(&mut ws).await?;
    if first["type"] != "connection_ack" {
        return Err(format!("first message is not connection_ack: {first}"));
    }
    Ok((ws, instance))
}

async fn next_json(ws: &mut Ws) -> Result<Value, String> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| "no reply within 10 s".to_owned())?
            .ok_or("connection closed")?
            .map_err(|e| format!("connection failed: {e}"))?;
        match msg {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str()).map_err(|e| format!("bad JSON: {e}"))
            }
            Message::Close(f) => return Err(format!("closed: {f:?}")),
            _ => {}
        }
    }
}

async fn ws_batch(ws: &mut Ws, request_id: &str, bodies: &[String]) -> Result<Vec<String>, String> {
    let text = format!(
        r#"{{"type":"cart_event_batch","requestId":"{request_id}","data":[{}]}}"#,
        bodies.join(",")
    );
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let reply = next_json(ws).await?;
    match reply["type"].as_str() {
        Some("batch_ack") => batch_statuses(&reply, bodies.len()),
        Some("error") => Ok(vec![
            reply["code"].as_str().unwrap_or("?").to_owned();
            bodies.len()
        ]),
        _ => Err(format!("unexpected reply {reply}")),
    }
}

/// One client: its own channel (a WebSocket through the balancer, or HTTP through it), its
/// retries, and its repeats sent over HTTP straight to the other instance.
struct Worker {
    n: usize,
    ws: bool,
    args: Arc<LoadArgs>,
    ledger: Arc<Ledger>,
    http: reqwest::Client,
    conn: Option<(Ws, Option<usize>)>,
    retry: VecDeque<String>,
    seq: u64,
    problems: Vec<String>,
}

impl Worker {
    async fn run(mut self, until: Instant, give_up: Instant) -> Vec<String> {
        let repeat_every = if self.args.repeat > 0.0 {
            // A repeat batch of batch/4 events after every `k` new batches gives the share.
            let per = (self.args.batch / 4).max(1) as f64;
            (per * (1.0 - self.args.repeat) / (self.args.repeat * self.args.batch as f64)).max(0.0)
        } else {
            f64::INFINITY
        };
        let mut owed = 0.0;
        loop {
            let now = Instant::now();
            let sending_new = now < until;
            if !sending_new && (self.retry.is_empty() || now >= give_up) {
                break;
            }
            let mut ids: Vec<String> = Vec::new();
            while ids.len() < self.args.batch {
                match self.retry.pop_front() {
                    Some(id) => ids.push(id),
                    None => break,
                }
            }
            if sending_new {
                while ids.len() < self.args.batch {
                    self.seq += 1;
                    ids.push(self.ledger.new_event(self.n, self.seq).0);
                }
            }
            if !self.send_own(ids).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            owed += 1.0;
            if sending_new && owed >= repeat_every {
                owed -= repeat_every;
                self.send_repeats().await;
            }
        }
        let left = self.retry.len();
        if left > 0 {
            self.problems.push(format!(
                "worker {}: {left} events never got a final answer",
                self.n
            ));
        }
        self.problems
    }

    /// Sends `ids` on this worker's channel; false when the channel failed.
    async fn send_own(&mut self, ids: Vec<String>) -> bool {
        let bodies: Vec<String> = ids.iter().map(|id| self.ledger.body(id)).collect();
        let result = if self.ws {
            if self.conn.is_none() {
                match ws_connect(&self.args.via, self.args.api_key.as_deref()).await {
                    Ok(c) => self.conn = Some(c),
                    Err(_) => {
                        self.retry.extend(ids);
                        return false;
                    }
                }
            }
            let (ws, instance) = self.conn.as_mut().expect("connected");
            let instance = *instance;
            let request_id = format!("w{}-{}", self.n, self.seq);
            ws_batch(ws, &request_id, &bodies)
                .await
                .map(|s| (s, instance))
        } else {
            post_batch(
                &self.http,
                &self.args.via,
                self.args.api_key.as_deref(),
                &bodies,
            )
            .await
        };
        match result {
            Ok((statuses, instance)) => {
                // Nothing settled (everything `unavailable` or in flight elsewhere): back off
                // as a client would, instead of asking again at once.
                self.settle(ids, &statuses, instance) > 0
            }
            Err(_) => {
                // A dropped connection: the answers are unknown, so everything is sent again.
                self.conn = None;
                self.retry.extend(ids);
                false
            }
        }
    }

    /// Records the answers; returns how many events they settled.
    fn settle(&mut self, ids: Vec<String>, statuses: &[String], instance: Option<usize>) -> usize {
        let mut settled = 0;
        for (id, status) in ids.into_iter().zip(statuses) {
            match self.ledger.answer(&id, status, instance) {
                Outcome::Final => settled += 1,
                Outcome::Rejected => self.problems.push(format!("{id} was rejected")),
                Outcome::Retry => self.retry.push_back(id),
            }
        }
        settled
    }

    /// Repeats of accepted events, each sent straight to an instance other than the one that
    /// accepted it. Their answers must be `duplicate`; any other final answer is counted.
    async fn send_repeats(&mut self) {
        let picked = self
            .ledger
            .repeats((self.args.batch / 4).max(1), self.seq ^ self.n as u64);
        let n = self.args.direct.len();
        let mut by_target: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (id, accepted_by) in picked {
            by_target.entry((accepted_by + 1) % n).or_default().push(id);
        }
        for (target, ids) in by_target {
            let bodies: Vec<String> = ids.iter().map(|id| self.ledger.body(id)).collect();
            self.ledger
                .repeats_sent
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            let base = &self.args.direct[target];
            if let Ok((statuses, _)) =
                post_batch(&self.http, base, self.args.api_key.as_deref(), &bodies).await
            {
                // A repeat that is not answered `duplicate` at once (the target is down, say)
                // is not retried: its first copy is already settled.
                for (id, status) in ids.iter().zip(&statuses) {
                    if status == "accepted" || status == "duplicate" {
                        self.ledger.answer(id, status, Some(target));
                    }
                }
            }
        }
    }
}

async fn run_load(args: LoadArgs) -> Result<bool, String> {
    for url in args.direct.iter().chain([&args.via]) {
        cli::loopback_url(url)?;
    }
    if args.direct.len() < 2 {
        return Err("--direct needs every instance's URL, at least two".into());
    }
    let args = Arc::new(args);
    let ledger = Arc::new(Ledger::default());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let until = started + args.duration;
    let give_up = until + args.grace;
    let mut tasks = Vec::new();
    for n in 0..args.ws_workers + args.http_workers {
        let worker = Worker {
            n,
            ws: n < args.ws_workers,
            args: Arc::clone(&args),
            ledger: Arc::clone(&ledger),
            http: http.clone(),
            conn: None,
            retry: VecDeque::new(),
            seq: 0,
            problems: Vec::new(),
        };
        tasks.push(tokio::spawn(worker.run(until, give_up)));
    }
    let mut problems = Vec::new();
    for t in tasks {
        problems.extend(t.await.map_err(|e| e.to_string())?);
    }
    write_ledger(&args.out, &ledger, started.elapsed(), problems)
}

fn write_ledger(
    out: &str,
    ledger: &Ledger,
    took: Duration,
    problems: Vec<String>,
) -> Result<bool, String> {
    let entries = ledger.entries.lock().unwrap();
    let mut sent = String::new();
    let mut stored = String::new();
    let (mut must, mut twice, mut unresolved) = (0u64, 0u64, 0u64);
    for (id, e) in entries.iter() {
        sent.push_str(id);
        sent.push('\n');
        if e.accepted + e.duplicate > 0 {
            must += 1;
            stored.push_str(id);
            stored.push('\n');
        } else {
            unresolved += 1;
        }
        if e.accepted > 1 {
            twice += 1;
        }
    }
    std::fs::write(format!("{out}.sent"), sent).map_err(|e| e.to_string())?;
    std::fs::write(format!("{out}.stored"), stored).map_err(|e| e.to_string())?;
    let summary = json!({
        "seconds": took.as_secs_f64(),
        "ids": entries.len(),
        "must_be_stored": must,
        "accepted_twice": twice,
        "unresolved": unresolved,
        "repeats_sent": ledger.repeats_sent.load(Ordering::Relaxed),
        "answers": *ledger.statuses.lock().unwrap(),
        "accepted_per_instance": *ledger.per_instance.lock().unwrap(),
        "problems": problems.iter().take(20).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&summary).expect("JSON");
    std::fs::write(format!("{out}.json"), &text).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(twice == 0 && unresolved == 0 && problems.is_empty())
}

// ----------------------------------------------------------------------------------------------
// Checking ClickHouse

async fn clickhouse(http: &reqwest::Client, url: &str, sql: &str) -> Result<String, String> {
    let resp = http
        .post(url)
        .body(sql.to_owned())
        .send()
        .await
        .map_err(|e| format!("ClickHouse: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("ClickHouse {status}: {}", text.trim()));
    }
    Ok(text)
}

async fn run_verify(args: VerifyArgs) -> Result<bool, String> {
    let read = |suffix: &str| -> Result<HashSet<String>, String> {
        let path = format!("{}.{suffix}", args.ledger);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        Ok(text.lines().map(str::to_owned).collect())
    };
    let sent = read("sent")?;
    let must = read("stored")?;
    let http = reqwest::Client::new();
    let count_sql = format!(
        "SELECT count(), uniqExact(event_id) FROM {} FINAL FORMAT TabSeparated",
        args.table
    );
    let deadline = Instant::now() + args.wait;
    let (count, uniq) = loop {
        let text = clickhouse(&http, &args.clickhouse, &count_sql).await?;
        let mut parts = text
            .split_whitespace()
            .map(|p| p.parse::<u64>().unwrap_or(0));
        let (count, uniq) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if count >= must.len() as u64 || Instant::now() >= deadline {
            break (count, uniq);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ids_sql = format!(
        "SELECT event_id FROM {} FINAL FORMAT TabSeparated",
        args.table
    );
    let stored_text = clickhouse(&http, &args.clickhouse, &ids_sql).await?;
    let stored: HashSet<&str> = stored_text.lines().collect();
    let missing = must
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .count();
    let foreign = stored.iter().filter(|id| !sent.contains(**id)).count();
    let summary = json!({
        "must_be_stored": must.len(),
        "final_count": count,
        "final_uniq": uniq,
        "missing": missing,
        "never_sent": foreign,
        "stored_without_final_answer": stored.len().saturating_sub(must.len() - missing),
    });
    println!("{}", serde_json::to_string_pretty(&summary).expect("JSON"));
    Ok(count == uniq && missing == 0 && foreign == 0)
}

// ----------------------------------------------------------------------------------------------
// A shared rate limit

async fn run_rate(args: RateArgs) -> Result<bool, String> {
    for url in &args.direct {
        cli::loopback_url(url)?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let args = Arc::new(args);
    let ledger = Arc::new(Ledger::default());
    let accepted = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    // Counting starts at the first refusal after the warm-up: only then is the burst known to
    // be spent. A fixed warm-up was not enough while the instances answered slowly at first
    // (a fresh Redis Cluster, after a failover): the burst left over was counted as rate.
    let window = Arc::new(RateWindow::new(Instant::now() + args.warmup));
    let mut tasks = Vec::new();
    for n in 0..args.workers {
        let (http, args, ledger) = (http.clone(), Arc::clone(&args), Arc::clone(&ledger));
        let (accepted, limited) = (Arc::clone(&accepted), Arc::clone(&limited));
        let window = Arc::clone(&window);
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while window.open(args.duration) {
                let bodies: Vec<String> = (0..args.batch)
                    .map(|_| {
                        seq += 1;
                        ledger.new_event(n, seq).1
                    })
                    .collect();
                let base = &args.direct[(n + seq as usize) % args.direct.len()];
                match post_batch(&http, base, args.api_key.as_deref(), &bodies).await {
                    Ok((statuses, _)) => {
                        let refused = statuses.iter().any(|s| s == "rate_limited");
                        if refused {
                            window.refused();
                        }
                        if window.counting() {
                            let ok = statuses.iter().filter(|s| *s == "accepted").count();
                            accepted.fetch_add(ok as u64, Ordering::Relaxed);
                            if refused {
                                limited.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if refused {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    let Some(from) = window.from() else {
        return Err(format!(
            "no request was refused within {:?} after the warm-up: the limit never bound",
            RATE_FIRST_REFUSAL
        ));
    };
    let summary = json!({
        "seconds": from.elapsed().as_secs_f64(),
        "accepted": accepted.load(Ordering::Relaxed),
        "rate_limited_answers": limited.load(Ordering::Relaxed),
    });
    println!("{}", serde_json::to_string_pretty(&summary).expect("JSON"));
    Ok(true)
}

/// The longest `rate` waits, after its warm-up, for the limit to refuse a request.
const RATE_FIRST_REFUSAL: Duration = Duration::from_secs(30);

/// When `rate` counts: from the first refusal after `warm` (the burst is spent then), for the
/// run's duration.
struct RateWindow {
    warm: Instant,
    from: std::sync::OnceLock<Instant>,
}

impl RateWindow {
    fn new(warm: Instant) -> Self {
        Self {
            warm,
            from: std::sync::OnceLock::new(),
        }
    }

    /// A request was refused: the window opens now, unless still warming up or already open.
    fn refused(&self) {
        let now = Instant::now();
        if now >= self.warm {
            let _ = self.from.set(now);
        }
    }

    /// Whether an answer arriving now is counted.
    fn counting(&self) -> bool {
        self.from.get().is_some_and(|from| Instant::now() >= *from)
    }

    fn from(&self) -> Option<Instant> {
        self.from.get().copied()
    }

    /// Whether to keep sending: until `duration` after the window opened, or, while it has not,
    /// until it is clear that it never will.
    fn open(&self, duration: Duration) -> bool {
        let now = Instant::now();
        match self.from.get() {
            Some(from) => now < *from + duration,
            None => now < self.warm + RATE_FIRST_REFUSAL,
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().mode {
        Mode::Load(a) => run_load(a).await,
        Mode::Verify(a) => run_verify(a).await,
        Mode::Rate(a) => run_rate(a).await,
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("cluster-load: the checks failed (see the summary above)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cluster-load: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
