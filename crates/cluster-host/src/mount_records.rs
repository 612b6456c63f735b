//! On-disk records of mounts in flight, so that a restarted daemon knows when a mount begun by an
//! earlier one may still land.
//!
//! A thread blocked in `mount(2)` outlives SIGKILL: the process is torn down only when the call
//! returns, and the mount then lands (tested by `a_mount_left_in_flight_by_a_killed_daemon_is_not_
//! reported_stopped`). A daemon restarted meanwhile (systemd gives up on the old one after its stop
//! timeout) would read the mount table, find nothing and call the resource stopped. So the thread
//! that calls `mount(2)` writes a record just before and removes it just after the call: a restarted
//! daemon sees either the record or the call's outcome in the mount table (undoing an abandoned mount
//! is the in-process registry's job, `in_flight.rs`; a daemon that dies before it leaves the mount
//! visible, for the next one's probe to find):
//!
//! ```text
//!  <state directory>/<mount namespace inode>-<FNV-1a of the target>.mount
//!      pid <pid> <start time of that pid, in clock ticks after boot>
//!      device <device>
//!      target <mountpoint>
//! ```
//!
//! A record of another process still alive (the same pid and start time, some thread not yet a
//! zombie) means the mount may still land; a record of a process that is gone is stale (the mount
//! landed, and the mount table shows it, or failed) and is removed. The state directory lives under
//! `/run`, which a reboot clears along with every mount.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mounts::MountError;

/// Where the Linux mounts keep their records by default.
pub(crate) const DEFAULT_STATE_DIRECTORY: &str = "/run/clusterd/mounts";

/// A mount of another process that may still land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForeignMount {
    /// The process inside `mount(2)`.
    pub(crate) pid: u32,
    /// The device it mounts.
    pub(crate) device: String,
    /// How long ago it wrote its record.
    pub(crate) age: Duration,
}

/// The records of one state directory.
#[derive(Debug, Clone)]
pub(crate) struct MountRecords {
    directory: PathBuf,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Fields of `/proc/PID/stat` after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    Some(after.split(' ').map(str::to_string).collect())
}

/// When `pid` started, in clock ticks after boot (field 22 of `/proc/PID/stat`).
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether process `pid`, started at `start`, still has a thread that is not a zombie: one that may
/// be inside a system call (a killed process whose thread is blocked in `mount(2)` stays so until
/// the call returns).
fn still_running(pid: u32, start: u64) -> bool {
    if start_time(pid) != Some(start) {
        return false;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| stat.rfind(')').and_then(|index| stat.get(index + 2..index + 3)).map(str::to_string))
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn failure(action: String, error: std::io::Error) -> MountError {
    MountError::Failed { action, message: error.to_string().to_lowercase() }
}

impl MountRecords {
    pub(crate) fn new(directory: &Path) -> Self {
        MountRecords { directory: directory.to_path_buf() }
    }

    /// The record of a mount at `target` in this process's mount namespace.
    pub(crate) fn path(&self, target: &Path) -> PathBuf {
        let namespace = std::fs::metadata("/proc/self/ns/mnt").map(|metadata| metadata.ino()).unwrap_or(0);
        let hash = fnv1a(target.as_os_str().as_encoded_bytes());
        self.directory.join(format!("{namespace}-{hash:016x}.mount"))
    }

    /// Record that this process is about to mount `device` at `target` (blocking file I/O).
    pub(crate) fn write(&self, device: &Path, target: &Path) -> Result<(), MountError> {
        let action =
            format!("record the mount of {} at {} in {}", device.display(), target.display(), self.directory.display());
        let pid = std::process::id();
        let start = start_time(pid).ok_or_else(|| MountError::Failed {
            action: action.clone(),
            message: "cannot read the start time of this process".to_string(),
        })?;
        std::fs::create_dir_all(&self.directory).map_err(|error| failure(action.clone(), error))?;
        let text = format!("pid {pid} {start}\ndevice {}\ntarget {}\n", device.display(), target.display());
        let mut file = std::fs::File::create(self.path(target)).map_err(|error| failure(action.clone(), error))?;
        file.write_all(text.as_bytes()).map_err(|error| failure(action, error))
    }

    /// Forget the record of `target` (the mount returned).
    pub(crate) fn remove(&self, target: &Path) {
        let path = self.path(target);
        if let Err(error) = std::fs::remove_file(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(record = %path.display(), %error, "failed to remove the record of a finished mount");
            }
        }
    }

    /// A mount of `target` that another process (an earlier daemon) began and that may still land.
    /// A stale record is removed; this process's own records are left to it (its in-flight registry
    /// knows them).
    pub(crate) fn foreign_in_flight(&self, target: &Path) -> Option<ForeignMount> {
        let path = self.path(target);
        let text = std::fs::read_to_string(&path).ok()?;
        let age = std::fs::metadata(&path)
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .unwrap_or_default();
        let mut pid_start = None;
        let mut device = String::new();
        let mut recorded_target = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("pid", value)) => {
                    pid_start = value
                        .split_once(' ')
                        .and_then(|(pid, start)| Some((pid.parse::<u32>().ok()?, start.parse::<u64>().ok()?)))
                }
                Some(("device", value)) => device = value.to_string(),
                Some(("target", value)) => recorded_target = Some(PathBuf::from(value)),
                _ => {}
            }
        }
        let own = std::process::id();
        match pid_start {
            // Another mountpoint whose name hashes alike: not ours to judge or remove.
            _ if recorded_target.as_deref() != Some(target) => None,
            Some((pid, start)) if pid == own && start_time(own) == Some(start) => None,
            Some((pid, start)) if still_running(pid, start) => Some(ForeignMount { pid, device, age }),
            _ => {
                tracing::info!(record = %path.display(), "removing the record of a mount whose process is gone");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_live_dead_and_own_processes() {
        let directory = tempfile::tempdir().expect("tempdir");
        let records = MountRecords::new(&directory.path().join("mounts"));
        let target = Path::new("/srv/data");

        // Our own record: the in-flight registry knows it, the record stays.
        records.write(Path::new("/dev/sdb"), target).expect("write");
        assert_eq!(records.foreign_in_flight(target), None);
        assert!(records.path(target).exists());
        records.remove(target);
        assert!(!records.path(target).exists());

        // A record of another live process: its mount may still land.
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = child.id();
        let start = start_time(pid).expect("start time of the child");
        let write = |pid: u32, start: u64| {
            std::fs::write(records.path(target), format!("pid {pid} {start}\ndevice /dev/sdb\ntarget /srv/data\n"))
                .expect("write record")
        };
        write(pid, start);
        let foreign = records.foreign_in_flight(target).expect("in flight");
        assert_eq!((foreign.pid, foreign.device.as_str()), (pid, "/dev/sdb"));
        // The same pid with another start time is another process: the record is stale.
        write(pid, start + 1);
        assert_eq!(records.foreign_in_flight(target), None);
        assert!(!records.path(target).exists(), "a stale record is removed");

        // Once the process is gone (reaped), its record is stale.
        write(pid, start);
        child.kill().expect("kill sleep");
        child.wait().expect("reap sleep");
        assert_eq!(records.foreign_in_flight(target), None);
        assert!(!records.path(target).exists());

        // A record of another mountpoint with the same file name is left alone.
        std::fs::write(records.path(target), "pid 1 1\ndevice /dev/sdc\ntarget /srv/other\n").expect("write record");
        assert_eq!(records.foreign_in_flight(target), None);
        assert!(records.path(target).exists());
    }

    #[test]
    fn hashes_differ_for_different_targets() {
        assert_ne!(fnv1a(b"/srv/a"), fnv1a(b"/srv/b"));
    }
}
