//! The tables of the read layout (issue 14), and the ones it replaces.
//!
//! - `<table>`: every column, `ReplacingMergeTree(received_version)` ordered by
//!   `(user_id, event_id)`, not partitioned. Copies of an event (a retried batch, a repeat the
//!   dedup missed) share their id and their user, and nothing else for sure: a retry without
//!   `timestamp` has another `occurred_at`, and a key or partition holding it would keep both
//!   copies for ever. Merges keep the copy received last (`received_version` is
//!   `received_at_ms`), which is also the copy the reads show before any merge. Led by the
//!   user, the table itself answers reads by user (one short range), and the reads' lookups of
//!   `(user_id, event_id)` pairs touch a few granules each (`index_granularity` 256: a lookup
//!   of 50 pairs reads ~50 x 256 rows per part instead of ~50 x 8192).
//! - `<table>_by_time`: `(event_type, occurred_at_ms, received_at_ms, event_id, user_id)`
//!   ordered by listing position, filled by the materialized view `<table>_by_time_mv`: every
//!   event in a time window is one range of each part, and a read by type filters that range
//!   on `event_type` (one type in eight costs reading eight times the rows it keeps,
//!   contiguous, which measured cheaper than the type leading the key: an unfiltered window
//!   then was eight scattered ranges per part, ~90k rows and 50-100 ms at 10M events against
//!   ~25k rows and 7-23 ms, by type the same).
//! - `<table>_ids`: `(id_hash, event_id)` ordered by `cityHash64(event_id)`, filled by
//!   `<table>_ids_mv`: `known()`, the dedup fallback, looks ids up here, since the main table
//!   is not ordered by id alone. Sorting by a `UInt64` costs ClickHouse less than by the id
//!   itself, and the id is kept beside it so an answer is exact, never a hash collision.
//!
//! The two index tables are narrow (no metadata, no session) so the views cost ingest little;
//! an index by user is not needed, the main table being one. A first version of this layout
//! (main table ordered by `event_id`, `<table>_by_user` and a `<table>_by_time` without
//! `user_id`) cost ClickHouse about 70% more CPU per insert than the legacy table, this one
//! about 40% (BENCHMARKS.md); a table of that version is read like a legacy one until
//! `cartstream migrate-clickhouse` moves it.
//! The index tables hold one row per copy; a read takes candidates from the main table or
//! `<table>_by_time` and keeps a candidate only when it is the newest copy of its id in
//! `<table>` (see `reads`).

use super::{quote, COLUMNS};

/// The index table of reads by type, by time and unfiltered.
pub fn by_time_table(table: &str) -> String {
    format!("{table}_by_time")
}

/// The index table of `known()`.
pub fn ids_table(table: &str) -> String {
    format!("{table}_ids")
}

/// The tables a first version of the read layout added beside the main table, dropped when
/// `cartstream migrate-clickhouse` moves that version's main table aside.
pub fn first_version_tables(table: &str) -> Vec<String> {
    let (user, time) = (format!("{table}_by_user"), by_time_table(table));
    vec![view_of(&user), view_of(&time), user, time]
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

pub(super) const BY_TIME_COLUMNS: &str = "(
    event_type      String,
    occurred_at_ms  Int64,
    received_at_ms  Int64,
    event_id        String,
    user_id         String
)";

pub(super) const IDS_COLUMNS: &str = "(
    id_hash         UInt64,
    event_id        String
)";

/// What the view filling `<table>_ids` selects.
pub(super) const IDS_SELECT: &str = "cityHash64(event_id) AS id_hash, event_id";

/// The `SELECT` list of a view that copies `columns` (a column list as above) by name.
pub(super) fn select_of(columns: &str) -> String {
    let names: Vec<&str> = columns
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .filter_map(|col| col.split_whitespace().next())
        .collect();
    names.join(", ")
}

/// The main table `database.table` (see the module's documentation).
pub fn create_main_table_sql(database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} {}
ENGINE = ReplacingMergeTree(received_version)
ORDER BY (user_id, event_id)
SETTINGS index_granularity = 256",
        quote(database),
        quote(table),
        main_columns()
    )
}

/// The index table of `known()`, named `name`. Copies of an id merge away.
pub fn create_ids_sql(database: &str, name: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} {IDS_COLUMNS}
ENGINE = ReplacingMergeTree()
ORDER BY (id_hash, event_id)
SETTINGS index_granularity = 256",
        quote(database),
        quote(name)
    )
}

/// The index table of reads by type and time, named `name`. Exact copies of a row (a retried
/// batch) merge away.
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

/// The materialized view `view` that writes `select` (a `SELECT` list) of every row inserted
/// into `source` into `target`, all in `database`.
pub fn create_view_sql(
    database: &str,
    view: &str,
    target: &str,
    source: &str,
    select: &str,
) -> String {
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{} TO {db}.{} AS SELECT {select} FROM {db}.{}",
        quote(view),
        quote(target),
        quote(source),
        db = quote(database),
    )
}

/// Every statement that creates the read layout of `table` on one server, in order: the main
/// table, then each index table before the view that fills it. Each is `IF NOT EXISTS`.
pub fn create_layout_sql(database: &str, table: &str) -> Vec<String> {
    let (by_time, ids) = (by_time_table(table), ids_table(table));
    vec![
        create_main_table_sql(database, table),
        create_by_time_sql(database, &by_time),
        create_ids_sql(database, &ids),
        create_view_sql(
            database,
            &view_of(&by_time),
            &by_time,
            table,
            &select_of(BY_TIME_COLUMNS),
        ),
        create_view_sql(database, &view_of(&ids), &ids, table, IDS_SELECT),
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
/// read layout; `false` is the legacy one or the read layout's first version.
pub fn is_read_layout(engine_full: &str) -> bool {
    is_versioned(engine_full) && engine_full.contains("ORDER BY (user_id, event_id)")
}

/// Whether `engine_full` is the read layout's, this version's or the first's (see the
/// module's documentation): the first version's index tables are then beside it.
pub fn is_versioned(engine_full: &str) -> bool {
    engine_full.contains("ReplacingMergeTree(received_version)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_views_select_the_index_columns_in_order() {
        let layout = create_layout_sql("d", "t");
        assert_eq!(
            layout[3],
            "CREATE MATERIALIZED VIEW IF NOT EXISTS `d`.`t_by_time_mv` TO `d`.`t_by_time` AS \
             SELECT event_type, occurred_at_ms, received_at_ms, event_id, user_id FROM `d`.`t`"
        );
        assert_eq!(
            layout[4],
            "CREATE MATERIALIZED VIEW IF NOT EXISTS `d`.`t_ids_mv` TO `d`.`t_ids` AS \
             SELECT cityHash64(event_id) AS id_hash, event_id FROM `d`.`t`"
        );
    }

    #[test]
    fn the_first_version_of_the_layout_is_told_apart() {
        let first = "ReplacingMergeTree(received_version) ORDER BY event_id \
                     SETTINGS index_granularity = 256";
        assert!(is_versioned(first) && !is_read_layout(first));
        assert_eq!(
            first_version_tables("t"),
            ["t_by_user_mv", "t_by_time_mv", "t_by_user", "t_by_time"]
        );
    }

    #[test]
    fn only_the_main_table_has_the_version_and_only_the_user_and_id_key_it() {
        let main = create_main_table_sql("d", "t");
        assert!(main.contains(
            "source          String,\n    received_version UInt64 MATERIALIZED toUInt64(received_at_ms)\n)"
        ), "{main}");
        assert!(is_read_layout(&main));
        assert!(main.contains("ORDER BY (user_id, event_id)\n"), "{main}");
        assert!(!main.contains("PARTITION BY"));
        assert!(!is_read_layout(&create_legacy_table_sql("d", "t")));
        for sql in create_layout_sql("d", "t") {
            for newer in ["DateTime64", "LowCardinality", "TTL", "JSON", "INDEX"] {
                assert!(!sql.contains(newer), "{newer} in {sql}");
            }
        }
    }
}
