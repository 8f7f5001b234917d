//! The event rules of PROTOCOL.md section 1. Every failed rule is reported, not just the first.

use super::dedup::fingerprint_id;
use super::error::{FieldCode, FieldError};
use super::event::{
    to_millis, CartEvent, EventId, EventType, IdOrigin, Metadata, EVENT_ID_MAX, SESSION_ID_MAX,
    USER_ID_MAX,
};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};

/// Largest `metadata`, as compact UTF-8 JSON.
pub const METADATA_MAX_BYTES: usize = 16 * 1024;
/// Deepest `metadata`; the metadata object itself is level 1.
pub const METADATA_MAX_DEPTH: usize = 8;

/// Largest count a metadata field may hold (`quantity`, `itemCount`): PROTOCOL.md gives only
/// a lower bound, and no cart holds a billion of anything, while an unbounded count (`1e308`)
/// would overflow every sum a consumer makes of it.
pub const MAX_COUNT: i64 = 1_000_000_000;
/// Largest amount a metadata field may hold (`price`, `cartValue`, `discount`): a trillion in
/// any currency is beyond every real cart, and below 2^53, so each whole amount up to it is
/// exact in a double.
pub const MAX_AMOUNT: f64 = 1e12;

/// The configurable bounds of validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationPolicy {
    /// How far past the server's clock a `timestamp` may be.
    pub max_future: Duration,
    /// How far before the server's clock a `timestamp` may be.
    pub max_past: Duration,
}

impl ValidationPolicy {
    /// The protocol's defaults: 5 minutes ahead, 30 days behind.
    pub fn protocol_default() -> Self {
        Self {
            max_future: Duration::minutes(5),
            max_past: Duration::days(30),
        }
    }
}

/// Validates one raw event. `now` is the server's clock at receipt; `fresh_id` is called only
/// when the event has neither `eventId` nor `timestamp`.
pub fn parse_event(
    raw: &Value,
    policy: &ValidationPolicy,
    now: DateTime<Utc>,
    fresh_id: impl FnOnce() -> EventId,
) -> Result<CartEvent, Vec<FieldError>> {
    parse_event_owned(raw.clone(), policy, now, fresh_id)
}

/// [`parse_event`] taking the raw event by value: the form the WebSocket path uses.
pub fn parse_event_owned(
    raw: Value,
    policy: &ValidationPolicy,
    now: DateTime<Utc>,
    fresh_id: impl FnOnce() -> EventId,
) -> Result<CartEvent, Vec<FieldError>> {
    let Value::Object(obj) = raw else {
        return Err(vec![FieldError::invalid_type("", "a JSON object")]);
    };
    parse_fields(&EventFields::from_object(obj), policy, now, fresh_id)
}

/// The fields of one event object as sent, each the JSON value the client gave: `None` when
/// the key is absent, `Some(Value::Null)` for a `null`. Other keys are not kept, since no rule
/// reads them. A wire parser can fill this straight from the bytes, without building the
/// event object first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFields {
    pub event_id: Option<Value>,
    pub user_id: Option<Value>,
    pub session_id: Option<Value>,
    pub event_type: Option<Value>,
    pub timestamp: Option<Value>,
    pub metadata: Option<Value>,
}

impl EventFields {
    /// One pass over the object, moving each event field into its slot: a map's keys are
    /// unique, so this keeps exactly what looking each field up would, without hashing six
    /// names again and shifting the map's entries on every removal (issue 18).
    pub fn from_object(obj: Map<String, Value>) -> Self {
        let mut fields = Self::default();
        for (name, value) in obj {
            if let Some(slot) = fields.slot(&name) {
                *slot = Some(value);
            }
        }
        fields
    }

    /// The slot of the field with this JSON name, if it is one of the event's fields.
    pub fn slot(&mut self, name: &str) -> Option<&mut Option<Value>> {
        match name {
            "eventId" => Some(&mut self.event_id),
            "userId" => Some(&mut self.user_id),
            "sessionId" => Some(&mut self.session_id),
            "eventType" => Some(&mut self.event_type),
            "timestamp" => Some(&mut self.timestamp),
            "metadata" => Some(&mut self.metadata),
            _ => None,
        }
    }
}

/// Validates one event object given by its fields; see [`parse_event`].
pub fn parse_fields(
    fields: &EventFields,
    policy: &ValidationPolicy,
    now: DateTime<Utc>,
    fresh_id: impl FnOnce() -> EventId,
) -> Result<CartEvent, Vec<FieldError>> {
    // Each field is checked in wire order, so the errors come back in that order.
    let mut errors = Vec::new();
    let event_id = event_id_field(fields.event_id.as_ref(), &mut errors);
    let user_id = user_id_field(fields.user_id.as_ref(), &mut errors);
    let session_id = session_id_field(fields.session_id.as_ref(), &mut errors);
    let event_type = event_type_field(fields.event_type.as_ref(), &mut errors);
    let timestamp = timestamp_field(fields.timestamp.as_ref(), policy, now, &mut errors);
    let empty = Map::new();
    let (metadata, metadata_json) = metadata_object(fields.metadata.as_ref(), &empty, &mut errors);
    if let (Some(t), Some(m)) = (event_type, metadata) {
        check_metadata_rules(t, m, &mut errors);
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    // Every branch that left one of these `None` pushed an error, so all are present here.
    let (Some(user_id), Some(event_type), Some(metadata)) = (user_id, event_type, metadata) else {
        return Err(vec![FieldError::invalid_type("", "a JSON object")]);
    };
    let occurred_at = timestamp.unwrap_or_else(|| to_millis(now));
    let (event_id, id_origin) = match (event_id, timestamp) {
        (Some(id), _) => (id, IdOrigin::Client),
        (None, Some(ts)) => (
            fingerprint_id(&user_id, session_id.as_deref(), event_type, ts, metadata),
            IdOrigin::Fingerprint,
        ),
        (None, None) => (fresh_id(), IdOrigin::Generated),
    };
    let metadata = match metadata_json {
        Some(json) => Metadata(json),
        None => Metadata::from_object(metadata),
    };
    Ok(CartEvent {
        event_id,
        id_origin,
        user_id,
        session_id,
        event_type,
        occurred_at,
        metadata,
    })
}

fn event_id_field(value: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<EventId> {
    match value {
        None => None,
        Some(Value::String(s)) => match EventId::parse(s) {
            Ok(id) => Some(id),
            Err(code) => {
                errors.push(event_id_error(code));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::invalid_type("eventId", "a string"));
            None
        }
    }
}

fn user_id_field(value: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    match value {
        None => {
            errors.push(FieldError::required("userId"));
            None
        }
        Some(Value::String(s)) => check_identifier("userId", s, USER_ID_MAX, true, errors),
        Some(_) => {
            errors.push(FieldError::invalid_type("userId", "a string"));
            None
        }
    }
}

fn session_id_field(value: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    match value {
        None => None,
        Some(Value::String(s)) => check_identifier("sessionId", s, SESSION_ID_MAX, false, errors),
        Some(_) => {
            errors.push(FieldError::invalid_type("sessionId", "a string"));
            None
        }
    }
}

fn event_type_field(value: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<EventType> {
    match value {
        None => {
            errors.push(FieldError::required("eventType"));
            None
        }
        Some(Value::String(s)) => {
            let t = EventType::parse(s);
            if t.is_none() {
                errors.push(FieldError::new(
                    "eventType",
                    FieldCode::UnknownEventType,
                    format!("eventType must be one of: {}", event_type_list()),
                ));
            }
            t
        }
        Some(_) => {
            errors.push(FieldError::invalid_type("eventType", "a string"));
            None
        }
    }
}

fn timestamp_field(
    value: Option<&Value>,
    policy: &ValidationPolicy,
    now: DateTime<Utc>,
    errors: &mut Vec<FieldError>,
) -> Option<DateTime<Utc>> {
    match value {
        None => None,
        Some(Value::String(s)) => check_timestamp(s, policy, now, errors),
        Some(_) => {
            errors.push(FieldError::invalid_type(
                "timestamp",
                "an RFC 3339 string with an offset",
            ));
            None
        }
    }
}

/// The metadata object (an absent one is `empty`), and its compact text when it passed the
/// shape checks.
fn metadata_object<'a>(
    value: Option<&'a Value>,
    empty: &'a Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> (Option<&'a Map<String, Value>>, Option<String>) {
    match value {
        None => (Some(empty), None),
        Some(Value::Object(m)) => (Some(m), check_metadata_shape(m, errors)),
        Some(_) => {
            errors.push(FieldError::invalid_type("metadata", "a JSON object"));
            (None, None)
        }
    }
}

fn event_id_error(code: FieldCode) -> FieldError {
    let message = match code {
        FieldCode::TooShort => "eventId must be at least 1 character".to_owned(),
        FieldCode::TooLong => format!("eventId must be at most {EVENT_ID_MAX} characters"),
        _ => format!("eventId must be 1-{EVENT_ID_MAX} characters of A-Z a-z 0-9 - _ . :"),
    };
    FieldError::new("eventId", code, message)
}

fn event_type_list() -> String {
    EventType::ALL.map(EventType::as_str).join(", ")
}

/// Checks a 1..=max character identifier with no control characters; `userId` also must not be
/// all whitespace.
fn check_identifier(
    field: &str,
    raw: &str,
    max: usize,
    reject_blank: bool,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let before = errors.len();
    let chars = raw.chars().count();
    if chars == 0 {
        errors.push(FieldError::too_short(field, 1));
    } else if chars > max {
        errors.push(FieldError::too_long(field, max));
    }
    if raw.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            FieldCode::InvalidFormat,
            format!("{field} must not contain control characters"),
        ));
    } else if reject_blank && chars > 0 && raw.chars().all(char::is_whitespace) {
        errors.push(FieldError::new(
            field,
            FieldCode::InvalidFormat,
            format!("{field} must not be all whitespace"),
        ));
    }
    (errors.len() == before).then(|| raw.to_owned())
}

fn check_timestamp(
    raw: &str,
    policy: &ValidationPolicy,
    now: DateTime<Utc>,
    errors: &mut Vec<FieldError>,
) -> Option<DateTime<Utc>> {
    let Ok(parsed) = DateTime::parse_from_rfc3339(raw) else {
        errors.push(FieldError::new(
            "timestamp",
            FieldCode::InvalidFormat,
            "timestamp must be an RFC 3339 date-time with an offset, e.g. 2025-08-10T03:27:04.123Z",
        ));
        return None;
    };
    let at = to_millis(parsed.with_timezone(&Utc));
    if at - now > policy.max_future {
        errors.push(FieldError::new(
            "timestamp",
            FieldCode::OutOfRange,
            format!(
                "timestamp must not be more than {} ahead of the server's clock",
                describe(policy.max_future)
            ),
        ));
        return None;
    }
    if now - at > policy.max_past {
        errors.push(FieldError::new(
            "timestamp",
            FieldCode::OutOfRange,
            format!(
                "timestamp must not be more than {} before the server's clock",
                describe(policy.max_past)
            ),
        ));
        return None;
    }
    Some(at)
}

fn describe(d: Duration) -> String {
    let secs = d.num_seconds();
    match secs {
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3_600 == 0 => format!("{} hours", s / 3_600),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// Checks size and depth; the compact JSON text when both hold (the form the event keeps).
fn check_metadata_shape(m: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    let too_deep = object_depth_exceeds(m, 1, METADATA_MAX_DEPTH);
    // A well-shaped object is serialized once, here, and measured by its text; a too-deep one
    // only measured.
    let json = (!too_deep).then(|| serde_json::to_string(m).unwrap_or_default());
    let size = json
        .as_ref()
        .map_or_else(|| compact_json_len_object(m), String::len);
    if size > METADATA_MAX_BYTES {
        errors.push(FieldError::new(
            "metadata",
            FieldCode::TooLarge,
            format!("metadata is {size} bytes as compact JSON; the limit is {METADATA_MAX_BYTES}"),
        ));
    }
    if too_deep {
        errors.push(FieldError::new(
            "metadata",
            FieldCode::TooDeep,
            format!(
                "metadata nests deeper than {METADATA_MAX_DEPTH} levels (the metadata object is level 1)"
            ),
        ));
    }
    json.filter(|_| size <= METADATA_MAX_BYTES)
}

/// Length of the compact JSON form, without building it.
fn compact_json_len_object(m: &Map<String, Value>) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Serializing a `Map` of `Value`s into a writer that cannot fail cannot fail.
    let _ = serde_json::to_writer(&mut counter, m);
    counter.0
}

fn object_depth_exceeds(m: &Map<String, Value>, level: usize, max: usize) -> bool {
    if level > max {
        return true;
    }
    m.values().any(|v| value_depth_exceeds(v, level + 1, max))
}

fn value_depth_exceeds(v: &Value, level: usize, max: usize) -> bool {
    match v {
        Value::Object(m) => object_depth_exceeds(m, level, max),
        Value::Array(items) => {
            level > max || items.iter().any(|i| value_depth_exceeds(i, level + 1, max))
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Text { min: usize, max: usize },
    Integer { min: i64, max: i64 },
    Number { min: f64, max: f64 },
    Currency,
}

#[derive(Clone, Copy)]
struct Rule {
    key: &'static str,
    kind: Kind,
    required: bool,
}

const fn req(key: &'static str, kind: Kind) -> Rule {
    Rule {
        key,
        kind,
        required: true,
    }
}

const fn opt(key: &'static str, kind: Kind) -> Rule {
    Rule {
        key,
        kind,
        required: false,
    }
}

const PRODUCT_ID: Kind = Kind::Text { min: 1, max: 128 };
/// A count of at least `min`, up to [`MAX_COUNT`].
const fn count(min: i64) -> Kind {
    Kind::Integer {
        min,
        max: MAX_COUNT,
    }
}
/// An amount from 0 to [`MAX_AMOUNT`].
const AMOUNT: Kind = Kind::Number {
    min: 0.0,
    max: MAX_AMOUNT,
};
const CURRENCY: Rule = opt("currency", Kind::Currency);

const ITEM: &[Rule] = &[
    req("productId", PRODUCT_ID),
    opt("quantity", count(1)),
    opt("price", AMOUNT),
    CURRENCY,
];
const QUANTITY_UPDATED: &[Rule] = &[
    req("productId", PRODUCT_ID),
    req("quantity", count(0)),
    opt("price", AMOUNT),
    CURRENCY,
];
const CART: &[Rule] = &[
    opt("cartValue", AMOUNT),
    opt("itemCount", count(0)),
    CURRENCY,
];
const COUPON_APPLIED: &[Rule] = &[
    req("couponCode", Kind::Text { min: 1, max: 64 }),
    opt("discount", AMOUNT),
    CURRENCY,
];
const CHECKOUT_STARTED: &[Rule] = &[
    req("cartValue", AMOUNT),
    req("itemCount", count(0)),
    CURRENCY,
];
const CHECKOUT_COMPLETED: &[Rule] = &[
    req("orderId", Kind::Text { min: 1, max: 128 }),
    req("cartValue", AMOUNT),
    opt("itemCount", count(0)),
    CURRENCY,
];

fn rules(t: EventType) -> &'static [Rule] {
    match t {
        EventType::ItemAdded | EventType::ItemRemoved => ITEM,
        EventType::QuantityUpdated => QUANTITY_UPDATED,
        EventType::CartViewed | EventType::CartCleared => CART,
        EventType::CouponApplied => COUPON_APPLIED,
        EventType::CheckoutStarted => CHECKOUT_STARTED,
        EventType::CheckoutCompleted => CHECKOUT_COMPLETED,
    }
}

fn check_metadata_rules(t: EventType, m: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    for rule in rules(t) {
        match lookup(m, rule.key) {
            None if rule.required => {
                let field = metadata_field(rule.key);
                let message = format!("{field} is required for {t}");
                errors.push(FieldError::new(&field, FieldCode::Required, message));
            }
            None => {}
            Some(v) if kind_holds(rule.kind, v) => {}
            Some(v) => {
                if let Some(e) = check_kind(&metadata_field(rule.key), rule.kind, v) {
                    errors.push(e);
                }
            }
        }
    }
}

/// `m.get(key)`, found by comparing keys while `m` is small: a metadata object has a few
/// keys, and `get` hashes `key` with the map's SipHash first (about 270 callgrind
/// instructions a lookup, 3.5 lookups per event).
fn lookup<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if m.len() > 8 {
        return m.get(key);
    }
    m.iter().find_map(|(k, v)| (k == key).then_some(v))
}

/// The name a metadata key is reported under; built only for an error, so valid events pay
/// nothing for it.
fn metadata_field(key: &str) -> String {
    format!("metadata.{key}")
}

/// Whether a JSON number has no fractional part (`1` and `1.0` both do).
pub fn integral(n: &serde_json::Number) -> Option<f64> {
    if let Some(i) = n.as_i64() {
        return Some(i as f64);
    }
    if let Some(u) = n.as_u64() {
        return Some(u as f64);
    }
    n.as_f64().filter(|f| f.is_finite() && f.fract() == 0.0)
}

/// Whether `v` is of `kind`: the same answer as [`check_kind`] finding nothing, without
/// building a field name.
fn kind_holds(kind: Kind, v: &Value) -> bool {
    match (kind, v) {
        (Kind::Text { min, max }, Value::String(s)) => (min..=max).contains(&s.chars().count()),
        (Kind::Integer { min, max }, Value::Number(n)) => {
            integral(n).is_some_and(|x| (min as f64..=max as f64).contains(&x))
        }
        (Kind::Number { min, max }, Value::Number(n)) => {
            n.as_f64().is_some_and(|x| (min..=max).contains(&x))
        }
        (Kind::Currency, Value::String(s)) => {
            s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())
        }
        _ => false,
    }
}

fn check_kind(field: &str, kind: Kind, v: &Value) -> Option<FieldError> {
    match kind {
        Kind::Text { min, max } => {
            let Value::String(s) = v else {
                return Some(FieldError::invalid_type(field, "a string"));
            };
            let n = s.chars().count();
            if n < min {
                Some(FieldError::too_short(field, min))
            } else if n > max {
                Some(FieldError::too_long(field, max))
            } else {
                None
            }
        }
        Kind::Integer { min, max } => {
            let Value::Number(n) = v else {
                return Some(FieldError::invalid_type(field, "an integer"));
            };
            let Some(value) = integral(n) else {
                return Some(FieldError::invalid_type(field, "an integer"));
            };
            out_of_range(field, value, min as f64, max as f64)
        }
        Kind::Number { min, max } => {
            let Value::Number(n) = v else {
                return Some(FieldError::invalid_type(field, "a number"));
            };
            // Without serde_json's arbitrary precision a number is always a finite double:
            // a literal past f64 (`1e400`) is not JSON it accepts. NaN is kept out all the same.
            out_of_range(field, n.as_f64().unwrap_or(f64::NAN), min, max)
        }
        Kind::Currency => {
            let Value::String(s) = v else {
                return Some(FieldError::invalid_type(field, "a string"));
            };
            let ok = s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase());
            (!ok).then(|| {
                FieldError::new(
                    field,
                    FieldCode::InvalidFormat,
                    format!("{field} must be 3 uppercase letters (ISO 4217), e.g. USD"),
                )
            })
        }
    }
}

/// `out_of_range` when `value` is not a finite number in `min..=max`; the message names the
/// bound that was broken.
fn out_of_range(field: &str, value: f64, min: f64, max: f64) -> Option<FieldError> {
    let message = if value.is_nan() || value < min {
        format!("{field} must be at least {min}")
    } else if value > max {
        format!("{field} must be at most {max}")
    } else {
        return None;
    };
    Some(FieldError::new(field, FieldCode::OutOfRange, message))
}

#[cfg(test)]
mod tests;
