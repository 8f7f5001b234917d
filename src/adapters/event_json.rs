//! An accepted event as JSON, with exactly the fields `GET /events` returns: what route
//! targets send downstream. A test in `inbound::wire` keeps the two identical.

use crate::app::tap::TapRecord;
use crate::domain::StoredEvent;
use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
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
    write_millis(e.occurred_at(), out);
    out.push_str("\",\"metadata\":");
    out.push_str(e.metadata().as_json());
    out.push_str(",\"receivedAt\":\"");
    write_millis(s.received_at, out);
    out.push_str("\"}");
}

/// The tap's copy of an event as the values of the JSON that [`write_event_json`] writes, in
/// its order and without its keys, separated by commas (the tap's rows,
/// docs/protocol-decisions.md): `eventId`, `userId`, `sessionId` (`null` when absent),
/// `eventType`, `timestamp`, `metadata`, `receivedAt`, the two times in milliseconds since the
/// Unix epoch (what `GET /events` shows is their ISO 8601 form, to the millisecond).
pub fn write_record_values(r: &TapRecord, out: &mut String) {
    write_json_str(r.event_id(), out);
    out.push(',');
    write_json_str(r.user_id(), out);
    out.push(',');
    match r.session_id() {
        Some(session) => write_json_str(session, out),
        None => out.push_str("null"),
    }
    out.push_str(",\"");
    out.push_str(r.event_type().as_str());
    let _ = write!(
        out,
        "\",{},{},{}",
        r.occurred_at().timestamp_millis(),
        r.metadata(),
        r.received_at.timestamp_millis()
    );
}

/// `t` as `to_rfc3339_opts(SecondsFormat::Millis, true)` writes it, without chrono's general
/// formatter (half of the tap's JSON cost was its two timestamps per event).
pub fn write_millis(t: DateTime<Utc>, out: &mut String) {
    // The fields of the UTC date and time once each: `DateTime`'s own getters convert to local
    // time (an offset addition) on every call.
    let n = t.naive_utc();
    let (date, time) = (n.date(), n.time());
    let nanos = time.nanosecond();
    let Ok(year) = u32::try_from(date.year()) else {
        out.push_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true));
        return;
    };
    if year > 9999 || nanos >= 1_000_000_000 {
        // Five-digit years and leap seconds: chrono's own way.
        out.push_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true));
        return;
    }
    let mut b = *b"0000-00-00T00:00:00.000Z";
    for (range, value) in [
        (0..4, year),
        (5..7, date.month()),
        (8..10, date.day()),
        (11..13, time.hour()),
        (14..16, time.minute()),
        (17..19, time.second()),
        (20..23, nanos / 1_000_000),
    ] {
        let mut v = value;
        for digit in b[range].iter_mut().rev() {
            *digit = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    // ASCII digits and separators only, so always valid; one copy, not one push per char.
    if let Ok(text) = std::str::from_utf8(&b) {
        out.push_str(text);
    }
}

/// For each byte, how `serde_json` escapes it: 0 not at all, `u` as `\u00XX`, otherwise the
/// letter or sign after the backslash.
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// `s` as a JSON string, escaped as `serde_json` escapes it: plain runs are copied whole, and
/// one table look-up per byte finds the ones to escape.
pub fn write_json_str(s: &str, out: &mut String) {
    out.push('"');
    let mut plain = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let escape = ESCAPE[usize::from(b)];
        if escape == 0 {
            continue;
        }
        // Only ASCII bytes are escaped, so `plain..i` ends on a character boundary.
        out.push_str(&s[plain..i]);
        if escape == b'u' {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push('\\');
            out.push(char::from(escape));
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

    /// What a client of the tap (the `/live` page's `fromRow`) makes of the values: the
    /// object with its keys, absent `sessionId` left out, the times in ISO 8601.
    fn object_of_values(values: &str) -> Value {
        let row: Vec<Value> = serde_json::from_str(&format!("[{values}]")).unwrap();
        let [id, user, session, kind, at, metadata, received] =
            <[Value; 7]>::try_from(row).unwrap();
        let iso = |ms: Value| {
            let t = DateTime::from_timestamp_millis(ms.as_i64().unwrap()).unwrap();
            Value::from(t.to_rfc3339_opts(SecondsFormat::Millis, true))
        };
        let mut m = Map::new();
        m.insert("eventId".into(), id);
        m.insert("userId".into(), user);
        if !session.is_null() {
            m.insert("sessionId".into(), session);
        }
        m.insert("eventType".into(), kind);
        m.insert("timestamp".into(), iso(at));
        m.insert("metadata".into(), metadata);
        m.insert("receivedAt".into(), iso(received));
        Value::Object(m)
    }

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
            let record = TapRecord::new(&stored.event, stored.received_at, stored.source);
            let mut values = String::new();
            write_record_values(&record, &mut values);
            assert_eq!(
                object_of_values(&values).to_string(),
                text,
                "the tap's values are the same event"
            );
            assert_eq!(record.columns(), stored.columns());
        }
    }

    #[test]
    fn timestamps_chrono_writes_its_own_way_still_match() {
        for (secs, nanos) in [
            (-62_167_219_201, 0),           // year -1
            (253_402_300_800, 5),           // year 10000
            (1_483_228_799, 1_999_999_999), // a leap second
        ] {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            let mut out = String::new();
            write_millis(t, &mut out);
            assert_eq!(out, t.to_rfc3339_opts(SecondsFormat::Millis, true));
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
        fn timestamps_are_written_as_chrono_writes_them(
            secs in -62_167_219_200i64..253_402_300_800,
            nanos in 0u32..1_000_000_000,
        ) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            let mut out = String::new();
            write_millis(t, &mut out);
            prop_assert_eq!(out, t.to_rfc3339_opts(SecondsFormat::Millis, true));
        }

        #[test]
        fn control_characters_too(s in "[\\x00-\\x1f\"\\\\a-zé]{0,24}") {
            let mut out = String::new();
            write_json_str(&s, &mut out);
            prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
        }
    }
}
