//! How much space the file system under a directory has: `statvfs`.

use crate::ports::{DiskSpace, Space};
use std::path::PathBuf;

/// The file system holding `dir`, asked with `statvfs`.
pub struct StatVfs {
    pub dir: PathBuf,
}

impl DiskSpace for StatVfs {
    fn space(&self) -> std::io::Result<Space> {
        let st = rustix::fs::statvfs(&self.dir)?;
        let unit = st.f_frsize;
        Ok(Space {
            free: st.f_bavail.saturating_mul(unit),
            total: st.f_blocks.saturating_mul(unit),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_directory_has_a_total_and_no_more_free_than_that() {
        let dir = tempfile::tempdir().unwrap();
        let space = StatVfs {
            dir: dir.path().to_path_buf(),
        }
        .space()
        .unwrap();
        assert!(space.total > 0);
        assert!(space.free <= space.total);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let missing = StatVfs {
            dir: "/no/such/dir/for/cartstream".into(),
        };
        assert!(missing.space().is_err());
    }
}
