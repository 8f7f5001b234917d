//! Route targets against real receivers: a webhook receiver started inside each test, and the
//! test Redis for streams. Signatures are checked the way a receiver would check them.

use crate::backends::{random_suffix, redis_url_or_skip, DEAD_REDIS_URL};
use crate::faults::host_port;
use crate::fixtures;
use crate::proxy::FaultProxy;
use bb8_redis::redis;
use cartstream::adapters::event_json::event_json;
use cartstream::adapters::outbound::targets::{
    RedisStreamConfig, RedisStreamTarget, WebhookConfig, WebhookTarget,
};
use cartstream::domain::{Source, StoredEvent};
use cartstream::ports::{DeliveryError, MockClock, RouteTarget, SystemClock};
use hmac::{Hmac, Mac};
use poem::http::{HeaderMap, StatusCode};
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::Data;
use poem::{handler, post, Body, EndpointExt, Request, Response, Route, Server};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Generous: only there so a hang fails the test instead of blocking the suite.
const PATIENCE: Duration = Duration::from_secs(30);

/// A receiver's check of `X-Cartstream-Signature` (what `docs/routing.md` quotes): the header
/// must carry a timestamp within 300 s of `now` and a `v1` HMAC-SHA256 of `"<t>.<raw body>"`
/// under `secret`. Compared in constant time; several `v1` values (a secret being rotated)
/// pass when any matches.
pub(crate) fn verify_signature(secret: &[u8], header: &str, body: &[u8], now: u64) -> bool {
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => candidates.push(v),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if now.abs_diff(t) > 300 {
        return false; // too old (a replay) or from a clock far off
    }
    candidates.iter().any(|hex_sig| {
        let Ok(sig) = hex::decode(hex_sig) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&sig).is_ok() // constant time
    })
}

#[test]
fn the_docs_quote_the_verification_the_tests_use() {
    let function = |text: &str| {
        let start = text.find("fn verify_signature(").expect("verify_signature");
        let len = text[start..].find("\n}\n").expect("end of function") + 2;
        text[start..start + len].to_owned()
    };
    assert_eq!(
        function(include_str!("../../docs/routing.md")),
        function(include_str!("targets.rs")),
        "docs/routing.md and tests/api/targets.rs verify signatures differently"
    );
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn event(id: &str, session: Option<&str>) -> StoredEvent {
    let mut e = fixtures::event(id)
        .user("u-1")
        .kind("item_added")
        .at("2026-11-27T06:00:00.123Z")
        .metadata(json!({"productId": "p-9", "cartValue": 12.5, "note": "é \"quoted\""}))
        .received_after(1333)
        .via(Source::Ws);
    if let Some(s) = session {
        e = e.session(s);
    }
    e.stored()
}

fn events(n: usize) -> Vec<StoredEvent> {
    (0..n)
        .map(|i| event(&format!("evt-{i}"), (i % 2 == 0).then_some("sess-1")))
        .collect()
}

pub(crate) struct Recorded {
    /// The client's address: the same for requests on one pooled connection.
    pub peer: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
pub(crate) struct ReceiverState {
    pub requests: Mutex<Vec<Recorded>>,
    pub status: AtomicU16,
    pub delay_ms: AtomicU64,
}

/// A webhook receiver on 127.0.0.1:0 that records every request and answers `status` (after
/// `delay_ms`), with a short text body and, for 3xx, a `Location` back to itself.
pub(crate) struct Receiver {
    pub url: String,
    pub state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start(status: u16) -> Self {
        let state = Arc::new(ReceiverState::default());
        state.status.store(status, Ordering::SeqCst);
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
        let app = Route::new()
            .at("/hook", post(record))
            .data(Arc::clone(&state));
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        Self {
            url: format!("http://{addr}/hook"),
            state,
        }
    }

    pub fn requests(&self) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
        self.state.requests.lock().unwrap()
    }

    /// The event ids in every request received from index `from` on (webhook bodies).
    pub fn event_ids(&self, from: usize) -> Vec<String> {
        self.requests()[from..]
            .iter()
            .flat_map(|r| {
                let body = r.json();
                let events = body["events"].as_array().cloned().unwrap_or_default();
                events
                    .into_iter()
                    .map(|e| e["eventId"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

#[handler]
async fn record(req: &Request, body: Body, state: Data<&Arc<ReceiverState>>) -> Response {
    let body = body.into_vec().await.unwrap();
    state.requests.lock().unwrap().push(Recorded {
        peer: req.remote_addr().to_string(),
        headers: req.headers().clone(),
        body,
    });
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        // A slow receiver on purpose: the webhook target's timeout is under test.
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap();
    Response::builder()
        .status(status)
        .header("location", "/hook")
        .body(format!("receiver says {}\nsee logs", status.as_u16()))
}

fn webhook(url: &str, configure: impl FnOnce(&mut WebhookConfig)) -> WebhookTarget {
    let mut config = WebhookConfig::new(url);
    configure(&mut config);
    WebhookTarget::new(config, Arc::new(SystemClock)).unwrap()
}

async fn deliver(target: &dyn RouteTarget, events: &[StoredEvent]) -> Result<(), DeliveryError> {
    tokio::time::timeout(PATIENCE, target.deliver(events))
        .await
        .expect("deliver hung")
}

#[tokio::test]
async fn a_batch_is_one_signed_request_a_receiver_can_verify() {
    let receiver = Receiver::start(204).await;
    let target = webhook(&receiver.url, |c| {
        c.secret = Some("whsec_hunter2".into());
        c.headers
            .insert("Authorization".into(), "Bearer tok".into());
    });
    let batch = events(3);

    deliver(&target, &batch).await.unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-cartstream-event-count"), Some("3"));
    assert_eq!(r.header("authorization"), Some("Bearer tok"));
    let expected: Vec<Value> = batch.iter().map(event_json).collect();
    assert_eq!(r.json(), json!({ "events": expected }));

    let sig = r.header("x-cartstream-signature").expect("signed");
    assert!(sig.starts_with("t="), "{sig}");
    assert!(verify_signature(b"whsec_hunter2", sig, &r.body, now()));
    // What the check is for: another secret, a changed body, an old timestamp all fail.
    assert!(!verify_signature(b"other", sig, &r.body, now()));
    let mut tampered = r.body.clone();
    tampered[12] ^= 1;
    assert!(!verify_signature(b"whsec_hunter2", sig, &tampered, now()));
    assert!(!verify_signature(
        b"whsec_hunter2",
        sig,
        &r.body,
        now() + 301
    ));
}

#[tokio::test]
async fn the_signature_is_dated_by_the_targets_clock() {
    let receiver = Receiver::start(204).await;
    let mut clock = MockClock::new();
    clock
        .expect_now()
        .returning(|| "2026-01-02T03:04:05.678Z".parse().unwrap());
    let mut config = WebhookConfig::new(&receiver.url);
    config.secret = Some("whsec_hunter2".into());
    let target = WebhookTarget::new(config, Arc::new(clock)).unwrap();

    deliver(&target, &events(1)).await.unwrap();

    let requests = receiver.requests();
    let sig = requests[0]
        .header("x-cartstream-signature")
        .expect("signed");
    assert!(sig.starts_with("t=1767323045,"), "{sig}");
    assert!(verify_signature(
        b"whsec_hunter2",
        sig,
        &requests[0].body,
        1_767_323_045
    ));
}

#[tokio::test]
async fn without_a_secret_there_is_no_signature_header() {
    let receiver = Receiver::start(200).await;
    deliver(&webhook(&receiver.url, |_| {}), &events(1))
        .await
        .unwrap();
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header("x-cartstream-signature"), None);
    assert_eq!(requests[0].header("x-cartstream-event-count"), Some("1"));
}

#[tokio::test]
async fn credentials_in_the_url_are_sent_as_basic_auth() {
    let receiver = Receiver::start(200).await;
    let url = receiver.url.replace("http://", "http://cart:pa%20ss@");
    let target = webhook(&url, |_| {});
    deliver(&target, &events(1)).await.unwrap();
    assert_eq!(
        receiver.requests()[0].header("authorization"),
        // base64("cart:pa ss")
        Some("Basic Y2FydDpwYSBzcw==")
    );
    assert!(
        !target.describe().contains("cart:"),
        "{}",
        target.describe()
    );
}

#[tokio::test]
async fn unbatched_sends_one_signed_request_per_event_in_order() {
    let receiver = Receiver::start(200).await;
    let target = webhook(&receiver.url, |c| {
        c.batch = false;
        c.secret = Some("s".into());
    });
    let batch = events(3);

    deliver(&target, &batch).await.unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests.iter().all(|r| r.peer == requests[0].peer),
        "one pooled connection"
    );
    for (r, e) in requests.iter().zip(&batch) {
        assert_eq!(r.json(), event_json(e));
        assert_eq!(r.header("x-cartstream-event-count"), Some("1"));
        let sig = r.header("x-cartstream-signature").unwrap();
        assert!(verify_signature(b"s", sig, &r.body, now()));
    }
}

#[tokio::test]
async fn unbatched_stops_at_the_first_refusal() {
    let receiver = Receiver::start(503).await;
    let target = webhook(&receiver.url, |c| c.batch = false);
    let err = deliver(&target, &events(3)).await.unwrap_err();
    assert!(err.retryable, "{err:?}");
    assert_eq!(receiver.requests().len(), 1);
}

#[tokio::test]
async fn statuses_map_to_retryable_or_permanent() {
    let cases = [
        (500, true),
        (503, true),
        (429, true),
        (408, true),
        (400, false),
        (401, false),
        (404, false),
        (422, false),
        (302, false),
    ];
    let mut outcomes = HashMap::new();
    for (status, _) in cases {
        let receiver = Receiver::start(status).await;
        let target = webhook(&receiver.url, |c| c.secret = Some("sig-hunter2".into()));
        let err = deliver(&target, &events(2)).await.unwrap_err();
        assert!(err.message.contains(&status.to_string()), "{err:?}");
        assert!(
            err.message
                .contains(&format!("receiver says {status} see logs")),
            "{err:?}"
        );
        assert!(!err.message.contains("hunter2"), "{err:?}");
        // Redirects are reported, not followed.
        assert_eq!(receiver.requests().len(), 1, "{status}");
        outcomes.insert(status, err.retryable);
    }
    for (status, retryable) in cases {
        assert_eq!(outcomes[&status], retryable, "{status}");
    }
}

#[tokio::test]
async fn a_receiver_that_is_down_is_retryable_and_credentials_stay_hidden() {
    let target = webhook(
        "http://user:pw-hunter2@127.0.0.1:1/hook?token=qs-hunter2",
        |c| {
            c.secret = Some("sig-hunter2".into());
        },
    );
    let err = deliver(&target, &events(1)).await.unwrap_err();
    assert!(err.retryable, "{err:?}");
    assert!(err.message.contains("cannot connect"), "{err:?}");
    assert!(err.message.contains("http://127.0.0.1:1/hook"), "{err:?}");
    assert!(!err.message.contains("hunter2"), "{err:?}");
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_retryable() {
    let receiver = Receiver::start(200).await;
    receiver.state.delay_ms.store(10_000, Ordering::SeqCst);
    let target = webhook(&receiver.url, |c| c.timeout = Duration::from_millis(300));
    let err = deliver(&target, &events(1)).await.unwrap_err();
    assert!(err.retryable, "{err:?}");
    assert!(err.message.contains("timeout"), "{err:?}");
}

/// A stream key no other test uses, deleted when the guard goes (even on panic).
pub(crate) struct Stream {
    pub url: String,
    pub key: String,
}

impl Stream {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            key: format!("cartstream-test:{}:stream", random_suffix()),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Drop is sync and maybe panicking: a blocking connection, best effort.
        let _ = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .and_then(|mut c| redis::cmd("DEL").arg(&self.key).query::<i64>(&mut c));
    }
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

pub(crate) type Entry = (String, Vec<(String, String)>);

pub(crate) async fn entries(url: &str, key: &str) -> Vec<Entry> {
    let raw: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut redis_conn(url).await)
        .await
        .unwrap();
    raw.into_iter()
        .map(|(id, flat)| {
            let pairs = flat
                .chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect();
            (id, pairs)
        })
        .collect()
}

#[tokio::test]
async fn stream_entries_carry_the_documented_fields_in_order() {
    let Some(url) = redis_url_or_skip().await else {
        return;
    };
    let stream = Stream::new(&url);
    let target =
        RedisStreamTarget::new(RedisStreamConfig::new(stream.key.clone()), Some(&url)).unwrap();
    let batch = events(3);

    deliver(&target, &batch).await.unwrap();

    let got = entries(&url, &stream.key).await;
    assert_eq!(got.len(), 3);
    for (i, ((_, fields), e)) in got.iter().zip(&batch).enumerate() {
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        let mut expected_names = vec!["eventId", "userId"];
        if i % 2 == 0 {
            expected_names.push("sessionId");
        }
        expected_names.extend(["eventType", "timestamp", "metadata", "receivedAt"]);
        assert_eq!(names, expected_names);
        let field = |n: &str| fields.iter().find(|(k, _)| k == n).unwrap().1.as_str();
        assert_eq!(field("eventId"), e.event.event_id().as_str());
        assert_eq!(field("userId"), "u-1");
        assert_eq!(field("eventType"), "item_added");
        assert_eq!(field("timestamp"), "2026-11-27T06:00:00.123Z");
        assert_eq!(field("receivedAt"), "2026-11-27T06:00:01.456Z");
        let metadata: Value = serde_json::from_str(field("metadata")).unwrap();
        assert_eq!(metadata, event_json(e)["metadata"]);
        assert!(!field("metadata").contains(": "), "compact JSON");
    }
    assert_eq!(
        target.describe(),
        format!("redis_stream {url} stream={}", stream.key)
    );
}

#[tokio::test]
async fn maxlen_trims_the_stream_approximately() {
    let Some(url) = redis_url_or_skip().await else {
        return;
    };
    let stream = Stream::new(&url);
    let mut config = RedisStreamConfig::new(stream.key.clone());
    config.maxlen = 10;
    let target = RedisStreamTarget::new(config, Some(&url)).unwrap();
    let all: Vec<StoredEvent> = (0..600).map(|i| event(&format!("e{i}"), None)).collect();

    for chunk in all.chunks(100) {
        deliver(&target, chunk).await.unwrap();
    }

    let len: usize = redis::cmd("XLEN")
        .arg(&stream.key)
        .query_async(&mut redis_conn(&url).await)
        .await
        .unwrap();
    // `MAXLEN ~` trims only whole radix-tree nodes (100 entries by default): at least the
    // maximum stays, and far fewer than were added.
    assert!((10..600).contains(&len), "XLEN {len}");
    let got = entries(&url, &stream.key).await;
    let newest = &got.last().unwrap().1;
    assert_eq!(newest[0], ("eventId".to_owned(), "e599".to_owned()));
}

#[tokio::test]
async fn a_delivery_is_one_round_trip_whatever_its_size() {
    let Some(url) = redis_url_or_skip().await else {
        return;
    };
    let proxy = FaultProxy::start(host_port(&url)).await;
    let stream = Stream::new(&url);
    let mut config = RedisStreamConfig::new(stream.key.clone());
    config.url = Some(proxy.url("redis"));
    config.timeout = Duration::from_secs(30);
    let target = RedisStreamTarget::new(config, None).unwrap();
    // Connect (a few round trips of its own) before the path gets slow.
    deliver(&target, &events(1)).await.unwrap();

    // 1 s per round trip: one pipeline takes about that, an XADD per event 20 s.
    proxy.slow(Duration::from_millis(500));
    tokio::time::timeout(Duration::from_secs(8), target.deliver(&events(20)))
        .await
        .expect("20 events in one round trip, not one per event")
        .unwrap();

    assert_eq!(entries(&url, &stream.key).await.len(), 21);
}

#[tokio::test]
async fn a_redis_that_is_down_is_retryable_quickly_without_the_password() {
    let mut config = RedisStreamConfig::new("cart-events");
    config.url = Some(DEAD_REDIS_URL.to_owned());
    // Built while Redis is down: no network at construction.
    let target = RedisStreamTarget::new(config, None).unwrap();

    for _ in 0..2 {
        let err = deliver(&target, &events(2)).await.unwrap_err();
        assert!(err.retryable, "{err:?}");
        assert!(err.message.contains("127.0.0.1:1"), "{err:?}");
        assert!(!err.message.contains("hunter2"), "{err:?}");
    }
}
