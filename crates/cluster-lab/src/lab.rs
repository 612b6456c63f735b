//! The lab: nodes in network namespaces on a bridge, each with its own mount namespace and cgroup, and the
//! faults that break them.
//!
//! ```text
//!   netns cl-LAB-sw:   br0 ── n1 ── n2 ── n3 ── client        (nftables bridge filter = partitions)
//!                          │      │      │       │
//!   netns cl-LAB-n1:     eth0 192.0.2.11/24   (holder `sleep` owns the node's mount namespace)
//!   netns cl-LAB-n2:            eth0 192.0.2.12/24
//!   netns cl-LAB-n3:                   eth0 192.0.2.13/24
//!   netns cl-LAB-client:                        eth0 192.0.2.200/24
//!
//!   cgroup2 …/clusterlab/LAB/{n1,n2,n3,client,supervisor}   (cgroup.kill = power loss)
//!   /run/clusterlab/LAB/      state.json, faults.jsonl, per node: config, socket, log, pid files
//!   /var/lib/clusterlab/LAB/  pki/, lun.img, per clusterd node: data.img ──loop──▶ ext4 mounted at NODE/data
//! ```
//!
//! Every process of a node is started by [`Lab::node_command`]: before `exec` it joins the node's cgroup,
//! network namespace and mount namespace, so killing the cgroup kills the node. Nothing is ever done to the root
//! namespace's interfaces, addresses, routes or firewall.
//!
//! Each `clusterd` node's data dir is its own small ext4 filesystem on a loop device (its "disk"), mounted in
//! the host's mount namespace by `up` before any node starts, so every node mount namespace (made at each power
//! on) has it, and it outlives power cycles. [`Lab::stall_disk`] freezes it (FIFREEZE: every write and fsync of
//! that node blocks), [`Lab::resume_disk`] and [`Lab::kill`] thaw it, and [`Lab::down`] thaws every filesystem
//! under the lab's folder before it kills anything or unmounts (an unmount of a frozen filesystem hangs, and a
//! process blocked on one cannot die).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::partition::Partition;
use crate::sys::{self, io_error, SysError};

/// Where the lab keeps runtime state (one folder per lab).
pub const RUN_ROOT: &str = "/run/clusterlab";
/// The runtime folder of OCF agents (`HA_RSCTMP`): every node mounts its own (a tmpfs in its mount namespace).
pub const RESOURCE_AGENTS_RUN: &str = "/run/resource-agents";
/// Where the lab keeps node data, certificates and the LUN image (one folder per lab).
pub const VAR_ROOT: &str = "/var/lib/clusterlab";
/// The port `clusterd` listens on in the lab.
pub const CLUSTERD_PORT: u16 = 7400;
/// Where every lab `clusterd` serves its metrics and status page, on its own loopback (inside its node).
pub const LAB_METRICS: &str = "127.0.0.1:9464";
/// The client namespace's address.
pub const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
/// Size of each `clusterd` node's data filesystem (a sparse image: only what is written takes space).
/// clusterd's Raft log preallocates 16 MiB segments with real zeros and drops old ones only after a snapshot
/// (every 10,000 entries by default), and a snapshot is written to a temporary file before it replaces the
/// last one: a few segments plus two snapshots fit with a wide margin.
pub const DATA_DISK_MIB: u64 = 256;

/// Errors of lab operations.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A host operation failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The lab name is not usable.
    #[error("invalid lab name {0:?}: use 1 to 16 characters a-z and 0-9")]
    InvalidName(String),
    /// A lab with this name already exists.
    #[error("lab {0} already exists (run `clusterlab --name {0} down` first)")]
    Exists(String),
    /// No lab with this name is up.
    #[error("lab {0} is not up")]
    NotUp(String),
    /// A node name that the lab does not have.
    #[error("lab {lab} has no node {node}")]
    UnknownNode {
        /// The lab.
        lab: String,
        /// The node asked for.
        node: String,
    },
    /// The node is powered off.
    #[error("node {0} is powered off")]
    PoweredOff(String),
    /// The node runs no daemon.
    #[error("node {0} runs no daemon")]
    NoDaemon(String),
    /// The node has no data filesystem of its own (only `clusterd` nodes have one).
    #[error("node {0} has no data disk (only clusterd nodes have one)")]
    NoDataDisk(String),
    /// The kernel lacks a feature a fault needs.
    #[error("{0} is not supported on this host")]
    Unsupported(String),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The lab's state file is unreadable.
    #[error("invalid lab state {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// The daemon of a node failed.
    #[error("daemon of node {node} failed: {reason}")]
    Daemon {
        /// The node.
        node: String,
        /// What happened.
        reason: String,
    },
    /// Teardown went through every step and some failed.
    #[error("teardown of lab {lab} left errors: {}", errors.join("; "))]
    Teardown {
        /// The lab.
        lab: String,
        /// Every error collected.
        errors: Vec<String>,
    },
}

/// What a lab node runs as its daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Daemon {
    /// Nothing: bare nodes.
    None,
    /// `clusterd`, the cluster formed with `clusterctl cluster init` and `node add`.
    Clusterd {
        /// Path of the `clusterd` binary.
        clusterd: PathBuf,
        /// Path of the `clusterctl` binary.
        clusterctl: PathBuf,
        /// Give each node an emulated watchdog (`[watchdog] device = "lab:…"`), served by the lab supervisor.
        watchdog: bool,
    },
    /// keepalived with one VRRP instance holding a VIP (for the side-by-side benchmark).
    Keepalived(KeepalivedConfig),
}

/// keepalived settings for the benchmark.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeepalivedConfig {
    /// The virtual address (a /24 on eth0).
    pub vip: Ipv4Addr,
    /// `advert_int` as keepalived reads it: `1` (default), or fractional like `0.1` (needs VRRPv3).
    pub advert_int: String,
    /// VRRP version (2 is keepalived's default; 3 allows sub-second adverts).
    pub vrrp_version: u8,
}

/// How to build a lab.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Lab name: 1–16 characters a-z, 0-9 (it is part of namespace and cgroup names).
    pub name: String,
    /// Voting nodes (n1..nV).
    pub voters: usize,
    /// Learner nodes (after the voters).
    pub learners: usize,
    /// What each node runs.
    pub daemon: Daemon,
    /// Size of the shared LUN in MiB (0: none).
    pub lun_mib: u64,
    /// The `clusterlab` binary, needed for the supervisor (watchdogs); `None`: the current executable.
    pub tool: Option<PathBuf>,
    /// Seconds a node stays off after its watchdog fired before it powers on again.
    pub reboot_delay: Duration,
    /// Serve an emulated watchdog per node (a supervisor process).
    pub watchdog: bool,
    /// Nodes that run another `clusterd` than the lab's (an older release: the upgrade test).
    pub other_clusterd: BTreeMap<String, OtherClusterd>,
    /// Nodes whose node file says `role = "witness"` (voters that never host packages).
    pub witnesses: Vec<String>,
    /// Nodes that join with a token: the lab issues them no certificate, writes them no node file
    /// and does not add them; their daemon starts (`start_daemon`) once `clusterctl join` wrote
    /// its node file into [`LabPaths::join_dir`].
    pub joining: Vec<String>,
    /// Raft's timing in every node file the lab writes (`[raft] heartbeat`, `election_timeout`);
    /// `None`: clusterd's defaults.
    pub raft: Option<RaftTiming>,
}

/// The node file's `[raft]` timings, in ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
}

/// A node's `clusterd` when it is not the lab's: its binary and the release whose node file keys it
/// reads (a v0.1.0 daemon refuses the keys added after it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherClusterd {
    /// Path of the binary.
    pub clusterd: PathBuf,
    /// Its release, e.g. `0.1.0`.
    pub release: String,
}

impl LabSpec {
    /// A lab of bare nodes.
    pub fn bare(name: &str, nodes: usize) -> LabSpec {
        LabSpec {
            name: name.to_string(),
            voters: nodes,
            learners: 0,
            daemon: Daemon::None,
            lun_mib: 0,
            tool: None,
            reboot_delay: Duration::from_secs(2),
            watchdog: false,
            other_clusterd: BTreeMap::new(),
            witnesses: Vec::new(),
            joining: Vec::new(),
            raft: None,
        }
    }
}

/// A node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Raft voter.
    Voter,
    /// Raft learner.
    Learner,
}

/// The lab's record of one node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    /// Node name (`n1`…).
    pub name: String,
    /// Its address on eth0.
    pub address: Ipv4Addr,
    /// Voter or learner.
    pub role: Role,
    /// False after `kill` until `start`/`restart`.
    pub powered: bool,
    /// The process that owns the node's mount namespace.
    pub holder_pid: Option<i32>,
    /// The daemon (`clusterd` or keepalived).
    pub daemon_pid: Option<i32>,
    /// The loop device of the node's data filesystem (`clusterd` nodes), mounted at its data dir.
    #[serde(default)]
    pub data_disk: Option<String>,
}

/// Everything the lab remembers between commands (`/run/clusterlab/LAB/state.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    /// Lab name.
    pub name: String,
    /// Nodes in order.
    pub nodes: Vec<NodeState>,
    /// What the nodes run.
    pub daemon: Daemon,
    /// The shared LUN's loop device.
    pub lun: Option<String>,
    /// The partition in force.
    pub partition: Option<Partition>,
    /// The supervisor process (watchdogs).
    pub supervisor_pid: Option<i32>,
    /// Seconds a node stays off after a watchdog reset.
    pub reboot_delay_ms: u64,
    /// Nodes that run another `clusterd` than the lab's (see [`Lab::set_clusterd`]).
    #[serde(default)]
    pub other_clusterd: BTreeMap<String, OtherClusterd>,
    /// Nodes whose node file says `role = "witness"`.
    #[serde(default)]
    pub witnesses: Vec<String>,
    /// Nodes that join with a token (see [`LabSpec::joining`]).
    #[serde(default)]
    pub joining: Vec<String>,
    /// Raft's timing in the node files (see [`LabSpec::raft`]).
    #[serde(default)]
    pub raft: Option<RaftTiming>,
}

/// File and namespace names of one lab.
#[derive(Clone, Debug)]
pub struct LabPaths {
    name: String,
}

impl LabPaths {
    /// Paths for the lab `name` (validated).
    pub fn new(name: &str) -> Result<LabPaths, LabError> {
        let valid = !name.is_empty()
            && name.len() <= 16
            && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit());
        if !valid {
            return Err(LabError::InvalidName(name.to_string()));
        }
        Ok(LabPaths { name: name.to_string() })
    }

    /// `/run/clusterlab/LAB`.
    pub fn run_dir(&self) -> PathBuf {
        Path::new(RUN_ROOT).join(&self.name)
    }

    /// `/var/lib/clusterlab/LAB`.
    pub fn var_dir(&self) -> PathBuf {
        Path::new(VAR_ROOT).join(&self.name)
    }

    /// Runtime folder of one node.
    pub fn node_run_dir(&self, node: &str) -> PathBuf {
        self.run_dir().join(node)
    }

    /// Where `clusterctl join` writes the node file and keys of a joining node.
    pub fn join_dir(&self, node: &str) -> PathBuf {
        self.node_run_dir(node).join("join")
    }

    /// The lab's cgroup.
    pub fn cgroup(&self) -> PathBuf {
        cgroup2_root().join("clusterlab").join(&self.name)
    }

    /// Network namespace name of a member (`sw`, `client` or a node).
    pub fn netns(&self, member: &str) -> String {
        format!("cl-{}-{}", self.name, member)
    }

    /// Prefix shared by every namespace of this lab.
    pub fn netns_prefix(&self) -> String {
        format!("cl-{}-", self.name)
    }

    /// The emulated watchdog socket of a node.
    pub fn watchdog_socket(&self, node: &str) -> PathBuf {
        self.node_run_dir(node).join("watchdog.sock")
    }

    /// While this file exists, the node's emulated watchdog has `nowayout`: the magic close does not
    /// stop it (clusterd's lab backend reads the same file, `cluster_host::lab_nowayout_marker`, as
    /// it reads sysfs for a Linux device).
    pub fn watchdog_nowayout(&self, node: &str) -> PathBuf {
        self.node_run_dir(node).join("watchdog.sock.nowayout")
    }

    /// The local `clusterd` socket of a node.
    pub fn clusterd_socket(&self, node: &str) -> PathBuf {
        self.node_run_dir(node).join("clusterd.sock")
    }

    /// The PKI folder (CA, node and admin certificates).
    pub fn pki_dir(&self) -> PathBuf {
        self.var_dir().join("pki")
    }

    /// Fault log, JSON lines with the shared monotonic clock.
    pub fn fault_log(&self) -> PathBuf {
        self.run_dir().join("faults.jsonl")
    }

    /// A node's `clusterd` data dir: the mount point of its data filesystem.
    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.var_dir().join(node).join("data")
    }

    /// The sparse image behind a node's data filesystem.
    pub fn data_image(&self, node: &str) -> PathBuf {
        self.var_dir().join(node).join("data.img")
    }

    /// Present while the node's data filesystem is stalled (frozen) by [`Lab::stall_disk`].
    pub fn disk_stalled_marker(&self, node: &str) -> PathBuf {
        self.node_run_dir(node).join("disk.stalled")
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
        .collect();
    found.sort_by_key(|path| path.as_os_str().len());
    found.into_iter().next().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    paths: LabPaths,
    state: LabState,
}

/// Tears a lab down when dropped (also while a test panics).
#[derive(Debug)]
pub struct LabGuard {
    name: String,
}

impl LabGuard {
    /// Guards the lab `name`.
    pub fn new(name: &str) -> LabGuard {
        LabGuard { name: name.to_string() }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(error) = Lab::down(&self.name) {
            eprintln!("clusterlab: {error}");
        }
    }
}

/// Namespaces and cgroup a command joins before `exec`.
struct Join {
    cgroup_procs: Option<File>,
    netns: Option<File>,
    mntns: Option<File>,
    new_session: bool,
}

fn open_path(path: &Path, write: bool) -> Result<File, SysError> {
    OpenOptions::new().read(!write).write(write).open(path).map_err(|error| io_error("failed to open", path, error))
}

fn attach(command: &mut Command, join: Join) {
    let Join { cgroup_procs, netns, mntns, new_session } = join;
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe system calls
    // (write, setns, chdir, setsid) on file descriptors opened before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if let Some(file) = &cgroup_procs {
                if libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(file) = &netns {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(file) = &mntns {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if new_session {
                libc::setsid();
            }
            Ok(())
        });
    }
}

fn write_file(path: &Path, contents: &str) -> Result<(), SysError> {
    fs::write(path, contents).map_err(|error| io_error("failed to write", path, error))
}

fn create_dir(path: &Path) -> Result<(), SysError> {
    fs::create_dir_all(path).map_err(|error| io_error("failed to create", path, error))
}

fn cgroup_populated(cgroup: &Path) -> bool {
    fs::read_to_string(cgroup.join("cgroup.events"))
        .map(|events| events.lines().any(|line| line == "populated 1"))
        .unwrap_or(false)
}

/// Kills every process in a cgroup (and below) and waits until it is empty.
fn kill_cgroup(cgroup: &Path) -> Result<(), SysError> {
    if !cgroup.exists() {
        return Ok(());
    }
    write_file(&cgroup.join("cgroup.kill"), "1")?;
    if !sys::wait_until(Duration::from_secs(10), || !cgroup_populated(cgroup)) {
        return Err(SysError::Failed {
            command: format!("kill cgroup {}", cgroup.display()),
            status: "timeout".into(),
            stderr: "processes still alive after 10 s".into(),
        });
    }
    Ok(())
}

/// Every pid in a cgroup and its descendants.
pub(crate) fn cgroup_pids(cgroup: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![cgroup.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|line| line.parse::<i32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().map(|kind| kind.is_dir()).unwrap_or(false) {
                    stack.push(entry.path());
                }
            }
        }
    }
    pids
}

fn remove_cgroup_tree(cgroup: &Path, errors: &mut Vec<String>) {
    if let Ok(entries) = fs::read_dir(cgroup) {
        for entry in entries.flatten() {
            if entry.file_type().map(|kind| kind.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&entry.path(), errors);
            }
        }
    }
    if let Err(error) = fs::remove_dir(cgroup) {
        if error.kind() != std::io::ErrorKind::NotFound {
            errors.push(format!("failed to remove cgroup {}: {error}", cgroup.display()));
        }
    }
}

/// Loop devices whose backing file lies under `dir`.
pub fn loop_devices_under(dir: &Path) -> Vec<String> {
    let mut devices = Vec::new();
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return devices;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) {
            let backing = backing.trim().trim_end_matches(" (deleted)");
            if Path::new(backing).starts_with(dir) {
                devices.push(format!("/dev/{name}"));
            }
        }
    }
    devices
}

/// Network namespaces whose name starts with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

/// Mount points (of this mount namespace) under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4).map(PathBuf::from))
        .filter(|mount_point| mount_point.starts_with(dir))
        .collect()
}

fn append_fault(paths: &LabPaths, fault: &str, target: &str, detail: &str) {
    let t_ns = sys::now_ns();
    let record = crate::history::Record {
        t_ns,
        prev_t_ns: t_ns,
        node: target.to_string(),
        kind: crate::history::Kind::Fault,
        resource: if detail.is_empty() { fault.to_string() } else { format!("{fault} {detail}") },
        active: true,
    };
    if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(paths.fault_log()) {
        let _ = writeln!(file, "{}", serde_json::to_string(&record).expect("record serializes"));
    }
}

/// Appends a fault record (on the shared monotonic clock) to the lab's fault log.
pub fn record_fault(paths: &LabPaths, fault: &str, node: &str) {
    append_fault(paths, fault, node, "");
}

impl Lab {
    /// Brings a lab up; on any failure everything created so far is removed.
    pub fn up(spec: &LabSpec) -> Result<Lab, LabError> {
        let paths = LabPaths::new(&spec.name)?;
        if paths.run_dir().exists() || paths.cgroup().exists() || !netns_with_prefix(&paths.netns_prefix()).is_empty() {
            return Err(LabError::Exists(spec.name.clone()));
        }
        let mut nodes = Vec::new();
        for index in 1..=(spec.voters + spec.learners) {
            nodes.push(NodeState {
                name: format!("n{index}"),
                address: Ipv4Addr::new(192, 0, 2, 10 + index as u8),
                role: if index <= spec.voters { Role::Voter } else { Role::Learner },
                powered: false,
                holder_pid: None,
                daemon_pid: None,
                data_disk: None,
            });
        }
        let mut lab = Lab {
            paths,
            state: LabState {
                name: spec.name.clone(),
                nodes,
                daemon: spec.daemon.clone(),
                lun: None,
                partition: None,
                supervisor_pid: None,
                reboot_delay_ms: spec.reboot_delay.as_millis() as u64,
                other_clusterd: spec.other_clusterd.clone(),
                witnesses: spec.witnesses.clone(),
                joining: spec.joining.clone(),
                raft: spec.raft,
            },
        };
        if spec.voters + spec.learners == 0 || spec.voters + spec.learners > 180 {
            return Err(LabError::Daemon { node: "-".into(), reason: "a lab has 1 to 180 nodes".into() });
        }
        match lab.build(spec) {
            Ok(()) => Ok(lab),
            Err(error) => {
                if let Err(teardown) = Lab::down(&spec.name) {
                    eprintln!("clusterlab: {teardown}");
                }
                Err(error)
            }
        }
    }

    fn build(&mut self, spec: &LabSpec) -> Result<(), LabError> {
        let paths = self.paths.clone();
        create_dir(&paths.run_dir())?;
        create_dir(&paths.var_dir())?;
        self.save()?;
        for member in ["supervisor", "client"] {
            create_dir(&paths.cgroup().join(member))?;
        }
        // The switch.
        let switch = paths.netns("sw");
        sys::ip(&["netns", "add", &switch])?;
        sys::ip(&["-n", &switch, "link", "add", "name", "br0", "type", "bridge"])?;
        sys::ip(&["-n", &switch, "link", "set", "dev", "br0", "up"])?;
        // Members: every node and the client.
        let mut members: Vec<(String, Ipv4Addr)> =
            self.state.nodes.iter().map(|node| (node.name.clone(), node.address)).collect();
        members.push(("client".into(), CLIENT_ADDRESS));
        for (member, address) in &members {
            create_dir(&paths.cgroup().join(member))?;
            create_dir(&paths.node_run_dir(member))?;
            let netns = paths.netns(member);
            sys::ip(&["netns", "add", &netns])?;
            sys::ip(&[
                "-n", &switch, "link", "add", "name", member, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ])?;
            sys::ip(&["-n", &switch, "link", "set", "dev", member, "master", "br0", "up"])?;
            sys::ip(&["-n", &netns, "link", "set", "dev", "lo", "up"])?;
            if member == "client" {
                sys::ip(&["-n", &netns, "link", "set", "dev", "eth0", "up"])?;
                sys::ip(&["-n", &netns, "addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
            }
        }
        if spec.lun_mib > 0 {
            self.create_lun(spec.lun_mib)?;
        }
        if let Daemon::Clusterd { clusterctl, .. } = &self.state.daemon {
            self.issue_certificates(clusterctl)?;
            // Before any node's mount namespace exists: each one starts as a copy of the host's, with every
            // data filesystem in it.
            for name in self.node_names() {
                self.create_data_disk(&name)?;
            }
        }
        if spec.watchdog {
            self.start_supervisor(spec.tool.clone())?;
        }
        let names: Vec<String> = self.node_names();
        for name in &names {
            self.power_on_inner(name)?;
        }
        if matches!(self.state.daemon, Daemon::Clusterd { .. }) {
            self.form_cluster()?;
        }
        self.save()?;
        Ok(())
    }

    /// Opens a lab that is up (reads its state file).
    pub fn open(name: &str) -> Result<Lab, LabError> {
        let paths = LabPaths::new(name)?;
        let path = paths.run_dir().join("state.json");
        let text = fs::read_to_string(&path).map_err(|_| LabError::NotUp(name.to_string()))?;
        let state: LabState = serde_json::from_str(&text).map_err(|source| LabError::State { path, source })?;
        Ok(Lab { paths, state })
    }

    /// Re-reads the state file (another process may have changed it, e.g. the supervisor after a reset).
    pub fn reload(&mut self) -> Result<(), LabError> {
        *self = Lab::open(&self.state.name)?;
        Ok(())
    }

    fn save(&self) -> Result<(), LabError> {
        let path = self.paths.run_dir().join("state.json");
        let temporary = self.paths.run_dir().join("state.json.tmp");
        let text = serde_json::to_string_pretty(&self.state).expect("lab state serializes");
        write_file(&temporary, &text)?;
        fs::rename(&temporary, &path).map_err(|error| io_error("failed to rename", &path, error))?;
        Ok(())
    }

    /// Removes every namespace, mount, loop device, cgroup, process and folder of the lab `name`. Works without
    /// a state file (a crashed run), tries every step, safe to run twice.
    pub fn down(name: &str) -> Result<(), LabError> {
        let paths = LabPaths::new(name)?;
        let mut errors = Vec::new();
        // Frozen filesystems (stalled disks) first: a process blocked writing to one cannot die, and the
        // unmount of a frozen filesystem would hang. A mount that could not be thawed is not unmounted.
        let mut still_frozen = Vec::new();
        for dir in [paths.run_dir(), paths.var_dir()] {
            for mount in mounts_under(&dir) {
                if let Err(error) = sys::thaw_filesystem(&mount) {
                    errors.push(error.to_string());
                    still_frozen.push(mount);
                }
            }
        }
        // Processes: the lab cgroup holds every process the lab started (nodes, client, supervisor).
        let cgroup = paths.cgroup();
        if let Err(error) = kill_cgroup(&cgroup) {
            errors.push(error.to_string());
        }
        remove_cgroup_tree(&cgroup, &mut errors);
        // Host mounts under the lab folders: the nodes' data filesystems (and whatever a crashed tool left).
        for dir in [paths.run_dir(), paths.var_dir()] {
            let mut mounts = mounts_under(&dir);
            mounts.sort_by_key(|mount| std::cmp::Reverse(mount.as_os_str().len()));
            for mount in mounts.into_iter().filter(|mount| !still_frozen.contains(mount)) {
                if let Err(error) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
                    errors.push(format!("failed to unmount {}: {error}", mount.display()));
                    continue;
                }
                // Every mount namespace made while the lab was up (each node's, of this lab and of any other lab
                // on the host) holds a copy of the mount, which the host's unmount does not reach (the host's `/`
                // does not propagate) and which would keep the filesystem and its loop device in use. Removing
                // the mount point detaches those copies in every namespace.
                let _ = fs::remove_dir(&mount);
            }
        }
        for device in loop_devices_under(&paths.var_dir()) {
            if let Err(error) = sys::run(Command::new("losetup").args(["-d", &device])) {
                errors.push(error.to_string());
            }
        }
        // `losetup -d` of a device still in use (its filesystem still open somewhere, so the lazy unmount is not
        // complete) only marks it to detach once released: say so rather than leave it silently.
        if !sys::wait_until(Duration::from_secs(2), || loop_devices_under(&paths.var_dir()).is_empty()) {
            for device in loop_devices_under(&paths.var_dir()) {
                errors.push(format!(
                    "loop device {device} is still in use (a file on it is open): it detaches when released"
                ));
            }
        }
        for netns in netns_with_prefix(&paths.netns_prefix()) {
            if let Err(error) = sys::ip(&["netns", "del", &netns]) {
                errors.push(error.to_string());
            }
        }
        for dir in [paths.run_dir(), paths.var_dir()] {
            // Removing files inside a filesystem that is still frozen would block for ever.
            if still_frozen.iter().any(|mount| mount.starts_with(&dir)) {
                errors.push(format!("kept {}: a filesystem in it is still frozen", dir.display()));
                continue;
            }
            if let Err(error) = fs::remove_dir_all(&dir) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    errors.push(format!("failed to remove {}: {error}", dir.display()));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(LabError::Teardown { lab: name.to_string(), errors })
        }
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The lab's paths.
    pub fn paths(&self) -> &LabPaths {
        &self.paths
    }

    /// The lab's recorded state.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// Names of every node.
    pub fn node_names(&self) -> Vec<String> {
        self.state.nodes.iter().map(|node| node.name.clone()).collect()
    }

    /// One node's record.
    pub fn node(&self, name: &str) -> Result<&NodeState, LabError> {
        self.state
            .nodes
            .iter()
            .find(|node| node.name == name)
            .ok_or_else(|| LabError::UnknownNode { lab: self.state.name.clone(), node: name.to_string() })
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut NodeState, LabError> {
        let lab = self.state.name.clone();
        self.state
            .nodes
            .iter_mut()
            .find(|node| node.name == name)
            .ok_or(LabError::UnknownNode { lab, node: name.to_string() })
    }

    fn join_for(&self, member: &str, mount: bool, new_session: bool) -> Result<Join, LabError> {
        let netns = open_path(&Path::new("/run/netns").join(self.paths.netns(member)), false)?;
        let cgroup_procs = open_path(&self.paths.cgroup().join(member).join("cgroup.procs"), true)?;
        let mntns = if mount {
            let holder = self
                .node(member)?
                .holder_pid
                .filter(|pid| sys::pid_alive(*pid))
                .ok_or_else(|| LabError::PoweredOff(member.to_string()))?;
            Some(open_path(Path::new(&format!("/proc/{holder}/ns/mnt")), false)?)
        } else {
            None
        };
        Ok(Join { cgroup_procs: Some(cgroup_procs), netns: Some(netns), mntns, new_session })
    }

    fn clusterctl_path(&self) -> Option<&Path> {
        match &self.state.daemon {
            Daemon::Clusterd { clusterctl, .. } => Some(clusterctl),
            _ => None,
        }
    }

    /// A command that runs inside node `node` (its cgroup, network and mount namespaces), with
    /// `CLUSTERCTL_SOCKET` set and the folder of `clusterctl` first on `PATH`.
    pub fn node_command(&self, node: &str, argv: &[String]) -> Result<Command, LabError> {
        let record = self.node(node)?;
        if !record.powered {
            return Err(LabError::PoweredOff(node.to_string()));
        }
        let join = self.join_for(node, true, false)?;
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        command.env("CLUSTERCTL_SOCKET", self.paths.clusterd_socket(node));
        if let Some(directory) = self.clusterctl_path().and_then(Path::parent) {
            let path = std::env::var("PATH").unwrap_or_default();
            command.env("PATH", format!("{}:{path}", directory.display()));
        }
        attach(&mut command, join);
        Ok(command)
    }

    /// A command that runs in the client namespace (cgroup `client`).
    pub fn client_command(&self, argv: &[String]) -> Result<Command, LabError> {
        let join = self.join_for("client", false, false)?;
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        attach(&mut command, join);
        Ok(command)
    }

    /// `clusterctl` in the client namespace talking to `endpoint` over mutual TLS with the admin certificate.
    pub fn remote_clusterctl(&self, endpoint: Ipv4Addr, args: &[&str]) -> Result<Command, LabError> {
        let clusterctl = self.clusterctl_path().ok_or_else(|| LabError::NoDaemon("client".into()))?;
        let pki = self.paths.pki_dir();
        let mut argv: Vec<String> = vec![
            clusterctl.display().to_string(),
            "--endpoint".into(),
            format!("{endpoint}:{CLUSTERD_PORT}"),
            "--ca".into(),
            pki.join("ca.crt").display().to_string(),
            "--cert".into(),
            pki.join("admin.crt").display().to_string(),
            "--key".into(),
            pki.join("admin.key").display().to_string(),
        ];
        argv.extend(args.iter().map(|arg| arg.to_string()));
        self.client_command(&argv)
    }

    fn spawn_detached(&self, member: &str, mount: bool, mut command: Command, log: &Path) -> Result<i32, LabError> {
        let join = self.join_for(member, mount, true)?;
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|error| io_error("failed to open", log, error))?;
        let log_err = log_file.try_clone().map_err(|error| io_error("failed to open", log, error))?;
        command.stdin(Stdio::null()).stdout(log_file).stderr(log_err);
        attach(&mut command, join);
        let mut child = command.spawn().map_err(|source| SysError::Spawn {
            program: command.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        let pid = child.id() as i32;
        // Reap it whenever it exits, so no zombie outlives it in this process.
        std::thread::spawn(move || child.wait());
        Ok(pid)
    }

    fn power_on_inner(&mut self, node: &str) -> Result<(), LabError> {
        let address = self.node(node)?.address;
        // A machine powers on with a working disk (`kill` thawed it; this covers a stall injected through a stale
        // view of the lab while the node was off).
        self.thaw_disk(node)?;
        let netns = self.paths.netns(node);
        sys::ip(&["-n", &netns, "link", "set", "dev", "lo", "up"])?;
        sys::ip(&["-n", &netns, "link", "set", "dev", "eth0", "up"])?;
        sys::ip(&["-n", &netns, "addr", "replace", &format!("{address}/24"), "dev", "eth0"])?;
        // The holder owns the node's mount namespace; every node process joins it. Like a machine,
        // the node gets its own `/run/resource-agents` (OCF agents keep their state there, e.g.
        // `ocf:heartbeat:Stateful`), empty at every power on.
        create_dir(Path::new(RESOURCE_AGENTS_RUN))?;
        let mut holder = Command::new("unshare");
        holder.args([
            "--mount",
            "--propagation",
            "slave",
            "sh",
            "-c",
            &format!("mount -t tmpfs -o mode=0755,size=16m clusterlab {RESOURCE_AGENTS_RUN} && exec sleep infinity"),
        ]);
        let log = self.paths.node_run_dir(node).join("holder.log");
        let holder_pid = self.spawn_detached(node, false, holder, &log)?;
        let own_mnt = fs::read_link("/proc/self/ns/mnt").ok();
        let unshared = sys::wait_until(Duration::from_secs(5), || {
            let theirs = fs::read_link(format!("/proc/{holder_pid}/ns/mnt")).ok();
            theirs.is_some() && theirs != own_mnt && sys::pid_comm(holder_pid).as_deref() == Some("sleep")
        });
        if !unshared {
            return Err(LabError::Timeout(format!("the mount namespace of node {node}")));
        }
        write_file(&self.paths.node_run_dir(node).join("holder.pid"), &holder_pid.to_string())?;
        {
            let record = self.node_mut(node)?;
            record.powered = true;
            record.holder_pid = Some(holder_pid);
            record.daemon_pid = None;
        }
        self.start_daemon_inner(node)?;
        Ok(())
    }

    fn start_daemon_inner(&mut self, node: &str) -> Result<(), LabError> {
        let pid = match self.state.daemon.clone() {
            Daemon::None => return Ok(()),
            // A joining node has no node file until `clusterctl join` wrote it.
            Daemon::Clusterd { .. }
                if self.joining(node) && !self.paths.join_dir(node).join("clusterd.toml").exists() =>
            {
                return Ok(())
            }
            Daemon::Clusterd { clusterd, watchdog, .. } => self.start_clusterd(node, &clusterd, watchdog)?,
            Daemon::Keepalived(config) => self.start_keepalived(node, &config)?,
        };
        self.node_mut(node)?.daemon_pid = Some(pid);
        write_file(&self.paths.node_run_dir(node).join("daemon.pid"), &pid.to_string())?;
        Ok(())
    }

    /// Runs `other` as `node`'s `clusterd` from its next start on (`None`: the lab's again); the
    /// upgrade test upgrades a node this way, then restarts its daemon.
    pub fn set_clusterd(&mut self, node: &str, other: Option<OtherClusterd>) -> Result<(), LabError> {
        self.node(node)?;
        match other {
            Some(other) => self.state.other_clusterd.insert(node.to_owned(), other),
            None => self.state.other_clusterd.remove(node),
        };
        self.save()
    }

    fn joining(&self, node: &str) -> bool {
        self.state.joining.iter().any(|joining| joining == node)
    }

    fn start_clusterd(&self, node: &str, clusterd: &Path, watchdog: bool) -> Result<i32, LabError> {
        let record = self.node(node)?;
        let other = self.state.other_clusterd.get(node);
        let clusterd = other.map_or(clusterd, |other| other.clusterd.as_path());
        let run_dir = self.paths.node_run_dir(node);
        if self.joining(node) {
            // The node file `clusterctl join` wrote, as it is.
            return self.spawn_clusterd(node, clusterd, &self.paths.join_dir(node).join("clusterd.toml"));
        }
        // The mount point of the node's data filesystem (made by `up`).
        let data_dir = self.paths.data_dir(node);
        create_dir(&data_dir)?;
        let pki = self.paths.pki_dir();
        let mut config = format!(
            "node = \"{node}\"\nlisten = \"{}:{CLUSTERD_PORT}\"\ndata_dir = \"{}\"\nsocket = \"{}\"\n\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            record.address,
            data_dir.display(),
            self.paths.clusterd_socket(node).display(),
            pki.join("ca.crt").display(),
            pki.join(format!("{node}.crt")).display(),
            pki.join(format!("{node}.key")).display(),
        );
        // Metrics and the status page on the node's own loopback (each node has its own network
        // namespace): reachable only from inside the node, e.g. a browser run with `exec`. v0.1.0
        // had neither key.
        if other.is_none_or(|other| other.release != "0.1.0") {
            config.insert_str(0, &format!("metrics = \"{LAB_METRICS}\"\nstatus_page = true\n"));
            // Every node the lab made holds the CA key: nodes joining with a token may redeem it anywhere.
            config = config.replace("[tls]\n", &format!("[tls]\nca_key = \"{}\"\n", pki.join("ca.key").display()));
            if let Some(raft) = self.state.raft {
                config.insert_str(
                    0,
                    &format!(
                        "raft = {{ heartbeat = \"{}ms\", election_timeout = \"{}ms\" }}\n",
                        raft.heartbeat_ms, raft.election_timeout_ms
                    ),
                );
            }
        }
        if self.state.witnesses.iter().any(|witness| witness == node) {
            config.insert_str(0, "role = \"witness\"\n");
        }
        if watchdog {
            config
                .push_str(&format!("\n[watchdog]\ndevice = \"lab:{}\"\n", self.paths.watchdog_socket(node).display()));
        }
        let config_path = run_dir.join("clusterd.toml");
        write_file(&config_path, &config)?;
        self.spawn_clusterd(node, clusterd, &config_path)
    }

    /// Starts `clusterd --config CONFIG_PATH` in `node` and waits for its READY=1.
    fn spawn_clusterd(&self, node: &str, clusterd: &Path, config_path: &Path) -> Result<i32, LabError> {
        let run_dir = self.paths.node_run_dir(node);
        let notify_path = run_dir.join("notify.sock");
        let _ = fs::remove_file(&notify_path);
        let notify =
            UnixDatagram::bind(&notify_path).map_err(|error| io_error("failed to bind", &notify_path, error))?;
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|error| io_error("failed to configure", &notify_path, error))?;
        let mut command = Command::new(clusterd);
        command.arg("--config").arg(config_path).env("NOTIFY_SOCKET", &notify_path);
        let log = run_dir.join("clusterd.log");
        let pid = self.spawn_detached(node, true, command, &log)?;
        let mut buffer = [0u8; 512];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(length) = notify.recv(&mut buffer) {
                if String::from_utf8_lossy(&buffer[..length]).lines().any(|line| line == "READY=1") {
                    break;
                }
            }
            if !sys::pid_alive(pid) {
                return Err(LabError::Daemon {
                    node: node.to_string(),
                    reason: format!("clusterd exited; see {}", log.display()),
                });
            }
            if std::time::Instant::now() > deadline {
                return Err(LabError::Timeout(format!("READY=1 from clusterd on node {node}")));
            }
        }
        let _ = fs::remove_file(&notify_path);
        Ok(pid)
    }

    fn start_keepalived(&self, node: &str, config: &KeepalivedConfig) -> Result<i32, LabError> {
        let index = self.state.nodes.iter().position(|record| record.name == node).unwrap_or(0);
        let run_dir = self.paths.node_run_dir(node);
        let text = crate::keepalived::config_text(node, index, config);
        let config_path = run_dir.join("keepalived.conf");
        write_file(&config_path, &text)?;
        // Pid files of an instance that died with its node make keepalived refuse to start.
        for pid_file in ["keepalived.pid", "keepalived-vrrp.pid", "keepalived-checkers.pid", "keepalived-bfd.pid"] {
            let _ = fs::remove_file(run_dir.join(pid_file));
        }
        let mut command = Command::new("keepalived");
        command
            .args(["--dont-fork", "--log-console", "--vrrp", "--use-file"])
            .arg(&config_path)
            .arg("--pid")
            .arg(run_dir.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(run_dir.join("keepalived-vrrp.pid"))
            .arg("--checkers_pid")
            .arg(run_dir.join("keepalived-checkers.pid"))
            .arg("--bfd_pid")
            .arg(run_dir.join("keepalived-bfd.pid"));
        let log = run_dir.join("keepalived.log");
        let pid = self.spawn_detached(node, true, command, &log)?;
        Ok(pid)
    }

    fn issue_certificates(&self, clusterctl: &Path) -> Result<(), LabError> {
        let pki = self.paths.pki_dir();
        create_dir(&pki)?;
        sys::run(Command::new(clusterctl).args(["ca", "init", "--dir"]).arg(&pki))?;
        for node in self.state.nodes.iter().filter(|node| !self.joining(&node.name)) {
            sys::run(Command::new(clusterctl).args(["ca", "issue", &node.name, "--dir"]).arg(&pki).args([
                "--ip",
                &node.address.to_string(),
                "--dns",
                &node.name,
            ]))?;
        }
        sys::run(Command::new(clusterctl).args(["ca", "issue", "admin", "--dir"]).arg(&pki))?;
        Ok(())
    }

    /// Runs `clusterctl ARGS…` on a node through its local socket; returns stdout.
    pub fn clusterctl(&self, node: &str, args: &[&str]) -> Result<String, LabError> {
        let clusterctl = self.clusterctl_path().ok_or_else(|| LabError::NoDaemon(node.to_string()))?;
        let mut argv = vec![clusterctl.display().to_string()];
        argv.extend(args.iter().map(|arg| arg.to_string()));
        let mut command = self.node_command(node, &argv)?;
        Ok(sys::run(&mut command)?)
    }

    fn form_cluster(&self) -> Result<(), LabError> {
        let first = self.state.nodes[0].name.clone();
        self.clusterctl(&first, &["cluster", "init"])?;
        for node in self.state.nodes[1..].iter().filter(|node| !self.joining(&node.name)) {
            let endpoint = format!("{}:{CLUSTERD_PORT}", node.address);
            let mut args = vec!["node", "add", node.name.as_str(), endpoint.as_str()];
            if node.role == Role::Learner {
                args.push("--learner");
            }
            // A membership change can race the previous one; retry for a while.
            let mut last_error = None;
            let added = sys::wait_until(Duration::from_secs(30), || match self.clusterctl(&first, &args) {
                Ok(_) => true,
                Err(error) => {
                    last_error = Some(error);
                    std::thread::sleep(Duration::from_millis(200));
                    false
                }
            });
            if !added {
                return Err(last_error.unwrap_or_else(|| LabError::Timeout(format!("adding node {}", node.name))));
            }
        }
        let total = self.state.nodes.iter().filter(|node| !self.joining(&node.name)).count();
        let formed = sys::wait_until(Duration::from_secs(30), || {
            self.cluster_status(&first)
                .map(|status| status["leader"].is_string() && status["nodes"].as_array().map(Vec::len) == Some(total))
                .unwrap_or(false)
        });
        if !formed {
            return Err(LabError::Timeout("the cluster to form".into()));
        }
        Ok(())
    }

    /// `clusterctl status --output json` on a node, parsed.
    pub fn cluster_status(&self, node: &str) -> Result<serde_json::Value, LabError> {
        let text = self.clusterctl(node, &["status", "--output", "json"])?;
        serde_json::from_str(&text)
            .map_err(|source| LabError::State { path: PathBuf::from(format!("clusterctl status on {node}")), source })
    }

    /// The current leader as seen by any reachable, powered node.
    pub fn leader(&self) -> Option<String> {
        self.state.nodes.iter().filter(|node| node.powered).find_map(|node| {
            self.cluster_status(&node.name).ok().and_then(|status| status["leader"].as_str().map(String::from))
        })
    }

    fn create_lun(&mut self, mib: u64) -> Result<(), LabError> {
        let image = self.paths.var_dir().join("lun.img");
        let file = File::create(&image).map_err(|error| io_error("failed to create", &image, error))?;
        file.set_len(mib * 1024 * 1024).map_err(|error| io_error("failed to size", &image, error))?;
        let device = sys::run(Command::new("losetup").args(["--find", "--show"]).arg(&image))?.trim().to_string();
        self.state.lun = Some(device.clone());
        self.save()?;
        sys::run(Command::new("mkfs.ext4").args(["-q", "-F", "-L", &format!("cl-{}", self.state.name), &device]))?;
        Ok(())
    }

    /// The node's data filesystem: a sparse image, a loop device, ext4 (no label: a truncated one could equal
    /// the LUN's `cl-LAB`), mounted at the node's data dir in the host's mount namespace.
    fn create_data_disk(&mut self, node: &str) -> Result<(), LabError> {
        let image = self.paths.data_image(node);
        let mount_point = self.paths.data_dir(node);
        create_dir(&mount_point)?;
        let file = File::create(&image).map_err(|error| io_error("failed to create", &image, error))?;
        file.set_len(DATA_DISK_MIB * 1024 * 1024).map_err(|error| io_error("failed to size", &image, error))?;
        let device = sys::run(Command::new("losetup").args(["--find", "--show"]).arg(&image))?.trim().to_string();
        self.node_mut(node)?.data_disk = Some(device.clone());
        self.save()?;
        // 4 KiB blocks as on a real disk, few inodes (a handful of files), and no lazy initialisation, so no
        // background thread writes to the disk later (a stall would block it, and it would skew timings).
        sys::run(Command::new("mkfs.ext4").args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-N",
            "4096",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            &device,
        ]))?;
        nix::mount::mount(
            Some(device.as_str()),
            &mount_point,
            Some("ext4"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| SysError::Failed {
            command: format!("mount {device} {} (data filesystem of node {node})", mount_point.display()),
            status: "error".into(),
            stderr: errno.desc().to_string(),
        })?;
        Ok(())
    }

    fn start_supervisor(&mut self, tool: Option<PathBuf>) -> Result<(), LabError> {
        let tool = match tool {
            Some(tool) => tool,
            None => {
                std::env::current_exe().map_err(|error| io_error("failed to find", Path::new("clusterlab"), error))?
            }
        };
        let mut command = Command::new(tool);
        command.args(["--name", &self.state.name, "supervise"]);
        let log = self.paths.run_dir().join("supervisor.log");
        let join = Join {
            cgroup_procs: Some(open_path(&self.paths.cgroup().join("supervisor").join("cgroup.procs"), true)?),
            netns: None,
            mntns: None,
            new_session: true,
        };
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|error| io_error("failed to open", &log, error))?;
        let log_err = log_file.try_clone().map_err(|error| io_error("failed to open", &log, error))?;
        command.stdin(Stdio::null()).stdout(log_file).stderr(log_err);
        attach(&mut command, join);
        let mut child =
            command.spawn().map_err(|source| SysError::Spawn { program: "clusterlab supervise".into(), source })?;
        self.state.supervisor_pid = Some(child.id() as i32);
        std::thread::spawn(move || child.wait());
        self.save()?;
        // The node sockets exist once the supervisor serves them.
        let names = self.node_names();
        let paths = self.paths.clone();
        let served =
            sys::wait_until(Duration::from_secs(10), || names.iter().all(|name| paths.watchdog_socket(name).exists()));
        if !served {
            return Err(LabError::Timeout("the watchdog supervisor".into()));
        }
        Ok(())
    }

    /// Gives the emulated watchdog of `node` the `nowayout` property, or takes it away.
    pub fn set_watchdog_nowayout(&self, node: &str, nowayout: bool) -> Result<(), LabError> {
        self.node(node)?;
        let marker = self.paths.watchdog_nowayout(node);
        if nowayout {
            Ok(write_file(&marker, "1\n")?)
        } else {
            match std::fs::remove_file(&marker) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    Err(io_error("failed to remove", &marker, error).into())
                }
                _ => Ok(()),
            }
        }
    }

    // ---- faults ----

    /// Power loss: every process of the node killed, its link down and its addresses gone.
    pub fn kill(&mut self, node: &str) -> Result<(), LabError> {
        self.node(node)?;
        append_fault(&self.paths, "kill", node, "");
        let cgroup = self.paths.cgroup().join(node);
        write_file(&cgroup.join("cgroup.kill"), "1")?;
        let netns = self.paths.netns(node);
        sys::ip(&["-n", &netns, "link", "set", "dev", "eth0", "down"])?;
        // A powered-off machine has no addresses: flush before waiting for the cgroup to empty,
        // which can take seconds on a loaded host (the observer would count a dead node's VIP).
        sys::ip(&["-n", &netns, "addr", "flush", "dev", "eth0"])?;
        // A powered-off machine has no stalled disk either, and a process blocked on a frozen filesystem cannot
        // die: thaw after the kill was sent (what was blocked completes into the page cache, as a write the disk
        // took just before the power went), before waiting for the cgroup to empty.
        self.thaw_disk(node)?;
        kill_cgroup(&cgroup)?;
        let record = self.node_mut(node)?;
        record.powered = false;
        record.holder_pid = None;
        record.daemon_pid = None;
        self.save()
    }

    /// Powers a node on (link up, address, mount namespace, daemon). No-op when it is on.
    pub fn start(&mut self, node: &str) -> Result<(), LabError> {
        if self.node(node)?.powered {
            return Ok(());
        }
        append_fault(&self.paths, "start", node, "");
        self.power_on_inner(node)?;
        self.save()
    }

    /// Power cycle: `kill` then `start`.
    pub fn restart(&mut self, node: &str) -> Result<(), LabError> {
        if self.node(node)?.powered {
            self.kill(node)?;
        }
        self.start(node)
    }

    fn daemon_pids(&self, node: &str) -> Result<Vec<i32>, LabError> {
        let record = self.node(node)?;
        if !record.powered {
            return Err(LabError::PoweredOff(node.to_string()));
        }
        let pid =
            record.daemon_pid.filter(|pid| sys::pid_alive(*pid)).ok_or_else(|| LabError::NoDaemon(node.to_string()))?;
        // The daemon and its children of the same name (keepalived forks its VRRP process); resources that the
        // daemon started have other names and stay.
        let comm = sys::pid_comm(pid);
        let mut pids = vec![pid];
        for candidate in cgroup_pids(&self.paths.cgroup().join(node)) {
            if candidate == pid || sys::pid_comm(candidate) != comm {
                continue;
            }
            let parent = fs::read_to_string(format!("/proc/{candidate}/stat")).ok().and_then(|stat| {
                let end = stat.rfind(')')?;
                stat[end + 1..].split_whitespace().nth(1)?.parse::<i32>().ok()
            });
            if parent == Some(pid) {
                pids.push(candidate);
            }
        }
        Ok(pids)
    }

    /// Kills only the daemon (SIGKILL); what it started stays.
    pub fn kill_daemon(&mut self, node: &str) -> Result<(), LabError> {
        let pids = self.daemon_pids(node)?;
        append_fault(&self.paths, "kill-daemon", node, "");
        for pid in &pids {
            sys::signal(*pid, Signal::SIGKILL)?;
        }
        sys::wait_until(Duration::from_secs(5), || pids.iter().all(|pid| !sys::pid_alive(*pid)));
        self.node_mut(node)?.daemon_pid = None;
        self.save()
    }

    /// Stops only the daemon the way `systemctl stop` does (SIGTERM), then waits up to `timeout` for it
    /// to exit; what it started and did not stop stays.
    pub fn stop_daemon(&mut self, node: &str, timeout: Duration) -> Result<(), LabError> {
        let pids = self.daemon_pids(node)?;
        append_fault(&self.paths, "stop-daemon", node, "");
        sys::signal(pids[0], Signal::SIGTERM)?;
        if !sys::wait_until(timeout, || !sys::pid_alive(pids[0])) {
            return Err(LabError::Timeout(format!("the daemon of node {node} to exit after SIGTERM")));
        }
        append_fault(&self.paths, "daemon-exited", node, "");
        self.node_mut(node)?.daemon_pid = None;
        self.save()
    }

    /// Starts the daemon again on a powered node (as systemd's `Restart=` would).
    pub fn start_daemon(&mut self, node: &str) -> Result<(), LabError> {
        let record = self.node(node)?;
        if !record.powered {
            return Err(LabError::PoweredOff(node.to_string()));
        }
        if record.daemon_pid.is_some_and(sys::pid_alive) {
            return Ok(());
        }
        append_fault(&self.paths, "start-daemon", node, "");
        self.start_daemon_inner(node)?;
        self.save()
    }

    /// SIGSTOP of the daemon.
    pub fn pause(&self, node: &str) -> Result<(), LabError> {
        let pids = self.daemon_pids(node)?;
        append_fault(&self.paths, "pause", node, "");
        for pid in pids {
            sys::signal(pid, Signal::SIGSTOP)?;
        }
        Ok(())
    }

    /// SIGCONT of the daemon.
    pub fn resume(&self, node: &str) -> Result<(), LabError> {
        let pids = self.daemon_pids(node)?;
        append_fault(&self.paths, "resume", node, "");
        for pid in pids {
            sys::signal(pid, Signal::SIGCONT)?;
        }
        Ok(())
    }

    fn apply_switch_rules(&self, pairs: &[(String, String)]) -> Result<(), LabError> {
        let mut ruleset = String::from(
            "table bridge clusterlab\ndelete table bridge clusterlab\ntable bridge clusterlab {\n  chain forward_filter {\n    type filter hook forward priority 0; policy accept;\n",
        );
        for (from, to) in pairs {
            // IP only: ARP still resolves, so a one-way partition stays one-way (as an IP-level firewall would).
            ruleset.push_str(&format!("    iifname \"{from}\" oifname \"{to}\" ether type {{ ip, ip6 }} drop\n"));
        }
        ruleset.push_str("  }\n}\n");
        let path = self.paths.run_dir().join("switch.nft");
        write_file(&path, &ruleset)?;
        sys::run(Command::new("ip").args(["netns", "exec", &self.paths.netns("sw"), "nft", "-f"]).arg(&path))?;
        Ok(())
    }

    /// Drops frames between the sides (both ways, or one way) at the switch; replaces any partition in force.
    pub fn partition(&mut self, partition: &Partition) -> Result<(), LabError> {
        for member in partition.members() {
            if member != "client" {
                self.node(member)?;
            }
        }
        append_fault(&self.paths, "partition", "", &partition.to_string());
        self.apply_switch_rules(&partition.dropped_pairs())?;
        self.state.partition = Some(partition.clone());
        self.save()
    }

    /// The mount point of a node's data filesystem, if the node has one mounted.
    fn data_mount(&self, node: &str) -> Result<Option<PathBuf>, LabError> {
        self.node(node)?;
        let mount_point = self.paths.data_dir(node);
        Ok(mounts_under(&mount_point).into_iter().any(|mount| mount == mount_point).then_some(mount_point))
    }

    /// Thaws the node's data filesystem if it is frozen; true when it was.
    fn thaw_disk(&self, node: &str) -> Result<bool, LabError> {
        let Some(mount_point) = self.data_mount(node)? else {
            return Ok(false);
        };
        let change = sys::thaw_filesystem(&mount_point)?;
        let _ = fs::remove_file(self.paths.disk_stalled_marker(node));
        Ok(change == sys::FreezeChange::Changed)
    }

    /// Stalls the node's disk: freezes its data filesystem (FIFREEZE), so every write and fsync of its
    /// `clusterd` blocks (reads still work) until [`Lab::resume_disk`] or a power loss ([`Lab::kill`]).
    /// Stalling a stalled disk does nothing.
    pub fn stall_disk(&self, node: &str) -> Result<(), LabError> {
        if !self.node(node)?.powered {
            return Err(LabError::PoweredOff(node.to_string()));
        }
        let mount_point = self.data_mount(node)?.ok_or_else(|| LabError::NoDataDisk(node.to_string()))?;
        append_fault(&self.paths, "stall-disk", node, "");
        sys::freeze_filesystem(&mount_point)?;
        write_file(&self.paths.disk_stalled_marker(node), "")?;
        Ok(())
    }

    /// Resumes a stalled disk (FITHAW): the blocked writes and fsyncs complete. Resuming a disk that is not
    /// stalled (never stalled, or thawed by a power loss) does nothing and records nothing.
    pub fn resume_disk(&self, node: &str) -> Result<(), LabError> {
        let mount_point = self.data_mount(node)?.ok_or_else(|| LabError::NoDataDisk(node.to_string()))?;
        let change = sys::thaw_filesystem(&mount_point)?;
        let _ = fs::remove_file(self.paths.disk_stalled_marker(node));
        if change == sys::FreezeChange::Changed {
            append_fault(&self.paths, "resume-disk", node, "");
        }
        Ok(())
    }

    /// Whether the node's disk is stalled by [`Lab::stall_disk`].
    pub fn disk_stalled(&self, node: &str) -> bool {
        self.paths.disk_stalled_marker(node).exists()
    }

    /// Removes any partition.
    pub fn heal(&mut self) -> Result<(), LabError> {
        append_fault(&self.paths, "heal", "", "");
        self.apply_switch_rules(&[])?;
        self.state.partition = None;
        self.save()
    }

    /// Takes the node's switch port down for `down_for`, then up again (the node sees carrier loss).
    pub fn flap(&self, node: &str, down_for: Duration) -> Result<(), LabError> {
        self.node(node)?;
        let switch = self.paths.netns("sw");
        append_fault(&self.paths, "flap", node, &format!("{} ms", down_for.as_millis()));
        sys::ip(&["-n", &switch, "link", "set", "dev", node, "down"])?;
        std::thread::sleep(down_for);
        sys::ip(&["-n", &switch, "link", "set", "dev", node, "up"])?;
        Ok(())
    }

    /// Adds `ms` of delay to everything the node sends (netem), or 0 to remove it.
    pub fn delay(&self, node: &str, ms: u64) -> Result<(), LabError> {
        self.node(node)?;
        let netns = self.paths.netns(node);
        if ms == 0 {
            let _ = sys::ip(&["netns", "exec", &netns, "tc", "qdisc", "del", "dev", "eth0", "root"]);
            return Ok(());
        }
        let result = sys::run(Command::new("ip").args([
            "netns",
            "exec",
            &netns,
            "tc",
            "qdisc",
            "replace",
            "dev",
            "eth0",
            "root",
            "netem",
            "delay",
            &format!("{ms}ms"),
        ]));
        match result {
            Ok(_) => {
                append_fault(&self.paths, "delay", node, &format!("{ms} ms"));
                Ok(())
            }
            Err(SysError::Failed { stderr, .. }) if stderr.contains("qdisc kind is unknown") => {
                Err(LabError::Unsupported("netem (the kernel lacks CONFIG_NET_SCH_NETEM)".into()))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The shared LUN's loop device, if the lab has one.
    pub fn lun(&self) -> Option<&str> {
        self.state.lun.as_deref()
    }

    /// Whether the daemon of a node is stopped (SIGSTOP).
    pub fn daemon_paused(&self, node: &str) -> bool {
        let Some(pid) = self.node(node).ok().and_then(|record| record.daemon_pid) else {
            return false;
        };
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let end = stat.rfind(')')?;
                stat[end + 1..].split_whitespace().next().map(|state| state == "T")
            })
            .unwrap_or(false)
    }

    /// A summary of the lab for `clusterlab status`.
    pub fn status(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .state
            .nodes
            .iter()
            .map(|node| {
                let daemon_alive = node.daemon_pid.is_some_and(sys::pid_alive);
                serde_json::json!({
                    "name": node.name,
                    "address": node.address.to_string(),
                    "role": node.role,
                    "powered": node.powered,
                    "daemon_pid": node.daemon_pid,
                    "daemon": if matches!(self.state.daemon, Daemon::None) { "none" } else if !node.powered { "off" } else if !daemon_alive { "dead" }
                        else if self.daemon_paused(&node.name) { "paused" } else { "running" },
                    "processes": cgroup_pids(&self.paths.cgroup().join(&node.name)).len(),
                    "data_disk": node.data_disk,
                    "disk": if node.data_disk.is_none() { "none" } else if self.disk_stalled(&node.name) { "stalled" } else { "ok" },
                })
            })
            .collect();
        let mut groups: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
        groups.insert("name", self.state.name.clone().into());
        groups.insert("nodes", nodes.into());
        groups.insert("partition", self.state.partition.as_ref().map(|partition| partition.to_string()).into());
        groups.insert("lun", self.state.lun.clone().into());
        groups.insert("client", CLIENT_ADDRESS.to_string().into());
        groups.insert("supervisor_pid", self.state.supervisor_pid.into());
        serde_json::to_value(groups).expect("status serializes")
    }
}
