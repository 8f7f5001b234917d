//! The messages of the WebSocket channel (PROTOCOL.md section 3): parsing what clients send
//! and the shapes of what the server replies.

use crate::adapters::inbound::wire::{BatchResult, ErrorCode, FieldErrorBody, ItemStatus};
use serde::Serialize;
use serde_json::{Map, Value};

/// Longest `requestId` echoed back.
pub const REQUEST_ID_MAX: usize = 128;
pub const PROTOCOL_VERSION: u32 = 1;

/// A well-formed client message.
#[derive(Debug, PartialEq)]
pub enum ClientMessage {
    Event {
        request_id: Option<String>,
        data: Value,
    },
    Batch {
        request_id: Option<String>,
        data: Vec<Value>,
    },
    Ping {
        request_id: Option<String>,
    },
}

/// Why a message was not processed; answered with an `error` reply.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub request_id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn new(request_id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            request_id,
            code,
            message: message.into(),
        }
    }
}

/// Parses one text frame. The checks run in this order: JSON object (`invalid_json`), known
/// `type` (`unsupported_message_type`), then the envelope: `requestId` and `data`
/// (`invalid_message`). A `requestId` is echoed whenever it is valid.
pub fn parse(text: &str, max_batch: usize) -> Result<ClientMessage, Refusal> {
    let mut obj = object(text)?;
    let (request_id, bad_request_id) = take_request_id(&mut obj);
    let kind = match kind(&obj) {
        Ok(kind) => kind,
        Err(message) => {
            return Err(Refusal::new(
                request_id,
                ErrorCode::UnsupportedMessageType,
                message,
            ))
        }
    };
    if let Some(message) = bad_request_id {
        return Err(Refusal::new(None, ErrorCode::InvalidMessage, message));
    }
    let data = obj.remove("data");
    match kind {
        Kind::Ping => Ok(ClientMessage::Ping { request_id }),
        Kind::Event => event(request_id, data),
        Kind::Batch => batch(request_id, data, max_batch),
    }
}

/// The message types a client may send.
enum Kind {
    Event,
    Batch,
    Ping,
}

fn object(text: &str) -> Result<Map<String, Value>, Refusal> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Refusal::new(
            None,
            ErrorCode::InvalidJson,
            format!("the message is not valid JSON: {e}"),
        )
    })?;
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(Refusal::new(
            None,
            ErrorCode::InvalidJson,
            "the message must be a JSON object",
        )),
    }
}

/// The `requestId` when absent or valid, else what is wrong with it (refused only once the
/// type is known to be good).
fn take_request_id(obj: &mut Map<String, Value>) -> (Option<String>, Option<String>) {
    match obj.remove("requestId") {
        None => (None, None),
        Some(Value::String(s)) if s.chars().count() <= REQUEST_ID_MAX => (Some(s), None),
        Some(Value::String(_)) => (
            None,
            Some(format!(
                "requestId must be at most {REQUEST_ID_MAX} characters"
            )),
        ),
        Some(_) => (None, Some("requestId must be a string".to_owned())),
    }
}

/// The message's `type`, or why it is not one the channel knows.
fn kind(obj: &Map<String, Value>) -> Result<Kind, String> {
    match obj.get("type") {
        Some(Value::String(t)) => match t.as_str() {
            "cart_event" => Ok(Kind::Event),
            "cart_event_batch" => Ok(Kind::Batch),
            "ping" => Ok(Kind::Ping),
            _ => Err(format!(
                "unsupported message type {t:?}; expected cart_event, cart_event_batch or ping"
            )),
        },
        Some(_) => Err("type must be a string: cart_event, cart_event_batch or ping".into()),
        None => {
            Err("the message has no type; expected cart_event, cart_event_batch or ping".into())
        }
    }
}

fn event(request_id: Option<String>, data: Option<Value>) -> Result<ClientMessage, Refusal> {
    match data {
        Some(data @ Value::Object(_)) => Ok(ClientMessage::Event { request_id, data }),
        Some(_) => Err(Refusal::new(
            request_id,
            ErrorCode::InvalidMessage,
            "data must be an event object",
        )),
        None => Err(Refusal::new(
            request_id,
            ErrorCode::InvalidMessage,
            "data is required: the event object",
        )),
    }
}

fn batch(
    request_id: Option<String>,
    data: Option<Value>,
    max_batch: usize,
) -> Result<ClientMessage, Refusal> {
    let message = match data {
        Some(Value::Array(data)) if data.is_empty() => "data must hold at least one event".into(),
        Some(Value::Array(data)) if data.len() > max_batch => format!(
            "data holds {} events; at most {max_batch} are allowed",
            data.len()
        ),
        Some(Value::Array(data)) => return Ok(ClientMessage::Batch { request_id, data }),
        Some(_) => "data must be an array of events".into(),
        None => "data is required: an array of events".into(),
    };
    Err(Refusal::new(request_id, ErrorCode::InvalidMessage, message))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_batch_events: usize,
}

/// Everything the server sends on the channel.
#[derive(Debug, Serialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Reply {
    ConnectionAck {
        connection_id: String,
        protocol_version: u32,
        server_time: String,
        limits: Limits,
    },
    EventAck {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        event_id: String,
        status: ItemStatus,
    },
    BatchAck {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        #[serde(flatten)]
        result: BatchResult,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        server_time: String,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        code: ErrorCode,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        details: Option<Vec<FieldErrorBody>>,
        retryable: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl Reply {
    pub fn error(request_id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            request_id,
            code,
            message: message.into(),
            details: None,
            retryable: code.retryable(),
            retry_after_ms: None,
        }
    }

    pub fn to_text(&self) -> String {
        // Every field is a string, number, bool or list of those: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal_error","message":"reply could not be encoded","retryable":true}"#.to_owned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refusal(text: &str) -> (Option<String>, ErrorCode) {
        let r = parse(text, 3).unwrap_err();
        (r.request_id, r.code)
    }

    #[test]
    fn well_formed_messages() {
        assert_eq!(
            parse(r#"{"type":"ping","requestId":"r-3"}"#, 3).unwrap(),
            ClientMessage::Ping {
                request_id: Some("r-3".into())
            }
        );
        assert_eq!(
            parse(r#"{"type":"cart_event","data":{"a":1}}"#, 3).unwrap(),
            ClientMessage::Event {
                request_id: None,
                data: json!({"a": 1})
            }
        );
        assert_eq!(
            parse(
                r#"{"type":"cart_event_batch","requestId":"","data":[1,{}]}"#,
                3
            )
            .unwrap(),
            ClientMessage::Batch {
                request_id: Some(String::new()),
                data: vec![json!(1), json!({})]
            }
        );
    }

    #[test]
    fn not_json_or_not_an_object_is_invalid_json() {
        assert_eq!(refusal("{"), (None, ErrorCode::InvalidJson));
        assert_eq!(refusal("[1]"), (None, ErrorCode::InvalidJson));
        assert_eq!(refusal("\"ping\""), (None, ErrorCode::InvalidJson));
    }

    #[test]
    fn unknown_or_missing_type_is_unsupported() {
        assert_eq!(
            refusal(r#"{"type":"subscribe","requestId":"r"}"#),
            (Some("r".into()), ErrorCode::UnsupportedMessageType)
        );
        assert_eq!(
            refusal(r#"{"requestId":"r"}"#),
            (Some("r".into()), ErrorCode::UnsupportedMessageType)
        );
        assert_eq!(
            refusal(r#"{"type":7}"#),
            (None, ErrorCode::UnsupportedMessageType)
        );
    }

    #[test]
    fn a_bad_request_id_is_invalid_message_and_not_echoed() {
        assert_eq!(
            refusal(r#"{"type":"ping","requestId":5}"#),
            (None, ErrorCode::InvalidMessage)
        );
        let long = "r".repeat(129);
        assert_eq!(
            refusal(&format!(r#"{{"type":"ping","requestId":"{long}"}}"#)),
            (None, ErrorCode::InvalidMessage)
        );
        let ok = "r".repeat(128);
        assert!(parse(&format!(r#"{{"type":"ping","requestId":"{ok}"}}"#), 3).is_ok());
    }

    #[test]
    fn envelope_errors_are_invalid_message() {
        for text in [
            r#"{"type":"cart_event"}"#,
            r#"{"type":"cart_event","data":[]}"#,
            r#"{"type":"cart_event","data":null}"#,
            r#"{"type":"cart_event_batch"}"#,
            r#"{"type":"cart_event_batch","data":{}}"#,
            r#"{"type":"cart_event_batch","data":[]}"#,
            r#"{"type":"cart_event_batch","data":[1,2,3,4]}"#,
        ] {
            assert_eq!(refusal(text).1, ErrorCode::InvalidMessage, "{text}");
        }
    }

    #[test]
    fn replies_have_the_contract_shape() {
        let ack = Reply::EventAck {
            request_id: Some("r-1".into()),
            event_id: "e".into(),
            status: ItemStatus::Accepted,
        };
        assert_eq!(
            serde_json::to_value(&ack).unwrap(),
            json!({"type":"event_ack","requestId":"r-1","eventId":"e","status":"accepted"})
        );
        let err = Reply::Error {
            request_id: None,
            code: ErrorCode::RateLimited,
            message: "slow".into(),
            details: None,
            retryable: true,
            retry_after_ms: Some(250),
        };
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"type":"error","code":"rate_limited","message":"slow","retryable":true,"retryAfterMs":250})
        );
        let batch = Reply::BatchAck {
            request_id: Some("r-2".into()),
            result: BatchResult {
                accepted: 1,
                duplicates: 0,
                rejected: 0,
                results: vec![],
            },
        };
        assert_eq!(
            serde_json::to_value(&batch).unwrap(),
            json!({"type":"batch_ack","requestId":"r-2","accepted":1,"duplicates":0,"rejected":0,"results":[]})
        );
    }
}
