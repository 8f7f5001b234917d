use super::*;
use crate::domain::{fixtures, StoredEvent};
use crate::ports::SystemClock;
use serde_json::json;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Parses `[routes.target]` the way the config file embeds it.
fn parse(toml_text: &str) -> Result<TargetConfig, String> {
    #[derive(Deserialize)]
    struct Route {
        target: TargetConfig,
    }
    #[derive(Deserialize)]
    struct File {
        routes: Route,
    }
    toml::from_str::<File>(toml_text)
        .map(|f| f.routes.target)
        .map_err(|e| e.to_string())
}

#[test]
fn a_webhook_config_takes_every_key() {
    let c = parse(
        r#"
        [routes.target]
        kind = "webhook"
        url = "https://hooks.example.com/cart"
        secret = "whsec_abc"
        timeout = "2s 500ms"
        batch = false
        headers = { Authorization = "Bearer t", "X-Team" = "carts" }
        "#,
    )
    .unwrap();
    let TargetConfig::Webhook(w) = c else {
        panic!("{c:?}")
    };
    assert_eq!(w.url, "https://hooks.example.com/cart");
    assert_eq!(w.secret.as_deref(), Some("whsec_abc"));
    assert_eq!(w.timeout, Duration::from_millis(2500));
    assert!(!w.batch);
    assert_eq!(w.headers["Authorization"], "Bearer t");
    assert_eq!(w.headers["X-Team"], "carts");
}

#[test]
fn a_webhook_config_has_defaults() {
    let c = parse("[routes.target]\nkind = \"webhook\"\nurl = \"http://h/x\"\n").unwrap();
    let TargetConfig::Webhook(w) = c else {
        panic!("{c:?}")
    };
    assert_eq!(w.secret, None);
    assert!(w.headers.is_empty());
    assert_eq!(w.timeout, Duration::from_secs(10));
    assert!(w.batch);
}

#[test]
fn a_redis_stream_config_has_defaults_and_overrides() {
    let c = parse("[routes.target]\nkind = \"redis_stream\"\nstream = \"cart-events\"\n").unwrap();
    let TargetConfig::RedisStream(r) = c else {
        panic!("{c:?}")
    };
    assert_eq!(r.url, None);
    assert_eq!(r.stream, "cart-events");
    assert_eq!(r.maxlen, 100_000);
    assert_eq!(r.timeout, Duration::from_secs(2));
    let c = parse(
        r#"
        [routes.target]
        kind = "redis_stream"
        url = "redis://10.0.0.5:6379/1"
        stream = "s"
        maxlen = 5000
        pool_size = 2
        timeout = "750ms"
        "#,
    )
    .unwrap();
    let TargetConfig::RedisStream(r) = c else {
        panic!("{c:?}")
    };
    assert_eq!(r.url.as_deref(), Some("redis://10.0.0.5:6379/1"));
    assert_eq!((r.maxlen, r.pool_size), (5000, 2));
    assert_eq!(r.timeout, Duration::from_millis(750));
}

#[test]
fn a_log_config_needs_only_its_kind() {
    let c = parse("[routes.target]\nkind = \"log\"\n").unwrap();
    assert!(matches!(
        c,
        TargetConfig::Log(LogConfig {
            level: LogLevel::Info
        })
    ));
    let c = parse("[routes.target]\nkind = \"log\"\nlevel = \"debug\"\n").unwrap();
    assert!(matches!(
        c,
        TargetConfig::Log(LogConfig {
            level: LogLevel::Debug
        })
    ));
}

#[test]
fn config_mistakes_are_rejected_by_name() {
    let cases = [
        (
            "kind = \"webhook\"\nurl = \"http://h\"\nsecrt = \"x\"",
            "secrt",
        ),
        (
            "kind = \"webhook\"\nurl = \"http://h\"\ntimeout = \"soon\"",
            "timeout",
        ),
        ("kind = \"webhook\"\nsecret = \"x\"", "url"),
        ("kind = \"redis_stream\"", "stream"),
        (
            "kind = \"redis_stream\"\nstream = \"s\"\nmax_len = 1",
            "max_len",
        ),
        ("kind = \"log\"\nformat = \"json\"", "format"),
        ("kind = \"kafka\"", "kafka"),
        ("url = \"http://h\"", "kind"),
    ];
    for (body, named) in cases {
        let err = parse(&format!("[routes.target]\n{body}\n")).unwrap_err();
        assert!(err.contains(named), "{body}: {err}");
    }
}

/// Inside a runtime, as at startup: the Redis pool needs one, but not a Redis.
#[tokio::test]
async fn build_target_builds_each_kind_offline() {
    let build = |text: &str, default: Option<&str>| {
        build_target(&parse(text).unwrap(), default, Arc::new(SystemClock)).map(|t| t.describe())
    };
    assert_eq!(
        build(
            "[routes.target]\nkind = \"webhook\"\nurl = \"https://u:p@h.example/x?k=v\"\n",
            None
        )
        .unwrap(),
        "webhook https://h.example/x"
    );
    assert_eq!(
        build(
            "[routes.target]\nkind = \"redis_stream\"\nstream = \"cart-events\"\n",
            Some("redis://127.0.0.1:1")
        )
        .unwrap(),
        "redis_stream redis://127.0.0.1:1 stream=cart-events"
    );
    assert!(build(
        "[routes.target]\nkind = \"redis_stream\"\nstream = \"cart-events\"\n",
        None
    )
    .is_err());
    assert_eq!(
        build("[routes.target]\nkind = \"log\"\n", None).unwrap(),
        "log"
    );
    assert!(build(
        "[routes.target]\nkind = \"webhook\"\nurl = \"http://h\"\nheaders = { \"a b\" = \"v\" }\n",
        None
    )
    .is_err());
}

fn event(id: &str, session: Option<&str>) -> StoredEvent {
    let mut e = fixtures::event(id)
        .user("u-1")
        .kind("item_added")
        .at("2026-11-27T06:00:00.123Z")
        .metadata(json!({"productId": "p-9", "cartValue": 12.5}))
        .received_after(1333);
    if let Some(s) = session {
        e = e.session(s);
    }
    e.stored()
}

#[test]
fn stream_fields_flatten_the_event_json() {
    let fields = redis_stream::stream_fields(&event("e-1", Some("s-1")));
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "eventId",
            "userId",
            "sessionId",
            "eventType",
            "timestamp",
            "metadata",
            "receivedAt"
        ]
    );
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(get("eventId"), "e-1");
    assert_eq!(get("timestamp"), "2026-11-27T06:00:00.123Z");
    assert_eq!(get("receivedAt"), "2026-11-27T06:00:01.456Z");
    assert_eq!(get("metadata"), r#"{"productId":"p-9","cartValue":12.5}"#);
    let without = redis_stream::stream_fields(&event("e-2", None));
    assert!(without.iter().all(|(n, _)| n != "sessionId"));
}

/// Collects everything a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_log_target_logs_each_event_json_at_info() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let target = LogTarget::new(LogConfig::default());
    target
        .deliver(&[event("e-1", None), event("e-2", None)])
        .await
        .unwrap();
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("INFO"), "{text}");
    assert!(lines[0].contains(log::LOG_TARGET), "{text}");
    assert!(lines[0].contains(r#""eventId":"e-1""#), "{text}");
    assert!(lines[1].contains(r#""eventId":"e-2""#), "{text}");
    assert!(target.deliver(&[]).await.is_ok());
    assert_eq!(target.describe(), "log");
}
