//! Event validation (PROTOCOL.md section 1). On any JSON value it either accepts an event that
//! keeps every rule, or reports at least one well-formed error and nothing else; an accepted
//! event, sent again the way `GET /events` and route targets show it, is the same event (and
//! a derived id is derived again), so what downstream sees is exactly what was accepted.
#![no_main]

use cartstream::adapters::event_json::event_json;
use cartstream::domain::{
    parse_event, CartEvent, EventId, FieldError, IdOrigin, Source, StoredEvent, ValidationPolicy,
};
use chrono::{DateTime, Duration, Timelike, Utc};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const FIELDS: [&str; 6] = [
    "eventId",
    "userId",
    "sessionId",
    "eventType",
    "timestamp",
    "metadata",
];
const METADATA_KEYS: [&str; 9] = [
    "productId",
    "quantity",
    "price",
    "currency",
    "cartValue",
    "itemCount",
    "couponCode",
    "discount",
    "orderId",
];

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match parse_event(&raw, &policy(), now(), fresh) {
        Ok(event) => {
            keeps_every_rule(&raw, &event);
            round_trips(&raw, &event);
        }
        Err(errors) => well_formed_errors(&raw, &errors),
    }
});

fn keeps_every_rule(raw: &Value, e: &CartEvent) {
    let user = e.user_id();
    assert!((1..=128).contains(&user.chars().count()), "{raw}");
    assert!(!user.chars().any(char::is_control), "{raw}");
    assert!(!user.chars().all(char::is_whitespace), "{raw}");
    if let Some(s) = e.session_id() {
        assert!((1..=128).contains(&s.chars().count()), "{raw}");
        assert!(!s.chars().any(char::is_control), "{raw}");
    }
    assert_eq!(
        EventId::parse(e.event_id().as_str()).as_ref(),
        Ok(e.event_id()),
        "{raw}"
    );
    let at = e.occurred_at();
    assert_eq!(
        at.nanosecond() % 1_000_000,
        0,
        "{raw}: not whole milliseconds"
    );
    assert!(
        at - now() <= policy().max_future && now() - at <= policy().max_past,
        "{raw}"
    );

    let json = e.metadata().as_json();
    assert!(json.len() <= 16 * 1024, "{raw}");
    let object: Value = serde_json::from_str(json).expect("metadata is JSON");
    assert!(object.is_object() && depth(&object) <= 8, "{raw}");
    // The stored text is the compact form of what was sent, keys as sent.
    let sent = raw
        .get("metadata")
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    assert_eq!(object, sent, "{raw}: metadata changed");
    assert_eq!(
        serde_json::to_string(&object).unwrap(),
        json,
        "{raw}: not compact"
    );

    let expected = match (raw.get("eventId"), raw.get("timestamp")) {
        (Some(_), _) => IdOrigin::Client,
        (None, Some(_)) => IdOrigin::Fingerprint,
        (None, None) => IdOrigin::Generated,
    };
    assert_eq!(e.id_origin(), expected, "{raw}");
    if expected == IdOrigin::Generated {
        assert_eq!(e.event_id(), &fresh(), "{raw}");
    }
}

/// The event as a route target sends it, less `receivedAt`, is a valid event equal to it; and
/// without its `eventId`, a fingerprinted event gets the same id again.
fn round_trips(raw: &Value, e: &CartEvent) {
    let stored = StoredEvent {
        event: e.clone(),
        received_at: now(),
        source: Source::Http,
    };
    let mut shown = event_json(&stored);
    let Value::Object(fields) = &mut shown else {
        panic!("event_json is an object")
    };
    fields.remove("receivedAt");
    let again = parse_event(&shown, &policy(), now(), fresh)
        .unwrap_or_else(|errors| panic!("{raw} shown as {shown} is rejected: {errors:?}"));
    assert_eq!(again.event_id(), e.event_id(), "{raw} -> {shown}");
    assert_eq!(again.id_origin(), IdOrigin::Client);
    assert_eq!(again.user_id(), e.user_id());
    assert_eq!(again.session_id(), e.session_id());
    assert_eq!(again.event_type(), e.event_type());
    assert_eq!(again.occurred_at(), e.occurred_at());
    assert_eq!(again.metadata(), e.metadata(), "{raw} -> {shown}");

    if e.id_origin() == IdOrigin::Fingerprint {
        if let Value::Object(fields) = &mut shown {
            fields.remove("eventId");
        }
        let derived = parse_event(&shown, &policy(), now(), fresh).expect("still valid");
        assert_eq!(
            derived.event_id(),
            e.event_id(),
            "{raw} -> {shown}: another fingerprint"
        );
    }
}

fn well_formed_errors(raw: &Value, errors: &[FieldError]) {
    assert!(!errors.is_empty(), "{raw}: rejected without a reason");
    for (i, err) in errors.iter().enumerate() {
        assert!(!err.message.is_empty(), "{raw}: {err:?}");
        let known = if raw.is_object() {
            FIELDS.contains(&err.field.as_str())
                || err
                    .field
                    .strip_prefix("metadata.")
                    .is_some_and(|k| METADATA_KEYS.contains(&k))
        } else {
            err.field.is_empty()
        };
        assert!(known, "{raw}: error on an unexpected field: {err:?}");
        assert!(
            !errors[..i]
                .iter()
                .any(|o| o.field == err.field && o.code == err.code),
            "{raw}: the same error twice: {errors:?}"
        );
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn policy() -> ValidationPolicy {
    ValidationPolicy {
        max_future: Duration::minutes(5),
        max_past: Duration::days(30),
    }
}

/// A fixed clock, so a run is reproducible; the seed corpus's timestamps are near it.
fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-08-10T03:30:00Z")
        .expect("a valid instant")
        .with_timezone(&Utc)
}

fn fresh() -> EventId {
    EventId::from_random_bytes([7; 16])
}
