//! One process per data dir: the journal, the outbox and the embedded store assume they are
//! their files' only writer, so a second instance started on the same directory (a copy-pasted
//! unit, two containers on one volume) would interleave writes and lose or repeat events.

use super::StartupError;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// An exclusive lock on `DATA_DIR/cartstream.lock`, held for the life of the application and
/// released by the operating system when the process ends, however it ends (so a `kill -9`
/// leaves nothing to clean up). The file names the holder's pid, for the error a second
/// instance prints.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// # Errors
    /// [`StartupError::DataDirInUse`] when another process (or another application in this
    /// process) holds the directory; [`StartupError::DataDir`] when it cannot be created or
    /// locked at all.
    pub fn acquire(dir: &Path) -> Result<Self, StartupError> {
        let path = dir.join("cartstream.lock");
        let io = |source| StartupError::DataDir {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StartupError::DataDirInUse {
                    dir: dir.to_path_buf(),
                    holder: holder(&mut file),
                })
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// The holder's pid as its lock file says, or "unknown".
fn holder(file: &mut File) -> String {
    let mut pid = String::new();
    match file.read_to_string(&mut pid) {
        Ok(_) if !pid.trim().is_empty() => pid.trim().to_owned(),
        _ => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&std::process::id().to_string()) && text.contains("CARTSTREAM_DATA_DIR"),
            "{text}"
        );
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
        assert!(dir.path().join("cartstream.lock").exists());
    }
}
