//! The `200` body of `GET /events`, written straight from the stored events.
//!
//! Each event's metadata is copied from the JSON text the store holds, never parsed into a
//! `serde_json::Value` (a tree takes several times the size of its text, and the generic
//! payload would build a second one for the whole list). The page stops at its byte budget
//! here too, measured exactly as written, so JSON escapes cannot take it past the budget.

use super::api::EventList;
use crate::domain::StoredEvent;
use crate::ports::{listed_bytes, EventPage, PageKey};
use bytes::Bytes;
use chrono::SecondsFormat;
use poem::http::header;
use poem::{Body, IntoResponse, Response};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use std::time::Duration;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// How long a read keeps its turn while its page is being sent: long enough for a page to
/// reach a client on a slow link, short enough that a client that stops reading cannot keep
/// other reads waiting for long.
const SEND_BOUND: Duration = Duration::from_secs(10);
/// The page goes out in pieces this size, so the turn is released only once the client has
/// taken nearly all of it.
const CHUNK: usize = 64 * 1024;

/// A written [`EventList`]: documented as that schema, sent as these bytes.
pub struct EventListJson {
    body: Vec<u8>,
    turn: Option<OwnedSemaphorePermit>,
}

impl EventListJson {
    /// Keeps `turn` (a read's place among `read_max_concurrency`) until the page is sent or
    /// [`SEND_BOUND`] passes: a written page waiting for its client is memory too.
    pub fn holding(mut self, turn: OwnedSemaphorePermit) -> Self {
        self.turn = Some(turn);
        self
    }
}

impl Payload for EventListJson {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        EventList::schema_ref()
    }

    fn register(registry: &mut Registry) {
        EventList::register(registry);
    }
}

impl IntoResponse for EventListJson {
    fn into_response(self) -> Response {
        let len = self.body.len();
        let response = Response::builder()
            .content_type(Self::CONTENT_TYPE)
            .header(header::CONTENT_LENGTH, len);
        let Some(turn) = self.turn else {
            return response.body(self.body);
        };
        let (sent, released) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _turn = turn;
            let _ = tokio::time::timeout(SEND_BOUND, released).await;
        });
        let bytes = Bytes::from(self.body);
        // `sent` lives in the stream, which is dropped once its last piece is taken or the
        // connection ends; either releases the turn.
        let pieces = (0..len).step_by(CHUNK).map(move |at| {
            let _ = &sent;
            Ok::<_, std::io::Error>(bytes.slice(at..len.min(at + CHUNK)))
        });
        response.body(Body::from_bytes_stream(futures_util::stream::iter(pieces)))
    }
}

/// Writes `page` as an [`EventList`], stopping before the event that would take the events'
/// bytes past `max_bytes` (the first event is always written). `next_cursor` makes the
/// cursor for the page after a given last event; it is written when the store said there is
/// more or this page stopped early.
pub fn write_page(
    page: EventPage,
    max_bytes: usize,
    next_cursor: impl FnOnce(&PageKey) -> String,
) -> EventListJson {
    // Sized once up front: growing by doubling would hold up to twice the page for a moment.
    let events_bytes: usize = page.events.iter().map(listed_bytes).sum();
    let mut out = Vec::with_capacity(events_bytes + page.events.len() + 256);
    out.extend_from_slice(b"{\"events\":[");
    let mut bytes = 0usize;
    let mut last: Option<PageKey> = None;
    let mut stopped = false;
    // Events are dropped as they are written, so the page is not held twice for long.
    for e in page.events {
        let mark = out.len();
        if last.is_some() {
            out.push(b',');
        }
        let start = out.len();
        write_event(&mut out, &e);
        bytes = bytes.saturating_add(out.len() - start);
        if last.is_some() && bytes > max_bytes {
            out.truncate(mark);
            stopped = true;
            break;
        }
        last = Some(PageKey::of(&e));
    }
    out.push(b']');
    if let Some(last) = last.filter(|_| page.more || stopped) {
        out.extend_from_slice(b",\"nextCursor\":");
        write_str(&mut out, &next_cursor(&last));
    }
    out.push(b'}');
    EventListJson {
        body: out,
        turn: None,
    }
}

/// One event as `EventView` serializes it: same fields, same order.
fn write_event(out: &mut Vec<u8>, s: &StoredEvent) {
    let e = &s.event;
    out.extend_from_slice(b"{\"eventId\":");
    write_str(out, e.event_id().as_str());
    out.extend_from_slice(b",\"userId\":");
    write_str(out, e.user_id());
    if let Some(session) = e.session_id() {
        out.extend_from_slice(b",\"sessionId\":");
        write_str(out, session);
    }
    out.extend_from_slice(b",\"eventType\":");
    write_str(out, e.event_type().as_str());
    out.extend_from_slice(b",\"timestamp\":");
    write_str(
        out,
        &e.occurred_at().to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    // Stored as compact JSON of a validated object: copied as it is.
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(e.metadata().as_json().as_bytes());
    out.extend_from_slice(b",\"receivedAt\":");
    write_str(
        out,
        &s.received_at.to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    out.push(b'}');
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail, and a str always serializes.
    let _ = serde_json::to_writer(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::inbound::wire::EventView;
    use crate::domain::{fixtures, Source};
    use serde_json::{json, Value};

    fn stored(raw: Value) -> StoredEvent {
        fixtures::from_json(raw).via(Source::Ws).stored()
    }

    fn plain(id: &str) -> StoredEvent {
        stored(
            json!({"eventId": id, "userId": "u", "sessionId": "s", "eventType": "item_added",
                      "metadata": {"productId": "p", "z": [1, {"a": null}]}}),
        )
    }

    fn page(events: Vec<StoredEvent>, more: bool) -> EventPage {
        EventPage { events, more }
    }

    fn parse(body: &EventListJson) -> Value {
        serde_json::from_slice(&body.body).unwrap()
    }

    #[test]
    fn events_are_written_as_event_view_serializes_them() {
        let events = vec![
            plain("e1"),
            stored(json!({"userId": "ü \"q\" \\", "eventType": "cart_viewed",
                          "metadata": {"note": "🛒 \t \"", "n": 1.5e3}})),
        ];
        let views: Vec<Value> = events
            .iter()
            .map(|e| serde_json::to_value(EventView::from(e.clone())).unwrap())
            .collect();
        let body = write_page(page(events, false), usize::MAX, |_| unreachable!());
        assert_eq!(parse(&body), json!({ "events": views }));
    }

    #[test]
    fn listed_bytes_is_the_written_size_of_an_event_without_escapes() {
        for e in [
            plain("e1"),
            stored(json!({"userId": "u", "eventType": "cart_viewed"})),
        ] {
            let mut out = Vec::new();
            write_event(&mut out, &e);
            assert_eq!(listed_bytes(&e), out.len());
        }
    }

    #[test]
    fn a_page_the_store_cut_gets_a_cursor_for_its_last_event() {
        let events = vec![plain("e1"), plain("e2")];
        let last = PageKey::of(&events[1]);
        let body = write_page(page(events, true), usize::MAX, |k| {
            assert_eq!(*k, last);
            "c".to_owned()
        });
        assert_eq!(parse(&body)["nextCursor"], "c");
        let body = write_page(
            page(vec![plain("e1")], false),
            usize::MAX,
            |_| unreachable!(),
        );
        assert_eq!(parse(&body).get("nextCursor"), None);
    }

    #[test]
    fn a_page_stops_at_the_byte_budget_with_at_least_one_event() {
        let each = listed_bytes(&plain("e1"));
        let events = vec![plain("e1"), plain("e2"), plain("e3")];
        let second = PageKey::of(&events[1]);
        let body = write_page(page(events.clone(), false), each * 2, |k| {
            assert_eq!(*k, second);
            "c".to_owned()
        });
        let v = parse(&body);
        assert_eq!(v["events"].as_array().unwrap().len(), 2);
        assert_eq!(v["nextCursor"], "c");
        let body = write_page(page(events, false), 1, |_| "c".to_owned());
        assert_eq!(parse(&body)["events"].as_array().unwrap().len(), 1);
        let body = write_page(page(Vec::new(), false), 1, |_| unreachable!());
        assert_eq!(parse(&body), json!({"events": []}));
    }
}
