//! What the SQLite-backed adapters (the embedded store and the local journal) share: opening
//! a durable connection, the row form of an event, and the `GET /events` query.

use super::listing_sql::{page_clause, Arg, SQLITE};
use crate::domain::{StoredEvent, StoredFields};
use crate::ports::{EventPage, EventQuery, PageBuilder, PortError};
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params_from_iter, Connection, OpenFlags};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// [`EVENT_COLUMNS`], as a literal for `concat!`.
macro_rules! event_columns {
    () => {
        "event_id, user_id, session_id, event_type, occurred_at, received_at, source, metadata"
    };
}

/// The event columns of the `events` table, in table order (as [`Row::read`] reads them).
pub(crate) const EVENT_COLUMNS: &str = event_columns!();

/// Inserts a [`Row`] into `events`, keeping the row already there for its `event_id`.
pub(crate) const INSERT_EVENT: &str = concat!(
    "INSERT OR IGNORE INTO events (",
    event_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
);

pub(crate) fn db_err(e: rusqlite::Error) -> PortError {
    if no_space(&e) {
        return PortError::NoSpace(format!("local database: {e}"));
    }
    PortError::Unavailable(format!("local database: {e}"))
}

/// Whether `e` says the disk is full: `SQLITE_FULL`, which SQLite's file layer answers when a
/// write gets `ENOSPC`.
fn no_space(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back),
    // so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn unix_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

pub(crate) fn open_conn(path: &Path) -> Result<Connection, PortError> {
    open_conn_with(path, "")
}

/// Like [`open_conn`], running `first` (pragmas that only take effect before the file has
/// pages, such as `auto_vacuum`) before anything else touches the file.
pub(crate) fn open_conn_with(path: &Path, first: &str) -> Result<Connection, PortError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
    conn.execute_batch(first).map_err(db_err)?;
    // 16 MiB of page cache (the default is 2 MiB): index pages of a growing table stay in
    // memory instead of being read back from disk on every insert.
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-16384;
         PRAGMA temp_store=MEMORY;",
    )
    .map_err(db_err)?;
    Ok(conn)
}

/// Like [`open_conn`] for a file used as a queue (the journal, the outbox, the quarantine):
/// rows are appended at one end and read and deleted at the other, so only the B-tree's edges
/// are hot. SQLite's own default page cache (2 MiB) is enough there. With 16 MiB on each of
/// their connections, the caches filled slowly as outages grew the files (a 300,000-event
/// backlog makes a 66 MB journal) and the process's memory crept up for an hour.
pub(crate) fn open_queue_conn(path: &Path) -> Result<Connection, PortError> {
    let conn = open_conn(path)?;
    conn.execute_batch("PRAGMA cache_size=-2048;")
        .map_err(db_err)?;
    Ok(conn)
}

/// `data_dir/file`, creating `data_dir` if needed.
pub(crate) fn db_path(data_dir: &Path, file: &str) -> Result<std::path::PathBuf, PortError> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        PortError::Unavailable(format!(
            "cannot create data dir {}: {e}",
            data_dir.display()
        ))
    })?;
    Ok(data_dir.join(file))
}

/// Runs `f` on tokio's blocking pool: rusqlite calls block, and the connections behind `inner`
/// are std mutexes locked only inside such closures.
pub(crate) async fn blocking<I, T, F>(inner: &std::sync::Arc<I>, f: F) -> Result<T, PortError>
where
    I: Send + Sync + 'static,
    T: Send + 'static,
    F: FnOnce(&I) -> Result<T, PortError> + Send + 'static,
{
    let inner = std::sync::Arc::clone(inner);
    tokio::task::spawn_blocking(move || f(&inner))
        .await
        .map_err(|e| PortError::Failed(format!("local database task failed: {e}")))?
}

/// One thread that runs a store's jobs, one after another: the reads of the journal and the
/// outbox, and the embedded store's background writes.
///
/// A read that decodes many rows (the forwarder takes up to 20,000 journal entries at a time)
/// allocates them on the thread that runs it, and the tasks that use the rows free them on
/// other threads. mimalloc gives memory freed from another thread back only when the owning
/// thread runs again; on tokio's blocking pool the owner may sit idle for seconds, and under
/// load the pool holds a dozen such threads, each keeping the pages of the last read it ran
/// (the soak's RSS rose that way under CPU contention; RELIABILITY.md). Here every read runs
/// on the same thread, which reuses those pages on its next read: what it keeps is bounded by
/// one read. The reads share one connection anyway, so running them in turn costs nothing.
pub(crate) struct DbThread {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl DbThread {
    /// Starts the thread; it ends when this is dropped.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub(crate) fn spawn(name: &str) -> Result<Self, PortError> {
        Self::spawn_with(name, || {})
    }

    /// Like [`spawn`](Self::spawn), running `setup` on the thread before any job.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub(crate) fn spawn_with(
        name: &str,
        setup: impl FnOnce() + Send + 'static,
    ) -> Result<Self, PortError> {
        let (jobs, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                setup();
                for job in rx {
                    // A read that panics fails alone (its caller gets an error); the thread
                    // goes on with the next.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .map_err(|e| PortError::Unavailable(format!("cannot start {name}: {e}")))?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the thread and waits for its result without blocking the caller's task.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, PortError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, PortError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = reply.send(f());
            }))
            .map_err(|_| PortError::Failed("local database thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| PortError::Failed("local database job failed (panicked)".into()))?
    }
}

/// Entries of `table` after position `after` (its `seq_column`), oldest first.
pub(crate) fn feed_after(
    conn: &Connection,
    table: &str,
    seq_column: &str,
    after: i64,
    max: usize,
) -> Result<Vec<crate::ports::FeedEntry>, PortError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS}, {seq_column} FROM {table} WHERE {seq_column} > ?1
             ORDER BY {seq_column} LIMIT ?2"
        ))
        .map_err(db_err)?;
    let rows = stmt
        .query_map(rusqlite::params![after, max as i64], |r| {
            Ok((Row::read(r)?, r.get::<_, i64>(8)?))
        })
        .map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (row, seq) = row.map_err(db_err)?;
        out.push(crate::ports::FeedEntry {
            seq,
            event: row.into_stored()?,
        });
    }
    Ok(out)
}

/// Which of `keys` are an `event_id` in `table`.
pub(crate) fn known_ids(
    conn: &Connection,
    table: &str,
    keys: &[String],
) -> Result<Vec<bool>, PortError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT 1 FROM {table} WHERE event_id = ?1 LIMIT 1"
        ))
        .map_err(db_err)?;
    keys.iter()
        .map(|k| stmt.exists([k]).map_err(db_err))
        .collect()
}

/// The page of `table` (which has the `events` columns) that `query` asks for. Rows are read
/// one at a time in listing order and reading stops one row past the page, so memory holds
/// the page, never the whole match.
pub(crate) fn query_events(
    conn: &Connection,
    table: &str,
    query: &EventQuery,
) -> Result<EventPage, PortError> {
    let (clause, args) = page_clause(query, &SQLITE);
    let sql = format!("SELECT {EVENT_COLUMNS} FROM {table} WHERE 1 = 1{clause}");
    let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
    let mut rows = stmt.query(params_from_iter(args)).map_err(db_err)?;
    let mut page = PageBuilder::new(query);
    while let Some(row) = rows.next().map_err(db_err)? {
        page.offer(Row::read(row).map_err(db_err)?.into_stored()?);
        if page.is_full() {
            break;
        }
    }
    Ok(page.finish())
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Arg::Text(t) => t.to_sql(),
            Arg::Int(i) => i.to_sql(),
        }
    }
}

/// An event as the `events` table holds it.
pub(crate) struct Row {
    pub event_id: String,
    pub user_id: String,
    pub session_id: Option<String>,
    pub event_type: String,
    pub occurred_at: i64,
    pub received_at: i64,
    pub source: String,
    pub metadata: String,
}

impl From<&StoredEvent> for Row {
    fn from(s: &StoredEvent) -> Self {
        let c = s.columns();
        Self {
            event_id: c.event_id.to_owned(),
            user_id: c.user_id.to_owned(),
            session_id: c.session_id.map(str::to_owned),
            event_type: c.event_type.to_owned(),
            occurred_at: c.occurred_at_ms,
            received_at: c.received_at_ms,
            source: c.source.to_owned(),
            metadata: c.metadata.to_owned(),
        }
    }
}

impl Row {
    /// Reads the 8 [`EVENT_COLUMNS`] in order.
    pub fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            event_id: r.get(0)?,
            user_id: r.get(1)?,
            session_id: r.get(2)?,
            event_type: r.get(3)?,
            occurred_at: r.get(4)?,
            received_at: r.get(5)?,
            source: r.get(6)?,
            metadata: r.get(7)?,
        })
    }

    pub fn into_stored(self) -> Result<StoredEvent, PortError> {
        StoredFields {
            event_id: &self.event_id,
            user_id: self.user_id,
            session_id: self.session_id,
            event_type: &self.event_type,
            occurred_at: from_ms(self.occurred_at),
            received_at: from_ms(self.received_at),
            source: &self.source,
            metadata: self.metadata,
        }
        .into_stored()
        .map_err(|what| PortError::Failed(format!("embedded store: bad {what} in row")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn sqlite_full_is_no_space_and_other_failures_are_unavailable() {
        assert!(matches!(
            db_err(failure(rusqlite::ffi::SQLITE_FULL)),
            PortError::NoSpace(_)
        ));
        assert!(matches!(
            db_err(failure(rusqlite::ffi::SQLITE_IOERR_WRITE)),
            PortError::Unavailable(_)
        ));
        assert!(matches!(
            db_err(failure(rusqlite::ffi::SQLITE_BUSY)),
            PortError::Unavailable(_)
        ));
    }
}

#[cfg(test)]
mod read_thread_tests {
    use super::DbThread;
    use crate::ports::PortError;

    /// Every read runs on the one thread, in turn; one that panics fails alone.
    #[tokio::test]
    async fn reads_run_on_one_thread_and_survive_a_panic() {
        let reader = DbThread::spawn("test-read").unwrap();
        let first = reader
            .run(|| Ok(std::thread::current().id()))
            .await
            .unwrap();
        let failed = reader
            .run(|| -> Result<(), PortError> { panic!("boom") })
            .await;
        assert!(matches!(failed, Err(PortError::Failed(m)) if m.contains("panicked")));
        let second = reader
            .run(|| Ok(std::thread::current().id()))
            .await
            .unwrap();
        assert_eq!(first, second);
        assert_ne!(first, std::thread::current().id());
    }
}
