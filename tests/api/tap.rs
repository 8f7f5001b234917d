//! `GET /events/tap`: who may watch, what it shows, its filters, and what a subscriber that
//! does not keep up is told.

use crate::helpers::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Tap = WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn tap_url(app: &TestApp) -> String {
    format!("ws://{}/events/tap", app.addr)
}

/// A server with one key of each scope.
async fn keyed() -> TestApp {
    TestApp::spawn_with(|s| {
        s.api_keys = vec!["in-1".into()];
        s.read_keys = vec!["rd-1".into()];
        s.admin_key = Some("ad-1".into());
    })
    .await
}

/// Opens the tap, sends `subscribe` with `key` and `filter`, and returns it with the first
/// answer (`tap_ack`, or the error).
async fn subscribe(app: &TestApp, key: Option<&str>, filter: Value) -> (Tap, Value) {
    let (mut tap, _) = tokio_tungstenite::connect_async(tap_url(app))
        .await
        .expect("the tap upgrades");
    let mut msg = json!({"type": "subscribe", "filter": filter});
    if let Some(k) = key {
        msg["key"] = Value::from(k);
    }
    send_json(&mut tap, &msg).await;
    let first = recv_json(&mut tap).await;
    (tap, first)
}

/// Fails unless `msg` has exactly the shape the AsyncAPI document gives its `type` on the tap
/// channel: every field named there, every required one present; and each event of a
/// `tap_events` frame the shape of its items. (check.mjs validates the document itself.)
fn assert_documented(msg: &Value) {
    let doc: Value = serde_json::from_str(include_str!("../../asyncapi/asyncapi.json")).unwrap();
    let kind = msg["type"].as_str().unwrap_or_default();
    let schema = doc["channels"]["eventTap"]["messages"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|m| m["$ref"].as_str())
        .filter_map(|r| r.strip_prefix("#/components/messages/"))
        .filter_map(|m| doc["components"]["messages"][m]["payload"]["$ref"].as_str())
        .filter_map(|r| r.strip_prefix("#/components/schemas/"))
        .map(|name| &doc["components"]["schemas"][name])
        .find(|s| s["properties"]["type"]["const"] == kind)
        .unwrap_or_else(|| panic!("the tap channel documents no {kind:?}: {msg}"));
    assert_shape(schema, msg, kind);
    if kind == "tap_events" {
        let item = |i: usize| {
            let name = schema["properties"]["events"]["items"]["oneOf"][i]["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .expect("the events' schemas: rows, then rejected events");
            (name, &doc["components"]["schemas"][name])
        };
        let events = msg["events"].as_array().expect("events");
        assert_eq!(msg["count"], events.len(), "{msg}");
        for event in events {
            match event.as_array() {
                Some(row) if row.len() == 9 => assert_row(item(0), row),
                Some(row) => assert_row(item(1), row),
                None => {
                    let (name, rejected) = item(2);
                    assert_shape(rejected, event, name);
                }
            }
        }
    }
}

/// Fails unless `row` has the length and, place by place, the types and allowed values the
/// document gives the row `name`.
fn assert_row((name, schema): (&str, &Value), row: &[Value]) {
    let places = schema["items"].as_array().unwrap();
    assert_eq!(row.len(), places.len(), "{name}: {row:?}");
    assert_eq!(schema["minItems"], places.len(), "{name}");
    for (i, (value, place)) in row.iter().zip(places).enumerate() {
        let types: Vec<&str> = match &place["type"] {
            Value::Array(t) => t.iter().filter_map(Value::as_str).collect(),
            t => vec![t.as_str().unwrap()],
        };
        let is = match value {
            Value::String(_) => "string",
            Value::Null => "null",
            Value::Object(_) => "object",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            other => panic!("{name}[{i}]: unexpected {other}"),
        };
        assert!(
            types.contains(&is),
            "{name}[{i}] is {is}, documented {types:?}"
        );
        if let Some(allowed) = place["enum"].as_array() {
            assert!(allowed.contains(value), "{name}[{i}]: {value}");
        }
    }
}

/// A row as the object it stands for, as the `/live` page shows it (`fromRow` in app.js):
/// `outcome`, `channel`, the `event` as `GET /events` shows it, and an `unavailable` one's
/// `reason`. A rejected event, already an object, is returned as it is.
fn as_object(item: Value) -> Value {
    let Value::Array(row) = item else {
        return item;
    };
    let iso = |ms: &Value| {
        let t = chrono::DateTime::from_timestamp_millis(ms.as_i64().expect("milliseconds"))
            .expect("a time");
        Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let mut event = serde_json::Map::new();
    event.insert("eventId".into(), row[2].clone());
    event.insert("userId".into(), row[3].clone());
    if !row[4].is_null() {
        event.insert("sessionId".into(), row[4].clone());
    }
    event.insert("eventType".into(), row[5].clone());
    event.insert("timestamp".into(), iso(&row[6]));
    event.insert("metadata".into(), row[7].clone());
    event.insert("receivedAt".into(), iso(&row[8]));
    let mut msg = json!({"outcome": row[0], "channel": row[1], "event": event});
    if let Some(reason) = row.get(9) {
        msg["reason"] = reason.clone();
    }
    msg
}

fn assert_shape(schema: &Value, msg: &Value, kind: &str) {
    let named = schema["properties"].as_object().unwrap();
    for field in msg.as_object().unwrap().keys() {
        assert!(
            named.contains_key(field),
            "{kind}: field {field} is not documented"
        );
    }
    for field in schema["required"].as_array().unwrap() {
        let field = field.as_str().unwrap();
        assert!(
            msg.get(field).is_some(),
            "{kind}: required {field} missing: {msg}"
        );
    }
    if let Some(allowed) = named.get("outcome").and_then(|o| o["enum"].as_array()) {
        assert!(allowed.contains(&msg["outcome"]), "{msg}");
    }
}

/// Reads `tap_events` frames until `n` events came, each frame checked against the document;
/// the events, in order, and how many frames carried them.
async fn recv_events(tap: &mut Tap, n: usize) -> (Vec<Value>, usize) {
    let mut events = Vec::new();
    let mut frames = 0;
    while events.len() < n {
        let frame = recv_json(tap).await;
        assert_eq!(frame["type"], "tap_events", "{frame}");
        assert_documented(&frame);
        events.extend(
            frame["events"]
                .as_array()
                .unwrap()
                .iter()
                .cloned()
                .map(as_object),
        );
        frames += 1;
    }
    assert_eq!(events.len(), n, "more events than expected: {events:?}");
    (events, frames)
}

fn http_with_key(app: &TestApp, key: &str) -> reqwest::RequestBuilder {
    app.http
        .post(app.url("/events/batch"))
        .header("x-api-key", key)
}

#[tokio::test]
async fn only_read_and_admin_keys_may_watch_and_never_from_the_url() {
    let app = keyed().await;
    let (_tap, ack) = subscribe(&app, Some("rd-1"), json!({})).await;
    assert_eq!(ack["type"], "tap_ack", "{ack}");
    assert_eq!(ack["scope"], "read");
    assert_documented(&ack);
    let (_tap, ack) = subscribe(&app, Some("ad-1"), json!({})).await;
    assert_eq!(ack["scope"], "admin", "{ack}");

    for (key, code) in [
        (Some("nope"), "unauthorized"),
        (None, "unauthorized"),
        (Some("in-1"), "forbidden"),
    ] {
        let (mut tap, first) = subscribe(&app, key, json!({})).await;
        assert_eq!(first["type"], "tap_error", "{key:?}: {first}");
        assert_eq!(first["code"], code, "{key:?}: {first}");
        assert_documented(&first);
        assert_eq!(recv_close_code(&mut tap).await, 1008);
    }

    // A key in the URL is not looked at.
    let url = format!("{}?apiKey=rd-1", tap_url(&app));
    let (mut tap, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    send_json(&mut tap, &json!({"type": "subscribe"})).await;
    assert_eq!(recv_json(&mut tap).await["code"], "unauthorized");

    // In a header: checked before the upgrade.
    let mut req = tap_url(&app).into_client_request().unwrap();
    req.headers_mut()
        .insert("x-admin-key", "ad-1".parse().unwrap());
    let (mut tap, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    send_json(&mut tap, &json!({"type": "subscribe"})).await;
    assert_eq!(recv_json(&mut tap).await["scope"], "admin");
    let mut req = tap_url(&app).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401);
        }
        other => panic!("a wrong header key must be refused with 401, got {other:?}"),
    }
}

#[tokio::test]
async fn shows_accepted_duplicate_and_rejected_events_with_their_errors() {
    let app = keyed().await;
    let (mut tap, ack) = subscribe(&app, Some("rd-1"), json!({})).await;
    assert_eq!(ack["type"], "tap_ack");

    // Over WebSocket: one accepted event.
    let mut req = app.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("x-api-key", "in-1".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    recv_json(&mut ws).await;
    let id = unique("tap");
    send_json(
        &mut ws,
        &json!({"type": "cart_event", "requestId": "r1", "data": item_added(&id)}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await["status"], "accepted");
    let seen = recv_events(&mut tap, 1).await.0.remove(0);
    assert_eq!(seen["outcome"], "accepted", "{seen}");
    assert_eq!(seen["channel"], "ws");
    assert_eq!(seen["event"]["eventId"], id.as_str());
    assert!(seen["event"]["receivedAt"].is_string(), "{seen}");
    // The same event recorded: its receivedAt is the one GET /events shows.
    let read = app
        .http
        .get(app.url("/events?userId=user-1&limit=1"))
        .header("x-api-key", "rd-1")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(read["events"][0]["receivedAt"], seen["event"]["receivedAt"]);

    // Over HTTP: a duplicate and a broken event.
    let broken =
        json!({"userId": "u-bad", "eventType": "checkout_started", "metadata": {"itemCount": 1.5}});
    let r = http_with_key(&app, "in-1")
        .json(&json!({"events": [item_added(&id), broken]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut got = recv_events(&mut tap, 2).await.0;
    got.sort_by_key(|m| m["outcome"].as_str().unwrap_or_default().to_owned());
    let [dup, rejected] = [&got[0], &got[1]];
    assert_eq!(dup["outcome"], "duplicate", "{dup}");
    assert_eq!(dup["channel"], "http");
    assert_eq!(rejected["outcome"], "rejected", "{rejected}");
    assert_eq!(rejected["event"]["userId"], "u-bad");
    let errors = rejected["errors"].as_array().expect("errors");
    assert!(
        errors
            .iter()
            .any(|e| e["field"] == "metadata.cartValue" && e["code"] == "required"),
        "{rejected}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e["field"] == "metadata.itemCount" && e["code"] == "invalid_type"),
        "{rejected}"
    );

    // And the counters by type.
    let (_, metrics) = app.get_text("/metrics").await;
    for line in [
        "cartstream_events_total{event_type=\"item_added\",outcome=\"accepted\"} 1",
        "cartstream_events_total{event_type=\"item_added\",outcome=\"duplicate\"} 1",
        "cartstream_events_total{event_type=\"checkout_started\",outcome=\"rejected\"} 1",
        "cartstream_events_total{event_type=\"cart_viewed\",outcome=\"accepted\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

/// A rejected WebSocket event is shown as it was sent: keys no rule reads, their order, and a
/// batch item that is not an object. The WebSocket parser keeps only an event's six fields;
/// for a rejected event while someone watches, the message is parsed again, whole.
#[tokio::test]
async fn a_rejected_ws_event_is_shown_whole_as_sent() {
    let app = keyed().await;
    let (mut tap, _) = subscribe(&app, Some("rd-1"), json!({})).await;
    let mut req = app.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("x-api-key", "in-1".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    recv_json(&mut ws).await;
    let event = r#"{"zeta":[1,{"a":null}],"userId":"u-raw","eventType":"checkout_started","userId":"u-raw2","metadata":{"itemCount":1.5}}"#;
    let sent = format!(r#"{{"type":"cart_event_batch","requestId":"r1","data":[{event},7]}}"#);
    ws.send(Message::text(sent)).await.unwrap();
    let reply = recv_json(&mut ws).await;
    assert_eq!(reply["rejected"], 2, "{reply}");
    let (got, _) = recv_events(&mut tap, 2).await;
    assert_eq!(got[0]["outcome"], "rejected", "{got:?}");
    // As a parsed JSON object holds it: a repeated key's last value, in its first place.
    assert_eq!(
        got[0]["event"].to_string(),
        r#"{"zeta":[1,{"a":null}],"userId":"u-raw2","eventType":"checkout_started","metadata":{"itemCount":1.5}}"#
    );
    assert_eq!(got[1]["outcome"], "rejected", "{got:?}");
    assert_eq!(got[1]["event"], json!(7));
}

#[tokio::test]
async fn filters_by_type_user_and_outcome_on_the_server() {
    let app = TestApp::spawn().await;
    let (mut by_type, _) = subscribe(&app, None, json!({"eventTypes": ["cart_viewed"]})).await;
    let (mut by_user, _) = subscribe(&app, None, json!({"userId": "u-2"})).await;
    let (mut by_outcome, _) = subscribe(&app, None, json!({"outcomes": ["rejected"]})).await;
    let (mut changed, _) = subscribe(&app, None, json!({"userId": "nobody"})).await;
    send_json(
        &mut changed,
        &json!({"type": "subscribe", "filter": {"eventTypes": ["item_added"], "userId": "u-1"}}),
    )
    .await;
    let (_, bad) = subscribe(&app, None, json!({"outcomes": ["lost"]})).await;
    assert_eq!(bad["code"], "invalid_message", "{bad}");

    let events = json!({"events": [
        {"eventId": unique("f"), "userId": "u-1", "eventType": "item_added", "metadata": {"productId": "p"}},
        {"eventId": unique("f"), "userId": "u-2", "eventType": "cart_viewed"},
        {"eventId": unique("f"), "userId": "u-1", "eventType": "cart_viewed"},
        {"userId": "u-2", "eventType": "item_added"},
        {"eventId": unique("f"), "userId": "u-3", "eventType": "cart_cleared"},
    ]});
    // The filter change above is applied before these: the server reads it first, then the
    // events are published; a round trip proves it was read.
    let (_, sync) = subscribe(&app, None, json!({})).await;
    assert_eq!(sync["type"], "tap_ack");
    let (status, _) = app.post_batch(&events).await;
    assert_eq!(status, 200);
    let (_, last) = app
        .post_batch(&json!({"events": [{"eventId": unique("end"), "userId": "end", "eventType": "cart_viewed"}]}))
        .await;
    assert_eq!(last["results"][0]["status"], "accepted");

    let users = |msgs: &[Value]| -> Vec<String> {
        msgs.iter()
            .map(|m| {
                format!(
                    "{}/{}",
                    m["event"]["userId"].as_str().unwrap_or("?"),
                    m["outcome"].as_str().unwrap_or("?")
                )
            })
            .collect()
    };
    let by_type_seen = recv_events(&mut by_type, 3).await.0;
    assert_eq!(
        users(&by_type_seen),
        ["u-2/accepted", "u-1/accepted", "end/accepted"]
    );
    let mut u = users(&recv_events(&mut by_user, 2).await.0);
    u.sort();
    assert_eq!(u, ["u-2/accepted", "u-2/rejected"]);
    let only = recv_events(&mut by_outcome, 1).await.0.remove(0);
    assert_eq!(only["outcome"], "rejected");
    let changed_seen = recv_events(&mut changed, 1).await.0.remove(0);
    assert_eq!(
        changed_seen["event"]["eventType"], "item_added",
        "{changed_seen}"
    );
    assert_eq!(changed_seen["event"]["userId"], "u-1");

    // Nothing else arrives after the last matching one: each tap's next message is the
    // `end` event only where the filter lets it through; a ping proves the rest is empty.
    for (tap, name) in [
        (&mut by_user, "by_user"),
        (&mut by_outcome, "by_outcome"),
        (&mut changed, "changed"),
    ] {
        use futures_util::SinkExt;
        tap.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
        let next = tokio::time::timeout(REPLY_TIMEOUT, tap.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            matches!(next, Message::Pong(_)),
            "{name} got more: {next:?}"
        );
    }
}

#[tokio::test]
async fn a_committed_batch_comes_in_one_frame_that_counts_its_events() {
    let app = TestApp::spawn().await;
    let (mut tap, _) = subscribe(&app, None, json!({})).await;
    let (mut odd, _) = subscribe(&app, None, json!({"userId": "u-odd"})).await;
    let ids: Vec<String> = (0..50).map(|_| unique("burst")).collect();
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let user = if i % 2 == 1 { "u-odd" } else { "u-even" };
            json!({"eventId": id, "userId": user, "eventType": "cart_viewed", "metadata": {"i": i, "s": "<\"\\\u{1}é>"}})
        })
        .collect();
    let (status, _) = app.post_batch(&json!({ "events": events })).await;
    assert_eq!(status, 200);
    let (seen, frames) = recv_events(&mut tap, 50).await;
    assert_eq!(frames, 1, "one group, one frame");
    let seen_ids: Vec<&str> = seen
        .iter()
        .map(|e| e["event"]["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(seen_ids, ids, "in the order sent");
    for (i, e) in seen.iter().enumerate() {
        assert_eq!(
            e["event"]["metadata"], events[i]["metadata"],
            "metadata as sent"
        );
    }
    // A filtered subscriber gets its share of the same group, also in one frame.
    let (odd_seen, frames) = recv_events(&mut odd, 25).await;
    assert_eq!(frames, 1);
    assert!(odd_seen.iter().all(|e| e["event"]["userId"] == "u-odd"));
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_is_told_how_many_it_missed_and_ingest_goes_on() {
    let app = TestApp::spawn_with(|s| s.tap_buffer = 8).await;
    // A small receive buffer, so the server's writes block soon.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let (mut tap, _) = tokio_tungstenite::client_async(
        tap_url(&app),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    send_json(&mut tap, &json!({"type": "subscribe"})).await;
    assert_eq!(recv_json(&mut tap).await["type"], "tap_ack");

    // About 20 MB of events while the subscriber reads nothing: every batch is answered.
    let pad = "x".repeat(12 * 1024);
    let total: u64 = 20 * 80;
    for _ in 0..20 {
        let events: Vec<Value> = (0..80)
            .map(|_| json!({"eventId": unique("slow"), "userId": "u", "eventType": "cart_viewed", "metadata": {"pad": pad}}))
            .collect();
        let (status, body) = app.post_batch(&json!({ "events": events })).await;
        assert_eq!(status, 200);
        assert!(
            body["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["status"] == "accepted"),
            "{body}"
        );
    }
    // Now read: every event is either delivered or counted as skipped.
    let (mut delivered, mut skipped) = (0u64, 0u64);
    while delivered + skipped < total {
        let m = recv_json(&mut tap).await;
        match m["type"].as_str() {
            Some("tap_events") => delivered += m["count"].as_u64().expect("a count"),
            Some("skipped") => {
                assert_documented(&m);
                skipped += m["count"].as_u64().expect("a count");
            }
            _ => panic!("unexpected {m}"),
        }
    }
    assert_eq!(delivered + skipped, total);
    assert!(
        skipped > 0,
        "a subscriber that read nothing for 20 MB must have skipped some"
    );
}

/// A client's close is answered with a close frame (its code echoed: 1000 for a normal
/// close), not with a dropped connection.
#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    let app = TestApp::spawn().await;
    let (mut tap, ack) = subscribe(&app, None, json!({})).await;
    assert_eq!(ack["type"], "tap_ack", "{ack}");
    tap.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    })))
    .await
    .expect("the close goes out");
    assert_eq!(recv_close_code(&mut tap).await, 1000);
}
