use super::*;
use std::io::{Seek, SeekFrom, Write};

const SCHEMA: &str = "
CREATE TABLE batches (first_seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE keyed (key TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL);
CREATE INDEX keyed_by_n ON keyed (n);
";

const ROWS: i64 = 4_000;

/// A WAL-mode file like ours with `ROWS` rows in each table, checkpointed and closed.
fn filled(path: &Path) {
    let mut conn = Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    let tx = conn.transaction().unwrap();
    for i in 1..=ROWS {
        tx.execute(
            "INSERT INTO batches VALUES (?1, ?2)",
            rusqlite::params![i * 10, vec![i as u8; 100]],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO keyed VALUES (?1, ?2)",
            rusqlite::params![format!("key-{i:08}"), i],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// Overwrites the page in the middle of the file with bytes that are no page.
pub(crate) fn damage_middle_page(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    let page = (len / 2) / 4096 * 4096;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(page)).unwrap();
    f.write_all(&bytes).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn a_sound_file_checks_ok_at_both_depths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    filled(&path);
    assert_eq!(check_file(&path, Depth::Quick), Ok(Verdict::Ok));
    assert_eq!(check_file(&path, Depth::Full), Ok(Verdict::Ok));
}

#[test]
fn a_damaged_page_is_reported_and_salvage_keeps_every_other_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    filled(&path);
    damage_middle_page(&path);
    assert!(
        matches!(check_file(&path, Depth::Quick), Ok(Verdict::Damaged(_))),
        "{:?}",
        check_file(&path, Depth::Quick)
    );

    let mut fresh = Connection::open(dir.path().join("fresh.db")).unwrap();
    fresh.execute_batch(SCHEMA).unwrap();
    let report = copy_readable(&path, &mut fresh).unwrap();
    let total: u64 = report.iter().map(|t| t.saved).sum();
    assert!(total > 0 && total < 2 * ROWS as u64, "{report:?}");
    for t in &report {
        assert!(!t.tail_unread, "{report:?}");
        if t.table == "keyed" {
            // Dense rowids: what was not saved lies in the ranges counted as unread.
            assert!(t.saved + t.unread_rowids >= ROWS as u64, "{report:?}");
        }
        let n: u64 = fresh
            .query_row(&format!("SELECT count(*) FROM {}", t.table), [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, t.saved);
    }
    // Saved rows keep their rowids, and the fresh file is sound.
    let first: i64 = fresh
        .query_row("SELECT min(first_seq) FROM batches", [], |r| r.get(0))
        .unwrap();
    assert_eq!(first, 10);
    drop(fresh);
    assert_eq!(
        check_file(&dir.path().join("fresh.db"), Depth::Full),
        Ok(Verdict::Ok)
    );
}

#[test]
fn a_file_that_is_no_database_is_damaged_and_salvages_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    std::fs::write(&path, vec![7_u8; 8192]).unwrap();
    assert!(matches!(
        check_file(&path, Depth::Quick),
        Ok(Verdict::Damaged(_))
    ));
    let mut fresh = Connection::open(dir.path().join("fresh.db")).unwrap();
    fresh.execute_batch(SCHEMA).unwrap();
    let report = copy_readable(&path, &mut fresh).unwrap();
    assert!(
        report.iter().all(|t| t.saved == 0 && t.tail_unread),
        "{report:?}"
    );
}

#[test]
fn columns_the_damaged_file_lacks_are_left_null_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    filled(&path);
    damage_middle_page(&path);
    // The fresh schema has a column more, as a newer version's would.
    let mut fresh = Connection::open(dir.path().join("fresh.db")).unwrap();
    fresh
        .execute_batch(&SCHEMA.replace("n INTEGER NOT NULL)", "n INTEGER NOT NULL, extra INTEGER)"))
        .unwrap();
    let report = copy_readable(&path, &mut fresh).unwrap();
    let keyed = report.iter().find(|t| t.table == "keyed").unwrap();
    assert!(keyed.saved > 0 && !keyed.tail_unread, "{report:?}");
    let (n, extras): (u64, u64) = fresh
        .query_row("SELECT count(*), count(extra) FROM keyed", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((n, extras), (keyed.saved, 0));
}
