//! Freshness under load, from outside (issue 14): a steady WebSocket load at `--rate` events/s,
//! and for one event in `--sample-every`, the time from its `accepted` ack until it is readable
//! in ClickHouse directly (polled by `event_id`, not through the journal) and until a webhook
//! receiver this tool runs has it. `scripts/freshness.sh` starts the server with the webhook
//! route and runs this; `cargo run --release --example freshness -- --help`.

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[path = "support/cli.rs"]
mod cli;

#[derive(Parser)]
struct Args {
    /// The server's base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:3101")]
    url: String,
    /// Events per second, in total.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    #[arg(long, default_value_t = 8)]
    connections: u64,
    /// Events per `cart_event_batch`.
    #[arg(long, default_value_t = 25)]
    batch: u64,
    #[arg(long, value_parser = cli::parse_duration, default_value = "30s")]
    duration: Duration,
    /// Track one event in this many.
    #[arg(long, default_value_t = 50)]
    sample_every: u64,
    /// ClickHouse HTTP URL and the table to poll (`database.table`).
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse: String,
    #[arg(long)]
    table: String,
    /// How often ClickHouse is asked (the resolution of the ClickHouse figures).
    #[arg(long, value_parser = cli::parse_duration, default_value = "50ms")]
    poll: Duration,
    /// Port of the webhook receiver this tool runs on 127.0.0.1 (the server's route posts
    /// there); 0: no receiver.
    #[arg(long, default_value_t = 0)]
    webhook_port: u16,
}

/// Per tracked event: when it was acked, when ClickHouse had it, when the webhook had it.
#[derive(Default, Clone, Copy)]
struct Track {
    acked: Option<Instant>,
    in_store: Option<Instant>,
    hooked: Option<Instant>,
}

type Tracks = Arc<Mutex<HashMap<String, Track>>>;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("freshness: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let base = cli::loopback_url(&args.url)?;
    let tracks: Tracks = Arc::default();
    if args.webhook_port != 0 {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.webhook_port))
            .await
            .map_err(|e| format!("webhook receiver: {e}"))?;
        tokio::spawn(receive_webhooks(listener, Arc::clone(&tracks)));
    }
    let ws_url = format!("ws://{}/events/stream", base.authority());
    let started = Instant::now();
    let until = started + args.duration;
    let acked_events = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut senders = Vec::new();
    for c in 0..args.connections {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .map_err(|e| format!("connect {ws_url}: {e}"))?;
        senders.push(tokio::spawn(connection(
            c,
            ws,
            Arc::clone(&tracks),
            Arc::clone(&acked_events),
            Pace {
                every: Duration::from_secs_f64(
                    (args.batch * args.connections) as f64 / args.rate as f64,
                ),
                batch: args.batch,
                sample_every: args.sample_every,
                until,
            },
        )));
    }
    let poller = tokio::spawn(poll_clickhouse(
        args.clickhouse.clone(),
        args.table.clone(),
        args.poll,
        Arc::clone(&tracks),
        until + Duration::from_secs(15),
    ));
    for s in senders {
        s.await.map_err(|e| e.to_string())??;
    }
    // Sending stopped at `until`; the connections then waited for their last acks.
    let sent_for = until.saturating_duration_since(started);
    poller.await.map_err(|e| e.to_string())??;
    if args.webhook_port != 0 {
        // The route's last deliveries.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    report(
        &args,
        &tracks,
        acked_events.load(std::sync::atomic::Ordering::Relaxed),
        sent_for,
    );
    Ok(())
}

struct Pace {
    every: Duration,
    batch: u64,
    sample_every: u64,
    until: Instant,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection: a batch every `pace.every`, pipelined; acks read as they come.
async fn connection(
    c: u64,
    ws: Ws,
    tracks: Tracks,
    acked_events: Arc<std::sync::atomic::AtomicU64>,
    pace: Pace,
) -> Result<(), String> {
    let (mut sink, mut stream) = ws.split();
    let in_flight: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let reader = {
        let (tracks, in_flight) = (Arc::clone(&tracks), Arc::clone(&in_flight));
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let now = Instant::now();
                let Ok(reply) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if reply["type"] != "batch_ack" {
                    continue;
                }
                let accepted = reply["accepted"].as_u64().unwrap_or(0);
                acked_events.fetch_add(accepted, std::sync::atomic::Ordering::Relaxed);
                let rid = reply["requestId"].as_str().unwrap_or("").to_owned();
                let sampled = in_flight.lock().unwrap().remove(&rid).unwrap_or_default();
                let mut t = tracks.lock().unwrap();
                for id in sampled {
                    t.entry(id).or_default().acked = Some(now);
                }
            }
        })
    };
    let mut tick = tokio::time::interval(pace.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq = 0u64;
    while Instant::now() < pace.until {
        tick.tick().await;
        seq += 1;
        let rid = format!("f{c}-{seq}");
        let mut body = String::with_capacity(pace.batch as usize * 200);
        let mut sampled = Vec::new();
        for i in 0..pace.batch {
            let id = uuid::Uuid::new_v4().to_string();
            if (seq * pace.batch + i).is_multiple_of(pace.sample_every) {
                sampled.push(id.clone());
            }
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"eventId":"{id}","userId":"fresh-{}","eventType":"item_added","metadata":{{"productId":"p-{i}","quantity":1}}}}"#,
                seq % 1000
            ));
        }
        in_flight.lock().unwrap().insert(rid.clone(), sampled);
        let text = format!(r#"{{"type":"cart_event_batch","requestId":"{rid}","data":[{body}]}}"#);
        sink.send(Message::text(text))
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    // Let the last acks arrive, then close.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = sink.send(Message::Close(None)).await;
    reader.abort();
    Ok(())
}

/// Asks ClickHouse which acked, tracked events it has, every `poll`, until all are found or
/// `deadline`.
async fn poll_clickhouse(
    url: String,
    table: String,
    poll: Duration,
    tracks: Tracks,
    deadline: Instant,
) -> Result<(), String> {
    let http = reqwest::Client::new();
    loop {
        tokio::time::sleep(poll).await;
        let waiting: Vec<String> = tracks
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| t.acked.is_some() && t.in_store.is_none())
            .map(|(id, _)| id.clone())
            .take(5000)
            .collect();
        if waiting.is_empty() {
            if Instant::now() >= deadline {
                return Ok(());
            }
            continue;
        }
        let list = waiting
            .iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(",");
        let sql =
            format!("SELECT event_id FROM {table} WHERE event_id IN ({list}) FORMAT TabSeparated");
        let resp = http
            .post(&url)
            .body(sql)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        if !resp.status().is_success() {
            // The table appears with the first insert; until the deadline, ask again.
            if Instant::now() >= deadline {
                let status = resp.status();
                return Err(format!(
                    "ClickHouse {status}: {}",
                    resp.text().await.unwrap_or_default()
                ));
            }
            continue;
        }
        let text = resp.text().await.map_err(|e| e.to_string())?;
        let mut t = tracks.lock().unwrap();
        for id in text.lines() {
            if let Some(track) = t.get_mut(id) {
                track.in_store.get_or_insert(now);
            }
        }
        if Instant::now() >= deadline {
            return Ok(());
        }
    }
}

/// A minimal HTTP/1.1 receiver for the webhook route: reads each request's body, notes when
/// each tracked `eventId` in it arrived, answers 200.
async fn receive_webhooks(listener: tokio::net::TcpListener, tracks: Tracks) {
    while let Ok((mut socket, _)) = listener.accept().await {
        let tracks = Arc::clone(&tracks);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                // Requests on a kept-alive connection, one after another.
                let Some((head_end, length)) = read_head(&mut socket, &mut buf).await else {
                    return;
                };
                while buf.len() < head_end + length {
                    let mut chunk = [0u8; 65536];
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let now = Instant::now();
                let body: Value = serde_json::from_slice(&buf[head_end..head_end + length])
                    .unwrap_or(Value::Null);
                buf.drain(..head_end + length);
                {
                    let mut t = tracks.lock().unwrap();
                    for e in body["events"].as_array().into_iter().flatten() {
                        if let Some(track) = e["eventId"].as_str().and_then(|id| t.get_mut(id)) {
                            track.hooked.get_or_insert(now);
                        }
                    }
                }
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                if socket.write_all(ok).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Reads until a request head is in `buf`: where the body starts, and its length.
async fn read_head(
    socket: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(usize, usize)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            return Some((end + 4, length));
        }
        let mut chunk = [0u8; 65536];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn report(args: &Args, tracks: &Tracks, acked: u64, sent_for: Duration) {
    let t = tracks.lock().unwrap();
    let mut store = Histogram::<u64>::new(3).expect("histogram");
    let mut hook = Histogram::<u64>::new(3).expect("histogram");
    let (mut acked_tracked, mut store_missing, mut hook_missing) = (0, 0, 0);
    for track in t.values() {
        let Some(acked_at) = track.acked else {
            continue;
        };
        acked_tracked += 1;
        match track.in_store {
            Some(at) => {
                store.saturating_record(at.saturating_duration_since(acked_at).as_millis() as u64)
            }
            None => store_missing += 1,
        }
        match track.hooked {
            Some(at) => {
                hook.saturating_record(at.saturating_duration_since(acked_at).as_millis() as u64)
            }
            None => hook_missing += 1,
        }
    }
    println!(
        "freshness: {acked} events acked in {:.1} s ({:.0}/s, target {}/s); {acked_tracked} tracked",
        sent_for.as_secs_f64(),
        acked as f64 / sent_for.as_secs_f64(),
        args.rate
    );
    let line = |name: &str, h: &Histogram<u64>, missing: u64| {
        println!(
            "  ack -> {name}: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({} seen, {missing} not seen)",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max(),
            h.len()
        );
    };
    line(
        &format!("readable in ClickHouse (polled every {:?})", args.poll),
        &store,
        store_missing,
    );
    if args.webhook_port != 0 {
        line("webhook receiver", &hook, hook_missing);
    }
}
