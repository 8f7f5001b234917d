//! Integrity of the local SQLite files (the embedded store, the journal, the outbox): SQLite's
//! own checks, and a salvage that copies what can still be read out of a damaged file.
//!
//! The bundled SQLite has no recover extension, so salvage reads each table in rowid order
//! and, where a read fails, probes past the failing rowids (doubling, then bisecting back) to
//! the first position that reads again: rows on a damaged page are lost, every other row is
//! kept with its rowid.

use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use std::path::Path;
use std::time::Duration;

/// What SQLite's check said about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// The first lines of what the check (or opening the file) reported.
    Damaged(String),
}

/// How thorough a check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// `PRAGMA quick_check`: every page and row, without comparing indexes with their tables.
    Quick,
    /// `PRAGMA integrity_check`: also that every index matches its table (slower).
    Full,
}

/// Errors that mean the file's content is damaged (rather than, say, unreadable for now).
pub(crate) fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// Opens an existing file without creating it, for a check or a salvage.
pub(crate) fn open_existing(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // Checks each cell's size as it is read: damage shows as an error, not as garbage.
    conn.execute_batch("PRAGMA cell_size_check=ON;")?;
    Ok(conn)
}

/// Runs SQLite's check over the file at `path`, which must exist.
///
/// # Errors
/// When the file cannot be read for a reason other than damage (permissions, I/O, a lock held
/// too long): the message says which.
pub fn check_file(path: &Path, depth: Depth) -> Result<Verdict, String> {
    let pragma = match depth {
        Depth::Quick => "PRAGMA quick_check(20)",
        Depth::Full => "PRAGMA integrity_check(20)",
    };
    let run = || -> rusqlite::Result<Vec<String>> {
        let conn = open_existing(path)?;
        let mut stmt = conn.prepare(pragma)?;
        let lines = stmt.query_map([], |r| r.get::<_, String>(0))?;
        lines.collect()
    };
    match run() {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => Ok(Verdict::Ok),
        Ok(lines) => Ok(Verdict::Damaged(lines.join("; "))),
        Err(e) if is_damage(&e) => Ok(Verdict::Damaged(e.to_string())),
        Err(e) => Err(format!("cannot check {}: {e}", path.display())),
    }
}

/// What salvage copied out of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSalvage {
    pub table: String,
    /// Rows copied into the fresh file.
    pub saved: u64,
    /// Rowids inside the ranges that could not be read: an upper bound of the rows lost
    /// (exact where rowids are dense; for the journal, whose rowid is the first event's seq,
    /// it counts events).
    pub unread_rowids: u64,
    /// The table could not be read from some rowid to its end (or at all).
    pub tail_unread: bool,
    /// Rows read but left out because their checksum failed (the outbox's rows, the
    /// journal's batches).
    pub failed_checksum: u64,
    /// Events in the journal batches left out for their checksum (0 for other tables).
    pub failed_events: u64,
}

/// Rows read per query while copying.
const CHUNK: i64 = 1_000;

/// Copies every readable row of every table the `fresh` connection's schema has from the
/// (damaged) file at `damaged` into `fresh`, each with its rowid, in one transaction.
///
/// # Errors
/// When `fresh` cannot be written.
pub fn copy_readable(damaged: &Path, fresh: &mut Connection) -> Result<Vec<TableSalvage>, String> {
    let fail = |e: rusqlite::Error| format!("cannot write the fresh file: {e}");
    let tables = fresh_tables(fresh).map_err(fail)?;
    let source = open_existing(damaged);
    let tx = fresh.transaction().map_err(fail)?;
    let mut out = Vec::new();
    for (table, columns, rowid_alias) in tables {
        let mut report = TableSalvage {
            table: table.clone(),
            saved: 0,
            unread_rowids: 0,
            tail_unread: false,
            failed_checksum: 0,
            failed_events: 0,
        };
        match &source {
            Ok(src) => {
                // A file written by an earlier version may lack columns added since (the
                // outbox's `checksum`): those stay NULL rather than fail every read.
                let columns = match source_columns(src, &table) {
                    Some(have) => columns.into_iter().filter(|c| have.contains(c)).collect(),
                    None => columns,
                };
                let copy = Copy {
                    src,
                    dst: &tx,
                    table: &table,
                    columns: &columns,
                    rowid_alias,
                };
                copy.run(&mut report).map_err(fail)?;
            }
            Err(_) => report.tail_unread = true,
        }
        out.push(report);
    }
    tx.commit().map_err(fail)?;
    Ok(out)
}

/// The columns of `table` in the (damaged) source, when its schema can be read and has it.
fn source_columns(src: &Connection, table: &str) -> Option<Vec<String>> {
    let cols: Vec<String> = src
        .prepare(&format!("PRAGMA table_info(\"{table}\")"))
        .ok()?
        .query_map([], |r| r.get(1))
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    (!cols.is_empty()).then_some(cols)
}

/// The tables of `conn`'s schema, each with its columns and whether one of them is the rowid.
fn fresh_tables(conn: &Connection) -> rusqlite::Result<Vec<(String, Vec<String>, bool)>> {
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for name in names {
        let cols: Vec<(String, String, i64)> = conn
            .prepare(&format!("PRAGMA table_info(\"{name}\")"))?
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(5)?)))?
            .collect::<Result<_, _>>()?;
        let pk: Vec<_> = cols.iter().filter(|c| c.2 > 0).collect();
        let alias = pk.len() == 1 && pk[0].1.eq_ignore_ascii_case("INTEGER");
        out.push((name, cols.into_iter().map(|c| c.0).collect(), alias));
    }
    Ok(out)
}

/// One table's copy.
struct Copy<'a> {
    src: &'a Connection,
    dst: &'a Connection,
    table: &'a str,
    columns: &'a [String],
    /// One of `columns` is the rowid, so it is not inserted twice.
    rowid_alias: bool,
}

type Rows = Vec<(i64, Vec<Value>)>;

impl Copy<'_> {
    fn run(&self, report: &mut TableSalvage) -> rusqlite::Result<()> {
        let mut after = i64::MIN;
        loop {
            let (rows, failed) = self.read(after, CHUNK);
            if let Some((last, _)) = rows.last() {
                after = *last;
            }
            let n = rows.len() as i64;
            report.saved += self.write(rows)?;
            if !failed {
                if n < CHUNK {
                    return Ok(());
                }
                continue;
            }
            match self.skip(after) {
                Some(next) => {
                    // Our tables' rowids start at 1: a damaged start counts from there.
                    let from = if after == i64::MIN { 0 } else { after };
                    report.unread_rowids += u64::try_from(next - from).unwrap_or(0);
                    after = next;
                }
                None => {
                    report.tail_unread = true;
                    return Ok(());
                }
            }
        }
    }

    /// Up to `max` rows past rowid `after`, in order, and whether reading stopped on an error.
    fn read(&self, after: i64, max: i64) -> (Rows, bool) {
        let sql = format!(
            "SELECT rowid, {} FROM \"{}\" WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            self.columns
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", "),
            self.table
        );
        let mut out = Vec::new();
        let Ok(mut stmt) = self.src.prepare_cached(&sql) else {
            return (out, true);
        };
        let Ok(mut rows) = stmt.query(rusqlite::params![after, max]) else {
            return (out, true);
        };
        loop {
            match rows.next() {
                Ok(Some(row)) => {
                    let read = (0..=self.columns.len())
                        .map(|i| row.get::<_, Value>(i))
                        .collect::<rusqlite::Result<Vec<_>>>();
                    let Ok(mut values) = read else {
                        return (out, true);
                    };
                    let Value::Integer(rowid) = values.remove(0) else {
                        return (out, true);
                    };
                    out.push((rowid, values));
                }
                Ok(None) => return (out, false),
                Err(_) => return (out, true),
            }
        }
    }

    /// The smallest rowid past `after` from which the table reads again, or `None` when it
    /// never does: probes `after + 1, 2, 4, ...`, then bisects back to the first that reads.
    fn skip(&self, after: i64) -> Option<i64> {
        let reads = |at: i64| !self.read(at, 1).1;
        let mut failed = 0_i64;
        let mut step = 1_i64;
        loop {
            let at = after.checked_add(step)?;
            if reads(at) {
                break;
            }
            failed = step;
            step = step.checked_mul(2)?;
        }
        let (mut lo, mut hi) = (failed, step);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if reads(after + mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(after + hi)
    }

    fn write(&self, rows: Rows) -> rusqlite::Result<u64> {
        let (names, skip) = if self.rowid_alias {
            (self.columns.to_vec(), 1)
        } else {
            let mut names = vec!["rowid".to_owned()];
            names.extend(self.columns.iter().cloned());
            (names, 0)
        };
        let sql = format!(
            "INSERT OR IGNORE INTO \"{}\" ({}) VALUES ({})",
            self.table,
            names
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", "),
            vec!["?"; names.len()].join(", ")
        );
        let mut stmt = self.dst.prepare_cached(&sql)?;
        let mut saved = 0;
        for (rowid, values) in rows {
            let args = std::iter::once(Value::Integer(rowid))
                .chain(values)
                .skip(skip);
            saved += stmt.execute(rusqlite::params_from_iter(args))? as u64;
        }
        Ok(saved)
    }
}

#[cfg(test)]
mod tests;
