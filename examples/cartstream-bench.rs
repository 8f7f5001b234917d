//! cartstream-bench: a load generator for any server that speaks the wire contract
//! (docs/PROTOCOL.md), and nothing else, so it can drive this implementation or another.
//!
//! ```sh
//! cargo run --release --example cartstream-bench -- ws --connections 8 --window 64 --duration 10s
//! cargo run --release --example cartstream-bench -- ws --window 1          # closed loop
//! cargo run --release --example cartstream-bench -- http --concurrency 32
//! cargo run --release --example cartstream-bench -- http-batch --batch-size 100
//! ulimit -n 65536; cargo run --release --example cartstream-bench -- idle --connections 5000
//! ```
//!
//! Open files: `idle` with N connections needs N + a few descriptors in this process and in the
//! server, so raise `ulimit -n` in the shell that starts each (the default soft limit is often
//! 1024; where the hard limit is lower than 65536, as in a container, use the hard limit:
//! `ulimit -n $(ulimit -Hn)`). A connection refused with "Too many open files" is counted as a
//! failure and the report says so.
//!
//! Every reply is checked: one per message, in order (its `requestId` is the one sent), of the
//! right type, and with the status the event deserves (`accepted` for a fresh valid event,
//! `duplicate` for an id that was already acknowledged `accepted`, rejected /
//! `validation_failed` for an event that breaks a rule). A run is bounded by `--events` and
//! `--duration` (10 s when neither is given), and only ever targets a loopback address.
//! The exit status is 1 when any reply was wrong or missing.

/// mimalloc, as the server uses: the generator shares the machine's two cores with the
/// server, so its own allocator cost comes off the server's throughput.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, Parser, Subcommand};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[path = "support/cli.rs"]
mod cli;
use cli::{loopback_url, parse_duration};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// With only `--events`, a run still stops after this long.
const MAX_RUN: Duration = Duration::from_secs(600);
/// Ids remembered per connection or worker as candidates for `--duplicates`.
const DUP_POOL: usize = 4096;

#[derive(Parser)]
#[command(
    name = "cartstream-bench",
    about = "Load generator for the cartstream wire contract"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// WebSocket `cart_event` / `cart_event_batch`, pipelined within a window per connection.
    Ws(WsArgs),
    /// `POST /events`, one event per request.
    Http(HttpArgs),
    /// `POST /events/batch`.
    HttpBatch(HttpBatchArgs),
    /// Opens many WebSocket connections and holds them (measure the server's RSS meanwhile).
    Idle(IdleArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Server base URL; the WebSocket URL is derived from it. Loopback hosts only.
    #[arg(long, default_value = "http://127.0.0.1:3001")]
    url: String,
    /// Events to send in the measured phase (after warmup).
    #[arg(long)]
    events: Option<u64>,
    /// Length of the measured phase, e.g. `10s`, `500ms`, `2m`.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Load sent before measuring starts; not counted.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Fraction of events that re-send an id already acknowledged `accepted`.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Fraction of events that break a validation rule.
    #[arg(long, default_value_t = 0.0)]
    invalid: f64,
    /// How long to wait for any one reply before counting it (and the rest) as lost.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    reply_timeout: Duration,
    /// Server process id: report its CPU use over the measured phase and its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also print a machine-readable JSON summary (last line of stdout).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct WsArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Messages in flight per connection; 1 is a closed loop.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Events per message: 1 sends `cart_event`, more sends `cart_event_batch`.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
}

#[derive(Args)]
struct HttpArgs {
    #[command(flatten)]
    common: Common,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

#[derive(Args)]
struct HttpBatchArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
}

#[derive(Args)]
struct IdleArgs {
    #[arg(long, default_value = "http://127.0.0.1:3001")]
    url: String,
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// How long to hold the connections once all are open.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    hold: Duration,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    json: bool,
}

fn ws_url(base: &reqwest::Url) -> String {
    let mut url = base.clone();
    let scheme = if base.scheme() == "https" || base.scheme() == "wss" {
        "wss"
    } else {
        "ws"
    };
    let _ = url.set_scheme(scheme);
    url.set_path("/events/stream");
    url.to_string()
}

// ----------------------------------------------------------------------------------------------
// Events and what their answers must be

/// SplitMix64: cheap, and good enough to pick event kinds.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Self(uuid::Uuid::new_v4().as_u64_pair().0)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Accepted(String),
    Duplicate(String),
    Rejected,
}

/// Makes events and remembers accepted ids to re-send as duplicates.
struct Generator {
    rng: Rng,
    duplicates: f64,
    invalid: f64,
    /// Ids answered `accepted`; only these make a `duplicate` certain (an id still in flight
    /// may legitimately be answered `unavailable`).
    acked: Arc<Mutex<VecDeque<String>>>,
    worker: usize,
}

impl Generator {
    fn new(common: &Common, worker: usize) -> Self {
        Self {
            rng: Rng::new(),
            duplicates: common.duplicates,
            invalid: common.invalid,
            acked: Arc::new(Mutex::new(VecDeque::with_capacity(DUP_POOL))),
            worker,
        }
    }

    /// One event as JSON text, and what its answer must be.
    fn event(&mut self) -> (String, Expect) {
        let r = self.rng.unit();
        if r < self.invalid {
            let id = uuid::Uuid::new_v4();
            let body = match self.rng.next() % 4 {
                0 => format!(
                    r#"{{"eventId":"{id}","userId":"","eventType":"item_added","metadata":{{"productId":"p-1"}}}}"#
                ),
                1 => format!(r#"{{"eventId":"{id}","userId":"bench-u","eventType":"nope"}}"#),
                2 => format!(
                    r#"{{"eventId":"{id}","userId":"bench-u","eventType":"checkout_started","metadata":{{"itemCount":1.5}}}}"#
                ),
                _ => format!(
                    r#"{{"eventId":"{id}","userId":"bench-u","eventType":"item_added","metadata":{{"quantity":0}}}}"#
                ),
            };
            return (body, Expect::Rejected);
        }
        if r < self.invalid + self.duplicates {
            let picked = {
                let pool = self.acked.lock().unwrap();
                if pool.is_empty() {
                    None
                } else {
                    let i = (self.rng.next() % pool.len() as u64) as usize;
                    Some(pool[i].clone())
                }
            };
            if let Some(id) = picked {
                return (self.valid(&id), Expect::Duplicate(id));
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        (self.valid(&id), Expect::Accepted(id))
    }

    fn valid(&mut self, id: &str) -> String {
        let user = self.rng.next() % 1000;
        let w = self.worker;
        match self.rng.next() % 4 {
            0 => format!(
                r#"{{"eventId":"{id}","userId":"bench-user-{user}","sessionId":"bench-sess-{w}","eventType":"item_added","metadata":{{"productId":"premium-subscription","quantity":1,"price":29.99,"currency":"USD"}}}}"#
            ),
            1 => format!(
                r#"{{"eventId":"{id}","userId":"bench-user-{user}","sessionId":"bench-sess-{w}","eventType":"cart_viewed","metadata":{{"cartValue":59.98,"itemCount":2}}}}"#
            ),
            2 => format!(
                r#"{{"eventId":"{id}","userId":"bench-user-{user}","eventType":"checkout_started","metadata":{{"cartValue":59.98,"itemCount":2,"currency":"EUR"}}}}"#
            ),
            _ => format!(
                r#"{{"eventId":"{id}","userId":"bench-user-{user}","sessionId":"bench-sess-{w}","eventType":"quantity_updated","metadata":{{"productId":"sku-{user}","quantity":3}}}}"#
            ),
        }
    }

    fn remember(&self, id: &str) {
        if self.duplicates == 0.0 {
            // The pool only serves ids to re-send as duplicates.
            return;
        }
        let mut pool = self.acked.lock().unwrap();
        if pool.len() == DUP_POOL {
            pool.pop_front();
        }
        pool.push_back(id.to_owned());
    }
}

// ----------------------------------------------------------------------------------------------
// Results

#[derive(Default)]
struct Tally {
    messages: u64,
    events: u64,
    /// Event outcomes: accepted, duplicate, rejected, unavailable, error:<code>, http_<status>.
    statuses: BTreeMap<String, u64>,
    /// Events whose answer differed from what the event deserved.
    mismatches: u64,
    /// Replies out of order (wrong `requestId`), of the wrong type, or malformed.
    protocol_errors: u64,
    /// Transport failures, timeouts, messages never answered.
    errors: u64,
    samples: Vec<String>,
    last_reply: Option<Instant>,
    /// Send to reply, per message, in microseconds.
    latency: Option<Histogram<u64>>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: Some(Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds")),
            ..Self::default()
        }
    }
    fn status(&mut self, s: &str) {
        match self.statuses.get_mut(s) {
            Some(n) => *n += 1,
            None => {
                self.statuses.insert(s.to_owned(), 1);
            }
        }
    }
    fn sample(&mut self, what: String) {
        if self.samples.len() < 5 {
            self.samples.push(what);
        }
    }
    fn mismatch(&mut self, what: String) {
        self.mismatches += 1;
        self.sample(what);
    }
    fn protocol(&mut self, what: String) {
        self.protocol_errors += 1;
        self.sample(what);
    }
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.sample(what);
    }
    fn merge(&mut self, other: Tally) {
        self.messages += other.messages;
        self.events += other.events;
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.mismatches += other.mismatches;
        self.protocol_errors += other.protocol_errors;
        self.errors += other.errors;
        for s in other.samples {
            self.sample(s);
        }
        self.last_reply = self.last_reply.max(other.last_reply);
        if let (Some(a), Some(b)) = (self.latency.as_mut(), other.latency.as_ref()) {
            a.add(b).expect("same bounds");
        }
    }
}

/// Checks one event's answer (`status`, plus `eventId` for accepted/duplicate).
fn check_event(t: &mut Tally, g: &Generator, expect: &Expect, status: &str, id: Option<&str>) {
    t.status(status);
    match (expect, status) {
        (Expect::Accepted(want), "accepted") | (Expect::Duplicate(want), "duplicate")
            if id == Some(want.as_str()) =>
        {
            if status == "accepted" {
                g.remember(want);
            }
        }
        (Expect::Rejected, "rejected") => {}
        _ => t.mismatch(format!(
            "expected {expect:?}, got {status} (eventId {id:?})"
        )),
    }
}

/// When the measured phase runs, and how many events it may still send.
struct Plan {
    measure_from: Instant,
    until: Instant,
    budget: Option<AtomicU64>,
}

impl Plan {
    fn new(common: &Common) -> Self {
        let measure_from = Instant::now() + common.warmup;
        let run = match (common.events, common.duration) {
            (_, Some(d)) => d,
            (Some(_), None) => MAX_RUN,
            (None, None) => Duration::from_secs(10),
        };
        Self {
            measure_from,
            until: measure_from + run,
            budget: common.events.map(AtomicU64::new),
        }
    }

    /// How many of `want` events to send now, and whether they are measured; `None` to stop.
    fn take(&self, want: u64) -> Option<(u64, bool)> {
        let now = Instant::now();
        if now >= self.until {
            return None;
        }
        if now < self.measure_from {
            return Some((want, false));
        }
        match &self.budget {
            None => Some((want, true)),
            Some(b) => {
                let prev = b
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                        (left > 0).then(|| left.saturating_sub(want))
                    })
                    .ok()?;
                Some((prev.min(want), true))
            }
        }
    }
}

/// CPU ticks (utime + stime) of a process; Linux reports them in 1/100 s.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct CpuProbe {
    server: Option<(String, u64)>,
    client: Option<u64>,
    at: Instant,
}

impl CpuProbe {
    fn start(server_pid: Option<u32>) -> Self {
        Self {
            server: server_pid
                .map(|p| p.to_string())
                .and_then(|p| cpu_ticks(&p).map(|t| (p, t))),
            client: cpu_ticks("self"),
            at: Instant::now(),
        }
    }
    /// Percent of one core used since `start`, by the server and by this client.
    fn finish(&self) -> (Option<f64>, Option<f64>, Option<u64>) {
        let secs = self.at.elapsed().as_secs_f64();
        let pct = |ticks: u64| ticks as f64 / 100.0 / secs * 100.0;
        let server = self
            .server
            .as_ref()
            .and_then(|(p, t0)| cpu_ticks(p).map(|t| pct(t - t0)));
        let rss = self.server.as_ref().and_then(|(p, _)| rss_kib(p));
        let client = self
            .client
            .and_then(|t0| cpu_ticks("self").map(|t| pct(t - t0)));
        (server, client, rss)
    }
}

fn report(mode: &str, params: Value, common: &Common, plan: &Plan, t: &Tally, cpu: &CpuProbe) {
    let end = t.last_reply.unwrap_or_else(Instant::now);
    let secs = end
        .saturating_duration_since(plan.measure_from)
        .as_secs_f64()
        .max(1e-9);
    let h = t.latency.as_ref().expect("histogram");
    let q = |x: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    let accepted = t.statuses.get("accepted").copied().unwrap_or(0);
    let acked = accepted + t.statuses.get("duplicate").copied().unwrap_or(0);
    let (server_cpu, client_cpu, server_rss) = cpu.finish();
    println!("cartstream-bench {mode} {params}");
    println!(
        "  measured {secs:.2} s: {} events in {} messages",
        t.events, t.messages
    );
    println!(
        "  throughput: {:.0} events/s answered, {:.0} acked (accepted+duplicate)/s, {:.0} messages/s",
        t.events as f64 / secs,
        acked as f64 / secs,
        t.messages as f64 / secs
    );
    println!(
        "  latency per message (send->reply): p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us, mean {:.0} us",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        h.max(),
        h.mean()
    );
    println!("  statuses: {:?}", t.statuses);
    println!(
        "  mismatches {}, protocol errors {}, errors {}",
        t.mismatches, t.protocol_errors, t.errors
    );
    for s in &t.samples {
        println!("    e.g. {s}");
    }
    if let Some(c) = server_cpu {
        println!(
            "  server CPU {c:.0}% of one core, RSS {} KiB",
            server_rss.unwrap_or(0)
        );
    }
    if let Some(c) = client_cpu {
        println!("  client CPU {c:.0}% of one core");
    }
    if common.json {
        let summary = json!({
            "mode": mode, "params": params, "url": common.url,
            "measured_seconds": secs, "events": t.events, "messages": t.messages,
            "events_per_sec": t.events as f64 / secs, "acked_per_sec": acked as f64 / secs,
            "messages_per_sec": t.messages as f64 / secs,
            "latency_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                           "max": h.max(), "mean": h.mean()},
            "statuses": t.statuses, "mismatches": t.mismatches,
            "protocol_errors": t.protocol_errors, "errors": t.errors, "samples": t.samples,
            "server_cpu_pct": server_cpu, "client_cpu_pct": client_cpu, "server_rss_kib": server_rss,
        });
        println!("{summary}");
    }
}

// ----------------------------------------------------------------------------------------------
// WebSocket

/// A message sent and not yet answered.
struct Pending {
    request_id: String,
    sent: Instant,
    measured: bool,
    /// One per event; a `cart_event` has exactly one.
    expect: Vec<Expect>,
    batch: bool,
}

async fn run_ws(args: WsArgs) -> Result<bool, String> {
    let base = loopback_url(&args.common.url)?;
    let url = ws_url(&base);
    if args.window == 0 || args.batch_size == 0 || args.connections == 0 {
        return Err("--connections, --window and --batch-size must be at least 1".into());
    }
    let mut sockets = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        let first = next_json(&mut ws, Duration::from_secs(10)).await?;
        if first["type"] != "connection_ack" {
            return Err(format!("first message is not connection_ack: {first}"));
        }
        sockets.push(ws);
    }
    let plan = Arc::new(Plan::new(&args.common));
    let cpu = Arc::new(Mutex::new(None));
    let probe_at = {
        let cpu = Arc::clone(&cpu);
        let pid = args.common.server_pid;
        let at = plan.measure_from;
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            *cpu.lock().unwrap() = Some(CpuProbe::start(pid));
        })
    };
    let mut tasks = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let generator = Generator::new(&args.common, i);
        tasks.push(tokio::spawn(ws_connection(
            i,
            ws,
            generator,
            Arc::clone(&plan),
            args.window,
            args.batch_size,
            args.common.reply_timeout,
        )));
    }
    let mut total = Tally::new();
    for task in tasks {
        total.merge(
            task.await
                .map_err(|e| format!("connection task failed: {e}"))?,
        );
    }
    let _ = probe_at.await;
    let probe = cpu
        .lock()
        .unwrap()
        .take()
        .unwrap_or_else(|| CpuProbe::start(None));
    let params = json!({"connections": args.connections, "window": args.window,
        "batch_size": args.batch_size, "duplicates": args.common.duplicates,
        "invalid": args.common.invalid});
    report("ws", params, &args.common, &plan, &total, &probe);
    Ok(total.mismatches + total.protocol_errors + total.errors == 0)
}

async fn ws_connection(
    conn: usize,
    ws: Ws,
    generator: Generator,
    plan: Arc<Plan>,
    window: usize,
    batch_size: usize,
    reply_timeout: Duration,
) -> Tally {
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel::<Pending>();
    let window = Arc::new(Semaphore::new(window));
    let generator = Arc::new(Mutex::new(generator));
    let writer = tokio::spawn(ws_writer(
        conn,
        sink,
        Arc::clone(&generator),
        Arc::clone(&plan),
        Arc::clone(&window),
        batch_size,
        tx,
    ));
    let mut tally = ws_reader(stream, rx, generator, window, reply_timeout).await;
    match writer.await {
        Ok(Ok(mut sink)) => {
            let _ = sink.send(Message::Close(None)).await;
        }
        Ok(Err(e)) => tally.error(format!("connection {conn}: send failed: {e}")),
        Err(e) => tally.error(format!("connection {conn}: writer panicked: {e}")),
    }
    tally
}

async fn ws_writer(
    conn: usize,
    mut sink: SplitSink<Ws, Message>,
    generator: Arc<Mutex<Generator>>,
    plan: Arc<Plan>,
    window: Arc<Semaphore>,
    batch_size: usize,
    tx: mpsc::UnboundedSender<Pending>,
) -> Result<SplitSink<Ws, Message>, String> {
    let mut seq = 0u64;
    loop {
        match window.try_acquire() {
            Ok(p) => p.forget(),
            Err(_) => {
                // The window is full: put what is buffered on the wire, then wait for a reply.
                sink.flush().await.map_err(|e| e.to_string())?;
                match window.acquire().await {
                    Ok(p) => p.forget(),
                    Err(_) => break, // the reader gave up
                }
            }
        }
        let Some((n, measured)) = plan.take(batch_size as u64) else {
            break;
        };
        if n == 0 {
            break;
        }
        seq += 1;
        let request_id = format!("c{conn}-{seq}");
        let (text, expect, batch) = {
            let mut g = generator.lock().unwrap();
            if batch_size == 1 {
                let (event, expect) = g.event();
                let text =
                    format!(r#"{{"type":"cart_event","requestId":"{request_id}","data":{event}}}"#);
                (text, vec![expect], false)
            } else {
                let mut text =
                    format!(r#"{{"type":"cart_event_batch","requestId":"{request_id}","data":["#);
                let mut expect = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let (event, e) = g.event();
                    if i > 0 {
                        text.push(',');
                    }
                    text.push_str(&event);
                    expect.push(e);
                }
                text.push_str("]}");
                (text, expect, true)
            }
        };
        let pending = Pending {
            request_id,
            sent: Instant::now(),
            measured,
            expect,
            batch,
        };
        if tx.send(pending).is_err() {
            break;
        }
        sink.feed(Message::text(text))
            .await
            .map_err(|e| e.to_string())?;
    }
    sink.flush().await.map_err(|e| e.to_string())?;
    Ok(sink)
}

async fn ws_reader(
    mut stream: SplitStream<Ws>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    generator: Arc<Mutex<Generator>>,
    window: Arc<Semaphore>,
    reply_timeout: Duration,
) -> Tally {
    let mut t = Tally::new();
    // Replies come in order, so the next reply answers the oldest message not yet answered.
    while let Some(p) = rx.recv().await {
        let reply = match next_json(&mut stream, reply_timeout).await {
            Ok(v) => v,
            Err(e) => {
                let lost = 1 + rx.len();
                t.errors += lost as u64;
                t.sample(format!("{e}; {lost} messages unanswered"));
                window.close();
                return t;
            }
        };
        let now = Instant::now();
        if p.measured {
            t.messages += 1;
            t.events += p.expect.len() as u64;
            t.last_reply = Some(now);
            let us = now.duration_since(p.sent).as_micros() as u64;
            t.latency
                .as_mut()
                .expect("histogram")
                .saturating_record(us.max(1));
        }
        let mut scratch = Tally::new();
        let tally = if p.measured { &mut t } else { &mut scratch };
        check_ws_reply(tally, &generator.lock().unwrap(), &p, &reply);
        window.add_permits(1);
    }
    t
}

fn check_ws_reply(t: &mut Tally, g: &Generator, p: &Pending, reply: &Value) {
    if reply["requestId"] != p.request_id.as_str() {
        t.protocol(format!(
            "out of order: sent {} next, got reply {reply}",
            p.request_id
        ));
        return;
    }
    let kind = reply["type"].as_str().unwrap_or("");
    match (kind, p.batch) {
        ("event_ack", false) => {
            let status = reply["status"].as_str().unwrap_or("?");
            check_event(t, g, &p.expect[0], status, reply["eventId"].as_str());
        }
        ("batch_ack", true) => {
            let Some(results) = reply["results"].as_array() else {
                t.protocol(format!("batch_ack without results: {reply}"));
                return;
            };
            if results.len() != p.expect.len() {
                t.protocol(format!(
                    "batch of {} answered with {} results",
                    p.expect.len(),
                    results.len()
                ));
                return;
            }
            let mut counts = [0u64; 3];
            for (i, (r, e)) in results.iter().zip(&p.expect).enumerate() {
                if r["index"].as_u64() != Some(i as u64) {
                    t.protocol(format!("result {i} has index {}", r["index"]));
                }
                let status = r["status"].as_str().unwrap_or("?");
                match status {
                    "accepted" => counts[0] += 1,
                    "duplicate" => counts[1] += 1,
                    "rejected" => counts[2] += 1,
                    _ => {}
                }
                check_event(t, g, e, status, r["eventId"].as_str());
            }
            let said = [
                reply["accepted"].as_u64(),
                reply["duplicates"].as_u64(),
                reply["rejected"].as_u64(),
            ];
            if said != counts.map(Some) {
                t.protocol(format!(
                    "batch_ack counts {said:?} disagree with its results {counts:?}"
                ));
            }
        }
        ("error", _) => {
            let code = reply["code"].as_str().unwrap_or("?");
            let status = if code == "validation_failed" && !p.batch {
                "rejected".to_owned()
            } else if code == "unavailable" {
                "unavailable".to_owned()
            } else {
                format!("error:{code}")
            };
            for e in &p.expect {
                check_event(t, g, e, &status, None);
            }
            if status == "rejected" && reply["details"].as_array().is_none_or(|d| d.is_empty()) {
                t.protocol(format!("validation_failed without details: {reply}"));
            }
        }
        _ => t.protocol(format!(
            "unexpected reply type {kind:?} to a {}: {reply}",
            if p.batch { "batch" } else { "cart_event" }
        )),
    }
}

/// The next text message as JSON, answering pings on the way.
async fn next_json<S>(stream: &mut S, timeout: Duration) -> Result<Value, String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(timeout, stream.next())
            .await
            .map_err(|_| format!("no reply within {timeout:?}"))?
            .ok_or("connection closed")?
            .map_err(|e| format!("connection failed: {e}"))?;
        match msg {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str()).map_err(|e| format!("bad JSON reply: {e}"))
            }
            Message::Close(frame) => {
                return Err(format!("server closed the connection: {frame:?}"))
            }
            Message::Binary(_) => return Err("unexpected binary frame".into()),
            _ => continue,
        }
    }
}

// ----------------------------------------------------------------------------------------------
// HTTP

async fn run_http(
    common: Common,
    concurrency: usize,
    batch: Option<usize>,
) -> Result<bool, String> {
    let base = loopback_url(&common.url)?;
    if concurrency == 0 || batch == Some(0) {
        return Err("--concurrency and --batch-size must be at least 1".into());
    }
    let url = base
        .join(if batch.is_some() {
            "/events/batch"
        } else {
            "/events"
        })
        .map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(common.reply_timeout)
        .build()
        .map_err(|e| e.to_string())?;
    // Fail early and clearly when nothing listens.
    client
        .get(base.join("/health").map_err(|e| e.to_string())?)
        .send()
        .await
        .map_err(|e| format!("cannot reach {base}: {e}"))?;
    let plan = Arc::new(Plan::new(&common));
    let cpu = Arc::new(Mutex::new(None));
    let probe_at = {
        let cpu = Arc::clone(&cpu);
        let pid = common.server_pid;
        let at = plan.measure_from;
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            *cpu.lock().unwrap() = Some(CpuProbe::start(pid));
        })
    };
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let generator = Generator::new(&common, w);
        tasks.push(tokio::spawn(http_worker(
            client.clone(),
            url.clone(),
            generator,
            Arc::clone(&plan),
            batch,
        )));
    }
    let mut total = Tally::new();
    for task in tasks {
        total.merge(task.await.map_err(|e| format!("worker failed: {e}"))?);
    }
    let _ = probe_at.await;
    let probe = cpu
        .lock()
        .unwrap()
        .take()
        .unwrap_or_else(|| CpuProbe::start(None));
    let (mode, params) = match batch {
        None => ("http", json!({"concurrency": concurrency})),
        Some(b) => (
            "http-batch",
            json!({"concurrency": concurrency, "batch_size": b}),
        ),
    };
    let mut params = params;
    params["duplicates"] = json!(common.duplicates);
    params["invalid"] = json!(common.invalid);
    report(mode, params, &common, &plan, &total, &probe);
    Ok(total.mismatches + total.protocol_errors + total.errors == 0)
}

async fn http_worker(
    client: reqwest::Client,
    url: reqwest::Url,
    mut g: Generator,
    plan: Arc<Plan>,
    batch: Option<usize>,
) -> Tally {
    let mut t = Tally::new();
    while let Some((n, measured)) = plan.take(batch.unwrap_or(1) as u64) {
        if n == 0 {
            break;
        }
        let (body, expect) = if batch.is_some() {
            let mut body = String::from(r#"{"events":["#);
            let mut expect = Vec::with_capacity(n as usize);
            for i in 0..n {
                let (event, e) = g.event();
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&event);
                expect.push(e);
            }
            body.push_str("]}");
            (body, expect)
        } else {
            let (event, e) = g.event();
            (event, vec![e])
        };
        let sent = Instant::now();
        let result = async {
            let r = client
                .post(url.clone())
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            let status = r.status().as_u16();
            let bytes = r.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        }
        .await;
        let now = Instant::now();
        let mut scratch = Tally::new();
        let tally = if measured { &mut t } else { &mut scratch };
        let (status, bytes) = match result {
            Ok(ok) => ok,
            Err(e) => {
                tally.error(format!("request failed: {e}"));
                continue;
            }
        };
        if measured {
            tally.messages += 1;
            tally.events += n;
            tally.last_reply = Some(now);
            let us = now.duration_since(sent).as_micros() as u64;
            tally
                .latency
                .as_mut()
                .expect("histogram")
                .saturating_record(us.max(1));
        }
        let reply: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        check_http_reply(tally, &g, batch.is_some(), &expect, status, &reply);
    }
    t
}

fn check_http_reply(
    t: &mut Tally,
    g: &Generator,
    batch: bool,
    expect: &[Expect],
    status: u16,
    reply: &Value,
) {
    match (batch, status) {
        (false, 202 | 200) => {
            let s = reply["status"].as_str().unwrap_or("?");
            let consistent = (status == 202) == (s == "accepted");
            if !consistent {
                t.protocol(format!("HTTP {status} with status {s:?}"));
            }
            check_event(t, g, &expect[0], s, reply["eventId"].as_str());
        }
        (false, 422) => {
            if reply["code"] != "validation_failed"
                || reply["details"].as_array().is_none_or(|d| d.is_empty())
            {
                t.protocol(format!("422 without validation_failed details: {reply}"));
            }
            check_event(t, g, &expect[0], "rejected", None);
        }
        (true, 200) => {
            let Some(results) = reply["results"].as_array() else {
                t.protocol(format!("batch answer without results: {reply}"));
                return;
            };
            if results.len() != expect.len() {
                t.protocol(format!(
                    "batch of {} answered with {} results",
                    expect.len(),
                    results.len()
                ));
                return;
            }
            for (i, (r, e)) in results.iter().zip(expect).enumerate() {
                if r["index"].as_u64() != Some(i as u64) {
                    t.protocol(format!("result {i} has index {}", r["index"]));
                }
                check_event(
                    t,
                    g,
                    e,
                    r["status"].as_str().unwrap_or("?"),
                    r["eventId"].as_str(),
                );
            }
        }
        (_, 503) => {
            for e in expect {
                check_event(t, g, e, "unavailable", None);
            }
        }
        (_, other) => {
            let label = format!("http_{other}");
            for e in expect {
                check_event(t, g, e, &label, None);
            }
            t.sample(format!("HTTP {other}: {reply}"));
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Idle connections

async fn run_idle(args: IdleArgs) -> Result<bool, String> {
    let base = loopback_url(&args.url)?;
    let url = Arc::new(ws_url(&base));
    let pid = args.server_pid.map(|p| p.to_string());
    let rss_before = pid.as_deref().and_then(rss_kib);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let opened = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let started = Instant::now();
    let (done_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (gate, url, opened, failures) = (
            Arc::clone(&gate),
            Arc::clone(&url),
            Arc::clone(&opened),
            Arc::clone(&failures),
        );
        let mut done = done_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("open");
            let connected = async {
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let ack = next_json(&mut ws, Duration::from_secs(10)).await?;
                if ack["type"] != "connection_ack" {
                    return Err(format!("first message is not connection_ack: {ack}"));
                }
                Ok::<_, String>(ws)
            };
            let mut ws = match tokio::time::timeout(Duration::from_secs(30), connected).await {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => {
                    *failures.lock().unwrap().entry(e).or_default() += 1;
                    return false;
                }
                Err(_) => {
                    *failures
                        .lock()
                        .unwrap()
                        .entry("connect timeout".into())
                        .or_default() += 1;
                    return false;
                }
            };
            drop(permit);
            opened.fetch_add(1, Ordering::Relaxed);
            // Hold it, answering the server's pings, until told to stop; report if it survived.
            loop {
                tokio::select! {
                    _ = done.recv() => {
                        let _ = ws.close(None).await;
                        return true;
                    }
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
                        Some(Ok(_)) => {}
                    },
                }
            }
        }));
    }
    // Wait until every attempt has finished (open or failed).
    loop {
        let failed: u64 = failures.lock().unwrap().values().sum();
        if opened.load(Ordering::Relaxed) + failed >= args.connections as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_time = started.elapsed();
    let n_open = opened.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_open = pid.as_deref().and_then(rss_kib);
    println!(
        "cartstream-bench idle: {n_open} of {} connections open after {:.2} s; holding {:?}",
        args.connections,
        open_time.as_secs_f64(),
        args.hold
    );
    tokio::time::sleep(args.hold).await;
    let rss_held = pid.as_deref().and_then(rss_kib);
    let _ = done_tx.send(());
    let mut survived = 0u64;
    for task in tasks {
        if task.await.unwrap_or(false) {
            survived += 1;
        }
    }
    let failures = failures.lock().unwrap().clone();
    println!("  still open at the end: {survived}");
    println!("  failures: {failures:?}");
    if failures.keys().any(|k| k.contains("Too many open files")) {
        println!("  hint: raise the fd limit (ulimit -n 65536) for this client and the server");
    }
    if let (Some(b), Some(o), Some(h)) = (rss_before, rss_open, rss_held) {
        println!(
            "  server RSS: {b} KiB before, {o} KiB with {n_open} open, {h} KiB after {:?}; {:.1} KiB per connection",
            args.hold,
            (o.saturating_sub(b)) as f64 / n_open.max(1) as f64
        );
    }
    if args.json {
        println!(
            "{}",
            json!({"mode": "idle", "url": args.url, "connections": args.connections,
                "opened": n_open, "survived": survived, "open_seconds": open_time.as_secs_f64(),
                "failures": failures, "server_rss_kib_before": rss_before,
                "server_rss_kib_open": rss_open, "server_rss_kib_held": rss_held})
        );
    }
    Ok(n_open == args.connections as u64 && survived == n_open)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Ws(a) => run_ws(a).await,
        Mode::Http(a) => run_http(a.common, a.concurrency, None).await,
        Mode::HttpBatch(a) => run_http(a.common, a.concurrency, Some(a.batch_size)).await,
        Mode::Idle(a) => run_idle(a).await,
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cartstream-bench: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
