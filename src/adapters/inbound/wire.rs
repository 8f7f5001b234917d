//! The reply shapes of PROTOCOL.md, shared by the HTTP and WebSocket adapters so the two
//! channels can never drift apart. Each derives `Serialize` (for WebSocket frames) and
//! poem-openapi's `Object`/`Enum` (for the HTTP responses and the OpenAPI document).

use crate::domain::{FieldError, StoredEvent};
use crate::ports::{Outcome, Unavailable};
use chrono::SecondsFormat;
use poem_openapi::{Enum, Object};
use serde::Serialize;

/// One broken rule of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Object)]
#[oai(rename_all = "camelCase")]
pub struct FieldErrorBody {
    /// Path of the field relative to the event object, e.g. `userId` or `metadata.cartValue`;
    /// `""` is the event itself.
    pub field: String,
    /// One of `required`, `invalid_type`, `invalid_format`, `too_long`, `too_short`,
    /// `out_of_range`, `unknown_event_type`, `too_large`, `too_deep`.
    pub code: String,
    /// A sentence for humans.
    pub message: String,
}

impl From<FieldError> for FieldErrorBody {
    fn from(e: FieldError) -> Self {
        Self {
            field: e.field,
            code: e.code.as_str().to_owned(),
            message: e.message,
        }
    }
}

pub fn details(errors: Vec<FieldError>) -> Vec<FieldErrorBody> {
    errors.into_iter().map(FieldErrorBody::from).collect()
}

/// Machine-readable error codes, shared by both channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Enum)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    UnsupportedMessageType,
    InvalidMessage,
    ValidationFailed,
    RateLimited,
    Unavailable,
    InternalError,
    PayloadTooLarge,
    UnsupportedMediaType,
    NotFound,
    MethodNotAllowed,
    Unauthorized,
    Forbidden,
    InvalidParameter,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::UnsupportedMessageType => "unsupported_message_type",
            Self::InvalidMessage => "invalid_message",
            Self::ValidationFailed => "validation_failed",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::InternalError => "internal_error",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::InvalidParameter => "invalid_parameter",
        }
    }

    /// Whether the same request may succeed later unchanged.
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Unavailable | Self::InternalError
        )
    }
}

/// The one error body of every HTTP error.
#[derive(Debug, Clone, PartialEq, Serialize, Object)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// A sentence for humans.
    pub message: String,
    /// For `validation_failed`: every broken rule.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<FieldErrorBody>>,
    /// Whether sending the same request again later may succeed.
    pub retryable: bool,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
            retryable: code.retryable(),
        }
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        Self {
            details: Some(details(errors)),
            ..Self::new(ErrorCode::ValidationFailed, "event is invalid")
        }
    }
}

/// The status of one accepted-or-not event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Enum)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Durably recorded; it will reach the store and every matching route.
    Accepted,
    /// The same `eventId` was accepted before, within the dedup window; not recorded again.
    Duplicate,
    /// Broke the rules; see `errors`.
    Rejected,
}

/// The answer for one event of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Object)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct BatchItemResult {
    /// Position of the event in the request's list, from 0.
    pub index: u32,
    /// The id used for the event (sent, derived or assigned); absent when rejected.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub status: ItemStatus,
    /// Every broken rule, when rejected.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldErrorBody>>,
}

/// Counts and per-event results of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Object)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct BatchResult {
    pub accepted: u32,
    pub duplicates: u32,
    pub rejected: u32,
    /// One entry per event, in request order.
    pub results: Vec<BatchItemResult>,
}

/// What a batch comes to: per-item results, or one retryable `unavailable` for the whole
/// batch when any of its events could not be recorded. A batch is committed as a unit, so in
/// that case the client retries it whole; events of it that were recorded come back
/// `duplicate` on the retry.
pub enum BatchAnswer {
    Results(BatchResult),
    Unavailable(&'static str),
}

/// What a client is told when its event could not be recorded now.
pub fn unavailable_message(reason: Unavailable) -> &'static str {
    match reason {
        Unavailable::ShuttingDown => "the server is shutting down; retry on another connection",
        Unavailable::StoreDown | Unavailable::DedupDown => {
            "the event could not be recorded durably right now; retry later"
        }
        Unavailable::JournalFull => {
            "the server's local buffer is full while the event store catches up; retry later"
        }
        Unavailable::KeyInFlight => {
            "an event with this eventId is being recorded right now; retry shortly"
        }
    }
}

pub fn batch_answer(outcomes: Vec<Outcome>) -> BatchAnswer {
    let mut r = BatchResult {
        accepted: 0,
        duplicates: 0,
        rejected: 0,
        results: Vec::with_capacity(outcomes.len()),
    };
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let index = index as u32;
        let item = match outcome {
            Outcome::Accepted(id) => {
                r.accepted += 1;
                BatchItemResult {
                    index,
                    event_id: Some(id.into_string()),
                    status: ItemStatus::Accepted,
                    errors: None,
                }
            }
            Outcome::Duplicate(id) => {
                r.duplicates += 1;
                BatchItemResult {
                    index,
                    event_id: Some(id.into_string()),
                    status: ItemStatus::Duplicate,
                    errors: None,
                }
            }
            Outcome::Rejected(errors) => {
                r.rejected += 1;
                BatchItemResult {
                    index,
                    event_id: None,
                    status: ItemStatus::Rejected,
                    errors: Some(details(errors)),
                }
            }
            Outcome::Unavailable(reason) => {
                return BatchAnswer::Unavailable(unavailable_message(reason))
            }
        };
        r.results.push(item);
    }
    BatchAnswer::Results(r)
}

/// A stored event as `GET /events` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Object)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub event_id: String,
    pub user_id: String,
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub event_type: String,
    /// When the event happened (the client's `timestamp`, or receipt time), UTC, milliseconds.
    pub timestamp: String,
    /// The event's metadata object, keys as sent.
    pub metadata: serde_json::Value,
    /// When the server accepted the event, UTC, milliseconds.
    pub received_at: String,
}

impl From<StoredEvent> for EventView {
    fn from(s: StoredEvent) -> Self {
        let e = s.event;
        Self {
            event_id: e.event_id().as_str().to_owned(),
            user_id: e.user_id().to_owned(),
            session_id: e.session_id().map(str::to_owned),
            event_type: e.event_type().as_str().to_owned(),
            timestamp: e.occurred_at().to_rfc3339_opts(SecondsFormat::Millis, true),
            metadata: serde_json::Value::Object(e.metadata().to_object()),
            received_at: s.received_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }
}

/// An RFC 3339 UTC timestamp with milliseconds, as every time on the wire is written.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{fixtures, Source};

    #[test]
    fn route_targets_see_exactly_what_get_events_returns() {
        for raw in [
            serde_json::json!({"eventId": "e", "userId": "u", "sessionId": "s", "eventType": "item_added",
                               "metadata": {"productId": "p", "z": [1, {"a": null}]}}),
            serde_json::json!({"userId": "u", "eventType": "cart_viewed"}),
        ] {
            let stored = fixtures::from_json(raw).via(Source::Ws).stored();
            let view = serde_json::to_value(EventView::from(stored.clone())).unwrap();
            assert_eq!(view, crate::adapters::event_json::event_json(&stored));
        }
    }
}
