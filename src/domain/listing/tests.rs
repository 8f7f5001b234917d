use super::*;
use crate::domain::fixtures::event;

fn ids(events: &[StoredEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.event_id().as_str()).collect()
}

#[test]
fn the_listing_order_is_newest_first_then_latest_received_then_by_id_descending() {
    let mut events: Vec<StoredEvent> = (0..10)
        .map(|i| {
            event(&format!("e{i}"))
                .at_ms(if i == 5 { 4 } else { i })
                .stored()
        })
        .collect();
    events.push(event("r").at_ms(4).received_after(1).stored());
    events.sort_by(newest_first);
    assert_eq!(
        ids(&events),
        ["e9", "e8", "e7", "e6", "r", "e5", "e4", "e3", "e2", "e1", "e0"]
    );
}

#[test]
fn page_keys_compare_in_listing_order() {
    let newer = PageKey::of(&event("a").at_ms(2).stored());
    let older = PageKey::of(&event("z").at_ms(1).stored());
    let same_time_higher_id = PageKey::of(&event("b").at_ms(2).stored());
    assert!(newer < older);
    assert!(same_time_higher_id < newer);
    let q = EventQuery {
        after: Some(newer.clone()),
        ..EventQuery::first(10)
    };
    assert!(q.is_past_start(&older));
    assert!(!q.is_past_start(&newer));
    assert!(!q.is_past_start(&same_time_higher_id));
}

#[test]
fn matches_applies_every_filter_with_inclusive_bounds() {
    let e = event("e")
        .user("u-1")
        .kind("item_added")
        .metadata(serde_json::json!({"productId": "p", "quantity": 1}))
        .at_ms(500)
        .stored();
    let at = e.event.occurred_at();
    let ms = chrono::Duration::milliseconds(1);
    let q = |f: fn(&mut EventQuery)| {
        let mut q = EventQuery::first(10);
        f(&mut q);
        q
    };
    assert!(q(|_| {}).matches(&e));
    assert!(q(|q| q.user_id = Some("u-1".into())).matches(&e));
    assert!(!q(|q| q.user_id = Some("u-2".into())).matches(&e));
    assert!(q(|q| q.event_type = Some(EventType::ItemAdded)).matches(&e));
    assert!(!q(|q| q.event_type = Some(EventType::CartViewed)).matches(&e));
    let mut bounds = EventQuery::first(10);
    bounds.since = Some(at);
    bounds.until = Some(at);
    assert!(bounds.matches(&e), "bounds are inclusive");
    bounds.since = Some(at + ms);
    assert!(!bounds.matches(&e));
    bounds.since = None;
    bounds.until = Some(at - ms);
    assert!(!bounds.matches(&e));
}

#[test]
fn matches_takes_only_events_after_the_start() {
    let e = event("m").at_ms(5).stored();
    let after = |id: &str, ms: i64, received: i64| EventQuery {
        after: Some(PageKey::of(
            &event(id).at_ms(ms).received_after(received).stored(),
        )),
        ..EventQuery::first(10)
    };
    assert!(after("a", 6, 0).matches(&e), "a newer start");
    assert!(after("z", 5, 1).matches(&e), "received later");
    assert!(
        after("n", 5, 0).matches(&e),
        "a higher id at the same instant"
    );
    assert!(!after("m", 5, 0).matches(&e), "the start itself");
    assert!(!after("l", 5, 0).matches(&e));
    assert!(!after("a", 4, 0).matches(&e));
}

#[test]
fn matches_agrees_with_the_position_order() {
    let events: Vec<StoredEvent> = (0..6)
        .flat_map(|i| {
            [
                event(&format!("a{i}")).at_ms(i / 2).stored(),
                event(&format!("b{i}"))
                    .at_ms(i / 2)
                    .received_after(i % 2)
                    .stored(),
            ]
        })
        .collect();
    for start in &events {
        let q = EventQuery {
            after: Some(PageKey::of(start)),
            ..EventQuery::first(10)
        };
        for e in &events {
            assert_eq!(q.matches(e), q.is_past_start(&PageKey::of(e)));
        }
    }
}
