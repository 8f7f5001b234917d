//! A ClickHouse that answers but refuses, against a real 18.16: a column's type changed under
//! a running service, a user without INSERT rights, and a row the table refuses alone. In the
//! first two every row fails: the journal holds every acked event, `GET /ready` says which
//! error and since when, and once fixed everything arrives once. In the third the refused
//! event goes to the quarantine while the rest flows, and comes back on replay.

use crate::backends::{clickhouse_sql, clickhouse_url_or_skip, loud_skip, ThrowawayDatabase};
use crate::helpers::{item_added, poll_until, unique, TestApp};
use cartstream::app::config::Settings;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);
const READ_ONLY_USER: &str = "cartstream_ro";

fn with_clickhouse<'a>(
    url: &'a str,
    db: &'a ThrowawayDatabase,
    user: Option<&'a str>,
) -> impl FnOnce(&mut Settings) + 'a {
    move |s| {
        s.clickhouse_url = Some(url.to_owned());
        s.clickhouse_database = db.name.clone();
        s.clickhouse_user = user.map(str::to_owned);
        s.forward_interval = Duration::from_millis(50);
        s.forward_backoff_max = Duration::from_millis(300);
    }
}

async fn spawn(dir: &Path, url: &str, db: &ThrowawayDatabase, user: Option<&str>) -> TestApp {
    TestApp::spawn_in_with(dir, with_clickhouse(url, db, user)).await
}

async fn sql(url: &str, sql: &str) -> String {
    clickhouse_sql(url, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The distinct event ids the main table holds, and all its rows; none before the service
/// has created it.
async fn stored(url: &str, db: &ThrowawayDatabase) -> (u64, u64) {
    let query = format!(
        "SELECT uniqExact(event_id), count() FROM `{}`.cart_events FORMAT TSV",
        db.name
    );
    let Ok(body) = clickhouse_sql(url, &query).await else {
        return (0, 0);
    };
    let mut it = body.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

async fn wait_stored(url: &str, db: &ThrowawayDatabase, ids: u64) -> (u64, u64) {
    poll_until(WITHIN, || stored(url, db), |(n, _)| *n >= ids).await
}

fn events(n: usize, user: &str) -> Vec<Value> {
    (0..n)
        .map(|_| {
            let mut e = item_added(&unique("e"));
            e["userId"] = json!(user);
            e
        })
        .collect()
}

async fn send(app: &TestApp, events: &[Value]) {
    let (status, body) = app.post_batch(&json!({ "events": events })).await;
    assert_eq!(status, 200, "{body}");
    for r in body["results"].as_array().unwrap() {
        assert_eq!(r["status"], "accepted", "{body}");
    }
}

async fn ready(app: &TestApp) -> (u16, Value) {
    app.get_json("/ready").await
}

/// `/ready` once it answers 503 with forwarding failing in `class`.
async fn failing(app: &TestApp, class: &str) -> Value {
    let (status, body) = poll_until(
        WITHIN,
        || ready(app),
        |(s, b)| *s == 503 && b["forwarding"]["class"] == class,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["forwarding"]["status"], "failing", "{body}");
    assert_eq!(body["forwarding"]["class"], class, "{body}");
    assert!(body["forwarding"]["since"].is_string(), "{body}");
    assert!(
        body["forwarding"]["attempts"].as_u64().unwrap() >= 1,
        "{body}"
    );
    body
}

async fn recovered(app: &TestApp) -> Value {
    let (status, body) = poll_until(WITHIN, || ready(app), |(s, _)| *s == 200).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["forwarding"]["status"], "ok", "{body}");
    body
}

async fn listed(app: &TestApp, query: &str) -> usize {
    let (status, body) = app.get_json(&format!("/events?limit=1000{query}")).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_column_type_changed_under_the_service_holds_the_journal_and_names_the_column() {
    let Some(url) = clickhouse_url_or_skip().await else {
        return;
    };
    let db = ThrowawayDatabase::new(&url);
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path(), &url, &db, None).await;
    send(&app, &events(20, "u-before")).await;
    assert_eq!(wait_stored(&url, &db, 20).await.0, 20);

    let table = format!("`{}`.cart_events", db.name);
    // Float64 has the Int64's 8 bytes: unchecked, every insert would "succeed" with garbage.
    sql(
        &url,
        &format!("ALTER TABLE {table} MODIFY COLUMN occurred_at_ms Float64"),
    )
    .await;
    send(&app, &events(30, "u-during")).await;
    let body = failing(&app, "schema_mismatch").await;
    let error = body["forwarding"]["error"].as_str().unwrap();
    assert!(
        error.contains("occurred_at_ms is Float64, the service writes Int64"),
        "{error}"
    );
    // Nothing was written into the table that would misread it; the journal answers reads.
    assert_eq!(stored(&url, &db).await.0, 20);
    assert_eq!(listed(&app, "&userId=u-during").await, 30);
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains("cartstream_forwarding_failing 1"),
        "{metrics}"
    );

    sql(
        &url,
        &format!("ALTER TABLE {table} MODIFY COLUMN occurred_at_ms Int64"),
    )
    .await;
    let body = recovered(&app).await;
    assert_eq!(body["forwarding"]["quarantined"], 0, "{body}");
    assert_eq!(wait_stored(&url, &db, 50).await.0, 50);
    assert_eq!(listed(&app, "").await, 50);
    app.stop().await.unwrap();
}

/// Whether ClickHouse knows the read-only test user (scripts/ensure-services.sh adds it; the
/// server reloads its users within seconds).
async fn read_only_user(url: &str) -> bool {
    let client = reqwest::Client::new();
    let ask = || async {
        let resp = client
            .post(url)
            .header("X-ClickHouse-User", READ_ONLY_USER)
            .body("SELECT 1")
            .send()
            .await;
        match resp {
            Ok(r) => r.text().await.is_ok_and(|b| b.trim() == "1"),
            Err(_) => false,
        }
    };
    poll_until(Duration::from_secs(15), ask, |ok| *ok).await
}

#[tokio::test]
async fn a_user_without_insert_rights_holds_the_journal_until_a_user_with_them_takes_over() {
    let Some(url) = clickhouse_url_or_skip().await else {
        return;
    };
    if !read_only_user(&url).await {
        let msg = format!(
            "ClickHouse at {url} has no user {READ_ONLY_USER}; run scripts/ensure-services.sh"
        );
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI=true and {msg}"
        );
        loud_skip(&msg);
        return;
    }
    let db = ThrowawayDatabase::new(&url);
    let dir = tempfile::tempdir().unwrap();
    // The tables exist (an operator created them); the service's user may only read.
    let owner = spawn(dir.path(), &url, &db, None).await;
    send(&owner, &events(5, "u-owner")).await;
    assert_eq!(wait_stored(&url, &db, 5).await.0, 5);
    owner.stop().await.unwrap();

    let app = spawn(dir.path(), &url, &db, Some(READ_ONLY_USER)).await;
    send(&app, &events(25, "u-readonly")).await;
    let body = failing(&app, "refused").await;
    assert_eq!(body["forwarding"]["code"], 164, "{body}");
    let error = body["forwarding"]["error"].as_str().unwrap();
    assert!(error.contains("readonly"), "{error}");
    assert_eq!(
        body["forwarding"]["quarantined"], 0,
        "nothing set aside: {body}"
    );
    assert_eq!(listed(&app, "&userId=u-readonly").await, 25);
    assert_eq!(stored(&url, &db).await.0, 5);
    app.stop().await.unwrap();

    // Restarted with a user that may insert: the journal drains, each event once.
    let app = spawn(dir.path(), &url, &db, None).await;
    recovered(&app).await;
    assert_eq!(wait_stored(&url, &db, 30).await.0, 30);
    assert_eq!(listed(&app, "").await, 30);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_the_table_refuses_alone_is_quarantined_listed_replayed_and_deleted() {
    let Some(url) = clickhouse_url_or_skip().await else {
        return;
    };
    let db = ThrowawayDatabase::new(&url);
    let dir = tempfile::tempdir().unwrap();
    let app = spawn(dir.path(), &url, &db, None).await;
    send(&app, &events(1, "u-first")).await;
    assert_eq!(wait_stored(&url, &db, 1).await.0, 1);
    // A check-like guard: a materialized column computed before anything is written, which
    // throws for one user's events (18.16 has no CONSTRAINT).
    let table = format!("`{}`.cart_events", db.name);
    let guard = format!(
        "ALTER TABLE {table} ADD COLUMN guard UInt8 MATERIALIZED throwIf(user_id = 'poison-user')"
    );
    sql(&url, &guard).await;

    let mut batch = events(50, "u-batch");
    batch[17]["userId"] = json!("poison-user");
    let poison = batch[17]["eventId"].as_str().unwrap().to_owned();
    send(&app, &batch).await;
    let (_, quarantine) = poll_until(
        WITHIN,
        || app.get_json("/quarantine"),
        |(_, b)| b["total"] == 1,
    )
    .await;
    assert_eq!(quarantine["total"], 1, "{quarantine}");
    let entry = &quarantine["events"][0];
    assert_eq!(entry["event"]["eventId"], poison.as_str(), "{quarantine}");
    assert_eq!(entry["code"], 395, "{quarantine}");
    assert!(
        entry["reason"].as_str().unwrap().contains("throwIf"),
        "{quarantine}"
    );
    // The other 49 flowed on; the quarantined one is still an event of the service.
    assert_eq!(wait_stored(&url, &db, 50).await.0, 50);
    let body = recovered(&app).await;
    assert_eq!(body["forwarding"]["quarantined"], 1, "{body}");
    assert_eq!(listed(&app, "&userId=poison-user").await, 1);
    assert_eq!(listed(&app, "").await, 51);
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains("cartstream_quarantine_events 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cartstream_quarantined_events_total 1"),
        "{metrics}"
    );

    // Replayed while the guard is there: still refused, still kept.
    let replay = |body: Value| {
        let app = &app;
        async move {
            let resp = app
                .http
                .post(app.url("/quarantine/replay"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = replay(json!({})).await;
    assert_eq!(
        (status, &body["replayed"], &body["stillRefused"]),
        (200, &json!(0), &json!(1)),
        "{body}"
    );
    assert!(
        body["lastError"].as_str().unwrap().contains("395"),
        "{body}"
    );

    sql(&url, &format!("ALTER TABLE {table} DROP COLUMN guard")).await;
    let (status, body) = replay(json!({ "eventIds": [poison] })).await;
    assert_eq!((status, &body["replayed"]), (200, &json!(1)), "{body}");
    let (_, quarantine) = app.get_json("/quarantine").await;
    assert_eq!(quarantine["total"], 0, "{quarantine}");
    assert_eq!(wait_stored(&url, &db, 51).await.0, 51);
    assert_eq!(listed(&app, "&userId=poison-user").await, 1, "listed once");

    // Deleted on an operator's word.
    sql(&url, &guard).await;
    let mut batch = events(10, "u-again");
    batch[3]["userId"] = json!("poison-user");
    let second = batch[3]["eventId"].as_str().unwrap().to_owned();
    send(&app, &batch).await;
    poll_until(
        WITHIN,
        || app.get_json("/quarantine"),
        |(_, b)| b["total"] == 1,
    )
    .await;
    let delete = |id: String| {
        let app = &app;
        async move {
            let url = app.url(&format!("/quarantine/{id}"));
            app.http.delete(url).send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(delete(second.clone()).await, 204);
    assert_eq!(delete(second).await, 404);
    let (_, quarantine) = app.get_json("/quarantine").await;
    assert_eq!(quarantine["total"], 0, "{quarantine}");
    app.stop().await.unwrap();
}
