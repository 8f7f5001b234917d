//! The `POST /events/batch` (and beacon) body parser, which reads event fields straight from
//! the bytes: it must agree with parsing the body as a JSON tree, on every body, about what
//! is an error and about every event's answer.
#![no_main]

use cartstream::adapters::inbound::http::input::{BatchBody, BatchEvents};
use cartstream::domain::{parse_event_owned, parse_fields, EventId, FieldError, ValidationPolicy};
use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

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
        (Ok(Value::Object(top)), Ok(BatchBody(events))) => agree(&shown, top, events, true),
        (Ok(_), Err(e)) => assert!(e.reason.contains("must be a JSON object"), "{shown}: {e:?}"),
        // An empty body is answered as one that is not an object, which is clearer to a
        // client than "EOF while parsing a value".
        (Err(_), Err(got)) if data.is_empty() => {
            assert!(got.reason.contains("must be a JSON object"), "{got:?}")
        }
        // Both refuse it. A skipped value is read by other code than a parsed one, which may
        // name the same fault differently ("key must be a string" for "trailing comma") or
        // place it a character earlier (a line earlier, when that character is a newline):
        // diagnostics only, so only the refusal is compared.
        (Err(_), Err(_)) => {}
        // A skipped value is not decoded, so a lone surrogate escape in it (valid JSON syntax,
        // but no Rust string) passes (docs/protocol-decisions.md). With every surrogate escape
        // replaced, the body must parse as a tree of the same shape; the events' answers may
        // differ, as a replaced escape may have been half of a valid pair in a field.
        (Err(want), Ok(BatchBody(events))) if is_surrogate_error(&want) => {
            let text = without_surrogate_escapes(&shown);
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(top)) => agree(&shown, top, events, false),
                // A skipped number past a double's range too (see below).
                Err(e) if e.to_string().contains("number out of range") => {}
                other => panic!("{shown}: accepted, but as {text}: {other:?}"),
            }
        }
        // Likewise a skipped number is not converted, so one past the range of a double passes.
        (Err(want), Ok(_)) if want.to_string().contains("number out of range") => {}
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

/// Whether the fast parser's `events` is what the tree holds; each event's answer too when
/// `answers`.
fn agree(shown: &str, mut top: Map<String, Value>, events: BatchEvents, answers: bool) {
    match (top.remove("events"), events) {
        (None, BatchEvents::Missing) => {}
        (Some(Value::Array(want)), BatchEvents::Items(got)) => {
            assert_eq!(want.len(), got.len(), "{shown}");
            for (w, g) in want.into_iter().zip(got) {
                let w = parse_event_owned(w, &policy(), now(), fresh);
                let g = match g {
                    Some(fields) => parse_fields(&fields, &policy(), now(), fresh),
                    None => Err(vec![FieldError::invalid_type("", "a JSON object")]),
                };
                if answers {
                    assert_eq!(w, g, "{shown}");
                }
            }
        }
        (Some(v), BatchEvents::NotAnArray) => assert!(!v.is_array(), "{shown}"),
        (w, g) => panic!("{shown}: tree {w:?}, fast {g:?}"),
    }
}

/// The text with every `\uD800`-`\uDFFF` escape replaced by `\u0041`.
fn without_surrogate_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("\\u") {
        let (before, after) = rest.split_at(i);
        out.push_str(before);
        let hex = after.get(2..6).unwrap_or("");
        let surrogate = u16::from_str_radix(hex, 16).is_ok_and(|c| (0xD800..=0xDFFF).contains(&c));
        // A backslash that is itself escaped (`\\u`) is not an escape: copy both.
        let escaped = out.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1;
        if surrogate && !escaped {
            out.push_str("\\u0041");
            rest = &after[6..];
        } else {
            out.push_str(&after[..2]);
            rest = &after[2..];
        }
    }
    out.push_str(rest);
    out
}

/// serde_json's errors for a lone surrogate escape: "lone leading surrogate in hex escape",
/// or "unexpected end of hex escape" when no second escape follows.
fn is_surrogate_error(e: &serde_json::Error) -> bool {
    let e = e.to_string();
    e.contains("surrogate") || e.contains("end of hex escape")
}
