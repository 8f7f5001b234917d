//! Facing the internet: keys and scopes, limits that hold across connections and channels,
//! trusted proxies, CORS and the WebSocket `Origin` check, the beacon endpoint, body limits on
//! every route, and keys kept out of logs.

use crate::helpers::*;
use cartstream::app::access::Scope;
use cartstream::app::config::{KeySettings, Settings};
use cartstream::app::startup::Application;
use futures_util::SinkExt;
use serde_json::{json, Value};
use sha2::Digest;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn key(name: &str, secret: &str, scopes: &[Scope]) -> KeySettings {
    KeySettings {
        name: name.into(),
        key: Some(secret.into()),
        sha256: None,
        scopes: scopes.to_vec(),
        origins: Vec::new(),
        rate_limit_per_second: None,
        rate_limit_burst: None,
        rate_limit_total_per_second: None,
        rate_limit_total_burst: None,
    }
}

fn assert_error(body: &Value, code: &str, retryable: bool) {
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["retryable"], retryable, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut r = app.http.request(method, app.url(path));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn batch(n: usize) -> Value {
    json!({"events": (0..n).map(|_| item_added(&unique("b"))).collect::<Vec<_>>()})
}

/// Credentials that fail are never passed over for others: an `Authorization` header of
/// another scheme beside a valid `X-API-Key` is refused, not ignored.
#[tokio::test]
async fn an_authorization_header_that_is_no_bearer_key_is_refused() {
    let app = TestApp::spawn_with(|s| s.api_keys = vec!["ingest-1".into()]).await;
    let post = |auth: Option<&'static str>| {
        let mut r = app
            .http
            .post(app.url("/events"))
            .header("X-API-Key", "ingest-1")
            .json(&item_added(&unique("a")));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 202);
    for auth in ["Basic aW5nZXN0LTE6", "ingest-1", "Bearer nope"] {
        let r = post(Some(auth)).await.unwrap();
        assert_eq!(r.status(), 401, "{auth}");
        assert_error(&r.json().await.unwrap(), "unauthorized", false);
    }
}

#[tokio::test]
async fn each_scope_opens_only_its_endpoints() {
    let digest = hex::encode(sha2::Sha256::digest(b"hashed-reader"));
    let mut hashed = key("hashed", "unused", &[Scope::Read]);
    hashed.key = None;
    hashed.sha256 = Some(digest);
    let app = TestApp::spawn_with(|s| {
        s.api_keys = vec!["ingest-1".into()];
        s.read_keys = vec!["read-1".into()];
        s.admin_key = Some("admin-1".into());
        s.keys = vec![hashed, key("both", "both-1", &[Scope::Ingest, Scope::Read])];
    })
    .await;
    let event = || item_added(&unique("s"));
    use reqwest::Method as M;

    // No key, or an unknown one: 401.
    for k in [None, Some("nope")] {
        let (status, body) = send(&app, M::POST, "/events", k, Some(&event())).await;
        assert_eq!(status, 401, "{body}");
        assert_error(&body, "unauthorized", false);
        assert_eq!(send(&app, M::GET, "/events", k, None).await.0, 401);
        assert_eq!(send(&app, M::GET, "/routes", k, None).await.0, 401);
    }
    // ingest: sends, never reads.
    assert_eq!(
        send(&app, M::POST, "/events", Some("ingest-1"), Some(&event()))
            .await
            .0,
        202
    );
    let (status, body) = send(&app, M::GET, "/events", Some("ingest-1"), None).await;
    assert_eq!(status, 403);
    assert_error(&body, "forbidden", false);
    assert_eq!(
        send(&app, M::GET, "/routes", Some("ingest-1"), None)
            .await
            .0,
        403
    );
    // read (in clear or as its SHA-256): reads, never sends.
    for reader in ["read-1", "hashed-reader"] {
        assert_eq!(
            send(&app, M::GET, "/events", Some(reader), None).await.0,
            200
        );
        let (status, body) = send(&app, M::POST, "/events", Some(reader), Some(&event())).await;
        assert_eq!(status, 403, "{body}");
        assert_error(&body, "forbidden", false);
        assert_eq!(
            send(&app, M::GET, "/dead-letters", Some(reader), None)
                .await
                .0,
            403
        );
    }
    // admin: operations and reads.
    assert_eq!(
        send(&app, M::GET, "/events", Some("admin-1"), None).await.0,
        200
    );
    assert_eq!(
        send(&app, M::GET, "/routes", Some("admin-1"), None).await.0,
        200
    );
    assert_eq!(
        send(&app, M::POST, "/events", Some("admin-1"), Some(&event()))
            .await
            .0,
        403
    );
    // A key of the file with two scopes.
    assert_eq!(
        send(&app, M::POST, "/events", Some("both-1"), Some(&event()))
            .await
            .0,
        202
    );
    assert_eq!(
        send(&app, M::GET, "/events", Some("both-1"), None).await.0,
        200
    );
    // Operations stay open.
    for open in ["/health", "/metrics", "/openapi.json", "/asyncapi.json"] {
        assert_eq!(app.get_text(open).await.0, 200, "{open}");
    }
    // The WebSocket needs an ingest key too.
    let refused = tokio_tungstenite::connect_async(format!("{}?apiKey=read-1", app.ws_url())).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}?apiKey=ingest-1", app.ws_url()))
        .await
        .unwrap();
    assert_eq!(recv_json(&mut ws).await["type"], "connection_ack");
    // The query string carries keys only where headers cannot: never for reads.
    assert_eq!(app.get_json("/events?apiKey=read-1").await.0, 401);
}

#[tokio::test]
async fn without_ingest_keys_sending_stays_open_but_reading_does_not() {
    let app = TestApp::spawn_with(|s| s.admin_key = Some("admin-1".into())).await;
    assert_eq!(app.post_event(&item_added(&unique("o"))).await.0, 202);
    assert_eq!(app.get_json("/events").await.0, 401);
    assert_eq!(app.get_json("/routes").await.0, 401);
}

#[tokio::test]
async fn one_bucket_per_key_and_address_shared_by_every_connection_and_both_channels() {
    let app = TestApp::spawn_with(|s| {
        s.api_keys = vec!["k".into()];
        s.rate_limit_per_second = 2;
        s.rate_limit_burst = 20;
        s.max_batch_events = 10;
    })
    .await;
    // Four connections, 2 batches of 10 each: 80 events against a burst of 20.
    let mut sockets = Vec::new();
    for _ in 0..4 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}?apiKey=k", app.ws_url()))
            .await
            .unwrap();
        recv_json(&mut ws).await;
        sockets.push(ws);
    }
    let mut accepted = 0;
    let mut limited = 0;
    for round in 0..2 {
        for ws in &mut sockets {
            let events: Vec<Value> = (0..10).map(|_| item_added(&unique("w"))).collect();
            send_json(
                ws,
                &json!({"type":"cart_event_batch","requestId":format!("r{round}"),"data":events}),
            )
            .await;
            let reply = recv_json(ws).await;
            match reply["type"].as_str() {
                Some("batch_ack") => accepted += reply["accepted"].as_u64().unwrap(),
                Some("error") => {
                    assert_eq!(reply["code"], "rate_limited", "{reply}");
                    assert!(reply["retryAfterMs"].as_u64().unwrap() > 0);
                    limited += 1;
                }
                _ => panic!("{reply}"),
            }
        }
    }
    // The burst (20) and what trickled in meanwhile (2/s), not 80.
    assert!((20..=30).contains(&accepted), "accepted {accepted}");
    assert!(limited >= 5, "limited {limited}");
    // HTTP from the same key and address draws from the same bucket.
    let r = app
        .http
        .post(app.url("/events/batch"))
        .bearer_auth("k")
        .json(&batch(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn a_key_total_caps_every_address_together() {
    let mut shop = key("shop", "pk", &[Scope::Ingest]);
    shop.rate_limit_total_per_second = Some(1);
    shop.rate_limit_total_burst = Some(10);
    let app = TestApp::spawn_with(|s| {
        s.keys = vec![shop];
        s.trusted_proxies = vec!["127.0.0.1".into()];
        s.rate_limit_per_second = 100;
        s.rate_limit_burst = 100;
        s.max_batch_events = 10;
    })
    .await;
    let post = |ip: &'static str| {
        app.http
            .post(app.url("/events/batch"))
            .bearer_auth("pk")
            .header("X-Forwarded-For", ip)
            .json(&batch(6))
            .send()
    };
    assert_eq!(post("198.51.100.1").await.unwrap().status().as_u16(), 200);
    // Another address has its own bucket (100) but shares the key's total (10).
    assert_eq!(post("198.51.100.2").await.unwrap().status().as_u16(), 429);
}

/// A server whose bucket per address holds one batch of two, with the local proxy trusted or not.
async fn tight_limit(behind_proxy: bool) -> TestApp {
    TestApp::spawn_with(|s| {
        if behind_proxy {
            s.trusted_proxies = vec!["127.0.0.0/8".into()];
        }
        s.rate_limit_per_second = 1;
        s.rate_limit_burst = 2;
        s.max_batch_events = 2;
    })
    .await
}

/// Posts a batch of two as if through a proxy that says it came from `xff`.
async fn post_from(app: &TestApp, xff: &str) -> reqwest::Response {
    app.http
        .post(app.url("/events/batch"))
        .header("X-Forwarded-For", xff)
        .json(&batch(2))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_and_nobody_else_can() {
    let app = tight_limit(true).await;
    // Two clients behind the proxy: a bucket each.
    assert_eq!(post_from(&app, "203.0.113.1").await.status().as_u16(), 200);
    assert_eq!(post_from(&app, "203.0.113.2").await.status().as_u16(), 200);
    assert_eq!(post_from(&app, "203.0.113.1").await.status().as_u16(), 429);
    // A client cannot escape its bucket by writing its own X-Forwarded-For: the proxy appends
    // the real address, and the rightmost untrusted one counts.
    assert_eq!(
        post_from(&app, "1.2.3.4, 203.0.113.2")
            .await
            .status()
            .as_u16(),
        429
    );

    // Without the proxy trusted, the header counts for nothing: one bucket for 127.0.0.1.
    let app = tight_limit(false).await;
    assert_eq!(post_from(&app, "203.0.113.1").await.status().as_u16(), 200);
    assert_eq!(post_from(&app, "203.0.113.2").await.status().as_u16(), 429);
}

#[tokio::test]
async fn an_ipv6_client_is_limited_by_its_64_not_by_each_address() {
    let app = tight_limit(true).await;
    assert_eq!(
        post_from(&app, "2001:db8:1:2::1").await.status().as_u16(),
        200
    );
    // A host with a /64 has 2^64 addresses to pick from: any of them draws from one bucket.
    let r = post_from(&app, "2001:db8:1:2:9f3e:11:22:33").await;
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        post_from(&app, "2001:db8:1:3::1").await.status().as_u16(),
        200
    );
}

#[tokio::test]
async fn a_burst_below_a_full_batch_is_refused_at_startup_naming_both_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = Settings {
        rate_limit_per_second: 50,
        rate_limit_burst: 50,
        ..test_settings(tmp.path())
    };
    let err = Application::build(settings)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("CARTSTREAM_RATE_LIMIT_BURST"), "{err}");
    assert!(err.contains("CARTSTREAM_MAX_BATCH_EVENTS"), "{err}");
}

#[tokio::test]
async fn a_configured_burst_is_exact() {
    let app = TestApp::spawn_with(|s| {
        s.rate_limit_per_second = 1;
        s.rate_limit_burst = 50;
        s.max_batch_events = 50;
    })
    .await;
    let mut codes = Vec::new();
    for _ in 0..60 {
        codes.push(app.post_event(&item_added(&unique("x"))).await.0);
    }
    let accepted = codes.iter().filter(|&&c| c == 202).count();
    assert!(
        (50..=52).contains(&accepted),
        "{accepted} accepted: {codes:?}"
    );
    assert!(codes.contains(&429));
}

#[tokio::test]
async fn failed_authentications_are_limited_per_address() {
    let app = TestApp::spawn_with(|s| {
        s.api_keys = vec!["good".into()];
        s.auth_failures_per_minute = 3;
    })
    .await;
    for _ in 0..3 {
        let (status, _) = send(
            &app,
            reqwest::Method::POST,
            "/events",
            Some("guess"),
            Some(&item_added("a")),
        )
        .await;
        assert_eq!(status, 401);
    }
    // Now even the right key waits: a blocked address is refused before its key is looked at.
    let r = app
        .http
        .post(app.url("/events"))
        .bearer_auth("good")
        .json(&item_added(&unique("g")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert_error(&r.json().await.unwrap(), "rate_limited", true);
    // Open endpoints stay open.
    assert_eq!(app.get_json("/health").await.0, 200);
}

#[tokio::test]
async fn reads_are_rate_limited() {
    let app = TestApp::spawn_with(|s| {
        s.read_rate_limit_per_second = 1;
        s.read_rate_limit_burst = 2;
    })
    .await;
    assert_eq!(app.get_json("/events").await.0, 200);
    assert_eq!(app.get_json("/events").await.0, 200);
    let r = app.http.get(app.url("/events")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_error(&r.json().await.unwrap(), "rate_limited", true);
}

#[tokio::test]
async fn every_route_that_reads_a_body_bounds_it() {
    let app = TestApp::spawn_with(|s| s.admin_key = Some("admin".into())).await;
    let ids: Vec<i64> = (0..1_000_000).collect();
    let huge = json!({ "ids": ids });
    let r = app
        .http
        .post(app.url("/dead-letters/replay"))
        .bearer_auth("admin")
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_error(&r.json().await.unwrap(), "payload_too_large", false);
    // Without a content length (chunked), the limit holds while reading: the answer comes
    // while the client is still sending.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = "POST /dead-letters/replay HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin\r\n\
                Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, " ".repeat(16 * 1024));
    for _ in 0..200 {
        if tcp.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(REPLY_TIMEOUT, tcp.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn cors_lets_allowed_pages_send_and_read_every_answer() {
    let mut shop = key("shop", "pk-shop", &[Scope::Ingest]);
    shop.origins = vec!["https://shop.example".into()];
    let app = TestApp::spawn_with(|s| {
        s.cors_origins = vec!["https://other.example".into()];
        s.keys = vec![shop, key("open", "pk-open", &[Scope::Ingest])];
    })
    .await;
    // The preflight (no key) is answered for every allowed origin.
    for origin in ["https://shop.example", "https://other.example"] {
        let r = app
            .http
            .request(reqwest::Method::OPTIONS, app.url("/events/batch"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204, "{origin}");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], origin);
        assert!(h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST"));
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        assert!(allowed.contains("authorization") && allowed.contains("content-type"));
        assert_eq!(h["access-control-max-age"], "600");
        assert!(!h.contains_key("access-control-allow-credentials"));
    }
    let r = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/events"))
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    let post = |origin: &'static str, key: Option<&'static str>, body: Value| {
        let mut r = app
            .http
            .post(app.url("/events"))
            .header("Origin", origin)
            .json(&body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let r = post(
        "https://shop.example",
        Some("pk-shop"),
        item_added(&unique("c")),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(
        r.headers()["access-control-expose-headers"],
        "Retry-After, Date"
    );
    // Errors carry the headers too, so the page can read why.
    let r = post("https://shop.example", None, item_added("x"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    // A key restricted to its shop's origin cannot be used from another allowed origin...
    let r = post(
        "https://other.example",
        Some("pk-shop"),
        item_added(&unique("c")),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://other.example"
    );
    assert_error(&r.json().await.unwrap(), "forbidden", false);
    // ...and no key from an origin not allowed at all.
    let r = post(
        "https://evil.example",
        Some("pk-open"),
        item_added(&unique("c")),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    // 413 too.
    let big =
        json!({"userId": "u", "eventType": "cart_viewed", "metadata": {"x": "y".repeat(70_000)}});
    let r = post("https://shop.example", Some("pk-shop"), big)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    // No Origin: not a browser, no CORS headers, served.
    let r = app
        .http
        .post(app.url("/events"))
        .bearer_auth("pk-shop")
        .json(&item_added(&unique("c")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn cors_headers_on_429() {
    let app = TestApp::spawn_with(|s| {
        s.cors_origins = vec!["https://shop.example".into()];
        s.rate_limit_per_second = 1;
        s.rate_limit_burst = 1;
        s.max_batch_events = 1;
    })
    .await;
    let mut last = None;
    for _ in 0..3 {
        last = Some(
            app.http
                .post(app.url("/events"))
                .header("Origin", "https://shop.example")
                .json(&item_added(&unique("c")))
                .send()
                .await
                .unwrap(),
        );
    }
    let r = last.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(
        r.headers()["access-control-expose-headers"],
        "Retry-After, Date"
    );
    assert!(r.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn cors_headers_on_503_and_a_beacon_that_cannot_be_recorded() {
    let app = TestApp::spawn_with_ports(
        |s| s.cors_origins = vec!["https://shop.example".into()],
        crate::failing::ports_with_failing_store,
    )
    .await;
    let r = app
        .http
        .post(app.url("/events/beacon"))
        .header("Origin", "https://shop.example")
        .header("Content-Type", "text/plain")
        .body(batch(2).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_error(&r.json().await.unwrap(), "unavailable", true);
}

#[tokio::test]
async fn without_cors_origins_there_are_no_cors_headers() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/events"))
        .header("Origin", "https://shop.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = app
        .http
        .post(app.url("/events"))
        .header("Origin", "https://shop.example")
        .json(&item_added(&unique("c")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn the_websocket_upgrade_checks_the_origin() {
    let app = TestApp::spawn_with(|s| s.cors_origins = vec!["https://shop.example".into()]).await;
    let with_origin = |origin: Option<&str>| {
        let mut req = app.ws_url().into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    let (mut ws, _) = with_origin(Some("https://shop.example")).await.unwrap();
    assert_eq!(recv_json(&mut ws).await["type"], "connection_ack");
    match with_origin(Some("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 403);
            let body: Value = serde_json::from_slice(r.body().as_deref().unwrap()).unwrap();
            assert_error(&body, "forbidden", false);
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // No Origin: not a browser.
    let (mut ws, _) = with_origin(None).await.unwrap();
    assert_eq!(recv_json(&mut ws).await["type"], "connection_ack");
    ws.send(Message::Close(None)).await.unwrap();
}

#[tokio::test]
async fn a_beacon_records_a_text_plain_batch_from_another_origin() {
    let app = TestApp::spawn_with(|s| {
        s.api_keys = vec!["pk".into()];
        s.read_keys = vec!["rk".into()];
        s.cors_origins = vec!["https://shop.example".into()];
    })
    .await;
    let ids = [unique("bc"), unique("bc")];
    let body = json!({"events": [item_added(&ids[0]), item_added(&ids[1])]}).to_string();
    // What navigator.sendBeacon(url, string) sends: text/plain, the key in the URL, no preflight.
    let r = app
        .http
        .post(app.url("/events/beacon?apiKey=pk"))
        .header("Content-Type", "text/plain;charset=UTF-8")
        .header("Origin", "https://shop.example")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    // Recorded: a retry is all duplicates, and reads see them.
    let r = app
        .http
        .post(app.url("/events/beacon?apiKey=pk"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = app
        .http
        .get(app.url("/events?userId=user-1&limit=1000"))
        .bearer_auth("rk")
        .send()
        .await
        .unwrap();
    let stored: Value = r.json().await.unwrap();
    for id in &ids {
        assert!(
            stored["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["eventId"] == *id),
            "{id}"
        );
    }
    let beacon = |query: &'static str, content_type: &'static str, body: String| {
        app.http
            .post(app.url(&format!("/events/beacon{query}")))
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    // Some events invalid: the others are recorded, the answer names the broken ones.
    let good = unique("bc");
    let mixed = json!({"events": [item_added(&good), {"userId": "", "eventType": "cart_viewed"}]});
    let r = beacon("?apiKey=pk", "text/plain", mixed.to_string())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert_error(&body, "validation_failed", false);
    assert_eq!(body["details"][0]["field"], "events[1].userId", "{body}");
    let again = json!({"events": [item_added(&good)]});
    let r = app
        .http
        .post(app.url("/events/batch"))
        .bearer_auth("pk")
        .json(&again)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["duplicates"], 1);
    // The rest of the answers.
    let r = beacon("", "text/plain", again.to_string()).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = beacon("?apiKey=pk", "text/plain", "{not json".into())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_error(&r.json().await.unwrap(), "invalid_json", false);
    let r = beacon("?apiKey=pk", "text/plain", "{}".into())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_error(&r.json().await.unwrap(), "invalid_message", false);
    let r = beacon("?apiKey=pk", "application/xml", again.to_string())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let huge = format!("{{\"events\": [], \"pad\": \"{}\"}}", "x".repeat(1_100_000));
    let r = beacon("?apiKey=pk", "text/plain", huge).await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // POST /events and /events/batch keep the contract: text/plain is 415.
    for path in ["/events", "/events/batch"] {
        let r = app
            .http
            .post(app.url(path))
            .bearer_auth("pk")
            .header("Content-Type", "text/plain")
            .body(again.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 415, "{path}");
    }
}

#[tokio::test]
async fn a_beacon_is_rate_limited() {
    let app = TestApp::spawn_with(|s| {
        s.rate_limit_per_second = 1;
        s.rate_limit_burst = 2;
        s.max_batch_events = 2;
    })
    .await;
    let body = || batch(2).to_string();
    let post = || {
        app.http
            .post(app.url("/events/beacon"))
            .header("Content-Type", "text/plain")
            .body(body())
            .send()
    };
    assert_eq!(post().await.unwrap().status().as_u16(), 204);
    let r = post().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
}

/// The real binary: keys never reach its logs, and an open server beyond loopback warns.
#[tokio::test]
async fn keys_never_reach_a_log_line_and_an_open_server_warns() {
    let open = Binary::start(&[("CARTSTREAM_LISTEN", "0.0.0.0:0")]).await;
    let log = open.stop().await;
    assert!(log.contains("no keys are configured"), "{log}");

    let keyed = Binary::start(&[
        ("CARTSTREAM_LISTEN", "127.0.0.1:0"),
        ("CARTSTREAM_API_KEYS", "the-real-key-0001"),
    ])
    .await;
    let addr = keyed.addr;
    let http = reqwest::Client::new();
    for key in ["the-real-key-0001", "a-wrong-key-0002"] {
        let _ = tokio_tungstenite::connect_async(format!("ws://{addr}/events/stream?apiKey={key}"))
            .await;
        http.post(format!("http://{addr}/events/beacon?x=1&apiKey={key}"))
            .header("Content-Type", "text/plain")
            .body(batch(1).to_string())
            .send()
            .await
            .unwrap();
    }
    let log = keyed.stop().await;
    assert!(!log.contains("no keys are configured"), "{log}");
    assert!(
        log.contains("request refused"),
        "the refusal is logged: {log}"
    );
    assert!(!log.contains("the-real-key-0001"), "{log}");
    assert!(!log.contains("a-wrong-key-0002"), "{log}");
}

/// The README's "Running it on the internet" example is a config the real binary starts
/// with, and it means what the README says: the importer key sends but never reads, the admin
/// key (the digest of "password") runs the operator API, an unknown key is refused.
#[tokio::test]
async fn the_readme_internet_example_config_runs_as_documented() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## Running it on the internet")
        .nth(1)
        .expect("the README has the section");
    let toml = section
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the section has a toml block");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cartstream.toml");
    std::fs::write(&path, toml).unwrap();
    let server = Binary::start(&[
        ("CARTSTREAM_CONFIG", path.to_str().unwrap()),
        ("CARTSTREAM_LISTEN", "127.0.0.1:0"),
    ])
    .await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{}{p}", server.addr);
    let batch_with = |key: &str| {
        http.post(url("/events/batch"))
            .header("X-API-Key", key)
            .json(&batch(3))
            .send()
    };
    assert_eq!(
        batch_with("change-me-importer-key").await.unwrap().status(),
        200
    );
    assert_eq!(
        batch_with("not-a-configured-key").await.unwrap().status(),
        401
    );
    let read = |key: &str| {
        http.get(url("/events?limit=1"))
            .header("X-API-Key", key)
            .send()
    };
    assert_eq!(read("change-me-importer-key").await.unwrap().status(), 403);
    assert_eq!(read("password").await.unwrap().status(), 200);
    let log = server.stop().await;
    assert!(!log.contains("change-me-importer-key"), "{log}");
}

/// The server binary, logging JSON at debug level into a string.
struct Binary {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: std::thread::JoinHandle<String>,
    _data: tempfile::TempDir,
}

impl Binary {
    async fn start(env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let data = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cartstream"));
        cmd.env_clear()
            .env("CARTSTREAM_DATA_DIR", data.path())
            .env("CARTSTREAM_LOG", "debug")
            .env("CARTSTREAM_LOG_FORMAT", "json")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::thread::spawn(move || {
            let errors =
                std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
            let mut kept = String::new();
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["fields"]["message"] == "cartstream listening" {
                        let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or("").to_owned());
                    }
                }
                kept.push_str(&line);
                kept.push('\n');
            }
            kept + &errors.join().unwrap_or_default()
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("the server logs where it listens");
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        Self {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _data: data,
        }
    }

    /// SIGTERM, then the whole log.
    async fn stop(mut self) -> String {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        tokio::task::spawn_blocking(move || {
            self.child.wait().unwrap();
            self.log.join().unwrap()
        })
        .await
        .unwrap()
    }
}
