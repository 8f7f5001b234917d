//! The tables of the read layout (issue 14), and the one it replaces.
//!
//! - `<table>`: every column, `ReplacingMergeTree(received_version)` ordered by `event_id`, not
//!   partitioned. Copies of an event (a retried batch, a repeat the dedup missed) share only
//!   their id, so nothing else may be in the key or the partition: a retry without `timestamp`
//!   has another `occurred_at`, and a key or partition holding it would keep both copies for
//!   ever. Merges keep the copy received last (`received_version` is `received_at_ms`), which
//!   is also the copy the reads show before any merge. Ordered by id, it answers `known()` and
//!   the reads' lookups by id from a few granules (`index_granularity` 256: a lookup of 50 ids
//!   reads ~50 x 256 rows per part instead of ~50 x 8192).
//! - `<table>_by_user`: `(user_id, event_type, occurred_at_ms, received_at_ms, event_id)`
//!   ordered by user then listing position, filled by the materialized view
//!   `<table>_by_user_mv`: a user's newest events are one short range.
//! - `<table>_by_time`: `(event_type, occurred_at_ms, received_at_ms, event_id)` ordered by
//!   listing position, filled by `<table>_by_time_mv`: every event in a time window is one
//!   range of each part, and a read by type filters that range on `event_type` (one type in
//!   eight costs reading eight times the rows it keeps, contiguous, which measured cheaper than
//!   the type leading the key: an unfiltered window then was eight scattered ranges per part,
//!   ~90k rows and 50-100 ms at 10M events against ~25k rows and 7-23 ms, by type the same).
//!
//! The two index tables are narrow (no metadata, no session) so the views cost ingest little,
//! with `index_granularity` 1024 so a window or a user reads few rows past its own.
//! They hold one row per copy; a read takes candidates from one of them and keeps a candidate
//! only when it is the newest copy of its id in `<table>` (see `reads`).

use super::{quote, COLUMNS};

/// The index table of reads by user.
pub fn by_user_table(table: &str) -> String {
    format!("{table}_by_user")
}

/// The index table of reads by type, by time and unfiltered.
pub fn by_time_table(table: &str) -> String {
    format!("{table}_by_time")
}

/// The materialized view that fills `index` (one of the above) from the main table.
pub fn view_of(index: &str) -> String {
    format!("{index}_mv")
}

/// The main table's columns: [`COLUMNS`] plus the merge version.
fn main_columns() -> String {
    let body = COLUMNS.trim_end_matches(')').trim_end();
    format!("{body},\n    received_version UInt64 MATERIALIZED toUInt64(received_at_ms)\n)")
}

pub(super) const BY_USER_COLUMNS: &str = "(
    user_id         String,
    event_type      String,
    occurred_at_ms  Int64,
    received_at_ms  Int64,
    event_id        String
)";

pub(super) const BY_TIME_COLUMNS: &str = "(
    event_type      String,
    occurred_at_ms  Int64,
    received_at_ms  Int64,
    event_id        String
)";

/// The main table `database.table` (see the module's documentation).
pub fn create_main_table_sql(database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} {}
ENGINE = ReplacingMergeTree(received_version)
ORDER BY event_id
SETTINGS index_granularity = 256",
        quote(database),
        quote(table),
        main_columns()
    )
}

/// The index table of reads by user, named `name`. Exact copies of a row (a retried batch)
/// merge away.
pub fn create_by_user_sql(database: &str, name: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} {BY_USER_COLUMNS}
ENGINE = ReplacingMergeTree()
ORDER BY (user_id, occurred_at_ms, received_at_ms, event_id)
SETTINGS index_granularity = 1024",
        quote(database),
        quote(name)
    )
}

/// The index table of reads by type and time, named `name`.
pub fn create_by_time_sql(database: &str, name: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} {BY_TIME_COLUMNS}
ENGINE = ReplacingMergeTree()
ORDER BY (occurred_at_ms, received_at_ms, event_id)
SETTINGS index_granularity = 1024",
        quote(database),
        quote(name)
    )
}

/// The materialized view `view` that copies `columns` of every row inserted into `source`
/// into `target`, all in `database`.
pub fn create_view_sql(
    database: &str,
    view: &str,
    target: &str,
    source: &str,
    columns: &str,
) -> String {
    let names: Vec<&str> = columns
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .filter_map(|col| col.split_whitespace().next())
        .collect();
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{} TO {db}.{} AS SELECT {} FROM {db}.{}",
        quote(view),
        quote(target),
        names.join(", "),
        quote(source),
        db = quote(database),
    )
}

/// Every statement that creates the read layout of `table` on one server, in order: the main
/// table, then each index table before the view that fills it. Each is `IF NOT EXISTS`.
pub fn create_layout_sql(database: &str, table: &str) -> Vec<String> {
    let (by_user, by_time) = (by_user_table(table), by_time_table(table));
    vec![
        create_main_table_sql(database, table),
        create_by_user_sql(database, &by_user),
        create_by_time_sql(database, &by_time),
        create_view_sql(
            database,
            &view_of(&by_user),
            &by_user,
            table,
            BY_USER_COLUMNS,
        ),
        create_view_sql(
            database,
            &view_of(&by_time),
            &by_time,
            table,
            BY_TIME_COLUMNS,
        ),
    ]
}

/// The table before the read layout: ordered by `event_id` only and partitioned by the month of
/// `occurred_at`, read with `FINAL`. A server that already has it keeps it (reads stay correct
/// but scan everything) until `cartstream migrate-clickhouse` moves it aside.
pub fn create_legacy_table_sql(database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} {COLUMNS}
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY event_id",
        quote(database),
        quote(table)
    )
}

/// Whether a main table whose `engine_full` (from `system.tables`) is `engine_full` has the
/// read layout; `false` is the legacy one.
pub fn is_read_layout(engine_full: &str) -> bool {
    engine_full.contains("ReplacingMergeTree(received_version)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_views_select_the_index_columns_in_order() {
        assert_eq!(
            create_view_sql("d", "t_by_time_mv", "t_by_time", "t", BY_TIME_COLUMNS),
            "CREATE MATERIALIZED VIEW IF NOT EXISTS `d`.`t_by_time_mv` TO `d`.`t_by_time` AS \
             SELECT event_type, occurred_at_ms, received_at_ms, event_id FROM `d`.`t`"
        );
    }

    #[test]
    fn only_the_main_table_has_the_version_and_nothing_but_the_id_keys_it() {
        let main = create_main_table_sql("d", "t");
        assert!(main.contains(
            "source          String,\n    received_version UInt64 MATERIALIZED toUInt64(received_at_ms)\n)"
        ), "{main}");
        assert!(is_read_layout(&main));
        assert!(!main.contains("PARTITION BY"));
        assert!(!is_read_layout(&create_legacy_table_sql("d", "t")));
        for sql in create_layout_sql("d", "t") {
            for newer in ["DateTime64", "LowCardinality", "TTL", "JSON", "INDEX"] {
                assert!(!sql.contains(newer), "{newer} in {sql}");
            }
        }
    }
}
