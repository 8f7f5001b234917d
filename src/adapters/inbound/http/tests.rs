//! The HTTP adapter against a fake use case: each outcome becomes its status and body.

use super::*;
use crate::adapters::inbound::testing::{
    errors_counted, id, metrics, no_rate_limits, FakeIngest, UNAVAILABLE,
};
use crate::adapters::inbound::wire::unavailable_message;
use crate::app::metrics::Channel;
use crate::domain::Source;
use crate::ports::{MockDedupStore, MockEventStore, Outcome, PortError, RouteAdmin, Unavailable};
use poem::test::TestClient;
use serde_json::{json, Value};

fn state(fake: FakeIngest) -> Arc<HttpState<FakeIngest>> {
    with_stores(fake, MockEventStore::new(), MockDedupStore::new())
}

fn with_stores(
    fake: FakeIngest,
    store: MockEventStore,
    dedup: MockDedupStore,
) -> Arc<HttpState<FakeIngest>> {
    Arc::new(http_state(fake, store, dedup))
}

fn http_state(
    fake: FakeIngest,
    store: MockEventStore,
    dedup: MockDedupStore,
) -> HttpState<FakeIngest> {
    HttpState {
        ingest: fake,
        limits: HttpLimits {
            max_event_body_bytes: 64 * 1024,
            max_batch_body_bytes: 1024 * 1024,
            max_batch_events: 3,
            read_max_page_bytes: 4 * 1024 * 1024,
            read_queue_timeout: Duration::from_millis(100),
            cors_max_age: Duration::from_secs(600),
        },
        gate: Gate {
            access: Arc::new(Access::default()),
            rate_limits: no_rate_limits(),
            proxies: TrustedProxies::default(),
            allowed_origins: Vec::new(),
        },
        backends: Backends {
            store: Arc::new(store),
            dedup: Arc::new(dedup),
            store_kind: "embedded",
            dedup_kind: "embedded",
            reads: Arc::new(Semaphore::new(1)),
            disk: None,
            damage: Arc::default(),
            forwarding: None,
        },
        metrics: metrics(),
        routing: None,
    }
}

fn client(state: &Arc<HttpState<FakeIngest>>) -> TestClient<impl Endpoint> {
    let stream = poem::endpoint::make_sync(|_| "the stream endpoint");
    TestClient::new(routes(Arc::clone(state), stream, Mounts::default()))
}

/// `POST /events` with `event`: the status and the JSON body.
async fn post_event(state: &Arc<HttpState<FakeIngest>>, event: Value) -> (u16, Value) {
    let resp = client(state).post("/events").body_json(&event).send().await;
    let status = resp.0.status().as_u16();
    (status, resp.json().await.value().deserialize())
}

#[tokio::test]
async fn an_accepted_event_is_202_with_its_id() {
    let state = state(FakeIngest::answering([Outcome::Accepted(id("e-1"))]));
    let (status, body) =
        post_event(&state, json!({"userId": "u", "eventType": "cart_viewed"})).await;
    assert_eq!(status, 202);
    assert_eq!(body, json!({"eventId": "e-1", "status": "accepted"}));
    assert_eq!(*state.ingest.calls.lock().unwrap(), vec![(1, Source::Http)]);
}

#[tokio::test]
async fn a_duplicate_event_is_200() {
    let state = state(FakeIngest::answering([Outcome::Duplicate(id("e-1"))]));
    let (status, body) =
        post_event(&state, json!({"userId": "u", "eventType": "cart_viewed"})).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"eventId": "e-1", "status": "duplicate"}));
}

#[tokio::test]
async fn a_rejected_event_is_422_with_every_broken_rule() {
    let state = state(FakeIngest::default());
    let (status, body) = post_event(&state, json!({"eventType": "no_such_type"})).await;
    assert_eq!(status, 422);
    assert_eq!(body["code"], "validation_failed");
    assert_eq!(body["retryable"], false);
    let fields: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["userId", "eventType"]);
    assert_eq!(
        errors_counted(&state.metrics, Channel::Http, "validation_failed"),
        1
    );
}

#[tokio::test]
async fn an_unavailable_event_is_503_worded_by_its_reason() {
    for reason in UNAVAILABLE {
        let state = state(FakeIngest::answering([Outcome::Unavailable(reason)]));
        let (status, body) =
            post_event(&state, json!({"userId": "u", "eventType": "cart_viewed"})).await;
        assert_eq!(status, 503, "{reason:?}");
        assert_eq!(
            body,
            json!({"code": "unavailable", "message": unavailable_message(reason), "retryable": true}),
            "{reason:?}"
        );
        assert_eq!(
            errors_counted(&state.metrics, Channel::Http, "unavailable"),
            1
        );
    }
}

#[tokio::test]
async fn a_batch_is_answered_per_event_in_order() {
    let state = state(FakeIngest::answering([
        Outcome::Duplicate(id("e-1")),
        Outcome::Accepted(id("e-3")),
    ]));
    let events = json!({"events": [
        {"eventId": "e-1", "userId": "u", "eventType": "cart_viewed"},
        {"eventId": "e-2", "eventType": "cart_viewed"},
        {"eventId": "e-3", "userId": "u", "eventType": "cart_viewed"},
    ]});
    let resp = client(&state)
        .post("/events/batch")
        .body_json(&events)
        .send()
        .await;
    resp.assert_status_is_ok();
    let body: Value = resp.json().await.value().deserialize();
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(body["rejected"], 1);
    let results = body["results"].as_array().unwrap();
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["duplicate", "rejected", "accepted"]);
    let indexes: Vec<u64> = results
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 1, 2]);
    assert_eq!(*state.ingest.calls.lock().unwrap(), vec![(3, Source::Http)]);
}

#[tokio::test]
async fn a_batch_over_the_limit_never_reaches_the_use_case() {
    let state = state(FakeIngest::default());
    let event = json!({"userId": "u", "eventType": "cart_viewed"});
    let events = json!({"events": [event, event, event, event]});
    let resp = client(&state)
        .post("/events/batch")
        .body_json(&events)
        .send()
        .await;
    resp.assert_status(poem::http::StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.value().deserialize();
    assert_eq!(body["code"], "invalid_message");
    assert!(state.ingest.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_batch_with_an_unavailable_event_is_503() {
    let state = state(FakeIngest::answering([
        Outcome::Accepted(id("e-1")),
        Outcome::Unavailable(Unavailable::JournalFull),
    ]));
    let event = json!({"userId": "u", "eventType": "cart_viewed"});
    let events = json!({"events": [event, event]});
    let resp = client(&state)
        .post("/events/batch")
        .body_json(&events)
        .send()
        .await;
    resp.assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.value().deserialize();
    assert_eq!(body["code"], "unavailable");
    assert_eq!(body["retryable"], true);
}

#[tokio::test]
async fn the_stream_path_goes_to_the_endpoint_it_was_given() {
    let state = state(FakeIngest::default());
    let resp = client(&state).get("/events/stream").send().await;
    resp.assert_status_is_ok();
    resp.assert_text("the stream endpoint").await;
}

#[tokio::test]
async fn readiness_names_the_backend_that_is_down() {
    let mut store = MockEventStore::new();
    store
        .expect_check()
        .returning(|| Err(PortError::Unavailable("refused".into())));
    let mut dedup = MockDedupStore::new();
    dedup.expect_check().returning(|| Ok(()));
    let state = with_stores(FakeIngest::default(), store, dedup);
    let resp = client(&state).get("/ready").send().await;
    resp.assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.value().deserialize();
    assert_eq!(
        body,
        json!({
            "status": "not_ready",
            "eventStore": {"backend": "embedded", "status": "down",
                           "error": "backend unavailable: refused"},
            "dedupStore": {"backend": "embedded", "status": "up"},
        })
    );
}

#[tokio::test]
async fn a_read_the_store_cannot_answer_is_503_with_retry_after() {
    let mut store = MockEventStore::new();
    store
        .expect_query()
        .returning(|_| Err(PortError::Unavailable("refused".into())));
    let state = with_stores(FakeIngest::default(), store, MockDedupStore::new());
    let resp = client(&state).get("/events").send().await;
    resp.assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
    resp.assert_header("retry-after", "5");
    let body: Value = resp.json().await.value().deserialize();
    assert_eq!(body["code"], "unavailable");
    assert_eq!(
        errors_counted(&state.metrics, Channel::Http, "unavailable"),
        1
    );
}

/// Route administration with one route that is retrying, and 3 dead letters to replay.
struct FakeRoutes;

#[async_trait::async_trait]
impl RouteAdmin for FakeRoutes {
    async fn routes(&self) -> Result<Vec<crate::ports::RouteReport>, PortError> {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z").unwrap();
        Ok(vec![crate::ports::RouteReport {
            name: "orders".into(),
            event_types: vec!["checkout_started".into()],
            target: "webhook https://example.test/hook".into(),
            retrying: true,
            backlog: 4,
            dead_letters: 3,
            delivered: 10,
            failed_attempts: 2,
            dead_lettered: 3,
            last_error: Some(("HTTP 500".into(), at.to_utc())),
            last_delivered_at: None,
        }])
    }

    async fn dead_letters(
        &self,
        _: Option<String>,
        _: Option<i64>,
        _: usize,
    ) -> Result<Vec<crate::ports::DeadLetter>, PortError> {
        Err(PortError::Unavailable("outbox locked".into()))
    }

    async fn replay(&self, _: Option<String>, _: Option<Vec<i64>>) -> Result<u64, PortError> {
        Ok(3)
    }

    async fn delete_dead_letter(&self, _: i64) -> Result<bool, PortError> {
        Ok(false)
    }
}

fn with_routes() -> Arc<HttpState<FakeIngest>> {
    let mut state = http_state(
        FakeIngest::default(),
        MockEventStore::new(),
        MockDedupStore::new(),
    );
    state.routing = Some(Arc::new(FakeRoutes));
    Arc::new(state)
}

#[tokio::test]
async fn the_operator_api_shows_what_route_admin_reports() {
    let state = with_routes();
    let resp = client(&state).get("/routes").send().await;
    resp.assert_status_is_ok();
    let body: Value = resp.json().await.value().deserialize();
    assert_eq!(
        body["routes"][0],
        json!({
            "name": "orders", "eventTypes": ["checkout_started"],
            "target": "webhook https://example.test/hook", "state": "retrying",
            "backlog": 4, "deadLetters": 3, "delivered": 10, "failedAttempts": 2,
            "deadLettered": 3,
            "lastError": {"message": "HTTP 500", "at": "2026-12-03T10:00:00.000Z"},
        })
    );
    let resp = client(&state)
        .post("/dead-letters/replay")
        .body_json(&json!({"route": "orders"}))
        .send()
        .await;
    resp.assert_status_is_ok();
    resp.assert_json(json!({"replayed": 3})).await;
    let resp = client(&state).delete("/dead-letters/7").send().await;
    resp.assert_status(poem::http::StatusCode::NOT_FOUND);
    let resp = client(&state).get("/dead-letters").send().await;
    resp.assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
}
