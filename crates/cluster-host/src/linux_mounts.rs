//! Linux mounts (`mount(2)`, `/proc/self/mountinfo`, `/proc/*/fd`) and block devices (`/dev/disk/by-*`, blkid, fsck).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};

use crate::in_flight::InFlight;
use crate::mount_records::{MountRecords, DEFAULT_STATE_DIRECTORY};
use crate::mounts::{BlockDevices, BlockError, DeviceName, MountEntry, MountError, Mounts};
use crate::process_group::GroupKillOnDrop;

/// The real mount table.
///
/// Mounts, unmounts and read/write checks run to completion even when their caller goes away (see
/// `in_flight.rs`): one registry per process, shared by every handle, as the mount table is. Each
/// mount is also recorded under a state directory while it is in flight, so that a daemon
/// restarted while an earlier one's mount is still blocked in the kernel does not call the
/// mountpoint unmounted (see `mount_records.rs`).
#[derive(Debug, Clone)]
pub struct LinuxMounts {
    in_flight: Arc<InFlight>,
    records: MountRecords,
}

impl Default for LinuxMounts {
    fn default() -> Self {
        Self::new()
    }
}

/// How often `settle` looks again at a mount an earlier daemon left in flight.
const FOREIGN_POLL: Duration = Duration::from_millis(100);

fn registry() -> Arc<InFlight> {
    static REGISTRY: OnceLock<Arc<InFlight>> = OnceLock::new();
    REGISTRY.get_or_init(Arc::default).clone()
}

fn no_undo() -> Option<std::future::Ready<Result<(), MountError>>> {
    None
}

impl LinuxMounts {
    /// A new handle, recording mounts in flight under `/run/clusterd/mounts`.
    pub fn new() -> Self {
        Self::with_state_directory(Path::new(DEFAULT_STATE_DIRECTORY))
    }

    /// A new handle recording mounts in flight under `directory` (created when needed). Every
    /// daemon of one host must use the same directory.
    pub fn with_state_directory(directory: &Path) -> Self {
        LinuxMounts { in_flight: registry(), records: MountRecords::new(directory) }
    }
}

/// `umount2(target)` on the blocking pool; busy is [`MountError::Busy`].
async fn unmount_blocking(target: PathBuf) -> Result<(), MountError> {
    let owned = target.clone();
    let result =
        tokio::task::spawn_blocking(move || nix::mount::umount2(owned.as_path(), MntFlags::empty())).await.map_err(
            |error| MountError::Failed { action: format!("unmount {}", target.display()), message: error.to_string() },
        )?;
    match result {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => Err(MountError::Busy { target }),
        Err(errno) => Err(errno_failure(format!("unmount {}", target.display()), errno)),
    }
}

fn errno_failure(action: String, errno: nix::errno::Errno) -> MountError {
    match errno {
        nix::errno::Errno::EPERM | nix::errno::Errno::EACCES => MountError::PermissionDenied { action },
        other => MountError::Failed { action, message: other.desc().to_lowercase() },
    }
}

fn io_failure(action: String, error: std::io::Error) -> MountError {
    MountError::Failed { action, message: error.to_string().to_lowercase() }
}

/// Decode the octal escapes (`\040` for a space) of mountinfo fields.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && index + 3 < bytes.len()
            && bytes[index + 1..index + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[index + 1] - b'0') * 64 + (bytes[index + 2] - b'0') * 8 + (bytes[index + 3] - b'0');
            out.push(value);
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse `/proc/self/mountinfo`.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            if left.len() < 6 || right.len() < 2 {
                return None;
            }
            Some(MountEntry {
                source: unescape(right[1]),
                target: PathBuf::from(unescape(left[4])),
                fstype: right[0].to_string(),
                options: left[5].to_string(),
            })
        })
        .collect()
}

/// Split mount(8)-style options into flags and the data string passed to the filesystem.
pub(crate) fn mount_flags(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options.iter().flat_map(|option| option.split(',')).filter(|option| !option.is_empty()) {
        match option {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "lazytime" => flags |= MsFlags::MS_LAZYTIME,
            "defaults" | "auto" | "noauto" | "nofail" | "_netdev" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

fn is_under(path: &Path, target: &Path) -> bool {
    path == target || path.starts_with(target)
}

fn pid_holds(pid: &str, target: &Path) -> bool {
    let base = Path::new("/proc").join(pid);
    for link in ["cwd", "root", "exe"] {
        if let Ok(path) = std::fs::read_link(base.join(link)) {
            if is_under(&path, target) {
                return true;
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(base.join("fd")) {
        for entry in entries.flatten() {
            if let Ok(path) = std::fs::read_link(entry.path()) {
                if is_under(&path, target) {
                    return true;
                }
            }
        }
    }
    false
}

#[async_trait::async_trait]
impl Mounts for LinuxMounts {
    async fn mounts(&self) -> Result<Vec<MountEntry>, MountError> {
        let text = tokio::fs::read_to_string("/proc/self/mountinfo")
            .await
            .map_err(|error| io_failure("read /proc/self/mountinfo".to_string(), error))?;
        Ok(parse_mountinfo(&text))
    }

    async fn create_directory(&self, path: &Path) -> Result<(), MountError> {
        tokio::fs::create_dir_all(path)
            .await
            .map_err(|error| io_failure(format!("create directory {}", path.display()), error))
    }

    async fn mount(&self, device: &Path, target: &Path, fstype: &str, options: &[String]) -> Result<(), MountError> {
        let (flags, data) = mount_flags(options);
        let description = format!("mount of {} at {}", device.display(), target.display());
        let action = format!("mount {} at {} ({fstype})", device.display(), target.display());
        let join_action = action.clone();
        let records = self.records.clone();
        let (device, owned_target, fstype) = (device.to_path_buf(), target.to_path_buf(), fstype.to_string());
        let operation = async move {
            let result = tokio::task::spawn_blocking(move || {
                // The record exists exactly while mount(2) may run, in this thread: whatever becomes of
                // the task awaiting it (its runtime may shut down), a restarted daemon sees either the
                // record or the mount's outcome in the mount table.
                records.write(&device, &owned_target)?;
                let data = (!data.is_empty()).then_some(data.as_str());
                let result = nix::mount::mount(
                    Some(device.as_path()),
                    owned_target.as_path(),
                    Some(fstype.as_str()),
                    flags,
                    data,
                );
                records.remove(&owned_target);
                result.map_err(|errno| errno_failure(action, errno))
            })
            .await;
            result.map_err(|error| MountError::Failed { action: join_action, message: error.to_string() })?
        };
        let undo = unmount_blocking(target.to_path_buf());
        self.in_flight.run(target, description, operation, Some(undo)).await
    }

    async fn unmount(&self, target: &Path) -> Result<(), MountError> {
        let description = format!("unmount of {}", target.display());
        self.in_flight.run(target, description, unmount_blocking(target.to_path_buf()), no_undo()).await
    }

    async fn settle(&self, target: &Path, within: Duration) -> Result<(), MountError> {
        let deadline = tokio::time::Instant::now() + within;
        self.in_flight.settle(target, within).await?;
        loop {
            let records = self.records.clone();
            let owned = target.to_path_buf();
            let foreign =
                tokio::task::spawn_blocking(move || records.foreign_in_flight(&owned)).await.map_err(|error| {
                    MountError::Failed {
                        action: format!("read the mount records of {}", target.display()),
                        message: error.to_string(),
                    }
                })?;
            let Some(foreign) = foreign else {
                return Ok(());
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(MountError::InFlight {
                    operation: format!("mount of {} at {}", foreign.device, target.display()),
                    waited: Duration::from_millis(foreign.age.as_millis() as u64),
                    detail: format!(
                        "process {} (an earlier clusterd) is still inside mount(2); cannot tell whether it will be mounted",
                        foreign.pid
                    ),
                });
            }
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + FOREIGN_POLL)).await;
        }
    }

    async fn holders(&self, target: &Path) -> Result<Vec<u32>, MountError> {
        let target = target.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let own = std::process::id();
            let mut pids = Vec::new();
            let entries = std::fs::read_dir("/proc").map_err(|error| io_failure("read /proc".to_string(), error))?;
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(|name| name.parse::<u32>().ok()) else {
                    continue;
                };
                if pid != own && pid_holds(&pid.to_string(), &target) {
                    pids.push(pid);
                }
            }
            Ok(pids)
        })
        .await
        .map_err(|error| MountError::Failed { action: "scan /proc".to_string(), message: error.to_string() })?
    }

    async fn signal_holder(&self, pid: u32, signal: i32) -> Result<(), MountError> {
        let signal = nix::sys::signal::Signal::try_from(signal)
            .map_err(|errno| errno_failure(format!("signal process {pid}"), errno))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(errno) => Err(errno_failure(format!("send {signal} to process {pid}"), errno)),
        }
    }

    async fn check_read_write(&self, target: &Path) -> Result<(), MountError> {
        let path = target.join(".clusterd-monitor-check");
        let check = async move {
            tokio::task::spawn_blocking(move || {
                let action = format!("read/write check of {}", path.display());
                let content = format!("clusterd check {}\n", std::process::id());
                let mut file = std::fs::File::create(&path).map_err(|error| io_failure(action.clone(), error))?;
                file.write_all(content.as_bytes()).map_err(|error| io_failure(action.clone(), error))?;
                file.sync_all().map_err(|error| io_failure(action.clone(), error))?;
                let mut back = String::new();
                std::fs::File::open(&path)
                    .and_then(|mut file| file.read_to_string(&mut back))
                    .map_err(|error| io_failure(action.clone(), error))?;
                std::fs::remove_file(&path).map_err(|error| io_failure(action.clone(), error))?;
                if back != content {
                    return Err(MountError::Failed { action, message: "read back different content".to_string() });
                }
                Ok(())
            })
            .await
            .map_err(|error| MountError::Failed {
                action: "read/write check".to_string(),
                message: error.to_string(),
            })?
        };
        let description = format!("read/write check of {}", target.display());
        self.in_flight.run(target, description, check, no_undo()).await
    }
}

/// Block devices of the real host.
#[derive(Debug, Default, Clone)]
pub struct LinuxBlockDevices {
    _private: (),
}

impl LinuxBlockDevices {
    /// A new handle.
    pub fn new() -> Self {
        LinuxBlockDevices { _private: () }
    }
}

#[async_trait::async_trait]
impl BlockDevices for LinuxBlockDevices {
    async fn resolve(&self, name: &DeviceName) -> Result<Option<PathBuf>, BlockError> {
        let (token, value, directory) = match name {
            DeviceName::Path(path) => {
                // Canonical, so it compares equal to the source in the mount table (`/dev/loop0`, not a symlink).
                return Ok(tokio::fs::canonicalize(path).await.ok());
            }
            DeviceName::Uuid(uuid) => ("UUID", uuid, "/dev/disk/by-uuid"),
            DeviceName::Label(label) => ("LABEL", label, "/dev/disk/by-label"),
        };
        // udev's symlinks first; without udev (containers, early boot) ask blkid, which probes the devices.
        let link = Path::new(directory).join(value);
        if let Ok(path) = tokio::fs::canonicalize(&link).await {
            return Ok(Some(path));
        }
        let output = tokio::process::Command::new("blkid")
            .args(["-c", "/dev/null", "-l", "-o", "device", "-t"])
            .arg(format!("{token}={value}"))
            .output()
            .await;
        match output {
            Ok(output) if output.status.success() => {
                let device = String::from_utf8_lossy(&output.stdout).trim().to_string();
                Ok((!device.is_empty()).then(|| PathBuf::from(device)))
            }
            // blkid exits 2 when nothing matches.
            Ok(_) => Ok(None),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(BlockError::NotInstalled { tool: "blkid".to_string() })
            }
            Err(error) => {
                Err(BlockError::Failed { action: format!("run blkid for {name}"), message: error.to_string() })
            }
        }
    }

    async fn fsck(&self, device: &Path, fstype: &str, timeout: Duration) -> Result<(), BlockError> {
        let mut command = tokio::process::Command::new("fsck");
        // fsck runs the checker (e2fsck, ...) as a child of its own: the whole process group dies at
        // the timeout and when this future is dropped, so an abandoned start stops writing to the device.
        command
            .arg("-a")
            .arg("-t")
            .arg(fstype)
            .arg(device)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlockError::NotInstalled { tool: "fsck".to_string() })
            }
            Err(error) => return Err(BlockError::Fsck { device: device.to_path_buf(), message: error.to_string() }),
        };
        let group = GroupKillOnDrop::new(child.id());
        let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => {
                return Err(BlockError::Fsck {
                    device: device.to_path_buf(),
                    message: format!("did not finish within {}s", timeout.as_secs()),
                })
            }
            Ok(Err(error)) => {
                return Err(BlockError::Fsck { device: device.to_path_buf(), message: error.to_string() })
            }
            Ok(Ok(output)) => {
                group.disarm();
                output
            }
        };
        // fsck: 0 clean, 1 corrected, 2 corrected and reboot advised; 4 and above are failures.
        match output.status.code() {
            Some(code) if code < 4 => Ok(()),
            code => Err(BlockError::Fsck {
                device: device.to_path_buf(),
                message: format!(
                    "exit code {}: {}",
                    code.map(|code| code.to_string()).unwrap_or_else(|| "none (killed)".to_string()),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_with_escapes() {
        let text = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    90 29 7:0 / /srv/my\\040data rw,noatime shared:1 - ext4 /dev/loop0 rw\n";
        let entries = parse_mountinfo(text);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].target, PathBuf::from("/srv/my data"));
        assert_eq!(entries[1].source, "/dev/loop0");
        assert_eq!(entries[1].fstype, "ext4");
        assert_eq!(entries[0].fstype, "cgroup2");
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let (flags, data) =
            mount_flags(&["noatime,ro".to_string(), "errors=remount-ro".to_string(), "nodev".to_string()]);
        assert!(flags.contains(MsFlags::MS_NOATIME | MsFlags::MS_RDONLY | MsFlags::MS_NODEV));
        assert_eq!(data, "errors=remount-ro");
    }
}
