//! The checked-in OpenAPI document is the one the server serves.

use crate::helpers::TestApp;
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
    let doc: serde_json::Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    assert!(doc["components"]["schemas"]["CartEvent"]["properties"]["eventId"].is_object());
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
