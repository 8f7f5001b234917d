//! The WebSocket message parser: any text frame gets either a message or a refusal whose code
//! follows PROTOCOL.md section 3, and an accepted message, written out again, parses to itself.
//! And the parser, which reads the text straight into the envelope and each event's fields,
//! answers exactly as the parser it replaced, which built the JSON tree first (`reference`).
#![no_main]

use cartstream::adapters::inbound::wire::ErrorCode;
use cartstream::adapters::inbound::ws::protocol::{
    parse, reference, ClientMessage, EventData, Reply, REQUEST_ID_MAX,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

/// Small, so the fuzzer reaches the "too many events" branch.
const MAX_BATCH: usize = 4;

fuzz_target!(|data: &[u8]| {
    // The WebSocket layer closes the connection on a text frame that is not UTF-8 (1007), so
    // the parser only ever sees a `str`.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let tree = serde_json::from_str::<Value>(text).ok();
    let fields = parse(text, MAX_BATCH, false);
    assert_eq!(fields, reference::parse(text, MAX_BATCH, false), "{text:?}");
    let raw = parse(text, MAX_BATCH, true);
    assert_eq!(raw, reference::parse(text, MAX_BATCH, true), "{text:?}");
    match raw {
        Ok(message) => accepted(text, tree, message),
        Err(refusal) => {
            let object = match tree {
                Some(Value::Object(o)) => Some(o),
                _ => None,
            };
            // `invalid_json` exactly for what is not a JSON object.
            assert_eq!(
                refusal.code == ErrorCode::InvalidJson,
                object.is_none(),
                "{text:?}: {refusal:?}"
            );
            assert!(
                matches!(
                    refusal.code,
                    ErrorCode::InvalidJson
                        | ErrorCode::UnsupportedMessageType
                        | ErrorCode::InvalidMessage
                ),
                "{text:?}: {refusal:?}"
            );
            assert!(!refusal.message.is_empty());
            // An echoed requestId is the one sent, and a valid one.
            if let Some(id) = &refusal.request_id {
                assert!(id.chars().count() <= REQUEST_ID_MAX, "{text:?}");
                let sent = object.as_ref().and_then(|o| o.get("requestId"));
                assert_eq!(sent, Some(&Value::String(id.clone())), "{text:?}");
            }
            // The reply is one JSON object.
            let reply = Reply::error(refusal.request_id, refusal.code, refusal.message).to_text();
            let reply: Value = serde_json::from_str(&reply).expect("a reply is JSON");
            assert_eq!(reply["type"], "error");
        }
    }
});

/// An event the parser kept whole.
fn raw_value(data: &EventData) -> Value {
    match data {
        EventData::Raw(v) => v.clone(),
        EventData::Fields(f) => panic!("asked for whole events, got fields {f:?}"),
    }
}

fn accepted(text: &str, tree: Option<Value>, message: ClientMessage) {
    let Some(Value::Object(sent)) = tree else {
        panic!("{text:?} was accepted but is not a JSON object");
    };
    let (kind, request_id, data) = match &message {
        ClientMessage::Ping { request_id } => ("ping", request_id, None),
        ClientMessage::Event { request_id, data } => {
            let data = raw_value(data);
            assert!(data.is_object(), "{text:?}");
            ("cart_event", request_id, Some(data))
        }
        ClientMessage::Batch { request_id, data } => {
            assert!((1..=MAX_BATCH).contains(&data.len()), "{text:?}");
            (
                "cart_event_batch",
                request_id,
                Some(Value::Array(data.iter().map(raw_value).collect())),
            )
        }
    };
    assert_eq!(sent.get("type"), Some(&json!(kind)), "{text:?}");
    assert_eq!(
        sent.get("requestId"),
        request_id.clone().map(Value::String).as_ref(),
        "{text:?}"
    );
    // A ping's `data`, like any other key, is ignored.
    if kind != "ping" {
        assert_eq!(sent.get("data"), data.as_ref(), "{text:?}");
    }

    // Written out again, the message is the same message: nothing in its data is lost or
    // changed by a parse and a serialization (numbers included).
    let mut again = Map::new();
    again.insert("type".into(), json!(kind));
    if let Some(id) = request_id {
        again.insert("requestId".into(), json!(id));
    }
    if let Some(d) = data {
        again.insert("data".into(), d);
    }
    let again = Value::Object(again).to_string();
    assert_eq!(
        parse(&again, MAX_BATCH, true).as_ref(),
        Ok(&message),
        "{text:?} re-encoded as {again:?}"
    );
}
