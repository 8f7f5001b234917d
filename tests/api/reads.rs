//! `GET /events` as a client pages through it: keyset cursors, the byte budget, cursors bound
//! to their filters, empty parameters, and the bound on concurrent reads.

use crate::failing::GatedStore;
use crate::helpers::{embedded_ports, unique, TestApp};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// `secs` before the test process's first call, as the wire writes instants: one fixed
/// instant, so two events given the same `secs` share a timestamp.
fn ago(secs: i64) -> String {
    static BASE: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(chrono::Utc::now);
    (base - chrono::Duration::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn viewed(id: &str, user: &str, timestamp: &str, pad: usize) -> Value {
    json!({"eventId": id, "userId": user, "eventType": "cart_viewed", "timestamp": timestamp,
           "metadata": {"pad": "x".repeat(pad)}})
}

async fn store(app: &TestApp, events: Vec<Value>) {
    for chunk in events.chunks(100) {
        let (status, body) = app.post_batch(&json!({ "events": chunk })).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rejected"], 0, "{body}");
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads `path` (which has a query string) page by page, calling `between` after each page
/// but the last; returns every page.
async fn pages(app: &TestApp, path: &str, mut between: impl AsyncFnMut(usize)) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for n in 0..1000 {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_owned(),
        };
        let (status, page) = app.get_json(&url).await;
        assert_eq!(status, 200, "{page}");
        cursor = page["nextCursor"].as_str().map(str::to_owned);
        out.push(page);
        match cursor {
            Some(_) => between(n).await,
            None => return out,
        }
    }
    panic!("no end after 1000 pages");
}

#[tokio::test]
async fn paging_lists_every_event_once_in_order_while_events_arrive() {
    let app = TestApp::spawn_with(|s| s.read_max_page_bytes = 1024).await;
    let user = unique("u");
    // 30 events over 15 seconds, two per instant, so ties are broken by id.
    let mut initial = Vec::new();
    for i in 0..30 {
        initial.push(viewed(&format!("e-{i:02}"), &user, &ago(100 + i / 2), 0));
    }
    store(&app, initial).await;
    let mut late = Vec::new();
    let path = format!("/events?userId={user}&limit=4");
    let got = pages(&app, &path, async |n| {
        // Newer than every page so far (listed only by a fresh listing), and older than
        // the rest (so it must come exactly once, in its place).
        let newer = viewed(&format!("new-{n}"), &user, &ago(1), 0);
        let older = viewed(&format!("old-{n}"), &user, &ago(200 + n as i64), 0);
        late.push(format!("old-{n}"));
        store(&app, vec![newer, older]).await;
    })
    .await;
    let listed: Vec<String> = got.iter().flat_map(ids).collect();
    let mut expected: Vec<String> = (0..30)
        .map(|i| format!("e-{i:02}"))
        .collect::<Vec<_>>()
        .chunks(2)
        .flat_map(|pair| [pair[1].clone(), pair[0].clone()])
        .collect();
    expected.extend(late);
    assert_eq!(listed, expected);
    assert!(got.iter().all(|p| ids(p).len() <= 4));
    assert!(got.len() > 8, "{} pages", got.len());
    let unique_ids: HashSet<&String> = listed.iter().collect();
    assert_eq!(unique_ids.len(), listed.len());
}

#[tokio::test]
async fn a_page_stops_at_the_byte_budget_and_says_where_to_continue() {
    let app = TestApp::spawn_with(|s| s.read_max_page_bytes = 40_000).await;
    let user = unique("u");
    let events = (0..5)
        .map(|i| viewed(&format!("big-{i}"), &user, &ago(10 + i), 16_000))
        .collect();
    store(&app, events).await;
    let got = pages(
        &app,
        &format!("/events?userId={user}&limit=1000"),
        async |_| {},
    )
    .await;
    let sizes: Vec<usize> = got.iter().map(|p| ids(p).len()).collect();
    assert_eq!(sizes, [2, 2, 1], "16 KB events, a 40 KB budget");
    for page in &got {
        assert!(page.to_string().len() < 40_000 + 200, "the budget holds");
    }
    assert!(got[2].get("nextCursor").is_none());
    // One event larger than the budget still makes a page.
    let app = TestApp::spawn_with(|s| s.read_max_page_bytes = 1024).await;
    store(&app, vec![viewed("huge", &user, &ago(5), 16_000)]).await;
    let (status, page) = app.get_json("/events").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&page), ["huge"]);
    assert!(page.get("nextCursor").is_none());
}

#[tokio::test]
async fn a_full_page_of_limit_events_has_a_cursor_only_when_more_follow() {
    let app = TestApp::spawn().await;
    let user = unique("u");
    store(
        &app,
        (0..4)
            .map(|i| viewed(&format!("e{i}"), &user, &ago(10 + i), 0))
            .collect(),
    )
    .await;
    let (_, page) = app
        .get_json(&format!("/events?userId={user}&limit=4"))
        .await;
    assert_eq!(ids(&page).len(), 4);
    assert!(page.get("nextCursor").is_none(), "{page}");
    let (_, page) = app
        .get_json(&format!("/events?userId={user}&limit=3"))
        .await;
    assert!(page["nextCursor"].is_string(), "{page}");
}

#[tokio::test]
async fn a_cursor_that_is_altered_or_used_with_other_filters_is_refused() {
    let app = TestApp::spawn().await;
    let user = unique("u");
    store(
        &app,
        (0..3)
            .map(|i| viewed(&format!("e{i}"), &user, &ago(10 + i), 0))
            .collect(),
    )
    .await;
    let (_, page) = app
        .get_json(&format!("/events?userId={user}&limit=1"))
        .await;
    let cursor = page["nextCursor"].as_str().unwrap().to_owned();
    let (status, _) = app
        .get_json(&format!("/events?userId={user}&limit=2&cursor={cursor}"))
        .await;
    assert_eq!(status, 200, "limit may change between pages");

    let mut altered = cursor.clone().into_bytes();
    let i = altered.len() / 2;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for bad in [
        altered.as_str(),
        "bm90LWEtY3Vyc29y",
        "%%%",
        &cursor[..cursor.len() - 3],
    ] {
        let (status, body) = app
            .get_json(&format!("/events?userId={user}&cursor={bad}"))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["code"], "invalid_parameter");
        assert!(
            body["message"].as_str().unwrap().contains("cursor"),
            "{body}"
        );
    }
    for other in [
        "userId=someone-else".to_owned(),
        String::new(),
        format!("userId={user}&eventType=cart_viewed"),
        format!("userId={user}&since=2020-01-01T00:00:00Z"),
    ] {
        let (status, body) = app
            .get_json(&format!("/events?{other}&cursor={cursor}"))
            .await;
        assert_eq!(status, 400, "{other}: {body}");
        assert_eq!(body["code"], "invalid_parameter");
        assert!(
            body["message"].as_str().unwrap().contains("other filters"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn empty_since_until_and_cursor_are_as_if_not_sent() {
    let app = TestApp::spawn().await;
    let user = unique("u");
    store(&app, vec![viewed("e1", &user, &ago(10), 0)]).await;
    let (status, page) = app
        .get_json(&format!("/events?userId={user}&since=&until=&cursor="))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), ["e1"]);
    let (status, _) = app.get_json("/events?since=yesterday").await;
    assert_eq!(status, 400, "a non-empty bad value is still refused");
}

#[tokio::test]
async fn reads_past_the_concurrency_bound_get_503_with_retry_after() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let reached = Arc::new(tokio::sync::Notify::new());
    let (g, r) = (Arc::clone(&gate), Arc::clone(&reached));
    let app = Arc::new(
        TestApp::spawn_with_ports(
            |s| {
                s.read_max_concurrency = 1;
                s.read_queue_timeout = Duration::from_millis(300);
            },
            move |dir| {
                let ports = embedded_ports(dir);
                cartstream::app::startup::Ports {
                    store: Arc::new(GatedStore {
                        inner: ports.store.clone(),
                        gate: g,
                        reached: r,
                    }),
                    ..ports
                }
            },
        )
        .await,
    );
    // The one turn is taken by a read held at the store's gate.
    let first = tokio::spawn({
        let app = Arc::clone(&app);
        async move { app.get_json("/events").await }
    });
    tokio::time::timeout(Duration::from_secs(10), reached.notified())
        .await
        .expect("the first read reaches the store");

    let r = app.http.get(app.url("/events")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("1".to_owned())
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unavailable");
    assert_eq!(body["retryable"], true);

    // Once the first read is done, its turn serves the next.
    gate.add_permits(100);
    let (status, _) = first.await.unwrap();
    assert_eq!(status, 200);
    let (status, _) = app.get_json("/events").await;
    assert_eq!(status, 200);
}
