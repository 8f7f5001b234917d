//! The cart event model. Every type here is valid by construction: the only way to get a
//! [`CartEvent`] is through [`crate::domain::validation::parse_event`] (or, for events read back
//! from a store, [`CartEvent::from_stored`]).

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use std::fmt;

/// Which characters an `eventId` may contain: `A-Z a-z 0-9 - _ . :`.
pub fn is_event_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

/// [`is_event_id_char`] for one byte: every allowed character is ASCII, so a byte outside
/// ASCII (part of a longer character) is never allowed.
fn is_event_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
}

pub const EVENT_ID_MAX: usize = 64;
pub const USER_ID_MAX: usize = 128;
pub const SESSION_ID_MAX: usize = 128;

/// The idempotency key of an event: 1–64 chars of `A-Z a-z 0-9 - _ . :`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

impl EventId {
    /// Checks the format; the error is the detail code to report.
    pub fn parse(raw: &str) -> Result<Self, super::FieldCode> {
        if raw.is_empty() {
            return Err(super::FieldCode::TooShort);
        }
        if raw.len() > EVENT_ID_MAX {
            // All allowed characters are one byte, so a byte count above the limit that consists
            // only of allowed characters is too long; anything else is a format error.
            return Err(if raw.bytes().all(is_event_id_byte) {
                super::FieldCode::TooLong
            } else {
                super::FieldCode::InvalidFormat
            });
        }
        if !raw.bytes().all(is_event_id_byte) {
            return Err(super::FieldCode::InvalidFormat);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the event's id came from; decides whether dedup is possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdOrigin {
    /// Sent by the client.
    Client,
    /// Derived from the event's fingerprint (no `eventId`, but a `timestamp`).
    Fingerprint,
    /// Freshly assigned by the server: nothing to deduplicate against.
    Generated,
}

/// The event types of PROTOCOL.md section 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    ItemAdded,
    ItemRemoved,
    QuantityUpdated,
    CartViewed,
    CartCleared,
    CouponApplied,
    CheckoutStarted,
    CheckoutCompleted,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        Self::ItemAdded,
        Self::ItemRemoved,
        Self::QuantityUpdated,
        Self::CartViewed,
        Self::CartCleared,
        Self::CouponApplied,
        Self::CheckoutStarted,
        Self::CheckoutCompleted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ItemAdded => "item_added",
            Self::ItemRemoved => "item_removed",
            Self::QuantityUpdated => "quantity_updated",
            Self::CartViewed => "cart_viewed",
            Self::CartCleared => "cart_cleared",
            Self::CouponApplied => "coupon_applied",
            Self::CheckoutStarted => "checkout_started",
            Self::CheckoutCompleted => "checkout_completed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The channel an event arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Ws,
    Http,
}

impl Source {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Http => "http",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "ws" => Some(Self::Ws),
            "http" => Some(Self::Http),
            _ => None,
        }
    }
}

/// Truncates an instant to whole milliseconds, the precision events are stored with.
pub fn to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(3)
}

/// A validated cart event. Fields are private: only validation builds one.
#[derive(Debug, Clone, PartialEq)]
pub struct CartEvent {
    pub(super) event_id: EventId,
    pub(super) id_origin: IdOrigin,
    pub(super) user_id: String,
    pub(super) session_id: Option<String>,
    pub(super) event_type: EventType,
    pub(super) occurred_at: DateTime<Utc>,
    pub(super) metadata: Metadata,
}

/// An event's `metadata`: a JSON object, kept as the compact JSON text validation measured.
///
/// Every store writes this text as it is and reads it back as it is, so an event moving
/// through the journal into ClickHouse is never parsed or serialized again on the way; only a
/// reader that needs the object (`GET /events`, a route target) parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata(pub(super) String);

impl Metadata {
    /// The compact JSON of a validated object.
    pub(super) fn from_object(m: &Map<String, Value>) -> Self {
        // Serializing a `Map` of `Value`s cannot fail.
        Self(serde_json::to_string(m).unwrap_or_else(|_| "{}".to_owned()))
    }

    /// Text a store wrote from [`Metadata::as_json`]. Stores hold only validated events, so
    /// this trusts it apart from being a JSON object's text at all.
    pub fn from_stored(json: String) -> Result<Self, super::FieldCode> {
        if json.starts_with('{') && json.ends_with('}') {
            Ok(Self(json))
        } else {
            Err(super::FieldCode::InvalidType)
        }
    }

    /// The object as compact JSON, e.g. `{"productId":"p-1","quantity":2}`.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// The object itself, parsed from the text (keys in the order they were sent).
    pub fn to_object(&self) -> Map<String, Value> {
        serde_json::from_str(&self.0).unwrap_or_default()
    }
}

impl CartEvent {
    pub fn event_id(&self) -> &EventId {
        &self.event_id
    }
    pub fn id_origin(&self) -> IdOrigin {
        self.id_origin
    }
    pub fn user_id(&self) -> &str {
        &self.user_id
    }
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }
    pub fn event_type(&self) -> EventType {
        self.event_type
    }
    /// The event's `timestamp`, in UTC, to the millisecond.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Whether a repeat of this event can be recognised (its id is not freshly generated).
    pub fn is_deduplicable(&self) -> bool {
        self.id_origin != IdOrigin::Generated
    }

    /// Rebuilds an event that a store returned. Stores hold only events that passed validation,
    /// so this trusts its input apart from the id format, which it re-checks.
    pub fn from_stored(
        event_id: &str,
        user_id: String,
        session_id: Option<String>,
        event_type: EventType,
        occurred_at: DateTime<Utc>,
        metadata: Metadata,
    ) -> Result<Self, super::FieldCode> {
        Ok(Self {
            event_id: EventId::parse(event_id)?,
            id_origin: IdOrigin::Client,
            user_id,
            session_id,
            event_type,
            occurred_at: to_millis(occurred_at),
            metadata,
        })
    }
}

/// An event as a store keeps it, field by field, to rebuild it from.
pub struct StoredFields<'a> {
    pub event_id: &'a str,
    pub user_id: String,
    pub session_id: Option<String>,
    pub event_type: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub source: &'a str,
    /// The metadata object as compact JSON.
    pub metadata: String,
}

impl StoredFields<'_> {
    /// The event again; the error names the field that is not as a store writes it.
    pub fn into_stored(self) -> Result<StoredEvent, &'static str> {
        let event_type = EventType::parse(self.event_type).ok_or("event_type")?;
        let source = Source::parse(self.source).ok_or("source")?;
        let metadata = Metadata::from_stored(self.metadata).map_err(|_| "metadata")?;
        let event = CartEvent::from_stored(
            self.event_id,
            self.user_id,
            self.session_id,
            event_type,
            self.occurred_at,
            metadata,
        )
        .map_err(|_| "event_id")?;
        Ok(StoredEvent {
            event,
            received_at: self.received_at,
            source,
        })
    }
}

/// An accepted event as it is stored and read back: the event plus where and when it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub event: CartEvent,
    pub received_at: DateTime<Utc>,
    pub source: Source,
}

/// A stored event flattened as every store keeps it: text borrowed, instants as Unix
/// milliseconds. The one mapping from an event to a store's row; [`StoredFields`] is the way
/// back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventColumns<'a> {
    pub event_id: &'a str,
    pub user_id: &'a str,
    pub session_id: Option<&'a str>,
    pub event_type: &'a str,
    pub occurred_at_ms: i64,
    pub received_at_ms: i64,
    pub source: &'a str,
    /// The metadata object as compact JSON.
    pub metadata: &'a str,
}

impl StoredEvent {
    /// The event's columns, as a store writes them.
    pub fn columns(&self) -> EventColumns<'_> {
        let e = &self.event;
        EventColumns {
            event_id: e.event_id().as_str(),
            user_id: e.user_id(),
            session_id: e.session_id(),
            event_type: e.event_type().as_str(),
            occurred_at_ms: e.occurred_at().timestamp_millis(),
            received_at_ms: self.received_at.timestamp_millis(),
            source: self.source.as_str(),
            metadata: e.metadata().as_json(),
        }
    }
}
