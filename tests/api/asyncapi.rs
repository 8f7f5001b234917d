//! The AsyncAPI document of the WebSocket channel (asyncapi/asyncapi.json): served as checked
//! in, with the OpenAPI document's event schemas and the server's defaults, and a real session
//! whose every server message and close code the document describes. The session is also
//! written to [`SESSION`] for scripts/asyncapi/check.mjs, which validates each message
//! against the document's JSON schemas (scripts/asyncapi/check.sh runs both).

use crate::helpers::*;
use cartstream::adapters::inbound::ws::protocol::REQUEST_ID_MAX;
use cartstream::app::config::Settings;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/asyncapi/asyncapi.json");
const OPENAPI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
/// Where the real session is written for scripts/asyncapi/check.mjs.
const SESSION: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/asyncapi-session.json");
/// The OpenAPI schemas the AsyncAPI document shares, with every schema they reference.
const SHARED_ROOTS: [&str; 3] = ["CartEvent", "BatchItemResult", "FieldErrorBody"];
const UPDATE_HINT: &str =
    "regenerate with CARTSTREAM_UPDATE_ASYNCAPI=1 cargo test --test api asyncapi::, then rebuild";

fn read_json(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn the_served_document_is_the_checked_in_file() {
    let app = TestApp::spawn().await;
    let served = app
        .http
        .get(app.url("/asyncapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status().as_u16(), 200);
    assert_eq!(
        served.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served = served.text().await.unwrap();
    let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap();
    assert!(
        served == checked_in,
        "the binary serves an older asyncapi/asyncapi.json: rebuild"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(
        doc["channels"]["eventStream"]["address"], "/events/stream",
        "the channel is the server's WebSocket path"
    );
    let post = app
        .http
        .post(app.url("/asyncapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);
    assert_eq!(post.headers()["allow"], "GET");
    // /docs links to it: the OpenAPI description names it.
    let (_, openapi) = app.get_json("/openapi.json").await;
    assert!(openapi["info"]["description"]
        .as_str()
        .unwrap()
        .contains("[/asyncapi.json](/asyncapi.json)"));
}

/// The names of every schema `roots` reference in `schemas`, transitively, roots included.
fn closure(schemas: &Map<String, Value>, roots: &[&str]) -> BTreeSet<String> {
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(
                            r.strip_prefix("#/components/schemas/")
                                .unwrap_or_else(|| panic!("unexpected reference {r}"))
                                .to_owned(),
                        ),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.iter().map(|r| (*r).to_owned()).collect();
    while let Some(name) = todo.pop() {
        if seen.insert(name.clone()) {
            let schema = schemas
                .get(&name)
                .unwrap_or_else(|| panic!("no schema {name}"));
            refs(schema, &mut todo);
        }
    }
    seen
}

/// An OpenAPI 3.0 schema as an AsyncAPI 3.0 schema: the one keyword the two spell
/// differently is `discriminator`, an object in OpenAPI and its property name in AsyncAPI.
/// (`oneOf` still picks the variant: each fixes `eventType` with an `enum`.)
fn as_asyncapi(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("discriminator", Value::Object(d)) => (k.clone(), d["propertyName"].clone()),
                    _ => (k.clone(), as_asyncapi(v)),
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(as_asyncapi).collect()),
        other => other.clone(),
    }
}

#[test]
fn event_schemas_are_the_openapi_documents() {
    let openapi = read_json(OPENAPI);
    let mut doc = read_json(CHECKED_IN);
    let theirs = openapi["components"]["schemas"].as_object().unwrap();
    let shared = closure(theirs, &SHARED_ROOTS);
    assert!(shared.len() > 20, "every event type and its metadata");
    if std::env::var("CARTSTREAM_UPDATE_ASYNCAPI").is_ok_and(|v| v == "1") {
        let ours = doc["components"]["schemas"].as_object_mut().unwrap();
        for name in &shared {
            ours.insert(name.clone(), as_asyncapi(&theirs[name]));
        }
        let pretty = serde_json::to_string_pretty(&doc).unwrap() + "\n";
        std::fs::write(CHECKED_IN, pretty).unwrap();
    }
    let ours = &doc["components"]["schemas"];
    for name in &shared {
        assert!(
            ours[name] == as_asyncapi(&theirs[name]),
            "schema {name} differs from the OpenAPI document's; {UPDATE_HINT}"
        );
    }
    // The messages use them where the event, a batch result and a broken rule travel.
    let s = ours.as_object().unwrap();
    assert_eq!(
        s["CartEventMessage"]["properties"]["data"]["allOf"][0]["$ref"],
        "#/components/schemas/CartEvent"
    );
    assert_eq!(
        s["CartEventBatchMessage"]["properties"]["data"]["items"]["$ref"],
        "#/components/schemas/CartEvent"
    );
    assert_eq!(
        s["BatchAck"]["properties"]["results"]["items"]["$ref"],
        "#/components/schemas/BatchItemResult"
    );
    assert_eq!(
        s["ErrorReply"]["properties"]["details"]["items"]["$ref"],
        "#/components/schemas/FieldErrorBody"
    );
    // One version for both documents, and the same ways to send a key.
    assert_eq!(doc["info"]["version"], openapi["info"]["version"]);
    for (name, scheme) in doc["components"]["securitySchemes"].as_object().unwrap() {
        let theirs = &openapi["components"]["securitySchemes"][name];
        assert_eq!(scheme["name"], theirs["name"], "{name}");
        assert_eq!(scheme["in"], theirs["in"], "{name}");
        assert_eq!(scheme["scheme"], theirs["scheme"], "{name}");
    }
}

#[test]
fn documented_defaults_are_the_servers() {
    let doc = read_json(CHECKED_IN);
    let d = Settings::default();
    let channel = &doc["channels"]["eventStream"];
    let limit = |name: &str| {
        channel["x-cartstream-limits"][name]["default"]
            .as_u64()
            .unwrap_or_else(|| panic!("x-cartstream-limits.{name}.default"))
    };
    let secs = |t: std::time::Duration| t.as_secs();
    assert_eq!(limit("maxMessageBytes"), d.max_message_bytes as u64);
    assert_eq!(limit("maxBatchEvents"), d.max_batch_events as u64);
    assert_eq!(limit("maxInFlight"), d.ws_max_in_flight as u64);
    assert_eq!(limit("requestIdMaxChars"), REQUEST_ID_MAX as u64);
    assert_eq!(limit("pingIntervalSeconds"), secs(d.ws_ping_interval));
    assert_eq!(limit("maxMissedPings"), u64::from(d.ws_max_missed_pings));
    assert_eq!(
        limit("handshakeTimeoutSeconds"),
        secs(d.ws_handshake_timeout)
    );
    assert_eq!(limit("eventsPerSecond"), u64::from(d.rate_limit_per_second));
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["CartEventBatchMessage"]["properties"]["data"]["maxItems"],
        d.max_batch_events
    );
    assert_eq!(schemas["RequestId"]["maxLength"], REQUEST_ID_MAX);
    assert_eq!(schemas["EchoedRequestId"]["maxLength"], REQUEST_ID_MAX);
    let ack = &doc["components"]["messages"]["connectionAck"]["examples"][0]["payload"];
    assert_eq!(
        ack["limits"],
        json!({"maxMessageBytes": d.max_message_bytes, "maxBatchEvents": d.max_batch_events})
    );
}

/// One message sent (or none, for `connection_ack`) with what came back.
struct Exchange {
    note: &'static str,
    /// What the document says of the message: `valid`, `invalid` (its schema refuses it, as
    /// the server refused it or part of it), `unparseable` (no message of the document) or
    /// `closes` (the server closes instead of answering).
    expect: &'static str,
    send: Value,
    reply: Option<Value>,
    close: Option<(u16, String)>,
    /// The close answers a valid close frame of the client's: it carries no reason.
    answers_client_close: bool,
}

impl Exchange {
    fn replied(note: &'static str, expect: &'static str, send: Value, reply: Value) -> Self {
        Self {
            note,
            expect,
            send,
            reply: Some(reply),
            close: None,
            answers_client_close: false,
        }
    }

    fn closed(note: &'static str, send: Value, close: (u16, String)) -> Self {
        Self {
            note,
            expect: "closes",
            send,
            reply: None,
            close: Some(close),
            answers_client_close: false,
        }
    }

    fn json(&self) -> Value {
        json!({
            "note": self.note,
            "expect": self.expect,
            "send": self.send,
            "reply": self.reply,
            "close": self.close.as_ref().map(|(code, reason)| json!({"code": code, "reason": reason})),
            "answersClientClose": self.answers_client_close,
        })
    }
}

/// Sends `frame` and waits for its reply.
async fn ask(
    ws: &mut Ws,
    note: &'static str,
    expect: &'static str,
    frame: Message,
    send: Value,
) -> Exchange {
    ws.send(frame).await.unwrap();
    let reply = recv_json(ws).await;
    Exchange::replied(note, expect, send, reply)
}

async fn ask_json(ws: &mut Ws, note: &'static str, expect: &'static str, v: Value) -> Exchange {
    ask(ws, note, expect, Message::text(v.to_string()), v).await
}

/// Reads until the server's close frame: its code and reason.
async fn recv_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let msg = tokio::time::timeout(REPLY_TIMEOUT, ws.next())
            .await
            .expect("a close in time")
            .expect("a close frame before the end")
            .expect("a valid frame");
        match msg {
            Message::Close(Some(f)) => return (u16::from(f.code), f.reason.to_string()),
            Message::Close(None) => return (1005, String::new()),
            Message::Text(t) => panic!("unexpected reply before the close: {t}"),
            _ => {}
        }
    }
}

/// Every exchange of a session on a default server: each kind of reply, then a message over
/// the size limit.
async fn default_session() -> Vec<Exchange> {
    let app = TestApp::spawn().await;
    let (mut ws, ack) = app.ws().await;
    let mut out = vec![Exchange::replied(
        "the first message",
        "valid",
        Value::Null,
        ack,
    )];
    let id = unique("asyncapi");
    let event = json!({"type": "cart_event", "requestId": "r-1", "data": item_added(&id)});
    out.push(ask_json(&mut ws, "a valid event", "valid", event.clone()).await);
    let mut again = event;
    again["requestId"] = json!("r-2");
    out.push(ask_json(&mut ws, "the same event again", "valid", again).await);
    let invalid = json!({"type": "cart_event", "requestId": "r-3", "data":
        {"userId": "", "eventType": "checkout_started", "metadata": {"itemCount": 1.5}}});
    out.push(ask_json(&mut ws, "an invalid event", "invalid", invalid).await);
    let derived = json!({"type": "cart_event", "data": {"userId": "u-asyncapi",
        "eventType": "cart_viewed", "timestamp": now_rfc3339()}});
    out.push(ask_json(&mut ws, "no requestId, no eventId", "valid", derived).await);
    let (a, b) = (unique("a"), unique("b"));
    let mixed = json!({"type": "cart_event_batch", "requestId": "r-4", "data": [
        item_added(&a), item_added(&a), item_added(&b), {"eventId": "x", "eventType": "item_added"}]});
    out.push(ask_json(&mut ws, "a batch with a bad event", "invalid", mixed).await);
    let good = json!({"type": "cart_event_batch", "requestId": "r-5", "data": [
        item_added(&unique("c")), {"userId": "u-asyncapi", "eventType": "checkout_started",
        "metadata": {"cartValue": 59.98, "itemCount": 2, "currency": "USD"}}]});
    out.push(ask_json(&mut ws, "a valid batch", "valid", good).await);
    out.push(
        ask_json(
            &mut ws,
            "ping",
            "valid",
            json!({"type": "ping", "requestId": "r-6"}),
        )
        .await,
    );
    out.push(
        ask_json(
            &mut ws,
            "a ping without requestId",
            "valid",
            json!({"type": "ping"}),
        )
        .await,
    );
    let text = "not json";
    out.push(
        ask(
            &mut ws,
            "not JSON",
            "unparseable",
            Message::text(text),
            json!(text),
        )
        .await,
    );
    let unknown = json!({"type": "no_such_type", "requestId": "r-7"});
    out.push(ask_json(&mut ws, "an unknown type", "unparseable", unknown).await);
    let empty = json!({"type": "cart_event_batch", "requestId": "r-8", "data": []});
    out.push(ask_json(&mut ws, "an empty batch", "invalid", empty).await);
    let bad_id = json!({"type": "ping", "requestId": 5});
    out.push(ask_json(&mut ws, "a requestId that is no string", "invalid", bad_id).await);
    let binary = Message::binary(vec![0x7b, 0x7d]);
    let described = json!({"binaryFrame": "7b7d"});
    out.push(ask(&mut ws, "a binary frame", "unparseable", binary, described).await);
    let max = app_limit(&out[0], "maxMessageBytes");
    ws.send(Message::text("x".repeat(max + 1))).await.unwrap();
    out.push(Exchange::closed(
        "a message one byte over maxMessageBytes",
        json!({"textFrameOfBytes": max + 1}),
        recv_close(&mut ws).await,
    ));
    out
}

fn app_limit(ack: &Exchange, name: &str) -> usize {
    let ack = ack.reply.as_ref().unwrap();
    usize::try_from(ack["limits"][name].as_u64().unwrap()).unwrap()
}

/// A session on a server with a tight rate limit: a `rate_limited` error, then the client's
/// close answered.
async fn rate_limited_session() -> Vec<Exchange> {
    let app = TestApp::spawn_with(|s| {
        s.rate_limit_per_second = 1;
        s.rate_limit_burst = 2;
        s.max_batch_events = 2;
    })
    .await;
    let (mut ws, ack) = app.ws().await;
    let mut out = vec![Exchange::replied(
        "the first message",
        "valid",
        Value::Null,
        ack,
    )];
    // The burst is spent by however many events get through; one second refills one.
    for _ in 0..10 {
        let event =
            json!({"type": "cart_event", "requestId": "r-9", "data": item_added(&unique("rl"))});
        let ex = ask_json(&mut ws, "an event past the rate limit", "valid", event).await;
        let limited = ex.reply.as_ref().unwrap()["code"] == "rate_limited";
        out.push(ex);
        if limited {
            break;
        }
    }
    ws.close(None).await.unwrap();
    out.push(Exchange {
        answers_client_close: true,
        ..Exchange::closed(
            "the client closes without a code",
            json!({"closeFrame": null}),
            recv_close(&mut ws).await,
        )
    });
    out
}

/// The other ways a connection ends: text that is not UTF-8, a malformed close frame, a
/// client that answers no pings, the server shutting down; and `unavailable`.
async fn closing_sessions() -> Vec<(&'static str, Vec<Exchange>)> {
    let mut app = TestApp::spawn().await;
    let ping = json!({"type": "ping", "requestId": "r-10"});

    let (mut ws, ack) = app.ws().await;
    let mut utf8 = vec![Exchange::replied(
        "the first message",
        "valid",
        Value::Null,
        ack,
    )];
    utf8.push(ask_json(&mut ws, "ping", "valid", ping.clone()).await);
    let bad = Frame::message(vec![0xff, 0xfe, b'{'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(bad)).await.unwrap();
    let send = json!({"textFrameBytes": "fffe7b"});
    utf8.push(Exchange::closed(
        "a text frame that is not UTF-8",
        send,
        recv_close(&mut ws).await,
    ));

    let (mut ws, ack) = app.ws().await;
    let mut protocol = vec![Exchange::replied(
        "the first message",
        "valid",
        Value::Null,
        ack,
    )];
    let header = FrameHeader {
        opcode: OpCode::Control(Control::Close),
        ..FrameHeader::default()
    };
    ws.send(Message::Frame(Frame::from_payload(
        header,
        vec![0x03].into(),
    )))
    .await
    .unwrap();
    let send = json!({"closeFramePayload": "03"});
    protocol.push(Exchange::closed(
        "a close frame of 1 byte",
        send,
        recv_close(&mut ws).await,
    ));

    let (mut ws, ack) = app.ws().await;
    let mut shutdown = vec![Exchange::replied(
        "the first message",
        "valid",
        Value::Null,
        ack,
    )];
    shutdown.push(ask_json(&mut ws, "ping", "valid", ping).await);
    app.trigger_stop();
    let send = json!({"serverShutdown": true});
    shutdown.push(Exchange::closed(
        "the server shuts down",
        send,
        recv_close(&mut ws).await,
    ));
    app.join().await.unwrap();

    let app = TestApp::spawn_with(|s| s.ws_ping_interval = Duration::from_millis(100)).await;
    let (ws, ack) = app.ws().await;
    let mut pings = vec![Exchange::replied(
        "the first message",
        "valid",
        Value::Null,
        ack,
    )];
    // Not reading means tungstenite answers no ping; the server counts the close before it
    // sends it, so wait for that over HTTP (as tests/api/ws.rs does).
    poll_until(
        Duration::from_secs(10),
        || app.get_text("/metrics"),
        |(_, m)| m.contains("cartstream_ws_closes_total{reason=\"ping_timeout\"} 1"),
    )
    .await;
    let mut ws = ws;
    let send = json!({"answersNoPings": true});
    pings.push(Exchange::closed(
        "the client answers no pings",
        send,
        recv_close(&mut ws).await,
    ));

    let app = TestApp::spawn_with_ports(|_| {}, crate::failing::ports_with_failing_store).await;
    let (mut ws, ack) = app.ws().await;
    let mut down = vec![Exchange::replied(
        "the first message",
        "valid",
        Value::Null,
        ack,
    )];
    let event =
        json!({"type": "cart_event", "requestId": "r-11", "data": item_added(&unique("u"))});
    down.push(ask_json(&mut ws, "an event the store cannot record", "valid", event).await);
    let batch = json!({"type": "cart_event_batch", "requestId": "r-12", "data": [item_added(&unique("u"))]});
    down.push(ask_json(&mut ws, "a batch the store cannot record", "valid", batch).await);

    vec![
        ("invalid-utf8", utf8),
        ("protocol-error", protocol),
        ("shutdown", shutdown),
        ("ping-timeout", pings),
        ("store-down", down),
    ]
}

/// The schema of the document's message whose payload fixes `type`.
fn payload_schema<'a>(doc: &'a Value, message_type: &str) -> Option<&'a Value> {
    let schemas = &doc["components"]["schemas"];
    doc["components"]["messages"]
        .as_object()?
        .values()
        .filter_map(|m| m["payload"]["$ref"].as_str())
        .filter_map(|r| r.strip_prefix("#/components/schemas/"))
        .map(|name| &schemas[name])
        .find(|s| s["properties"]["type"]["const"] == message_type)
}

/// What is wrong with a server message by the document's top-level schema of it: a field
/// the schema does not name, or a required one missing. (check.mjs validates everything.)
fn shape_problem(doc: &Value, msg: &Value) -> Option<String> {
    let kind = msg["type"].as_str().unwrap_or_default();
    let Some(schema) = payload_schema(doc, kind) else {
        return Some(format!("no message of type {kind:?}"));
    };
    let named = schema["properties"].as_object().unwrap();
    let fields = msg.as_object().unwrap();
    if let Some(extra) = fields.keys().find(|k| !named.contains_key(*k)) {
        return Some(format!("{kind}: field {extra} is not documented"));
    }
    let required = schema["required"].as_array().unwrap();
    required
        .iter()
        .filter_map(Value::as_str)
        .find(|r| !fields.contains_key(*r))
        .map(|r| format!("{kind}: required field {r} is missing"))
}

#[tokio::test]
async fn every_message_of_a_real_session_is_documented() {
    let mut sessions = vec![
        ("defaults", default_session().await),
        ("rate-limited", rate_limited_session().await),
    ];
    sessions.extend(closing_sessions().await);
    let capture = json!({"sessions": sessions.iter().map(|(name, exchanges)| json!({
        "name": name,
        "exchanges": exchanges.iter().map(Exchange::json).collect::<Vec<_>>(),
    })).collect::<Vec<_>>()});
    std::fs::write(SESSION, serde_json::to_string_pretty(&capture).unwrap()).unwrap();

    let doc = read_json(CHECKED_IN);
    let mut seen = BTreeSet::new();
    let mut codes = BTreeSet::new();
    for (name, exchanges) in &sessions {
        for ex in exchanges {
            if let Some(reply) = &ex.reply {
                if let Some(problem) = shape_problem(&doc, reply) {
                    panic!("{name}, {}: {problem}: {reply}", ex.note);
                }
                seen.insert(reply["type"].as_str().unwrap().to_owned());
                if let Some(code) = reply["code"].as_str() {
                    codes.insert(code.to_owned());
                }
            }
            if let Some((code, reason)) = &ex.close {
                let documented =
                    &doc["channels"]["eventStream"]["x-cartstream-close-codes"][code.to_string()];
                assert_eq!(
                    documented["reason"], **reason,
                    "{name}, {}: close {code}",
                    ex.note
                );
            }
        }
    }
    let all = ["batch_ack", "connection_ack", "error", "event_ack", "pong"];
    assert_eq!(seen, all.iter().map(|s| (*s).to_owned()).collect());
    let wanted = [
        "invalid_json",
        "invalid_message",
        "rate_limited",
        "unavailable",
        "unsupported_message_type",
        "validation_failed",
    ];
    assert_eq!(codes, wanted.iter().map(|s| (*s).to_owned()).collect());
    let closes: Vec<u16> = sessions
        .iter()
        .flat_map(|(_, e)| e.iter().filter_map(|x| x.close.as_ref().map(|c| c.0)))
        .collect();
    assert_eq!(closes, [1009, 1000, 1007, 1002, 1001, 1011]);
}
