/// Free and total bytes of a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// What an unprivileged writer may still use.
    pub free: u64,
    pub total: u64,
}

/// How much space the file system under the data dir has.
pub trait DiskSpace: Send + Sync {
    /// # Errors
    /// When the file system cannot be asked (e.g. the directory is gone).
    fn space(&self) -> std::io::Result<Space>;
}
