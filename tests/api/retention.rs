//! `CARTSTREAM_RETENTION` on the embedded store, end to end: an event past the retention is
//! deleted by the server's background task, after which it is neither listed by `GET /events`
//! nor answered `duplicate`.

use crate::helpers::{item_added, poll_until, unique, TestApp};
use serde_json::Value;
use std::time::Duration;

async fn listed(app: &TestApp, user: &str) -> Vec<String> {
    let (status, body) = app
        .get_json(&format!("/events?userId={user}&limit=100"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_event_past_retention_is_deleted_then_neither_listed_nor_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let user = unique("retention-user");
    let id = unique("retention-event");
    let mut event = item_added(&id);
    event["userId"] = Value::from(user.clone());

    // Kept forever (no retention): stored and listed.
    let app = TestApp::spawn_in_with(dir.path(), |_| {}).await;
    assert_eq!(app.post_event(&event).await.0, 202);
    let seen = poll_until(
        Duration::from_secs(30),
        || listed(&app, &user),
        |ids| !ids.is_empty(),
    )
    .await;
    assert_eq!(seen, std::slice::from_ref(&id));
    let deleted = r#"cartstream_retention_deleted_events_total{store="embedded"}"#;
    assert_eq!(app.metric(deleted).await, None, "no retention, no series");
    app.stop().await.unwrap();

    // Restarted with a retention of 2 s: the event, already listed, goes.
    let app = TestApp::spawn_in_with(dir.path(), |s| {
        s.dedup_window = Duration::from_secs(1);
        s.max_past_age = Duration::from_secs(2);
        s.retention = Some(Duration::from_secs(2));
    })
    .await;
    let left = poll_until(
        Duration::from_secs(30),
        || listed(&app, &user),
        Vec::is_empty,
    )
    .await;
    assert!(left.is_empty(), "still listed after 30 s: {left:?}");
    // Counted, by store (ClickHouse counts mutations instead: tests/api/clickhouse_retention.rs).
    let counted = poll_until(
        Duration::from_secs(10),
        || app.metric(deleted),
        |n| *n == Some(1.0),
    )
    .await;
    assert_eq!(counted, Some(1.0), "the one old event");
    let mutations = r#"cartstream_retention_delete_mutations_total{store="embedded"}"#;
    assert_eq!(app.metric(mutations).await, Some(0.0));
    // Its dedup window ended long ago: the same id is new again, and listed again.
    event["timestamp"] = Value::from(crate::helpers::now_rfc3339());
    let (status, body) = app.post_event(&event).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("accepted")),
        "{body}"
    );
    app.stop().await.unwrap();
}
