//! The `GET /events` listing: which stored events a query selects ([`EventQuery::matches`])
//! and in which order they are listed ([`PageKey`]). Every store answers with these: the
//! journal by calling them, the SQL stores by spelling them in SQL (a contract test in
//! `tests/api/contract` holds every store to this definition).

use super::event::{EventColumns, EventType, StoredEvent};
use chrono::{DateTime, Utc};
use std::cmp::Ordering;

/// Filters of `GET /events`, and where in the listing a page starts. All bounds are
/// inclusive, on the event's `timestamp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    pub user_id: Option<String>,
    pub event_type: Option<EventType>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only events after this position in the listing order: the last event of the page
    /// before. Keyset paging, so an event inserted between pages never shifts the next page.
    pub after: Option<PageKey>,
    /// 1..=1000.
    pub limit: usize,
    /// A page stops before the event that would take its listed size (what `GET /events`
    /// writes for it) past this; it always holds at least one event, however large.
    pub max_bytes: usize,
}

impl EventQuery {
    /// No filters, the first page, `limit` events, no byte budget to speak of.
    pub fn first(limit: usize) -> Self {
        Self {
            user_id: None,
            event_type: None,
            since: None,
            until: None,
            after: None,
            limit,
            max_bytes: usize::MAX,
        }
    }

    /// Whether `e` is listed by this query: it passes every filter and comes after the
    /// query's starting position. The page is then the first `limit` of these in listing
    /// order, within `max_bytes`.
    pub fn matches(&self, e: &StoredEvent) -> bool {
        self.matches_columns(&e.columns())
    }

    /// [`matches`](Self::matches) on an event's columns, for a store that can decide before
    /// building the event.
    pub fn matches_columns(&self, c: &EventColumns<'_>) -> bool {
        self.user_id.as_deref().is_none_or(|u| u == c.user_id)
            && self.event_type.is_none_or(|t| t.as_str() == c.event_type)
            && self
                .since
                .is_none_or(|s| c.occurred_at_ms >= s.timestamp_millis())
            && self
                .until
                .is_none_or(|u| c.occurred_at_ms <= u.timestamp_millis())
            && self.after.as_ref().is_none_or(|after| after.precedes(c))
    }

    /// Whether `key` comes after this query's starting position.
    pub fn is_past_start(&self, key: &PageKey) -> bool {
        self.after.as_ref().is_none_or(|after| key > after)
    }
}

/// An event's position in the listing order of `GET /events`: newest `timestamp` first, then
/// the latest received, then by id (bytewise, descending), as every store orders its rows.
/// Stores keep milliseconds, so the position does too.
///
/// `Ord` is the listing order: a key that is listed earlier is smaller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub occurred_at_ms: i64,
    pub received_at_ms: i64,
    pub event_id: String,
}

impl PageKey {
    pub fn of(e: &StoredEvent) -> Self {
        let c = e.columns();
        Self {
            occurred_at_ms: c.occurred_at_ms,
            received_at_ms: c.received_at_ms,
            event_id: c.event_id.to_owned(),
        }
    }

    /// Whether the event with columns `c` is listed after this position.
    fn precedes(&self, c: &EventColumns<'_>) -> bool {
        // Later in the listing is earlier in (timestamp, receivedAt, id).
        (
            self.occurred_at_ms,
            self.received_at_ms,
            self.event_id.as_str(),
        ) > (c.occurred_at_ms, c.received_at_ms, c.event_id)
    }
}

impl Ord for PageKey {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.occurred_at_ms, other.received_at_ms, &other.event_id).cmp(&(
            self.occurred_at_ms,
            self.received_at_ms,
            &self.event_id,
        ))
    }
}

impl PartialOrd for PageKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The listing order (see [`PageKey`]).
pub fn newest_first(a: &StoredEvent, b: &StoredEvent) -> Ordering {
    PageKey::of(a).cmp(&PageKey::of(b))
}

#[cfg(test)]
mod tests;
