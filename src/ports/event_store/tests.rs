use super::*;
use crate::domain::fixtures::event;
use serde_json::json;

/// An event at `ms` past the fixtures' instant, with `pad` bytes of metadata.
fn padded(id: &str, ms: i64, pad: usize) -> StoredEvent {
    event(id)
        .at_ms(ms)
        .metadata(json!({"pad": "x".repeat(pad)}))
        .stored()
}

fn ids(page: &EventPage) -> Vec<&str> {
    page.events
        .iter()
        .map(|e| e.event.event_id().as_str())
        .collect()
}

fn query(limit: usize, max_bytes: usize) -> EventQuery {
    EventQuery {
        max_bytes,
        ..EventQuery::first(limit)
    }
}

/// Ten events, `e0` oldest, `e9` newest; two share a timestamp and are told apart by id.
fn ten(pad: usize) -> Vec<StoredEvent> {
    (0..10)
        .map(|i| padded(&format!("e{i}"), if i == 5 { 4 } else { i }, pad))
        .collect()
}

#[test]
fn a_page_is_the_listing_prefix_whatever_order_events_are_offered_in() {
    let orders: [Vec<usize>; 3] = [
        (0..10).collect(),
        (0..10).rev().collect(),
        vec![3, 9, 0, 5, 4, 8, 1, 7, 2, 6],
    ];
    for order in orders {
        let events = ten(0);
        let mut b = PageBuilder::new(&query(4, usize::MAX));
        for i in &order {
            b.offer(events[*i].clone());
        }
        let page = b.finish();
        assert_eq!(ids(&page), ["e9", "e8", "e7", "e6"], "{order:?}");
        assert!(page.more);
    }
}

#[test]
fn the_last_page_says_there_is_no_more() {
    let mut b = PageBuilder::new(&query(10, usize::MAX));
    for e in ten(0) {
        b.offer(e);
    }
    assert!(!b.is_full());
    let page = b.finish();
    assert_eq!(page.events.len(), 10);
    assert!(!page.more);
}

#[test]
fn a_page_stops_before_the_event_that_would_pass_the_byte_budget() {
    let each = listed_bytes(&padded("e0", 0, 100));
    // Room for three and a half events.
    let mut b = PageBuilder::new(&query(1000, each * 7 / 2));
    for e in ten(100).into_iter().rev() {
        b.offer(e);
        if b.is_full() {
            break;
        }
    }
    let page = b.finish();
    assert_eq!(ids(&page), ["e9", "e8", "e7"]);
    assert!(page.more);
}

#[test]
fn an_event_larger_than_the_budget_still_makes_a_page_of_one() {
    let mut b = PageBuilder::new(&query(1000, 10));
    for e in ten(100) {
        b.offer(e);
    }
    let page = b.finish();
    assert_eq!(ids(&page), ["e9"]);
    assert!(page.more);
}

#[test]
fn the_builder_holds_no_more_than_the_page_and_one_event() {
    let each = listed_bytes(&padded("e000", 0, 1000));
    let mut b = PageBuilder::new(&query(1000, each * 2));
    for i in 0..500 {
        b.offer(padded(&format!("e{i:03}"), i, 1000));
        assert!(b.kept.len() <= 3, "{} kept after {i}", b.kept.len());
    }
    assert_eq!(ids(&b.finish()), ["e499", "e498"]);
}

#[test]
fn the_same_event_offered_twice_is_listed_once() {
    let mut b = PageBuilder::new(&query(10, usize::MAX));
    for e in ten(0).into_iter().chain(ten(0)) {
        b.offer(e);
    }
    assert_eq!(b.finish().events.len(), 10);
}
