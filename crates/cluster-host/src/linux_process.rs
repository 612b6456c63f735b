//! Linux processes: one cgroup v2 per unit (found through `/proc/self/mountinfo`), else a process group.
//! Where the cgroups go (beside the daemon in a delegated systemd service, or below it) is decided in
//! `service_cgroup.rs`; every unit's name carries the node (`UNIT@NODE`).

use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, killpg};
use nix::unistd::Pid;

use crate::process::{
    CommandOutput, CommandSpec, KillMode, ProcessError, Processes, ServiceOutput, ServiceSpec, Signal,
};
use crate::process_group::GroupKillOnDrop;

/// Where units live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Parent cgroup of the units; `None` detects it: the service's cgroup when systemd delegated it
    /// (`Delegate=yes`), else `<cgroup2 mount><own cgroup>/clusterd-units`.
    pub cgroup_parent: Option<PathBuf>,
    /// The node whose units these are: part of every unit's cgroup, pid file and `CLUSTERD_UNIT`, so that
    /// two daemons on one host never see each other's units. `None` only in tests.
    pub node: Option<String>,
    /// Use process groups even when cgroup v2 is available.
    pub force_process_groups: bool,
    /// Directory for pid files (process-group mode).
    pub state_directory: PathBuf,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            cgroup_parent: None,
            node: None,
            force_process_groups: false,
            state_directory: PathBuf::from("/run/clusterd/units"),
        }
    }
}

/// Starts that fork at the same time (the rest wait their turn).
const CONCURRENT_SPAWNS: usize = 4;

/// Processes on the real host.
#[derive(Debug, Clone)]
pub struct LinuxProcesses {
    cgroup_parent: Option<PathBuf>,
    /// Where clusterd 0.1.0 put its units (`<parent>/<unit>`, without the node), still looked at.
    legacy_cgroup_parent: Option<PathBuf>,
    node: Option<String>,
    state_directory: PathBuf,
    /// Bounds the forks in flight: a node taking over hundreds of packages must not start hundreds of
    /// blocking threads that fork at once.
    spawns: std::sync::Arc<tokio::sync::Semaphore>,
}

/// The cgroup2 mount point from a mountinfo text.
pub(crate) fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    crate::linux_mounts::parse_mountinfo(mountinfo)
        .into_iter()
        .find(|entry| entry.fstype == "cgroup2")
        .map(|entry| entry.target)
}

/// This process's cgroup v2 path from a `/proc/self/cgroup` text.
pub(crate) fn own_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| line.strip_prefix("0::")).map(str::to_string)
}

fn detect_cgroup_parent() -> Option<crate::service_cgroup::UnitCgroups> {
    let (mount, own) = crate::service_cgroup::own_cgroup_v2()?;
    let units = crate::service_cgroup::unit_cgroups(&mount, &own, crate::service_cgroup::systemd_delegated);
    std::fs::create_dir_all(&units.parent).ok()?;
    units.parent.join("cgroup.procs").exists().then_some(units)
}

fn unit_file_name(unit: &str) -> String {
    unit.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

fn errno_failure(action: String, errno: nix::errno::Errno) -> ProcessError {
    match errno {
        nix::errno::Errno::EPERM | nix::errno::Errno::EACCES => ProcessError::PermissionDenied { action },
        other => ProcessError::Failed { action, message: other.desc().to_lowercase() },
    }
}

fn io_failure(action: String, error: std::io::Error) -> ProcessError {
    if error.kind() == std::io::ErrorKind::PermissionDenied {
        ProcessError::PermissionDenied { action }
    } else {
        ProcessError::Failed { action, message: error.to_string().to_lowercase() }
    }
}

/// Fields of `/proc/PID/stat` after the command name: (state, pgrp).
fn stat_state_and_group(pid: u32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split(' ');
    let state = fields.next()?.chars().next()?;
    let _parent = fields.next()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, group))
}

fn environment_has(pid: u32, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|environ| environ.split(|byte| *byte == 0).any(|entry| entry == needle))
        .unwrap_or(false)
}

fn resolve_user(name: &str) -> Result<nix::unistd::User, ProcessError> {
    let unknown = || ProcessError::UnknownIdentity { kind: "user".to_string(), name: name.to_string() };
    let found = match name.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(name),
    };
    found.ok().flatten().ok_or_else(unknown)
}

fn resolve_group(name: &str) -> Result<u32, ProcessError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|group| group.gid.as_raw())
        .ok_or_else(|| ProcessError::UnknownIdentity { kind: "group".to_string(), name: name.to_string() })
}

impl LinuxProcesses {
    /// Detect cgroup v2 (unless disabled) and fall back to process groups.
    pub fn new(config: ProcessConfig) -> Self {
        let (cgroup_parent, legacy_cgroup_parent) = if config.force_process_groups {
            (None, None)
        } else {
            match config.cgroup_parent {
                Some(parent) => (std::fs::create_dir_all(&parent).ok().map(|_| parent), None),
                None => match detect_cgroup_parent() {
                    Some(units) => (Some(units.parent), Some(units.legacy_parent)),
                    None => (None, None),
                },
            }
        };
        if cgroup_parent.is_none() {
            tracing::info!("cgroup v2 not usable, supervising units by process group");
        }
        if let Some(parent) = &cgroup_parent {
            tracing::info!(cgroup = %parent.display(), "supervising units in cgroups");
        }
        LinuxProcesses {
            cgroup_parent,
            legacy_cgroup_parent,
            node: config.node,
            state_directory: config.state_directory,
            spawns: std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_SPAWNS)),
        }
    }

    /// `UNIT@NODE`: the unit's cgroup, pid file and `CLUSTERD_UNIT`.
    fn unit_name(&self, unit: &str) -> String {
        crate::service_cgroup::unit_cgroup_name(unit, self.node.as_deref())
    }

    fn cgroup(&self, unit: &str) -> Option<PathBuf> {
        self.cgroup_parent.as_ref().map(|parent| parent.join(self.unit_name(unit)))
    }

    /// The cgroup clusterd 0.1.0 gave this unit, when it differs from today's.
    fn legacy_cgroup(&self, unit: &str) -> Option<PathBuf> {
        let legacy = self.legacy_cgroup_parent.as_ref()?.join(unit_file_name(unit));
        (Some(&legacy) != self.cgroup(unit).as_ref()).then_some(legacy)
    }

    /// Today's cgroup of the unit, then clusterd 0.1.0's.
    fn cgroups(&self, unit: &str) -> Vec<PathBuf> {
        self.cgroup(unit).into_iter().chain(self.legacy_cgroup(unit)).collect()
    }

    fn pid_file(&self, unit: &str) -> PathBuf {
        self.state_directory.join(format!("{}.pgid", self.unit_name(unit)))
    }

    /// The blocking part of a start, run on the blocking pool: the unit's cgroup, fork, exec.
    fn spawn_unit(&self, spec: &ServiceSpec) -> Result<(tokio::process::Child, u32), ProcessError> {
        let program = spec.argv.first().cloned().unwrap_or_default();
        let action = format!("start {} for unit {}", program, spec.unit);
        let mut command = tokio::process::Command::new(&program);
        command
            .args(&spec.argv[1..])
            .envs(&spec.environment)
            .env("CLUSTERD_UNIT", self.unit_name(&spec.unit))
            .stdin(Stdio::null());
        if let Some(directory) = &spec.working_directory {
            command.current_dir(directory);
        }
        match &spec.output {
            ServiceOutput::Inherit => {
                let stderr = std::io::stderr();
                let out = std::os::fd::AsFd::as_fd(&stderr)
                    .try_clone_to_owned()
                    .map_err(|error| io_failure(action.clone(), error))?;
                let err = out.try_clone().map_err(|error| io_failure(action.clone(), error))?;
                command.stdout(Stdio::from(out)).stderr(Stdio::from(err));
            }
            ServiceOutput::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|error| io_failure(format!("open output file {}", path.display()), error))?;
                let copy = file.try_clone().map_err(|error| io_failure(action.clone(), error))?;
                command.stdout(Stdio::from(file)).stderr(Stdio::from(copy));
            }
        }
        if let Some(group) = &spec.group {
            command.gid(resolve_group(group)?);
        }
        if let Some(user) = &spec.user {
            let user = resolve_user(user)?;
            command.uid(user.uid.as_raw());
            if spec.group.is_none() {
                command.gid(user.gid.as_raw());
            }
        }
        let cgroup_procs = match self.cgroup(&spec.unit) {
            Some(cgroup) => {
                std::fs::create_dir_all(&cgroup)
                    .map_err(|error| io_failure(format!("create cgroup {}", cgroup.display()), error))?;
                Some(CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).map_err(|_| {
                    ProcessError::Failed {
                        action: action.clone(),
                        message: "cgroup path contains a nul byte".to_string(),
                    }
                })?)
            }
            None => None,
        };
        // SAFETY: the closure runs in the child between fork and exec and only calls async-signal-safe
        // functions (setsid, open, write, close) on memory prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(path) = &cgroup_procs {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error)
                if matches!(error.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied)
                    && error.raw_os_error() != Some(libc::EPERM) =>
            {
                return Err(ProcessError::NotFound { program })
            }
            Err(error) => return Err(io_failure(action, error)),
        };
        let pid = child
            .id()
            .ok_or_else(|| ProcessError::Failed { action: action.clone(), message: "exited at once".to_string() })?;
        if self.cgroup_parent.is_none() {
            std::fs::create_dir_all(&self.state_directory)
                .and_then(|_| std::fs::write(self.pid_file(&spec.unit), format!("{pid}\n")))
                .map_err(|error| io_failure(format!("write pid file of unit {}", spec.unit), error))?;
        }
        Ok((child, pid))
    }

    /// The unit's processes: those of its cgroups, or (without cgroups) of its process group and those
    /// carrying `CLUSTERD_UNIT=<unit name>`.
    fn unit_pids_blocking(cgroups: &[PathBuf], pid_file: &Path, unit: &str) -> Result<Vec<u32>, ProcessError> {
        if !cgroups.is_empty() {
            let mut pids = Vec::new();
            for cgroup in cgroups {
                match std::fs::read_to_string(cgroup.join("cgroup.procs")) {
                    Ok(text) => pids.extend(text.lines().filter_map(|line| line.trim().parse::<u32>().ok())),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(io_failure(format!("read {}", cgroup.display()), error)),
                }
            }
            return Ok(pids);
        }
        let group: Option<i32> = std::fs::read_to_string(pid_file).ok().and_then(|text| text.trim().parse().ok());
        let needle = format!("CLUSTERD_UNIT={unit}").into_bytes();
        let own = std::process::id();
        let mut pids = Vec::new();
        let entries = std::fs::read_dir("/proc").map_err(|error| io_failure("read /proc".to_string(), error))?;
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            if pid == own {
                continue;
            }
            let Some((state, process_group)) = stat_state_and_group(pid) else {
                continue;
            };
            if state == 'Z' || state == 'X' {
                continue;
            }
            if Some(process_group) == group || environment_has(pid, &needle) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }
    /// `cgroup.kill` of one of the unit's cgroups: done when the cgroup does not exist, an error when the
    /// kernel has no `cgroup.kill` (before 5.14: the caller signals every process instead).
    fn kill_cgroup(&self, cgroup: &Path) -> Result<(), ProcessError> {
        if !cgroup.exists() {
            return Ok(());
        }
        let kill_file = cgroup.join("cgroup.kill");
        if !kill_file.exists() {
            return Err(ProcessError::Failed {
                action: format!("kill cgroup {}", cgroup.display()),
                message: "the kernel has no cgroup.kill".to_string(),
            });
        }
        std::fs::write(&kill_file, "1").map_err(|error| io_failure(format!("kill cgroup {}", cgroup.display()), error))
    }

    /// Removes an emptied unit cgroup (done when it does not exist).
    async fn remove_cgroup(cgroup: &Path) -> Result<(), ProcessError> {
        // A process that just exited leaves `cgroup.procs` before the cgroup stops being
        // populated: rmdir fails with EBUSY for a few milliseconds. Retry for up to a
        // second before calling the stop failed (the lab saw ~1 stop in 25 fail here).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match std::fs::remove_dir(cgroup) {
                Ok(()) => return Ok(()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(error) if error.raw_os_error() == Some(libc::EBUSY) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => return Err(io_failure(format!("remove cgroup {}", cgroup.display()), error)),
            }
        }
    }
}

#[async_trait::async_trait]
impl Processes for LinuxProcesses {
    fn kill_mode(&self) -> KillMode {
        if self.cgroup_parent.is_some() {
            KillMode::Cgroup
        } else {
            KillMode::ProcessGroup
        }
    }

    async fn spawn(&self, spec: &ServiceSpec) -> Result<u32, ProcessError> {
        // fork, the move into the unit's cgroup (a kernel-wide lock) and exec block for milliseconds
        // each. On the runtime's two worker threads a burst of starts (a node taking back 200
        // packages) stalled lease renewals and TLS handshakes until the node's lease lapsed; the
        // blocking pool keeps the runtime responsive, a few at a time.
        let _permit = self.spawns.acquire().await.map_err(|error| ProcessError::Failed {
            action: format!("start unit {}", spec.unit),
            message: error.to_string(),
        })?;
        let processes = self.clone();
        let spec = spec.clone();
        let unit = spec.unit.clone();
        let (mut child, pid) =
            tokio::task::spawn_blocking(move || processes.spawn_unit(&spec)).await.map_err(|error| {
                ProcessError::Failed { action: format!("start unit {unit}"), message: error.to_string() }
            })??;
        // Reap the child whenever it exits; the unit is tracked through its cgroup or group, not this handle.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(pid)
    }

    async fn pids(&self, unit: &str) -> Result<Vec<u32>, ProcessError> {
        let cgroups = self.cgroups(unit);
        let pid_file = self.pid_file(unit);
        let unit = self.unit_name(unit);
        tokio::task::spawn_blocking(move || Self::unit_pids_blocking(&cgroups, &pid_file, &unit)).await.map_err(
            |error| ProcessError::Failed { action: "list unit processes".to_string(), message: error.to_string() },
        )?
    }

    async fn signal(&self, unit: &str, signal: Signal) -> Result<(), ProcessError> {
        let signal_number = nix::sys::signal::Signal::try_from(signal.number())
            .map_err(|errno| errno_failure(format!("send {signal} to unit {unit}"), errno))?;
        if self.cgroup_parent.is_none() {
            if let Some(group) =
                std::fs::read_to_string(self.pid_file(unit)).ok().and_then(|text| text.trim().parse::<i32>().ok())
            {
                match killpg(Pid::from_raw(group), signal_number) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                    Err(errno) => return Err(errno_failure(format!("send {signal} to unit {unit}"), errno)),
                }
            }
        }
        for pid in self.pids(unit).await? {
            match kill(Pid::from_raw(pid as i32), signal_number) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(errno) => {
                    return Err(errno_failure(format!("send {signal} to process {pid} of unit {unit}"), errno))
                }
            }
        }
        Ok(())
    }

    async fn kill(&self, unit: &str) -> Result<(), ProcessError> {
        if self.cgroup_parent.is_some() && self.cgroups(unit).iter().all(|cgroup| self.kill_cgroup(cgroup).is_ok()) {
            return Ok(());
        }
        self.signal(unit, Signal::Kill).await
    }

    async fn release(&self, unit: &str) -> Result<(), ProcessError> {
        if self.cgroup_parent.is_some() {
            for cgroup in self.cgroups(unit) {
                Self::remove_cgroup(&cgroup).await?;
            }
            return Ok(());
        }
        match std::fs::remove_file(self.pid_file(unit)) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_failure(format!("remove pid file of unit {unit}"), error)),
        }
    }

    async fn tcp_accepts(&self, address: SocketAddr, timeout: Duration) -> bool {
        matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await, Ok(Ok(_)))
    }

    async fn run(&self, spec: &CommandSpec) -> Result<CommandOutput, ProcessError> {
        let program = spec.argv.first().cloned().unwrap_or_default();
        let mut command = tokio::process::Command::new(&program);
        command
            .args(&spec.argv[1..])
            .envs(&spec.environment)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error)
                if matches!(error.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied) =>
            {
                return Err(ProcessError::NotFound { program })
            }
            Err(error) => return Err(io_failure(format!("run {program}"), error)),
        };
        // The whole group dies with this future unless the command exits by itself: at the timeout
        // below, and when the caller drops the action (an abandoned start).
        let group = GroupKillOnDrop::new(child.id());
        match tokio::time::timeout(spec.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => {
                group.disarm();
                Ok(CommandOutput {
                    exit_code: output.status.code(),
                    timed_out: false,
                    stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                })
            }
            Ok(Err(error)) => Err(io_failure(format!("run {program}"), error)),
            Err(_) => Ok(CommandOutput { exit_code: None, timed_out: true, ..CommandOutput::default() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_mount_and_own_cgroup_are_found() {
        let mountinfo = "25 1 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(mountinfo), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            own_cgroup("4:memory:/x\n0::/system.slice/clusterd.service\n").as_deref(),
            Some("/system.slice/clusterd.service")
        );
        assert_eq!(unit_file_name("web/server x"), "web_server_x");
    }
}
