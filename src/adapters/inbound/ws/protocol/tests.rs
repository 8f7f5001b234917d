//! The parser against the one it replaced (a JSON tree first, then the envelope taken out of
//! its map), kept here as the reference: both must give the same answer to every text.

use super::*;
use proptest::prelude::*;
use serde_json::json;

/// Both parsers, both modes, the same answer (refusal messages byte for byte).
fn same_as_reference(text: &str, max_batch: usize) -> Result<(), TestCaseError> {
    for raw in [false, true] {
        prop_assert_eq!(
            parse(text, max_batch, raw),
            reference::parse(text, max_batch, raw),
            "raw {} on {:?}",
            raw,
            text
        );
    }
    Ok(())
}

fn check(text: &str) {
    if let Err(e) = same_as_reference(text, 3) {
        panic!("{e}");
    }
}

#[test]
fn hand_picked_messages_parse_as_the_tree_did() {
    let event = r#"{"eventId":"e1","userId":"u","eventType":"item_added","timestamp":"2026-12-03T10:00:00Z","metadata":{"productId":"p","quantity":2}}"#;
    for text in [
        format!(r#"{{"type":"cart_event","requestId":"r-1","data":{event}}}"#),
        format!(r#"{{"data":{event},"requestId":"r-1","type":"cart_event"}}"#),
        format!(r#"{{"type":"cart_event_batch","data":[{event},{event},1]}}"#),
        format!(r#"{{"type":"cart_event_batch","data":[{event},{event},{event},{event}]}}"#),
        // repeated keys: the last value counts, in the envelope and in an event
        r#"{"type":"ping","type":"cart_event","data":{"userId":"a","userId":"b","x":1,"userId":7}}"#.into(),
        r#"{"type":"cart_event","data":{},"data":[1]}"#.into(),
        r#"{"type":"cart_event","data":[1],"data":{"metadata":{"a":1,"a":2}}}"#.into(),
        r#"{"requestId":"a","requestId":5,"type":"ping"}"#.into(),
        r#"{"requestId":5,"requestId":"a","type":"ping"}"#.into(),
        r#"{"type":"cart_event_batch","data":[{"userId":"a"}],"data":[]}"#.into(),
        // escaped keys are their text
        r#"{"typ\u0065":"ping","request\u0049d":"r"}"#.into(),
        r#"{"type":"cart_event","data":{"event\u0049d":"e","user\u0049d":"u\u00e9"}}"#.into(),
        r#"{"type":"cart_\u0065vent","data":{}}"#.into(),
        // `type`, `requestId`, `data` of every shape
        r#"{"type":null}"#.into(),
        r#"{"type":["ping"]}"#.into(),
        r#"{"type":{"a":"ping"}}"#.into(),
        r#"{"type":"Ping"}"#.into(),
        r#"{"type":"subscribe","requestId":"r","data":{}}"#.into(),
        r#"{"type":"ping","requestId":null}"#.into(),
        r#"{"type":"ping","requestId":["r"]}"#.into(),
        r#"{"type":"ping","requestId":{"r":1}}"#.into(),
        r#"{"type":"nope","requestId":7}"#.into(),
        format!(r#"{{"type":"ping","requestId":"{}"}}"#, "é".repeat(128)),
        format!(r#"{{"type":"ping","requestId":"{}"}}"#, "é".repeat(129)),
        format!(r#"{{"type":"x","requestId":"{}"}}"#, "r".repeat(129)),
        r#"{"type":"cart_event","data":null}"#.into(),
        r#"{"type":"cart_event","data":"x"}"#.into(),
        r#"{"type":"cart_event","data":1.5}"#.into(),
        r#"{"type":"cart_event_batch","data":[]}"#.into(),
        r#"{"type":"cart_event_batch","data":[[1,{"a":[]}],"s",-1,18446744073709551615,1.0,true,null]}"#.into(),
        r#"{"type":"cart_event_batch","data":[1,2,3,4]}"#.into(),
        r#"{"type":"cart_event_batch","data":{}}"#.into(),
        r#"{"type":"ping","data":[{"a":[[[]]]}]}"#.into(),
        // numbers: out of range is not JSON serde_json takes, wherever it is
        r#"{"type":"ping","x":1e400}"#.into(),
        r#"{"type":"ping","data":[1e400]}"#.into(),
        r#"{"type":"cart_event","data":{"other":-1e400}}"#.into(),
        r#"{"type":"cart_event","data":{"metadata":{"price":1e400}}}"#.into(),
        r#"{"type":"ping","requestId":1e400}"#.into(),
        r#"{"type":1e400}"#.into(),
        r#"[1e400]"#.into(),
        r#"{"type":"cart_event","data":{"x":1e-400,"y":123456789012345678901234567890}}"#.into(),
        // strings: bad escapes and control characters, wherever they are
        r#"{"type":"ping","x":"\ud800"}"#.into(),
        r#"{"type":"ping","x\ud800":1}"#.into(),
        r#"{"type":"cart_event","data":{"o":"\q"}}"#.into(),
        "{\"type\":\"ping\",\"x\":\"\u{1}\"}".into(),
        "{\"type\":\"ping\",\"\u{1}\":1}".into(),
        r#"{"type":"ping","x":"\uD83D\uDE00"}"#.into(),
        // not JSON, not an object, trailing text
        "".into(),
        " ".into(),
        "{".into(),
        "}".into(),
        r#"{"type":"ping"} x"#.into(),
        r#"{"type":"ping"}{}"#.into(),
        "{\"type\":\"ping\"} \n\t".into(),
        r#"{"type":"ping",}"#.into(),
        r#"{"type" "ping"}"#.into(),
        r#"{type:"ping"}"#.into(),
        r#"{"type":"cart_event","data":{"userId":"u",}}"#.into(),
        r#"{"type":"cart_event_batch","data":[1,]}"#.into(),
        r#"{"type":"cart_event_batch","data":[{"a":1}}"#.into(),
        "[]".into(),
        "[1,{\"type\":\"ping\"}]".into(),
        "\"ping\"".into(),
        "null".into(),
        "1".into(),
        "-".into(),
        "tru".into(),
        "{\"type\":\"ping\",\"x\":[1 2]}".into(),
    ] {
        check(&text);
    }
}

#[test]
fn nesting_is_limited_as_the_tree_limited_it() {
    // serde_json refuses more than 128 open arrays and objects at once, counted from the
    // envelope; kept or skipped, a value counts the same.
    for depth in [120, 125, 126, 127, 128, 129, 1_000, 100_000] {
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        for value in [&arrays, &objects] {
            for text in [
                format!(r#"{{"type":"ping","x":{value}}}"#),
                format!(r#"{{"type":"ping","requestId":{value}}}"#),
                format!(r#"{{"type":{value}}}"#),
                format!(r#"{{"type":"cart_event","data":{value}}}"#),
                format!(r#"{{"type":"cart_event","data":{{"userId":"u","x":{value}}}}}"#),
                format!(r#"{{"type":"cart_event","data":{{"metadata":{value}}}}}"#),
                format!(r#"{{"type":"cart_event_batch","data":[{value}]}}"#),
                format!(r#"{{"type":"cart_event_batch","data":[{{"x":{value}}}]}}"#),
                value.clone(),
            ] {
                check(&text);
            }
        }
    }
}

/// Keys a message or an event may hold: the envelope's, the event's, escaped forms of them,
/// near misses, and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("type"),
        Just("requestId"),
        Just("data"),
        Just("eventId"),
        Just("userId"),
        Just("sessionId"),
        Just("eventType"),
        Just("timestamp"),
        Just("metadata"),
        Just("typ\\u0065"),
        Just("request\\u0049d"),
        Just("\\u0064ata"),
        Just("event\\u0049d"),
        Just("user\\u0049d"),
        Just("metadat\\u0061"),
        Just("Type"),
        Just("eventid"),
        Just("x"),
        Just(""),
    ]
    .prop_map(|k| format!("\"{k}\""))
}

/// JSON text of any value, written out so it can hold what a `Value` cannot: repeated keys,
/// escapes, numbers out of range, bad strings.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop_oneof![
            Just("null"),
            Just("true"),
            Just("false"),
            Just("0"),
            Just("-0"),
            Just("7"),
            Just("-12"),
            Just("1.5"),
            Just("1.0"),
            Just("2e3"),
            Just("1E-2"),
            Just("1e400"),
            Just("-1e400"),
            Just("1e-400"),
            Just("18446744073709551615"),
            Just("18446744073709551616"),
            Just("-9223372036854775809"),
            Just("0.30000000000000004"),
            Just("01"),
            Just("1."),
            Just(r#""cart_event""#),
            Just(r#""cart_event_batch""#),
            Just(r#""ping""#),
            Just(r#""item_added""#),
            Just(r#""cart_viewed""#),
            Just(r#""2026-12-03T10:00:00Z""#),
            Just(r#""cart_\u0065vent""#),
            Just(r#""\ud800""#),
            Just(r#""\uD83D\uDE00""#),
            Just(r#""a\nb""#),
            Just(r#""\x""#),
            Just("\"\u{1}\""),
            Just(r#""é""#),
            Just(r#""""#),
        ]
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "[a-zA-Z0-9_ -]{0,12}".prop_map(|s| format!("\"{s}\"")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec((key(), inner), 0..7).prop_map(object_text),
        ]
    })
}

fn object_text(entries: Vec<(String, String)>) -> String {
    let entries: Vec<String> = entries
        .into_iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    format!("{{{}}}", entries.join(","))
}

/// An event object's text, with the event fields and their values likelier than in
/// `json_text`.
fn event_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        json_text(),
        Just(r#""u-1""#.to_owned()),
        Just(r#""item_added""#.to_owned()),
        Just(r#"{"productId":"p","quantity":2,"price":1.5,"currency":"USD"}"#.to_owned()),
    ];
    proptest::collection::vec((key(), value), 0..8).prop_map(object_text)
}

/// A message's text: envelope keys in any order, repeated or missing, values mostly of the
/// right shape.
fn message_text() -> impl Strategy<Value = String> {
    let type_value = prop_oneof![
        Just(r#""cart_event""#.to_owned()),
        Just(r#""cart_event_batch""#.to_owned()),
        Just(r#""ping""#.to_owned()),
        json_text(),
    ];
    let request_id = prop_oneof![
        "[a-z0-9-]{0,8}".prop_map(|s| format!("\"{s}\"")),
        (127usize..131).prop_map(|n| format!("\"{}\"", "r".repeat(n))),
        json_text(),
    ];
    let data = prop_oneof![
        event_text(),
        proptest::collection::vec(prop_oneof![event_text(), json_text()], 0..6)
            .prop_map(|v| format!("[{}]", v.join(","))),
        json_text(),
    ];
    let entry = prop_oneof![
        3 => type_value.prop_map(|v| format!(r#""type":{v}"#)),
        2 => request_id.prop_map(|v| format!(r#""requestId":{v}"#)),
        3 => data.prop_map(|v| format!(r#""data":{v}"#)),
        1 => (key(), json_text()).prop_map(|(k, v)| format!("{k}:{v}")),
    ];
    (proptest::collection::vec(entry, 0..6), " ?")
        .prop_map(|(entries, space)| format!("{{{}}}", entries.join(&format!(",{space}"))))
}

/// A text changed in one place: a character cut, one inserted, or the end cut off.
fn mutated(text: &str, at: usize, how: u8, with: char) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = at % (chars.len() + 1);
    match how % 3 {
        0 if at < chars.len() => {
            chars.remove(at);
        }
        1 => chars.insert(at, with),
        _ => chars.truncate(at),
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn messages_parse_as_the_tree_did(text in message_text(), max_batch in 1usize..5) {
        same_as_reference(&text, max_batch)?;
    }

    #[test]
    fn mutated_messages_parse_as_the_tree_did(
        text in message_text(),
        at in any::<usize>(),
        how in any::<u8>(),
        with in prop_oneof![
            Just('{'), Just('}'), Just('['), Just(']'), Just(','), Just(':'), Just('"'),
            Just('\\'), Just(' '), Just('0'), Just('e'), Just('-'), Just('.'), Just('x'),
            Just('\u{1}'), any::<char>(),
        ],
    ) {
        same_as_reference(&mutated(&text, at, how, with), 3)?;
    }

    #[test]
    fn any_json_text_parses_as_the_tree_did(text in json_text()) {
        same_as_reference(&text, 3)?;
    }

    #[test]
    fn any_bytes_parse_as_the_tree_did(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        same_as_reference(&String::from_utf8_lossy(&bytes), 3)?;
    }
}

fn refusal(text: &str) -> (Option<String>, ErrorCode) {
    let r = parse(text, 3, false).unwrap_err();
    (r.request_id, r.code)
}

#[test]
fn well_formed_messages() {
    assert_eq!(
        parse(r#"{"type":"ping","requestId":"r-3"}"#, 3, false).unwrap(),
        ClientMessage::Ping {
            request_id: Some("r-3".into())
        }
    );
    assert_eq!(
        parse(
            r#"{"type":"cart_event","data":{"a":1,"userId":"u"}}"#,
            3,
            false
        )
        .unwrap(),
        ClientMessage::Event {
            request_id: None,
            data: EventData::Fields(Box::new(EventFields {
                user_id: Some(json!("u")),
                ..EventFields::default()
            }))
        }
    );
    assert_eq!(
        parse(
            r#"{"type":"cart_event","data":{"a":1,"userId":"u"}}"#,
            3,
            true
        )
        .unwrap(),
        ClientMessage::Event {
            request_id: None,
            data: EventData::Raw(json!({"a": 1, "userId": "u"}))
        }
    );
    assert_eq!(
        parse(
            r#"{"type":"cart_event_batch","requestId":"","data":[1,{}]}"#,
            3,
            false
        )
        .unwrap(),
        ClientMessage::Batch {
            request_id: Some(String::new()),
            data: vec![EventData::Raw(json!(1)), EventData::Fields(Box::default())]
        }
    );
}

#[test]
fn not_json_or_not_an_object_is_invalid_json() {
    assert_eq!(refusal("{"), (None, ErrorCode::InvalidJson));
    assert_eq!(refusal("[1]"), (None, ErrorCode::InvalidJson));
    assert_eq!(refusal("\"ping\""), (None, ErrorCode::InvalidJson));
}

#[test]
fn unknown_or_missing_type_is_unsupported() {
    assert_eq!(
        refusal(r#"{"type":"subscribe","requestId":"r"}"#),
        (Some("r".into()), ErrorCode::UnsupportedMessageType)
    );
    assert_eq!(
        refusal(r#"{"requestId":"r"}"#),
        (Some("r".into()), ErrorCode::UnsupportedMessageType)
    );
    assert_eq!(
        refusal(r#"{"type":7}"#),
        (None, ErrorCode::UnsupportedMessageType)
    );
}

#[test]
fn a_bad_request_id_is_invalid_message_and_not_echoed() {
    assert_eq!(
        refusal(r#"{"type":"ping","requestId":5}"#),
        (None, ErrorCode::InvalidMessage)
    );
    let long = "r".repeat(129);
    assert_eq!(
        refusal(&format!(r#"{{"type":"ping","requestId":"{long}"}}"#)),
        (None, ErrorCode::InvalidMessage)
    );
    let ok = "r".repeat(128);
    assert!(parse(
        &format!(r#"{{"type":"ping","requestId":"{ok}"}}"#),
        3,
        false
    )
    .is_ok());
}

#[test]
fn envelope_errors_are_invalid_message() {
    for text in [
        r#"{"type":"cart_event"}"#,
        r#"{"type":"cart_event","data":[]}"#,
        r#"{"type":"cart_event","data":null}"#,
        r#"{"type":"cart_event_batch"}"#,
        r#"{"type":"cart_event_batch","data":{}}"#,
        r#"{"type":"cart_event_batch","data":[]}"#,
        r#"{"type":"cart_event_batch","data":[1,2,3,4]}"#,
    ] {
        assert_eq!(refusal(text).1, ErrorCode::InvalidMessage, "{text}");
    }
}

#[test]
fn replies_have_the_contract_shape() {
    let ack = Reply::EventAck {
        request_id: Some("r-1".into()),
        event_id: "e".into(),
        status: ItemStatus::Accepted,
    };
    assert_eq!(
        serde_json::to_value(&ack).unwrap(),
        json!({"type":"event_ack","requestId":"r-1","eventId":"e","status":"accepted"})
    );
    let err = Reply::Error {
        request_id: None,
        code: ErrorCode::RateLimited,
        message: "slow".into(),
        details: None,
        retryable: true,
        retry_after_ms: Some(250),
    };
    assert_eq!(
        serde_json::to_value(&err).unwrap(),
        json!({"type":"error","code":"rate_limited","message":"slow","retryable":true,"retryAfterMs":250})
    );
    let batch = Reply::BatchAck {
        request_id: Some("r-2".into()),
        result: BatchResult {
            accepted: 1,
            duplicates: 0,
            rejected: 0,
            results: vec![],
        },
    };
    assert_eq!(
        serde_json::to_value(&batch).unwrap(),
        json!({"type":"batch_ack","requestId":"r-2","accepted":1,"duplicates":0,"rejected":0,"results":[]})
    );
}

proptest! {
    /// An event's ack written by hand is exactly what serde writes for it: any ids (control
    /// characters, quotes, backslashes, any Unicode), with and without a request id.
    #[test]
    fn an_event_ack_is_written_as_serde_writes_it(
        request_id in proptest::option::of(any::<String>()),
        event_id in any::<String>(),
        status in prop_oneof![
            Just(ItemStatus::Accepted),
            Just(ItemStatus::Duplicate),
            Just(ItemStatus::Rejected),
        ],
    ) {
        let reply = Reply::EventAck { request_id, event_id, status };
        prop_assert_eq!(reply.to_text(), serde_json::to_string(&reply).unwrap());
    }
}
