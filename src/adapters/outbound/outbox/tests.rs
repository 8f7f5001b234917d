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

/// Overwrites every `from` in the file at `path` with `to` (as long), leaving every page
/// valid: the kind of damage SQLite's checks do not see. Every one: a page may keep dead
/// copies of a row that was moved or deleted, and only the live one counts.
fn rewrite_in_file(path: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(path).unwrap();
    let mut found = 0;
    let mut at = 0;
    while let Some(i) = bytes[at..]
        .windows(from.len())
        .position(|w| w == from.as_bytes())
    {
        bytes[at + i..at + i + to.len()].copy_from_slice(to.as_bytes());
        at += i + to.len();
        found += 1;
    }
    assert!(found > 0, "{from} is not in {}", path.display());
    std::fs::write(path, bytes).unwrap();
}

fn marked(id: &str, mark: &str) -> Delivery {
    let mut d = d("a", 0, id);
    d.event = fixtures::event(id)
        .metadata(json!({ "mark": mark }))
        .at_now()
        .stored();
    d
}

#[tokio::test]
async fn a_changed_byte_inside_a_valid_page_fails_the_checksum_when_read() {
    use crate::adapters::outbound::integrity::{check_file, open_existing, Depth, Verdict};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outbox.db");
    {
        let o = open(dir.path());
        o.enqueue(
            "f",
            &[marked("e1", "first-0001"), marked("e2", "second-001")],
            2,
        )
        .await
        .unwrap();
        let dead = o.head("a", 0, 10).await.unwrap()[1].id;
        o.dead_letter(&[dead], "gave up").await.unwrap();
        o.enqueue("f", &[marked("e3", "third-0001")], 3)
            .await
            .unwrap();
    }
    // Closed: the WAL is written back into the file. Change a byte of e1's delivery and of
    // e2's dead letter.
    rewrite_in_file(&file, "first-0001", "first-0002");
    rewrite_in_file(&file, "second-001", "second-002");
    assert_eq!(
        check_file(&file, Depth::Full),
        Ok(Verdict::Ok),
        "SQLite sees nothing wrong"
    );
    let conn = open_existing(&file).unwrap();
    let failures = checksum_failures(&conn).unwrap();
    assert_eq!(
        failures,
        [("deliveries".to_owned(), 1), ("dead_letters".to_owned(), 2)]
    );
    drop(conn);

    let o = open(dir.path());
    let err = o.head("a", 0, 10).await.map(drop).unwrap_err().to_string();
    assert!(
        err.contains("row 1 of deliveries") && err.contains("fails its checksum"),
        "{err}"
    );
    let err = o
        .dead_letters(None, None, 10)
        .await
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(err.contains("row 2 of dead_letters"), "{err}");
    // Once the damaged row is gone, the rest reads as ever.
    o.delivered(&[1]).await.unwrap();
    assert_eq!(ids(&o.head("a", 0, 10).await.unwrap()), ["e3"]);
}

/// The schema before checksums: the same tables without the column.
const OLD_SCHEMA: &str = "
CREATE TABLE cursors (feed TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, route TEXT NOT NULL, lane INTEGER NOT NULL,
    event_id TEXT NOT NULL, user_id TEXT NOT NULL, session_id TEXT, event_type TEXT NOT NULL,
    occurred_at INTEGER NOT NULL, received_at INTEGER NOT NULL, source TEXT NOT NULL,
    metadata TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY, route TEXT NOT NULL, lane INTEGER NOT NULL,
    event_id TEXT NOT NULL, user_id TEXT NOT NULL, session_id TEXT, event_type TEXT NOT NULL,
    occurred_at INTEGER NOT NULL, received_at INTEGER NOT NULL, source TEXT NOT NULL,
    metadata TEXT NOT NULL, attempts INTEGER NOT NULL, last_error TEXT NOT NULL,
    failed_at INTEGER NOT NULL);
";

#[tokio::test]
async fn rows_of_an_outbox_from_before_checksums_still_read_and_move() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join("outbox.db")).unwrap();
        conn.execute_batch(OLD_SCHEMA).unwrap();
        let r = Row::from(&event("old"));
        conn.execute(
            &format!(
                "INSERT INTO deliveries (route, lane, {EVENT_COLUMNS})
                 VALUES ('a', 0, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                r.event_id,
                r.user_id,
                r.session_id,
                r.event_type,
                r.occurred_at,
                r.received_at,
                r.source,
                r.metadata
            ],
        )
        .unwrap();
        // `cartstream check` before a server of this version opened it: nothing to check.
        assert_eq!(checksum_failures(&conn).unwrap(), []);
    }
    let o = open(dir.path());
    o.enqueue("f", &[d("a", 0, "new")], 1).await.unwrap();
    let head = o.head("a", 0, 10).await.unwrap();
    assert_eq!(ids(&head), ["old", "new"]);
    // Unchecked, it still goes to the dead letters and back.
    o.dead_letter(&[head[0].id], "x").await.unwrap();
    assert_eq!(o.dead_letters(None, None, 10).await.unwrap().len(), 1);
    assert_eq!(o.replay(None, None).await.unwrap(), 1);
    assert_eq!(ids(&o.head("a", 0, 10).await.unwrap()), ["old", "new"]);
}
