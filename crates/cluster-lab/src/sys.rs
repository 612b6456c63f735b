//! Small host helpers: running tools (`ip`, `nft`, `losetup`), the shared monotonic clock, pids, filesystem
//! freeze and thaw.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Failure of a host operation.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// A tool could not be started.
    #[error("failed to run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A tool exited with a failure.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

pub(crate) fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> SysError {
    SysError::Io { action, path: path.to_path_buf(), source }
}

fn command_line(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs a command to completion; returns its stdout, or an error with its stderr.
pub(crate) fn run(command: &mut Command) -> Result<String, SysError> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SysError::Spawn { program: command.get_program().to_string_lossy().into_owned(), source })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(SysError::Failed {
            command: command_line(command),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Runs `ip` with the given arguments.
pub(crate) fn ip(args: &[&str]) -> Result<String, SysError> {
    run(Command::new("ip").args(args))
}

/// Nanoseconds on `CLOCK_MONOTONIC`: one clock shared by every process and namespace of the host,
/// so timestamps written by different `clusterlab` processes compare.
pub fn now_ns() -> u64 {
    let time =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    time.tv_sec() as u64 * 1_000_000_000 + time.tv_nsec() as u64
}

/// True when the process exists and is not a zombie.
pub(crate) fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the last ')' (the command may contain parentheses).
            let state = stat.rfind(')').and_then(|end| stat[end + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// The short command name of a process (`/proc/PID/comm`).
pub(crate) fn pid_comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|comm| comm.trim().to_string())
}

/// Polls `condition` every few milliseconds until it holds or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends a signal to one process by pid.
pub(crate) fn signal(pid: i32, signal: nix::sys::signal::Signal) -> Result<(), SysError> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(|errno| SysError::Failed {
        command: format!("kill -{} {pid}", signal.as_str()),
        status: "error".into(),
        stderr: errno.desc().to_string(),
    })
}

// `FIFREEZE` and `FITHAW` of <linux/fs.h>: `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)`. The kernel ignores
// the argument.
nix::ioctl_readwrite!(ioctl_fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(ioctl_fithaw, b'X', 120, libc::c_int);

/// What a freeze or thaw request found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FreezeChange {
    /// The filesystem changed state (frozen by a freeze, thawed by a thaw).
    Changed,
    /// It was already in the asked state (already frozen, or not frozen).
    Unchanged,
}

fn freeze_ioctl(mount_point: &Path, freeze: bool) -> Result<FreezeChange, SysError> {
    let action = if freeze { "failed to freeze" } else { "failed to thaw" };
    // A read-only open of the mount point's directory: it neither writes nor waits on a frozen filesystem.
    let directory = std::fs::File::open(mount_point).map_err(|error| io_error(action, mount_point, error))?;
    let mut ignored: libc::c_int = 0;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&directory);
    // SAFETY: `fd` is an open descriptor owned by `directory` for the whole call, and the argument points to a
    // live `c_int` (FIFREEZE and FITHAW do not even read it).
    let result = unsafe {
        if freeze {
            ioctl_fifreeze(fd, &mut ignored)
        } else {
            ioctl_fithaw(fd, &mut ignored)
        }
    };
    match result {
        Ok(_) => Ok(FreezeChange::Changed),
        // FIFREEZE of a filesystem this holder (userspace) already froze.
        Err(nix::errno::Errno::EBUSY) if freeze => Ok(FreezeChange::Unchanged),
        // FITHAW of a filesystem that is not frozen.
        Err(nix::errno::Errno::EINVAL) if !freeze => Ok(FreezeChange::Unchanged),
        Err(errno) => Err(io_error(action, mount_point, std::io::Error::from(errno))),
    }
}

/// Freezes the filesystem mounted at `mount_point` (FIFREEZE): its dirty data is written, then every write and
/// fsync on it blocks until it is thawed. Reads still work.
pub(crate) fn freeze_filesystem(mount_point: &Path) -> Result<FreezeChange, SysError> {
    freeze_ioctl(mount_point, true)
}

/// Thaws the filesystem mounted at `mount_point` (FITHAW); `Unchanged` when it was not frozen.
pub(crate) fn thaw_filesystem(mount_point: &Path) -> Result<FreezeChange, SysError> {
    freeze_ioctl(mount_point, false)
}

/// True when this process runs as root (the lab needs it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
