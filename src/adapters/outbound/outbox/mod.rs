//! The outbox on SQLite (`outbox.db` in the data dir): deliveries each route still owes, the
//! dead-letter store, and how far each event feed has been read. Enqueueing and moving the
//! cursor happen in one transaction, so routing never skips nor doubles an event over a crash.
//!
//! Each delivery and dead letter carries a CRC-32 of what it delivers (its route, lane and
//! event), checked whenever the row is read: SQLite's checks find damaged pages, not wrong
//! bytes inside a valid row. Rows written before checksums have none and are read unchecked.

use crate::adapters::outbound::sqlite::{
    blocking, db_err, db_path, from_ms, lock, open_queue_conn, unix_ms, DbThread, Row,
};
use crate::ports::{Clock, DeadLetter, Delivery, Outbox, OutboxItem, PortError, RouteBacklog};
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};

const EVENT_COLUMNS: &str =
    "event_id, user_id, session_id, event_type, occurred_at, received_at, source, metadata";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cursors (
    feed  TEXT PRIMARY KEY NOT NULL,
    seq   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    route        TEXT NOT NULL,
    lane         INTEGER NOT NULL,
    event_id     TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    session_id   TEXT,
    event_type   TEXT NOT NULL,
    occurred_at  INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    source       TEXT NOT NULL,
    metadata     TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    checksum     INTEGER               -- CRC-32 of route, lane and event; NULL in older rows
);
CREATE INDEX IF NOT EXISTS deliveries_by_lane ON deliveries (route, lane, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id           INTEGER PRIMARY KEY,
    route        TEXT NOT NULL,
    lane         INTEGER NOT NULL,
    event_id     TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    session_id   TEXT,
    event_type   TEXT NOT NULL,
    occurred_at  INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    source       TEXT NOT NULL,
    metadata     TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    last_error   TEXT NOT NULL,
    failed_at    INTEGER NOT NULL,
    checksum     INTEGER
);
CREATE INDEX IF NOT EXISTS dead_letters_by_route ON dead_letters (route, id);
";

#[derive(Clone)]
pub struct SqliteOutbox {
    inner: Arc<Inner>,
    /// Where the reads that decode events run (see [`DbThread`]).
    reader: Arc<DbThread>,
}

struct Inner {
    write: Mutex<Connection>,
    read: Mutex<Connection>,
    /// When a delivery became a dead letter (`failedAt`).
    clock: Arc<dyn Clock>,
}

impl SqliteOutbox {
    /// Opens (creating if needed) `outbox.db` in `data_dir`; `clock` dates dead letters.
    ///
    /// # Errors
    /// When the directory or database cannot be opened.
    pub fn open(data_dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, PortError> {
        let path = db_path(data_dir, "outbox.db")?;
        let write = open_queue_conn(&path)?;
        write.execute_batch(SCHEMA).map_err(db_err)?;
        add_checksum_columns(&write)?;
        let read = open_queue_conn(&path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                write: Mutex::new(write),
                read: Mutex::new(read),
                clock,
            }),
            reader: Arc::new(DbThread::spawn("outbox-read")?),
        })
    }

    /// Runs `f` on the read thread: for reads that decode events.
    async fn reading<T, F>(&self, f: F) -> Result<T, PortError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, PortError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.reader.run(move || f(&inner)).await
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, PortError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, PortError> + Send + 'static,
    {
        blocking(&self.inner, f).await
    }
}

/// Whether `table` has the `checksum` column (outboxes written before checksums do not).
fn has_checksums(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = 'checksum'",
        [table],
        |r| r.get(0),
    )
}

/// Outboxes written before checksums lack the column: added, NULL in their rows.
fn add_checksum_columns(conn: &Connection) -> Result<(), PortError> {
    for table in ["deliveries", "dead_letters"] {
        if !has_checksums(conn, table).map_err(db_err)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN checksum INTEGER"))
                .map_err(db_err)?;
        }
    }
    Ok(())
}

/// The CRC-32 of what a row delivers: its route, lane and event columns, each string with its
/// length in front so that no two rows hash the same bytes.
fn checksum(route: &str, lane: i64, r: &Row) -> i64 {
    fn text(h: &mut crc32fast::Hasher, s: Option<&str>) {
        match s {
            Some(s) => {
                h.update(&(s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            None => h.update(&u64::MAX.to_le_bytes()),
        }
    }
    let mut h = crc32fast::Hasher::new();
    for s in [
        Some(route),
        Some(&r.event_id),
        Some(&r.user_id),
        r.session_id.as_deref(),
        Some(&r.event_type),
        Some(&r.source),
        Some(&r.metadata),
    ] {
        text(&mut h, s);
    }
    for n in [lane, r.occurred_at, r.received_at] {
        h.update(&n.to_le_bytes());
    }
    i64::from(h.finalize())
}

/// `row` of `table` (`id`), once its checksum (if it has one) matches.
fn checked(
    table: &str,
    id: i64,
    route: &str,
    lane: i64,
    row: Row,
    sum: Option<i64>,
) -> Result<Row, PortError> {
    match sum {
        Some(sum) if sum != checksum(route, lane, &row) => Err(PortError::Failed(format!(
            "outbox: row {id} of {table} (route {route:?}) fails its checksum: damaged on \
             disk (README: Damaged files)"
        ))),
        _ => Ok(row),
    }
}

/// Checks every row of the outbox behind `conn` that has a checksum, in order, calling
/// `failed(table, id)` for each one whose checksum does not match; how many rows were checked.
/// One row is in memory at a time. Pages that cannot be read are SQLite's checks to report.
///
/// # Errors
/// When a table cannot be read.
pub fn verify_checksums(
    conn: &Connection,
    mut failed: impl FnMut(&'static str, i64),
) -> rusqlite::Result<u64> {
    let mut checked = 0;
    for table in ["deliveries", "dead_letters"] {
        // A file no server of this version has opened yet: nothing to check.
        if !has_checksums(conn, table)? {
            continue;
        }
        let mut stmt = conn.prepare(&format!(
            "SELECT {EVENT_COLUMNS}, id, route, lane, checksum FROM {table}
             WHERE checksum IS NOT NULL ORDER BY id"
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let row = Row::read(r)?;
            let (id, route, lane, sum) = (
                r.get::<_, i64>(8)?,
                r.get::<_, String>(9)?,
                r.get::<_, i64>(10)?,
                r.get::<_, i64>(11)?,
            );
            checked += 1;
            if checksum(&route, lane, &row) != sum {
                failed(table, id);
            }
        }
    }
    Ok(checked)
}

/// The rows of the outbox behind `conn` whose checksum does not match, as (table, id); for
/// `cartstream salvage`, which deletes them.
///
/// # Errors
/// When a table cannot be read.
pub fn checksum_failures(conn: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    verify_checksums(conn, |table, id| out.push((table.to_owned(), id)))?;
    Ok(out)
}

/// Runs `sql` once per id in one transaction.
fn for_each_id(
    conn: &mut Connection,
    ids: &[i64],
    sql: &str,
    extra: &[&dyn rusqlite::ToSql],
) -> Result<(), PortError> {
    let tx = conn.transaction().map_err(db_err)?;
    {
        let mut stmt = tx.prepare_cached(sql).map_err(db_err)?;
        for id in ids {
            let mut args: Vec<&dyn rusqlite::ToSql> = vec![id];
            args.extend_from_slice(extra);
            stmt.execute(args.as_slice()).map_err(db_err)?;
        }
    }
    tx.commit().map_err(db_err)
}

#[async_trait::async_trait]
impl Outbox for SqliteOutbox {
    async fn cursor(&self, feed: &str) -> Result<Option<i64>, PortError> {
        let feed = feed.to_owned();
        self.blocking(move |inner| {
            let conn = lock(&inner.read);
            conn.query_row("SELECT seq FROM cursors WHERE feed = ?1", [feed], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn enqueue(
        &self,
        feed: &str,
        deliveries: &[Delivery],
        cursor: i64,
    ) -> Result<(), PortError> {
        let feed = feed.to_owned();
        let rows: Vec<(String, u32, Row)> = deliveries
            .iter()
            .map(|d| (d.route.clone(), d.lane, Row::from(&d.event)))
            .collect();
        self.blocking(move |inner| {
            let mut conn = lock(&inner.write);
            let tx = conn.transaction().map_err(db_err)?;
            {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "INSERT INTO deliveries (route, lane, {EVENT_COLUMNS}, checksum)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                    ))
                    .map_err(db_err)?;
                for (route, lane, r) in &rows {
                    stmt.execute(params![
                        route,
                        lane,
                        r.event_id,
                        r.user_id,
                        r.session_id,
                        r.event_type,
                        r.occurred_at,
                        r.received_at,
                        r.source,
                        r.metadata,
                        checksum(route, i64::from(*lane), r)
                    ])
                    .map_err(db_err)?;
                }
            }
            tx.execute(
                "INSERT INTO cursors (feed, seq) VALUES (?1, ?2)
                 ON CONFLICT (feed) DO UPDATE SET seq = excluded.seq",
                params![feed, cursor],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn head(&self, route: &str, lane: u32, max: usize) -> Result<Vec<OutboxItem>, PortError> {
        let route = route.to_owned();
        self.reading(move |inner| {
            let conn = lock(&inner.read);
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS}, id, attempts, next_at, checksum FROM deliveries
                     WHERE route = ?1 AND lane = ?2 ORDER BY id LIMIT ?3"
                ))
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![route, lane, max as i64], |r| {
                    Ok((
                        Row::read(r)?,
                        r.get::<_, i64>(8)?,
                        r.get::<_, i64>(9)?,
                        r.get::<_, i64>(10)?,
                        r.get::<_, Option<i64>>(11)?,
                    ))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (row, id, attempts, next_at, sum) = row.map_err(db_err)?;
                let row = checked("deliveries", id, &route, i64::from(lane), row, sum)?;
                out.push(OutboxItem {
                    id,
                    route: route.clone(),
                    lane,
                    event: row.into_stored()?,
                    attempts: attempts as u32,
                    next_at: from_ms(next_at),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn delivered(&self, ids: &[i64]) -> Result<(), PortError> {
        let ids = ids.to_vec();
        self.blocking(move |inner| {
            let mut conn = lock(&inner.write);
            for_each_id(&mut conn, &ids, "DELETE FROM deliveries WHERE id = ?1", &[])
        })
        .await
    }

    async fn retry_later(
        &self,
        ids: &[i64],
        next_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), PortError> {
        let ids = ids.to_vec();
        let error = error.to_owned();
        self.blocking(move |inner| {
            let mut conn = lock(&inner.write);
            for_each_id(
                &mut conn,
                &ids,
                "UPDATE deliveries SET attempts = attempts + 1, next_at = ?2, last_error = ?3 WHERE id = ?1",
                &[&unix_ms(next_at), &error],
            )
        })
        .await
    }

    async fn dead_letter(&self, ids: &[i64], error: &str) -> Result<(), PortError> {
        let ids = ids.to_vec();
        let error = error.to_owned();
        self.blocking(move |inner| {
            let mut conn = lock(&inner.write);
            let tx = conn.transaction().map_err(db_err)?;
            {
                let mut copy = tx
                    .prepare_cached(&format!(
                        "INSERT OR REPLACE INTO dead_letters (id, route, lane, {EVENT_COLUMNS},
                         attempts, last_error, failed_at, checksum)
                         SELECT id, route, lane, {EVENT_COLUMNS}, attempts + 1, ?2, ?3, checksum
                         FROM deliveries WHERE id = ?1"
                    ))
                    .map_err(db_err)?;
                let mut delete = tx
                    .prepare_cached("DELETE FROM deliveries WHERE id = ?1")
                    .map_err(db_err)?;
                let now = unix_ms(inner.clock.now());
                for id in &ids {
                    copy.execute(params![id, error, now]).map_err(db_err)?;
                    delete.execute([id]).map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn dead_letters(
        &self,
        route: Option<String>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, PortError> {
        self.reading(move |inner| {
            let conn = lock(&inner.read);
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS}, id, route, lane, attempts, last_error, failed_at,
                     checksum FROM dead_letters WHERE (?1 IS NULL OR route = ?1) AND id > ?2
                     ORDER BY id LIMIT ?3"
                ))
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![route, after.unwrap_or(0), limit as i64], |r| {
                    Ok((
                        Row::read(r)?,
                        r.get::<_, i64>(8)?,
                        r.get::<_, String>(9)?,
                        r.get::<_, i64>(10)?,
                        r.get::<_, i64>(11)?,
                        r.get::<_, String>(12)?,
                        r.get::<_, i64>(13)?,
                        r.get::<_, Option<i64>>(14)?,
                    ))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (row, id, route, lane, attempts, last_error, failed_at, sum) =
                    row.map_err(db_err)?;
                let row = checked("dead_letters", id, &route, lane, row, sum)?;
                out.push(DeadLetter {
                    id,
                    route,
                    lane: lane as u32,
                    event: row.into_stored()?,
                    attempts: attempts as u32,
                    last_error,
                    failed_at: from_ms(failed_at),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn replay(&self, route: Option<String>, ids: Option<Vec<i64>>) -> Result<u64, PortError> {
        self.blocking(move |inner| {
            let mut conn = lock(&inner.write);
            let tx = conn.transaction().map_err(db_err)?;
            let selected: Vec<i64> = match &ids {
                Some(ids) => ids.clone(),
                None => {
                    let mut stmt = tx
                        .prepare("SELECT id FROM dead_letters WHERE (?1 IS NULL OR route = ?1)")
                        .map_err(db_err)?;
                    let ids = stmt
                        .query_map(params![route], |r| r.get(0))
                        .map_err(db_err)?
                        .collect::<Result<Vec<i64>, _>>()
                        .map_err(db_err)?;
                    ids
                }
            };
            let mut moved = 0u64;
            {
                let mut copy = tx
                    .prepare_cached(&format!(
                        "INSERT INTO deliveries (id, route, lane, {EVENT_COLUMNS}, attempts, next_at,
                         checksum)
                         SELECT id, route, lane, {EVENT_COLUMNS}, 0, 0, checksum FROM dead_letters
                         WHERE id = ?1 AND (?2 IS NULL OR route = ?2)"
                    ))
                    .map_err(db_err)?;
                let mut delete = tx
                    .prepare_cached("DELETE FROM dead_letters WHERE id = ?1 AND (?2 IS NULL OR route = ?2)")
                    .map_err(db_err)?;
                for id in &selected {
                    if copy.execute(params![id, route]).map_err(db_err)? > 0 {
                        delete.execute(params![id, route]).map_err(db_err)?;
                        moved += 1;
                    }
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(moved)
        })
        .await
    }

    async fn delete_dead_letter(&self, id: i64) -> Result<bool, PortError> {
        self.blocking(move |inner| {
            let conn = lock(&inner.write);
            conn.execute("DELETE FROM dead_letters WHERE id = ?1", [id])
                .map(|n| n > 0)
                .map_err(db_err)
        })
        .await
    }

    async fn backlog(&self, route: &str) -> Result<RouteBacklog, PortError> {
        let route = route.to_owned();
        self.blocking(move |inner| {
            let conn = lock(&inner.read);
            let count = |table: &str| -> Result<u64, PortError> {
                conn.query_row(
                    &format!("SELECT COUNT(*) FROM {table} WHERE route = ?1"),
                    [&route],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as u64)
                .map_err(db_err)
            };
            Ok(RouteBacklog {
                pending: count("deliveries")?,
                dead: count("dead_letters")?,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests;
