//! `GET /events` in SQL, for the stores that answer it with SQL (the SQLite tables, ClickHouse):
//! [`EventQuery::matches`] and the listing order spelled once, with the column names of each
//! dialect. The event store contract (`tests/api/contract`) checks every store against the
//! domain's definition.

use crate::ports::EventQuery;

/// A value for one `?` of the rendered SQL, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arg<'q> {
    Text(&'q str),
    Int(i64),
}

/// How a store names the listing's columns.
pub(crate) struct Dialect {
    /// The event's `timestamp`, as Unix milliseconds.
    occurred_at: &'static str,
    /// `receivedAt`, as Unix milliseconds.
    received_at: &'static str,
    /// Whether to bound the timestamp plainly before the start position, so an index on it
    /// narrows the scan (SQLite's planner does not narrow on the spelled-out comparison).
    plain_bound_first: bool,
}

/// The SQLite tables (`events`, the old row-per-event journal).
pub(crate) const SQLITE: Dialect = Dialect {
    occurred_at: "occurred_at",
    received_at: "received_at",
    plain_bound_first: true,
};

/// The ClickHouse table, whose `occurred_at`/`received_at` are whole seconds.
pub(crate) const CLICKHOUSE: Dialect = Dialect {
    occurred_at: "occurred_at_ms",
    received_at: "received_at_ms",
    plain_bound_first: false,
};

/// What follows `WHERE 1 = 1` in the `SELECT` of one page: the conditions of
/// [`EventQuery::matches`], the listing order, and a limit one row past the page (so the
/// caller sees whether there is more); with the values of its `?`s in order. Values are
/// only ever bound, never written into the SQL.
pub(crate) fn page_clause<'q>(query: &'q EventQuery, d: &Dialect) -> (String, Vec<Arg<'q>>) {
    let (occurred, received) = (d.occurred_at, d.received_at);
    let mut sql = String::new();
    let mut args = Vec::new();
    if let Some(u) = &query.user_id {
        sql.push_str(" AND user_id = ?");
        args.push(Arg::Text(u));
    }
    if let Some(t) = query.event_type {
        sql.push_str(" AND event_type = ?");
        args.push(Arg::Text(t.as_str()));
    }
    if let Some(s) = query.since {
        sql.push_str(&format!(" AND {occurred} >= ?"));
        args.push(Arg::Int(s.timestamp_millis()));
    }
    if let Some(u) = query.until {
        sql.push_str(&format!(" AND {occurred} <= ?"));
        args.push(Arg::Int(u.timestamp_millis()));
    }
    if let Some(k) = &query.after {
        if d.plain_bound_first {
            sql.push_str(&format!(" AND {occurred} <= ?"));
            args.push(Arg::Int(k.occurred_at_ms));
        }
        // Spelled out: tuple comparison is not available on every supported ClickHouse.
        sql.push_str(&format!(
            " AND ({occurred} < ? OR ({occurred} = ? AND ({received} < ? \
             OR ({received} = ? AND event_id < ?))))"
        ));
        args.extend([
            Arg::Int(k.occurred_at_ms),
            Arg::Int(k.occurred_at_ms),
            Arg::Int(k.received_at_ms),
            Arg::Int(k.received_at_ms),
            Arg::Text(&k.event_id),
        ]);
    }
    sql.push_str(&format!(
        " ORDER BY {occurred} DESC, {received} DESC, event_id DESC LIMIT ?"
    ));
    args.push(Arg::Int(
        i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX),
    ));
    (sql, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PageKey;

    #[test]
    fn every_filter_is_a_bound_value_in_the_dialects_columns() {
        let q = EventQuery {
            user_id: Some("u' OR '1'='1".into()),
            event_type: Some(crate::domain::EventType::ItemAdded),
            since: Some(chrono::DateTime::from_timestamp_millis(5).unwrap()),
            until: Some(chrono::DateTime::from_timestamp_millis(9).unwrap()),
            after: Some(PageKey {
                occurred_at_ms: 8,
                received_at_ms: 7,
                event_id: "e".into(),
            }),
            ..EventQuery::first(10)
        };
        let (sql, args) = page_clause(&q, &CLICKHOUSE);
        assert_eq!(
            sql,
            " AND user_id = ? AND event_type = ? AND occurred_at_ms >= ? AND occurred_at_ms <= ? \
             AND (occurred_at_ms < ? OR (occurred_at_ms = ? AND (received_at_ms < ? \
             OR (received_at_ms = ? AND event_id < ?)))) \
             ORDER BY occurred_at_ms DESC, received_at_ms DESC, event_id DESC LIMIT ?"
        );
        assert_eq!(sql.matches('?').count(), args.len());
        assert_eq!(args[0], Arg::Text("u' OR '1'='1"));
        assert_eq!(args.last(), Some(&Arg::Int(11)));
        let (sql, args) = page_clause(&q, &SQLITE);
        assert!(
            sql.contains(" AND occurred_at <= ? AND (occurred_at < ?"),
            "{sql}"
        );
        assert_eq!(sql.matches('?').count(), args.len());
    }
}
