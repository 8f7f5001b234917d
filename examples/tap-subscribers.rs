//! tap-subscribers: headless subscribers of `GET /events/tap` that cost little, for measuring
//! what watching costs the server (scripts/bench-with-taps.sh).
//!
//! ```sh
//! cargo run --release --example tap-subscribers -- --url ws://127.0.0.1:3001/events/tap -n 5
//! ```
//!
//! Opens N subscribers without a filter, each reading the full stream as fast as it can, and
//! counts events without building a JSON tree: a `tap_events` frame starts with its `count`.
//! Runs until the server closes the connections (or `--duration` passes), then prints what
//! each subscriber received and skipped; exits 1 if any received nothing (unless filtered).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(name = "tap-subscribers", about = "Headless subscribers of the tap")]
struct Cli {
    /// The tap's address.
    #[arg(long, default_value = "ws://127.0.0.1:3001/events/tap")]
    url: String,
    /// How many subscribers.
    #[arg(short, long, default_value_t = 5)]
    n: usize,
    /// A read or admin key (sent in the first message), unless the server has no keys.
    #[arg(long)]
    key: Option<String>,
    /// Stop after this many seconds (default: when the server closes the connections).
    #[arg(long)]
    duration: Option<u64>,
    /// A filter for every subscriber, as the `subscribe` message's `filter` object (e.g.
    /// '{"outcomes":["unavailable"]}' to receive almost nothing: what the tap costs without
    /// the sends). Default: none, the full stream.
    #[arg(long, value_parser = parse_filter)]
    filter: Option<serde_json::Value>,
}

fn parse_filter(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

#[derive(Debug, Default)]
struct Seen {
    events: u64,
    frames: u64,
    skipped: u64,
    bytes: u64,
    error: Option<String>,
}

/// The number after `"count":` in a message that starts with `prefix`.
fn count_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = text.strip_prefix(prefix)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

async fn subscriber(
    url: String,
    key: Option<String>,
    filter: Option<serde_json::Value>,
    until: Option<Instant>,
) -> Seen {
    let mut seen = Seen::default();
    let request = match url.into_client_request() {
        Ok(r) => r,
        Err(e) => {
            seen.error = Some(e.to_string());
            return seen;
        }
    };
    let (mut ws, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(ws) => ws,
        Err(e) => {
            seen.error = Some(format!("connect: {e}"));
            return seen;
        }
    };
    let mut hello = serde_json::json!({"type": "subscribe"});
    if let Some(k) = key {
        hello["key"] = k.into();
    }
    if let Some(f) = filter {
        hello["filter"] = f;
    }
    if let Err(e) = ws.send(Message::text(hello.to_string())).await {
        seen.error = Some(format!("subscribe: {e}"));
        return seen;
    }
    let deadline = until.map(tokio::time::Instant::from_std);
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, ws.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => ws.next().await,
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            Some(Ok(_)) => continue,
        };
        seen.bytes += text.len() as u64;
        if let Some(n) = count_after(&text, r#"{"type":"tap_events","count":"#) {
            seen.events += n;
            seen.frames += 1;
        } else if let Some(n) = count_after(&text, r#"{"type":"skipped","count":"#) {
            seen.skipped += n;
        } else if text.starts_with(r#"{"type":"tap_error""#) {
            seen.error = Some(text.to_string());
        }
    }
    let _ = ws.close(None).await;
    seen
}

// One thread: the subscribers stand in for browsers on other machines, so they should take as
// little as they can of the cores being measured (no wake-ups between worker threads).
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let until = cli
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let subscribers: Vec<_> = (0..cli.n)
        .map(|_| {
            tokio::spawn(subscriber(
                cli.url.clone(),
                cli.key.clone(),
                cli.filter.clone(),
                until,
            ))
        })
        .collect();
    let mut failed = false;
    for (i, s) in subscribers.into_iter().enumerate() {
        let seen = s.await.unwrap_or_default();
        eprintln!(
            "subscriber {i}: {} events in {} frames ({:.1} per frame, {} bytes), {} skipped{}",
            seen.events,
            seen.frames,
            seen.events as f64 / seen.frames.max(1) as f64,
            seen.bytes,
            seen.skipped,
            seen.error
                .map(|e| format!(", error: {e}"))
                .unwrap_or_default()
        );
        failed |= seen.events == 0 && cli.filter.is_none();
    }
    if failed {
        eprintln!("some subscriber received no event");
        std::process::exit(1);
    }
}
