//! The WebSocket channel, PROTOCOL.md section 3.

use crate::helpers::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn connection_ack_comes_first() {
    let app = TestApp::spawn().await;
    let (_ws, ack) = app.ws().await;
    assert_eq!(ack["type"], "connection_ack");
    assert!(ack["connectionId"].as_str().unwrap().starts_with("c-"));
    assert_eq!(ack["protocolVersion"], 1);
    assert!(chrono::DateTime::parse_from_rfc3339(ack["serverTime"].as_str().unwrap()).is_ok());
    assert_eq!(
        ack["limits"],
        json!({"maxMessageBytes": 65536, "maxBatchEvents": 500})
    );
}

#[tokio::test]
async fn an_event_is_acked_and_a_repeat_is_a_duplicate() {
    let app = TestApp::spawn().await;
    let (mut ws, _) = app.ws().await;
    let id = unique("ws");
    send_json(
        &mut ws,
        &json!({"type": "cart_event", "requestId": "r-1", "data": item_added(&id)}),
    )
    .await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"type": "event_ack", "requestId": "r-1", "eventId": id, "status": "accepted"})
    );
    send_json(
        &mut ws,
        &json!({"type": "cart_event", "data": item_added(&id)}),
    )
    .await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"type": "event_ack", "eventId": id, "status": "duplicate"}),
        "no requestId sent, none echoed"
    );
}

#[tokio::test]
async fn batch_ack_reports_each_index() {
    let app = TestApp::spawn().await;
    let (mut ws, _) = app.ws().await;
    let a = unique("a");
    let b = unique("b");
    let batch = json!({"type": "cart_event_batch", "requestId": "r-2", "data": [
        item_added(&a),
        item_added(&a),
        item_added(&b),
        {"eventId": "x", "eventType": "item_added"},
    ]});
    send_json(&mut ws, &batch).await;
    let reply = recv_json(&mut ws).await;
    assert_eq!(reply["type"], "batch_ack");
    assert_eq!(reply["requestId"], "r-2");
    assert_eq!(
        (
            reply["accepted"].as_u64(),
            reply["duplicates"].as_u64(),
            reply["rejected"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    let results = reply["results"].as_array().unwrap();
    assert_eq!(
        results[0],
        json!({"index": 0, "eventId": a, "status": "accepted"})
    );
    assert_eq!(
        results[1],
        json!({"index": 1, "eventId": a, "status": "duplicate"})
    );
    assert_eq!(
        results[2],
        json!({"index": 2, "eventId": b, "status": "accepted"})
    );
    assert_eq!(results[3]["index"], 3);
    assert_eq!(results[3]["status"], "rejected");
    let fields: Vec<&str> = results[3]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["userId", "metadata.productId"]);
}

/// What the reply to each pipelined message must be.
enum Expect {
    Ack(&'static str),
    Batch(u64, u64, u64),
    Pong,
    Error(&'static str, bool),
}

#[tokio::test]
async fn replies_keep_arrival_order_under_pipelining() {
    let app = TestApp::spawn().await;
    let (mut ws, _) = app.ws().await;
    let mut expected = Vec::new();
    let mut frames = Vec::new();
    let shared = unique("shared");
    for i in 0..400 {
        let rid = format!("r-{i}");
        let (frame, expect) = match i % 8 {
            0 => (json!({"type": "cart_event", "requestId": rid, "data": item_added(&unique("p"))}).to_string(), Expect::Ack("accepted")),
            1 => (
                json!({"type": "cart_event", "requestId": rid, "data": item_added(&shared)}).to_string(),
                Expect::Ack(if i == 1 { "accepted" } else { "duplicate" }),
            ),
            2 => (json!({"type": "ping", "requestId": rid}).to_string(), Expect::Pong),
            3 => (
                json!({"type": "cart_event_batch", "requestId": rid, "data": [item_added(&unique("b")), item_added(&shared), {"userId": "u"}]}).to_string(),
                Expect::Batch(1, 1, 1),
            ),
            4 => (format!("{{not json {rid}"), Expect::Error("invalid_json", false)),
            5 => (json!({"type": "nope", "requestId": rid}).to_string(), Expect::Error("unsupported_message_type", true)),
            6 => (json!({"type": "cart_event", "requestId": rid}).to_string(), Expect::Error("invalid_message", true)),
            _ => (
                json!({"type": "cart_event", "requestId": rid, "data": {"userId": "u", "eventType": "bogus"}}).to_string(),
                Expect::Error("validation_failed", true),
            ),
        };
        frames.push(frame);
        expected.push((rid, expect));
    }
    for f in &frames {
        ws.feed(Message::text(f.clone())).await.unwrap();
    }
    ws.flush().await.unwrap();
    for (rid, expect) in expected {
        let r = recv_json(&mut ws).await;
        match expect {
            Expect::Ack(status) => {
                assert_eq!(
                    (r["type"].as_str(), r["requestId"].as_str()),
                    (Some("event_ack"), Some(rid.as_str())),
                    "{r}"
                );
                assert_eq!(r["status"], status, "{rid}: {r}");
            }
            Expect::Pong => {
                assert_eq!(
                    (r["type"].as_str(), r["requestId"].as_str()),
                    (Some("pong"), Some(rid.as_str())),
                    "{r}"
                );
                assert!(r["serverTime"].is_string());
            }
            Expect::Batch(a, d, x) => {
                assert_eq!(
                    (r["type"].as_str(), r["requestId"].as_str()),
                    (Some("batch_ack"), Some(rid.as_str())),
                    "{r}"
                );
                assert_eq!(
                    (
                        r["accepted"].as_u64(),
                        r["duplicates"].as_u64(),
                        r["rejected"].as_u64()
                    ),
                    (Some(a), Some(d), Some(x)),
                    "{r}"
                );
            }
            Expect::Error(code, echoes) => {
                assert_eq!(
                    (r["type"].as_str(), r["code"].as_str()),
                    (Some("error"), Some(code)),
                    "{rid}: {r}"
                );
                assert_eq!(r["retryable"], false);
                if echoes {
                    assert_eq!(r["requestId"], rid.as_str());
                } else {
                    assert!(r.get("requestId").is_none());
                }
            }
        }
    }
}

#[tokio::test]
async fn every_error_code_keeps_the_connection_open() {
    let app = TestApp::spawn_with(|s| s.max_batch_events = 3).await;
    let (mut ws, _) = app.ws().await;
    let cases: Vec<(Message, &str, Option<&str>)> = vec![
        (Message::text("not json"), "invalid_json", None),
        (Message::text("[1,2]"), "invalid_json", None),
        (Message::text("42"), "invalid_json", None),
        (
            Message::binary(b"{\"type\":\"ping\"}".to_vec()),
            "invalid_json",
            None,
        ),
        (
            Message::text(r#"{"type":"subscribe","requestId":"r1"}"#),
            "unsupported_message_type",
            Some("r1"),
        ),
        (
            Message::text(r#"{"requestId":"r2"}"#),
            "unsupported_message_type",
            Some("r2"),
        ),
        (
            Message::text(r#"{"type":"cart_event","requestId":"r3"}"#),
            "invalid_message",
            Some("r3"),
        ),
        (
            Message::text(r#"{"type":"cart_event","requestId":"r4","data":[1]}"#),
            "invalid_message",
            Some("r4"),
        ),
        (
            Message::text(r#"{"type":"cart_event_batch","requestId":"r5","data":[]}"#),
            "invalid_message",
            Some("r5"),
        ),
        (
            Message::text(r#"{"type":"cart_event_batch","requestId":"r6","data":[{},{},{},{}]}"#),
            "invalid_message",
            Some("r6"),
        ),
        (
            Message::text(r#"{"type":"cart_event_batch","requestId":"r7","data":{}}"#),
            "invalid_message",
            Some("r7"),
        ),
        (
            Message::text(r#"{"type":"ping","requestId":7}"#),
            "invalid_message",
            None,
        ),
        (
            Message::text(
                r#"{"type":"cart_event","requestId":"r9","data":{"userId":"u","eventType":"item_added"}}"#,
            ),
            "validation_failed",
            Some("r9"),
        ),
    ];
    for (msg, code, rid) in cases {
        ws.send(msg).await.unwrap();
        let r = recv_json(&mut ws).await;
        assert_eq!(r["type"], "error", "{r}");
        assert_eq!(r["code"], code, "{r}");
        assert_eq!(r.get("requestId").and_then(Value::as_str), rid, "{r}");
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(r["retryable"], false);
        if code == "validation_failed" {
            assert_eq!(
                r["details"],
                json!([{"field": "metadata.productId", "code": "required",
                        "message": "metadata.productId is required for item_added"}])
            );
        }
        send_json(&mut ws, &json!({"type": "ping", "requestId": "alive"})).await;
        assert_eq!(
            recv_json(&mut ws).await["type"],
            "pong",
            "still open after {code}"
        );
    }
}

#[tokio::test]
async fn rate_limited_carries_retry_after_ms() {
    let app = TestApp::spawn_with(|s| {
        s.rate_limit_per_second = 1;
        s.rate_limit_burst = 2;
        s.max_batch_events = 2;
    })
    .await;
    let (mut ws, _) = app.ws().await;
    send_json(&mut ws, &json!({"type": "cart_event_batch", "requestId": "b", "data": [item_added(&unique("r")), item_added(&unique("r"))]})).await;
    assert_eq!(recv_json(&mut ws).await["type"], "batch_ack");
    send_json(
        &mut ws,
        &json!({"type": "cart_event", "requestId": "over", "data": item_added(&unique("r"))}),
    )
    .await;
    let r = recv_json(&mut ws).await;
    assert_eq!(
        (r["code"].as_str(), r["requestId"].as_str()),
        (Some("rate_limited"), Some("over")),
        "{r}"
    );
    assert_eq!(r["retryable"], true);
    let ms = r["retryAfterMs"].as_u64().unwrap();
    assert!((1..=1000).contains(&ms), "{ms}");
    send_json(&mut ws, &json!({"type": "ping"})).await;
    assert_eq!(recv_json(&mut ws).await["type"], "pong");
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_after_answering_what_came_before() {
    let app = TestApp::spawn_with(|s| s.max_message_bytes = 4096).await;
    let (mut ws, ack) = app.ws().await;
    assert_eq!(ack["limits"]["maxMessageBytes"], 4096);
    let ids: Vec<String> = (0..20).map(|_| unique("before")).collect();
    for (i, id) in ids.iter().enumerate() {
        ws.feed(Message::text(
            json!({"type": "cart_event", "requestId": i.to_string(), "data": item_added(id)})
                .to_string(),
        ))
        .await
        .unwrap();
    }
    let big = json!({"type": "cart_event", "data": {"userId": "u", "eventType": "cart_viewed", "metadata": {"pad": "x".repeat(5000)}}});
    ws.feed(Message::text(big.to_string())).await.unwrap();
    ws.flush().await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let r = recv_json(&mut ws).await;
        assert_eq!(
            (
                r["requestId"].as_str(),
                r["eventId"].as_str(),
                r["status"].as_str()
            ),
            (
                Some(i.to_string().as_str()),
                Some(id.as_str()),
                Some("accepted")
            )
        );
    }
    assert_eq!(recv_close_code(&mut ws).await, 1009);
    let (status, body) = app.get_json("/events?limit=1000").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["events"].as_array().unwrap().len(),
        20,
        "the earlier events were recorded"
    );
}

#[tokio::test]
async fn a_message_of_exactly_the_limit_is_accepted() {
    let app = TestApp::spawn_with(|s| s.max_message_bytes = 4096).await;
    let (mut ws, _) = app.ws().await;
    let mut msg = json!({"type": "ping", "requestId": "exact", "pad": ""});
    let len = msg.to_string().len();
    msg["pad"] = json!("x".repeat(4096 - len));
    assert_eq!(msg.to_string().len(), 4096);
    send_json(&mut ws, &msg).await;
    assert_eq!(recv_json(&mut ws).await["type"], "pong");
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let app = TestApp::spawn().await;
    let (mut ws, _) = app.ws().await;
    send_json(&mut ws, &json!({"type": "ping", "requestId": "first"})).await;
    let frame = Frame::message(vec![0xff, 0xfe, b'{'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(recv_json(&mut ws).await["requestId"], "first");
    assert_eq!(recv_close_code(&mut ws).await, 1007);
}

#[tokio::test]
async fn a_client_that_ignores_pings_is_closed_with_1011() {
    let app = TestApp::spawn_with(|s| {
        s.ws_ping_interval = Duration::from_millis(100);
        s.ws_max_missed_pings = 2;
    })
    .await;
    let (mut ws, _) = app.ws().await;
    // Not reading means tungstenite never answers the pings. The server counts the close
    // before it sends it: wait for that over HTTP, never touching the socket (what is read
    // next says whether it came).
    poll_until(
        Duration::from_secs(10),
        || app.get_text("/metrics"),
        |(_, m)| m.contains("cartstream_ws_closes_total{reason=\"ping_timeout\"} 1"),
    )
    .await;
    let mut pings = 0;
    let code = loop {
        match tokio::time::timeout(REPLY_TIMEOUT, futures_util::StreamExt::next(&mut ws))
            .await
            .unwrap()
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((pings, code), (2, 1011));
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let app = TestApp::spawn_with(|s| s.ws_ping_interval = Duration::from_millis(50)).await;
    let (mut ws, _) = app.ws().await;
    // recv_json keeps reading, so tungstenite answers every ping.
    for i in 0..8 {
        // Waits for the server's next ping (reading it makes tungstenite answer it), so the
        // exchange spans eight ping intervals.
        loop {
            let frame = tokio::time::timeout(REPLY_TIMEOUT, futures_util::StreamExt::next(&mut ws))
                .await
                .expect("a ping in time")
                .expect("the connection is open")
                .expect("a valid frame");
            if matches!(frame, Message::Ping(_)) {
                break;
            }
        }
        send_json(
            &mut ws,
            &json!({"type": "ping", "requestId": i.to_string()}),
        )
        .await;
        assert_eq!(recv_json(&mut ws).await["type"], "pong");
    }
}

#[tokio::test]
async fn shutdown_answers_everything_received_then_closes_with_1001() {
    let mut app = TestApp::spawn().await;
    let (mut ws, _) = app.ws().await;
    let ids: Vec<String> = (0..200).map(|_| unique("sd")).collect();
    for id in &ids {
        ws.feed(Message::text(
            json!({"type": "cart_event", "requestId": id, "data": item_added(id)}).to_string(),
        ))
        .await
        .unwrap();
    }
    ws.flush().await.unwrap();
    // Make sure the server has read at least the first message before it is told to stop.
    let first = recv_json(&mut ws).await;
    assert_eq!(first["requestId"], ids[0].as_str());
    app.trigger_stop();
    let mut answered = 1;
    let code = loop {
        match tokio::time::timeout(REPLY_TIMEOUT, futures_util::StreamExt::next(&mut ws))
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => {
                let r: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(r["requestId"], ids[answered].as_str(), "in order");
                assert_eq!(r["status"], "accepted");
                answered += 1;
            }
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 1001);
    app.join().await.unwrap();
    // Every event that was answered is stored: reopen the data dir and count.
    let app = TestApp::spawn_in(&app.data_dir.clone()).await;
    let (_, body) = app.get_json("/events?limit=1000").await;
    assert_eq!(body["events"].as_array().unwrap().len(), answered);
}

#[tokio::test]
async fn a_store_that_cannot_record_answers_unavailable() {
    let app = TestApp::spawn_with_ports(|_| {}, crate::failing::ports_with_failing_store).await;
    let (mut ws, _) = app.ws().await;
    send_json(
        &mut ws,
        &json!({"type": "cart_event", "requestId": "u1", "data": item_added(&unique("f"))}),
    )
    .await;
    let r = recv_json(&mut ws).await;
    assert_eq!(
        (
            r["type"].as_str(),
            r["code"].as_str(),
            r["requestId"].as_str()
        ),
        (Some("error"), Some("unavailable"), Some("u1")),
        "{r}"
    );
    assert_eq!(r["retryable"], true);
    send_json(
        &mut ws,
        &json!({"type": "cart_event_batch", "requestId": "u2", "data": [item_added(&unique("f"))]}),
    )
    .await;
    let r = recv_json(&mut ws).await;
    assert_eq!(
        (r["code"].as_str(), r["retryable"].as_bool()),
        (Some("unavailable"), Some(true)),
        "{r}"
    );
}

/// Reads the replies up to the server's close frame, then the end of the connection: the text
/// replies and the close code.
async fn replies_then_close(ws: &mut Ws) -> (Vec<Value>, u16) {
    let mut replies = Vec::new();
    let code = loop {
        match tokio::time::timeout(REPLY_TIMEOUT, futures_util::StreamExt::next(ws))
            .await
            .expect("a reply or a close in time")
        {
            Some(Ok(Message::Text(t))) => replies.push(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
            Some(Ok(_)) => {}
            other => panic!("connection ended before a close frame: {other:?}"),
        }
    };
    let end = tokio::time::timeout(REPLY_TIMEOUT, futures_util::StreamExt::next(ws))
        .await
        .expect("the server ends the connection after its close frame");
    assert!(end.is_none(), "nothing after the close frame: {end:?}");
    (replies, code)
}

fn close_frame(code: u16) -> Option<CloseFrame> {
    Some(CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    })
}

#[tokio::test]
async fn a_client_close_is_answered_after_every_reply_before_it() {
    let app = TestApp::spawn().await;
    let (mut ws, _) = app.ws().await;
    let ids: Vec<String> = (0..200).map(|_| unique("cc")).collect();
    for id in &ids {
        ws.feed(Message::text(
            json!({"type": "cart_event", "requestId": id, "data": item_added(id)}).to_string(),
        ))
        .await
        .unwrap();
    }
    ws.close(close_frame(1000)).await.unwrap();

    let (replies, code) = replies_then_close(&mut ws).await;

    let answered: Vec<(&str, &str, &str)> = replies
        .iter()
        .map(|r| {
            (
                r["type"].as_str().unwrap(),
                r["requestId"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(&str, &str, &str)> = ids
        .iter()
        .map(|id| ("event_ack", id.as_str(), "accepted"))
        .collect();
    assert_eq!(answered, expected, "every event answered, in order");
    assert_eq!(code, 1000, "the client's code echoed");
    let (_, body) = app.get_json("/events?limit=1000").await;
    assert_eq!(body["events"].as_array().unwrap().len(), 200);
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains(r#"cartstream_ws_closes_total{reason="client_closed"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_client_close_code_is_echoed_and_none_is_answered_1000() {
    let app = TestApp::spawn().await;
    for (sent, answer) in [
        (close_frame(4000), 4000),
        (close_frame(3000), 3000),
        (close_frame(1001), 1001),
        (None, 1000),
    ] {
        let (mut ws, _) = app.ws().await;
        send_json(&mut ws, &json!({"type": "ping", "requestId": "p"})).await;
        ws.close(sent.clone()).await.unwrap();
        let (replies, code) = replies_then_close(&mut ws).await;
        assert_eq!(
            (replies.len(), replies[0]["type"].as_str()),
            (1, Some("pong")),
            "{sent:?}"
        );
        assert_eq!(code, answer, "{sent:?}");
    }
}

#[tokio::test]
async fn a_close_code_no_endpoint_may_send_is_answered_1002() {
    let app = TestApp::spawn().await;
    for sent in [999, 1005, 1006, 1015, 2000, 5000] {
        let (mut ws, _) = app.ws().await;
        let id = unique("bad-close");
        send_json(
            &mut ws,
            &json!({"type": "cart_event", "requestId": "e", "data": item_added(&id)}),
        )
        .await;
        ws.close(close_frame(sent)).await.unwrap();
        let (replies, code) = replies_then_close(&mut ws).await;
        assert_eq!(
            (replies.len(), replies[0]["eventId"].as_str()),
            (1, Some(id.as_str())),
            "{sent}: the event before the close is answered"
        );
        assert_eq!(code, 1002, "{sent}");
    }
}

#[tokio::test]
async fn a_malformed_close_frame_is_answered_with_a_close_code() {
    let app = TestApp::spawn().await;
    // A 1-byte payload cannot hold a code (1002); a reason must be UTF-8 (1007, as for text).
    for (payload, answer) in [(vec![0x03], 1002), (vec![0x03, 0xe8, 0xff, 0xfe], 1007)] {
        let (mut ws, _) = app.ws().await;
        send_json(&mut ws, &json!({"type": "ping", "requestId": "p"})).await;
        let header = FrameHeader {
            opcode: OpCode::Control(Control::Close),
            ..FrameHeader::default()
        };
        let frame = Frame::from_payload(header, payload.clone().into());
        ws.send(Message::Frame(frame)).await.unwrap();
        let (replies, code) = replies_then_close(&mut ws).await;
        assert_eq!(replies.len(), 1, "{payload:?}: the ping before is answered");
        assert_eq!(code, answer, "{payload:?}");
    }
}

#[tokio::test]
async fn a_client_ping_gets_a_pong_with_its_payload() {
    let app = TestApp::spawn().await;
    let (mut ws, _) = app.ws().await;
    for payload in [&b"hello"[..], &b""[..], &[7u8; 125][..]] {
        ws.send(Message::Ping(payload.to_vec().into()))
            .await
            .unwrap();
        let pong = loop {
            match tokio::time::timeout(REPLY_TIMEOUT, futures_util::StreamExt::next(&mut ws))
                .await
                .expect("a pong in time")
            {
                Some(Ok(Message::Pong(p))) => break p,
                Some(Ok(Message::Ping(_))) => {}
                other => panic!("expected a pong, got {other:?}"),
            }
        };
        assert_eq!(&pong[..], payload);
    }
    send_json(&mut ws, &json!({"type": "ping", "requestId": "after"})).await;
    assert_eq!(recv_json(&mut ws).await["requestId"], "after");
}
