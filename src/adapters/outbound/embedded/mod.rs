//! The embedded default: events and dedup state in one SQLite database on local disk, so
//! `cartstream` runs with no external service and a restart forgets neither.
//!
//! SQLite is in WAL mode with `synchronous=FULL`: a committed transaction has been fsynced.
//! Callers pass whole batches, so one fsync covers many events (group commit). rusqlite is
//! blocking, so every call runs on tokio's blocking pool; the connections sit behind std
//! mutexes, which is right because they are only ever locked inside those blocking closures.

use super::sqlite::{
    blocking, db_err, db_path, feed_after, known_ids, lock, open_conn, open_conn_with,
    query_events, unix_ms, DbThread, Row, INSERT_EVENT,
};
use crate::adapters::thread_priority::nice_this_thread;
use crate::domain::{DedupKey, KeyDigest, KeyHasher, KeyMap, StoredEvent, SweepMark};
use crate::ports::{
    Claim, Clock, DedupStore, EventFeed, EventPage, EventQuery, EventStore, ExpireStep, Expiry,
    FeedEntry, Lease, PortError, Retention, SystemClock,
};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    event_id     TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL,
    session_id   TEXT,
    event_type   TEXT NOT NULL,
    occurred_at  INTEGER NOT NULL, -- Unix milliseconds, UTC
    received_at  INTEGER NOT NULL, -- Unix milliseconds, UTC
    source       TEXT NOT NULL,
    metadata     TEXT NOT NULL     -- the metadata object as compact JSON
);
-- One index per filter of `GET /events`, each in the listing's full order, so a page reads its
-- rows in order and stops: no sort of every match (`embedded::tests::every_listing_reads_an_index_in_order`).
-- Ascending, though the listing is newest first: SQLite reads an index backwards just as fast,
-- and new events, which are mostly the newest, then land at the end of their range, where a
-- full page is left full. In descending indexes they landed at the front and every split left
-- two half-empty pages (BENCHMARKS.md: Where the events table's writes go).
CREATE INDEX IF NOT EXISTS events_in_order ON events (occurred_at, received_at, event_id);
CREATE INDEX IF NOT EXISTS events_of_user ON events (user_id, occurred_at, received_at, event_id);
CREATE INDEX IF NOT EXISTS events_of_type ON events (event_type, occurred_at, received_at, event_id);
-- Earlier versions' indexes, which the ones above replace.
DROP INDEX IF EXISTS events_by_time;
DROP INDEX IF EXISTS events_by_user;
DROP INDEX IF EXISTS events_listing_order;
DROP INDEX IF EXISTS events_by_user_order;
DROP INDEX IF EXISTS events_by_type;
CREATE TABLE IF NOT EXISTS dedup (
    key         TEXT PRIMARY KEY NOT NULL,
    expires_at  INTEGER NOT NULL   -- Unix milliseconds
);
CREATE INDEX IF NOT EXISTS dedup_by_expiry ON dedup (expires_at);
";

/// The page cache of the connection that writes events, in KiB; the other connections keep
/// [`open_conn`]'s 16 MiB. The forwarder's inserts walk four indexes, two of them at random
/// points (the event id, and the user). A new file has 16 KiB pages rather than SQLite's
/// 4 KiB: with both, the forwarder stored about a quarter more events for the same CPU during
/// a WebSocket burst (BENCHMARKS.md, "2026-12-07 22:03").
const WRITE_CACHE_KIB: u32 = 32 * 1024;
/// The nice value of the thread that writes recent events into the table. In a burst the
/// forwarder is behind and would take what CPU it gets, about half the server's on two cores;
/// at this nice it takes what ingest leaves, and the journal (which `GET /events` and dedup
/// read too) holds the rest. WS 8 x 64 bursts were acked 10-20% faster (BENCHMARKS.md,
/// "2026-12-07 22:03"). Databases do the same with their compactions (RocksDB lowers its
/// compaction threads' CPU priority).
const BACKGROUND_NICE: i32 = 19;
/// How long after they were received events are written at [`BACKGROUND_NICE`]. Past that the
/// forwarder is falling behind for longer than a burst (a sustained overload, or another
/// process taking the CPU), and it writes at ingest's priority, as before: how far the table
/// lags behind the journal stays bounded by this plus the one batch already being written.
const BACKGROUND_FOR_MS: i64 = 10_000;
/// How many stored ids the events table takes over from memory under one hold of the claims
/// lock (a few hundred microseconds).
const FORGET_CHUNK: usize = 1_000;
/// How many expired dedup rows one purge removes at most, so a purge never stalls writes.
const PURGE_BATCH: i64 = 5_000;
/// How often confirmations purge expired dedup rows, in milliseconds.
const PURGE_EVERY_MS: i64 = 30_000;

struct ClaimState {
    conn: Connection,
    /// Keys claimed but not yet confirmed or released, with when the hold ends (Unix
    /// milliseconds by the store's clock) and the lease holding them. Held only in memory on
    /// purpose: a crash between claim and commit must leave nothing behind.
    pending: KeyMap<String, (i64, u128)>,
    /// In `DedupMode::Events`: keys whose events are recorded (in the journal in front of
    /// this store) but not yet in the `events` table, until when (Unix milliseconds) they are
    /// remembered. A key leaves when its event reaches the table. By digest, not text: under
    /// a sustained overload the journal holds millions (52 bytes of memory a key, not 117).
    recorded: KeyMap<KeyDigest, i64>,
    /// Keys whose events reached the table while still claimed (the journal was drained
    /// before the claim was confirmed): their confirmation has nothing left to remember.
    indexed_early: std::collections::HashSet<String, KeyHasher>,
    /// In `DedupMode::Events`: the ids the `events` table may hold, so that new ids are not
    /// looked up. An id is added when its event reaches the table, before it leaves `recorded`.
    seen: Option<SeenIds>,
    /// When `pending` and `recorded` are next swept for ended entries.
    sweep_pending: SweepMark,
    sweep_recorded: SweepMark,
}

struct WriteState {
    conn: Connection,
    /// Unix milliseconds.
    last_purge: i64,
}

/// Event store and dedup store over one SQLite file.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

/// Where the embedded dedup store remembers accepted ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupMode {
    /// In its own `dedup` table, with an expiry per key (when events are stored elsewhere).
    Table,
    /// In the `events` table itself, when this store also stores the events: an id is a
    /// duplicate when its event was received within `window`. Saves a write and two index
    /// updates per event, and cannot disagree with what is stored.
    Events { window: Duration },
}

struct Inner {
    mode: DedupMode,
    /// Every reading of the time: holds, what is remembered until when, the window, purges.
    /// One clock, so the in-memory deadlines and the stored times agree.
    clock: Arc<dyn Clock>,
    write: Mutex<WriteState>,
    /// Confirmations go through their own connection with `synchronous=NORMAL`: they need no
    /// fsync of their own. Losing the last confirmations to a power cut only means a retry
    /// of those events is answered `accepted` again, and the store keeps one copy of each
    /// (inserts are idempotent per event id, and only new rows are routed).
    confirm: Mutex<WriteState>,
    claims: Mutex<ClaimState>,
    read: Mutex<Connection>,
    /// Where inserts of events received less than [`BACKGROUND_FOR_MS`] ago run: a thread at
    /// nice [`BACKGROUND_NICE`]. Older ones run on the blocking pool at ingest's priority.
    background: DbThread,
}

impl Inner {
    fn now_ms(&self) -> i64 {
        unix_ms(self.clock.now())
    }

    /// Whether `rows` are written on the background thread: when the oldest was received less
    /// than [`BACKGROUND_FOR_MS`] ago.
    fn writes_in_background(&self, rows: &[Row]) -> bool {
        let oldest = rows.iter().map(|r| r.received_at).min().unwrap_or(i64::MAX);
        self.now_ms().saturating_sub(oldest) < BACKGROUND_FOR_MS
    }

    /// Inserts `rows` in one transaction and gives them back.
    fn write_rows(&self, rows: Vec<Row>) -> Result<Vec<Row>, PortError> {
        let mut state = lock(&self.write);
        let tx = state.conn.transaction().map_err(db_err)?;
        {
            let mut stmt = tx.prepare_cached(INSERT_EVENT).map_err(db_err)?;
            for r in &rows {
                stmt.execute(params![
                    r.event_id,
                    r.user_id,
                    r.session_id,
                    r.event_type,
                    r.occurred_at,
                    r.received_at,
                    r.source,
                    r.metadata
                ])
                .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(rows)
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl EmbeddedStore {
    /// Opens (creating if needed) `cartstream.db` in `data_dir`, keeping dedup state in its
    /// own table, on the system clock.
    ///
    /// # Errors
    /// When the directory cannot be created or the database cannot be opened.
    pub fn open(data_dir: &Path) -> Result<Self, PortError> {
        Self::open_with(data_dir, DedupMode::Table, Arc::new(SystemClock))
    }

    /// Like [`open`](Self::open), choosing where dedup state lives and the clock that says
    /// when holds end and ids stop being remembered.
    ///
    /// # Errors
    /// When the directory cannot be created or the database cannot be opened.
    pub fn open_with(
        data_dir: &Path,
        mode: DedupMode,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, PortError> {
        let path = db_path(data_dir, "cartstream.db")?;
        // A new file gives the pages that retention frees back to the file system; a file made
        // before keeps `auto_vacuum = NONE` (SQLite only changes it with a `VACUUM`) and reuses
        // them instead (docs/backends.md, "Retention"). Likewise a new file has 16 KiB pages,
        // and one made before keeps the 4 KiB it has (see [`WRITE_CACHE_KIB`]).
        // `page_size` first: once `auto_vacuum` has been read, a new file keeps 4 KiB.
        let write = open_conn_with(
            &path,
            "PRAGMA page_size = 16384; PRAGMA auto_vacuum = INCREMENTAL;",
        )?;
        write
            .execute_batch(&format!("PRAGMA cache_size = -{WRITE_CACHE_KIB};"))
            .map_err(db_err)?;
        let rebuild = write
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'events_listing_order'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(db_err)?
            > 0;
        let started = std::time::Instant::now();
        if rebuild {
            tracing::info!(
                "embedded store: building the events table's ascending indexes in place of \
                 the descending ones (once, after an upgrade; about 5 s per million events)"
            );
        }
        write.execute_batch(SCHEMA).map_err(db_err)?;
        if rebuild {
            tracing::info!(
                secs = started.elapsed().as_secs_f64(),
                "embedded store: the events table's indexes are rebuilt"
            );
        }
        let confirm = open_conn(&path)?;
        confirm
            .execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(db_err)?;
        let claims = open_conn(&path)?;
        let read = open_conn(&path)?;
        let now = unix_ms(clock.now());
        let seen = match mode {
            DedupMode::Events { window } => Some(SeenIds::new(now, millis(window))),
            DedupMode::Table => None,
        };
        let filtered = seen.is_some();
        let store = Self {
            inner: Arc::new(Inner {
                mode,
                clock,
                write: Mutex::new(WriteState {
                    conn: write,
                    last_purge: now,
                }),
                confirm: Mutex::new(WriteState {
                    conn: confirm,
                    last_purge: now,
                }),
                claims: Mutex::new(ClaimState {
                    conn: claims,
                    pending: KeyMap::default(),
                    recorded: KeyMap::default(),
                    indexed_early: std::collections::HashSet::default(),
                    seen,
                    sweep_pending: SweepMark::new(100_000),
                    sweep_recorded: SweepMark::new(1_000_000),
                }),
                read: Mutex::new(read),
                background: DbThread::spawn_with("events-write", || {
                    if let Err(e) = nice_this_thread(BACKGROUND_NICE) {
                        tracing::warn!(
                            error = %e,
                            "embedded store: events are written at ingest's priority"
                        );
                    }
                })?,
            }),
        };
        if filtered {
            seen::spawn_scan(&store.inner, path);
        }
        Ok(store)
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, PortError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, PortError> + Send + 'static,
    {
        blocking(&self.inner, f).await
    }
}

#[async_trait::async_trait]
impl EventStore for EmbeddedStore {
    async fn insert(&self, events: &[StoredEvent]) -> Result<(), PortError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut rows: Vec<Row> = events.iter().map(Row::from).collect();
        // In key order, the batch walks the event-id B-tree from one end to the other, each
        // page fetched and dirtied once, rather than jumping to a random page per row: about a
        // fifth less CPU per row once the table is large (the model in BENCHMARKS.md). The
        // order of rows in the table means nothing (listings go by time; routes read the
        // journal). Stable, so that of two rows with one id the first still wins, as before.
        rows.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        let rows = if self.inner.writes_in_background(&rows) {
            let inner = Arc::clone(&self.inner);
            self.inner
                .background
                .run(move || inner.write_rows(rows))
                .await?
        } else {
            self.blocking(move |inner| inner.write_rows(rows)).await?
        };
        // At ingest's priority: claims wait for this lock.
        self.blocking(move |inner| {
            if matches!(inner.mode, DedupMode::Events { .. }) {
                // The table answers for these keys from now on. A batch holds many thousands:
                // the lock is let go between chunks, so claims do not wait for all of them.
                let now = inner.now_ms();
                for chunk in rows.chunks(FORGET_CHUNK) {
                    let mut claims = lock(&inner.claims);
                    let ClaimState {
                        pending,
                        recorded,
                        indexed_early,
                        seen,
                        ..
                    } = &mut *claims;
                    for r in chunk {
                        if let Some(seen) = seen {
                            seen.insert(&r.event_id, now);
                        }
                        if recorded.remove(&KeyDigest::of(&r.event_id)).is_none()
                            && pending.contains_key(&r.event_id)
                        {
                            indexed_early.insert(r.event_id.clone());
                        }
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        let keys: Vec<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
        self.blocking(move |inner| {
            let conn = lock(&inner.read);
            known_ids(&conn, "events", &keys)
        })
        .await
    }

    async fn query(&self, query: &EventQuery) -> Result<EventPage, PortError> {
        let query = query.clone();
        self.blocking(move |inner| {
            let conn = lock(&inner.read);
            query_events(&conn, "events", &query)
        })
        .await
    }

    async fn check(&self) -> Result<(), PortError> {
        self.blocking(|inner| {
            let conn = lock(&inner.read);
            conn.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err)
        })
        .await
    }
}

#[async_trait::async_trait]
impl DedupStore for EmbeddedStore {
    async fn claim(&self, lease: &Lease, keys: &[DedupKey]) -> Result<Vec<Claim>, PortError> {
        let (hold, lease_id) = (lease.hold, lease.id);
        let keys: Vec<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
        self.blocking(move |inner| {
            let mut state = lock(&inner.claims);
            let now = inner.now_ms();
            let ClaimState {
                conn,
                pending,
                recorded,
                seen,
                sweep_pending,
                sweep_recorded,
                ..
            } = &mut *state;
            // Either way the query answers "until when is this id remembered".
            let (sql, extra_ms) = match inner.mode {
                DedupMode::Table => ("SELECT expires_at FROM dedup WHERE key = ?1", 0),
                DedupMode::Events { window } => (
                    "SELECT received_at FROM events WHERE event_id = ?1",
                    millis(window),
                ),
            };
            let mut stmt = conn.prepare_cached(sql).map_err(db_err)?;
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                if pending.get(&key).is_some_and(|(until, _)| *until > now) {
                    out.push(Claim::InFlight);
                    continue;
                }
                if recorded
                    .get(&KeyDigest::of(&key))
                    .is_some_and(|until| *until > now)
                {
                    out.push(Claim::Duplicate);
                    continue;
                }
                // Most ids are new, and the filter knows it without a look in the table.
                let expires: Option<i64> = if seen.as_mut().is_some_and(|s| !s.may_hold(&key, now))
                {
                    None
                } else {
                    stmt.query_row([&key], |r| r.get::<_, i64>(0))
                        .optional()
                        .map_err(db_err)?
                        .map(|t| t.saturating_add(extra_ms))
                };
                if expires.is_some_and(|e| e > now) {
                    out.push(Claim::Duplicate);
                } else {
                    pending.insert(key, (now.saturating_add(millis(hold)), lease_id));
                    out.push(Claim::New);
                }
            }
            sweep_pending.sweep_if_due(pending.len(), || {
                pending.retain(|_, (until, _)| *until > now);
                pending.len()
            });
            sweep_recorded.sweep_if_due(recorded.len(), || {
                recorded.retain(|_, until| *until > now);
                recorded.len()
            });
            Ok(out)
        })
        .await
    }

    async fn confirm(&self, lease: &Lease, keys: &[DedupKey]) -> Result<(), PortError> {
        let (window, lease_id) = (lease.window, lease.id);
        if keys.is_empty() {
            return Ok(());
        }
        if let DedupMode::Events { window: remembered } = self.inner.mode {
            // Recording the events was the confirmation; until they reach the `events` table,
            // the keys are remembered here, for as long as the table's reads count them.
            let keys: Vec<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
            return self
                .blocking(move |inner| {
                    let mut state = lock(&inner.claims);
                    let until = inner.now_ms().saturating_add(millis(remembered));
                    for k in keys {
                        unpend(&mut state.pending, &k, lease_id);
                        if !state.indexed_early.remove(&k) {
                            state.recorded.insert(KeyDigest::of(&k), until);
                        }
                    }
                    Ok(())
                })
                .await;
        }
        let keys: Vec<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
        let confirmed = keys.clone();
        self.blocking(move |inner| {
            let now = inner.now_ms();
            let expires_at = now.saturating_add(millis(window));
            let mut state = lock(&inner.confirm);
            let purge = now.saturating_sub(state.last_purge) >= PURGE_EVERY_MS;
            let tx = state.conn.transaction().map_err(db_err)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO dedup (key, expires_at) VALUES (?1, ?2)",
                    )
                    .map_err(db_err)?;
                for key in &confirmed {
                    stmt.execute(params![key, expires_at]).map_err(db_err)?;
                }
                if purge {
                    tx.execute(
                        "DELETE FROM dedup WHERE rowid IN
                         (SELECT rowid FROM dedup WHERE expires_at <= ?1 LIMIT ?2)",
                        params![now, PURGE_BATCH],
                    )
                    .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)?;
            if purge {
                state.last_purge = now;
            }
            Ok(())
        })
        .await?;
        // Only now that the keys are durable may they stop being in flight.
        self.drop_pending(keys, lease_id).await
    }

    async fn release(&self, lease: &Lease, keys: &[DedupKey]) -> Result<(), PortError> {
        let keys: Vec<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
        self.drop_pending(keys, lease.id).await
    }

    async fn check(&self) -> Result<(), PortError> {
        EventStore::check(self).await
    }
}

/// The `events` table in insertion order (its rowid): every event is recorded once, so every
/// event is routed once.
#[async_trait::async_trait]
impl EventFeed for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn head(&self) -> Result<i64, PortError> {
        self.blocking(|inner| {
            let conn = lock(&inner.read);
            conn.query_row("SELECT COALESCE(MAX(rowid), 0) FROM events", [], |r| {
                r.get(0)
            })
            .map_err(db_err)
        })
        .await
    }

    async fn after(&self, after: i64, max: usize) -> Result<Vec<FeedEntry>, PortError> {
        self.blocking(move |inner| {
            let conn = lock(&inner.read);
            feed_after(&conn, "events", "rowid", after, max)
        })
        .await
    }
}

impl EmbeddedStore {
    /// The highest rowid of the `events` table (its feed's head), read now; a blocking read,
    /// for startup.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn last_rowid(&self) -> Result<i64, PortError> {
        let conn = lock(&self.inner.read);
        conn.query_row("SELECT COALESCE(MAX(rowid), 0) FROM events", [], |r| {
            r.get(0)
        })
        .map_err(db_err)
    }

    /// Remembers ids as recorded (duplicates from now on, for the dedup window) whose events
    /// are not in the `events` table yet: at startup, the ids a journal in front of this
    /// store still holds.
    pub fn remember_recorded(&self, ids: impl IntoIterator<Item = String>) {
        if let DedupMode::Events { window } = self.inner.mode {
            let until = self.inner.now_ms().saturating_add(millis(window));
            let mut claims = lock(&self.inner.claims);
            for id in ids {
                claims.recorded.insert(KeyDigest::of(&id), until);
            }
        }
    }

    /// Ends the holds `lease` still has on `keys`.
    async fn drop_pending(&self, keys: Vec<String>, lease: u128) -> Result<(), PortError> {
        self.blocking(move |inner| {
            let mut state = lock(&inner.claims);
            for k in &keys {
                unpend(&mut state.pending, k, lease);
            }
            Ok(())
        })
        .await
    }
}

/// Events one retention step deletes at most: one short transaction, so the forwarder's
/// inserts, which wait for the same connection, wait for one step at most.
pub(crate) const EXPIRE_BATCH: usize = 2_000;
/// Free pages one retention step gives back to the file system at most.
const VACUUM_PAGES: usize = 2_000;

/// Deletes the oldest events first, by `occurred_at` (what `GET /events` lists by), through
/// the `events_in_order` index. When it deletes the rows with the highest rowids, a later
/// row may take one of those rowids again: only the startup catch-up of the table's feed (rows
/// from before the journal, up to the head read at startup) reads rowids, so at worst such a row
/// is routed twice (once from the journal), never skipped.
const EXPIRE_EVENTS: &str = "DELETE FROM events WHERE rowid IN (
    SELECT rowid FROM events WHERE occurred_at < ?1 AND received_at < ?2 LIMIT ?3)";

#[async_trait::async_trait]
impl Retention for EmbeddedStore {
    async fn expire_step(&self, expiry: Expiry) -> Result<ExpireStep, PortError> {
        let occurred = unix_ms(expiry.occurred_before);
        let received = unix_ms(expiry.received_before);
        self.blocking(move |inner| {
            let state = lock(&inner.write);
            let deleted = state
                .conn
                .execute(EXPIRE_EVENTS, params![occurred, received, EXPIRE_BATCH])
                .map_err(db_err)?;
            let freed = incremental_vacuum(&state.conn, VACUUM_PAGES)?;
            Ok(ExpireStep {
                more: deleted == EXPIRE_BATCH || freed == VACUUM_PAGES,
                events: deleted as u64,
                ..ExpireStep::default()
            })
        })
        .await
    }
}

/// Gives up to `pages` free pages back to the file system (none when the file has
/// `auto_vacuum = NONE`); how many it gave. The pragma frees one page per result row, so
/// every row is read.
fn incremental_vacuum(conn: &Connection, pages: usize) -> Result<usize, PortError> {
    let mut stmt = conn
        .prepare(&format!("PRAGMA incremental_vacuum({pages})"))
        .map_err(db_err)?;
    let mut rows = stmt.query([]).map_err(db_err)?;
    let mut freed = 0;
    while rows.next().map_err(db_err)?.is_some() {
        freed += 1;
    }
    Ok(freed)
}

impl EmbeddedStore {
    /// Whether the file gives freed pages back (`auto_vacuum = INCREMENTAL`, every file made
    /// since retention exists) rather than only reusing them.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn gives_space_back(&self) -> Result<bool, PortError> {
        let conn = lock(&self.inner.read);
        conn.query_row("PRAGMA auto_vacuum", [], |r| r.get::<_, i64>(0))
            .map(|mode| mode == 2)
            .map_err(db_err)
    }
}

/// Ends `lease`'s hold on `key`; a hold another lease took since (after ours ran out) stays.
fn unpend(pending: &mut KeyMap<String, (i64, u128)>, key: &str, lease: u128) {
    if pending.get(key).is_some_and(|(_, holder)| *holder == lease) {
        pending.remove(key);
    }
}

mod seen;
use seen::SeenIds;

#[cfg(test)]
mod tests;
