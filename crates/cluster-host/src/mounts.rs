//! Mount table and block device operations.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// What is mounted (a device path for block filesystems).
    pub source: String,
    /// Where.
    pub target: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Mount options.
    pub options: String,
}

/// How a block device is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceName {
    /// A path.
    Path(PathBuf),
    /// Filesystem UUID.
    Uuid(String),
    /// Filesystem label.
    Label(String),
}

impl std::fmt::Display for DeviceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceName::Path(path) => write!(f, "{}", path.display()),
            DeviceName::Uuid(uuid) => write!(f, "UUID={uuid}"),
            DeviceName::Label(label) => write!(f, "LABEL={label}"),
        }
    }
}

/// A mount operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    /// The filesystem is busy (files open, a working directory, a mount below it).
    #[error("failed to unmount {target}: target is busy")]
    Busy {
        /// The mountpoint.
        target: PathBuf,
    },
    /// Not allowed.
    #[error("failed to {action}: permission denied")]
    PermissionDenied {
        /// What was being done.
        action: String,
    },
    /// Any other failure.
    #[error("failed to {action}: {message}")]
    Failed {
        /// What was being done.
        action: String,
        /// Why.
        message: String,
    },
    /// A mount, unmount or check of the mountpoint has not returned yet (its caller may have given up
    /// on it, or an earlier daemon left it in the kernel): whether the filesystem is, or will be,
    /// mounted cannot be told until it does.
    #[error("{operation} still in flight after {waited:?}: {detail}")]
    InFlight {
        /// What, e.g. `mount of /dev/sdb at /srv/data`.
        operation: String,
        /// How long it has been in flight.
        waited: Duration,
        /// Why that matters.
        detail: String,
    },
}

/// A block device operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// fsck found errors it could not correct (exit code ≥ 4) or could not run.
    #[error("fsck of {device} failed: {message}")]
    Fsck {
        /// The device.
        device: PathBuf,
        /// Why.
        message: String,
    },
    /// A needed tool is not installed.
    #[error("{tool} is not installed")]
    NotInstalled {
        /// The tool.
        tool: String,
    },
    /// Any other failure.
    #[error("failed to {action}: {message}")]
    Failed {
        /// What was being done.
        action: String,
        /// Why.
        message: String,
    },
}

/// The mount table (in the calling process's mount namespace).
#[async_trait::async_trait]
pub trait Mounts: Send + Sync {
    /// Every mounted filesystem.
    async fn mounts(&self) -> Result<Vec<MountEntry>, MountError>;
    /// Create `path` and its parents if missing.
    async fn create_directory(&self, path: &Path) -> Result<(), MountError>;
    /// Mount `device` at `target` with `fstype` and mount(8)-style `options`, once no earlier
    /// operation on `target` is in flight. The mount is tracked to completion: if this future is
    /// dropped while the mount is still running (it cannot be cancelled: `mount(2)` on a device that
    /// stopped answering blocks in the kernel), a mount that succeeds later is unmounted at once.
    async fn mount(&self, device: &Path, target: &Path, fstype: &str, options: &[String]) -> Result<(), MountError>;
    /// Unmount `target` (not lazily), once no earlier operation on it is in flight. A busy filesystem
    /// is [`MountError::Busy`].
    async fn unmount(&self, target: &Path) -> Result<(), MountError>;
    /// Wait, at most `within`, until no mount, unmount or check of `target` is in flight: one whose
    /// caller gave up (an abandoned mount that lands is unmounted before this returns), or one that an
    /// earlier daemon, killed meanwhile, left blocked in the kernel. Call it before reading the mount
    /// table to tell whether `target` is mounted. After `within`: [`MountError::InFlight`].
    async fn settle(&self, target: &Path, within: Duration) -> Result<(), MountError>;
    /// Processes with a file, working directory, root or executable under `target`.
    async fn holders(&self, target: &Path) -> Result<Vec<u32>, MountError>;
    /// Send `signal` (e.g. `libc::SIGTERM`) to `pid`; a process that is gone is not an error.
    async fn signal_holder(&self, pid: u32, signal: i32) -> Result<(), MountError>;
    /// Write, sync, read back and delete a check file under `target` (tracked like a mount, so that a
    /// stop waits for a check that its caller gave up on).
    async fn check_read_write(&self, target: &Path) -> Result<(), MountError>;
}

/// Finding and checking block devices.
#[async_trait::async_trait]
pub trait BlockDevices: Send + Sync {
    /// The device path for `name`, or `None` if no such device exists now.
    async fn resolve(&self, name: &DeviceName) -> Result<Option<PathBuf>, BlockError>;
    /// `fsck -a` of `device` with type `fstype`, bounded by `timeout`. Corrected errors are success.
    async fn fsck(&self, device: &Path, fstype: &str, timeout: Duration) -> Result<(), BlockError>;
}
