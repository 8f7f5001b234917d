//! Verifying a journal file's stored batches, for `cartstream check`, the startup check and
//! `cartstream salvage`: each batch's checksum, and that its blob holds exactly the events its
//! row says (the checksum covers the blob, not the row's `count` and `bytes`: a changed count
//! would drop or misread events without a word). One row is in memory at a time, so a journal
//! of any size is verified in constant memory.

use super::{unseal, Encoded};
use rusqlite::Connection;
use std::fmt;

/// A stored batch whose bytes are not what was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBatch {
    /// The batch's id: the seq of its first event (the row's `first_seq`, its rowid).
    pub first_seq: i64,
    /// The events the row says the batch holds.
    pub count: i64,
    /// What is wrong, in a few words.
    pub why: &'static str,
}

impl fmt::Display for BadBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.first_seq;
        match self.count {
            1 => write!(f, "batch {first} (event {first}) {}", self.why),
            n if n > 1 => write!(
                f,
                "batch {first} (events {first}-{}) {}",
                first.saturating_add(n - 1),
                self.why
            ),
            n => write!(f, "batch {first} (a count of {n}) {}", self.why),
        }
    }
}

/// What verifying a journal went through.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub batches: u64,
    /// Events of the batches, as their rows count them.
    pub events: u64,
    /// Batches written before checksums: decoded, with nothing to compare them with.
    pub unsummed: u64,
}

/// Verifies every batch of the journal behind `conn`, in order, calling `bad` for each one
/// whose bytes are not what was written.
///
/// # Errors
/// When the table cannot be read (a damaged page among them: SQLite's checks report those).
pub fn verify_batches(
    conn: &Connection,
    mut bad: impl FnMut(BadBatch),
) -> rusqlite::Result<Verified> {
    let mut stmt = conn.prepare(
        "SELECT first_seq, count, bytes, events FROM journal_batches ORDER BY first_seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut seen = Verified::default();
    let mut buf = Vec::new();
    while let Some(row) = rows.next()? {
        let first_seq: i64 = row.get(0)?;
        let count: i64 = row.get(1)?;
        let bytes: i64 = row.get(2)?;
        seen.batches += 1;
        seen.events += u64::try_from(count).unwrap_or(0);
        let verdict = match row.get_ref(3)?.as_blob() {
            Ok(blob) => verify_blob(blob, count, bytes, &mut buf),
            Err(_) => Err("is not a blob"),
        };
        match verdict {
            Ok(summed) => seen.unsummed += u64::from(!summed),
            Err(why) => bad(BadBatch {
                first_seq,
                count,
                why,
            }),
        }
    }
    Ok(seen)
}

/// Whether `blob` holds what was written: its checksum (if it has one; `Ok(false)` when not)
/// and exactly `count` events of `bytes` encoded bytes.
/// `buf` is where it decompresses, reused from batch to batch.
fn verify_blob(
    blob: &[u8],
    count: i64,
    bytes: i64,
    buf: &mut Vec<u8>,
) -> Result<bool, &'static str> {
    let (plain, summed) = unseal(blob, buf).map_err(super::Damage::why)?;
    let mut rest: &[u8] = plain;
    for _ in 0..count {
        rest = postcard::take_from_bytes::<Encoded<'_>>(rest)
            .map_err(|_| "holds fewer events than its row says, or one that does not decode")?
            .1;
    }
    if !rest.is_empty() {
        return Err("holds more than the events its row says");
    }
    if i64::try_from(plain.len()).ok() != Some(bytes) {
        return Err("holds another size of events than its row says");
    }
    Ok(summed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::outbound::journal::{SqliteJournal, FORMAT_LZ4_SUMMED, FORMAT_PLAIN};
    use crate::domain::fixtures;
    use crate::ports::Journal;

    fn events(prefix: &str, n: usize) -> Vec<crate::domain::StoredEvent> {
        (0..n)
            .map(|i| {
                fixtures::event(&format!("{prefix}-{i:04}"))
                    .at_now()
                    .stored()
            })
            .collect()
    }

    fn bad_of(conn: &Connection) -> (Vec<BadBatch>, Verified) {
        let mut bad = Vec::new();
        let seen = verify_batches(conn, |b| bad.push(b)).unwrap();
        (bad, seen)
    }

    fn set_blob(conn: &Connection, first_seq: i64, blob: &[u8]) {
        conn.execute(
            "UPDATE journal_batches SET events = ?2 WHERE first_seq = ?1",
            rusqlite::params![first_seq, blob],
        )
        .unwrap();
    }

    fn blob(conn: &Connection, first_seq: i64) -> Vec<u8> {
        conn.query_row(
            "SELECT events FROM journal_batches WHERE first_seq = ?1",
            [first_seq],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn every_kind_of_changed_batch_is_named_and_sound_ones_pass() {
        let dir = tempfile::tempdir().unwrap();
        let j = SqliteJournal::open(dir.path(), u64::MAX).unwrap();
        // Batch 1: one event, plain; batch 2: 300 events, compressed; then six of one.
        j.append(&events("a", 1)).await.unwrap();
        j.append(&events("b", 300)).await.unwrap();
        for i in 0..6 {
            j.append(&events(&format!("c{i}"), 1)).await.unwrap();
        }
        drop(j);
        let conn = Connection::open(dir.path().join("journal.db")).unwrap();
        let (bad, seen) = bad_of(&conn);
        assert_eq!(bad, []);
        assert_eq!(
            seen,
            Verified {
                batches: 8,
                events: 307,
                unsummed: 0
            }
        );
        assert_eq!(
            blob(&conn, 2)[0],
            FORMAT_LZ4_SUMMED,
            "batch 2 is compressed"
        );

        // A changed byte inside each of the first two blobs.
        for first in [1, 2] {
            let mut b = blob(&conn, first);
            let mid = b.len() / 2;
            b[mid] ^= 0x01;
            set_blob(&conn, first, &b);
        }
        // Row fields the checksum does not cover.
        conn.execute(
            "UPDATE journal_batches SET count = 2 WHERE first_seq = 302",
            [],
        )
        .unwrap();
        conn.execute(
            "UPDATE journal_batches SET count = 0 WHERE first_seq = 303",
            [],
        )
        .unwrap();
        conn.execute(
            "UPDATE journal_batches SET bytes = 1 WHERE first_seq = 304",
            [],
        )
        .unwrap();
        // An unknown format, and a batch from before checksums, sound.
        let mut b = blob(&conn, 305);
        b[0] = 9;
        set_blob(&conn, 305, &b);
        let b = blob(&conn, 306);
        let mut old = b[..b.len() - 4].to_vec();
        old[0] = FORMAT_PLAIN;
        set_blob(&conn, 306, &old);

        let (bad, seen) = bad_of(&conn);
        let said: Vec<String> = bad.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "batch 1 (event 1) fails its checksum",
                "batch 2 (events 2-301) fails its checksum",
                "batch 302 (events 302-303) holds fewer events than its row says, or one that \
                 does not decode",
                "batch 303 (a count of 0) holds more than the events its row says",
                "batch 304 (event 304) holds another size of events than its row says",
                "batch 305 (event 305) has an unknown format",
            ]
        );
        assert_eq!(seen.batches, 8);
        assert_eq!(seen.unsummed, 1, "batch 306 decodes, with no checksum");
    }
}
