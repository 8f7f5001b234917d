//! Events sharded over a ClickHouse cluster: on every shard the single-server read layout
//! under local names (`<table>_local`, `<table>_by_user_local`, `<table>_by_time_local`, with
//! the views filling the index tables from `<table>_local` on the same shard), and a
//! `Distributed` table over each (`<table>`, `<table>_by_user`, `<table>_by_time`), sharded by
//! `cityHash64(event_id)`. Every copy of an event (a retried
//! insert, a repeat) lands on the shard its id hashes to, so `FINAL`, which the `Distributed`
//! table applies on each shard, still shows each event once across the cluster.
//!
//! `ON CLUSTER` DDL needs ZooKeeper, and `system.clusters` lists native ports only, so the
//! service creates the tables over each shard's HTTP URL, taken from the configuration.
//! Inserts go through the `Distributed` table with `insert_distributed_sync = 1`: an insert
//! returns once every shard has its rows, and a shard's failure is the insert's failure, so
//! the journal keeps the batch until the whole cluster took it.

use super::layout::{
    by_time_table, by_user_table, create_by_time_sql, create_by_user_sql, create_main_table_sql,
    create_view_sql, view_of, BY_TIME_COLUMNS, BY_USER_COLUMNS,
};
use super::{quote, COLUMNS};
use crate::ports::PortError;

/// How events are sharded over a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The cluster's name in the servers' `remote_servers`.
    pub name: String,
    /// The HTTP URL of every server that holds a local table (one per shard here), for the
    /// DDL and the readiness check. May be empty when an operator manages the tables.
    pub shard_urls: Vec<String>,
}

/// The local table's name on each shard: `<table>_local`.
pub fn local_table(table: &str) -> String {
    format!("{table}_local")
}

/// The `CREATE TABLE` of the local main table on each shard: the single-server main table
/// under [`local_table`]'s name.
pub fn create_local_table_sql(database: &str, table: &str) -> String {
    create_main_table_sql(database, &local_table(table))
}

/// The `CREATE TABLE` of the `Distributed` table `database.table` over `cluster`'s local
/// tables, sharded by a hash of `event_id`. Its columns are written out (not `AS` the local
/// table) so it can be created on a server that holds no local table.
pub fn create_distributed_table_sql(database: &str, table: &str, cluster: &str) -> String {
    create_distributed_sql(database, table, COLUMNS, cluster)
}

/// A `Distributed` table `name` with `columns` over the `<name>_local` tables of `cluster`.
fn create_distributed_sql(database: &str, name: &str, columns: &str, cluster: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} {columns}
ENGINE = Distributed({}, {}, {}, cityHash64(event_id))",
        quote(database),
        quote(name),
        quote(cluster),
        quote(database),
        quote(&local_table(name)),
    )
}

/// What one shard runs, in order, each `IF NOT EXISTS` and with what it creates: the local
/// tables, the views filling the local index tables, then the `Distributed` tables.
pub fn create_shard_sql(database: &str, table: &str, cluster: &str) -> Vec<(&'static str, String)> {
    let (by_user, by_time) = (by_user_table(table), by_time_table(table));
    let (main_l, user_l, time_l) = (
        local_table(table),
        local_table(&by_user),
        local_table(&by_time),
    );
    vec![
        (
            "create local table",
            create_local_table_sql(database, table),
        ),
        ("create local table", create_by_user_sql(database, &user_l)),
        ("create local table", create_by_time_sql(database, &time_l)),
        (
            "create view",
            create_view_sql(
                database,
                &view_of(&user_l),
                &user_l,
                &main_l,
                BY_USER_COLUMNS,
            ),
        ),
        (
            "create view",
            create_view_sql(
                database,
                &view_of(&time_l),
                &time_l,
                &main_l,
                BY_TIME_COLUMNS,
            ),
        ),
    ]
    .into_iter()
    .chain(create_distributed_layout_sql(database, table, cluster))
    .collect()
}

/// The `Distributed` tables of the layout, for every server that reads or inserts.
pub fn create_distributed_layout_sql(
    database: &str,
    table: &str,
    cluster: &str,
) -> Vec<(&'static str, String)> {
    let what = "create distributed table";
    vec![
        (what, create_distributed_table_sql(database, table, cluster)),
        (
            what,
            create_distributed_sql(database, &by_user_table(table), BY_USER_COLUMNS, cluster),
        ),
        (
            what,
            create_distributed_sql(database, &by_time_table(table), BY_TIME_COLUMNS, cluster),
        ),
    ]
}

/// A cluster name as `remote_servers` spells it: 1-64 of `A-Z a-z 0-9 _ - .`.
pub(super) fn check_cluster_name(name: &str) -> Result<(), PortError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(PortError::Failed(format!(
            "clickhouse cluster name {name:?} must be 1-64 of A-Z a-z 0-9 _ - ."
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_cluster_ddl_is_the_one_run() {
        // docs/backends.md quotes these statements: change both together.
        assert_eq!(
            create_distributed_table_sql("default", "cart_events", "cartstream_shards"),
            "CREATE TABLE IF NOT EXISTS `default`.`cart_events` (
    event_id        String,
    user_id         String,
    session_id      Nullable(String),
    event_type      String,
    metadata        String,
    occurred_at     DateTime('UTC'),
    occurred_at_ms  Int64,
    received_at     DateTime('UTC'),
    received_at_ms  Int64,
    source          String
)
ENGINE = Distributed(`cartstream_shards`, `default`, `cart_events_local`, cityHash64(event_id))"
        );
        assert!(create_local_table_sql("default", "cart_events").starts_with(
            "CREATE TABLE IF NOT EXISTS `default`.`cart_events_local` (\n    event_id        String,"
        ));
        let shard = create_shard_sql("default", "cart_events", "c");
        assert_eq!(shard.len(), 8);
        assert!(shard[3].1.contains(
            "`default`.`cart_events_by_user_local_mv` TO `default`.`cart_events_by_user_local` \
             AS SELECT user_id, event_type, occurred_at_ms, received_at_ms, event_id \
             FROM `default`.`cart_events_local`"
        ), "{}", shard[3].1);
        assert!(shard[7].1.contains(
            "ENGINE = Distributed(`c`, `default`, `cart_events_by_time_local`, cityHash64(event_id))"
        ));
    }

    #[test]
    fn cluster_names_are_checked() {
        assert!(check_cluster_name("cartstream_shards").is_ok());
        assert!(check_cluster_name("prod-eu.1").is_ok());
        assert!(check_cluster_name("").is_err());
        assert!(check_cluster_name("a`b").is_err());
        assert!(check_cluster_name("a b").is_err());
    }
}
