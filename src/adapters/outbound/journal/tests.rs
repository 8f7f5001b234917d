use super::*;
use crate::domain::fixtures;

/// What every journal does is the journal contract's (`tests/api/contract`); these tests are
/// of what is this journal's alone: reopening, migration, the blob format, the WAL.
fn event(id: &str, ts: &str) -> StoredEvent {
    fixtures::event(id)
        .at(ts)
        .metadata(serde_json::json!({"note": "ünïcode 🛒"}))
        .stored()
}

/// A blob's encoded events, after its format byte.
fn unpacked(blob: &[u8]) -> Result<Vec<u8>, PortError> {
    unpack(blob, &mut Vec::new()).map(<[u8]>::to_vec)
}

fn q() -> EventQuery {
    EventQuery::first(100)
}

#[tokio::test]
async fn a_reopened_journal_still_holds_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = SqliteJournal::open(dir.path(), 1 << 20).unwrap();
        j.append(&[
            event("a", "2025-08-10T03:00:00Z"),
            event("b", "2025-08-10T03:00:01Z"),
        ])
        .await
        .unwrap();
    }
    let j = SqliteJournal::open(dir.path(), 1 << 20).unwrap();
    let stats = j.stats();
    assert_eq!(stats.entries, 2);
    assert!(stats.bytes > 0);
    assert_eq!(j.oldest_after(0, 10, usize::MAX).await.unwrap().len(), 2);
}

#[tokio::test]
async fn removal_inside_a_batch_hides_its_entries_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        event("a", "2025-08-10T03:00:00Z"),
        event("b", "2025-08-10T03:00:01Z"),
        event("c", "2025-08-10T03:00:02Z"),
    );
    let full;
    {
        let j = SqliteJournal::open(dir.path(), 1 << 20).unwrap();
        j.append(&[a.clone(), b.clone(), c.clone()]).await.unwrap();
        full = j.stats().bytes;
        let first = j.oldest_after(0, 1, usize::MAX).await.unwrap();
        assert_eq!(first[0].event, a);
        j.remove_through(first[0].seq).await.unwrap();
        let stats = j.stats();
        assert_eq!(stats.entries, 2);
        assert_eq!(stats.bytes, full - first[0].bytes as u64);
        assert_eq!(j.known(&[key("a"), key("b")]).await.unwrap(), [false, true]);
    }
    let j = SqliteJournal::open(dir.path(), 1 << 20).unwrap();
    let stats = j.stats();
    assert_eq!(stats.entries, 2, "the removed entry stays removed");
    assert!(stats.bytes < full);
    let rest = j.oldest_after(0, 10, usize::MAX).await.unwrap();
    assert_eq!(rest.iter().map(|e| &e.event).collect::<Vec<_>>(), [&b, &c]);
    assert_eq!(j.query(&q()).await.unwrap().events, [c.clone(), b.clone()]);
    let feed = EventFeed::after(&j, 0, 10).await.unwrap();
    assert_eq!(feed.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    j.remove_through(3).await.unwrap();
    assert_eq!(j.stats(), JournalStats::default());
}

#[tokio::test]
async fn seqs_keep_rising_after_everything_was_removed_and_the_journal_reopened() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = SqliteJournal::open(dir.path(), 1 << 20).unwrap();
        j.append(&[
            event("a", "2025-08-10T03:00:00Z"),
            event("b", "2025-08-10T03:00:01Z"),
        ])
        .await
        .unwrap();
        j.remove_through(2).await.unwrap();
        assert_eq!(j.stats().entries, 0);
    }
    let j = SqliteJournal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        j.head().await.unwrap(),
        2,
        "routing cursors must stay valid"
    );
    j.append(&[event("c", "2025-08-10T03:00:02Z")])
        .await
        .unwrap();
    let got = j.oldest_after(0, 10, usize::MAX).await.unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
    assert_eq!(j.head().await.unwrap(), 3);
}

#[tokio::test]
async fn a_journal_of_one_row_per_event_is_migrated_with_its_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        event("a", "2025-08-10T03:00:00Z"),
        event("b", "2025-08-10T03:00:01Z"),
    );
    {
        // The layout journals had before batches were stored whole, with entries 1-3
        // appended and entry 1 forwarded and removed.
        let conn = Connection::open(dir.path().join("journal.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE journal (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,
                user_id TEXT NOT NULL, session_id TEXT, event_type TEXT NOT NULL,
                occurred_at INTEGER NOT NULL, received_at INTEGER NOT NULL, source TEXT NOT NULL,
                metadata TEXT NOT NULL, bytes INTEGER NOT NULL);",
        )
        .unwrap();
        for (seq, e) in [(1, &a), (2, &a), (3, &b)] {
            let r = Row::from(e);
            conn.execute(
                "INSERT INTO journal VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 10)",
                params![
                    seq,
                    r.event_id,
                    r.user_id,
                    r.session_id,
                    r.event_type,
                    r.occurred_at,
                    r.received_at,
                    r.source,
                    r.metadata
                ],
            )
            .unwrap();
        }
        conn.execute("DELETE FROM journal WHERE seq = 1", [])
            .unwrap();
    }
    let j = SqliteJournal::open(dir.path(), 1 << 20).unwrap();
    let got = j.oldest_after(0, 10, usize::MAX).await.unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(got.iter().map(|e| &e.event).collect::<Vec<_>>(), [&a, &b]);
    assert_eq!(j.stats().entries, 2);
    j.append(&[event("c", "2025-08-10T03:00:02Z")])
        .await
        .unwrap();
    assert_eq!(j.head().await.unwrap(), 4);
    drop(j);
    // Opening again finds nothing left to migrate and the same entries.
    let j = SqliteJournal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(j.stats().entries, 3);
}

#[test]
fn a_blob_of_another_format_is_refused_not_misread() {
    let mut blob = encode(&[event("a", "2025-08-10T03:00:00Z")]).bytes;
    assert!(decode(&unpacked(&blob).unwrap(), 1).is_ok());
    blob[0] = FORMAT_LZ4_SUMMED + 1;
    assert!(unpacked(&blob).is_err());
    let many: Vec<StoredEvent> = (0..100)
        .map(|i| event(&format!("e-{i}"), "2025-08-10T03:00:00Z"))
        .collect();
    let mut damaged = encode(&many).bytes;
    assert_eq!(damaged[0], FORMAT_LZ4_SUMMED);
    damaged.truncate(damaged.len() / 2);
    assert!(
        unpacked(&damaged)
            .and_then(|p| decode(&p, 100).map(drop))
            .is_err(),
        "a truncated batch is an error"
    );
    assert!(
        decode(&unpacked(&[FORMAT_PLAIN]).unwrap(), 1).is_err(),
        "a truncated batch is an error"
    );
}

#[test]
fn batches_are_compressed_and_plain_ones_still_read() {
    let events: Vec<StoredEvent> = (0..200)
        .map(|i| event(&format!("e-{i}"), "2025-08-10T03:00:00Z"))
        .collect();
    assert_eq!(
        encode(&events[..1]).bytes[0],
        FORMAT_PLAIN_SUMMED,
        "small batches stay plain"
    );
    let blob = encode(&events);
    let plain: usize = blob.sizes.iter().sum();
    assert_eq!(blob.bytes[0], FORMAT_LZ4_SUMMED);
    assert!(
        blob.bytes.len() * 2 < plain,
        "{} bytes stored for {plain} encoded",
        blob.bytes.len()
    );
    // A journal written before compression: the same events after FORMAT_PLAIN.
    let mut old = vec![FORMAT_PLAIN];
    old.extend_from_slice(&unpacked(&blob.bytes).unwrap());
    let ids = |bytes: &[u8]| -> Vec<String> {
        decode(&unpacked(bytes).unwrap(), events.len())
            .unwrap()
            .into_iter()
            .map(|(e, _)| e.event_id.into_owned())
            .collect()
    };
    assert_eq!(ids(&blob.bytes), ids(&old));
    assert_eq!(ids(&old)[199], "e-199");
}

#[test]
fn reused_buffers_encode_and_decode_as_fresh_ones() {
    let many: Vec<StoredEvent> = (0..300)
        .map(|i| event(&format!("e-{i}"), "2025-08-10T03:00:00Z"))
        .collect();
    let other: Vec<StoredEvent> = (0..200)
        .map(|i| event(&format!("other-{i}"), "2025-08-10T04:00:00Z"))
        .collect();
    let mut scratch = Scratch::default();
    let mut buf = Vec::new();
    // Larger, smaller, plain, then compressed again: what a buffer held before must not leak
    // into the next blob or the next decode.
    for events in [&many[..], &other[..], &many[..1], &other[..]] {
        let reused = encode_with(events, &mut scratch);
        let fresh = encode(events);
        assert_eq!(reused.bytes, fresh.bytes);
        assert_eq!(reused.sizes, fresh.sizes);
        let ids: Vec<String> = decode(unpack(&reused.bytes, &mut buf).unwrap(), events.len())
            .unwrap()
            .into_iter()
            .map(|(e, _)| e.event_id.into_owned())
            .collect();
        let expected: Vec<&str> = events.iter().map(|e| e.columns().event_id).collect();
        assert_eq!(ids, expected);
    }
}

#[test]
fn a_changed_byte_fails_the_checksum_and_unsummed_blobs_still_read() {
    let events: Vec<StoredEvent> = (0..200)
        .map(|i| event(&format!("e-{i}"), "2025-08-10T03:00:00Z"))
        .collect();
    for blob in [encode(&events[..1]).bytes, encode(&events).bytes] {
        let n = if blob[0] == FORMAT_PLAIN_SUMMED {
            1
        } else {
            200
        };
        assert!(decode(&unpacked(&blob).unwrap(), n).is_ok());
        // A bit flipped inside the events, where SQLite's checks cannot see it.
        let mut flipped = blob.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x10;
        let err = unpacked(&flipped).map(drop).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        // The same batch as journals before checksums wrote it: read, unchecked.
        let mut old = blob[..blob.len() - 4].to_vec();
        old[0] = if n == 1 { FORMAT_PLAIN } else { FORMAT_LZ4 };
        let ids = |bytes: &[u8]| -> Vec<String> {
            decode(&unpacked(bytes).unwrap(), n)
                .unwrap()
                .into_iter()
                .map(|(e, _)| e.event_id.into_owned())
                .collect()
        };
        assert_eq!(ids(&old), ids(&blob));
    }
}

fn key(id: &str) -> DedupKey {
    DedupKey::of(&event(id, "2025-08-10T03:00:00Z").event).unwrap()
}

/// A steady stream of small appends, as closed-loop clients make, must not grow the WAL
/// without bound: each commit's checkpoint lets the next one reuse the file. (A checkpoint
/// thread beside the writer never caught up with it, and the WAL grew by every commit.)
#[tokio::test]
async fn the_wal_stays_bounded_under_a_steady_stream_of_small_appends() {
    let dir = tempfile::tempdir().unwrap();
    let j = SqliteJournal::open(dir.path(), 1 << 30).unwrap();
    for i in 0..3000 {
        j.append(&[event(&format!("e{i}"), "2025-08-10T03:00:00Z")])
            .await
            .unwrap();
        if i % 500 == 499 {
            let upto = j.head().await.unwrap();
            j.remove_through(upto).await.unwrap();
        }
    }
    let wal = std::fs::metadata(dir.path().join("journal.db-wal"))
        .unwrap()
        .len();
    // SQLite checkpoints at 1,000 pages (4 MiB); 3,000 commits of at least two pages each
    // would be over 24 MiB if the WAL were never reused.
    assert!(wal < 8 << 20, "WAL is {wal} bytes");
}
