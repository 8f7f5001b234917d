//! Events for tests, built the one way events are built (validation), so a fixture is always
//! an event the server could have accepted. One definition for the unit tests and for
//! `tests/api` (which includes this file with `#[path]`): it takes the domain's types from
//! its parent module, `domain` here and a re-export of `cartstream::domain` there.

// Each of the two test targets uses a part of the fixtures.
#![allow(dead_code)]

use super::{parse_event, CartEvent, EventId, Source, StoredEvent, ValidationPolicy};
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{json, Value};

/// When fixtures happen unless told otherwise: 2025-08-10T03:27:04.000Z.
pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_754_796_424_000).unwrap_or_default()
}

/// An event to build on: `cart_viewed` by user `u` at [`t0`], without a session or
/// metadata, received at its timestamp over HTTP.
pub fn event(id: &str) -> Fixture {
    Fixture {
        raw: json!({"eventId": id, "userId": "u", "eventType": "cart_viewed",
                    "timestamp": stamp(t0())}),
        received_later_ms: 0,
        source: Source::Http,
    }
}

/// An event as the wire sends it, received at its timestamp (or now, without one) over HTTP.
pub fn from_json(raw: Value) -> Fixture {
    Fixture {
        raw,
        received_later_ms: 0,
        source: Source::Http,
    }
}

/// An event with every field set, to check that a store keeps each one: `item_added` by
/// `ws-test-user-123` in session `sess-42` at 2025-08-10T03:27:04.123Z with
/// [`rich_metadata`], received 7 ms later over WebSocket.
pub fn full(id: &str) -> Fixture {
    event(id)
        .user("ws-test-user-123")
        .session("sess-42")
        .kind("item_added")
        .at("2025-08-10T03:27:04.123Z")
        .metadata(rich_metadata())
        .received_after(7)
        .via(Source::Ws)
}

/// Metadata that exercises a store's text handling: every protocol field, non-ASCII text,
/// nesting, floats and `null`.
pub fn rich_metadata() -> Value {
    json!({"productId": "p-ü", "quantity": 2, "price": 29.99, "currency": "USD",
           "couponCode": "C", "cartValue": 1.5, "itemCount": 2, "orderId": "o",
           "note": "🛒 корзина 购物车 كارت \"quoted\"",
           "nested": {"emoji": "👩‍👩‍👧", "list": [1, 2.5, null, true]}})
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An event being described; [`stored`](Fixture::stored) or
/// [`cart_event`](Fixture::cart_event) builds it.
#[derive(Debug, Clone)]
pub struct Fixture {
    raw: Value,
    received_later_ms: i64,
    source: Source,
}

impl Fixture {
    pub fn user(mut self, user: &str) -> Self {
        self.raw["userId"] = json!(user);
        self
    }

    /// The `eventType`, as the wire spells it.
    pub fn kind(mut self, event_type: &str) -> Self {
        self.raw["eventType"] = json!(event_type);
        self
    }

    pub fn session(mut self, session: &str) -> Self {
        self.raw["sessionId"] = json!(session);
        self
    }

    /// At `ts` (RFC 3339).
    pub fn at(mut self, ts: &str) -> Self {
        self.raw["timestamp"] = json!(ts);
        self
    }

    /// `ms` milliseconds after [`t0`].
    pub fn at_ms(self, ms: i64) -> Self {
        self.at(&stamp(t0() + chrono::Duration::milliseconds(ms)))
    }

    /// At the current time (to the millisecond).
    pub fn at_now(self) -> Self {
        self.at(&stamp(Utc::now()))
    }

    pub fn metadata(mut self, metadata: Value) -> Self {
        self.raw["metadata"] = metadata;
        self
    }

    /// Received `ms` milliseconds after its timestamp.
    pub fn received_after(mut self, ms: i64) -> Self {
        self.received_later_ms = ms;
        self
    }

    /// Arrived over `source`.
    pub fn via(mut self, source: Source) -> Self {
        self.source = source;
        self
    }

    /// The event's `timestamp`, or the current time for an event without one (the server's
    /// clock would have stamped it).
    pub fn timestamp(&self) -> DateTime<Utc> {
        match self.raw.get("timestamp") {
            Some(t) => t
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("a fixture's timestamp is RFC 3339"),
            None => Utc::now().trunc_subsecs(3),
        }
    }

    /// The validated event, as the wire would have sent it at its own timestamp.
    pub fn cart_event(&self) -> CartEvent {
        self.parsed_at(self.timestamp())
    }

    /// The event as a store keeps it.
    pub fn stored(&self) -> StoredEvent {
        let at = self.timestamp();
        StoredEvent {
            event: self.parsed_at(at),
            received_at: at + chrono::Duration::milliseconds(self.received_later_ms),
            source: self.source,
        }
    }

    fn parsed_at(&self, now: DateTime<Utc>) -> CartEvent {
        parse_event(
            &self.raw,
            &ValidationPolicy::protocol_default(),
            now,
            || EventId::from_random_bytes([1; 16]),
        )
        .unwrap_or_else(|errors| panic!("fixture {} is invalid: {errors:?}", self.raw))
    }
}
