//! `GET /events/tap`: a WebSocket that shows every event's outcome as it is decided, for `read`
//! and `admin` keys, filtered on the server by event type, user and outcome.
//!
//! The key comes in a header (`Authorization: Bearer`, `X-API-Key`, `X-Admin-Key`) or in the
//! first message (`subscribe`), never in the URL. The connection reads the tap's ring at its
//! own pace: when it falls behind, the oldest items are skipped and a `skipped` message says
//! how many, so a slow subscriber never slows ingest (see [`crate::app::tap`]).

use crate::adapters::event_json::event_json;
use crate::adapters::inbound::edge::{json_error, Caller};
use crate::adapters::inbound::http::auth::presented_key;
use crate::adapters::inbound::wire::{details, ErrorBody, ErrorCode};
use crate::adapters::inbound::ws::handshake_key;
use crate::app::access::{Access, Scope};
use crate::app::metrics::Metrics;
use crate::app::rate_limit::RateLimits;
use crate::app::tap::{Received, Subscription, Tap, TapEvent, TapItem, TapOutcome};
use futures_util::{SinkExt, StreamExt};
use poem::http::{header, StatusCode};
use poem::{Endpoint, Request, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
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

    pub fn matches(&self, item: &TapItem) -> bool {
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
    let Some(key) = handshake_key(&req) else {
        return json_error(
            &state.metrics,
            StatusCode::BAD_REQUEST,
            ErrorBody::new(
                ErrorCode::InvalidMessage,
                "this endpoint speaks WebSocket only: send a WebSocket upgrade (version 13)",
            ),
        );
    };
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
    if state.shutdown.is_cancelled() {
        return json_error(
            &state.metrics,
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody::new(ErrorCode::Unavailable, "the server is shutting down"),
        );
    }
    let Ok(on_upgrade) = req.take_upgrade() else {
        return json_error(
            &state.metrics,
            StatusCode::BAD_REQUEST,
            ErrorBody::new(
                ErrorCode::InvalidMessage,
                "the connection cannot be upgraded",
            ),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE));
    let tracker = state.connections.clone();
    tracker.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, Some(config)).await;
        run(state, ws, watcher, ip).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .finish()
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
    ws: WebSocketStream<S>,
    header_watcher: Option<Watcher>,
    ip: IpAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    // The first message: the filter, and the key unless a header had it.
    let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, rx.next()).await;
    let Ok(Some(Ok(Message::Text(text)))) = first else {
        let _ = tx
            .send(error_message(
                ErrorCode::InvalidMessage,
                "the first message must be a subscribe, within 10 s",
            ))
            .await;
        let _ = close(&mut tx, CloseCode::Policy, "no subscribe").await;
        return;
    };
    let (key, mut filter) = match parse(&text) {
        Ok(f) => f,
        Err(message) => {
            let _ = tx
                .send(error_message(ErrorCode::InvalidMessage, &message))
                .await;
            let _ = close(&mut tx, CloseCode::Policy, "bad subscribe").await;
            return;
        }
    };
    let watcher = match header_watcher.map_or_else(|| authorize(&state, key.as_deref(), ip), Ok) {
        Ok(w) => w,
        Err((code, message)) => {
            let _ = tx.send(error_message(code, &message)).await;
            let _ = close(&mut tx, CloseCode::Policy, code.as_str()).await;
            return;
        }
    };
    let mut sub = state.tap.subscribe();
    let ack = json!({
        "type": "tap_ack",
        "scope": watcher.as_str(),
        "buffer": state.tap.capacity(),
    });
    if tx.send(Message::text(ack.to_string())).await.is_err() {
        return;
    }
    let ending = stream(&state, &mut sub, &mut tx, &mut rx, &mut filter).await;
    drop(sub);
    if let Some((code, reason)) = ending {
        let _ = close(&mut tx, code, reason).await;
    }
}

type Sink<S> = futures_util::stream::SplitSink<WebSocketStream<S>, Message>;
type Source<S> = futures_util::stream::SplitStream<WebSocketStream<S>>;

/// Sends what the tap publishes until the client leaves or the server shuts down; the close
/// to send, if any.
async fn stream<S>(
    state: &TapState,
    sub: &mut Subscription,
    tx: &mut Sink<S>,
    rx: &mut Source<S>,
    filter: &mut Filter,
) -> Option<(CloseCode, &'static str)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = tokio::select! {
            biased;
            () = state.shutdown.cancelled() => return Some((CloseCode::Away, "shutting down")),
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(text))) => match parse(&text) {
                    Ok((_, f)) => {
                        *filter = f;
                        continue;
                    }
                    Err(message) => error_message(ErrorCode::InvalidMessage, &message),
                },
                Some(Ok(Message::Close(_))) => return Some((CloseCode::Normal, "")),
                Some(Ok(_)) => continue,
                _ => return None,
            },
            received = sub.recv() => match received {
                Some(Received::Item(item)) if filter.matches(&item) => {
                    Message::text(item.wire.get_or_init(|| wire(&item)).clone())
                }
                Some(Received::Item(_)) => continue,
                Some(Received::Skipped(n)) => {
                    Message::text(json!({"type": "skipped", "count": n}).to_string())
                }
                None => return Some((CloseCode::Away, "shutting down")),
            },
        };
        if tx.send(message).await.is_err() {
            return None;
        }
    }
}

async fn close<S>(
    tx: &mut Sink<S>,
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

/// The wire form of one tap item: `tap_event` with its outcome, the event (as `GET /events`
/// shows it, or as sent when rejected), the channel, and the errors or the reason.
pub fn wire(item: &TapItem) -> String {
    let mut m = serde_json::Map::new();
    m.insert("type".into(), Value::from("tap_event"));
    m.insert("outcome".into(), Value::from(item.outcome().as_str()));
    match &item.event {
        TapEvent::Committed {
            event, unavailable, ..
        } => {
            m.insert("channel".into(), Value::from(event.source.as_str()));
            m.insert("event".into(), event_json(event));
            if let Some(u) = unavailable {
                m.insert(
                    "reason".into(),
                    Value::from(crate::adapters::inbound::wire::unavailable_message(*u)),
                );
            }
        }
        TapEvent::Rejected { raw, errors } => {
            m.insert("event".into(), raw.clone());
            m.insert(
                "errors".into(),
                serde_json::to_value(details(errors.clone())).unwrap_or(Value::Null),
            );
        }
    }
    Value::Object(m).to_string()
}
