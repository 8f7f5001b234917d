//! The WebSocket message parser: any text frame gets either a message or a refusal whose code
//! follows PROTOCOL.md section 3, and an accepted message, written out again, parses to itself.
//! And the parser, which reads the text straight into the envelope and each event's fields,
//! answers exactly as the parser it replaced, which built the JSON tree first (`reference`).
#![no_main]

use cartstream::adapters::inbound::wire::ErrorCode;
use cartstream::adapters::inbound::ws::protocol::{
    parse, ClientMessage, EventData, Refusal, Reply, REQUEST_ID_MAX,
};
use cartstream::domain::EventFields;
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
    let want = reference(text, MAX_BATCH);
    let fields = parse(text, MAX_BATCH, false);
    assert_eq!(fields, expected(&want, false), "{text:?}");
    let raw = parse(text, MAX_BATCH, true);
    assert_eq!(raw, expected(&want, true), "{text:?}");
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

/// A message as the parser before issue 18 gave it: each event as its JSON value.
enum Reference {
    Event(Option<String>, Value),
    Batch(Option<String>, Vec<Value>),
    Ping(Option<String>),
}

/// The parser before issue 18 (a JSON tree, then the envelope taken out of its map), as kept
/// in the crate's tests (src/adapters/inbound/ws/protocol/tests.rs).
fn reference(text: &str, max_batch: usize) -> Result<Reference, Refusal> {
    let refusal = |request_id, code, message: String| Refusal {
        request_id,
        code,
        message,
    };
    let value: Value = serde_json::from_str(text).map_err(|e| {
        refusal(
            None,
            ErrorCode::InvalidJson,
            format!("the message is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(mut obj) = value else {
        return Err(refusal(
            None,
            ErrorCode::InvalidJson,
            "the message must be a JSON object".into(),
        ));
    };
    let (request_id, bad_request_id) = match obj.remove("requestId") {
        None => (None, None),
        Some(Value::String(s)) if s.chars().count() <= REQUEST_ID_MAX => (Some(s), None),
        Some(Value::String(_)) => (
            None,
            Some(format!(
                "requestId must be at most {REQUEST_ID_MAX} characters"
            )),
        ),
        Some(_) => (None, Some("requestId must be a string".to_owned())),
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) => match t.as_str() {
            "cart_event" | "cart_event_batch" | "ping" => Ok(t.clone()),
            _ => Err(format!(
                "unsupported message type {t:?}; expected cart_event, cart_event_batch or ping"
            )),
        },
        Some(_) => Err("type must be a string: cart_event, cart_event_batch or ping".to_owned()),
        None => Err(
            "the message has no type; expected cart_event, cart_event_batch or ping".to_owned(),
        ),
    };
    let kind =
        kind.map_err(|m| refusal(request_id.clone(), ErrorCode::UnsupportedMessageType, m))?;
    if let Some(message) = bad_request_id {
        return Err(refusal(None, ErrorCode::InvalidMessage, message));
    }
    let data = obj.remove("data");
    let refuse = |m: String| Err(refusal(request_id.clone(), ErrorCode::InvalidMessage, m));
    match kind.as_str() {
        "ping" => Ok(Reference::Ping(request_id)),
        "cart_event" => match data {
            Some(data @ Value::Object(_)) => Ok(Reference::Event(request_id, data)),
            Some(_) => refuse("data must be an event object".into()),
            None => refuse("data is required: the event object".into()),
        },
        _ => match data {
            Some(Value::Array(data)) if data.is_empty() => {
                refuse("data must hold at least one event".into())
            }
            Some(Value::Array(data)) if data.len() > max_batch => refuse(format!(
                "data holds {} events; at most {max_batch} are allowed",
                data.len()
            )),
            Some(Value::Array(data)) => Ok(Reference::Batch(request_id, data)),
            Some(_) => refuse("data must be an array of events".into()),
            None => refuse("data is required: an array of events".into()),
        },
    }
}

/// The reference's answer in the parser's terms: with `raw` every event as its value; without,
/// an object by its fields (as validation took them from the object) and anything else as its
/// value.
fn expected(reference: &Result<Reference, Refusal>, raw: bool) -> Result<ClientMessage, Refusal> {
    let event = |v: &Value| match v {
        Value::Object(obj) if !raw => EventData::Fields(Box::new(EventFields::from_object(obj.clone()))),
        v => EventData::Raw(v.clone()),
    };
    match reference {
        Ok(Reference::Event(request_id, v)) => Ok(ClientMessage::Event {
            request_id: request_id.clone(),
            data: event(v),
        }),
        Ok(Reference::Batch(request_id, items)) => Ok(ClientMessage::Batch {
            request_id: request_id.clone(),
            data: items.iter().map(event).collect(),
        }),
        Ok(Reference::Ping(request_id)) => Ok(ClientMessage::Ping {
            request_id: request_id.clone(),
        }),
        Err(r) => Err(Refusal {
            request_id: r.request_id.clone(),
            code: r.code,
            message: r.message.clone(),
        }),
    }
}
