//! The HTTP API, PROTOCOL.md section 4.

use crate::helpers::*;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};
use std::io::Write;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

async fn raw_post(
    app: &TestApp,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = app.http.post(app.url(path)).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn assert_error(body: &Value, code: &str, retryable: bool) {
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["retryable"], retryable, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn post_event_accepts_then_answers_duplicate() {
    let app = TestApp::spawn().await;
    let id = unique("h");
    assert_eq!(
        app.post_event(&item_added(&id)).await,
        (202, json!({"eventId": id, "status": "accepted"}))
    );
    assert_eq!(
        app.post_event(&item_added(&id)).await,
        (200, json!({"eventId": id, "status": "duplicate"}))
    );
}

#[tokio::test]
async fn derived_ids_make_identical_retries_duplicates() {
    let app = TestApp::spawn().await;
    let mut e = item_added("unused");
    e.as_object_mut().unwrap().remove("eventId");
    let (s1, b1) = app.post_event(&e).await;
    let (s2, b2) = app.post_event(&e).await;
    assert_eq!((s1, s2), (202, 200));
    assert!(b1["eventId"].as_str().unwrap().starts_with("fp-"));
    assert_eq!(b1["eventId"], b2["eventId"]);
    // Without timestamp too, every send is a new event.
    e.as_object_mut().unwrap().remove("timestamp");
    let (_, c1) = app.post_event(&e).await;
    let (s, c2) = app.post_event(&e).await;
    assert_eq!(s, 202);
    assert_ne!(c1["eventId"], c2["eventId"]);
}

#[tokio::test]
async fn validation_failures_are_422_with_every_detail() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post_event(&json!({"eventId": "ok", "userId": "   ", "eventType": "checkout_started",
            "timestamp": "2020-01-01T00:00:00Z", "metadata": {"itemCount": 1.5, "currency": "usd"}}))
        .await;
    assert_eq!(status, 422);
    assert_error(&body, "validation_failed", false);
    let got: Vec<(String, String)> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["field"].as_str().unwrap().to_owned(),
                d["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("userId", "invalid_format"),
        ("timestamp", "out_of_range"),
        ("metadata.cartValue", "required"),
        ("metadata.itemCount", "invalid_type"),
        ("metadata.currency", "invalid_format"),
    ];
    assert_eq!(got, want.map(|(f, c)| (f.to_owned(), c.to_owned())));
}

#[tokio::test]
async fn bodies_that_are_not_json_objects_are_400_invalid_json() {
    let app = TestApp::spawn().await;
    for body in [&b"{oops"[..], b"[1,2]", b"\"text\"", b"null", b""] {
        let (status, resp) = raw_post(
            &app,
            "/events",
            body.to_vec(),
            &[("content-type", "application/json")],
        )
        .await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(body));
        assert_error(&resp, "invalid_json", false);
        let (status, resp) = raw_post(
            &app,
            "/events/batch",
            body.to_vec(),
            &[("content-type", "application/json")],
        )
        .await;
        assert_eq!(status, 400);
        assert_error(&resp, "invalid_json", false);
    }
}

#[tokio::test]
async fn a_content_type_other_than_json_is_415() {
    let app = TestApp::spawn().await;
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let (status, body) =
            raw_post(&app, "/events", b"{}".to_vec(), &[("content-type", ct)]).await;
        assert_eq!(status, 415);
        assert_error(&body, "unsupported_media_type", false);
    }
    let (status, body) = raw_post(&app, "/events", b"{}".to_vec(), &[]).await;
    assert_eq!(status, 415, "no content type");
    assert_error(&body, "unsupported_media_type", false);
    let (status, body) = raw_post(
        &app,
        "/events",
        b"{}".to_vec(),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "br"),
        ],
    )
    .await;
    assert_eq!(status, 415);
    assert_error(&body, "unsupported_media_type", false);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_before_and_after_gzip() {
    let app = TestApp::spawn().await;
    let mut e = item_added(&unique("big"));
    e["metadata"]["pad"] = json!("x".repeat(70_000));
    let (status, body) = app.post_event(&e).await;
    assert_eq!(status, 413);
    assert_error(&body, "payload_too_large", false);

    // 70 KB of JSON compresses to a few hundred bytes: the limit applies after decompression.
    let compressed = gzip(e.to_string().as_bytes());
    assert!(compressed.len() < 2_000);
    let (status, body) = raw_post(
        &app,
        "/events",
        compressed,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
    )
    .await;
    assert_eq!(status, 413);
    assert_error(&body, "payload_too_large", false);

    // A batch may be up to 1 MiB.
    let events: Vec<Value> = (0..10)
        .map(|_| {
            let mut e = item_added(&unique("b"));
            e["metadata"]["pad"] = json!("x".repeat(10_000));
            e
        })
        .collect();
    let (status, body) = app.post_batch(&json!({"events": events})).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(10)),
        "{body}"
    );
    let bomb = gzip(&vec![b' '; 2 * 1024 * 1024]);
    let (status, body) = raw_post(
        &app,
        "/events/batch",
        bomb,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
    )
    .await;
    assert_eq!(status, 413);
    assert_error(&body, "payload_too_large", false);
}

#[tokio::test]
async fn gzip_bodies_are_accepted_and_bad_gzip_is_400() {
    let app = TestApp::spawn().await;
    let id = unique("gz");
    let (status, body) = raw_post(
        &app,
        "/events",
        gzip(item_added(&id).to_string().as_bytes()),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
    )
    .await;
    assert_eq!(
        (status, body),
        (202, json!({"eventId": id, "status": "accepted"}))
    );
    let (status, body) = raw_post(
        &app,
        "/events",
        b"not gzip at all".to_vec(),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_json", false);
}

#[tokio::test]
async fn batch_envelope_errors_are_400_invalid_message() {
    let app = TestApp::spawn().await;
    let too_many: Vec<Value> = (0..501).map(|i| item_added(&format!("e{i}"))).collect();
    for body in [
        json!({}),
        json!({"events": {}}),
        json!({"events": []}),
        json!({"events": too_many}),
        json!({"event": []}),
    ] {
        let (status, resp) = app.post_batch(&body).await;
        assert_eq!(status, 400);
        assert_error(&resp, "invalid_message", false);
    }
}

#[tokio::test]
async fn a_batch_is_judged_per_event() {
    let app = TestApp::spawn().await;
    let a = unique("a");
    let (status, body) = app
        .post_batch(&json!({"events": [item_added(&a), "nope", item_added(&a), {"userId": "u", "eventType": "cart_viewed", "metadata": []}]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            body["accepted"].as_u64(),
            body["duplicates"].as_u64(),
            body["rejected"].as_u64()
        ),
        (Some(1), Some(1), Some(2))
    );
    assert_eq!(
        body["results"][0],
        json!({"index": 0, "eventId": a, "status": "accepted"})
    );
    assert_eq!(
        body["results"][1],
        json!({"index": 1, "status": "rejected", "errors": [{"field": "", "code": "invalid_type", "message": "event must be a JSON object"}]})
    );
    assert_eq!(
        body["results"][2],
        json!({"index": 2, "eventId": a, "status": "duplicate"})
    );
    assert_eq!(body["results"][3]["errors"][0]["field"], "metadata");
    let (status, body) = app
        .post_batch(
            &json!({"events": (0..500).map(|_| item_added(&unique("m"))).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(500)));
}

#[tokio::test]
async fn duplicates_are_recognised_across_websocket_and_http() {
    let app = TestApp::spawn().await;
    let (mut ws, _) = app.ws().await;
    let via_ws = unique("ws-first");
    send_json(
        &mut ws,
        &serde_json::json!({"type": "cart_event", "data": item_added(&via_ws)}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await["status"], "accepted");
    assert_eq!(app.post_event(&item_added(&via_ws)).await.0, 200);

    let via_http = unique("http-first");
    assert_eq!(app.post_event(&item_added(&via_http)).await.0, 202);
    send_json(
        &mut ws,
        &serde_json::json!({"type": "cart_event_batch", "data": [item_added(&via_http)]}),
    )
    .await;
    assert_eq!(
        recv_json(&mut ws).await["results"][0]["status"],
        "duplicate"
    );
}

#[tokio::test]
async fn get_events_reads_back_every_field_newest_first_with_filters() {
    let app = TestApp::spawn().await;
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    let at = |mins: i64| {
        (base + chrono::Duration::minutes(mins))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let events = [
        json!({"eventId": "e1", "userId": "alice", "eventType": "item_added", "timestamp": at(1), "metadata": {"productId": "p", "note": "héllo 🛒"}}),
        json!({"eventId": "e2", "userId": "bob", "eventType": "cart_viewed", "timestamp": at(2)}),
        json!({"eventId": "e3", "userId": "alice", "eventType": "cart_viewed", "timestamp": at(3), "sessionId": "s"}),
        json!({"eventId": "e4", "userId": "alice", "eventType": "item_added", "timestamp": at(4), "metadata": {"productId": "q"}}),
    ];
    let (status, _) = app.post_batch(&json!({"events": events})).await;
    assert_eq!(status, 200);

    let ids = |body: &Value| -> Vec<String> {
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["eventId"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, body) = app.get_json("/events").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&body), ["e4", "e3", "e2", "e1"]);
    let e1 = &body["events"][3];
    assert_eq!(e1["userId"], "alice");
    assert_eq!(e1["eventType"], "item_added");
    assert_eq!(e1["timestamp"], at(1));
    assert_eq!(
        e1["metadata"],
        json!({"productId": "p", "note": "héllo 🛒"})
    );
    assert!(e1.get("sessionId").is_none());
    assert_eq!(body["events"][1]["sessionId"], "s");
    assert!(chrono::DateTime::parse_from_rfc3339(e1["receivedAt"].as_str().unwrap()).is_ok());

    assert_eq!(
        ids(&app
            .get_json("/events?userId=alice&eventType=item_added")
            .await
            .1),
        ["e4", "e1"]
    );
    let q = format!(
        "/events?since={}&until={}",
        urlencode(&at(2)),
        urlencode(&at(3))
    );
    assert_eq!(
        ids(&app.get_json(&q).await.1),
        ["e3", "e2"],
        "inclusive bounds"
    );
    assert_eq!(ids(&app.get_json("/events?limit=1").await.1), ["e4"]);
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn bad_query_parameters_are_400_invalid_parameter() {
    let app = TestApp::spawn().await;
    for q in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "eventType=nope",
        "since=yesterday",
        "until=2025-01-01",
        "since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z",
    ] {
        let (status, body) = app.get_json(&format!("/events?{q}")).await;
        assert_eq!(status, 400, "{q}");
        assert_error(&body, "invalid_parameter", false);
    }
}

#[tokio::test]
async fn unknown_paths_are_404_json() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get_json("/nope").await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found", false);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.get_json("/health").await,
        (200, json!({"status": "ok"}))
    );
    let (status, body) = app.get_json("/ready").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready");
    assert_eq!(
        body["eventStore"],
        json!({"backend": "embedded", "status": "up"})
    );
    assert_eq!(
        body["dedupStore"],
        json!({"backend": "embedded", "status": "up"})
    );

    let id = unique("m");
    app.post_event(&item_added(&id)).await;
    app.post_event(&item_added(&id)).await;
    app.post_event(&json!({"userId": "u"})).await;
    let (mut ws, _) = app.ws().await;
    send_json(
        &mut ws,
        &json!({"type": "cart_event", "data": item_added(&unique("w"))}),
    )
    .await;
    recv_json(&mut ws).await;
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "cartstream_events_received_total{channel=\"http\"} 3",
        "cartstream_events_accepted_total{channel=\"http\"} 1",
        "cartstream_events_duplicate_total{channel=\"http\"} 1",
        "cartstream_events_rejected_total{channel=\"http\"} 1",
        "cartstream_events_received_total{channel=\"ws\"} 1",
        "cartstream_events_accepted_total{channel=\"ws\"} 1",
        "cartstream_ws_connections 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[tokio::test]
async fn a_store_that_cannot_record_answers_503_and_not_ready() {
    let app = TestApp::spawn_with_ports(|_| {}, crate::failing::ports_with_failing_store).await;
    let (status, body) = app.post_event(&item_added(&unique("f"))).await;
    assert_eq!(status, 503);
    assert_error(&body, "unavailable", true);
    let (status, body) = app
        .post_batch(&json!({"events": [item_added(&unique("f"))]}))
        .await;
    assert_eq!(status, 503);
    assert_error(&body, "unavailable", true);
    let (status, body) = app.get_json("/ready").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["eventStore"]["status"], "down");
    assert_eq!(body["dedupStore"]["status"], "up");
    let (status, body) = app.get_json("/events").await;
    assert_eq!(status, 503);
    assert_error(&body, "unavailable", true);
}

#[tokio::test]
async fn a_failed_store_does_not_turn_the_retry_into_a_duplicate() {
    // The same data dir: first a server whose store fails, then a healthy one.
    let dir = tempfile::tempdir().unwrap();
    let id = unique("retry");
    {
        let ports = crate::failing::ports_with_failing_store(dir.path());
        let app =
            cartstream::app::startup::Application::build_with(test_settings(dir.path()), ports)
                .await
                .unwrap();
        let addr = app.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let h = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        let r = reqwest::Client::new()
            .post(format!("http://{addr}/events"))
            .json(&item_added(&id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503);
        stop.send(()).unwrap();
        h.await.unwrap().unwrap();
    }
    let app = TestApp::spawn_in(dir.path()).await;
    assert_eq!(
        app.post_event(&item_added(&id)).await.0,
        202,
        "the retry is accepted"
    );
}

#[tokio::test]
async fn rate_limited_is_429_with_retry_after() {
    let app = TestApp::spawn_with(|s| {
        s.rate_limit_per_second = 1;
        s.rate_limit_burst = 1;
        s.max_batch_events = 1;
    })
    .await;
    assert_eq!(app.post_event(&item_added(&unique("r"))).await.0, 202);
    let r = app
        .http
        .post(app.url("/events"))
        .json(&item_added(&unique("r")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after));
    let body: Value = r.json().await.unwrap();
    assert_error(&body, "rate_limited", true);
}

#[tokio::test]
async fn api_keys_guard_the_events_endpoints() {
    let app = TestApp::spawn_with(|s| s.api_keys = vec!["k-1".into(), "k-2".into()]).await;
    let e = item_added(&unique("k"));
    let (status, body) = app.post_event(&e).await;
    assert_eq!(status, 401);
    assert_error(&body, "unauthorized", false);
    let r = app
        .http
        .post(app.url("/events"))
        .bearer_auth("wrong")
        .json(&e)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = app
        .http
        .post(app.url("/events"))
        .bearer_auth("k-2")
        .json(&e)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    // An ingest key never reads (the one a page embeds is public).
    let r = app
        .http
        .get(app.url("/events"))
        .header("X-API-Key", "k-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_error(&r.json().await.unwrap(), "forbidden", false);
    assert_eq!(app.get_json("/events").await.0, 401);
    assert_eq!(app.get_json("/health").await.0, 200, "operations stay open");

    let refused = tokio_tungstenite::connect_async(app.ws_url()).await;
    assert!(refused.is_err(), "no key, no upgrade");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}?apiKey=k-1", app.ws_url()))
        .await
        .unwrap();
    assert_eq!(recv_json(&mut ws).await["type"], "connection_ack");
}

#[tokio::test]
async fn a_restart_keeps_events_and_dedup_state() {
    let dir = tempfile::tempdir().unwrap();
    let id = unique("persist");
    {
        let app = TestApp::spawn_in(dir.path()).await;
        assert_eq!(app.post_event(&item_added(&id)).await.0, 202);
        app.stop().await.unwrap();
    }
    let app = TestApp::spawn_in(dir.path()).await;
    assert_eq!(
        app.post_event(&item_added(&id)).await,
        (200, json!({"eventId": id, "status": "duplicate"}))
    );
    let (_, body) = app.get_json("/events").await;
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    assert_eq!(body["events"][0]["eventId"], id.as_str());
}

#[tokio::test]
async fn a_non_websocket_request_to_the_stream_is_a_json_error() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get_json("/events/stream").await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_message", false);
}

/// What a crash leaves when events were acked but not yet moved from the journal into the
/// embedded store's events table: the restarted server answers them `duplicate`, shows them,
/// and moves them into the table once.
#[tokio::test]
async fn events_a_crash_left_in_the_journal_are_kept_and_still_duplicates() {
    use cartstream::adapters::outbound::journal::SqliteJournal;
    use cartstream::ports::Journal;

    let dir = tempfile::tempdir().unwrap();
    let id = unique("in-journal");
    {
        let event = crate::fixtures::from_json(item_added(&id)).stored();
        let journal = SqliteJournal::open(dir.path(), 1 << 20).unwrap();
        journal.append(&[event]).await.unwrap();
    }
    let app = TestApp::spawn_in(dir.path()).await;
    assert_eq!(
        app.post_event(&item_added(&id)).await,
        (200, json!({"eventId": id, "status": "duplicate"}))
    );
    let (_, body) = app.get_json("/events").await;
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    // Moved into the table (the forwarder's interval is 1 s), and still one event.
    let (_, metrics) = poll_until(
        std::time::Duration::from_secs(10),
        || app.get_text("/metrics"),
        |(_, metrics)| metrics.contains("cartstream_journal_entries 0"),
    )
    .await;
    assert!(
        metrics.contains("cartstream_journal_entries 0"),
        "journal not drained"
    );
    assert_eq!(
        app.post_event(&item_added(&id)).await.1["status"],
        "duplicate"
    );
    let (_, body) = app.get_json("/events").await;
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    app.stop().await.unwrap();
}
