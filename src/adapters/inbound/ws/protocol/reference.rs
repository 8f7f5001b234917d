//! The parser this one replaced (issue 18): a JSON tree first, then the envelope taken out of
//! its map. Kept as the reference that the differential proptest (`tests.rs`) and the
//! `ws_message` fuzz target compare `parse` against; built only for them.

use super::{ClientMessage, EventData, Kind, Refusal, REQUEST_ID_MAX};
use crate::adapters::inbound::wire::ErrorCode;
use crate::domain::EventFields;
use serde_json::Value;

/// What the reference answers to `text`, in the parser's terms ([`super::parse`]'s `raw`
/// included).
pub fn parse(text: &str, max_batch: usize, raw: bool) -> Result<ClientMessage, Refusal> {
    expected(&reference(text, max_batch), raw)
}

/// A message as the tree parser gave it: each event as its JSON value.
#[derive(Debug, Clone, PartialEq)]
enum Reference {
    Event(Option<String>, Value),
    Batch(Option<String>, Vec<Value>),
    Ping(Option<String>),
}

/// `parse` before issue 18, unchanged but for its result type.
fn reference(text: &str, max_batch: usize) -> Result<Reference, Refusal> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Refusal::new(
            None,
            ErrorCode::InvalidJson,
            format!("the message is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(mut obj) = value else {
        return Err(Refusal::new(
            None,
            ErrorCode::InvalidJson,
            "the message must be a JSON object",
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
            "cart_event" => Ok(Kind::Event),
            "cart_event_batch" => Ok(Kind::Batch),
            "ping" => Ok(Kind::Ping),
            _ => Err(format!(
                "unsupported message type {t:?}; expected cart_event, cart_event_batch or ping"
            )),
        },
        Some(_) => Err("type must be a string: cart_event, cart_event_batch or ping".to_owned()),
        None => {
            Err("the message has no type; expected cart_event, cart_event_batch or ping".to_owned())
        }
    };
    let kind =
        kind.map_err(|m| Refusal::new(request_id.clone(), ErrorCode::UnsupportedMessageType, m))?;
    if let Some(message) = bad_request_id {
        return Err(Refusal::new(None, ErrorCode::InvalidMessage, message));
    }
    let data = obj.remove("data");
    let refuse = |m: String| {
        Err(Refusal::new(
            request_id.clone(),
            ErrorCode::InvalidMessage,
            m,
        ))
    };
    match kind {
        Kind::Ping => Ok(Reference::Ping(request_id)),
        Kind::Event => match data {
            Some(data @ Value::Object(_)) => Ok(Reference::Event(request_id, data)),
            Some(_) => refuse("data must be an event object".into()),
            None => refuse("data is required: the event object".into()),
        },
        Kind::Batch => match data {
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

/// What the reference's answer is in the new parser's terms: with `raw` every event as its
/// value; without, an object by its fields as validation took them before
/// (`EventFields::from_object`) and anything else as its value.
fn expected(reference: &Result<Reference, Refusal>, raw: bool) -> Result<ClientMessage, Refusal> {
    let event = |v: &Value| match v {
        Value::Object(obj) if !raw => {
            EventData::Fields(Box::new(EventFields::from_object(obj.clone())))
        }
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
        Err(r) => Err(Refusal::new(
            r.request_id.clone(),
            r.code,
            r.message.clone(),
        )),
    }
}
