//! The `POST /events/batch` (and beacon) body parser, which reads event fields straight from
//! the bytes: it must agree with parsing the body as a JSON tree, on every body, about what
//! is an error and about every event's answer.
#![no_main]

use cartstream::adapters::inbound::http::input::{BatchBody, BatchEvents};
use cartstream::domain::{parse_event_owned, parse_fields, EventId, FieldError, ValidationPolicy};
use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let fast = BatchBody::parse(data);
    let shown = String::from_utf8_lossy(data);
    // JSON is UTF-8 (PROTOCOL.md): a body that is not can never be accepted.
    if std::str::from_utf8(data).is_err() {
        assert!(
            fast.is_err(),
            "a body that is not UTF-8 was accepted: {shown}"
        );
        return;
    }
    let tree = serde_json::from_slice::<Value>(data);
    match (tree, fast) {
        (Ok(Value::Object(mut top)), Ok(BatchBody(events))) => match (top.remove("events"), events)
        {
            (None, BatchEvents::Missing) => {}
            (Some(Value::Array(want)), BatchEvents::Items(got)) => {
                assert_eq!(want.len(), got.len(), "{shown}");
                for (w, g) in want.into_iter().zip(got) {
                    let w = parse_event_owned(w, &policy(), now(), fresh);
                    let g = match g {
                        Some(fields) => parse_fields(fields, &policy(), now(), fresh),
                        None => Err(vec![FieldError::invalid_type("", "a JSON object")]),
                    };
                    assert_eq!(w, g, "{shown}");
                }
            }
            (Some(v), BatchEvents::NotAnArray) => assert!(!v.is_array(), "{shown}"),
            (w, g) => panic!("{shown}: tree {w:?}, fast {g:?}"),
        },
        (Ok(_), Err(e)) => assert!(e.reason.contains("must be a JSON object"), "{shown}: {e:?}"),
        // An empty body is answered as one that is not an object, which is clearer to a
        // client than "EOF while parsing a value".
        (Err(_), Err(got)) if data.is_empty() => {
            assert!(got.reason.contains("must be a JSON object"), "{got:?}")
        }
        (Err(want), Err(got)) => assert_eq!(want.to_string(), got.reason, "{shown}"),
        (w, g) => panic!("{shown}: tree {w:?}, fast {g:?}"),
    }
});

fn policy() -> ValidationPolicy {
    ValidationPolicy::protocol_default()
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
