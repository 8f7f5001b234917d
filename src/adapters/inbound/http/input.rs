//! Request bodies. They are taken as raw JSON so that validation can report every broken rule
//! field by field (a typed body would stop at the first type error); the OpenAPI document still
//! shows their full schema, through documentation-only types.

use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{Enum, Object};
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

/// A cart event, as a client sends it.
///
/// Metadata each type requires (other keys are optional and kept as given):
/// `item_added`, `item_removed`: `productId` (string 1-128); optional `quantity` (integer >= 1),
/// `price` (number >= 0), `currency` (3 uppercase letters).
/// `quantity_updated`: `productId`, `quantity` (integer >= 0); optional `price`, `currency`.
/// `cart_viewed`, `cart_cleared`: optional `cartValue` (number >= 0), `itemCount`
/// (integer >= 0), `currency`.
/// `coupon_applied`: `couponCode` (string 1-64); optional `discount` (number >= 0), `currency`.
/// `checkout_started`: `cartValue`, `itemCount`; optional `currency`.
/// `checkout_completed`: `orderId` (string 1-128), `cartValue`; optional `itemCount`,
/// `currency`.
/// An integer is a JSON number with no fractional part (`1` or `1.0`); `null` counts as a
/// value of the wrong type.
#[derive(Debug, Object)]
#[oai(rename = "CartEvent", rename_all = "camelCase")]
pub struct CartEventDoc {
    /// The idempotency key: send it to make retries safe. 1-64 characters of
    /// `A-Z a-z 0-9 - _ . :`. When absent but `timestamp` is present, the server derives a
    /// stable id from the event's content, so an identical retry is still a duplicate; when
    /// both are absent it assigns a fresh id. The id used comes back in the answer.
    #[oai(validator(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_.:-]+$"))]
    pub event_id: Option<String>,
    /// 1-128 characters, no control characters, not all whitespace.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub user_id: String,
    /// 1-128 characters, no control characters.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub session_id: Option<String>,
    pub event_type: EventTypeName,
    /// RFC 3339 with an offset, e.g. `2025-08-10T03:27:04.123Z`. Default: when the server
    /// received the event. Rejected when more than 5 minutes ahead of or 30 days behind the
    /// server's clock. Kept in UTC to the millisecond.
    pub timestamp: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// A JSON object, at most 16 KiB as compact JSON and 8 levels deep. Default `{}`.
    pub metadata: Option<std::collections::BTreeMap<String, Value>>,
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
