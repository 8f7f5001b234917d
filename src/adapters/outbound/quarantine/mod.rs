//! The quarantine on SQLite (`quarantine.db` in the data dir): accepted events the event
//! store refused one by one, kept with what it answered until an operator replays or deletes
//! them. A file of its own: it is written rarely, and never on the ack path.
//!
//! The `events` columns are the embedded store's, so the listing and dedup queries are the
//! same code (`sqlite::query_events`, `sqlite::known_ids`).

use crate::adapters::outbound::sqlite::{
    blocking, db_err, db_path, from_ms, known_ids, lock, open_queue_conn, query_events, unix_ms,
    Row, EVENT_COLUMNS,
};
use crate::domain::DedupKey;
use crate::ports::{
    EventPage, EventQuery, PortError, Quarantine, QuarantineEntry, QuarantinedEvent,
};
use rusqlite::{params, Connection};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The file's name in the data dir.
pub const FILE: &str = "quarantine.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS quarantine (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    user_id         TEXT NOT NULL,
    session_id      TEXT,
    event_type      TEXT NOT NULL,
    occurred_at     INTEGER NOT NULL,  -- Unix ms
    received_at     INTEGER NOT NULL,  -- Unix ms
    source          TEXT NOT NULL,
    metadata        TEXT NOT NULL,     -- the metadata object as compact JSON
    reason          TEXT NOT NULL,     -- what the event store answered for this event alone
    code            INTEGER,           -- its error code, if any
    quarantined_at  INTEGER NOT NULL   -- Unix ms
);
CREATE INDEX IF NOT EXISTS quarantine_by_user ON quarantine (user_id, occurred_at);
";

#[derive(Clone)]
pub struct SqliteQuarantine {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    count: AtomicU64,
}

impl SqliteQuarantine {
    /// Opens (creating if needed) [`FILE`] in `data_dir`.
    ///
    /// # Errors
    /// When the directory or database cannot be opened.
    pub fn open(data_dir: &Path) -> Result<Self, PortError> {
        let conn = open_queue_conn(&db_path(data_dir, FILE)?)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        let count: i64 = conn
            .query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))
            .map_err(db_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                count: AtomicU64::new(count as u64),
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

fn recount(conn: &Connection, inner: &Inner) -> Result<(), PortError> {
    let count: i64 = conn
        .query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))
        .map_err(db_err)?;
    inner.count.store(count as u64, Ordering::Release);
    Ok(())
}

fn read_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Row, String, Option<u32>, i64)> {
    Ok((r.get(8)?, Row::read(r)?, r.get(9)?, r.get(10)?, r.get(11)?))
}

fn entries(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<QuarantineEntry>, PortError> {
    let rows = stmt.query_map(params, read_entry).map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, row, reason, code, at) = row.map_err(db_err)?;
        out.push(QuarantineEntry {
            id,
            item: QuarantinedEvent {
                event: row.into_stored()?,
                reason,
                code,
                quarantined_at: from_ms(at),
            },
        });
    }
    Ok(out)
}

const SELECT: &str = "SELECT event_id, user_id, session_id, event_type, occurred_at, received_at, \
                      source, metadata, id, reason, code, quarantined_at FROM quarantine";

#[async_trait::async_trait]
impl Quarantine for SqliteQuarantine {
    async fn put(&self, events: &[QuarantinedEvent]) -> Result<(), PortError> {
        if events.is_empty() {
            return Ok(());
        }
        let rows: Vec<(Row, String, Option<u32>, i64)> = events
            .iter()
            .map(|q| {
                (
                    Row::from(&q.event),
                    q.reason.clone(),
                    q.code,
                    unix_ms(q.quarantined_at),
                )
            })
            .collect();
        self.blocking(move |inner| {
            let mut conn = lock(&inner.conn);
            let tx = conn.transaction().map_err(db_err)?;
            {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "INSERT OR IGNORE INTO quarantine ({EVENT_COLUMNS}, reason, code, \
                         quarantined_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                    ))
                    .map_err(db_err)?;
                for (r, reason, code, at) in &rows {
                    stmt.execute(params![
                        r.event_id,
                        r.user_id,
                        r.session_id,
                        r.event_type,
                        r.occurred_at,
                        r.received_at,
                        r.source,
                        r.metadata,
                        reason,
                        code,
                        at
                    ])
                    .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)?;
            recount(&conn, inner)
        })
        .await
    }

    async fn list(&self, after: i64, limit: usize) -> Result<Vec<QuarantineEntry>, PortError> {
        self.blocking(move |inner| {
            let conn = lock(&inner.conn);
            let mut stmt = conn
                .prepare_cached(&format!("{SELECT} WHERE id > ?1 ORDER BY id LIMIT ?2"))
                .map_err(db_err)?;
            entries(&mut stmt, params![after, limit as i64])
        })
        .await
    }

    async fn get(&self, event_ids: &[String]) -> Result<Vec<QuarantineEntry>, PortError> {
        let ids = event_ids.to_vec();
        self.blocking(move |inner| {
            let conn = lock(&inner.conn);
            let mut stmt = conn
                .prepare_cached(&format!("{SELECT} WHERE event_id = ?1"))
                .map_err(db_err)?;
            let mut out = Vec::new();
            for id in &ids {
                out.extend(entries(&mut stmt, [id])?);
            }
            out.sort_by_key(|e| e.id);
            out.dedup_by_key(|e| e.id);
            Ok(out)
        })
        .await
    }

    async fn remove(&self, event_ids: &[String]) -> Result<u64, PortError> {
        let ids = event_ids.to_vec();
        self.blocking(move |inner| {
            let mut conn = lock(&inner.conn);
            let tx = conn.transaction().map_err(db_err)?;
            let mut removed = 0;
            {
                let mut stmt = tx
                    .prepare_cached("DELETE FROM quarantine WHERE event_id = ?1")
                    .map_err(db_err)?;
                for id in &ids {
                    removed += stmt.execute([id]).map_err(db_err)? as u64;
                }
            }
            tx.commit().map_err(db_err)?;
            recount(&conn, inner)?;
            Ok(removed)
        })
        .await
    }

    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        if self.count() == 0 {
            return Ok(vec![false; keys.len()]);
        }
        let keys: Vec<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
        self.blocking(move |inner| known_ids(&lock(&inner.conn), "quarantine", &keys))
            .await
    }

    async fn query(&self, query: &EventQuery) -> Result<EventPage, PortError> {
        if self.count() == 0 {
            return Ok(crate::ports::PageBuilder::new(query).finish());
        }
        let query = query.clone();
        self.blocking(move |inner| query_events(&lock(&inner.conn), "quarantine", &query))
            .await
    }

    fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests;
