//! `GET /events` on the read layout ([`super::layout`]), without `FINAL`.
//!
//! A page is built from candidates: `(event_id, occurred_at_ms, received_at_ms)` in listing
//! order from an index table, `<table>_by_user` when a user is given, else `<table>_by_time`.
//! The latter is read newest window first (an hour below the query's upper bound, then each
//! window 8 times the one before, then unbounded), so an unfiltered or by-type page reads a few
//! ranges of the index instead of all of it. Every candidate query filters and orders like the
//! legacy one and stops at a `LIMIT`. Then every copy of the candidates' ids is read from the
//! main table by its key (`event_id`), and a candidate is kept only if it is the newest copy
//! received of its id, so each event is listed once, as its newest copy, whatever the
//! background merges have done. A stale candidate is dropped, and the index is read on past it
//! until the page is full or the windows are exhausted.

use super::super::listing_sql::{page_clause, Arg, CLICKHOUSE};
use super::{ClickHouseStore, EventRow};
use crate::domain::PageKey;
use crate::ports::{EventPage, EventQuery, PageBuilder, PortError};
use serde::Deserialize;
use std::collections::HashMap;

/// The first window below the upper bound, and how much each next one grows.
const FIRST_WINDOW_MS: i64 = 3_600_000;
const GROWTH: i64 = 8;
/// Windows before the last, unbounded one: 1 h, 8 h, 64 h, ~21 d, ~171 d, ~3.7 y.
const BOUNDED_WINDOWS: u32 = 6;

/// One row of an index table, as a read asks for it.
#[derive(Debug, clickhouse::Row, Deserialize)]
struct Candidate {
    event_id: String,
    occurred_at_ms: i64,
    received_at_ms: i64,
}

impl Candidate {
    fn key(&self) -> PageKey {
        PageKey {
            occurred_at_ms: self.occurred_at_ms,
            received_at_ms: self.received_at_ms,
            event_id: self.event_id.clone(),
        }
    }
}

/// `[from, to)` on `occurred_at_ms`; `None` is unbounded.
type Window = (Option<i64>, Option<i64>);

/// The windows an index read walks, newest first, for a query whose upper bound (its
/// `until`, or where its page starts) is `top`, or the present when it has none. Windows
/// below the query's `since` are left out.
fn windows(query: &EventQuery, now_ms: i64) -> Vec<Window> {
    let bounds = [
        query.until.map(|u| u.timestamp_millis()),
        query.after.as_ref().map(|k| k.occurred_at_ms),
    ];
    let top = bounds.into_iter().flatten().min();
    let since = query.since.map(|s| s.timestamp_millis());
    let mut all = Vec::new();
    // Above the present (a clock ahead of ours) belongs to the first window.
    let mut to: Option<i64> = None;
    let mut from = top.unwrap_or(now_ms).saturating_sub(FIRST_WINDOW_MS);
    let mut width = FIRST_WINDOW_MS;
    for _ in 0..BOUNDED_WINDOWS {
        if since.is_some_and(|s| s >= from) {
            break;
        }
        all.push((Some(from), to));
        to = Some(from);
        width = width.saturating_mul(GROWTH);
        from = from.saturating_sub(width);
    }
    all.push((None, to));
    all
}

impl ClickHouseStore {
    /// One page of `query` (see the module's documentation).
    pub(super) async fn read_page(
        &self,
        query: &EventQuery,
    ) -> clickhouse::error::Result<Result<EventPage, PortError>> {
        let mut page = PageBuilder::new(query);
        let windows = if query.user_id.is_some() {
            vec![(None, None)]
        } else {
            windows(query, chrono::Utc::now().timestamp_millis())
        };
        // One past the page, as the legacy read asks; stale copies only make another round.
        let batch = query.limit.saturating_add(1);
        for window in windows {
            let mut from = query.after.clone();
            loop {
                let candidates = self.candidates(query, window, from.clone(), batch).await?;
                let exhausted = candidates.len() < batch;
                from = candidates.last().map(Candidate::key);
                if let Err(e) = self.keep_newest(query, &candidates, &mut page).await? {
                    return Ok(Err(e));
                }
                if page.is_full() {
                    return Ok(Ok(page.finish()));
                }
                if exhausted {
                    break;
                }
            }
        }
        Ok(Ok(page.finish()))
    }

    /// Up to `limit` index rows matching `query` in `window`, after `from`, in listing order.
    async fn candidates(
        &self,
        query: &EventQuery,
        (lo, hi): Window,
        from: Option<PageKey>,
        limit: usize,
    ) -> clickhouse::error::Result<Vec<Candidate>> {
        let index = if query.user_id.is_some() {
            &self.inner.qualified_by_user
        } else {
            &self.inner.qualified_by_time
        };
        let narrowed = EventQuery {
            after: from,
            // `page_clause` asks for one past `limit`.
            limit: limit.saturating_sub(1),
            ..query.clone()
        };
        let mut bounds = String::new();
        let mut args = Vec::new();
        if let Some(lo) = lo {
            bounds.push_str(" AND occurred_at_ms >= ?");
            args.push(Arg::Int(lo));
        }
        if let Some(hi) = hi {
            bounds.push_str(" AND occurred_at_ms < ?");
            args.push(Arg::Int(hi));
        }
        let (clause, rest) = page_clause(&narrowed, &CLICKHOUSE);
        args.extend(rest);
        // The filters go to PREWHERE (ClickHouse moves them there itself, as 18.16 does for a
        // WHERE on a MergeTree): only the narrow index columns are read.
        let sql = format!("SELECT ?fields FROM {index} WHERE 1 = 1{bounds}{clause}");
        let q = args
            .into_iter()
            .fold(self.inner.client.query(&sql), |q, arg| match arg {
                Arg::Text(t) => q.bind(t),
                Arg::Int(i) => q.bind(i),
            });
        q.fetch_all().await
    }

    /// Offers `page` the newest copy of each candidate's id when the candidate is that copy and
    /// it matches `query`.
    async fn keep_newest(
        &self,
        query: &EventQuery,
        candidates: &[Candidate],
        page: &mut PageBuilder,
    ) -> clickhouse::error::Result<Result<(), PortError>> {
        if candidates.is_empty() {
            return Ok(Ok(()));
        }
        let mut ids: Vec<&str> = candidates.iter().map(|c| c.event_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let sql = format!(
            "SELECT ?fields FROM {} PREWHERE event_id IN (SELECT arrayJoin(?))",
            self.inner.qualified
        );
        let copies: Vec<EventRow> = self.inner.client.query(&sql).bind(ids).fetch_all().await?;
        let mut newest: HashMap<String, EventRow> = HashMap::with_capacity(copies.len());
        for row in copies {
            match newest.get(&row.event_id) {
                Some(kept) if newer_or_same(kept, &row) => {}
                _ => {
                    newest.insert(row.event_id.clone(), row);
                }
            }
        }
        for c in candidates {
            let Some(row) = newest.get(&c.event_id) else {
                continue;
            };
            if (row.occurred_at_ms, row.received_at_ms) != (c.occurred_at_ms, c.received_at_ms) {
                continue;
            }
            let Some(row) = newest.remove(&c.event_id) else {
                continue;
            };
            match row.into_stored() {
                Ok(e) if query.matches(&e) => page.offer(e),
                Ok(_) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(()))
    }
}

/// Whether `kept` is received after `other` (as merges keep it: the greatest
/// `received_at_ms`), ties broken on the listing position so every read picks the same.
fn newer_or_same(kept: &EventRow, other: &EventRow) -> bool {
    (kept.received_at_ms, kept.occurred_at_ms) >= (other.received_at_ms, other.occurred_at_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn at(ms: i64) -> chrono::DateTime<chrono::Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    #[test]
    fn windows_start_an_hour_below_the_top_and_grow_eightfold_to_unbounded() {
        let h = FIRST_WINDOW_MS;
        let now = 1_000_000 * h;
        let w = windows(&EventQuery::first(10), now);
        assert_eq!(w.len(), 7);
        assert_eq!(w[0], (Some(now - h), None), "the future is in the first");
        assert_eq!(w[1], (Some(now - 9 * h), Some(now - h)));
        assert_eq!(w[2], (Some(now - 73 * h), Some(now - 9 * h)));
        assert_eq!(w[6], (None, w[5].0));
        let until = EventQuery {
            until: Some(at(now - 100 * h)),
            ..EventQuery::first(10)
        };
        assert_eq!(windows(&until, now)[0], (Some(now - 101 * h), None));
    }

    #[test]
    fn windows_stop_at_since() {
        let h = FIRST_WINDOW_MS;
        let now = 1_000_000 * h;
        let q = EventQuery {
            since: Some(at(now - 5 * h)),
            ..EventQuery::first(10)
        };
        assert_eq!(
            windows(&q, now),
            [(Some(now - h), None), (None, Some(now - h))]
        );
        let q = EventQuery {
            since: Some(at(now - h)),
            ..EventQuery::first(10)
        };
        assert_eq!(windows(&q, now), [(None, None)]);
    }
}
