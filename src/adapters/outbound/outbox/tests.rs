use super::*;
use crate::domain::{fixtures, StoredEvent};
use serde_json::json;

fn event(id: &str) -> StoredEvent {
    fixtures::event(id)
        .metadata(json!({"k": "ü"}))
        .at_now()
        .stored()
}

/// When the outbox's clock says dead letters failed.
fn at() -> DateTime<Utc> {
    "2026-01-02T03:04:05.678Z".parse().unwrap()
}

fn open(dir: &Path) -> SqliteOutbox {
    let mut clock = crate::ports::MockClock::new();
    clock.expect_now().returning(at);
    SqliteOutbox::open(dir, Arc::new(clock)).unwrap()
}

fn d(route: &str, lane: u32, id: &str) -> Delivery {
    Delivery {
        route: route.into(),
        lane,
        event: event(id),
    }
}

fn ids(items: &[OutboxItem]) -> Vec<&str> {
    items
        .iter()
        .map(|i| i.event.event.event_id().as_str())
        .collect()
}

#[tokio::test]
async fn enqueue_moves_the_cursor_and_lanes_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path());
    assert_eq!(o.cursor("journal").await.unwrap(), None);
    o.enqueue(
        "journal",
        &[
            d("a", 0, "e1"),
            d("b", 0, "e1"),
            d("a", 1, "e2"),
            d("a", 0, "e3"),
        ],
        7,
    )
    .await
    .unwrap();
    assert_eq!(o.cursor("journal").await.unwrap(), Some(7));
    assert_eq!(
        o.cursor("embedded").await.unwrap(),
        None,
        "one cursor per feed"
    );
    assert_eq!(ids(&o.head("a", 0, 10).await.unwrap()), ["e1", "e3"]);
    assert_eq!(ids(&o.head("a", 1, 10).await.unwrap()), ["e2"]);
    assert_eq!(ids(&o.head("b", 0, 10).await.unwrap()), ["e1"]);
    assert_eq!(o.head("a", 0, 1).await.unwrap().len(), 1);
    assert_eq!(
        o.backlog("a").await.unwrap(),
        RouteBacklog {
            pending: 3,
            dead: 0
        }
    );
}

#[tokio::test]
async fn delivered_retried_and_dead_lettered_items() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path());
    o.enqueue("f", &[d("a", 0, "e1"), d("a", 0, "e2"), d("a", 0, "e3")], 1)
        .await
        .unwrap();
    let head = o.head("a", 0, 10).await.unwrap();
    o.delivered(&[head[0].id]).await.unwrap();
    let later = Utc::now() + chrono::Duration::seconds(60);
    o.retry_later(&[head[1].id], later, "boom").await.unwrap();
    let head2 = o.head("a", 0, 10).await.unwrap();
    assert_eq!(ids(&head2), ["e2", "e3"]);
    assert_eq!(head2[0].attempts, 1);
    assert_eq!(head2[0].next_at, crate::domain::event::to_millis(later));
    o.dead_letter(&[head[1].id], "gave up").await.unwrap();
    assert_eq!(ids(&o.head("a", 0, 10).await.unwrap()), ["e3"]);
    let dead = o.dead_letters(None, None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].attempts, dead[0].last_error.as_str()),
        (2, "gave up")
    );
    assert_eq!(dead[0].event.event.event_id().as_str(), "e2");
    assert_eq!(dead[0].failed_at, at(), "dated by the outbox's clock");
    assert_eq!(dead[0].event.event.metadata().to_object()["k"], "ü");
    assert_eq!(
        o.backlog("a").await.unwrap(),
        RouteBacklog {
            pending: 1,
            dead: 1
        }
    );
}

#[tokio::test]
async fn dead_letters_page_filter_replay_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path());
    o.enqueue(
        "f",
        &[
            d("a", 0, "e1"),
            d("b", 0, "e2"),
            d("a", 0, "e3"),
            d("a", 0, "e4"),
        ],
        1,
    )
    .await
    .unwrap();
    for route in ["a", "b"] {
        let all: Vec<i64> = o
            .head(route, 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect();
        o.dead_letter(&all, "x").await.unwrap();
    }
    let page1 = o.dead_letters(Some("a".into()), None, 2).await.unwrap();
    assert_eq!(page1.len(), 2);
    let page2 = o
        .dead_letters(Some("a".into()), Some(page1[1].id), 2)
        .await
        .unwrap();
    assert_eq!(page2.len(), 1);
    assert_eq!(o.dead_letters(None, None, 10).await.unwrap().len(), 4);

    assert!(o.delete_dead_letter(page2[0].id).await.unwrap());
    assert!(!o.delete_dead_letter(page2[0].id).await.unwrap());
    assert_eq!(o.replay(Some("a".into()), None).await.unwrap(), 2);
    let replayed = o.head("a", 0, 10).await.unwrap();
    assert_eq!(ids(&replayed), ["e1", "e3"]);
    assert!(replayed.iter().all(|i| i.attempts == 0));
    let b_dead = o.dead_letters(Some("b".into()), None, 10).await.unwrap();
    assert_eq!(
        o.replay(None, Some(vec![b_dead[0].id, 999])).await.unwrap(),
        1
    );
    assert!(o.dead_letters(None, None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_reopened_outbox_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path());
        o.enqueue("f", &[d("a", 0, "e1")], 42).await.unwrap();
    }
    let o = open(dir.path());
    assert_eq!(o.cursor("f").await.unwrap(), Some(42));
    assert_eq!(ids(&o.head("a", 0, 10).await.unwrap()), ["e1"]);
}
