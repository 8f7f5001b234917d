//! The edge of the server: connection deadlines and caps, driven over raw TCP so the tests
//! control every byte and its timing. Deadlines are short here (about a second); the bounds on
//! when a cut happens are loose enough for a loaded machine, yet tell "at the deadline" from
//! "never" and from "at the first byte".

use crate::helpers::{item_added, poll_until, recv_json, send_json, unique, TestApp};
use cartstream::app::config::Settings;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HEAD: Duration = Duration::from_millis(1500);
const BODY_IDLE: Duration = Duration::from_millis(1500);
const KEEP_ALIVE: Duration = Duration::from_millis(1500);
/// How late after its deadline a cut may come on a busy test machine.
const SLACK: Duration = Duration::from_millis(1500);

fn short_deadlines(s: &mut Settings) {
    s.http_head_timeout = HEAD;
    s.http_body_idle_timeout = BODY_IDLE;
    s.http_keep_alive_timeout = KEEP_ALIVE;
    s.ws_handshake_timeout = HEAD;
}

/// Writes `bytes` one at a time, `every` apart, until done or the server closes.
fn dribble(mut w: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, every: Duration) {
    tokio::spawn(async move {
        for b in bytes {
            if w.write_all(&[b]).await.is_err() {
                return;
            }
            // A slow peer on purpose: the server's own deadlines are what is under test.
            tokio::time::sleep(every).await;
        }
        // Keep the socket open: only the server may end it.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(w);
    });
}

/// Reads until the server closes (or resets) the connection: what it sent, and when it closed.
async fn read_until_closed(r: &mut (impl AsyncReadExt + Unpin)) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let wait = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    wait.await.expect("the server closes the connection");
    (got, Instant::now())
}

fn assert_cut_at(started: Instant, closed: Instant, deadline: Duration) {
    let took = closed - started;
    assert!(
        took >= deadline - Duration::from_millis(100),
        "cut after {took:?}, before its {deadline:?} deadline"
    );
    assert!(
        took <= deadline + SLACK,
        "cut after {took:?}, long past its {deadline:?} deadline"
    );
}

#[tokio::test]
async fn a_head_dribbled_a_byte_at_a_time_is_cut_at_the_head_deadline() {
    let app = TestApp::spawn_with(short_deadlines).await;
    let started = Instant::now();
    let (mut r, w) = TcpStream::connect(app.addr).await.unwrap().into_split();
    // Every byte comes well within any idle timeout; the head is never finished in time.
    dribble(
        w,
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
            .to_vec(),
        Duration::from_millis(100),
    );
    let (got, closed) = read_until_closed(&mut r).await;
    assert_cut_at(started, closed, HEAD);
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(
        app.metric("cartstream_connections_cut_total{reason=\"head_timeout\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_head_deadline_without_an_answer() {
    let app = TestApp::spawn_with(short_deadlines).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let (got, closed) = read_until_closed(&mut s).await;
    assert_cut_at(started, closed, HEAD);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(
        app.metric("cartstream_connections_cut_total{reason=\"silent\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_body_below_the_minimum_rate_is_cut_with_408() {
    let app = TestApp::spawn_with(|s| {
        short_deadlines(s);
        s.http_body_min_rate = 500;
    })
    .await;
    let (mut r, mut w) = TcpStream::connect(app.addr).await.unwrap().into_split();
    w.write_all(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // A byte every 0.4 s never trips the 1.5 s idle timeout, but averages 2.5 B/s.
    dribble(w, vec![b' '; 400], Duration::from_millis(400));
    let (got, closed) = read_until_closed(&mut r).await;
    assert_cut_at(started, closed, BODY_IDLE);
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(
        app.metric("cartstream_connections_cut_total{reason=\"body_rate\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_body_that_stops_is_cut_at_the_idle_deadline() {
    let app = TestApp::spawn_with(|s| {
        short_deadlines(s);
        s.http_body_min_rate = 0;
    })
    .await;
    let (mut r, mut w) = TcpStream::connect(app.addr).await.unwrap().into_split();
    w.write_all(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"eventId\":")
        .await
        .unwrap();
    let started = Instant::now();
    let (got, closed) = read_until_closed(&mut r).await;
    assert_cut_at(started, closed, BODY_IDLE);
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"));
    assert_eq!(
        app.metric("cartstream_connections_cut_total{reason=\"body_idle\"}")
            .await,
        Some(1.0)
    );
    drop(w);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_answer() {
    let app = TestApp::spawn_with(short_deadlines).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    // Slower than the head deadline in all, but each head is quick: keep-alive serves both.
    for _ in 0..2 {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // Idle on purpose, past the keep-alive deadline under test.
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let answered = Instant::now() - Duration::from_millis(1000);
    let (got, closed) = read_until_closed(&mut s).await;
    assert_cut_at(answered, closed, KEEP_ALIVE);
    assert!(got.is_empty(), "an idle close sends nothing");
    assert_eq!(
        app.metric("cartstream_connections_cut_total{reason=\"keep_alive\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn requests_keep_alive_and_websockets_work_with_short_deadlines() {
    let app = TestApp::spawn_with(short_deadlines).await;
    // reqwest reuses its connection: the second request rides the first one's keep-alive.
    for _ in 0..2 {
        let (status, _) = app.post_event(&item_added(&unique("edge"))).await;
        assert_eq!(status, 202);
        // Idle on purpose between requests, within the keep-alive deadline.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A WebSocket outlives every HTTP deadline.
    let (mut ws, ack) = app.ws().await;
    assert_eq!(ack["type"], "connection_ack");
    // Idle on purpose past every HTTP deadline: the server's timers are under test.
    tokio::time::sleep(HEAD + KEEP_ALIVE).await;
    let id = unique("edge-ws");
    send_json(
        &mut ws,
        &json!({"type": "cart_event", "requestId": "r-1", "data": item_added(&id)}),
    )
    .await;
    let reply = recv_json(&mut ws).await;
    assert_eq!(reply["status"], "accepted", "{reply}");
    // reqwest's idle connection may have met its keep-alive deadline; nothing else was cut.
    for reason in [
        "silent",
        "head_timeout",
        "body_idle",
        "body_rate",
        "ws_handshake",
    ] {
        let line = format!("cartstream_connections_cut_total{{reason=\"{reason}\"}}");
        assert_eq!(app.metric(&line).await, None, "{reason}");
    }
}

/// A connection from another loopback address (Linux routes all of 127.0.0.0/8 to lo).
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

async fn health_over(mut s: TcpStream) -> String {
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = read_until_closed(&mut s).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn connections_over_the_per_address_cap_get_503_while_others_are_served() {
    let app = TestApp::spawn_with(|s| s.max_connections_per_address = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.1", app.addr).await);
    }
    let refused = health_over(connect_from("127.0.0.1", app.addr).await).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused:?}");
    assert!(refused.contains("Retry-After: 1"), "{refused:?}");
    let other = health_over(connect_from("127.0.0.2", app.addr).await).await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other:?}");
    // A closed connection frees its place.
    held.pop();
    let again = poll_until(
        Duration::from_secs(5),
        || async { health_over(connect_from("127.0.0.1", app.addr).await).await },
        |again| again.starts_with("HTTP/1.1 200"),
    )
    .await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again:?}");
    assert_eq!(
        app.metric("cartstream_connections_refused_total{reason=\"max_connections_per_address\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn connections_over_the_total_cap_are_refused_from_any_address() {
    let app = TestApp::spawn_with(|s| s.max_connections = 2).await;
    let _a = connect_from("127.0.0.3", app.addr).await;
    let _b = connect_from("127.0.0.4", app.addr).await;
    let refused = health_over(connect_from("127.0.0.5", app.addr).await).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused:?}");
}

#[tokio::test]
async fn a_trusted_proxy_is_exempt_from_the_per_address_cap() {
    let app = TestApp::spawn_with(|s| {
        s.max_connections_per_address = 2;
        s.trusted_proxies = vec!["127.0.0.6".into()];
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from("127.0.0.6", app.addr).await);
    }
    let served = health_over(connect_from("127.0.0.6", app.addr).await).await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served:?}");
    let open = app.metric("cartstream_connections").await.unwrap();
    assert!(open >= 4.0, "the held connections count: {open}");
}
