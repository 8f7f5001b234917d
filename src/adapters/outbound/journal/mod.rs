//! The local journal on SQLite (`journal.db` in the data dir): accepted events wait here,
//! fsynced, until the forwarder has stored them in the remote event store.
//!
//! A trusted engine rather than a hand-written log: SQLite's WAL with `synchronous=FULL`
//! gives crash-safe group commit (one fsync per appended batch) and needs no recovery code of
//! ours. Each append is **one row**: the batch's events encoded (postcard) into one blob,
//! keyed by the seq of its first event; the others follow it in order. So appending, reading
//! and removing cost one B-tree operation per batch, not per event: with a row per event,
//! SQLite's per-row work was about half of the server's CPU on the ClickHouse path.
//!
//! Removal is by seq and may end inside a batch; the batch's row then stays, and a mark
//! (`removed_through`, kept in the same transaction) hides its removed entries, across
//! restarts too. Counts and the batches' headers are kept in memory, so the forwarder can
//! poll them on every loop for free.

use crate::adapters::outbound::sqlite::{
    blocking, db_err, db_path, from_ms, lock, open_queue_conn, DbThread, Row, EVENT_COLUMNS,
};
use crate::domain::{DedupKey, EventColumns, StoredEvent, StoredFields};
use crate::ports::{
    EventFeed, EventPage, EventQuery, FeedEntry, Journal, JournalEntry, JournalStats, PageBuilder,
    PortError,
};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

mod verify;
pub use verify::{verify_batches, BadBatch, Verified};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal_batches (
    first_seq    INTEGER PRIMARY KEY,  -- seq of the batch's first event; the others follow
    count        INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,     -- encoded size of the events, what the limit counts
    oldest       INTEGER NOT NULL,     -- earliest received_at in the batch, Unix ms
    events       BLOB NOT NULL         -- a format byte, then each event as postcard `Encoded`
);
CREATE TABLE IF NOT EXISTS journal_marks (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    head             INTEGER NOT NULL, -- highest seq ever appended, kept when all is removed
    removed_through  INTEGER NOT NULL  -- entries with seq <= this are removed
);
";

/// First byte of a blob whose events follow as they are (journals written before compression).
const FORMAT_PLAIN: u8 = 1;
/// First byte of a blob whose events are LZ4-compressed (a block with its size in front):
/// batches of similar events shrink about 3-4x, and the append's WAL write, fsync and later
/// checkpoint shrink with them.
const FORMAT_LZ4: u8 = 2;
/// [`FORMAT_PLAIN`] and [`FORMAT_LZ4`] with a CRC-32 (LE) of the whole blob before it at the
/// end, checked on every read: SQLite's checks find damaged pages, not wrong bytes inside a
/// valid row. What is written now; blobs of the two older formats are still read.
const FORMAT_PLAIN_SUMMED: u8 = 3;
const FORMAT_LZ4_SUMMED: u8 = 4;
/// Smaller batches are stored plain: they fit a page or two either way, and compressing them
/// would cost more than it saves (small groups are the latency-bound, closed-loop case).
const COMPRESS_FROM: usize = 4096;

/// One event as the blob holds it. Field order is the format: postcard writes fields in
/// order, without names. Encoding borrows from the event; decoding borrows from the blob.
#[derive(Serialize, Deserialize)]
struct Encoded<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    occurred_at: i64,
    received_at: i64,
    #[serde(borrow)]
    source: Cow<'a, str>,
    /// The metadata object as compact JSON.
    #[serde(borrow)]
    metadata: Cow<'a, str>,
}

impl<'a> Encoded<'a> {
    fn of(s: &'a StoredEvent) -> Self {
        let c = s.columns();
        Self {
            event_id: Cow::Borrowed(c.event_id),
            user_id: Cow::Borrowed(c.user_id),
            session_id: c.session_id.map(Cow::Borrowed),
            event_type: Cow::Borrowed(c.event_type),
            occurred_at: c.occurred_at_ms,
            received_at: c.received_at_ms,
            source: Cow::Borrowed(c.source),
            metadata: Cow::Borrowed(c.metadata),
        }
    }

    /// The event's columns, to decide on it before building it.
    fn columns(&self) -> EventColumns<'_> {
        EventColumns {
            event_id: &self.event_id,
            user_id: &self.user_id,
            session_id: self.session_id.as_deref(),
            event_type: &self.event_type,
            occurred_at_ms: self.occurred_at,
            received_at_ms: self.received_at,
            source: &self.source,
            metadata: &self.metadata,
        }
    }

    fn into_stored(self) -> Result<StoredEvent, PortError> {
        StoredFields {
            event_id: &self.event_id,
            user_id: self.user_id.into_owned(),
            session_id: self.session_id.map(Cow::into_owned),
            event_type: &self.event_type,
            occurred_at: from_ms(self.occurred_at),
            received_at: from_ms(self.received_at),
            source: &self.source,
            metadata: self.metadata.into_owned(),
        }
        .into_stored()
        .map_err(corrupt)
    }
}

fn corrupt(what: &str) -> PortError {
    PortError::Failed(format!("local journal: bad {what} in an entry"))
}

/// A batch's events, encoded, with each one's encoded size.
struct Blob {
    bytes: Vec<u8>,
    sizes: Vec<usize>,
}

/// Buffers [`encode_with`] reuses from one append to the next: the events' plain encoding, and
/// LZ4's output. Reused, an append neither grows a new plain buffer step by step nor zeroes a
/// new output buffer of the block's maximum size (LZ4 writes into initialised memory); what it
/// keeps is one copy of the compressed block into the blob. Each is dropped after an append
/// that grew it past [`SCRATCH_KEEP`], so one huge group does not pin its size.
#[derive(Default)]
struct Scratch {
    plain: Vec<u8>,
    packed: Vec<u8>,
}

/// The most each [`Scratch`] buffer keeps between appends: a group of a few thousand events.
const SCRATCH_KEEP: usize = 1 << 20;

impl Scratch {
    fn trim(&mut self) {
        for buf in [&mut self.plain, &mut self.packed] {
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
        }
    }
}

fn encode(events: &[StoredEvent]) -> Blob {
    encode_with(events, &mut Scratch::default())
}

fn encode_with(events: &[StoredEvent], scratch: &mut Scratch) -> Blob {
    let mut plain = std::mem::take(&mut scratch.plain);
    plain.clear();
    plain.reserve(1 + events.len() * 160);
    plain.push(FORMAT_PLAIN_SUMMED);
    let mut sizes = Vec::with_capacity(events.len());
    for e in events {
        let before = plain.len();
        // Writing strings and integers into a Vec cannot fail.
        plain = postcard::to_extend(&Encoded::of(e), plain).unwrap_or_else(|_| unreachable!());
        sizes.push(plain.len() - before);
    }
    let bytes = if plain.len() <= COMPRESS_FROM {
        let mut bytes = Vec::with_capacity(plain.len() + 4);
        bytes.extend_from_slice(&plain);
        with_sum(bytes)
    } else {
        let events = &plain[1..];
        let max = lz4_flex::block::get_maximum_output_size(events.len());
        let packed = &mut scratch.packed;
        if packed.len() < max {
            packed.resize(max, 0);
        }
        let n = lz4_flex::block::compress_into(events, &mut packed[..max])
            .unwrap_or_else(|_| unreachable!("the buffer has the block's maximum size"));
        // FORMAT_LZ4, the events' size (u32 LE, as `decompress_size_prepended` reads it), the
        // block, and room for the sum.
        let mut bytes = Vec::with_capacity(1 + 4 + n + 4);
        bytes.push(FORMAT_LZ4_SUMMED);
        bytes.extend_from_slice(&(events.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&packed[..n]);
        with_sum(bytes)
    };
    scratch.plain = plain;
    scratch.trim();
    Blob { bytes, sizes }
}

/// `blob` with the CRC-32 of its bytes appended.
fn with_sum(mut blob: Vec<u8>) -> Vec<u8> {
    let sum = crc32fast::hash(&blob);
    blob.extend_from_slice(&sum.to_le_bytes());
    blob
}

/// Why a stored blob is not what was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    TooShort,
    Checksum,
    Format,
    Decompress,
}

impl Damage {
    /// In a few words, after "batch N ..." (`cartstream check`).
    fn why(self) -> &'static str {
        match self {
            Self::TooShort => "is too short for its checksum",
            Self::Checksum => "fails its checksum",
            Self::Format => "has an unknown format",
            Self::Decompress => "cannot be decompressed",
        }
    }
}

impl From<Damage> for PortError {
    fn from(d: Damage) -> Self {
        match d {
            Damage::TooShort => corrupt("batch checksum"),
            Damage::Checksum => PortError::Failed(
                "local journal: a batch fails its checksum: damaged on disk (README: Damaged \
                 files)"
                    .into(),
            ),
            Damage::Format => corrupt("batch format"),
            Damage::Decompress => PortError::Failed("local journal: undecodable batch".into()),
        }
    }
}

/// What a summed blob holds between its format byte and its checksum, once the checksum
/// matches.
fn summed(blob: &[u8]) -> Result<&[u8], Damage> {
    let body = blob
        .len()
        .checked_sub(4)
        .filter(|&n| n >= 1)
        .ok_or(Damage::TooShort)?;
    let (body, sum) = blob.split_at(body);
    if crc32fast::hash(body).to_le_bytes() != sum {
        return Err(Damage::Checksum);
    }
    Ok(&body[1..])
}

/// The events of an LZ4 block with its size in front, decompressed into `buf`. The buffer is
/// grown as needed and never shrunk, so a scan over many batches reuses one, zeroed only where
/// it grows.
fn decompress<'a>(packed: &[u8], buf: &'a mut Vec<u8>) -> Result<&'a [u8], Damage> {
    let (size, block) =
        lz4_flex::block::uncompressed_size(packed).map_err(|_| Damage::Decompress)?;
    if buf.len() < size {
        buf.resize(size, 0);
    }
    let n = lz4_flex::block::decompress_into(block, &mut buf[..size])
        .map_err(|_| Damage::Decompress)?;
    Ok(&buf[..n])
}

/// The encoded events of a blob, after its format byte (borrowed from it, or decompressed into
/// `buf`), and whether the blob carried a checksum (batches written before checksums do not).
fn unseal<'a>(blob: &'a [u8], buf: &'a mut Vec<u8>) -> Result<(&'a [u8], bool), Damage> {
    match blob.split_first() {
        Some((&FORMAT_PLAIN, rest)) => Ok((rest, false)),
        Some((&FORMAT_LZ4, packed)) => Ok((decompress(packed, buf)?, false)),
        Some((&FORMAT_PLAIN_SUMMED, _)) => Ok((summed(blob)?, true)),
        Some((&FORMAT_LZ4_SUMMED, _)) => Ok((decompress(summed(blob)?, buf)?, true)),
        _ => Err(Damage::Format),
    }
}

/// The encoded events of a blob, after its format byte: borrowed, or decompressed into `buf`.
fn unpack<'a>(blob: &'a [u8], buf: &'a mut Vec<u8>) -> Result<&'a [u8], PortError> {
    Ok(unseal(blob, buf)?.0)
}

/// The events of an unpacked blob in order, each with its encoded size, borrowing from it.
fn decode(mut rest: &[u8], count: usize) -> Result<Vec<(Encoded<'_>, usize)>, PortError> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (e, tail) = postcard::take_from_bytes::<Encoded<'_>>(rest)
            .map_err(|e| PortError::Failed(format!("local journal: undecodable entry: {e}")))?;
        out.push((e, rest.len() - tail.len()));
        rest = tail;
    }
    Ok(out)
}

/// What the journal keeps in memory about a stored batch.
#[derive(Debug, Clone, Copy)]
struct Header {
    first_seq: i64,
    count: i64,
    bytes: u64,
    oldest: i64,
}

impl Header {
    fn last_seq(&self) -> i64 {
        self.first_seq + self.count - 1
    }
}

/// The in-memory state: the batches still stored, oldest first, their totals, and the marks.
/// The totals are kept as batches come and go: stats are read on every append, and a journal
/// filled during an outage can hold millions of small batches.
struct State {
    batches: VecDeque<Header>,
    /// Entries and encoded bytes of every batch in `batches`, removed entries included.
    entries: i64,
    bytes: u64,
    head: i64,
    removed_through: i64,
    /// Encoded bytes of removed entries in the first batch (removed only in part).
    removed_bytes: u64,
}

impl State {
    fn new(batches: VecDeque<Header>, head: i64, removed_through: i64, removed_bytes: u64) -> Self {
        Self {
            entries: batches.iter().map(|b| b.count).sum(),
            bytes: batches.iter().map(|b| b.bytes).sum(),
            batches,
            head,
            removed_through,
            removed_bytes,
        }
    }

    fn push(&mut self, batch: Header) {
        self.entries += batch.count;
        self.bytes += batch.bytes;
        self.head = batch.last_seq();
        self.batches.push_back(batch);
    }

    /// Forgets the first `whole` batches.
    fn drain(&mut self, whole: usize) {
        for b in self.batches.drain(..whole) {
            self.entries -= b.count;
            self.bytes -= b.bytes;
        }
    }

    /// The index of the first batch with entries past `after`: batches are in seq order.
    fn first_after(&self, after: i64) -> usize {
        self.batches.partition_point(|b| b.last_seq() <= after)
    }

    fn stats(&self) -> JournalStats {
        // Only the first batch can be removed in part.
        let removed = self.batches.front().map_or(0, |b| {
            (self.removed_through - b.first_seq + 1).clamp(0, b.count)
        });
        JournalStats {
            entries: (self.entries - removed) as u64,
            bytes: self.bytes.saturating_sub(self.removed_bytes),
            oldest: self.batches.front().map(|b| from_ms(b.oldest)),
        }
    }
}

#[derive(Clone)]
pub struct SqliteJournal {
    inner: Arc<Inner>,
    /// Where reads run (see [`DbThread`]); appends and removals use the blocking pool.
    reader: Arc<DbThread>,
}

struct Inner {
    write: Mutex<Connection>,
    read: Mutex<Connection>,
    state: Mutex<State>,
    max_bytes: u64,
    /// What appends encode with; an append that finds it taken (appends overlap only outside
    /// the ingest pipeline) encodes with buffers of its own.
    scratch: Mutex<Scratch>,
}

impl SqliteJournal {
    /// Opens (creating if needed) `journal.db` in `data_dir`, holding at most `max_bytes` of
    /// encoded events.
    ///
    /// # Errors
    /// When the directory or database cannot be opened.
    pub fn open(data_dir: &Path, max_bytes: u64) -> Result<Self, PortError> {
        let path = db_path(data_dir, "journal.db")?;
        let mut write = open_queue_conn(&path)?;
        write.execute_batch(SCHEMA).map_err(db_err)?;
        migrate_row_per_event(&mut write)?;
        let state = load_state(&write)?;
        let read = open_queue_conn(&path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                write: Mutex::new(write),
                read: Mutex::new(read),
                state: Mutex::new(state),
                max_bytes,
                scratch: Mutex::new(Scratch::default()),
            }),
            reader: Arc::new(DbThread::spawn("journal-read")?),
        })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, PortError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, PortError> + Send + 'static,
    {
        blocking(&self.inner, f).await
    }

    /// The ids of every entry, in order; a blocking read, for startup.
    ///
    /// # Errors
    /// When the journal cannot be read.
    pub fn pending_ids(&self) -> Result<Vec<String>, PortError> {
        let start = {
            let state = lock(&self.inner.state);
            match state.batches.front() {
                Some(b) => (b.first_seq, state.removed_through),
                None => return Ok(Vec::new()),
            }
        };
        let conn = lock(&self.inner.read);
        scan_batches(&conn, start.0, start.1, Vec::new(), |ids, _, e, _| {
            ids.push(e.event_id.into_owned());
            Ok(true)
        })
    }

    /// Folds `f` over the entries with `seq > after`, oldest first, until it returns false; on
    /// the read thread, where the decoded entries are allocated.
    async fn scan<S, F>(&self, after: i64, init: S, f: F) -> Result<S, PortError>
    where
        S: Send + 'static,
        F: FnMut(&mut S, i64, Encoded<'_>, usize) -> Result<bool, PortError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.reader
            .run(move || {
                let (start, after) = {
                    let state = lock(&inner.state);
                    let after = after.max(state.removed_through);
                    // The batch holding `after + 1`, or the first one after it.
                    match state.batches.get(state.first_after(after)) {
                        Some(b) => (b.first_seq, after),
                        None => return Ok(init),
                    }
                };
                let conn = lock(&inner.read);
                scan_batches(&conn, start, after, init, f)
            })
            .await
    }
}

fn scan_batches<S, F>(
    conn: &Connection,
    start: i64,
    after: i64,
    mut acc: S,
    mut f: F,
) -> Result<S, PortError>
where
    F: FnMut(&mut S, i64, Encoded<'_>, usize) -> Result<bool, PortError>,
{
    let mut stmt = conn
        .prepare_cached(
            "SELECT first_seq, count, events FROM journal_batches WHERE first_seq >= ?1
             ORDER BY first_seq",
        )
        .map_err(db_err)?;
    let mut rows = stmt.query([start]).map_err(db_err)?;
    let mut buf = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        let first: i64 = row.get(0).map_err(db_err)?;
        let count: i64 = row.get(1).map_err(db_err)?;
        let blob = row.get_ref(2).map_err(db_err)?.as_blob().map_err(|e| {
            PortError::Failed(format!("local journal: batch {first} is not a blob: {e}"))
        })?;
        let plain = unpack(blob, &mut buf)?;
        for (i, (e, size)) in decode(plain, count as usize)?.into_iter().enumerate() {
            let seq = first + i as i64;
            if seq > after && !f(&mut acc, seq, e, size)? {
                return Ok(acc);
            }
        }
    }
    Ok(acc)
}

fn load_state(conn: &Connection) -> Result<State, PortError> {
    let (head, removed_through) = conn
        .query_row(
            "SELECT head, removed_through FROM journal_marks WHERE id = 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()
        .map_err(db_err)?
        .unwrap_or((0, 0));
    let mut stmt = conn
        .prepare("SELECT first_seq, count, bytes, oldest FROM journal_batches ORDER BY first_seq")
        .map_err(db_err)?;
    let batches = stmt
        .query_map([], |r| {
            Ok(Header {
                first_seq: r.get(0)?,
                count: r.get(1)?,
                bytes: r.get::<_, i64>(2)? as u64,
                oldest: r.get(3)?,
            })
        })
        .map_err(db_err)?
        .collect::<Result<VecDeque<_>, _>>()
        .map_err(db_err)?;
    let head = batches.back().map_or(head, |b| b.last_seq().max(head));
    let removed_bytes = match batches.front() {
        Some(b) if b.first_seq <= removed_through => removed_bytes_of(conn, b, removed_through)?,
        _ => 0,
    };
    Ok(State::new(batches, head, removed_through, removed_bytes))
}

/// Encoded bytes of the entries of `batch` with `seq <= through`.
fn removed_bytes_of(conn: &Connection, batch: &Header, through: i64) -> Result<u64, PortError> {
    let blob: Vec<u8> = conn
        .query_row(
            "SELECT events FROM journal_batches WHERE first_seq = ?1",
            [batch.first_seq],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    let removed = (through - batch.first_seq + 1).clamp(0, batch.count) as usize;
    Ok(
        decode(unpack(&blob, &mut Vec::new())?, batch.count as usize)?
            .iter()
            .take(removed)
            .map(|(_, size)| *size as u64)
            .sum(),
    )
}

/// Journals written before batches were stored whole kept one row per event in `journal`.
/// Their entries move into batches of one, keeping their seqs, so nothing pending is lost and
/// routing's cursors stay valid.
fn migrate_row_per_event(conn: &mut Connection) -> Result<(), PortError> {
    let old: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'journal'",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    if !old {
        return Ok(());
    }
    let tx = conn.transaction().map_err(db_err)?;
    let rows = {
        let mut stmt = tx
            .prepare(&format!(
                "SELECT {EVENT_COLUMNS}, seq FROM journal ORDER BY seq"
            ))
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(8)?, Row::read(r)?)))
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?
    };
    let mut head: i64 = tx
        .query_row(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'journal'), 0)",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    for (seq, row) in rows {
        let event = row.into_stored()?;
        let blob = encode(std::slice::from_ref(&event));
        insert_batch(&tx, seq, &blob, event.received_at.timestamp_millis())?;
        head = head.max(seq);
    }
    tx.execute(
        "INSERT INTO journal_marks (id, head, removed_through) VALUES (1, ?1, 0)
         ON CONFLICT (id) DO UPDATE SET head = MAX(head, excluded.head)",
        [head],
    )
    .map_err(db_err)?;
    tx.execute_batch("DROP TABLE journal;").map_err(db_err)?;
    tx.commit().map_err(db_err)
}

fn insert_batch(
    conn: &Connection,
    first_seq: i64,
    blob: &Blob,
    oldest: i64,
) -> Result<(), PortError> {
    conn.prepare_cached(
        "INSERT INTO journal_batches (first_seq, count, bytes, oldest, events)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .map_err(db_err)?
    .execute(params![
        first_seq,
        blob.sizes.len() as i64,
        blob.sizes.iter().sum::<usize>() as i64,
        oldest,
        blob.bytes
    ])
    .map_err(db_err)?;
    Ok(())
}

#[async_trait::async_trait]
impl Journal for SqliteJournal {
    async fn append(&self, events: &[StoredEvent]) -> Result<i64, PortError> {
        if events.is_empty() {
            return Ok(lock(&self.inner.state).head + 1);
        }
        let blob = match self.inner.scratch.try_lock() {
            Ok(mut scratch) => encode_with(events, &mut scratch),
            Err(_) => encode(events),
        };
        let oldest = events
            .iter()
            .map(|e| e.received_at.timestamp_millis())
            .min()
            .unwrap_or_default();
        self.blocking(move |inner| {
            let bytes = blob.sizes.iter().sum::<usize>() as u64;
            {
                let stats = lock(&inner.state).stats();
                if stats.bytes + bytes > inner.max_bytes {
                    return Err(PortError::Full(format!(
                        "the local journal holds {} bytes and its limit is {}; it frees up as \
                         the event store catches up",
                        stats.bytes, inner.max_bytes
                    )));
                }
            }
            // The write lock orders appends, so `head` cannot move until this one is in.
            let mut conn = lock(&inner.write);
            let first_seq = lock(&inner.state).head + 1;
            let tx = conn.transaction().map_err(db_err)?;
            insert_batch(&tx, first_seq, &blob, oldest)?;
            tx.commit().map_err(db_err)?;
            let mut state = lock(&inner.state);
            let header = Header {
                first_seq,
                count: blob.sizes.len() as i64,
                bytes,
                oldest,
            };
            state.push(header);
            Ok(first_seq)
        })
        .await
    }

    async fn oldest_after(
        &self,
        after: i64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<JournalEntry>, PortError> {
        // As many as will be read, so the entries are not moved as the vector grows.
        let expected = max_entries.min(self.stats().entries as usize);
        let (out, _) = self
            .scan(
                after,
                (Vec::with_capacity(expected), 0usize),
                move |(out, total), seq, e, bytes| {
                    if out.len() >= max_entries || (!out.is_empty() && *total + bytes > max_bytes) {
                        return Ok(false);
                    }
                    *total += bytes;
                    out.push(JournalEntry {
                        seq,
                        event: e.into_stored()?,
                        bytes,
                    });
                    Ok(true)
                },
            )
            .await?;
        Ok(out)
    }

    async fn remove_through(&self, upto: i64) -> Result<(), PortError> {
        self.blocking(move |inner| {
            let mut conn = lock(&inner.write);
            let (head, through, whole, partial, last_whole_first) = {
                let state = lock(&inner.state);
                let through = upto.min(state.head).max(state.removed_through);
                let whole = state.first_after(through);
                let partial = state
                    .batches
                    .get(whole)
                    .filter(|b| b.first_seq <= through)
                    .copied();
                let last_whole_first = whole
                    .checked_sub(1)
                    .map_or(0, |i| state.batches[i].first_seq);
                (state.head, through, whole, partial, last_whole_first)
            };
            let tx = conn.transaction().map_err(db_err)?;
            if whole > 0 {
                tx.execute(
                    "DELETE FROM journal_batches WHERE first_seq <= ?1",
                    [last_whole_first],
                )
                .map_err(db_err)?;
            }
            tx.execute(
                "INSERT INTO journal_marks (id, head, removed_through) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET head = excluded.head,
                 removed_through = excluded.removed_through",
                [head, through],
            )
            .map_err(db_err)?;
            let removed_bytes = match &partial {
                Some(b) => removed_bytes_of(&tx, b, through)?,
                None => 0,
            };
            tx.commit().map_err(db_err)?;
            let mut state = lock(&inner.state);
            state.drain(whole);
            state.removed_through = through;
            state.removed_bytes = removed_bytes;
            Ok(())
        })
        .await
    }

    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        let wanted: HashSet<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
        let found = self
            .scan(0, HashSet::new(), move |found, _, e, _| {
                if wanted.contains(e.event_id.as_ref()) {
                    found.insert(e.event_id.into_owned());
                }
                Ok(true)
            })
            .await?;
        Ok(keys.iter().map(|k| found.contains(k.as_str())).collect())
    }

    async fn query(&self, query: &EventQuery) -> Result<EventPage, PortError> {
        let q = query.clone();
        // Entries are in append order, not listing order: the builder keeps only what can
        // still be on the page.
        let page = self
            .scan(0, PageBuilder::new(query), move |page, _, e, _| {
                if q.matches_columns(&e.columns()) {
                    page.offer(e.into_stored()?);
                }
                Ok(true)
            })
            .await?;
        Ok(page.finish())
    }

    fn stats(&self) -> JournalStats {
        lock(&self.inner.state).stats()
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
        Ok(lock(&self.inner.state).head)
    }

    async fn after(&self, after: i64, max: usize) -> Result<Vec<FeedEntry>, PortError> {
        self.scan(after, Vec::new(), move |out, seq, e, _| {
            if out.len() >= max {
                return Ok(false);
            }
            out.push(FeedEntry {
                seq,
                event: e.into_stored()?,
            });
            Ok(true)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
