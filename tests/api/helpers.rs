//! A real server on port 0 per test, with its own data directory, driven over real HTTP and
//! WebSocket connections.

use cartstream::adapters::outbound::embedded::EmbeddedStore;
use cartstream::app::config::Settings;
use cartstream::app::startup::{Application, Ports};
use cartstream::ports::SystemClock;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for any one reply before failing.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub data_dir: PathBuf,
    _tmp: Option<Arc<tempfile::TempDir>>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Settings for a test server: loopback, port 0, quiet.
pub fn test_settings(data_dir: &Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        shutdown_timeout: Duration::from_secs(10),
        // Tests poll reads in tight loops; the read limit has tests of its own.
        read_rate_limit_per_second: 0,
        ..Settings::default()
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Settings)) -> Self {
        let tmp = Arc::new(tempfile::tempdir().unwrap());
        let mut settings = test_settings(tmp.path());
        configure(&mut settings);
        let app = Application::build(settings.clone())
            .await
            .expect("server builds");
        Self::start(app, settings.data_dir, Some(tmp))
    }

    /// A server on `data_dir`, which outlives it (for restart tests).
    pub async fn spawn_in(data_dir: &Path) -> Self {
        let settings = test_settings(data_dir);
        let app = Application::build(settings).await.expect("server builds");
        Self::start(app, data_dir.to_path_buf(), None)
    }

    /// A server on `data_dir` (which outlives it) with settings of its own.
    pub async fn spawn_in_with(data_dir: &Path, configure: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = test_settings(data_dir);
        configure(&mut settings);
        let app = Application::build(settings).await.expect("server builds");
        Self::start(app, data_dir.to_path_buf(), None)
    }

    /// A server over custom ports (e.g. a failing store).
    pub async fn spawn_with_ports(
        configure: impl FnOnce(&mut Settings),
        ports: impl FnOnce(&Path) -> Ports,
    ) -> Self {
        let tmp = Arc::new(tempfile::tempdir().unwrap());
        let mut settings = test_settings(tmp.path());
        configure(&mut settings);
        let ports = ports(tmp.path());
        let app = Application::build_with(settings.clone(), ports)
            .await
            .expect("server builds");
        Self::start(app, settings.data_dir, Some(tmp))
    }

    fn start(app: Application, data_dir: PathBuf, tmp: Option<Arc<tempfile::TempDir>>) -> Self {
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            http: reqwest::Client::new(),
            data_dir,
            _tmp: tmp,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/events/stream", self.addr)
    }

    pub async fn post_event(&self, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url("/events"))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_batch(&self, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url("/events/batch"))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// The value of the `/metrics` series `series` (its name, with its labels as the server
    /// writes them, e.g. `cartstream_x_total{store="embedded"}`), or `None` when not listed.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get_text("/metrics").await;
        metric_in(&text, series)
    }

    /// Opens a WebSocket and returns it with its `connection_ack`.
    pub async fn ws(&self) -> (Ws, Value) {
        let (mut ws, _) = tokio_tungstenite::connect_async(self.ws_url())
            .await
            .expect("WebSocket connects");
        let ack = recv_json(&mut ws).await;
        (ws, ack)
    }

    /// Asks the server to shut down and waits until it has.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.trigger_stop();
        self.join().await
    }

    pub fn trigger_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn join(&mut self) -> std::io::Result<()> {
        let handle = self.handle.take().expect("joined once");
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("server stops in time")
            .expect("server task does not panic")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.trigger_stop();
    }
}

/// An embedded store's ports, for tests that replace one side.
pub fn embedded_ports(dir: &Path) -> Ports {
    let store = EmbeddedStore::open(dir).unwrap();
    Ports {
        store: Arc::new(store.clone()),
        dedup: Arc::new(store.clone()),
        clock: Arc::new(SystemClock),
        store_kind: "embedded",
        dedup_kind: "embedded",
        forwarding: None,
        feed: Arc::new(store.clone()),
        retired_feed: None,
        retention: None,
        routes: Vec::new(),
    }
}

pub async fn send_json(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next text message as JSON, skipping pings.
pub async fn recv_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(REPLY_TIMEOUT, ws.next())
            .await
            .expect("a reply in time")
            .expect("the connection is open")
            .expect("a valid frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("replies are JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text reply, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame and returns its code.
pub async fn recv_close_code(ws: &mut Ws) -> u16 {
    loop {
        let msg = tokio::time::timeout(REPLY_TIMEOUT, ws.next())
            .await
            .expect("a close in time");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) => return 1005,
            Some(Ok(Message::Text(t))) => panic!("unexpected reply before close: {t}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

/// How often [`poll_until`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Tests wait on what they can observe (an endpoint, a metric, the store), never for a fixed
/// time: probes until `done` holds for what `probe` returns or `within` has passed, and returns
/// the last probe either way, so the caller's own assertion says what was expected.
pub async fn poll_until<T, F>(
    within: Duration,
    mut probe: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T
where
    F: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = probe().await;
        if done(&got) || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Waits until `ok` holds; fails naming `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let held = poll_until(within, || std::future::ready(ok()), |held| *held).await;
    assert!(held, "timed out waiting for {what}");
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A valid `item_added` event with the given id.
pub fn item_added(event_id: &str) -> Value {
    serde_json::json!({
        "eventId": event_id,
        "userId": "user-1",
        "sessionId": "sess-1",
        "eventType": "item_added",
        "timestamp": now_rfc3339(),
        "metadata": {"productId": "sku-1", "quantity": 1, "price": 29.99, "currency": "USD"}
    })
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The value of the series `series` in a `/metrics` text, or `None` when not listed.
pub fn metric_in(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}
