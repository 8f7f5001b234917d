//! The local journal on SQLite (`journal.db` in the data dir): accepted events wait here,
//! fsynced, until the forwarder has stored them in the remote event store.
//!
//! A trusted engine rather than a hand-written log: SQLite's WAL with `synchronous=FULL`
//! gives crash-safe group commit (one fsync per appended batch) and needs no recovery code of
//! ours. Counts are kept in memory so the forwarder can poll them on every loop for free.

use crate::adapters::outbound::sqlite::{
    blocking, db_err, db_path, feed_after, from_ms, known_ids, lock, open_conn, query_events, Row,
};
use crate::domain::{DedupKey, StoredEvent};
use crate::ports::{
    EventFeed, EventQuery, FeedEntry, Journal, JournalEntry, JournalStats, PortError,
};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    session_id   TEXT,
    event_type   TEXT NOT NULL,
    occurred_at  INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    source       TEXT NOT NULL,
    metadata     TEXT NOT NULL,
    bytes        INTEGER NOT NULL
);
";

#[derive(Clone)]
pub struct SqliteJournal {
    inner: Arc<Inner>,
}

struct Inner {
    write: Mutex<Connection>,
    read: Mutex<Connection>,
    stats: Mutex<JournalStats>,
    max_bytes: u64,
}

impl SqliteJournal {
    /// Opens (creating if needed) `journal.db` in `data_dir`, holding at most `max_bytes` of
    /// events (as [`Row::size`] counts them).
    ///
    /// # Errors
    /// When the directory or database cannot be opened.
    pub fn open(data_dir: &Path, max_bytes: u64) -> Result<Self, PortError> {
        let path = db_path(data_dir, "journal.db")?;
        let write = open_conn(&path)?;
        write.execute_batch(SCHEMA).map_err(db_err)?;
        let read = open_conn(&path)?;
        let stats = current_stats(&write)?;
        Ok(Self {
            inner: Arc::new(Inner {
                write: Mutex::new(write),
                read: Mutex::new(read),
                stats: Mutex::new(stats),
                max_bytes,
            }),
        })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, PortError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, PortError> + Send + 'static,
    {
        blocking(&self.inner, f).await
    }
}

fn current_stats(conn: &Connection) -> Result<JournalStats, PortError> {
    let (entries, bytes): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM journal",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(db_err)?;
    Ok(JournalStats {
        entries: entries as u64,
        bytes: bytes as u64,
        oldest: oldest_received(conn)?,
    })
}

fn oldest_received(conn: &Connection) -> Result<Option<chrono::DateTime<chrono::Utc>>, PortError> {
    let ms: Option<i64> = conn
        .query_row(
            "SELECT received_at FROM journal ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?;
    Ok(ms.map(from_ms))
}

#[async_trait::async_trait]
impl Journal for SqliteJournal {
    async fn append(&self, events: &[StoredEvent]) -> Result<(), PortError> {
        if events.is_empty() {
            return Ok(());
        }
        let rows: Vec<Row> = events.iter().map(Row::from).collect();
        let oldest = events.iter().map(|e| e.received_at).min();
        self.blocking(move |inner| {
            let total: u64 = rows.iter().map(|r| r.size() as u64).sum();
            {
                let stats = lock(&inner.stats);
                if stats.bytes + total > inner.max_bytes {
                    return Err(PortError::Full(format!(
                        "the local journal holds {} bytes and its limit is {}; it frees up as \
                         the event store catches up",
                        stats.bytes, inner.max_bytes
                    )));
                }
            }
            let mut conn = lock(&inner.write);
            let tx = conn.transaction().map_err(db_err)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO journal (event_id, user_id, session_id, event_type,
                         occurred_at, received_at, source, metadata, bytes)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .map_err(db_err)?;
                for r in &rows {
                    stmt.execute(params![
                        r.event_id,
                        r.user_id,
                        r.session_id,
                        r.event_type,
                        r.occurred_at,
                        r.received_at,
                        r.source,
                        r.metadata,
                        r.size() as i64
                    ])
                    .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)?;
            let mut stats = lock(&inner.stats);
            stats.entries += rows.len() as u64;
            stats.bytes += total;
            stats.oldest = match (stats.oldest, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Ok(())
        })
        .await
    }

    async fn oldest_after(
        &self,
        after: i64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<JournalEntry>, PortError> {
        self.blocking(move |inner| {
            let conn = lock(&inner.read);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT event_id, user_id, session_id, event_type, occurred_at, received_at,
                     source, metadata, seq, bytes FROM journal WHERE seq > ?1
                     ORDER BY seq LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([after, max_entries as i64], |r| {
                    Ok((Row::read(r)?, r.get::<_, i64>(8)?, r.get::<_, i64>(9)?))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            let mut total = 0usize;
            for row in rows {
                let (row, seq, bytes) = row.map_err(db_err)?;
                let bytes = bytes as usize;
                if !out.is_empty() && total + bytes > max_bytes {
                    break;
                }
                total += bytes;
                out.push(JournalEntry {
                    seq,
                    event: row.into_stored()?,
                    bytes,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn remove_through(&self, upto: i64) -> Result<(), PortError> {
        self.blocking(move |inner| {
            let mut conn = lock(&inner.write);
            let tx = conn.transaction().map_err(db_err)?;
            let (n, bytes): (i64, i64) = tx
                .query_row(
                    "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM journal WHERE seq <= ?1",
                    [upto],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(db_err)?;
            tx.execute("DELETE FROM journal WHERE seq <= ?1", [upto])
                .map_err(db_err)?;
            let oldest = oldest_received(&tx)?;
            tx.commit().map_err(db_err)?;
            let mut stats = lock(&inner.stats);
            stats.entries = stats.entries.saturating_sub(n as u64);
            stats.bytes = stats.bytes.saturating_sub(bytes as u64);
            stats.oldest = oldest;
            Ok(())
        })
        .await
    }

    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        let keys: Vec<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
        self.blocking(move |inner| {
            let conn = lock(&inner.read);
            known_ids(&conn, "journal", &keys)
        })
        .await
    }

    async fn query(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, PortError> {
        let query = query.clone();
        self.blocking(move |inner| {
            let conn = lock(&inner.read);
            query_events(&conn, "journal", &query)
        })
        .await
    }

    fn stats(&self) -> JournalStats {
        *lock(&self.inner.stats)
    }
}

/// The journal in append order. Entries are removed once forwarded, so the forwarder keeps
/// those the router has not read yet (see `app::forwarder`).
#[async_trait::async_trait]
impl EventFeed for SqliteJournal {
    fn name(&self) -> &'static str {
        "journal"
    }

    async fn head(&self) -> Result<i64, PortError> {
        self.blocking(|inner| {
            let conn = lock(&inner.read);
            // AUTOINCREMENT keeps the highest seq ever used in sqlite_sequence, even after the
            // entries are gone.
            conn.query_row(
                "SELECT MAX(COALESCE((SELECT MAX(seq) FROM journal), 0),
                            COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'journal'), 0))",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)
        })
        .await
    }

    async fn after(&self, after: i64, max: usize) -> Result<Vec<FeedEntry>, PortError> {
        self.blocking(move |inner| {
            let conn = lock(&inner.read);
            feed_after(&conn, "journal", "seq", after, max)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
