use super::*;
use crate::domain::event::IdOrigin;
use chrono::TimeZone;
use proptest::prelude::*;
use serde_json::json;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 8, 10, 3, 27, 4).unwrap()
}

fn fresh() -> EventId {
    EventId::from_random_bytes([7; 16])
}

fn parse(v: Value) -> Result<CartEvent, Vec<FieldError>> {
    parse_event(&v, &ValidationPolicy::protocol_default(), now(), fresh)
}

fn codes(v: Value) -> Vec<(String, FieldCode)> {
    parse(v)
        .expect_err("expected the event to be rejected")
        .into_iter()
        .map(|e| (e.field, e.code))
        .collect()
}

fn one(field: &str, code: FieldCode) -> Vec<(String, FieldCode)> {
    vec![(field.to_owned(), code)]
}

fn item_added() -> Value {
    json!({
        "eventId": "9b2f6a1e-7c1d-4c53-9a55-1f0f8f0f3a10",
        "userId": "ws-test-user-123",
        "sessionId": "sess-42",
        "eventType": "item_added",
        "timestamp": "2025-08-10T03:27:04.123Z",
        "metadata": { "productId": "premium-subscription", "quantity": 1, "price": 29.99, "currency": "USD" }
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

fn with_meta(v: Value, key: &str, value: Value) -> Value {
    let mut v = v;
    v["metadata"][key] = value;
    v
}

#[test]
fn the_protocol_example_is_valid() {
    let e = parse(item_added()).unwrap();
    assert_eq!(
        e.event_id().as_str(),
        "9b2f6a1e-7c1d-4c53-9a55-1f0f8f0f3a10"
    );
    assert_eq!(e.id_origin(), IdOrigin::Client);
    assert_eq!(e.user_id(), "ws-test-user-123");
    assert_eq!(e.session_id(), Some("sess-42"));
    assert_eq!(e.event_type(), EventType::ItemAdded);
    assert_eq!(
        e.occurred_at(),
        now() + Duration::milliseconds(123),
        "timestamp kept to the millisecond"
    );
    assert_eq!(e.metadata().to_object()["price"], json!(29.99));
}

#[test]
fn non_objects_are_invalid_type_on_the_event_itself() {
    for v in [json!([]), json!("x"), json!(1), Value::Null] {
        assert_eq!(codes(v), one("", FieldCode::InvalidType));
    }
}

#[test]
fn event_id_charset_and_length() {
    assert!(parse(with(item_added(), "eventId", json!("a"))).is_ok());
    assert!(parse(with(item_added(), "eventId", json!("A-z_0.9:x"))).is_ok());
    assert!(parse(with(item_added(), "eventId", json!("x".repeat(64)))).is_ok());
    assert_eq!(
        codes(with(item_added(), "eventId", json!("x".repeat(65)))),
        one("eventId", FieldCode::TooLong)
    );
    assert_eq!(
        codes(with(item_added(), "eventId", json!(""))),
        one("eventId", FieldCode::TooShort)
    );
    for bad in ["a b", "a/b", "é", "a\u{0}"] {
        assert_eq!(
            codes(with(item_added(), "eventId", json!(bad))),
            one("eventId", FieldCode::InvalidFormat),
            "{bad:?}"
        );
    }
    assert_eq!(
        codes(with(item_added(), "eventId", json!(12))),
        one("eventId", FieldCode::InvalidType)
    );
    assert_eq!(
        codes(with(item_added(), "eventId", Value::Null)),
        one("eventId", FieldCode::InvalidType)
    );
}

#[test]
fn user_id_rules() {
    assert_eq!(
        codes(without(item_added(), "userId")),
        one("userId", FieldCode::Required)
    );
    assert_eq!(
        codes(with(item_added(), "userId", json!(""))),
        one("userId", FieldCode::TooShort)
    );
    assert_eq!(
        codes(with(item_added(), "userId", json!("   "))),
        one("userId", FieldCode::InvalidFormat)
    );
    assert_eq!(
        codes(with(item_added(), "userId", json!("a\nb"))),
        one("userId", FieldCode::InvalidFormat)
    );
    assert_eq!(
        codes(with(item_added(), "userId", json!(5))),
        one("userId", FieldCode::InvalidType)
    );
    assert!(parse(with(item_added(), "userId", json!("é".repeat(128)))).is_ok());
    assert_eq!(
        codes(with(item_added(), "userId", json!("é".repeat(129)))),
        one("userId", FieldCode::TooLong)
    );
    assert!(parse(with(item_added(), "userId", json!(" a "))).is_ok());
}

#[test]
fn session_id_rules() {
    let e = parse(without(item_added(), "sessionId")).unwrap();
    assert_eq!(e.session_id(), None);
    assert_eq!(
        codes(with(item_added(), "sessionId", json!(""))),
        one("sessionId", FieldCode::TooShort)
    );
    assert!(parse(with(item_added(), "sessionId", json!("s".repeat(128)))).is_ok());
    assert_eq!(
        codes(with(item_added(), "sessionId", json!("s".repeat(129)))),
        one("sessionId", FieldCode::TooLong)
    );
    assert_eq!(
        codes(with(item_added(), "sessionId", json!("a\u{7}"))),
        one("sessionId", FieldCode::InvalidFormat)
    );
    assert_eq!(
        codes(with(item_added(), "sessionId", Value::Null)),
        one("sessionId", FieldCode::InvalidType)
    );
}

#[test]
fn event_type_rules() {
    assert_eq!(
        codes(without(item_added(), "eventType")),
        one("eventType", FieldCode::Required)
    );
    assert_eq!(
        codes(with(item_added(), "eventType", json!("item_exploded"))),
        one("eventType", FieldCode::UnknownEventType)
    );
    assert_eq!(
        codes(with(item_added(), "eventType", json!("ITEM_ADDED"))),
        one("eventType", FieldCode::UnknownEventType)
    );
    assert_eq!(
        codes(with(item_added(), "eventType", json!(["item_added"]))),
        one("eventType", FieldCode::InvalidType)
    );
}

#[test]
fn timestamp_format_and_bounds() {
    let at = |s: &str| with(item_added(), "timestamp", json!(s));
    assert!(parse(at("2025-08-10T05:27:04+02:00")).is_ok());
    assert_eq!(
        codes(at("2025-08-10T03:27:04")),
        one("timestamp", FieldCode::InvalidFormat),
        "an offset is required"
    );
    assert_eq!(
        codes(at("yesterday")),
        one("timestamp", FieldCode::InvalidFormat)
    );
    assert_eq!(
        codes(with(item_added(), "timestamp", json!(1754796424123u64))),
        one("timestamp", FieldCode::InvalidType)
    );
    // Exactly at the bounds is allowed; one millisecond past is not.
    assert!(parse(at("2025-08-10T03:32:04.000Z")).is_ok());
    assert_eq!(
        codes(at("2025-08-10T03:32:04.001Z")),
        one("timestamp", FieldCode::OutOfRange)
    );
    assert!(parse(at("2025-07-11T03:27:04.000Z")).is_ok());
    assert_eq!(
        codes(at("2025-07-11T03:27:03.999Z")),
        one("timestamp", FieldCode::OutOfRange)
    );
}

#[test]
fn timestamp_is_truncated_to_milliseconds_in_utc() {
    let e = parse(with(
        item_added(),
        "timestamp",
        json!("2025-08-10T05:27:04.123987+02:00"),
    ))
    .unwrap();
    assert_eq!(e.occurred_at(), now() + Duration::milliseconds(123));
}

#[test]
fn missing_timestamp_defaults_to_receipt_time() {
    let e = parse(without(item_added(), "timestamp")).unwrap();
    assert_eq!(e.occurred_at(), now());
}

#[test]
fn bounds_are_configurable() {
    let policy = ValidationPolicy {
        max_future: Duration::seconds(1),
        max_past: Duration::seconds(1),
    };
    let v = with(item_added(), "timestamp", json!("2025-08-10T03:27:06Z"));
    let errs = parse_event(&v, &policy, now(), fresh).unwrap_err();
    assert_eq!(errs[0].code, FieldCode::OutOfRange);
    assert!(errs[0].message.contains("1 seconds"), "{}", errs[0].message);
}

#[test]
fn ids_are_derived_or_generated_when_absent() {
    let derived = parse(without(item_added(), "eventId")).unwrap();
    assert_eq!(derived.id_origin(), IdOrigin::Fingerprint);
    assert!(derived.event_id().as_str().starts_with("fp-"));
    let again = parse(without(item_added(), "eventId")).unwrap();
    assert_eq!(
        derived.event_id(),
        again.event_id(),
        "identical retry, same id"
    );

    let generated = parse(without(without(item_added(), "eventId"), "timestamp")).unwrap();
    assert_eq!(generated.id_origin(), IdOrigin::Generated);
    assert_eq!(generated.event_id(), &fresh());
    assert!(!generated.is_deduplicable());
}

#[test]
fn metadata_defaults_to_empty_and_must_be_an_object() {
    let e = parse(json!({"userId": "u", "eventType": "cart_viewed"})).unwrap();
    assert_eq!(e.metadata().as_json(), "{}");
    assert_eq!(
        codes(json!({"userId": "u", "eventType": "cart_viewed", "metadata": [1]})),
        one("metadata", FieldCode::InvalidType)
    );
    assert_eq!(
        codes(json!({"userId": "u", "eventType": "cart_viewed", "metadata": null})),
        one("metadata", FieldCode::InvalidType)
    );
}

#[test]
fn metadata_numbers_read_back_exactly_as_sent() {
    // Found by fuzzing: without serde_json's `float_roundtrip`, about one in ten 17-digit
    // doubles parsed one unit off, so the stored metadata, read back for `GET /events` and the
    // route targets, was not the number sent (and drifted again on every further trip).
    for x in [
        1.797_693_134_862_311_5e308,
        394_301.338_356_336_75,
        212_918.907_267_134_58,
        0.300_000_000_000_000_1,
        29.99,
    ] {
        let text =
            format!(r#"{{"userId":"u","eventType":"cart_viewed","metadata":{{"x":{x:?}}}}}"#);
        let raw: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(raw["metadata"]["x"].as_f64(), Some(x), "{text}");
        let e = parse(raw).unwrap();
        assert_eq!(e.metadata().to_object()["x"].as_f64(), Some(x), "{text}");
        let again = serde_json::to_string(&e.metadata().to_object()).unwrap();
        assert_eq!(
            again,
            e.metadata().as_json(),
            "{text}: read back, written again"
        );
    }
}

#[test]
fn metadata_size_limit_is_16_kib_compact() {
    // {"k":"<n x>"} is n + 8 bytes.
    let fits = json!({"userId": "u", "eventType": "cart_viewed", "metadata": {"k": "x".repeat(16_384 - 8)}});
    assert!(parse(fits).is_ok());
    let over = json!({"userId": "u", "eventType": "cart_viewed", "metadata": {"k": "x".repeat(16_384 - 7)}});
    assert_eq!(codes(over), one("metadata", FieldCode::TooLarge));
}

#[test]
fn metadata_depth_limit_counts_the_object_as_level_one() {
    let nest = |levels: usize| {
        let mut v = json!(1);
        for _ in 0..levels {
            v = json!({ "n": v });
        }
        json!({"userId": "u", "eventType": "cart_viewed", "metadata": v})
    };
    assert!(parse(nest(8)).is_ok());
    assert_eq!(codes(nest(9)), one("metadata", FieldCode::TooDeep));
    let arrays = json!({"userId": "u", "eventType": "cart_viewed",
        "metadata": {"a": [[[[[[[1]]]]]]]}});
    assert!(parse(arrays).is_ok(), "object + 7 arrays is 8 levels");
    let arrays = json!({"userId": "u", "eventType": "cart_viewed",
        "metadata": {"a": [[[[[[[[1]]]]]]]]}});
    assert_eq!(codes(arrays), one("metadata", FieldCode::TooDeep));
}

#[test]
fn required_metadata_per_event_type() {
    let base = |t: &str, m: Value| json!({"userId": "u", "eventType": t, "metadata": m});
    let cases: [(&str, &[&str]); 8] = [
        ("item_added", &["metadata.productId"]),
        ("item_removed", &["metadata.productId"]),
        (
            "quantity_updated",
            &["metadata.productId", "metadata.quantity"],
        ),
        ("cart_viewed", &[]),
        ("cart_cleared", &[]),
        ("coupon_applied", &["metadata.couponCode"]),
        (
            "checkout_started",
            &["metadata.cartValue", "metadata.itemCount"],
        ),
        (
            "checkout_completed",
            &["metadata.orderId", "metadata.cartValue"],
        ),
    ];
    for (t, required) in cases {
        let got = match parse(base(t, json!({}))) {
            Ok(_) => vec![],
            Err(errs) => errs,
        };
        let fields: Vec<&str> = got.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, required, "{t}");
        assert!(got.iter().all(|e| e.code == FieldCode::Required));
        if let Some(first) = got.first() {
            assert!(
                first.message.ends_with(&format!("for {t}")),
                "{}",
                first.message
            );
        }
    }
    let e = parse(base(
        "quantity_updated",
        json!({"productId": "p", "quantity": 0}),
    ))
    .unwrap();
    assert_eq!(e.metadata().to_object()["quantity"], json!(0));
    assert!(parse(base(
        "checkout_completed",
        json!({"orderId": "o", "cartValue": 0})
    ))
    .is_ok());
    assert!(parse(base(
        "coupon_applied",
        json!({"couponCode": "c".repeat(64)})
    ))
    .is_ok());
    assert_eq!(
        codes(base(
            "coupon_applied",
            json!({"couponCode": "c".repeat(65)})
        )),
        one("metadata.couponCode", FieldCode::TooLong)
    );
}

#[test]
fn typed_optional_metadata() {
    let m = |k: &str, v: Value| with_meta(item_added(), k, v);
    assert!(
        parse(m("quantity", json!(1.0))).is_ok(),
        "1.0 is an integer"
    );
    assert_eq!(
        codes(m("quantity", json!(1.5))),
        one("metadata.quantity", FieldCode::InvalidType)
    );
    assert_eq!(
        codes(m("quantity", json!(0))),
        one("metadata.quantity", FieldCode::OutOfRange)
    );
    assert_eq!(
        codes(m("quantity", json!("1"))),
        one("metadata.quantity", FieldCode::InvalidType)
    );
    assert_eq!(
        codes(m("quantity", Value::Null)),
        one("metadata.quantity", FieldCode::InvalidType)
    );
    assert!(parse(m("price", json!(0))).is_ok());
    assert_eq!(
        codes(m("price", json!(-0.01))),
        one("metadata.price", FieldCode::OutOfRange)
    );
    assert_eq!(
        codes(m("price", json!("29.99"))),
        one("metadata.price", FieldCode::InvalidType)
    );
    for bad in ["usd", "US", "USDX", "U5D"] {
        assert_eq!(
            codes(m("currency", json!(bad))),
            one("metadata.currency", FieldCode::InvalidFormat)
        );
    }
    assert_eq!(
        codes(m("currency", json!(840))),
        one("metadata.currency", FieldCode::InvalidType)
    );
    assert_eq!(
        codes(m("productId", json!(""))),
        one("metadata.productId", FieldCode::TooShort)
    );
    assert_eq!(
        codes(m("productId", json!("p".repeat(129)))),
        one("metadata.productId", FieldCode::TooLong)
    );
    assert!(parse(m("extra", json!({"kept": [1, "as given"]}))).is_ok());
    let cart = json!({"userId": "u", "eventType": "cart_viewed",
        "metadata": {"cartValue": -1, "itemCount": 1.5, "currency": "eur"}});
    assert_eq!(
        codes(cart),
        vec![
            ("metadata.cartValue".to_owned(), FieldCode::OutOfRange),
            ("metadata.itemCount".to_owned(), FieldCode::InvalidType),
            ("metadata.currency".to_owned(), FieldCode::InvalidFormat),
        ]
    );
}

#[test]
fn counts_and_amounts_have_upper_bounds() {
    let item = |k: &str, v: Value| with_meta(item_added(), k, v);
    let checkout = |k: &str, v: Value| {
        let base = json!({"userId": "u", "eventType": "checkout_completed",
            "metadata": {"orderId": "o-1", "cartValue": 10, "itemCount": 1}});
        with_meta(base, k, v)
    };
    let coupon = |v: Value| {
        json!({"userId": "u", "eventType": "coupon_applied",
            "metadata": {"couponCode": "SAVE", "discount": v}})
    };
    // At the bounds: accepted.
    assert!(parse(item("quantity", json!(MAX_COUNT))).is_ok());
    assert!(parse(item("price", json!(MAX_AMOUNT))).is_ok());
    assert!(parse(checkout("itemCount", json!(MAX_COUNT))).is_ok());
    assert!(parse(checkout("cartValue", json!(MAX_AMOUNT))).is_ok());
    assert!(parse(coupon(json!(MAX_AMOUNT))).is_ok());
    // Past them, however the number is written: out_of_range.
    for (event, field) in [
        (item("quantity", json!(MAX_COUNT + 1)), "metadata.quantity"),
        (item("quantity", json!(1e308)), "metadata.quantity"),
        (item("quantity", json!(u64::MAX)), "metadata.quantity"),
        (item("price", json!(1e308)), "metadata.price"),
        (item("price", json!(MAX_AMOUNT + 0.01)), "metadata.price"),
        (checkout("itemCount", json!(1e10)), "metadata.itemCount"),
        (checkout("cartValue", json!(f64::MAX)), "metadata.cartValue"),
        (coupon(json!(1e13)), "metadata.discount"),
    ] {
        assert_eq!(codes(event), one(field, FieldCode::OutOfRange), "{field}");
    }
    let errs = parse(item("quantity", json!(1e308))).unwrap_err();
    assert_eq!(
        errs[0].message,
        "metadata.quantity must be at most 1000000000"
    );
    let errs = parse(item("price", json!(1e13))).unwrap_err();
    assert_eq!(
        errs[0].message,
        "metadata.price must be at most 1000000000000"
    );
    // quantity_updated's required quantity has the same bound.
    let updated = json!({"userId": "u", "eventType": "quantity_updated",
        "metadata": {"productId": "p", "quantity": 2e9}});
    assert_eq!(
        codes(updated),
        one("metadata.quantity", FieldCode::OutOfRange)
    );
}

#[test]
fn every_failure_is_reported_at_once() {
    let v = json!({
        "eventId": "bad id",
        "userId": "",
        "sessionId": 3,
        "eventType": "nope",
        "timestamp": "soon",
        "metadata": "x"
    });
    assert_eq!(
        codes(v),
        vec![
            ("eventId".to_owned(), FieldCode::InvalidFormat),
            ("userId".to_owned(), FieldCode::TooShort),
            ("sessionId".to_owned(), FieldCode::InvalidType),
            ("eventType".to_owned(), FieldCode::UnknownEventType),
            ("timestamp".to_owned(), FieldCode::InvalidFormat),
            ("metadata".to_owned(), FieldCode::InvalidType),
        ]
    );
    let v = json!({"eventType": "checkout_started", "metadata": {"itemCount": -1}});
    assert_eq!(
        codes(v),
        vec![
            ("userId".to_owned(), FieldCode::Required),
            ("metadata.cartValue".to_owned(), FieldCode::Required),
            ("metadata.itemCount".to_owned(), FieldCode::OutOfRange),
        ]
    );
}

proptest! {
    #[test]
    fn event_ids_are_accepted_exactly_when_they_follow_the_rule(raw in "\\PC{0,70}") {
        let ok = !raw.is_empty() && raw.len() <= 64 && raw.chars().all(crate::domain::event::is_event_id_char);
        let result = parse(with(item_added(), "eventId", json!(raw)));
        prop_assert_eq!(result.is_ok(), ok);
    }

    #[test]
    fn user_ids_are_accepted_exactly_when_they_follow_the_rule(raw in "[ a-zé\\t\\u{0}-\\u{1f}]{0,130}") {
        let n = raw.chars().count();
        let ok = (1..=128).contains(&n)
            && !raw.chars().any(char::is_control)
            && !raw.chars().all(char::is_whitespace);
        let result = parse(with(item_added(), "userId", json!(raw)));
        prop_assert_eq!(result.is_ok(), ok);
    }

    #[test]
    fn quantities_follow_the_integer_rule(q in -5.0f64..5.0, integral in any::<bool>()) {
        let q = if integral { q.trunc() } else { q };
        let ok = q.fract() == 0.0 && q >= 1.0;
        let result = parse(with_meta(item_added(), "quantity", json!(q)));
        prop_assert_eq!(result.is_ok(), ok, "quantity {}", q);
    }

    #[test]
    fn valid_events_never_fail_and_keep_their_fields(
        user in "[a-zA-Z0-9]{1,128}", product in "[a-z]{1,128}", qty in 1u32..1000,
        offset_ms in -2_592_000_000i64..300_000,
    ) {
        let at = now() + Duration::milliseconds(offset_ms);
        let v = json!({"userId": user, "eventType": "item_added",
            "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "metadata": {"productId": product, "quantity": qty}});
        let e = parse(v).unwrap();
        prop_assert_eq!(e.user_id(), user.as_str());
        prop_assert_eq!(e.occurred_at(), at);
        prop_assert_eq!(e.id_origin(), IdOrigin::Fingerprint);
    }

    #[test]
    fn arbitrary_json_never_panics(s in "\\PC{0,200}") {
        if let Ok(v) = serde_json::from_str::<Value>(&s) {
            let _ = parse(v);
        }
    }
}

#[test]
fn metadata_is_kept_as_the_compact_json_it_was_measured_by() {
    let raw = json!({"userId": "u", "eventType": "item_added",
                     "metadata": {"productId": "p-1", "zeta": [1, {"a": null}], "alpha": "ü\n"}});
    let e = parse(raw.clone()).unwrap();
    // Keys in the order sent, no spaces, escapes as serde_json writes them.
    assert_eq!(
        e.metadata().as_json(),
        r#"{"productId":"p-1","zeta":[1,{"a":null}],"alpha":"ü\n"}"#
    );
    assert_eq!(Value::Object(e.metadata().to_object()), raw["metadata"]);
}

#[test]
fn metadata_at_the_size_limit_is_kept_whole_and_one_byte_more_is_rejected() {
    // {"productId":"p","pad":""} is 26 bytes before the padding.
    for (pad, ok) in [
        (METADATA_MAX_BYTES - 26, true),
        (METADATA_MAX_BYTES - 25, false),
    ] {
        let raw = json!({"userId": "u", "eventType": "item_added",
                         "metadata": {"productId": "p", "pad": "x".repeat(pad)}});
        match parse(raw.clone()) {
            Ok(e) => {
                assert!(ok);
                assert_eq!(e.metadata().as_json().len(), METADATA_MAX_BYTES);
            }
            Err(errs) => {
                assert!(!ok);
                assert_eq!(errs[0].code, FieldCode::TooLarge, "{errs:?}");
            }
        }
    }
}

#[test]
fn the_fast_kind_check_agrees_with_the_one_that_explains() {
    let kinds = [
        Kind::Text { min: 1, max: 3 },
        Kind::Integer { min: 1, max: 10 },
        Kind::Number {
            min: 0.0,
            max: 10.0,
        },
        Kind::Currency,
    ];
    let values = [
        json!(""),
        json!("a"),
        json!("abc"),
        json!("abcd"),
        json!("üüü"),
        json!("USD"),
        json!("usd"),
        json!("US"),
        json!(0),
        json!(1),
        json!(-1),
        json!(1.0),
        json!(1.5),
        json!(-0.5),
        json!(0.0),
        json!(10),
        json!(10.0),
        json!(10.5),
        json!(11),
        json!(1e308),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(null),
        json!(true),
        json!([1]),
        json!({"a": 1}),
    ];
    for kind in kinds {
        for v in &values {
            assert_eq!(
                kind_holds(kind, v),
                check_kind("metadata.x", kind, v).is_none(),
                "{kind:?} on {v}"
            );
        }
    }
}

/// `EventFields::from_object` before issue 18: one lookup and removal per field. Kept as the
/// reference the one-pass version is compared with.
fn fields_by_lookup(mut obj: Map<String, Value>) -> EventFields {
    let mut take = |k: &str| obj.remove(k);
    EventFields {
        event_id: take("eventId"),
        user_id: take("userId"),
        session_id: take("sessionId"),
        event_type: take("eventType"),
        timestamp: take("timestamp"),
        metadata: take("metadata"),
    }
}

/// Any JSON value: scalars, and arrays and objects of them a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-zA-Z0-9 ]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn fields_in_one_pass_are_the_fields_by_lookup(
        entries in proptest::collection::vec(
            (prop_oneof![
                Just("eventId".to_owned()), Just("userId".to_owned()),
                Just("sessionId".to_owned()), Just("eventType".to_owned()),
                Just("timestamp".to_owned()), Just("metadata".to_owned()),
                "[a-zA-Z]{1,9}",
            ], any_json()),
            0..10,
        ),
    ) {
        let obj: Map<String, Value> = entries.into_iter().collect();
        prop_assert_eq!(EventFields::from_object(obj.clone()), fields_by_lookup(obj));
    }
}

/// The metadata lookup by comparing keys finds what `get` finds, on either side of the size
/// at which it hands over to `get`.
#[test]
fn the_metadata_lookup_agrees_with_get() {
    for size in 0..=12 {
        let m: Map<String, Value> = (0..size).map(|i| (format!("k{i}"), json!(i))).collect();
        for i in 0..14 {
            let key = format!("k{i}");
            assert_eq!(super::lookup(&m, &key), m.get(&key), "size {size}, {key}");
        }
        assert_eq!(super::lookup(&m, ""), None);
    }
}
