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
//!
//! How a subscriber reads (`--client`):
//! - `tungstenite` (default): every message through tokio-tungstenite, as a typical Rust client
//!   would (its buffers, copies and UTF-8 checks included).
//! - `read`: every byte read from the socket into the subscriber's memory, in reads of up to
//!   256 KiB on a blocking socket of its own thread, the WebSocket frames walked and each
//!   frame's count read: the whole stream received, with nothing done to it that a browser on
//!   another machine would do on its own CPU.
//! - `discard`: a frame's header and the first bytes of its payload (the count) are read, and
//!   the kernel drops the rest unread (`recv` with `MSG_TRUNC`): the stream still arrives whole
//!   over TCP, but is never copied to the subscriber.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use std::io::{BufRead, Read};
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
    /// How each subscriber reads the stream (see above).
    #[arg(long, value_enum, default_value_t = Client::Tungstenite)]
    client: Client,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Client {
    Tungstenite,
    Read,
    Discard,
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

impl Seen {
    /// Counts a message of `len` bytes from its start, `head` (a `tap_events` frame's count
    /// comes first).
    fn note(&mut self, head: &str, len: u64) {
        self.bytes += len;
        if let Some(n) = count_after(head, r#"{"type":"tap_events","count":"#) {
            self.events += n;
            self.frames += 1;
        } else if let Some(n) = count_after(head, r#"{"type":"skipped","count":"#) {
            self.skipped += n;
        } else if head.starts_with(r#"{"type":"tap_error""#) {
            self.error = Some(head.to_string());
        }
    }
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
    if let Err(e) = ws.send(Message::text(hello_text(key, filter))).await {
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
        seen.note(&text, text.len() as u64);
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
    if cli.client != Client::Tungstenite {
        let hello = hello_text(cli.key.clone(), cli.filter.clone());
        let discard = cli.client == Client::Discard;
        let threads: Vec<_> = (0..cli.n)
            .map(|_| {
                let (url, hello) = (cli.url.clone(), hello.clone());
                std::thread::spawn(move || raw(&url, &hello, discard, until))
            })
            .collect();
        let seen = threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect();
        report(seen, cli.filter.is_some());
        return;
    }
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
    let mut seen = Vec::new();
    for s in subscribers {
        seen.push(s.await.unwrap_or_default());
    }
    report(seen, cli.filter.is_some());
}

/// Prints what each subscriber received; exits 1 if one received nothing (unless filtered).
fn report(all: Vec<Seen>, filtered: bool) {
    let mut failed = false;
    for (i, seen) in all.into_iter().enumerate() {
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
        failed |= seen.events == 0 && !filtered;
    }
    if failed {
        eprintln!("some subscriber received no event");
        std::process::exit(1);
    }
}

/// The `subscribe` message.
fn hello_text(key: Option<String>, filter: Option<serde_json::Value>) -> String {
    let mut hello = serde_json::json!({"type": "subscribe"});
    if let Some(k) = key {
        hello["key"] = k.into();
    }
    if let Some(f) = filter {
        hello["filter"] = f;
    }
    hello.to_string()
}

/// A `read` or `discard` subscriber on a blocking socket of its own thread.
fn raw(url: &str, hello: &str, discard: bool, until: Option<Instant>) -> Seen {
    let mut seen = Seen::default();
    if let Err(e) = raw_stream(url, hello, discard, until, &mut seen) {
        use std::io::ErrorKind::{TimedOut, UnexpectedEof, WouldBlock};
        // The end of the stream, or of `--duration`.
        if !matches!(e.kind(), UnexpectedEof | TimedOut | WouldBlock) {
            seen.error = Some(e.to_string());
        }
    }
    seen
}

fn raw_stream(
    url: &str,
    hello: &str,
    discard: bool,
    until: Option<Instant>,
    seen: &mut Seen,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let request = url.into_client_request().map_err(std::io::Error::other)?;
    let host = request.uri().host().unwrap_or("127.0.0.1").to_string();
    let port = request.uri().port_u16().unwrap_or(80);
    let socket = std::net::TcpStream::connect((host.as_str(), port))?;
    if let Some(t) = until {
        let left = t.saturating_duration_since(Instant::now());
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
    }
    // tungstenite upgrades and sends the subscribe; the server sends nothing before it, so
    // nothing of the stream is read into tungstenite's buffer, and the frames are read here.
    let (mut ws, _) = tokio_tungstenite::tungstenite::client::client(request, socket)
        .map_err(std::io::Error::other)?;
    ws.send(Message::text(hello))
        .map_err(std::io::Error::other)?;
    let socket = ws.get_mut();
    if !discard {
        let mut reader = std::io::BufReader::with_capacity(256 << 10, socket);
        return count_frames(&mut reader, until, seen, consume);
    }
    let mut sink = vec![0u8; 1 << 20];
    count_frames(socket, until, seen, |socket, left| {
        drop_unread(socket.as_raw_fd(), &mut sink, left)
    })
}

/// Reads frames until the server closes (or `until`), noting each one from its header and
/// first bytes; `rest` gets the frame's other bytes.
fn count_frames<R: Read>(
    r: &mut R,
    until: Option<Instant>,
    seen: &mut Seen,
    mut rest: impl FnMut(&mut R, u64) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut first = [0u8; 64];
    loop {
        if until.is_some_and(|t| Instant::now() >= t) {
            return Ok(());
        }
        let (opcode, len) = frame_header(r)?;
        let peek = len.min(first.len() as u64) as usize;
        r.read_exact(&mut first[..peek])?;
        if opcode == 8 {
            return Ok(());
        }
        seen.note(std::str::from_utf8(&first[..peek]).unwrap_or(""), len);
        rest(r, len - peek as u64)?;
    }
}

/// `--client read`: the next `left` bytes read into memory (through the reader's buffer, in
/// large reads) and let go.
fn consume(reader: &mut impl BufRead, mut left: u64) -> std::io::Result<()> {
    while left > 0 {
        let got = reader.fill_buf()?.len();
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let n = left.min(got as u64);
        reader.consume(n as usize);
        left -= n;
    }
    Ok(())
}

/// `--client discard`: the next `left` bytes of the socket `fd` dropped by the kernel unread.
fn drop_unread(fd: std::os::fd::RawFd, sink: &mut [u8], mut left: u64) -> std::io::Result<()> {
    while left > 0 {
        let want = left.min(sink.len() as u64) as usize;
        // SAFETY: `sink` is a live buffer of at least `want` bytes; with MSG_TRUNC a TCP
        // socket drops the data without writing it there.
        let n = unsafe { libc::recv(fd, sink.as_mut_ptr().cast(), want, libc::MSG_TRUNC) };
        match n {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            n => left -= n as u64,
        }
    }
    Ok(())
}

/// The opcode and payload length of the next WebSocket frame from the server (unmasked).
fn frame_header(r: &mut impl Read) -> std::io::Result<(u8, u64)> {
    let mut header = [0u8; 2];
    r.read_exact(&mut header)?;
    let len = match header[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    Ok((header[0] & 0x0f, len))
}
