//! Retention on ClickHouse 18.16, which has no `TTL`. Old events go in two ways:
//!
//! - The read layout's tables are not partitioned (see [`layout`](super::layout)), so old rows
//!   are deleted with a mutation, `ALTER TABLE ... DELETE WHERE occurred_at_ms < cutoff`, on the
//!   main table and both index tables. A mutation rewrites every part that holds a matching
//!   row, and in a table ordered by `event_id` that is nearly every part: so at most one is in
//!   flight per table (`system.mutations`), and one is issued at most every
//!   [`MUTATION_EVERY`], only when the time index shows a row to delete.
//! - A legacy table is partitioned by month: a month that ended before the cutoff is dropped
//!   whole (`ALTER TABLE ... DROP PARTITION`), which costs nothing; the month the cutoff falls
//!   in stays until it has ended.
//!
//! In cluster mode both run on every shard's local tables (the configured shard URLs); the
//! `Distributed` tables hold no rows. Either way an event received within the dedup window is
//! kept, so `known()` agrees with dedup.

use super::cluster::local_table;
use super::{layout, quote, ClickHouseStore, Server};
use crate::ports::{ExpireStep, Expiry, PortError, Retention};
use chrono::NaiveDate;
use clickhouse::Client;
use std::time::Duration;

/// Least time between two delete mutations of the same tables.
pub const MUTATION_EVERY: Duration = Duration::from_secs(3600);

/// Where the tables of one server are, and what to call it in errors.
struct Target<'a> {
    client: &'a Client,
    url: &'a str,
    main: String,
    /// The read layout's index tables on that server: by user, by time.
    by_user: String,
    by_time: String,
}

impl ClickHouseStore {
    fn retention_targets(&self) -> Vec<Target<'_>> {
        match &self.inner.cluster {
            None => vec![Target {
                client: &self.inner.client,
                url: &self.inner.shown_url,
                main: self.inner.table.clone(),
                by_user: layout::by_user_table(&self.inner.table),
                by_time: layout::by_time_table(&self.inner.table),
            }],
            // A shard's tables are the local ones: `events_local`, `events_by_user_local`, ...
            Some((_, shards)) => shards
                .iter()
                .map(|Server { client, shown_url }| Target {
                    client,
                    url: shown_url,
                    main: local_table(&self.inner.table),
                    by_user: local_table(&layout::by_user_table(&self.inner.table)),
                    by_time: local_table(&layout::by_time_table(&self.inner.table)),
                })
                .collect(),
        }
    }

    fn qualify(&self, table: &str) -> String {
        format!("{}.{}", quote(&self.inner.database), quote(table))
    }

    /// Issues the delete mutation on one server's read-layout tables, unless one is still
    /// running there or nothing is old enough; how many it issued (one per table).
    async fn mutate_old_rows(&self, t: &Target<'_>, expiry: Expiry) -> Result<u64, PortError> {
        let tables = [t.main.clone(), t.by_user.clone(), t.by_time.clone()];
        let db = self.inner.database.as_str();
        let err = |what: &str| {
            let what = what.to_owned();
            move |e| self.map_err_at(&what, t.url, e)
        };
        let running: u64 = self
            .timed_raw(
                t.client
                    .query(
                        "SELECT count() FROM system.mutations \
                         WHERE database = ? AND table IN (?, ?, ?) AND is_done = 0",
                    )
                    .bind(db)
                    .bind(tables[0].as_str())
                    .bind(tables[1].as_str())
                    .bind(tables[2].as_str())
                    .fetch_one(),
            )
            .await
            .map_err(err("retention: read system.mutations"))?;
        if running > 0 {
            return Ok(0);
        }
        let (occurred, received) = cutoffs(expiry);
        let condition = format!("occurred_at_ms < {occurred} AND received_at_ms < {received}");
        // The time index is ordered by `occurred_at_ms`: this reads only the old end.
        let old: u64 = self
            .timed_raw(
                t.client
                    .query(&format!(
                        "SELECT count() FROM {} WHERE {condition}",
                        self.qualify(&tables[2])
                    ))
                    .fetch_one(),
            )
            .await
            .map_err(err("retention: count old rows"))?;
        if old == 0 {
            return Ok(0);
        }
        let mut issued = 0;
        for table in &tables {
            let sql = format!(
                "ALTER TABLE {} DELETE WHERE {condition}",
                self.qualify(table)
            );
            self.timed_raw(t.client.query(&sql).execute())
                .await
                .map_err(err("retention: delete old rows"))?;
            issued += 1;
        }
        tracing::info!(
            server = t.url,
            rows = old,
            "retention: deleting old events (a ClickHouse mutation)"
        );
        Ok(issued)
    }

    /// Drops the months of a legacy table that ended before the cutoff, except one still
    /// holding an event received within the dedup window; the months dropped.
    async fn drop_old_months(
        &self,
        t: &Target<'_>,
        expiry: Expiry,
    ) -> Result<Vec<String>, PortError> {
        let err = |what: &'static str| move |e| self.map_err_at(what, t.url, e);
        let months: Vec<String> = self
            .timed_raw(
                t.client
                    .query(
                        "SELECT DISTINCT partition_id FROM system.parts \
                         WHERE database = ? AND table = ? AND active ORDER BY partition_id",
                    )
                    .bind(self.inner.database.as_str())
                    .bind(t.main.as_str())
                    .fetch_all(),
            )
            .await
            .map_err(err("retention: list partitions"))?;
        let (_, received) = cutoffs(expiry);
        let qualified = self.qualify(&t.main);
        let mut dropped = Vec::new();
        for month in months.into_iter().filter(|m| month_ended_before(m, expiry)) {
            let recent: u64 = self
                .timed_raw(
                    t.client
                        .query(&format!(
                            "SELECT count() FROM {qualified} \
                             WHERE toYYYYMM(occurred_at) = {month} AND received_at_ms >= {received}"
                        ))
                        .fetch_one(),
                )
                .await
                .map_err(err("retention: check a month"))?;
            if recent > 0 {
                continue;
            }
            let sql = format!("ALTER TABLE {qualified} DROP PARTITION {month}");
            self.timed_raw(t.client.query(&sql).execute())
                .await
                .map_err(err("retention: drop a month"))?;
            tracing::info!(
                server = t.url,
                month,
                "retention: dropped a month of old events"
            );
            dropped.push(month);
        }
        Ok(dropped)
    }
}

/// The cutoffs in Unix milliseconds.
fn cutoffs(expiry: Expiry) -> (i64, i64) {
    (
        expiry.occurred_before.timestamp_millis(),
        expiry.received_before.timestamp_millis(),
    )
}

/// Whether the month `yyyymm` (a partition id) ended at or before `expiry.occurred_before`:
/// every event in it is older. Anything else (not a month) is never dropped.
fn month_ended_before(yyyymm: &str, expiry: Expiry) -> bool {
    if yyyymm.len() != 6 || !yyyymm.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let (Ok(y), Ok(m)) = (yyyymm[..4].parse::<i32>(), yyyymm[4..].parse::<u32>()) else {
        return false;
    };
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|first| first.and_hms_opt(0, 0, 0))
        .is_some_and(|end| end.and_utc() <= expiry.occurred_before)
}

#[async_trait::async_trait]
impl Retention for ClickHouseStore {
    /// One round: on every server, drop old months (legacy) or issue the delete mutation if
    /// none is running and the last one was issued [`MUTATION_EVERY`] ago. Never more in the
    /// same round: a mutation is not a small step.
    async fn expire_step(&self, expiry: Expiry) -> Result<ExpireStep, PortError> {
        self.schema().await?;
        if self
            .inner
            .cluster
            .as_ref()
            .is_some_and(|(_, s)| s.is_empty())
        {
            tracing::warn!(
                "retention: CARTSTREAM_CLICKHOUSE_SHARD_URLS is not set, so old events cannot be \
                 deleted from the shards' tables; an operator deletes them (docs/backends.md, \
                 \"Retention\")"
            );
            return Ok(ExpireStep::default());
        }
        let legacy = self.is_legacy();
        if !legacy {
            let mut last = self
                .inner
                .last_mutation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < MUTATION_EVERY) {
                return Ok(ExpireStep::default());
            }
            *last = Some(tokio::time::Instant::now());
        }
        let mut step = ExpireStep::default();
        for t in self.retention_targets() {
            if legacy {
                step.partitions += self.drop_old_months(&t, expiry).await?.len() as u64;
            } else {
                step.mutations += self.mutate_old_rows(&t, expiry).await?;
            }
        }
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_is_dropped_only_once_it_has_ended_before_the_cutoff() {
        let expiry = |s: &str| {
            let t = chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
            Expiry {
                occurred_before: t,
                received_before: t,
            }
        };
        let cut = expiry("2025-03-01T00:00:00Z");
        assert!(month_ended_before("202502", cut));
        assert!(month_ended_before("202412", cut));
        assert!(!month_ended_before("202503", cut));
        assert!(!month_ended_before(
            "202502",
            expiry("2025-02-28T23:59:59Z")
        ));
        assert!(month_ended_before("202412", expiry("2025-01-01T00:00:00Z")));
        for odd in ["all", "2025", "20250", "2025021", "202513", "197001x"] {
            assert!(!month_ended_before(odd, cut), "{odd}");
        }
    }
}
