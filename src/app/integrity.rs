//! Integrity of the data dir's SQLite files: checked at startup (bounded in time, the rest in
//! the background), on demand (`cartstream check`), and salvaged (`cartstream salvage`).
//!
//! SQLite with `synchronous=FULL` survives crashes and power cuts; what it cannot survive is a
//! disk that returns other bytes than were written (a failing device, a bad copy, a file
//! edited by hand). Such damage is found here, before the server reads from a file, rather
//! than as an error on some later read.

use crate::adapters::outbound::embedded::EmbeddedStore;
use crate::adapters::outbound::integrity::{
    check_file, copy_readable, Depth, TableSalvage, Verdict,
};
use crate::adapters::outbound::journal::SqliteJournal;
use crate::adapters::outbound::outbox::SqliteOutbox;
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
}

/// Checks every existing file of `dir`, sending each result as it comes.
fn check_all(dir: &Path, depth: Depth, mut each: impl FnMut(FileCheck) -> bool) {
    for file in existing_files(dir) {
        let verdict = check_file(&file, depth);
        if !each(FileCheck { file, verdict }) {
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
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let owned = dir.to_path_buf();
    tokio::task::spawn_blocking(move || check_all(&owned, Depth::Quick, |c| tx.send(c).is_ok()));
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(c)) => match c.verdict {
                Ok(Verdict::Ok) => {}
                Ok(Verdict::Damaged(detail)) => {
                    return Err(StartupError::Damaged {
                        file: c.file,
                        detail,
                        dir: dir.to_path_buf(),
                    })
                }
                Err(e) => tracing::warn!("integrity check: {e}"),
            },
            Ok(None) => {
                tracing::info!(took = ?started.elapsed(), "integrity check: every local file is sound");
                return Ok(());
            }
            Err(_) => break,
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
        match check_file(&file, Depth::Quick)? {
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
    let tables = copy_readable(file, &mut fresh)?;
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
