//! The checked-in OpenAPI document is the one the server serves.

use crate::helpers::TestApp;
use cartstream::domain::{MAX_AMOUNT, MAX_COUNT};
use serde_json::{json, Value};
use std::path::Path;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");

#[tokio::test]
async fn the_served_document_matches_the_checked_in_file() {
    let app = TestApp::spawn().await;
    let served = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(served.status().as_u16(), 200);
    let served: serde_json::Value = served.json().await.unwrap();
    let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var("CARTSTREAM_UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(Path::new(CHECKED_IN).parent().unwrap()).unwrap();
        std::fs::write(CHECKED_IN, &pretty).unwrap();
    }
    let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_else(|e| {
        panic!("{CHECKED_IN}: {e}; regenerate with CARTSTREAM_UPDATE_OPENAPI=1 cargo test openapi")
    });
    assert!(
        checked_in == pretty,
        "openapi/openapi.json is stale; regenerate with CARTSTREAM_UPDATE_OPENAPI=1 cargo test openapi and commit it"
    );
}

#[tokio::test]
async fn every_operation_is_documented() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    for (path, method) in [
        ("/events", "post"),
        ("/events/batch", "post"),
        ("/events", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{method} {path} has no summary"
        );
        assert!(
            op["description"].as_str().is_some_and(|s| !s.is_empty()),
            "{method} {path} has no description"
        );
    }
    assert!(doc["components"]["schemas"]["ItemAddedEvent"]["properties"]["eventId"].is_object());
}

async fn document(app: &TestApp) -> Value {
    app.http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The schema a `$ref` points to.
fn resolve<'a>(doc: &'a Value, reference: &Value) -> &'a Value {
    let name = reference
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .unwrap_or_else(|| panic!("not a schema reference: {reference}"));
    &doc["components"]["schemas"][name]
}

/// The metadata schema and whether metadata is required, for one event type.
fn metadata_of<'a>(doc: &'a Value, event_type: &str) -> (&'a Value, bool) {
    let event = &doc["components"]["schemas"]["CartEvent"];
    let variant = resolve(doc, &event["discriminator"]["mapping"][event_type]);
    let parts = variant["allOf"].as_array().expect("allOf");
    assert_eq!(
        parts[0]["properties"]["eventType"]["enum"],
        json!([event_type])
    );
    let object = resolve(doc, &parts[1]["$ref"]);
    let required = object["required"]
        .as_array()
        .unwrap()
        .contains(&json!("metadata"));
    let metadata = &object["properties"]["metadata"];
    let metadata = match metadata.get("$ref") {
        Some(r) => resolve(doc, r),
        None => resolve(doc, &metadata["allOf"][0]["$ref"]),
    };
    (metadata, required)
}

#[tokio::test]
async fn each_event_type_documents_the_metadata_it_requires() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let event = &doc["components"]["schemas"]["CartEvent"];
    assert_eq!(event["discriminator"]["propertyName"], "eventType");
    assert_eq!(event["oneOf"].as_array().unwrap().len(), 8);
    // PROTOCOL.md section 1, "required metadata" column.
    for (event_type, fields) in [
        ("item_added", &["productId"][..]),
        ("item_removed", &["productId"]),
        ("quantity_updated", &["productId", "quantity"]),
        ("cart_viewed", &[]),
        ("cart_cleared", &[]),
        ("coupon_applied", &["couponCode"]),
        ("checkout_started", &["cartValue", "itemCount"]),
        ("checkout_completed", &["orderId", "cartValue"]),
    ] {
        let (metadata, metadata_required) = metadata_of(&doc, event_type);
        let required: Vec<&str> = metadata["required"]
            .as_array()
            .map(|r| r.iter().map(|f| f.as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(required, fields, "{event_type}");
        assert_eq!(metadata_required, !fields.is_empty(), "{event_type}");
    }
}

#[tokio::test]
async fn documented_bounds_are_the_ones_the_server_enforces() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let checks = [
        ("item_added", "quantity", 1.0, MAX_COUNT as f64),
        ("item_added", "price", 0.0, MAX_AMOUNT),
        ("quantity_updated", "quantity", 0.0, MAX_COUNT as f64),
        ("cart_viewed", "cartValue", 0.0, MAX_AMOUNT),
        ("cart_viewed", "itemCount", 0.0, MAX_COUNT as f64),
        ("coupon_applied", "discount", 0.0, MAX_AMOUNT),
        ("checkout_started", "cartValue", 0.0, MAX_AMOUNT),
        ("checkout_started", "itemCount", 0.0, MAX_COUNT as f64),
        ("checkout_completed", "cartValue", 0.0, MAX_AMOUNT),
        ("checkout_completed", "itemCount", 0.0, MAX_COUNT as f64),
    ];
    for (event_type, field, min, max) in checks {
        let (metadata, _) = metadata_of(&doc, event_type);
        let schema = &metadata["properties"][field];
        assert_eq!(
            schema["minimum"].as_f64(),
            Some(min),
            "{event_type}.{field}"
        );
        assert_eq!(
            schema["maximum"].as_f64(),
            Some(max),
            "{event_type}.{field}"
        );
        // The documented maximum is accepted, and one past it is not.
        let mut meta = json!({"productId": "p", "couponCode": "c", "orderId": "o",
            "cartValue": 1, "itemCount": 1, "quantity": 1});
        meta[field] = json!(max);
        let event = json!({"userId": "u", "eventType": event_type, "metadata": meta});
        let (status, body) = app.post_event(&event).await;
        assert_eq!(status, 202, "{event_type}.{field} = {max}: {body}");
        meta[field] = json!(max + 1.0);
        let event = json!({"userId": "u", "eventType": event_type, "metadata": meta});
        let (status, body) = app.post_event(&event).await;
        assert_eq!(status, 422, "{event_type}.{field} = {}: {body}", max + 1.0);
    }
}

#[tokio::test]
async fn replay_documents_what_it_requires_and_how_it_refuses() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    assert_eq!(
        doc["components"]["schemas"]["ReplayRequest"]["anyOf"],
        json!([{"required": ["route"]}, {"required": ["ids"]}])
    );
    let responses = &doc["paths"]["/dead-letters/replay"]["post"]["responses"];
    let replay = |content_type: &'static str, body: &'static str| {
        app.http
            .post(app.url("/dead-letters/replay"))
            .header("content-type", content_type)
            .body(body)
    };
    for (request, status, code) in [
        (replay("application/json", "{}"), 400, "invalid_message"),
        (
            replay("application/json", r#"{"ids":"x"}"#),
            400,
            "invalid_json",
        ),
        (
            replay("text/plain", r#"{"route":"r"}"#),
            415,
            "unsupported_media_type",
        ),
    ] {
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        assert!(
            responses[status.to_string()].is_object(),
            "{status} undocumented"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], code);
    }
    let r = replay("application/json", "")
        .body(format!(r#"{{"route":"{}"}}"#, "r".repeat(70_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert!(responses["413"].is_object(), "413 undocumented");
}

#[tokio::test]
async fn a_dead_letter_id_past_int64_is_a_documented_invalid_parameter() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let r = app
        .http
        .delete(app.url("/dead-letters/99999999999999999999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "invalid_parameter", "{body}");
    assert!(doc["paths"]["/dead-letters/{id}"]["delete"]["responses"]["400"].is_object());
}

#[tokio::test]
async fn an_unsupported_method_is_answered_405_with_allow() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10);
    for (template, item) in paths {
        let path = template.replace("{id}", "1");
        let mut documented: Vec<String> = item
            .as_object()
            .unwrap()
            .keys()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        documented.sort();
        for method in ["TRACE", "PUT", "PATCH"] {
            if documented.iter().any(|m| m == method) {
                continue;
            }
            let r = app
                .http
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(&path),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 405, "{method} {path}");
            let allow = r.headers()["allow"].to_str().unwrap();
            let mut listed: Vec<String> = allow.split(", ").map(str::to_owned).collect();
            listed.sort();
            assert_eq!(listed, documented, "{method} {path}: Allow: {allow}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "method_not_allowed");
        }
    }
}

#[tokio::test]
async fn interactive_docs_are_served() {
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().to_lowercase().contains("swagger"));
}

#[test]
fn the_protocol_copy_in_docs_matches_the_team_spec() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = root.join("../shared/spec/PROTOCOL.md");
    let Ok(original) = std::fs::read_to_string(&spec) else {
        crate::backends::loud_skip(&format!(
            "{} not present; cannot compare docs/PROTOCOL.md",
            spec.display()
        ));
        return;
    };
    let copy = std::fs::read_to_string(root.join("docs/PROTOCOL.md")).unwrap();
    assert!(
        copy == original,
        "docs/PROTOCOL.md differs from {}; copy it again",
        spec.display()
    );
}
