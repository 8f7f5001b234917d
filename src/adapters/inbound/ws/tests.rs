//! The WebSocket adapter against a fake use case, over an in-memory socket.

use super::*;
use crate::adapters::inbound::testing::{
    errors_counted, id, metrics, no_rate_limits, FakeIngest, FixedClock, UNAVAILABLE,
};
use crate::ports::{Outcome, Unavailable};
use serde_json::{json, Value};
use tokio::io::DuplexStream;

const AT: &str = "2026-12-03T10:00:00.000Z";

fn state(fake: FakeIngest) -> Arc<WsState<FakeIngest>> {
    let at = chrono::DateTime::parse_from_rfc3339(AT).unwrap().to_utc();
    Arc::new(WsState {
        ingest: fake,
        settings: WsSettings {
            max_message_bytes: 64 * 1024,
            max_batch_events: 3,
            ping_interval: Duration::from_secs(30),
            max_missed_pings: 2,
            max_in_flight: 8,
            drain_timeout: Duration::from_secs(5),
        },
        rate_limits: no_rate_limits(),
        metrics: metrics(),
        clock: Arc::new(FixedClock(at)),
        shutdown: CancellationToken::new(),
        connections: TaskTracker::new(),
    })
}

type Client = WebSocketStream<DuplexStream>;

/// A connection served on its own task, and the client's end of it, past `connection_ack`.
async fn connect(state: &Arc<WsState<FakeIngest>>) -> (Client, Value) {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let connection = Connection::new(Arc::clone(state), anonymous());
    tokio::spawn(connection.run(server, WebSocketConfig::default()));
    let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let ack = next_json(&mut client).await;
    (client, ack)
}

fn anonymous() -> crate::app::rate_limit::Client {
    crate::app::rate_limit::Client {
        key: None,
        ip: std::net::IpAddr::from([127, 0, 0, 1]),
    }
}

async fn send(client: &mut Client, message: Value) {
    client
        .send(Message::text(message.to_string()))
        .await
        .unwrap();
}

async fn next_json(client: &mut Client) -> Value {
    loop {
        match client.next().await.unwrap().unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

fn event(id: &str) -> Value {
    json!({"eventId": id, "userId": "u", "eventType": "cart_viewed"})
}

#[tokio::test]
async fn the_connection_ack_has_the_clock_time_and_the_limits() {
    let (_, ack) = connect(&state(FakeIngest::default())).await;
    assert_eq!(ack["type"], "connection_ack");
    assert_eq!(ack["serverTime"], AT);
    assert_eq!(ack["protocolVersion"], 1);
    assert_eq!(
        ack["limits"],
        json!({"maxMessageBytes": 65536, "maxBatchEvents": 3})
    );
}

#[tokio::test]
async fn an_event_is_answered_with_the_use_case_outcome() {
    let state = state(FakeIngest::answering([Outcome::Duplicate(id("e-1"))]));
    let (mut client, _) = connect(&state).await;
    send(
        &mut client,
        json!({"type": "cart_event", "requestId": "r-1", "data": event("e-1")}),
    )
    .await;
    assert_eq!(
        next_json(&mut client).await,
        json!({"type": "event_ack", "requestId": "r-1", "eventId": "e-1", "status": "duplicate"})
    );
    assert_eq!(*state.ingest.calls.lock().unwrap(), vec![(1, Source::Ws)]);
}

#[tokio::test]
async fn an_unavailable_event_is_an_error_worded_by_its_reason() {
    let state = state(FakeIngest::answering(UNAVAILABLE.map(Outcome::Unavailable)));
    let (mut client, _) = connect(&state).await;
    for reason in UNAVAILABLE {
        send(
            &mut client,
            json!({"type": "cart_event", "data": event("e-1")}),
        )
        .await;
        assert_eq!(
            next_json(&mut client).await,
            json!({"type": "error", "code": "unavailable",
                   "message": unavailable_message(reason), "retryable": true}),
            "{reason:?}"
        );
    }
    assert_eq!(
        errors_counted(&state.metrics, Channel::Ws, "unavailable"),
        5
    );
}

#[tokio::test]
async fn a_rejected_event_is_validation_failed_with_details() {
    let state = state(FakeIngest::default());
    let (mut client, _) = connect(&state).await;
    send(
        &mut client,
        json!({"type": "cart_event", "requestId": "r", "data": {"eventType": "x"}}),
    )
    .await;
    let reply = next_json(&mut client).await;
    assert_eq!(reply["code"], "validation_failed");
    assert_eq!(reply["requestId"], "r");
    assert_eq!(reply["retryable"], false);
    assert_eq!(reply["details"].as_array().unwrap().len(), 2);
    assert_eq!(
        errors_counted(&state.metrics, Channel::Ws, "validation_failed"),
        1
    );
}

#[tokio::test]
async fn a_batch_is_answered_per_event_in_order() {
    let state = state(FakeIngest::answering([
        Outcome::Accepted(id("e-1")),
        Outcome::Duplicate(id("e-3")),
    ]));
    let (mut client, _) = connect(&state).await;
    let data = json!([event("e-1"), {"eventId": "e-2"}, event("e-3")]);
    send(
        &mut client,
        json!({"type": "cart_event_batch", "requestId": "b", "data": data}),
    )
    .await;
    let reply = next_json(&mut client).await;
    assert_eq!(reply["type"], "batch_ack");
    assert_eq!(reply["requestId"], "b");
    let statuses: Vec<&str> = reply["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["accepted", "rejected", "duplicate"]);
    assert_eq!(*state.ingest.calls.lock().unwrap(), vec![(3, Source::Ws)]);
}

#[tokio::test]
async fn pipelined_messages_are_answered_in_arrival_order() {
    let state = state(FakeIngest::answering([
        Outcome::Accepted(id("e-1")),
        Outcome::Unavailable(Unavailable::KeyInFlight),
    ]));
    let (mut client, _) = connect(&state).await;
    send(
        &mut client,
        json!({"type": "cart_event", "requestId": "1", "data": event("e-1")}),
    )
    .await;
    send(&mut client, json!({"type": "ping", "requestId": "2"})).await;
    send(&mut client, json!({"type": "nonsense", "requestId": "3"})).await;
    send(
        &mut client,
        json!({"type": "cart_event", "requestId": "4", "data": event("e-1")}),
    )
    .await;
    let mut replies = Vec::new();
    for _ in 0..4 {
        let reply = next_json(&mut client).await;
        replies.push((reply["requestId"].clone(), reply["type"].clone()));
    }
    let expected = [
        ("1", "event_ack"),
        ("2", "pong"),
        ("3", "error"),
        ("4", "error"),
    ];
    assert_eq!(replies, expected.map(|(r, t)| (json!(r), json!(t))));
}

#[tokio::test]
async fn a_pong_has_the_clock_time() {
    let (mut client, _) = connect(&state(FakeIngest::default())).await;
    send(&mut client, json!({"type": "ping", "requestId": "p"})).await;
    assert_eq!(
        next_json(&mut client).await,
        json!({"type": "pong", "requestId": "p", "serverTime": AT})
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_misses_pings_is_closed_with_1011() {
    let (server, mut client) = tokio::io::duplex(64 * 1024);
    let connection = Connection::new(state(FakeIngest::default()), anonymous());
    let served = tokio::spawn(connection.run(server, WebSocketConfig::default()));
    // The client reads nothing, so it answers no ping; tokio's paused clock runs the ping
    // timer (30 s) and the close wait at once. Read as raw bytes: a tungstenite client would
    // answer the pings as it read them.
    served.await.unwrap();
    let mut bytes = Vec::new();
    client.read_to_end(&mut bytes).await.unwrap();
    let reason = b"no answer to pings";
    let mut close = vec![0x88, 2 + reason.len() as u8, 0x03, 0xF3]; // 1011
    close.extend_from_slice(reason);
    assert!(bytes.ends_with(&close), "{bytes:?}");
    let frames = &bytes[..bytes.len() - close.len()];
    let pings = frames.windows(2).filter(|w| w == &[0x89, 0x00]).count();
    assert_eq!(pings, 2, "{frames:?}");
}

#[tokio::test]
async fn shutdown_closes_with_1001_after_answering_what_is_in_flight() {
    let state = state(FakeIngest::default());
    let (mut client, _) = connect(&state).await;
    send(
        &mut client,
        json!({"type": "cart_event", "requestId": "last", "data": event("e-9")}),
    )
    .await;
    assert_eq!(next_json(&mut client).await["requestId"], "last");
    state.shutdown.cancel();
    match client.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_binary_frame_is_refused_as_invalid_json() {
    let state = state(FakeIngest::default());
    let (mut client, _) = connect(&state).await;
    client.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next_json(&mut client).await["code"], "invalid_json");
    assert!(state.ingest.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_client_close_is_echoed_after_the_replies_in_flight() {
    let (mut client, _) = connect(&state(FakeIngest::default())).await;
    send(
        &mut client,
        json!({"type": "cart_event", "requestId": "r", "data": event("e-1")}),
    )
    .await;
    let frame = CloseFrame {
        code: CloseCode::Library(4000),
        reason: "".into(),
    };
    client.close(Some(frame)).await.unwrap();
    assert_eq!(next_json(&mut client).await["requestId"], "r");
    match client.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4000),
        other => panic!("expected the close echoed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_request_that_is_no_upgrade_is_400() {
    let state = state(FakeIngest::default());
    let client = poem::test::TestClient::new(endpoint(Arc::clone(&state)));
    let resp = client
        .get("/")
        .header(header::UPGRADE, "websocket")
        .send()
        .await;
    resp.assert_status(StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.value().deserialize();
    assert_eq!(body["code"], "invalid_message");
}

#[tokio::test]
async fn an_upgrade_while_shutting_down_is_503() {
    let state = state(FakeIngest::default());
    state.shutdown.cancel();
    let client = poem::test::TestClient::new(endpoint(Arc::clone(&state)));
    let resp = client
        .get("/")
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "keep-alive, Upgrade")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await;
    resp.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.value().deserialize();
    assert_eq!(body["code"], "unavailable");
    assert_eq!(
        errors_counted(&state.metrics, Channel::Http, "unavailable"),
        1
    );
}

#[test]
fn every_outcome_has_its_event_reply() {
    let text = |o| event_reply(Some("r".into()), o).to_text();
    assert!(text(Outcome::Accepted(id("a"))).contains(r#""status":"accepted""#));
    assert!(text(Outcome::Duplicate(id("a"))).contains(r#""status":"duplicate""#));
    assert!(text(Outcome::Rejected(Vec::new())).contains(r#""code":"validation_failed""#));
    for reason in UNAVAILABLE {
        assert!(text(Outcome::Unavailable(reason)).contains(unavailable_message(reason)));
    }
}

fn reply_to(code: u16) -> u16 {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    };
    close_reply(Some(&frame)).into()
}

#[test]
fn a_close_code_that_may_be_sent_is_echoed() {
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        assert_eq!(reply_to(code), code);
    }
}

#[test]
fn a_close_code_no_endpoint_may_send_is_answered_1002() {
    for code in [
        0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000, 65535,
    ] {
        assert_eq!(reply_to(code), 1002, "{code}");
    }
}

#[test]
fn a_close_without_a_code_is_answered_1000() {
    assert_eq!(close_reply(None), CloseCode::Normal);
}

/// Shared buckets whose answer takes longer the more events are asked for, and which refuse
/// exactly two: so the checks of pipelined messages finish in the reverse order.
struct SlowerForMore;

#[async_trait::async_trait]
impl crate::ports::SharedBuckets for SlowerForMore {
    async fn take(
        &self,
        _: &[(String, crate::domain::gcra::Gcra)],
        n: u32,
    ) -> Result<Option<Duration>, crate::ports::PortError> {
        tokio::time::sleep(Duration::from_millis(15 * u64::from(n))).await;
        Ok((n == 2).then_some(Duration::from_millis(300)))
    }
}

#[tokio::test(start_paused = true)]
async fn with_shared_limits_checks_overlap_but_events_are_submitted_in_arrival_order() {
    let settings = crate::app::config::Settings {
        rate_limit_per_second: 100,
        rate_limit_burst: 1000,
        ..crate::app::config::Settings::default()
    };
    let access = crate::app::access::Access::from_settings(&settings).unwrap();
    let limits = RateLimits::new(&settings, &access).unwrap().with_shared(
        crate::app::rate_limit::SharedLimits {
            buckets: Arc::new(SlowerForMore),
            timeout: Duration::from_secs(5),
            fallbacks: prometheus_client::metrics::counter::Counter::default(),
        },
    );
    let mut state = state(FakeIngest::default());
    Arc::get_mut(&mut state).unwrap().rate_limits = Arc::new(limits);
    let (mut client, _) = connect(&state).await;
    let batch = |n: usize, r: &str| {
        let data: Vec<Value> = (0..n).map(|i| event(&format!("{r}-{i}"))).collect();
        json!({"type": "cart_event_batch", "requestId": r, "data": data})
    };
    let started = tokio::time::Instant::now();
    // Checks of 45, 30 and 15 ms: the last message's answer comes first.
    send(&mut client, batch(3, "a")).await;
    send(&mut client, batch(2, "b")).await;
    send(
        &mut client,
        json!({"type": "cart_event", "requestId": "c", "data": event("c-0")}),
    )
    .await;
    let a = next_json(&mut client).await;
    let b = next_json(&mut client).await;
    let c = next_json(&mut client).await;
    assert_eq!(
        (&a["type"], &a["requestId"]),
        (&json!("batch_ack"), &json!("a"))
    );
    assert_eq!(b["code"], "rate_limited", "{b}");
    assert_eq!(b["retryAfterMs"], 300);
    assert_eq!(
        (&c["type"], &c["eventId"]),
        (&json!("event_ack"), &json!("c-0"))
    );
    assert_eq!(
        *state.ingest.calls.lock().unwrap(),
        vec![(3, Source::Ws), (1, Source::Ws)],
        "submitted in arrival order, the refused batch left out"
    );
    // The checks ran side by side (45 ms), not one after another (90 ms).
    assert!(
        started.elapsed() < Duration::from_millis(90),
        "{:?}",
        started.elapsed()
    );
}
