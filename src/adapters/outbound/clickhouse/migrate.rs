//! `cartstream migrate-clickhouse`: from a table created before the read layout to it, on one
//! server. The old table is renamed `<table>_v1` (and kept), the read layout is created under
//! the old name, and the rows are copied month by month with `INSERT ... SELECT`, each month
//! recorded in `<table>_v1_copied` once it is in. Run again after an interruption, it copies
//! only the months not recorded; a month cut off halfway is copied again whole, and the copies
//! that makes are copies of events, which the layout lists once. A running cartstream keeps
//! working through it (inserts fail for the moment between the rename and the new table, and
//! the journal retries them); restart it afterwards to read the new layout.

use super::layout::{create_layout_sql, is_read_layout};
use super::{check_identifier, quote, ClickHouseStore, LAYOUT_READ};
use crate::ports::PortError;
use std::sync::atomic::Ordering;

/// The columns copied, in the order of both tables.
const COLUMN_NAMES: &str = "event_id, user_id, session_id, event_type, metadata, occurred_at, \
                            occurred_at_ms, received_at, received_at_ms, source";

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The old table, `` `database`.`<table>_v1` ``, or `None` when there was nothing to
    /// migrate (no table, or the read layout already with no old table beside it).
    pub old_table: Option<String>,
    /// Whether this run renamed the old table (a resumed run finds it renamed).
    pub renamed: bool,
    /// The months (partition ids, e.g. `202508`) this run copied.
    pub copied: Vec<String>,
    /// Months an earlier run had copied.
    pub already_copied: usize,
    /// Rows in the old table and in the new one afterwards (copies included).
    pub old_rows: u64,
    pub new_rows: u64,
}

impl ClickHouseStore {
    /// Moves a table created before the read layout aside and copies it into the read layout
    /// (see the module's documentation). On a table that already has the read layout it only
    /// creates what is missing.
    ///
    /// # Errors
    /// `Failed` in cluster mode (docs/backends.md has the statements to run by hand) or when
    /// both a legacy `<table>` and a `<table>_v1` exist; `Unavailable` when ClickHouse fails.
    pub async fn migrate_layout(&self) -> Result<Migration, PortError> {
        if self.inner.cluster.is_some() {
            return Err(PortError::Failed(
                "migrate-clickhouse runs on a single server; for a cluster, docs/backends.md \
                 (\"Migrating an existing table\") has the statements to run on each shard"
                    .to_owned(),
            ));
        }
        let (db, table) = (&self.inner.database, &self.inner.table);
        let (old, progress) = (format!("{table}_v1"), format!("{table}_v1_copied"));
        check_identifier("old table", &progress)?;
        self.run(&format!("CREATE DATABASE IF NOT EXISTS {}", quote(db)))
            .await?;
        let legacy = match self.engine_of(table).await? {
            Some(engine) => !is_read_layout(&engine),
            None => false,
        };
        let old_exists = self.engine_of(&old).await?.is_some();
        let shown_old = format!("{}.{}", quote(db), quote(&old));
        if legacy && old_exists {
            return Err(PortError::Failed(format!(
                "both {} (the old layout) and {shown_old} exist: migrate-clickhouse would not \
                 know which to keep; rename or drop one",
                self.inner.qualified
            )));
        }
        if legacy {
            self.run(&format!(
                "RENAME TABLE {} TO {shown_old}",
                self.inner.qualified
            ))
            .await?;
        }
        for sql in create_layout_sql(db, table) {
            self.run(&sql).await?;
        }
        self.inner.layout.store(LAYOUT_READ, Ordering::Release);
        let mut done = Migration {
            old_table: None,
            renamed: legacy,
            copied: Vec::new(),
            already_copied: 0,
            old_rows: 0,
            new_rows: 0,
        };
        if legacy || old_exists {
            self.copy_months(&old, &progress, &mut done).await?;
            done.old_table = Some(shown_old);
        }
        Ok(done)
    }

    /// Copies every month of `old` not yet recorded in `progress`, recording each.
    async fn copy_months(
        &self,
        old: &str,
        progress: &str,
        done: &mut Migration,
    ) -> Result<(), PortError> {
        let db = &self.inner.database;
        let (old_q, progress_q) = (
            format!("{}.{}", quote(db), quote(old)),
            format!("{}.{}", quote(db), quote(progress)),
        );
        self.run(&format!(
            "CREATE TABLE IF NOT EXISTS {progress_q} (partition_id String, rows UInt64) \
             ENGINE = TinyLog"
        ))
        .await?;
        let months: Vec<String> = self
            .inner
            .client
            .query(
                "SELECT DISTINCT partition_id FROM system.parts \
                 WHERE database = ? AND table = ? AND active ORDER BY partition_id",
            )
            .bind(db.as_str())
            .bind(old)
            .fetch_all()
            .await
            .map_err(|e| self.map_err("list the old table's months", e))?;
        let recorded: Vec<String> = self
            .inner
            .client
            .query(&format!("SELECT partition_id FROM {progress_q}"))
            .fetch_all()
            .await
            .map_err(|e| self.map_err("read the migration's progress", e))?;
        for month in months {
            if recorded.contains(&month) {
                done.already_copied += 1;
                continue;
            }
            // No timeout of ours: a month of a large table takes as long as it takes.
            let copy = format!(
                "INSERT INTO {} ({COLUMN_NAMES}) SELECT {COLUMN_NAMES} FROM {old_q} \
                 WHERE toString(toYYYYMM(occurred_at)) = ?",
                self.inner.qualified
            );
            let q = self.inner.client.query(&copy).bind(month.as_str());
            q.execute()
                .await
                .map_err(|e| self.map_err(&format!("copy month {month}"), e))?;
            let q = self.inner.client.query(&format!(
                "INSERT INTO {progress_q} SELECT ?, count() FROM {old_q} \
                 WHERE toString(toYYYYMM(occurred_at)) = ?"
            ));
            q.bind(month.as_str())
                .bind(month.as_str())
                .execute()
                .await
                .map_err(|e| self.map_err("record the migration's progress", e))?;
            tracing::info!(%month, "copied into the read layout");
            done.copied.push(month);
        }
        done.old_rows = self.count(&old_q).await?;
        done.new_rows = self.count(&self.inner.qualified).await?;
        Ok(())
    }

    async fn count(&self, qualified: &str) -> Result<u64, PortError> {
        let q = self
            .inner
            .client
            .query(&format!("SELECT count() FROM {qualified}"));
        q.fetch_one()
            .await
            .map_err(|e| self.map_err("count rows", e))
    }

    async fn engine_of(&self, name: &str) -> Result<Option<String>, PortError> {
        let q = self
            .inner
            .client
            .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
            .bind(self.inner.database.as_str())
            .bind(name);
        self.timed("check tables", q.fetch_optional()).await
    }

    async fn run(&self, sql: &str) -> Result<(), PortError> {
        self.timed("migrate", self.inner.client.query_raw(sql).execute())
            .await
    }
}
