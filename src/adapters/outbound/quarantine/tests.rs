use super::*;
use crate::domain::fixtures;
use crate::ports::EventQuery;
use chrono::{TimeZone, Utc};

fn item(id: &str, user: &str) -> QuarantinedEvent {
    QuarantinedEvent {
        event: fixtures::event(id).user(user).stored(),
        reason: format!("refused {id}"),
        code: Some(395),
        quarantined_at: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
    }
}

fn key(id: &str) -> DedupKey {
    DedupKey::of(&fixtures::event(id).stored().event).unwrap()
}

#[tokio::test]
async fn kept_events_are_listed_found_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = SqliteQuarantine::open(dir.path()).unwrap();
        q.put(&[item("a", "u1"), item("b", "u2")]).await.unwrap();
        // Put twice (a crash between quarantine and the journal's removal): kept once.
        q.put(&[item("a", "u1")]).await.unwrap();
        assert_eq!(q.count(), 2);
    }
    let q = SqliteQuarantine::open(dir.path()).unwrap();
    assert_eq!(q.count(), 2);
    let all = q.list(0, 10).await.unwrap();
    let ids: Vec<&str> = all
        .iter()
        .map(|e| e.item.event.columns().event_id)
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(all[0].item, item("a", "u1"));
    let rest = q.list(all[0].id, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(
        q.known(&[key("a"), key("c"), key("b")]).await.unwrap(),
        [true, false, true]
    );
    let mut by_user = EventQuery::first(10);
    by_user.user_id = Some("u2".into());
    let page = q.query(&by_user).await.unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].columns().event_id, "b");
}

#[tokio::test]
async fn removed_events_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqliteQuarantine::open(dir.path()).unwrap();
    q.put(&[item("a", "u1"), item("b", "u1")]).await.unwrap();
    let got = q.get(&["b".into(), "zz".into()]).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(q.remove(&["a".into(), "zz".into()]).await.unwrap(), 1);
    assert_eq!(q.count(), 1);
    assert_eq!(q.known(&[key("a")]).await.unwrap(), [false]);
    assert!(q.query(&EventQuery::first(10)).await.unwrap().events.len() == 1);
}
