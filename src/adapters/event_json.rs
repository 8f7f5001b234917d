//! An accepted event as JSON, with exactly the fields `GET /events` returns: what route
//! targets send downstream. A test in `inbound::wire` keeps the two identical.

use crate::domain::StoredEvent;
use chrono::SecondsFormat;
use serde_json::{Map, Value};
use std::fmt::Write;

pub fn event_json(s: &StoredEvent) -> Value {
    let e = &s.event;
    let mut m = Map::with_capacity(7);
    m.insert("eventId".into(), Value::from(e.event_id().as_str()));
    m.insert("userId".into(), Value::from(e.user_id()));
    if let Some(session) = e.session_id() {
        m.insert("sessionId".into(), Value::from(session));
    }
    m.insert("eventType".into(), Value::from(e.event_type().as_str()));
    m.insert(
        "timestamp".into(),
        Value::from(e.occurred_at().to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    m.insert("metadata".into(), Value::Object(e.metadata().to_object()));
    m.insert(
        "receivedAt".into(),
        Value::from(s.received_at.to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    Value::Object(m)
}

/// The same JSON as [`event_json`], written as text straight onto `out`: the metadata's
/// stored text is copied as it is, never parsed, and no tree is built.
pub fn write_event_json(s: &StoredEvent, out: &mut String) {
    let e = &s.event;
    out.push_str("{\"eventId\":");
    write_json_str(e.event_id().as_str(), out);
    out.push_str(",\"userId\":");
    write_json_str(e.user_id(), out);
    if let Some(session) = e.session_id() {
        out.push_str(",\"sessionId\":");
        write_json_str(session, out);
    }
    out.push_str(",\"eventType\":\"");
    out.push_str(e.event_type().as_str());
    out.push_str("\",\"timestamp\":\"");
    out.push_str(&e.occurred_at().to_rfc3339_opts(SecondsFormat::Millis, true));
    out.push_str("\",\"metadata\":");
    out.push_str(e.metadata().as_json());
    out.push_str(",\"receivedAt\":\"");
    out.push_str(&s.received_at.to_rfc3339_opts(SecondsFormat::Millis, true));
    out.push_str("\"}");
}

/// `s` as a JSON string, escaped as `serde_json` escapes it.
pub fn write_json_str(s: &str, out: &mut String) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // Only ASCII bytes are escaped, so `plain..i` ends on a character boundary.
        out.push_str(&s[plain..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{fixtures, Source};
    use proptest::prelude::*;

    #[test]
    fn the_text_is_the_same_json_as_the_tree() {
        for raw in [
            serde_json::json!({"eventId": "e", "userId": "u\"</é\\", "sessionId": "s\\", "eventType": "item_added",
                               "metadata": {"productId": "p\u{1}\n", "z": [1, {"a": null}], "q": 1.5e300}}),
            serde_json::json!({"userId": "u", "eventType": "cart_viewed"}),
        ] {
            let stored = fixtures::from_json(raw).via(Source::Http).stored();
            let mut text = String::new();
            write_event_json(&stored, &mut text);
            let tree = event_json(&stored);
            assert_eq!(
                text,
                tree.to_string(),
                "same keys, same order, same escapes"
            );
        }
    }

    proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(s in any::<String>()) {
            let mut out = String::new();
            write_json_str(&s, &mut out);
            prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn control_characters_too(s in "[\\x00-\\x1f\"\\\\a-zé]{0,24}") {
            let mut out = String::new();
            write_json_str(&s, &mut out);
            prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
        }
    }
}
