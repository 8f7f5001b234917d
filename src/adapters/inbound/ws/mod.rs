//! `GET /events/stream`: the WebSocket channel.
//!
//! One task per connection `select!`s on the next frame, the next finished reply and the
//! lifecycle (pings, shutdown). Each message is validated and submitted as it is read (with
//! rate limits shared through Redis: once its rate check answers, still in arrival order), and
//! its reply future joins a `FuturesOrdered`, so clients can pipeline freely while replies
//! leave strictly in arrival order. Reading pauses while `ws_max_in_flight` replies are
//! pending, which pushes back on a client that sends faster than events are recorded.

pub mod protocol;

use crate::adapters::inbound::edge::{json_error, Caller};
use crate::adapters::inbound::wire::{
    batch_answer, details, rfc3339, unavailable_message, BatchAnswer, ErrorBody, ErrorCode,
    ItemStatus,
};
use crate::app::metrics::{Channel, Metrics, ReasonLabels};
use crate::app::rate_limit::{Client, RateLimits};
use crate::domain::Source;
use crate::ports::{Clock, IngestUseCase, Item, Outcome, Unavailable};
use futures_util::future::{self, BoxFuture, FutureExt};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use poem::http::{header, Method, StatusCode};
use poem::{Endpoint, Request, Response};
use protocol::{ClientMessage, EventData, Limits, Reply};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a closing handshake may take once the close frame is sent.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The WebSocket adapter's limits and timers, taken from the settings once at startup.
#[derive(Debug, Clone)]
pub struct WsSettings {
    /// Largest message (and frame) a client may send.
    pub max_message_bytes: usize,
    /// Most events in one `cart_event_batch`.
    pub max_batch_events: usize,
    /// How often the server pings an open connection.
    pub ping_interval: Duration,
    /// Pings in a row without a pong before the connection is dropped.
    pub max_missed_pings: u32,
    /// Replies pending at once before reading pauses.
    pub max_in_flight: usize,
    /// How long a closing connection may take to send what is in flight.
    pub drain_timeout: Duration,
}

/// Everything the WebSocket adapter needs, built once in [`crate::app::startup`].
pub struct WsState<U> {
    pub ingest: U,
    pub settings: WsSettings,
    /// Shared with the HTTP adapter: one bucket per client across both channels.
    pub rate_limits: Arc<RateLimits>,
    pub metrics: Arc<Metrics>,
    /// The time in `connection_ack` and `pong`; timers run on tokio's clock.
    pub clock: Arc<dyn Clock>,
    /// Cancelled when the server starts shutting down; connections then drain and close.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them to drain.
    pub connections: TaskTracker,
}

/// The endpoint that upgrades `GET /events/stream`.
pub fn endpoint<U: IngestUseCase>(state: Arc<WsState<U>>) -> impl Endpoint {
    poem::endpoint::make(move |req: Request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, poem::Error>(upgrade(state, req)) }
    })
}

fn upgrade<U: IngestUseCase>(state: Arc<WsState<U>>, req: Request) -> Response {
    let accept = Upgrade {
        metrics: &state.metrics,
        shutdown: &state.shutdown,
        connections: &state.connections,
        runtime: None,
    };
    let max = state.settings.max_message_bytes;
    // An 8 KiB read buffer (tungstenite preallocates 128 KiB per connection): larger frames
    // still grow it, and thousands of idle connections stay cheap.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    // Set by the HTTP guard, which authorized the upgrade.
    let client = req
        .extensions()
        .get::<Caller>()
        .map(|c| c.0)
        .unwrap_or(Client {
            key: None,
            ip: std::net::IpAddr::from([0, 0, 0, 0]),
        });
    let state = Arc::clone(&state);
    accept.accept(&req, move |upgraded| async move {
        Connection::new(state, client).run(upgraded, config).await;
    })
}

/// What answering a WebSocket upgrade needs, shared by `/events/stream` and `/events/tap`.
pub(crate) struct Upgrade<'a> {
    pub metrics: &'a Metrics,
    /// Once cancelled, upgrades are refused with 503.
    pub shutdown: &'a CancellationToken,
    /// Where the connection's task runs, so shutdown can wait for it.
    pub connections: &'a TaskTracker,
    /// The runtime that serves the connection: the current one when `None`.
    pub runtime: Option<&'a tokio::runtime::Handle>,
}

impl Upgrade<'_> {
    /// Answers an upgrade request: 400 unless it is a valid one, 503 while shutting down,
    /// else 101, and `serve` then runs on the upgraded connection.
    pub(crate) fn accept<F, Fut>(&self, req: &Request, serve: F) -> Response
    where
        F: FnOnce(poem::Upgraded) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Some(key) = handshake_key(req) else {
            return json_error(
                self.metrics,
                StatusCode::BAD_REQUEST,
                ErrorBody::new(
                    ErrorCode::InvalidMessage,
                    "this endpoint speaks WebSocket only: send a WebSocket upgrade (version 13)",
                ),
            );
        };
        if self.shutdown.is_cancelled() {
            return json_error(
                self.metrics,
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody::new(ErrorCode::Unavailable, "the server is shutting down"),
            );
        }
        let Ok(on_upgrade) = req.take_upgrade() else {
            return json_error(
                self.metrics,
                StatusCode::BAD_REQUEST,
                ErrorBody::new(
                    ErrorCode::InvalidMessage,
                    "the connection cannot be upgraded",
                ),
            );
        };
        let serving = async move {
            if let Ok(upgraded) = on_upgrade.await {
                serve(upgraded).await;
            }
        };
        match self.runtime {
            Some(runtime) => drop(self.connections.spawn_on(serving, runtime)),
            None => drop(self.connections.spawn(serving)),
        }
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(
                header::SEC_WEBSOCKET_ACCEPT,
                derive_accept_key(key.as_bytes()),
            )
            .finish()
    }
}

/// The `Sec-WebSocket-Key` of a valid upgrade request (RFC 6455 4.2.1), else `None`.
/// A message's event (`index` `None`) or its batch's item `index`, whole, as the client sent
/// it: the message parsed again, keeping events whole.
fn as_sent(text: &str, max_batch: usize, index: Option<usize>) -> serde_json::Value {
    let whole = match (protocol::parse(text, max_batch, true), index) {
        (Ok(ClientMessage::Event { data, .. }), None) => Some(data),
        (Ok(ClientMessage::Batch { data, .. }), Some(i)) => data.into_iter().nth(i),
        _ => None,
    };
    match whole {
        Some(EventData::Raw(raw)) => raw,
        _ => serde_json::Value::Null,
    }
}

fn handshake_key(req: &Request) -> Option<poem::http::HeaderValue> {
    let header_is = |name: header::HeaderName, want: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(want)))
        })
    };
    let valid = req.method() == Method::GET
        && header_is(header::UPGRADE, "websocket")
        && header_is(header::CONNECTION, "upgrade")
        && header_is(header::SEC_WEBSOCKET_VERSION, "13");
    req.headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| valid)
        .cloned()
}

type ReplyFuture = BoxFuture<'static, String>;

struct Connection<U> {
    id: String,
    state: Arc<WsState<U>>,
    /// Its key and address: the rate limit's bucket, shared with the client's other
    /// connections and HTTP requests.
    client: Client,
    in_flight: FuturesOrdered<ReplyFuture>,
    /// With shared (Redis) rate limits: closed once the last message that waits for its rate
    /// check has been submitted or refused; the next one submits only after that.
    submitted: Option<oneshot::Receiver<()>>,
}

/// Why the connection loop ended.
enum Ending {
    /// The client vanished; nothing more can be sent.
    Gone,
    /// The client sent a close frame: answer what is in flight, then close with this code.
    ClosedByClient(CloseCode),
    /// Answer what is in flight, then close with this code.
    Close(CloseCode, &'static str),
    /// Close at once without answering (the client stopped answering pings).
    Abort(CloseCode, &'static str),
}

impl<U: IngestUseCase> Connection<U> {
    fn new(state: Arc<WsState<U>>, client: Client) -> Self {
        let id = format!("c-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        Self {
            id,
            client,
            state,
            in_flight: FuturesOrdered::new(),
            submitted: None,
        }
    }

    #[tracing::instrument(skip_all, fields(connection_id = %self.id))]
    async fn run<S>(mut self, socket: S, config: WebSocketConfig)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut reader, mut writer) = split(socket, config).await;
        let metrics = Arc::clone(&self.state.metrics);
        metrics.ws_connections.inc();
        let ack = Reply::ConnectionAck {
            connection_id: self.id.clone(),
            protocol_version: protocol::PROTOCOL_VERSION,
            server_time: rfc3339(self.state.clock.now()),
            limits: Limits {
                max_message_bytes: self.state.settings.max_message_bytes,
                max_batch_events: self.state.settings.max_batch_events,
            },
        };
        let ending = match writer.send(Message::text(ack.to_text())).await {
            Ok(()) => self.serve(&mut reader, &mut writer).await,
            Err(_) => Ending::Gone,
        };
        let reason = match &ending {
            Ending::Gone => "client_gone",
            Ending::ClosedByClient(_) => "client_closed",
            Ending::Close(CloseCode::Away, _) => "shutdown",
            Ending::Close(CloseCode::Size, _) => "message_too_large",
            Ending::Close(CloseCode::Invalid, _) => "invalid_utf8",
            Ending::Close(..) => "protocol_error",
            Ending::Abort(..) => "ping_timeout",
        };
        metrics
            .ws_closes
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        match ending {
            Ending::Gone => {
                // Nobody to answer, but every submitted event is still recorded: the futures
                // only carry replies, and the committer owns the events.
            }
            Ending::ClosedByClient(code) => self.finish(&mut reader, &mut writer, code, "").await,
            Ending::Close(code, why) => self.finish(&mut reader, &mut writer, code, why).await,
            Ending::Abort(code, why) => close(&mut reader, &mut writer, code, why).await,
        }
        metrics.ws_connections.dec();
        tracing::debug!(reason, "connection closed");
    }

    /// Answers everything in flight, then closes with `code`.
    async fn finish<R, W>(
        &mut self,
        reader: &mut WebSocketStream<R>,
        writer: &mut WebSocketStream<W>,
        code: CloseCode,
        why: &'static str,
    ) where
        R: AsyncRead + AsyncWrite + Unpin,
        W: AsyncRead + AsyncWrite + Unpin,
    {
        // Bounded, so a client that stops reading cannot hold shutdown hostage.
        let drained =
            tokio::time::timeout(self.state.settings.drain_timeout, self.drain(writer)).await;
        if matches!(drained, Ok(Ok(()))) {
            close(reader, writer, code, why).await;
        }
    }

    /// Reads frames from `reader` and answers through `writer` until the connection must end.
    async fn serve<R, W>(
        &mut self,
        reader: &mut WebSocketStream<R>,
        writer: &mut WebSocketStream<W>,
    ) -> Ending
    where
        R: AsyncRead + AsyncWrite + Unpin,
        W: AsyncRead + AsyncWrite + Unpin,
    {
        let state = Arc::clone(&self.state);
        let settings = &state.settings;
        let shutdown = state.shutdown.clone();
        let interval = settings.ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unanswered = 0u32;
        loop {
            let can_read = self.in_flight.len() < settings.max_in_flight;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    return Ending::Close(CloseCode::Away, "server shutting down");
                }
                Some(reply) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    if self.send_ready(writer, reply).await.is_err() {
                        return Ending::Gone;
                    }
                }
                frame = reader.next(), if can_read => {
                    if let Some(ending) = self.on_frame(frame, writer, &mut unanswered).await {
                        return ending;
                    }
                }
                _ = ping.tick() => {
                    if unanswered >= settings.max_missed_pings {
                        return Ending::Abort(CloseCode::Error, "no answer to pings");
                    }
                    unanswered += 1;
                    if writer.send(Message::Ping(Default::default())).await.is_err() {
                        return Ending::Gone;
                    }
                }
            }
        }
    }

    /// Handles what the reader produced; `Some` when the connection must end.
    async fn on_frame<W>(
        &mut self,
        frame: Option<Result<Message, WsError>>,
        writer: &mut WebSocketStream<W>,
        unanswered: &mut u32,
    ) -> Option<Ending>
    where
        W: AsyncRead + AsyncWrite + Unpin,
    {
        // The end of the stream: the client is gone.
        let Some(frame) = frame else {
            return Some(Ending::Gone);
        };
        match frame {
            Ok(Message::Close(frame)) => {
                return Some(Ending::ClosedByClient(close_reply(frame.as_ref())))
            }
            Ok(Message::Text(text)) => {
                let reply = self.dispatch(text.as_str());
                self.in_flight.push_back(reply);
            }
            Ok(Message::Binary(_)) => {
                let reply = self.refuse(
                    None,
                    ErrorCode::InvalidJson,
                    "binary frames are not supported; send each message as a JSON text frame",
                );
                self.in_flight.push_back(reply);
            }
            Ok(Message::Pong(_)) => *unanswered = 0,
            // The reader's own pongs go nowhere (see `split`): answer here.
            Ok(Message::Ping(payload)) => {
                if writer.send(Message::Pong(payload)).await.is_err() {
                    return Some(Ending::Gone);
                }
            }
            // Reading never yields raw frames.
            Ok(Message::Frame(_)) => {}
            Err(WsError::Capacity(_)) => {
                return Some(Ending::Close(
                    CloseCode::Size,
                    "message larger than maxMessageBytes",
                ));
            }
            // Also a close frame whose reason is not UTF-8: 1007 is the code for data that is
            // not the UTF-8 its frame promises, wherever it is.
            Err(WsError::Utf8(_)) => {
                return Some(Ending::Close(CloseCode::Invalid, "text is not valid UTF-8"));
            }
            // Also a close frame with a 1-byte payload.
            Err(WsError::Protocol(_)) => {
                return Some(Ending::Close(
                    CloseCode::Protocol,
                    "WebSocket protocol error",
                ));
            }
            Err(_) => return Some(Ending::Gone),
        }
        None
    }

    /// Sends `first` and every reply already finished behind it with one flush.
    async fn send_ready<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        first: String,
    ) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        ws.feed(Message::text(first)).await?;
        while let Some(Some(next)) = self.in_flight.next().now_or_never() {
            ws.feed(Message::text(next)).await?;
        }
        ws.flush().await
    }

    /// Answers everything still in flight, in order.
    async fn drain<S>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        while let Some(reply) = self.in_flight.next().await {
            self.send_ready(ws, reply).await?;
        }
        Ok(())
    }

    fn refuse(&self, request_id: Option<String>, code: ErrorCode, message: &str) -> ReplyFuture {
        self.state.metrics.error(Channel::Ws, code.as_str());
        future::ready(Reply::error(request_id, code, message).to_text()).boxed()
    }

    fn rate_limited(&self, request_id: &Option<String>, events: usize) -> Option<ReplyFuture> {
        let wait = self
            .state
            .rate_limits
            .check_events(self.client, events)
            .err()?;
        let reply = rate_limited_reply(&self.state.metrics, request_id.clone(), wait);
        Some(future::ready(reply).boxed())
    }

    /// With shared (Redis) rate limits: waits for the rate check, then submits `items` once
    /// every earlier message of this connection has been submitted or refused. So the checks
    /// of pipelined messages overlap (each is a round trip to Redis) while their events still
    /// enter in the order they arrived. `Err(wait)` when refused.
    fn admit_in_order(
        &mut self,
        items: Vec<Item>,
    ) -> BoxFuture<'static, Result<Vec<Outcome>, Duration>> {
        let state = Arc::clone(&self.state);
        let client = self.client;
        let earlier = self.submitted.take();
        let (turn, next) = oneshot::channel::<()>();
        self.submitted = Some(next);
        async move {
            let verdict = state.rate_limits.admit_events(client, items.len()).await;
            if let Some(earlier) = earlier {
                // Closed (never sent to) when the earlier message is through.
                let _ = earlier.await;
            }
            let outcomes = verdict.map(|()| state.ingest.submit(items, Source::Ws));
            drop(turn);
            match outcomes {
                Ok(outcomes) => Ok(outcomes.await),
                Err(wait) => Err(wait),
            }
        }
        .boxed()
    }

    /// Handles one text message: refusals and pongs are ready at once; events are validated
    /// and submitted now, and answered when recorded.
    fn dispatch(&mut self, text: &str) -> ReplyFuture {
        match protocol::parse(text, self.state.settings.max_batch_events, false) {
            Ok(ClientMessage::Ping { request_id }) => {
                let server_time = rfc3339(self.state.clock.now());
                future::ready(
                    Reply::Pong {
                        request_id,
                        server_time,
                    }
                    .to_text(),
                )
                .boxed()
            }
            Ok(ClientMessage::Event { request_id, data }) => self.event(request_id, data, text),
            Ok(ClientMessage::Batch { request_id, data }) => self.batch(request_id, data, text),
            Err(r) => self.refuse(r.request_id, r.code, &r.message),
        }
    }

    /// Validates one event as the parser kept it: the message's event, or its batch's item
    /// `index`. Should the tap need a rejected event as sent, the message is parsed again,
    /// whole (rare: only a rejection while someone watches).
    fn validate(&self, data: EventData, text: &str, index: Option<usize>) -> Item {
        match data {
            EventData::Fields(fields) => {
                let max_batch = self.state.settings.max_batch_events;
                let as_sent = || as_sent(text, max_batch, index);
                self.state.ingest.validate_fields_as_sent(*fields, &as_sent)
            }
            EventData::Raw(raw) => self.state.ingest.validate(raw),
        }
    }

    fn event(&mut self, request_id: Option<String>, data: EventData, text: &str) -> ReplyFuture {
        if self.state.rate_limits.is_shared() {
            let item = self.validate(data, text, None);
            let admitted = self.admit_in_order(vec![item]);
            let metrics = Arc::clone(&self.state.metrics);
            return async move {
                let outcome = match admitted.await {
                    Ok(mut outcomes) => outcomes
                        .pop()
                        .unwrap_or(Outcome::Unavailable(Unavailable::ShuttingDown)),
                    Err(wait) => return rate_limited_reply(&metrics, request_id, wait),
                };
                let reply = event_reply(request_id, outcome);
                if let Reply::Error { code, .. } = &reply {
                    metrics.error(Channel::Ws, code.as_str());
                }
                reply.to_text()
            }
            .boxed();
        }
        if let Some(limited) = self.rate_limited(&request_id, 1) {
            return limited;
        }
        let item = self.validate(data, text, None);
        let submitted = self.state.ingest.submit_one(item, Source::Ws);
        let metrics = Arc::clone(&self.state.metrics);
        async move {
            let reply = event_reply(request_id, submitted.await);
            if let Reply::Error { code, .. } = &reply {
                metrics.error(Channel::Ws, code.as_str());
            }
            reply.to_text()
        }
        .boxed()
    }

    fn batch(
        &mut self,
        request_id: Option<String>,
        data: Vec<EventData>,
        text: &str,
    ) -> ReplyFuture {
        let shared = self.state.rate_limits.is_shared();
        if !shared {
            if let Some(limited) = self.rate_limited(&request_id, data.len()) {
                return limited;
            }
        }
        let items = data
            .into_iter()
            .enumerate()
            .map(|(i, e)| self.validate(e, text, Some(i)))
            .collect();
        let submitted = if shared {
            self.admit_in_order(items)
        } else {
            self.state.ingest.submit(items, Source::Ws).map(Ok).boxed()
        };
        let metrics = Arc::clone(&self.state.metrics);
        async move {
            let outcomes = match submitted.await {
                Ok(outcomes) => outcomes,
                Err(wait) => return rate_limited_reply(&metrics, request_id, wait),
            };
            let reply = match batch_answer(outcomes) {
                BatchAnswer::Results(result) => Reply::BatchAck { request_id, result },
                BatchAnswer::Unavailable(reason) => {
                    metrics.error(Channel::Ws, ErrorCode::Unavailable.as_str());
                    Reply::error(request_id, ErrorCode::Unavailable, reason)
                }
            };
            reply.to_text()
        }
        .boxed()
    }
}

/// The `rate_limited` error for a message refused for `wait`, counted.
fn rate_limited_reply(metrics: &Metrics, request_id: Option<String>, wait: Duration) -> String {
    metrics.error(Channel::Ws, ErrorCode::RateLimited.as_str());
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    Reply::Error {
        request_id,
        code: ErrorCode::RateLimited,
        message: format!("too many events; retry after {ms} ms"),
        details: None,
        retryable: true,
        retry_after_ms: Some(ms),
    }
    .to_text()
}

/// The reply to a `cart_event`: an `event_ack`, or an `error` saying why it was not recorded.
fn event_reply(request_id: Option<String>, outcome: Outcome) -> Reply {
    match outcome {
        Outcome::Accepted(id) => Reply::EventAck {
            request_id,
            event_id: id.into_string(),
            status: ItemStatus::Accepted,
        },
        Outcome::Duplicate(id) => Reply::EventAck {
            request_id,
            event_id: id.into_string(),
            status: ItemStatus::Duplicate,
        },
        Outcome::Rejected(errors) => Reply::Error {
            request_id,
            code: ErrorCode::ValidationFailed,
            message: "event is invalid".into(),
            details: Some(details(errors)),
            retryable: false,
            retry_after_ms: None,
        },
        Outcome::Unavailable(reason) => Reply::error(
            request_id,
            ErrorCode::Unavailable,
            unavailable_message(reason),
        ),
    }
}

/// The code that answers a client's close frame (RFC 6455 5.5.1): its own code echoed, 1000
/// when it sent none, and 1002 for a code no endpoint may send (1005, 1006, 1015, reserved or
/// out of range). tungstenite has already put 1002 in place of such a code by the time the
/// frame reaches us; the check here keeps the rule true whatever the library does.
fn close_reply(frame: Option<&CloseFrame>) -> CloseCode {
    match frame {
        None => CloseCode::Normal,
        Some(f) if f.code.is_allowed() => f.code,
        Some(_) => CloseCode::Protocol,
    }
}

/// Sends a close frame, ends our side of the TCP connection, and waits (briefly) for the
/// client to end its side.
async fn close<R, W>(
    reader: &mut WebSocketStream<R>,
    writer: &mut WebSocketStream<W>,
    code: CloseCode,
    reason: &'static str,
) where
    R: AsyncRead + AsyncWrite + Unpin,
    W: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if writer.close(Some(frame)).await.is_err() {
        return;
    }
    // The server closes the TCP connection first (RFC 6455 7.1.1); a client waits for that
    // after the close handshake, so without it both sides would wait out CLOSE_WAIT.
    if writer.get_mut().shutdown().await.is_err() {
        return;
    }
    // Read (and drop) whatever the client still sends until it closes: a socket closed with
    // unread bytes (the rest of an oversized frame, say) is reset, and a reset can destroy
    // the close frame and the last replies before the client reads them.
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match reader.get_mut().read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Splits an upgraded connection into a WebSocket reader and a WebSocket writer.
///
/// One tungstenite stream cannot answer a client's close handshake properly: on reading the
/// client's close frame it queues its own close reply and refuses every later send, so the
/// replies still in flight could not go out before our close frame. Two streams over the two
/// halves of the socket can: the reader parses frames and its automatic writes (pongs, close
/// replies) go nowhere, while the writer stays open until we close it. The cost is the split
/// itself: one uncontended lock per read or write of the socket, not per message.
async fn split<S>(
    socket: S,
    config: WebSocketConfig,
) -> (WebSocketStream<ReadOnly<S>>, WebSocketStream<WriteOnly<S>>)
where
    S: AsyncRead + AsyncWrite,
{
    let (read, write) = tokio::io::split(socket);
    let reader = WebSocketStream::from_raw_socket(ReadOnly(read), Role::Server, Some(config)).await;
    // The writer never reads, so it needs no read buffer.
    let writer = WebSocketStream::from_raw_socket(
        WriteOnly(write),
        Role::Server,
        Some(config.read_buffer_size(0)),
    )
    .await;
    (reader, writer)
}

/// The read half of a connection, for the reader: whatever tungstenite writes on its own is
/// dropped, since the writer answers pings and closes.
struct ReadOnly<S>(ReadHalf<S>);

impl<S: AsyncRead> AsyncRead for ReadOnly<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S> AsyncWrite for ReadOnly<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The write half of a connection, for the writer. Reading it finds the end of the stream at
/// once, so a read by mistake fails loudly instead of hanging.
struct WriteOnly<S>(WriteHalf<S>);

impl<S> AsyncRead for WriteOnly<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite> AsyncWrite for WriteOnly<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
