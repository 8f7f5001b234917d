//! `GET /events/tap`: a WebSocket that shows every event's outcome as it is decided, for `read`
//! and `admin` keys, filtered on the server by event type, user and outcome.
//!
//! The key comes in a header (`Authorization: Bearer`, `X-API-Key`, `X-Admin-Key`) or in the
//! first message (`subscribe`), never in the URL. The connection reads the tap's ring at its
//! own pace: when it falls behind, the oldest items are skipped and a `skipped` message says
//! how many, so a slow subscriber never slows ingest (see [`crate::app::tap`]).

use crate::adapters::event_json::{write_json_str, write_record_values};
use crate::adapters::inbound::edge::{json_error, Caller};
use crate::adapters::inbound::http::auth::presented_key;
use crate::adapters::inbound::wire::{details, unavailable_message, ErrorBody, ErrorCode};
use crate::adapters::inbound::ws::Upgrade;
use crate::adapters::thread_priority;
use crate::app::access::{Access, Scope};
use crate::app::metrics::Metrics;
use crate::app::rate_limit::RateLimits;
use crate::app::tap::{
    Pieces, Received, Subscription, Tap, TapEvent, TapGroup, TapOutcome, Whole, HEADER_ROOM,
};
use futures_util::{SinkExt, StreamExt};
use poem::http::StatusCode;
use poem::{Endpoint, Request, Response};
use serde::Deserialize;
use serde_json::json;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a connection without a header key has to send its `subscribe` with the key.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message a tap client may send (a `subscribe` is small).
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;
/// About the most event text in one `tap_events` frame (one larger event still goes alone).
const FRAME_BYTES: usize = 256 * 1024;
/// The least time between two sends to one subscriber: what was published meanwhile goes
/// out together, in one write, however many groups the committer made. A tab sees events
/// this much later at most; the server writes to each subscriber this often at most.
const PACE: Duration = Duration::from_millis(20);

/// Everything the tap endpoint needs, built once at startup.
pub struct TapState {
    pub tap: Arc<Tap>,
    pub access: Arc<Access>,
    pub rate_limits: Arc<RateLimits>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server starts shutting down; taps then close with 1001.
    pub shutdown: CancellationToken,
    pub connections: TaskTracker,
}

/// What a subscriber wants to see; empty lists and no user: everything.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub outcomes: Vec<String>,
}

impl Filter {
    /// Whether it lets every event through.
    fn is_everything(&self) -> bool {
        self.event_types.is_empty() && self.user_id.is_none() && self.outcomes.is_empty()
    }

    fn check(&self) -> Result<(), String> {
        match self
            .outcomes
            .iter()
            .find(|o| TapOutcome::parse(o).is_none())
        {
            Some(o) => Err(format!(
                "unknown outcome {o:?}: accepted, duplicate, rejected or unavailable"
            )),
            None => Ok(()),
        }
    }

    pub fn matches(&self, item: &TapEvent) -> bool {
        (self.outcomes.is_empty() || self.outcomes.iter().any(|o| o == item.outcome().as_str()))
            && (self.event_types.is_empty()
                || item
                    .event_type()
                    .is_some_and(|t| self.event_types.iter().any(|w| w == t)))
            && self
                .user_id
                .as_deref()
                .is_none_or(|u| item.user_id() == Some(u))
    }
}

/// A message from the client: the first names the key (unless a header did) and the filter;
/// later ones change the filter.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Subscribe {
        #[serde(default)]
        key: Option<String>,
        #[serde(default)]
        filter: Filter,
    },
}

/// The endpoint that upgrades `GET /events/tap`.
pub fn endpoint(state: Arc<TapState>) -> impl Endpoint<Output = Response> {
    poem::endpoint::make(move |req: Request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, poem::Error>(upgrade(state, req)) }
    })
}

/// Who may watch: a key's scope decides; `None` until known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watcher {
    Read,
    Admin,
}

impl Watcher {
    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }
}

/// A refused key: the error code, the message, and whether it counts as a failed attempt.
type AuthRefusal = (ErrorCode, String);

fn authorize(state: &TapState, key: Option<&str>, ip: IpAddr) -> Result<Watcher, AuthRefusal> {
    if state.access.scope_open(Scope::Read) {
        return Ok(Watcher::Admin);
    }
    if let Err(wait) = state.rate_limits.auth_blocked(ip) {
        return Err((
            ErrorCode::RateLimited,
            format!(
                "too many failed authentications from this address; retry after {} s",
                wait.as_secs().max(1)
            ),
        ));
    }
    let Some(id) = key.and_then(|k| state.access.lookup(k)) else {
        state.rate_limits.auth_failed(ip);
        return Err((
            ErrorCode::Unauthorized,
            "a valid key with the read scope is required: in a header or the first message's \
             \"key\""
                .into(),
        ));
    };
    let policy = state.access.key(id);
    if policy.allows(Scope::Admin) {
        Ok(Watcher::Admin)
    } else if policy.allows(Scope::Read) {
        Ok(Watcher::Read)
    } else {
        Err((
            ErrorCode::Forbidden,
            "this key has no read scope: the tap needs a read or admin key".into(),
        ))
    }
}

fn upgrade(state: Arc<TapState>, req: Request) -> Response {
    let ip = req
        .extensions()
        .get::<Caller>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip);
    // A key in a header is checked before the upgrade, so a wrong one is a plain 401/403.
    let header_key = presented_key(&req, false).map(str::to_owned);
    let watcher = match header_key
        .as_deref()
        .map(|k| authorize(&state, Some(k), ip))
    {
        Some(Err((code, message))) => {
            let status = match code {
                ErrorCode::Forbidden => StatusCode::FORBIDDEN,
                ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::UNAUTHORIZED,
            };
            return json_error(&state.metrics, status, ErrorBody::new(code, message));
        }
        Some(Ok(w)) => Some(w),
        None => None,
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE));
    let accept = Upgrade {
        metrics: &state.metrics,
        shutdown: &state.shutdown,
        connections: &state.connections,
        runtime: watchers(),
    };
    let serving = Arc::clone(&state);
    accept.accept(&req, move |upgraded| async move {
        let ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, Some(config)).await;
        run(serving, ws, watcher, ip).await;
    })
}

/// The watchers' thread's nice value: the lowest, in case `SCHED_IDLE` is refused (a thread
/// at 19 weighs 15 against a normal thread's 1024).
const WATCHERS_NICE: i32 = 19;

/// The runtime that serves every tap connection: one thread of its own, at the lowest
/// priority. Writing each group's JSON and sending it to several subscribers then never holds
/// up a worker that ingest is waiting for, and when the CPU is short the kernel runs ingest
/// first: the watchers fall behind and are told how much they skipped. `None` (served on
/// the caller's runtime) if the thread could not be started.
fn watchers() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| match start_watchers() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "tap: no thread of its own, served with ingest");
                None
            }
        })
        .as_ref()
}

fn start_watchers() -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("cartstream-tap")
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("cartstream-tap".into())
        .spawn(move || {
            lower_priority();
            runtime.block_on(std::future::pending::<()>());
        })?;
    Ok(handle)
}

/// Puts the calling thread in the idle class (`SCHED_IDLE`; Linux scheduling is per thread):
/// it runs only on CPU no other thread wants, and any other thread that wakes takes its CPU at
/// once. At nice 19 alone the kernel's EEVDF scheduler may let the tap thread finish its slice
/// before a waking ingest worker runs, and ingest waits on such wake-ups: five subscribers cost
/// HTTP batch 6.9% at nice 19, 5.0% in the idle class (BENCHMARKS.md, issue 17). Falls back to
/// nice 19 where the idle class is refused.
fn lower_priority() {
    let Err(error) = thread_priority::idle_this_thread() else {
        return;
    };
    match thread_priority::nice_this_thread(WATCHERS_NICE) {
        Ok(()) => {
            tracing::warn!(error = %error, "tap: its thread runs at nice {WATCHERS_NICE}, not idle");
        }
        Err(e) => tracing::warn!(error = %e, "tap: its thread keeps ingest's priority"),
    }
}

fn error_message(code: ErrorCode, message: &str) -> Message {
    Message::text(
        json!({"type": "tap_error", "code": code.as_str(), "message": message}).to_string(),
    )
}

/// Parses a client message; `Err`: the error message to send.
fn parse(text: &str) -> Result<(Option<String>, Filter), String> {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(ClientMessage::Subscribe { key, filter }) => {
            filter.check()?;
            Ok((key, filter))
        }
        Err(e) => Err(format!(
            "expected {{\"type\":\"subscribe\",\"key\"?,\"filter\"?:{{\"eventTypes\",\"userId\",\"outcomes\"}}}}: {e}"
        )),
    }
}

async fn run<S>(
    state: Arc<TapState>,
    mut ws: WebSocketStream<S>,
    header_watcher: Option<Watcher>,
    ip: IpAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The first message: the filter, and the key unless a header had it.
    let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, ws.next()).await;
    let Ok(Some(Ok(Message::Text(text)))) = first else {
        let _ = ws
            .send(error_message(
                ErrorCode::InvalidMessage,
                "the first message must be a subscribe, within 10 s",
            ))
            .await;
        let _ = close(&mut ws, CloseCode::Policy, "no subscribe").await;
        return;
    };
    let (key, mut filter) = match parse(&text) {
        Ok(f) => f,
        Err(message) => {
            let _ = ws
                .send(error_message(ErrorCode::InvalidMessage, &message))
                .await;
            let _ = close(&mut ws, CloseCode::Policy, "bad subscribe").await;
            return;
        }
    };
    let watcher = match header_watcher.map_or_else(|| authorize(&state, key.as_deref(), ip), Ok) {
        Ok(w) => w,
        Err((code, message)) => {
            let _ = ws.send(error_message(code, &message)).await;
            let _ = close(&mut ws, CloseCode::Policy, code.as_str()).await;
            return;
        }
    };
    let mut sub = state.tap.subscribe();
    let ack = json!({
        "type": "tap_ack",
        "scope": watcher.as_str(),
        "buffer": state.tap.capacity(),
    });
    if ws.send(Message::text(ack.to_string())).await.is_err() {
        return;
    }
    let ending = stream(&state, &mut sub, &mut ws, &mut filter).await;
    drop(sub);
    if let Some((code, reason)) = ending {
        let _ = close(&mut ws, code, reason).await;
    }
}

/// Sends what the tap publishes until the client leaves or the server shuts down; the close
/// to send, if any. Whatever is ready goes out together, at most every [`PACE`]: a `skipped`
/// count, then the events in as few `tap_events` frames as fit, flushed at once.
async fn stream<S>(
    state: &TapState,
    sub: &mut Subscription,
    ws: &mut WebSocketStream<S>,
    filter: &mut Filter,
) -> Option<(CloseCode, &'static str)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut next_send = tokio::time::Instant::now();
    loop {
        let outs = tokio::select! {
            biased;
            () = state.shutdown.cancelled() => return Some((CloseCode::Away, "shutting down")),
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => match parse(&text) {
                    Ok((_, f)) => {
                        *filter = f;
                        continue;
                    }
                    Err(message) => {
                        vec![Out::Message(error_message(ErrorCode::InvalidMessage, &message))]
                    }
                },
                Some(Ok(Message::Close(_))) => {
                    // tungstenite has queued the answering close frame (the client's code
                    // echoed) and refuses to send another: a flush sends it.
                    let _ = ws.flush().await;
                    return None;
                }
                Some(Ok(_)) => continue,
                _ => return None,
            },
            received = paced(sub, next_send) => {
                next_send = next_tick(tokio::time::Instant::now());
                frames(&received, filter)
            }
        };
        for out in outs {
            let sent = match out {
                Out::Message(message) => ws.feed(message).await.is_ok(),
                Out::Shared(whole) => send_shared(ws, &whole).await.is_ok(),
            };
            if !sent {
                return None;
            }
        }
        if ws.flush().await.is_err() {
            return None;
        }
    }
}

/// Sends a group's whole frame, header and payload in one write straight to the socket from
/// the group's shared buffer: through tungstenite, every subscriber's copy of each frame went
/// through its write buffer first, and header and payload written apart woke the client
/// twice (poem's upgraded connection takes no vectored writes). What tungstenite holds (a
/// frame fed before, a pong) is flushed first, so frames keep their order.
async fn send_shared<S>(ws: &mut WebSocketStream<S>, whole: &Whole) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    ws.flush().await.map_err(std::io::Error::other)?;
    ws.get_mut().write_all(whole.bytes()).await
}

/// Writes the header of a final, unmasked text frame of `len` bytes (RFC 6455 5.2: what a
/// server sends) at the end of `out`; its length.
fn text_frame_header(len: usize, out: &mut [u8; HEADER_ROOM]) -> usize {
    let mut header = [0u8; 10];
    header[0] = 0x81; // FIN, text
    let n = if len < 126 {
        header[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    out[HEADER_ROOM - n..].copy_from_slice(&header[..n]);
    n
}

/// The next instant after `now` on a grid [`PACE`] apart that every subscriber shares: they
/// send at the same moments, so the first to look takes what was published since the last
/// one as one group (see [`Tap`]), and the others send that same group, not their own cuts of
/// it.
fn next_tick(now: tokio::time::Instant) -> tokio::time::Instant {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    // Before the grid began (only a test's paused clock can be): no grid to keep.
    let Some(since) = now.checked_duration_since(epoch) else {
        return now + PACE;
    };
    let since = since.as_nanos();
    let pace = PACE.as_nanos();
    let ticks = u64::try_from(since / pace + 1).unwrap_or(u64::MAX);
    let pace = u64::try_from(pace).unwrap_or(u64::MAX);
    epoch
        .checked_add(Duration::from_nanos(ticks.saturating_mul(pace)))
        .unwrap_or(now + PACE)
}

/// What was published since the subscriber last looked, not before `at`. Cancel-safe, like
/// [`Subscription::recv`].
async fn paced(sub: &mut Subscription, at: tokio::time::Instant) -> Received {
    tokio::time::sleep_until(at).await;
    sub.recv().await
}

/// One thing to send a subscriber.
enum Out {
    /// Through tungstenite.
    Message(Message),
    /// A group's whole `tap_events` frame, shared by every subscriber that watches everything.
    Shared(Whole),
}

/// The messages for what a subscriber received: `skipped` first if any, then the events its
/// filter lets through, in `tap_events` frames of about [`FRAME_BYTES`] at most. Each
/// group's events are serialized once, by the first subscriber to send any of them: a group
/// none of whose events a filter lets through is not serialized for it.
fn frames(received: &Received, filter: &Filter) -> Vec<Out> {
    let mut out = Vec::new();
    if received.skipped > 0 {
        out.push(Out::Message(Message::text(format!(
            "{{\"type\":\"skipped\",\"count\":{}}}",
            received.skipped
        ))));
    }
    let mut chosen: Vec<&str> = Vec::new();
    let mut bytes = 0;
    for group in &received.groups {
        if !filter.is_everything() && !group.events.iter().any(|e| filter.matches(e)) {
            continue;
        }
        let pieces = group.wire.get_or_init(|| wire(group));
        // A subscriber that watches everything sends a group that fits a frame as the
        // group's own message, shared by every such subscriber.
        if filter.is_everything() && pieces.joined_len() <= FRAME_BYTES {
            if !chosen.is_empty() {
                out.push(Out::Message(frame(&chosen, bytes)));
                chosen.clear();
                bytes = 0;
            }
            out.push(Out::Shared(pieces.whole()));
            continue;
        }
        for (i, event) in group.events.iter().enumerate() {
            if !filter.matches(event) {
                continue;
            }
            let piece = pieces.get(i);
            if bytes + piece.len() > FRAME_BYTES && !chosen.is_empty() {
                out.push(Out::Message(frame(&chosen, bytes)));
                chosen.clear();
                bytes = 0;
            }
            bytes += piece.len() + 1;
            chosen.push(piece);
        }
    }
    if !chosen.is_empty() {
        out.push(Out::Message(frame(&chosen, bytes)));
    }
    out
}

/// `{"type":"tap_events","count":n,"events":[`: the count first, so a client can read it
/// without parsing the events.
fn frame_head(count: usize, out: &mut String) {
    let _ = write!(
        out,
        "{{\"type\":\"tap_events\",\"count\":{count},\"events\":["
    );
}

/// A `tap_events` frame of `events`.
fn frame(events: &[&str], bytes: usize) -> Message {
    let mut text = String::with_capacity(bytes + 64);
    frame_head(events.len(), &mut text);
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(event);
    }
    text.push_str("]}");
    Message::text(text)
}

async fn close<S>(
    tx: &mut WebSocketStream<S>,
    code: CloseCode,
    reason: &'static str,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tx.send(Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    })))
    .await
}

/// The wire form of a group's events, one JSON value each. A valid event (accepted, duplicate
/// or unavailable) is a row: `[outcome, channel, eventId, userId, sessionId, eventType,
/// timestamp, metadata, receivedAt]`, the event's values as `GET /events` shows it without
/// the keys, and the `reason` of an `unavailable` last. A rejected one is an object: its
/// `outcome`, the `event` as sent and its `errors`. A recorded event's metadata is copied as
/// stored, not parsed again. They are kept as the group's whole `tap_events` frame, sent as
/// it is to subscribers that watch everything.
pub fn wire(group: &TapGroup) -> Pieces {
    let mut head = String::with_capacity(64);
    frame_head(group.events.len(), &mut head);
    Pieces::build(
        &group.events,
        group.events.len() * 384,
        [&head, ",", "]}"],
        text_frame_header,
        write_event,
    )
}

fn write_event(event: &TapEvent, out: &mut String) {
    match event {
        TapEvent::Committed {
            event,
            outcome,
            unavailable,
        } => {
            out.push_str("[\"");
            out.push_str(outcome.as_str());
            out.push_str("\",\"");
            out.push_str(event.source.as_str());
            out.push_str("\",");
            write_record_values(event, out);
            if let Some(u) = unavailable {
                out.push(',');
                write_json_str(unavailable_message(*u), out);
            }
            out.push(']');
        }
        TapEvent::Rejected { raw, errors } => {
            out.push_str("{\"outcome\":\"rejected\",\"event\":");
            out.push_str(&raw.to_string());
            out.push_str(",\"errors\":");
            out.push_str(
                &serde_json::to_string(&details(errors.clone())).unwrap_or_else(|_| "[]".into()),
            );
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        frames, next_tick, paced, send_shared, text_frame_header, watchers, Filter, Out, PACE,
    };
    use crate::app::tap::tests::rejected;
    use crate::app::tap::{Pieces, Tap, HEADER_ROOM};
    use futures_util::{SinkExt, StreamExt};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    /// A valid event goes out as the row of its values; an unavailable one's with the reason
    /// last; a rejected one as an object.
    #[test]
    fn valid_events_are_rows_and_rejected_ones_objects() {
        use crate::app::tap::{TapEvent, TapOutcome, TapRecord};
        use crate::domain::{fixtures, Source, Unavailable};
        use serde_json::{json, Value};
        let stored = fixtures::from_json(json!({"eventId": "e-1", "userId": "u\"1",
            "eventType": "item_added", "metadata": {"productId": "p", "quantity": 2}}))
        .via(Source::Ws)
        .stored();
        let committed = |outcome, unavailable| TapEvent::Committed {
            event: TapRecord::new(&stored.event, stored.received_at, stored.source),
            outcome,
            unavailable,
        };
        let written = |event: &TapEvent| {
            let mut out = String::new();
            super::write_event(event, &mut out);
            serde_json::from_str::<Value>(&out).unwrap()
        };
        let at = stored.event.occurred_at().timestamp_millis();
        let received = stored.received_at.timestamp_millis();
        let metadata = json!({"productId": "p", "quantity": 2});
        assert_eq!(
            written(&committed(TapOutcome::Duplicate, None)),
            json!([
                "duplicate",
                "ws",
                "e-1",
                "u\"1",
                null,
                "item_added",
                at,
                metadata,
                received
            ])
        );
        let down = committed(TapOutcome::Unavailable, Some(Unavailable::JournalFull));
        let row = written(&down);
        assert_eq!(row.as_array().unwrap().len(), 10, "{row}");
        assert_eq!(row[0], "unavailable");
        assert_eq!(row[9], super::unavailable_message(Unavailable::JournalFull));
        let got = written(&rejected(7));
        assert_eq!(got["outcome"], "rejected", "{got}");
        assert_eq!(got["event"]["n"], 7, "{got}");
        assert!(got["errors"].is_array(), "{got}");
    }

    fn text(m: &Out) -> &str {
        match m {
            Out::Message(Message::Text(t)) => t.as_str(),
            Out::Shared(t) => t.message(),
            Out::Message(other) => panic!("not a text: {other:?}"),
        }
    }

    /// Tap connections are served on a thread of their own, in the idle scheduling class.
    #[test]
    fn the_watchers_thread_runs_at_the_lowest_priority() {
        let runtime = watchers().expect("a thread of its own");
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            // SAFETY: a plain system call about the calling thread.
            let policy = unsafe { libc::sched_getscheduler(0) };
            let name = std::thread::current().name().map(str::to_owned);
            tx.send((name, policy)).unwrap();
        });
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, (Some("cartstream-tap".to_owned()), libc::SCHED_IDLE));
        // The rest of the process keeps the normal class.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }

    /// A subscriber that just sent waits out the pace, then takes everything published
    /// meanwhile at once.
    #[tokio::test(start_paused = true)]
    async fn a_send_waits_for_the_pace_then_takes_everything() {
        let tap = Arc::new(Tap::new(100));
        let mut sub = tap.subscribe();
        let start = tokio::time::Instant::now();
        tap.publish(vec![rejected(0)]);
        let first = paced(&mut sub, start).await;
        assert_eq!((first.groups.len(), start.elapsed()), (1, Duration::ZERO));
        let next = start + PACE;
        tap.publish(vec![rejected(1)]);
        tap.publish(vec![rejected(2)]);
        let second = paced(&mut sub, next).await;
        assert_eq!(start.elapsed(), PACE, "not before the pace");
        assert_eq!(
            second.groups.iter().map(|g| g.events.len()).sum::<usize>(),
            2,
            "both groups in one take"
        );
    }

    /// Groups published between two sends go out together: to a subscriber that watches
    /// everything, as the one group they were merged into, its shared frame (not copied); to
    /// a filtered one, its share of all of them in one frame.
    #[tokio::test]
    async fn what_waited_for_a_send_goes_out_together() {
        let tap = Arc::new(Tap::new(100));
        let mut sub = tap.subscribe();
        tap.publish(vec![rejected(0), rejected(1)]);
        tap.publish(vec![rejected(2)]);
        let received = sub.recv().await;
        let everything = frames(&received, &Filter::default());
        assert_eq!(
            everything.len(),
            1,
            "one frame for the group they were merged into"
        );
        for (m, group) in everything.iter().zip(&received.groups) {
            let whole = group.wire.get().expect("written once").whole();
            match m {
                Out::Shared(w) => assert!(
                    std::ptr::eq(w.bytes(), whole.bytes()),
                    "the group's own buffer"
                ),
                Out::Message(_) => panic!("a copy"),
            }
        }
        let filter = Filter {
            outcomes: vec!["rejected".into()],
            ..Filter::default()
        };
        let filtered = frames(&received, &filter);
        assert_eq!(filtered.len(), 1, "one frame for all of them");
        let frame: serde_json::Value = serde_json::from_str(text(&filtered[0])).unwrap();
        assert_eq!(frame["count"], 3);
        let ns: Vec<_> = frame["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, [0, 1, 2], "in order");
    }

    /// A subscriber whose filter lets none of a group's events through gets nothing of it,
    /// and the group's JSON is not written for it; one that wants a group gets it written.
    #[tokio::test]
    async fn a_group_nobody_wants_is_not_serialized() {
        let tap = Arc::new(Tap::new(100));
        let mut sub = tap.subscribe();
        tap.publish(vec![rejected(0), rejected(1)]);
        let received = sub.recv().await;
        let nothing = Filter {
            outcomes: vec!["accepted".into()],
            ..Filter::default()
        };
        assert!(frames(&received, &nothing).is_empty());
        assert!(received.groups[0].wire.get().is_none(), "not written");
        let rejects = Filter {
            outcomes: vec!["rejected".into()],
            ..Filter::default()
        };
        assert_eq!(frames(&received, &rejects).len(), 1);
        assert!(
            received.groups[0].wire.get().is_some(),
            "written once wanted"
        );
    }

    /// Every subscriber sends on the same grid, PACE apart.
    #[test]
    fn subscribers_send_on_a_shared_grid() {
        let start = tokio::time::Instant::now();
        for offset in [0, 1, 7, 19, 20, 33] {
            let now = start + Duration::from_millis(offset);
            let tick = next_tick(now);
            assert!(tick > now && tick <= now + PACE, "{offset}");
            assert_eq!(next_tick(tick - Duration::from_nanos(1)), tick, "{offset}");
            assert_eq!(next_tick(tick), tick + PACE, "{offset}");
        }
    }

    /// Each length form of a frame header (RFC 6455 5.2).
    #[test]
    fn frame_headers_carry_the_length_in_the_shortest_form() {
        let header = |len| {
            let mut out = [0u8; HEADER_ROOM];
            let n = text_frame_header(len, &mut out);
            out[HEADER_ROOM - n..].to_vec()
        };
        assert_eq!(header(125), [0x81, 125]);
        assert_eq!(header(126), [0x81, 126, 0, 126]);
        assert_eq!(header(65_535), [0x81, 126, 255, 255]);
        assert_eq!(header(65_536), [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    /// Shared frames written straight to the socket, their headers in front of them in the
    /// shared buffer, reach a WebSocket client whole, of every length form, in order with the
    /// messages fed through tungstenite around them.
    #[tokio::test]
    async fn shared_frames_and_fed_messages_arrive_in_order() {
        let (server_io, client_io) = tokio::io::duplex(4096);
        let mut server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let sizes = [0, 5, 125, 126, 70_000, 300];
        let texts: Vec<String> = sizes
            .iter()
            .map(|&n| "é".repeat(n / 2) + &"x".repeat(n % 2))
            .collect();
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(Ok(m)) = client.next().await {
                match m {
                    Message::Text(t) => got.push(t.as_str().to_owned()),
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            got
        });
        let mut want = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let fed = format!("fed {i}");
            server.feed(Message::text(fed.clone())).await.unwrap();
            want.push(fed);
            let whole = Pieces::build(&[text], 0, ["", "", ""], text_frame_header, |t, out| {
                out.push_str(t)
            })
            .whole();
            send_shared(&mut server, &whole).await.unwrap();
            want.push(text.clone());
            send_shared(&mut server, &whole).await.unwrap();
            want.push(text.clone());
        }
        server.close(None).await.unwrap();
        assert_eq!(reading.await.unwrap(), want);
    }
}
