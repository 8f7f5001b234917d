//! Integrity of the data dir's SQLite files: checked at startup (bounded in time, the rest in
//! the background), on demand (`cartstream check`), and salvaged (`cartstream salvage`).
//!
//! SQLite with `synchronous=FULL` survives crashes and power cuts; what it cannot survive is a
//! disk that returns other bytes than were written (a failing device, a bad copy, a file
//! edited by hand). Such damage is found here, before the server reads from a file, rather
//! than as an error on some later read.

use crate::adapters::outbound::embedded::EmbeddedStore;
use crate::adapters::outbound::integrity::{
    check_file, copy_readable, is_damage, open_existing, Depth, TableSalvage, Verdict,
};
use crate::adapters::outbound::journal::{verify_batches, SqliteJournal};
use crate::adapters::outbound::outbox::{checksum_failures, verify_checksums, SqliteOutbox};
use crate::app::startup::lock::DataDirLock;
use crate::app::startup::StartupError;
use crate::ports::SystemClock;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The SQLite files a data dir may hold: the embedded store, the journal, the outbox, the
/// quarantine.
pub const FILES: [&str; 4] = ["cartstream.db", "journal.db", "outbox.db", "quarantine.db"];

/// The files of [`FILES`] that exist in `dir`.
pub fn existing_files(dir: &Path) -> Vec<PathBuf> {
    FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect()
}

/// Damage found by the check after the server started: while set, `GET /ready` answers 503.
#[derive(Debug, Default)]
pub struct Damage(Mutex<Option<String>>);

impl Damage {
    /// What was found, if anything.
    pub fn found(&self) -> Option<String> {
        crate::adapters::outbound::sqlite::lock(&self.0).clone()
    }

    fn set(&self, what: String) {
        *crate::adapters::outbound::sqlite::lock(&self.0) = Some(what);
    }
}

/// What the check said about one file.
pub struct FileCheck {
    pub file: PathBuf,
    /// `Err`: the file could not be read for a reason other than damage.
    pub verdict: Result<Verdict, String>,
    /// For a sound journal or outbox: what matched its checksum (how many batches, rows).
    pub verified: Option<String>,
}

/// Damaged batches or rows named in a verdict; the others are counted.
const NAMED: usize = 5;

/// What failed its checksum: the first few named, all counted, in constant memory.
#[derive(Default)]
struct Failures {
    count: u64,
    named: Vec<String>,
}

impl Failures {
    fn add(&mut self, what: impl fmt::Display) {
        self.count += 1;
        if self.named.len() < NAMED {
            self.named.push(what.to_string());
        }
    }

    /// `Damaged` naming them after `what` ("1 row(s) fail their checksum"), when any failed.
    fn verdict(self, what: &str) -> Option<Verdict> {
        (self.count > 0).then(|| {
            let more = if self.count > self.named.len() as u64 {
                ", ..."
            } else {
                ""
            };
            Verdict::Damaged(format!(
                "{} {what}: {}{more}",
                self.count,
                self.named.join(", ")
            ))
        })
    }
}

/// The journal's batches against their checksums: the verdict, and what was verified.
fn journal_batches(conn: &rusqlite::Connection) -> rusqlite::Result<(Verdict, String)> {
    let mut failures = Failures::default();
    let seen = verify_batches(conn, |b| failures.add(b))?;
    let mut verified = format!(
        "{} batch(es) of {} event(s) verified",
        seen.batches, seen.events
    );
    if seen.unsummed > 0 {
        verified += &format!(
            ", {} of them written before checksums (decoded only)",
            seen.unsummed
        );
    }
    let verdict = failures.verdict("batch(es) damaged");
    Ok((verdict.unwrap_or(Verdict::Ok), verified))
}

/// The outbox's rows against their checksums: the verdict, and what was verified.
fn outbox_rows(conn: &rusqlite::Connection) -> rusqlite::Result<(Verdict, String)> {
    let mut failures = Failures::default();
    let checked = verify_checksums(conn, |table, id| failures.add(format!("{table} {id}")))?;
    let verdict = failures.verdict("row(s) fail their checksum");
    Ok((
        verdict.unwrap_or(Verdict::Ok),
        format!("{checked} row(s) verified against their checksums"),
    ))
}

/// SQLite's check of `file`, and for a sound journal or outbox, the checksums of what it
/// stores (which see wrong bytes inside a valid page, where SQLite's checks cannot); with, for
/// those, what was verified.
fn inspect(file: &Path, depth: Depth) -> Result<(Verdict, Option<String>), String> {
    let verdict = check_file(file, depth)?;
    let rows = match file.file_name().and_then(|n| n.to_str()) {
        Some("journal.db") => journal_batches,
        Some("outbox.db") => outbox_rows,
        _ => return Ok((verdict, None)),
    };
    if verdict != Verdict::Ok {
        return Ok((verdict, None));
    }
    match open_existing(file).and_then(|conn| rows(&conn)) {
        Ok((verdict, verified)) => Ok((verdict, Some(verified))),
        Err(e) if is_damage(&e) => Ok((Verdict::Damaged(e.to_string()), None)),
        Err(e) => Err(format!("cannot check the rows of {}: {e}", file.display())),
    }
}

fn verdict(file: &Path, depth: Depth) -> Result<Verdict, String> {
    inspect(file, depth).map(|(verdict, _)| verdict)
}

/// Checks every existing file of `dir`, sending each result as it comes.
fn check_all(dir: &Path, depth: Depth, mut each: impl FnMut(FileCheck) -> bool) {
    for file in existing_files(dir) {
        let (verdict, verified) = match inspect(&file, depth) {
            Ok((verdict, verified)) => (Ok(verdict), verified),
            Err(e) => (Err(e), None),
        };
        if !each(FileCheck {
            file,
            verdict,
            verified,
        }) {
            return;
        }
    }
}

/// Checks `dir`'s files, one after the other; for `cartstream check`.
pub fn check(dir: &Path, depth: Depth) -> Vec<FileCheck> {
    let mut out = Vec::new();
    check_all(dir, depth, |c| {
        out.push(c);
        true
    });
    out
}

/// The startup check: `quick_check` of every file in the data dir. Damage found within
/// `bound` refuses the start; past `bound` the server starts and the check goes on in the
/// background, where damage is logged at ERROR and set in `damage`.
///
/// # Errors
/// [`StartupError::Damaged`] naming the first damaged file.
pub async fn check_at_startup(
    dir: &Path,
    bound: Duration,
    damage: &Arc<Damage>,
) -> Result<(), StartupError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let owned = dir.to_path_buf();
    tokio::task::spawn_blocking(move || check_all(&owned, Depth::Quick, |c| tx.send(c).is_ok()));
    await_verdicts(dir, rx, bound, damage).await
}

/// The verdicts of [`check_at_startup`] as they come from `rx`: damage heard of within `bound`
/// refuses the start, and the bound is looked at first, so a verdict ready when it has passed
/// does not count. (A zero bound, then, always serves: whether the check thread was quick
/// enough must not decide it.)
async fn await_verdicts(
    dir: &Path,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<FileCheck>,
    bound: Duration,
    damage: &Arc<Damage>,
) -> Result<(), StartupError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        let Ok(c) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        let Some(c) = c else {
            tracing::info!(took = ?started.elapsed(), "integrity check: every local file is sound");
            return Ok(());
        };
        match c.verdict {
            Ok(Verdict::Ok) => {}
            Ok(Verdict::Damaged(detail)) => {
                return Err(StartupError::Damaged {
                    file: c.file,
                    detail,
                    dir: dir.to_path_buf(),
                })
            }
            Err(e) => tracing::warn!("integrity check: {e}"),
        }
    }
    tracing::warn!(
        ?bound,
        "integrity check: not done within CARTSTREAM_INTEGRITY_CHECK_TIMEOUT; serving while \
         it finishes in the background"
    );
    let damage = Arc::clone(damage);
    let dir = dir.to_path_buf();
    tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            match c.verdict {
                Ok(Verdict::Ok) => {}
                Ok(Verdict::Damaged(detail)) => {
                    let what = StartupError::Damaged {
                        file: c.file,
                        detail,
                        dir: dir.clone(),
                    }
                    .to_string();
                    tracing::error!("integrity check: {what}; /ready answers 503 until restarted");
                    damage.set(what);
                    return;
                }
                Err(e) => tracing::warn!("integrity check: {e}"),
            }
        }
        tracing::info!(took = ?started.elapsed(), "integrity check: every local file is sound");
    });
    Ok(())
}

/// Deletes the copied outbox rows whose checksum fails: their bytes are not what was written,
/// so delivering them would send something no client sent.
fn drop_failing_rows(
    fresh: &rusqlite::Connection,
    tables: &mut [TableSalvage],
) -> rusqlite::Result<()> {
    for (table, id) in checksum_failures(fresh)? {
        fresh.execute(&format!("DELETE FROM {table} WHERE id = ?1"), [id])?;
        if let Some(t) = tables.iter_mut().find(|t| t.table == table) {
            t.saved -= 1;
            t.failed_checksum += 1;
        }
    }
    Ok(())
}

/// Deletes the copied journal batches that fail their checksum (or do not hold what their row
/// says): which of their events changed cannot be told, and forwarding one would store an
/// event no client sent. The damaged file, moved aside, keeps their bytes.
fn drop_failing_batches(
    fresh: &rusqlite::Connection,
    tables: &mut [TableSalvage],
) -> rusqlite::Result<()> {
    // Collected first: the rows are deleted once the scan is done. Only the failing ones are
    // kept, and salvage is run on a stopped server.
    let mut failing = Vec::new();
    verify_batches(fresh, |b| failing.push(b))?;
    for b in failing {
        fresh.execute(
            "DELETE FROM journal_batches WHERE first_seq = ?1",
            [b.first_seq],
        )?;
        if let Some(t) = tables.iter_mut().find(|t| t.table == "journal_batches") {
            t.saved -= 1;
            t.failed_checksum += 1;
            t.failed_events += u64::try_from(b.count).unwrap_or(0);
        }
    }
    Ok(())
}

/// What `cartstream salvage` did to one file.
pub enum FileSalvage {
    Sound(PathBuf),
    Salvaged {
        file: PathBuf,
        /// Where the damaged file was moved.
        aside: PathBuf,
        tables: Vec<TableSalvage>,
    },
}

/// What `cartstream salvage` did to a data dir.
pub struct SalvageReport {
    pub files: Vec<FileSalvage>,
}

impl SalvageReport {
    /// Rows saved across every salvaged file.
    pub fn saved(&self) -> u64 {
        self.files
            .iter()
            .map(|f| match f {
                FileSalvage::Sound(_) => 0,
                FileSalvage::Salvaged { tables, .. } => tables.iter().map(|t| t.saved).sum(),
            })
            .sum()
    }
}

impl fmt::Display for SalvageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.files.is_empty() {
            return writeln!(f, "no local database files: nothing to salvage");
        }
        for file in &self.files {
            match file {
                FileSalvage::Sound(p) => writeln!(f, "{}: ok, left as it is", p.display())?,
                FileSalvage::Salvaged {
                    file,
                    aside,
                    tables,
                } => {
                    writeln!(
                        f,
                        "{}: damaged; readable rows copied into a fresh file, the damaged one \
                         moved to {}",
                        file.display(),
                        aside.display()
                    )?;
                    for t in tables {
                        write!(
                            f,
                            "  table {}: {} rows saved, {} rowid(s) in ranges that could not be read",
                            t.table, t.saved, t.unread_rowids
                        )?;
                        if t.tail_unread {
                            write!(f, ", and the table's end could not be read")?;
                        }
                        if t.failed_checksum > 0 {
                            write!(
                                f,
                                ", {} row(s) left out: they failed their checksum",
                                t.failed_checksum
                            )?;
                            if t.failed_events > 0 {
                                write!(
                                    f,
                                    " ({} event(s); the damaged file keeps their bytes)",
                                    t.failed_events
                                )?;
                            }
                        }
                        writeln!(f)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Salvages every damaged file of `dir`: the rows that can still be read go into a fresh
/// file with the current schema, the damaged file (with its `-wal` and `-shm`) is moved to
/// `<name>.damaged-<UTC time>`, and the fresh file takes its place. Sound files are left as
/// they are.
///
/// # Errors
/// When a server (or another command) holds `dir`, or a file cannot be written or moved.
pub fn salvage(dir: &Path) -> Result<SalvageReport, String> {
    // Taking the lock would create the directory: a typo must not salvage an empty new one.
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let _lock = DataDirLock::acquire(dir).map_err(|e| e.to_string())?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut files = Vec::new();
    for file in existing_files(dir) {
        match verdict(&file, Depth::Quick)? {
            Verdict::Ok => files.push(FileSalvage::Sound(file)),
            Verdict::Damaged(_) => files.push(salvage_file(dir, &file, &stamp)?),
        }
    }
    Ok(SalvageReport { files })
}

fn salvage_file(dir: &Path, file: &Path, stamp: &str) -> Result<FileSalvage, String> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let work = dir.join(format!(".salvage-{stamp}"));
    let io = |what: &str, e: &dyn fmt::Display| format!("salvage of {name}: {what}: {e}");
    // Left over by an interrupted salvage: start afresh.
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| io("cannot create a work dir", &e))?;
    // The fresh file, with the schema the server creates.
    let created = match name.as_str() {
        "journal.db" => SqliteJournal::open(&work, u64::MAX).map(drop),
        "outbox.db" => SqliteOutbox::open(&work, Arc::new(SystemClock)).map(drop),
        "quarantine.db" => {
            crate::adapters::outbound::quarantine::SqliteQuarantine::open(&work).map(drop)
        }
        _ => EmbeddedStore::open(&work).map(drop),
    };
    created.map_err(|e| io("cannot create a fresh file", &e))?;
    let fresh_path = work.join(&name);
    let mut fresh = rusqlite::Connection::open(&fresh_path)
        .map_err(|e| io("cannot open the fresh file", &e))?;
    let mut tables = copy_readable(file, &mut fresh)?;
    let dropped = match name.as_str() {
        "outbox.db" => drop_failing_rows(&fresh, &mut tables),
        "journal.db" => drop_failing_batches(&fresh, &mut tables),
        _ => Ok(()),
    };
    dropped.map_err(|e| io("cannot check the saved rows", &e))?;
    // Closing the last connection writes its WAL into the file.
    fresh
        .close()
        .map_err(|(_, e)| io("cannot close the fresh file", &e))?;
    let aside = dir.join(format!("{name}.damaged-{stamp}"));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", file.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to).map_err(|e| io("cannot move the damaged file", &e))?;
        }
    }
    std::fs::rename(&fresh_path, file).map_err(|e| io("cannot move the fresh file in", &e))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(FileSalvage::Salvaged {
        file: file.to_path_buf(),
        aside,
        tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures;
    use crate::ports::{Delivery, Journal, Outbox};

    /// A channel holding one damaged verdict, as the check thread sends it.
    fn damaged_verdict() -> (
        tokio::sync::mpsc::UnboundedSender<FileCheck>,
        tokio::sync::mpsc::UnboundedReceiver<FileCheck>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(FileCheck {
            file: PathBuf::from("/data/cartstream.db"),
            verdict: Ok(Verdict::Damaged("page 7 is no page".into())),
            verified: None,
        })
        .unwrap();
        (tx, rx)
    }

    /// A damaged verdict already waiting when the check's bound has passed is not a refusal:
    /// the server serves and the damage is set for /ready. (With the bound looked at second,
    /// a quick check thread refused a start that `CARTSTREAM_INTEGRITY_CHECK_TIMEOUT=0s` had
    /// asked to serve.)
    #[tokio::test]
    async fn a_verdict_ready_after_the_bound_does_not_refuse_the_start() {
        let (tx, rx) = damaged_verdict();
        drop(tx);
        let damage = Arc::new(Damage::default());
        let served = await_verdicts(Path::new("/data"), rx, Duration::ZERO, &damage).await;
        assert!(served.is_ok(), "{:?}", served.err().map(|e| e.to_string()));
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(found) = damage.found() {
                    return found;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert!(found.contains("page 7 is no page"), "{found}");

        // Within a bound, the same verdict refuses the start.
        let (_tx, rx) = damaged_verdict();
        let refused = await_verdicts(Path::new("/data"), rx, Duration::from_secs(60), &damage);
        assert!(matches!(refused.await, Err(StartupError::Damaged { .. })));
    }

    #[tokio::test]
    async fn check_and_salvage_find_an_outbox_row_whose_bytes_changed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = SqliteOutbox::open(dir.path(), Arc::new(SystemClock)).unwrap();
            let deliveries: Vec<Delivery> = ["e1", "e2", "e3"]
                .iter()
                .map(|id| Delivery {
                    route: "a".into(),
                    lane: 0,
                    event: fixtures::event(id)
                        .metadata(serde_json::json!({ "mark": format!("mark-{id}") }))
                        .at_now()
                        .stored(),
                })
                .collect();
            o.enqueue("f", &deliveries, 3).await.unwrap();
        }
        let file = dir.path().join("outbox.db");
        // Every copy: a page may keep dead ones, and only the live one counts.
        let mut bytes = std::fs::read(&file).unwrap();
        let mut found = 0;
        while let Some(at) = bytes.windows(7).position(|w| w == b"mark-e2") {
            bytes[at + 5] = b'x';
            found += 1;
        }
        assert!(found > 0);
        std::fs::write(&file, bytes).unwrap();

        let checks = check(dir.path(), Depth::Quick);
        assert_eq!(checks.len(), 1);
        match &checks[0].verdict {
            Ok(Verdict::Damaged(what)) => {
                assert!(
                    what.contains("1 row(s) fail their checksum: deliveries 2"),
                    "{what}"
                );
            }
            other => panic!("{other:?}"),
        }
        let report = salvage(dir.path()).unwrap();
        let said = report.to_string();
        assert!(
            said.contains("table deliveries: 2 rows saved")
                && said.contains("1 row(s) left out: they failed their checksum"),
            "{said}"
        );
        assert!(matches!(
            check(dir.path(), Depth::Full)[0].verdict,
            Ok(Verdict::Ok)
        ));
        let o = SqliteOutbox::open(dir.path(), Arc::new(SystemClock)).unwrap();
        let left: Vec<String> = o
            .head("a", 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|i| i.event.event.event_id().as_str().to_owned())
            .collect();
        assert_eq!(left, ["e1", "e3"]);
    }

    #[tokio::test]
    async fn check_names_a_journal_batch_whose_bytes_changed_and_salvage_leaves_it_out() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = SqliteJournal::open(dir.path(), u64::MAX).unwrap();
            for id in ["j1", "j2", "j3"] {
                let e = fixtures::event(id)
                    .metadata(serde_json::json!({ "mark": format!("mark-{id}") }))
                    .at_now()
                    .stored();
                j.append(&[e]).await.unwrap();
            }
        }
        let checks = check(dir.path(), Depth::Quick);
        assert!(matches!(checks[0].verdict, Ok(Verdict::Ok)));
        assert_eq!(
            checks[0].verified.as_deref(),
            Some("3 batch(es) of 3 event(s) verified")
        );
        let file = dir.path().join("journal.db");
        let mut bytes = std::fs::read(&file).unwrap();
        let mut found = 0;
        while let Some(at) = bytes.windows(7).position(|w| w == b"mark-j2") {
            bytes[at + 5] = b'x';
            found += 1;
        }
        assert!(found > 0);
        std::fs::write(&file, bytes).unwrap();
        assert_eq!(
            check_file(&file, Depth::Full),
            Ok(Verdict::Ok),
            "SQLite sees nothing"
        );

        match &check(dir.path(), Depth::Quick)[0].verdict {
            Ok(Verdict::Damaged(what)) => assert_eq!(
                what,
                "1 batch(es) damaged: batch 2 (event 2) fails its checksum"
            ),
            other => panic!("{other:?}"),
        }
        let said = salvage(dir.path()).unwrap().to_string();
        assert!(
            said.contains(
                "table journal_batches: 2 rows saved, 0 rowid(s) in ranges that could not be \
                 read, 1 row(s) left out: they failed their checksum (1 event(s); the damaged \
                 file keeps their bytes)"
            ),
            "{said}"
        );
        assert!(matches!(
            check(dir.path(), Depth::Full)[0].verdict,
            Ok(Verdict::Ok)
        ));
        let j = SqliteJournal::open(dir.path(), u64::MAX).unwrap();
        let left: Vec<String> = j
            .oldest_after(0, 10, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| e.event.event.event_id().as_str().to_owned())
            .collect();
        assert_eq!(left, ["j1", "j3"]);
    }
}
