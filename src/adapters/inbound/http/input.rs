//! Request bodies. They are taken as raw JSON so that validation can report every broken rule
//! field by field (a typed body would stop at the first type error); the OpenAPI document still
//! shows their full schema, through documentation-only types.

use crate::domain::EventFields;
use poem::{FromRequest, Request, RequestBody};
use poem_openapi::error::ParseRequestPayloadError;
use poem_openapi::payload::{Json, ParsePayload, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use poem_openapi::{Enum, Object, Union};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;

/// The kinds of cart event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum EventTypeName {
    ItemAdded,
    ItemRemoved,
    QuantityUpdated,
    CartViewed,
    CartCleared,
    CouponApplied,
    CheckoutStarted,
    CheckoutCompleted,
}

impl From<EventTypeName> for crate::domain::EventType {
    fn from(t: EventTypeName) -> Self {
        use crate::domain::EventType as T;
        match t {
            EventTypeName::ItemAdded => T::ItemAdded,
            EventTypeName::ItemRemoved => T::ItemRemoved,
            EventTypeName::QuantityUpdated => T::QuantityUpdated,
            EventTypeName::CartViewed => T::CartViewed,
            EventTypeName::CartCleared => T::CartCleared,
            EventTypeName::CouponApplied => T::CouponApplied,
            EventTypeName::CheckoutStarted => T::CheckoutStarted,
            EventTypeName::CheckoutCompleted => T::CheckoutCompleted,
        }
    }
}

/// Declares the documentation type of one event type's event: the fields every event has,
/// and `metadata` as that type requires it. `eventType` is added by [`CartEventDoc`].
macro_rules! event_doc {
    ($name:ident, $schema:tt, $doc:tt, $metadata:ty) => {
        #[doc = $doc]
        #[derive(Debug, Object)]
        #[oai(rename = $schema, rename_all = "camelCase")]
        pub struct $name {
            /// The idempotency key: send it to make retries safe. 1-64 characters of
            /// `A-Z a-z 0-9 - _ . :`. When absent but `timestamp` is present, the server derives
            /// a stable id from the event's content, so an identical retry is still a
            /// duplicate; when both are absent it assigns a fresh id. The id used comes back in
            /// the answer.
            #[oai(validator(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_.:-]+$"))]
            pub event_id: Option<String>,
            /// 1-128 characters, no control characters, not all whitespace.
            #[oai(validator(
                min_length = 1,
                max_length = 128,
                pattern = "^[^\u{0}-\u{1f}\u{7f}-\u{9f}]*[^\u{0}-\u{20}\u{7f}-\u{a0}\u{1680}\u{2000}-\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}][^\u{0}-\u{1f}\u{7f}-\u{9f}]*$"
            ))]
            pub user_id: String,
            /// 1-128 characters, no control characters.
            #[oai(validator(
                min_length = 1,
                max_length = 128,
                pattern = "^[^\u{0}-\u{1f}\u{7f}-\u{9f}]*$"
            ))]
            pub session_id: Option<String>,
            /// RFC 3339 with an offset, e.g. `2025-08-10T03:27:04.123Z`. Default: when the
            /// server received the event. Rejected (`out_of_range`) when more than 5 minutes
            /// ahead of or 30 days behind the server's clock. Kept in UTC to the millisecond.
            pub timestamp: Option<chrono::DateTime<chrono::FixedOffset>>,
            /// At most 16 KiB as compact JSON and 8 levels deep (the metadata object is level
            /// 1). Keys other than those named here are optional and kept as given. A typed
            /// field that is present must have its type and range (`out_of_range` beyond it);
            /// `null` is a value of the wrong type.
            pub metadata: $metadata,
        }
    };
}

/// Metadata of `item_added` and `item_removed`.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ItemMetadata {
    #[oai(validator(min_length = 1, max_length = 128))]
    pub product_id: String,
    /// A count: an integer (`1` or `1.0`) from 1 to 1,000,000,000.
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000000")))]
    pub quantity: Option<i64>,
    /// An amount from 0 to 1,000,000,000,000.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000")))]
    pub price: Option<f64>,
    /// ISO 4217: 3 uppercase letters.
    #[oai(validator(pattern = "^[A-Z]{3}$"))]
    pub currency: Option<String>,
}

/// Metadata of `quantity_updated`.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct QuantityUpdatedMetadata {
    #[oai(validator(min_length = 1, max_length = 128))]
    pub product_id: String,
    /// The new count: an integer from 0 to 1,000,000,000.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    pub quantity: i64,
    /// An amount from 0 to 1,000,000,000,000.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000")))]
    pub price: Option<f64>,
    /// ISO 4217: 3 uppercase letters.
    #[oai(validator(pattern = "^[A-Z]{3}$"))]
    pub currency: Option<String>,
}

/// Metadata of `cart_viewed` and `cart_cleared`: every field optional.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CartMetadata {
    /// An amount from 0 to 1,000,000,000,000.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000")))]
    pub cart_value: Option<f64>,
    /// A count: an integer from 0 to 1,000,000,000.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    pub item_count: Option<i64>,
    /// ISO 4217: 3 uppercase letters.
    #[oai(validator(pattern = "^[A-Z]{3}$"))]
    pub currency: Option<String>,
}

/// Metadata of `coupon_applied`.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CouponMetadata {
    #[oai(validator(min_length = 1, max_length = 64))]
    pub coupon_code: String,
    /// An amount from 0 to 1,000,000,000,000.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000")))]
    pub discount: Option<f64>,
    /// ISO 4217: 3 uppercase letters.
    #[oai(validator(pattern = "^[A-Z]{3}$"))]
    pub currency: Option<String>,
}

/// Metadata of `checkout_started`.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CheckoutStartedMetadata {
    /// An amount from 0 to 1,000,000,000,000.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000")))]
    pub cart_value: f64,
    /// A count: an integer from 0 to 1,000,000,000.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    pub item_count: i64,
    /// ISO 4217: 3 uppercase letters.
    #[oai(validator(pattern = "^[A-Z]{3}$"))]
    pub currency: Option<String>,
}

/// Metadata of `checkout_completed`.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CheckoutCompletedMetadata {
    #[oai(validator(min_length = 1, max_length = 128))]
    pub order_id: String,
    /// An amount from 0 to 1,000,000,000,000.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000")))]
    pub cart_value: f64,
    /// A count: an integer from 0 to 1,000,000,000.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    pub item_count: Option<i64>,
    /// ISO 4217: 3 uppercase letters.
    #[oai(validator(pattern = "^[A-Z]{3}$"))]
    pub currency: Option<String>,
}

event_doc!(
    ItemAddedEvent,
    "ItemAddedEvent",
    "An item was put in the cart.",
    ItemMetadata
);
event_doc!(
    ItemRemovedEvent,
    "ItemRemovedEvent",
    "An item was taken out of the cart.",
    ItemMetadata
);
event_doc!(
    QuantityUpdatedEvent,
    "QuantityUpdatedEvent",
    "The quantity of an item in the cart changed.",
    QuantityUpdatedMetadata
);
event_doc!(
    CartViewedEvent,
    "CartViewedEvent",
    "The cart was viewed. `metadata` may be left out (default `{}`).",
    Option<CartMetadata>
);
event_doc!(
    CartClearedEvent,
    "CartClearedEvent",
    "The cart was emptied. `metadata` may be left out (default `{}`).",
    Option<CartMetadata>
);
event_doc!(
    CouponAppliedEvent,
    "CouponAppliedEvent",
    "A coupon was applied.",
    CouponMetadata
);
event_doc!(
    CheckoutStartedEvent,
    "CheckoutStartedEvent",
    "Checkout began.",
    CheckoutStartedMetadata
);
event_doc!(
    CheckoutCompletedEvent,
    "CheckoutCompletedEvent",
    "An order was placed.",
    CheckoutCompletedMetadata
);

/// A cart event, as a client sends it: one shape per `eventType`, which says which `metadata`
/// fields are required (PROTOCOL.md section 1). An event breaking any rule is answered with
/// every broken rule, field by field (`validation_failed`); an unknown `eventType` is
/// `unknown_event_type`.
#[derive(Debug, Union)]
#[oai(rename = "CartEvent", discriminator_name = "eventType", one_of = true)]
pub enum CartEventDoc {
    #[oai(mapping = "item_added")]
    ItemAdded(ItemAddedEvent),
    #[oai(mapping = "item_removed")]
    ItemRemoved(ItemRemovedEvent),
    #[oai(mapping = "quantity_updated")]
    QuantityUpdated(QuantityUpdatedEvent),
    #[oai(mapping = "cart_viewed")]
    CartViewed(CartViewedEvent),
    #[oai(mapping = "cart_cleared")]
    CartCleared(CartClearedEvent),
    #[oai(mapping = "coupon_applied")]
    CouponApplied(CouponAppliedEvent),
    #[oai(mapping = "checkout_started")]
    CheckoutStarted(CheckoutStartedEvent),
    #[oai(mapping = "checkout_completed")]
    CheckoutCompleted(CheckoutCompletedEvent),
}

/// A batch of events.
#[derive(Debug, Object)]
#[oai(rename = "EventBatch", rename_all = "camelCase")]
pub struct EventBatchDoc {
    /// 1 to 500 events. One bad event does not reject the others.
    #[oai(validator(min_items = 1, max_items = 500))]
    pub events: Vec<CartEventDoc>,
}

macro_rules! raw_json_body {
    ($name:ident, $doc:ty, $what:literal) => {
        /// A raw JSON object body, documented as its schema and validated by the domain.
        #[derive(Debug)]
        pub struct $name(pub serde_json::Map<String, Value>);

        impl Type for $name {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                <$doc as Type>::name()
            }
            fn schema_ref() -> MetaSchemaRef {
                <$doc as Type>::schema_ref()
            }
            fn register(registry: &mut Registry) {
                <$doc as Type>::register(registry);
            }
            fn as_raw_value(&self) -> Option<&Self> {
                Some(self)
            }
            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
                Box::new(std::iter::once(self))
            }
        }

        impl ParseFromJSON for $name {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                match value {
                    Some(Value::Object(m)) => Ok(Self(m)),
                    _ => Err(ParseError::custom(concat!(
                        "the request body must be a JSON object (",
                        $what,
                        ")"
                    ))),
                }
            }
        }

        impl ToJSON for $name {
            fn to_json(&self) -> Option<Value> {
                Some(Value::Object(self.0.clone()))
            }
        }
    };
}

raw_json_body!(RawEvent, CartEventDoc, "one event");
raw_json_body!(RawBatch, EventBatchDoc, "{\"events\": [...]}");

/// The `POST /events/batch` body, documented as [`EventBatchDoc`] and parsed from its bytes
/// straight into each event's fields: no JSON tree of the whole body is built, which was the
/// largest CPU cost of a batch (a map, with hashed keys, per event object). Only the values
/// of the event fields are kept, as the rules need them; other keys are skipped unread.
/// Repeated keys keep the last value, as a parsed JSON object would.
#[derive(Debug)]
pub struct BatchBody(pub BatchEvents);

/// What `events` held.
#[derive(Debug)]
pub enum BatchEvents {
    Missing,
    NotAnArray,
    /// Each item's fields, or `None` for an item that is not a JSON object.
    Items(Vec<Option<EventFields>>),
}

const BATCH_NOT_AN_OBJECT: &str = "the request body must be a JSON object ({\"events\": [...]})";

impl BatchBody {
    /// Parses a body as `Json<RawBatch>` would accept it: invalid JSON and a body that is not
    /// an object are errors with the same texts.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseRequestPayloadError> {
        if bytes.is_empty() {
            return Err(ParseRequestPayloadError {
                reason: BATCH_NOT_AN_OBJECT.to_owned(),
            });
        }
        // JSON is UTF-8, and the text of skipped values is not checked by the parser: without
        // this a body with invalid bytes in a key no rule reads was accepted. Checked once
        // here; parsing from the `str` then skips the parser's own checks of what it reads.
        let text = std::str::from_utf8(bytes).map_err(|e| ParseRequestPayloadError {
            reason: format!("the request body is not valid UTF-8: {e}"),
        })?;
        match serde_json::from_str::<Top>(text) {
            Ok(Top(Some(events))) => Ok(Self(events)),
            Ok(Top(None)) => Err(ParseRequestPayloadError {
                reason: BATCH_NOT_AN_OBJECT.to_owned(),
            }),
            Err(e) => Err(ParseRequestPayloadError {
                reason: e.to_string(),
            }),
        }
    }
}

impl Payload for BatchBody {
    const CONTENT_TYPE: &'static str = <Json<RawBatch> as Payload>::CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        <Json<RawBatch> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        <Json<RawBatch> as Payload>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        <Json<RawBatch> as Payload>::register(registry);
    }
}

impl ParsePayload for BatchBody {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = Vec::<u8>::from_request(request, body).await?;
        Ok(Self::parse(&bytes)?)
    }
}

// The two-argument form: the one-argument form calls the macro by a path that only resolves
// inside poem-openapi.
poem_openapi::impl_apirequest_for_payload!(BatchBody,);

/// The whole body: `None` when it is not a JSON object.
struct Top(Option<BatchEvents>);

/// One item of `events`: `None` when it is not a JSON object.
struct Item(Option<EventFields>);

/// Accepts any JSON value, answering `not_object` for all but an object, whose entries go to
/// `object`. Values that are not objects are read and dropped.
macro_rules! any_value_visitor {
    ($visitor:ident, $out:ty, $expecting:literal, $not_object:expr, $object:expr) => {
        struct $visitor;

        impl<'de> Visitor<'de> for $visitor {
            type Value = $out;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($expecting)
            }
            fn visit_bool<E>(self, _: bool) -> Result<$out, E> {
                Ok($not_object)
            }
            fn visit_i64<E>(self, _: i64) -> Result<$out, E> {
                Ok($not_object)
            }
            fn visit_u64<E>(self, _: u64) -> Result<$out, E> {
                Ok($not_object)
            }
            fn visit_f64<E>(self, _: f64) -> Result<$out, E> {
                Ok($not_object)
            }
            fn visit_str<E>(self, _: &str) -> Result<$out, E> {
                Ok($not_object)
            }
            fn visit_unit<E>(self) -> Result<$out, E> {
                Ok($not_object)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<$out, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok($not_object)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<$out, A::Error> {
                $object(map)
            }
        }
    };
}

any_value_visitor!(
    TopVisitor,
    Top,
    "a JSON object",
    Top(None),
    |mut map: A| -> Result<Top, A::Error> {
        let mut events = BatchEvents::Missing;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "events" {
                events = map.next_value::<Events>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Top(Some(events)))
    }
);

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopVisitor)
    }
}

/// The value of `events`.
struct Events(BatchEvents);

impl<'de> Deserialize<'de> for Events {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EventsVisitor;

        impl<'de> Visitor<'de> for EventsVisitor {
            type Value = Events;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Events, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(Item(item)) = seq.next_element::<Item>()? {
                    items.push(item);
                }
                Ok(Events(BatchEvents::Items(items)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Events, E> {
                Ok(Events(BatchEvents::NotAnArray))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Events, E> {
                Ok(Events(BatchEvents::NotAnArray))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Events, E> {
                Ok(Events(BatchEvents::NotAnArray))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Events, E> {
                Ok(Events(BatchEvents::NotAnArray))
            }
            fn visit_str<E>(self, _: &str) -> Result<Events, E> {
                Ok(Events(BatchEvents::NotAnArray))
            }
            fn visit_unit<E>(self) -> Result<Events, E> {
                Ok(Events(BatchEvents::NotAnArray))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Events, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Events(BatchEvents::NotAnArray))
            }
        }

        d.deserialize_any(EventsVisitor)
    }
}

any_value_visitor!(
    ItemVisitor,
    Item,
    "an event object",
    Item(None),
    |mut map: A| -> Result<Item, A::Error> {
        let mut fields = EventFields::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match fields.slot(&key) {
                Some(slot) => *slot = Some(map.next_value::<Value>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Item(Some(fields)))
    }
);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{parse_event_owned, parse_fields, EventId, ValidationPolicy};

    /// What the batch handler makes of a body: through [`BatchBody`], and through a parsed
    /// JSON tree as before; both must agree on everything a client can see.
    fn both_ways(body: &str) {
        let now = chrono::Utc::now();
        let policy = ValidationPolicy::protocol_default();
        let id = || EventId::from_random_bytes([3; 16]);
        // As `Json` parses a body: from its bytes.
        let tree: Result<Value, _> = serde_json::from_slice(body.as_bytes());
        let fast = BatchBody::parse(body.as_bytes());
        match (tree, fast) {
            (Ok(Value::Object(mut top)), Ok(BatchBody(events))) => {
                match (top.remove("events"), events) {
                    (None, BatchEvents::Missing) => {}
                    (Some(Value::Array(want)), BatchEvents::Items(got)) => {
                        assert_eq!(want.len(), got.len(), "{body}");
                        for (w, g) in want.into_iter().zip(got) {
                            let w = parse_event_owned(w, &policy, now, id);
                            let g = match g {
                                Some(fields) => parse_fields(&fields, &policy, now, id),
                                None => Err(vec![FieldError::invalid_type("", "a JSON object")]),
                            };
                            assert_eq!(w, g, "{body}");
                        }
                    }
                    (Some(v), BatchEvents::NotAnArray) => assert!(!v.is_array(), "{body}"),
                    (w, g) => panic!("{body}: tree {w:?}, fast {g:?}"),
                }
            }
            (Ok(_), Err(e)) => assert_eq!(e.reason, BATCH_NOT_AN_OBJECT, "{body}"),
            (Err(want), Err(got)) => {
                assert_eq!(same_error(&want), same_error_text(&got.reason), "{body}")
            }
            (w, g) => panic!("{body}: tree {w:?}, fast {g:?}"),
        }
    }

    use crate::domain::FieldError;

    /// An error's text up to its position: a skipped value is read by other code than a
    /// parsed one, which may place the same error one column apart.
    fn same_error(e: &serde_json::Error) -> String {
        same_error_text(&e.to_string())
    }

    fn same_error_text(reason: &str) -> String {
        reason.split(" column ").next().unwrap_or(reason).to_owned()
    }

    #[test]
    fn batch_bodies_parse_as_the_json_tree_did() {
        for body in [
            r#"{"events":[{"eventId":"e1","userId":"u","eventType":"item_added","metadata":{"productId":"p","quantity":2}}]}"#,
            // every kind of item, and fields of the wrong types
            r#"{"events":[1,"x",null,true,[1,[2]],{},{"userId":null,"eventType":7,"metadata":[]},
                {"eventId":"a","userId":"u","eventType":"cart_viewed","timestamp":"2020-01-01T00:00:00Z"}]}"#,
            // repeated keys keep the last value; escaped keys are keys
            r#"{"events":[{"userId":"first","userId":"u","eventType":"cart_viewed","metadata":{"a":1},"metadata":{"b":2}}]}"#,
            r#"{"events":[{"user\u0049d":"u","eventType":"cart_viewed","eventId":"e\u00e9"}]}"#,
            // unknown keys, nested deep, are skipped
            r#"{"x":{"events":[]},"events":[{"userId":"u","eventType":"cart_viewed","extra":{"a":[{"b":[null]}]}}],"y":[1,2]}"#,
            r#"{"events":[],"events":[{"userId":"u","eventType":"cart_viewed"}]}"#,
            r#"{"events":{"a":1}}"#,
            r#"{"events":"nope"}"#,
            r#"{"events":null}"#,
            r#"{"other":1}"#,
            r#"{}"#,
            r#"[{"events":[]}]"#,
            r#""events""#,
            "null",
            // not JSON
            r#"{"events":[{"userId":"u",}]}"#,
            r#"{"events":[1,2]"#,
            r#"{"events":[]} trailing"#,
            "{\"events\":[{\"userId\":\"\u{1}\"}]}",
            // found by fuzzing: an error inside a skipped value is placed a column earlier
            "[{\"events:\u{1}]}",
        ] {
            both_ways(body);
        }
    }

    #[test]
    fn a_body_that_is_not_utf8_is_an_error_even_where_no_rule_reads() {
        for body in [
            &b"{\"events\":[{\"userId\":\"u\",\"eventType\":\"cart_viewed\",\"x\":\"\xff\"}]}"[..],
            b"{\"skipped\":\"\xc3\",\"events\":[]}",
            b"{\"events\":[[\"\xe2\x82\"]]}",
            b"{\"events\":[{\"userId\":\"\xc3\",\"eventType\":\"cart_viewed\"}]}",
        ] {
            let e = BatchBody::parse(body).unwrap_err();
            assert!(e.reason.contains("not valid UTF-8"), "{}", e.reason);
        }
    }

    #[test]
    fn an_empty_body_is_not_an_object() {
        let e = BatchBody::parse(b"").unwrap_err();
        assert_eq!(e.reason, BATCH_NOT_AN_OBJECT);
    }

    #[test]
    fn deep_nesting_is_an_error_in_a_field_and_skipped_in_an_unknown_key_never_a_crash() {
        let nest = |key: &str| {
            format!(
                r#"{{"events":[{{"userId":"u","eventType":"cart_viewed","{key}":{}{}}}]}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
        };
        // A field's value is parsed, within serde_json's nesting limit...
        let e = BatchBody::parse(nest("metadata").as_bytes()).unwrap_err();
        assert!(e.reason.contains("recursion limit"), "{}", e.reason);
        // ...a key no rule reads is skipped without being built, at any depth.
        let BatchBody(BatchEvents::Items(items)) =
            BatchBody::parse(nest("extra").as_bytes()).unwrap()
        else {
            panic!("expected the items")
        };
        assert!(items[0].as_ref().unwrap().metadata.is_none());
    }
}

/// A batch sent as `text/plain`, as `navigator.sendBeacon(url, JSON.stringify(batch))` sends
/// it: a simple request, so a page on another origin needs no preflight. Parsed as
/// [`BatchBody`].
#[derive(Debug)]
pub struct BeaconText(pub BatchEvents);

impl Payload for BeaconText {
    const CONTENT_TYPE: &'static str = "text/plain";

    fn check_content_type(content_type: &str) -> bool {
        content_type
            .parse::<mime::Mime>()
            .is_ok_and(|m| m.type_() == mime::TEXT && m.subtype() == mime::PLAIN)
    }

    fn schema_ref() -> MetaSchemaRef {
        <Json<RawBatch> as Payload>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        <Json<RawBatch> as Payload>::register(registry);
    }
}

impl ParsePayload for BeaconText {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = Vec::<u8>::from_request(request, body).await?;
        Ok(Self(BatchBody::parse(&bytes)?.0))
    }
}

poem_openapi::impl_apirequest_for_payload!(BeaconText,);

/// The body of `POST /events/beacon`: a batch, as `text/plain` or `application/json`.
#[derive(Debug, poem_openapi::ApiRequest)]
pub enum BeaconBody {
    /// What `navigator.sendBeacon` sends for a string: no preflight needed.
    Text(BeaconText),
    Json(BatchBody),
}

impl BeaconBody {
    pub fn into_events(self) -> BatchEvents {
        match self {
            Self::Text(b) => b.0,
            Self::Json(b) => b.0,
        }
    }
}

/// The raw text of an instant query parameter (`since`, `until`). Its schema says what the
/// server takes: an RFC 3339 date-time, or an empty value, which counts as absent; the handler
/// parses the text so a bad value gets a message that names the parameter and an example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstantParam(pub Option<String>);

impl Type for InstantParam {
    const IS_REQUIRED: bool = false;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_date-time_or_empty".into()
    }
    fn schema_ref() -> MetaSchemaRef {
        let date_time = MetaSchema {
            format: Some("date-time"),
            ..MetaSchema::new("string")
        };
        let empty = MetaSchema {
            max_length: Some(0),
            ..MetaSchema::new("string")
        };
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            any_of: vec![
                MetaSchemaRef::Inline(Box::new(date_time)),
                MetaSchemaRef::Inline(Box::new(empty)),
            ],
            ..MetaSchema::new("string")
        }))
    }
    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }
    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(std::iter::once(self))
    }
    fn is_none(&self) -> bool {
        self.0.is_none()
    }
}

impl ParseFromParameter for InstantParam {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Self((!value.is_empty()).then(|| value.to_owned())))
    }
    fn parse_from_parameters<I: IntoIterator<Item = A>, A: AsRef<str>>(
        iter: I,
    ) -> ParseResult<Self> {
        match iter.into_iter().next() {
            Some(v) => Self::parse_from_parameter(v.as_ref()),
            None => Ok(Self(None)),
        }
    }
}
