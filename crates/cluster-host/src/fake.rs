//! Recording fakes of every host trait, for unit tests without privileges.
//!
//! Each fake keeps a small in-memory model of the host (addresses, mounts, units), records every call
//! as a line in `calls()`, and lets a test inject failures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::in_flight::InFlight;
use crate::mounts::{BlockDevices, BlockError, DeviceName, MountEntry, MountError, Mounts};
use crate::net::{AddressInfo, LinkInfo, NetError, Network};
use crate::process::{CommandOutput, CommandSpec, KillMode, ProcessError, Processes, ServiceSpec, Signal};
use crate::{Host, TokioClock};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A call log shared by the fakes of one [`FakeHost`], so ordering across kinds is visible.
#[derive(Debug, Default, Clone)]
pub struct CallLog(Arc<Mutex<Vec<String>>>);

impl CallLog {
    fn push(&self, line: String) {
        lock(&self.0).push(line);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.0).clone()
    }

    /// Calls whose line starts with `prefix`.
    pub fn calls_starting_with(&self, prefix: &str) -> Vec<String> {
        self.calls().into_iter().filter(|line| line.starts_with(prefix)).collect()
    }

    /// Forget the calls so far.
    pub fn clear(&self) {
        lock(&self.0).clear();
    }
}

// ---------------------------------------------------------------- network

#[derive(Debug, Default)]
struct NetState {
    links: BTreeMap<String, LinkInfo>,
    addresses: BTreeMap<String, Vec<AddressInfo>>,
    /// Addresses another host on the segment answers for, with its hardware address.
    others: HashMap<IpAddr, [u8; 6]>,
    fail_next_add: Option<NetError>,
}

/// A fake network: links and addresses in memory; "other hosts" that answer probes.
#[derive(Debug, Clone)]
pub struct FakeNetwork {
    state: Arc<Mutex<NetState>>,
    log: CallLog,
}

impl FakeNetwork {
    /// Empty network recording into `log`.
    pub fn new(log: CallLog) -> Self {
        FakeNetwork { state: Arc::default(), log }
    }

    /// Add a link (up, carrier, a MAC derived from its index).
    pub fn add_link(&self, name: &str) {
        let mut state = lock(&self.state);
        let index = state.links.len() as u32 + 2;
        let mac = [0x02, 0, 0, 0, 0, index as u8];
        state.links.insert(name.to_string(), LinkInfo { index, up: true, lower_up: true, mac: Some(mac) });
        state.addresses.entry(name.to_string()).or_default();
    }

    /// Set a link's administrative state.
    pub fn set_link_up(&self, name: &str, up: bool) {
        if let Some(link) = lock(&self.state).links.get_mut(name) {
            link.up = up;
            link.lower_up = up;
        }
    }

    /// Pretend another host on the segment holds `address`.
    pub fn add_other_host(&self, address: IpAddr, mac: [u8; 6]) {
        lock(&self.state).others.insert(address, mac);
    }

    /// Make the next `add_address` fail with `error`.
    pub fn fail_next_add(&self, error: NetError) {
        lock(&self.state).fail_next_add = Some(error);
    }

    /// Put an address on a link directly (as an operator would), without recording a call.
    pub fn preset_address(&self, interface: &str, address: IpAddr, prefix_len: u8) {
        lock(&self.state).addresses.entry(interface.to_string()).or_default().push(AddressInfo {
            address,
            prefix_len,
            tentative: false,
            dad_failed: false,
        });
    }

    /// Addresses now on `interface`.
    pub fn addresses_of(&self, interface: &str) -> Vec<(IpAddr, u8)> {
        lock(&self.state)
            .addresses
            .get(interface)
            .map(|list| list.iter().map(|info| (info.address, info.prefix_len)).collect())
            .unwrap_or_default()
    }

    fn no_link(interface: &str) -> NetError {
        NetError::NoSuchInterface { interface: interface.to_string() }
    }
}

#[async_trait::async_trait]
impl Network for FakeNetwork {
    async fn link(&self, interface: &str) -> Result<LinkInfo, NetError> {
        lock(&self.state).links.get(interface).cloned().ok_or_else(|| Self::no_link(interface))
    }

    async fn addresses(&self, interface: &str) -> Result<Vec<AddressInfo>, NetError> {
        let state = lock(&self.state);
        if !state.links.contains_key(interface) {
            return Err(Self::no_link(interface));
        }
        Ok(state.addresses.get(interface).cloned().unwrap_or_default())
    }

    async fn add_address(
        &self,
        interface: &str,
        address: IpAddr,
        prefix_len: u8,
        skip_dad: bool,
    ) -> Result<(), NetError> {
        self.log.push(format!("net add {address}/{prefix_len} {interface} skip_dad={skip_dad}"));
        let mut state = lock(&self.state);
        if let Some(error) = state.fail_next_add.take() {
            return Err(error);
        }
        if !state.links.contains_key(interface) {
            return Err(Self::no_link(interface));
        }
        let duplicate_v6 = address.is_ipv6() && !skip_dad && state.others.contains_key(&address);
        let list = state.addresses.entry(interface.to_string()).or_default();
        if list.iter().any(|info| info.address == address && info.prefix_len == prefix_len) {
            return Err(NetError::AddressExists { address, prefix_len, interface: interface.to_string() });
        }
        list.push(AddressInfo { address, prefix_len, tentative: false, dad_failed: duplicate_v6 });
        Ok(())
    }

    async fn remove_address(&self, interface: &str, address: IpAddr, prefix_len: u8) -> Result<(), NetError> {
        self.log.push(format!("net remove {address}/{prefix_len} {interface}"));
        if let Some(list) = lock(&self.state).addresses.get_mut(interface) {
            list.retain(|info| !(info.address == address && info.prefix_len == prefix_len));
        }
        Ok(())
    }

    async fn probe_ipv4_duplicate(
        &self,
        interface: &str,
        address: Ipv4Addr,
        _timeout: Duration,
    ) -> Result<Option<[u8; 6]>, NetError> {
        self.log.push(format!("net probe {address} {interface}"));
        let state = lock(&self.state);
        if !state.links.contains_key(interface) {
            return Err(Self::no_link(interface));
        }
        Ok(state.others.get(&IpAddr::V4(address)).copied())
    }

    async fn announce(&self, interface: &str, address: IpAddr) -> Result<(), NetError> {
        self.log.push(format!("net announce {address} {interface}"));
        Ok(())
    }
}

// ---------------------------------------------------------------- mounts and block devices

#[derive(Debug, Default)]
struct MountState {
    mounted: Vec<MountEntry>,
    directories: HashSet<PathBuf>,
    /// Processes holding files under a mountpoint, and whether they ignore SIGTERM.
    holders: BTreeMap<u32, (PathBuf, bool)>,
    /// Unmount attempts that fail with "busy" regardless of holders.
    busy_unmounts: u32,
    read_write_fails: bool,
    devices: HashMap<String, PathBuf>,
    fsck_fails: bool,
}

/// A fake mount table and block device set.
///
/// Mounts, unmounts and checks are tracked to completion like the Linux ones (`in_flight.rs`), and
/// [`FakeMounts::stall_mounts`] makes mounts block as on a device that stopped answering, so unit
/// tests can abandon a mount and watch it land (and be undone) later.
#[derive(Debug, Clone)]
pub struct FakeMounts {
    state: Arc<Mutex<MountState>>,
    log: CallLog,
    in_flight: Arc<InFlight>,
    /// True while mounts block.
    stalled: Arc<watch::Sender<bool>>,
}

impl FakeMounts {
    /// Empty mount table recording into `log`.
    pub fn new(log: CallLog) -> Self {
        FakeMounts { state: Arc::default(), log, in_flight: Arc::default(), stalled: Arc::new(watch::channel(false).0) }
    }

    /// From now on `mount` blocks, as `mount(2)` does on a device that stopped answering, until
    /// [`FakeMounts::resume_mounts`]; a caller that gives up meanwhile does not stop it.
    pub fn stall_mounts(&self) {
        self.stalled.send_replace(true);
    }

    /// Blocked mounts go on (and land); new ones no longer block.
    pub fn resume_mounts(&self) {
        self.stalled.send_replace(false);
    }

    /// Make a device exist, findable by path, and by `UUID=`/`LABEL=` when given.
    pub fn add_device(&self, path: &str, uuid: Option<&str>, label: Option<&str>) {
        let mut state = lock(&self.state);
        state.devices.insert(path.to_string(), PathBuf::from(path));
        if let Some(uuid) = uuid {
            state.devices.insert(format!("UUID={uuid}"), PathBuf::from(path));
        }
        if let Some(label) = label {
            state.devices.insert(format!("LABEL={label}"), PathBuf::from(path));
        }
    }

    /// A process `pid` holds a file under `mountpoint`; it exits on SIGTERM unless `ignores_term`.
    pub fn add_holder(&self, pid: u32, mountpoint: &str, ignores_term: bool) {
        lock(&self.state).holders.insert(pid, (PathBuf::from(mountpoint), ignores_term));
    }

    /// The next `count` unmounts fail as busy.
    pub fn fail_unmounts(&self, count: u32) {
        lock(&self.state).busy_unmounts = count;
    }

    /// Make the read/write check fail.
    pub fn fail_read_write(&self, fails: bool) {
        lock(&self.state).read_write_fails = fails;
    }

    /// Make fsck fail.
    pub fn fail_fsck(&self, fails: bool) {
        lock(&self.state).fsck_fails = fails;
    }

    /// Mount something directly (as an operator would), without recording a call.
    pub fn preset_mount(&self, device: &str, target: &str, fstype: &str) {
        lock(&self.state).mounted.push(MountEntry {
            source: device.to_string(),
            target: PathBuf::from(target),
            fstype: fstype.to_string(),
            options: "rw".to_string(),
        });
    }

    /// Mountpoints now mounted.
    pub fn mounted_targets(&self) -> Vec<PathBuf> {
        lock(&self.state).mounted.iter().map(|entry| entry.target.clone()).collect()
    }
}

#[async_trait::async_trait]
impl Mounts for FakeMounts {
    async fn mounts(&self) -> Result<Vec<MountEntry>, MountError> {
        Ok(lock(&self.state).mounted.clone())
    }

    async fn create_directory(&self, path: &Path) -> Result<(), MountError> {
        self.log.push(format!("mount mkdir {}", path.display()));
        lock(&self.state).directories.insert(path.to_path_buf());
        Ok(())
    }

    async fn mount(&self, device: &Path, target: &Path, fstype: &str, options: &[String]) -> Result<(), MountError> {
        self.log.push(format!("mount {} {} {fstype} [{}]", device.display(), target.display(), options.join(",")));
        let description = format!("mount of {} at {}", device.display(), target.display());
        let entry = MountEntry {
            source: device.display().to_string(),
            target: target.to_path_buf(),
            fstype: fstype.to_string(),
            options: options.join(","),
        };
        let (state, mut stalled) = (self.state.clone(), self.stalled.subscribe());
        let operation = async move {
            let _ = stalled.wait_for(|stalled| !*stalled).await;
            let mut state = lock(&state);
            if !state.directories.contains(&entry.target) {
                return Err(MountError::Failed {
                    action: format!("mount {} at {}", entry.source, entry.target.display()),
                    message: "no such file or directory".to_string(),
                });
            }
            state.mounted.push(entry);
            Ok(())
        };
        let (state, log, owned) = (self.state.clone(), self.log.clone(), target.to_path_buf());
        let undo = async move {
            log.push(format!("mount undo {}", owned.display()));
            lock(&state).mounted.retain(|entry| entry.target != owned);
            Ok(())
        };
        self.in_flight.run(target, description, operation, Some(undo)).await
    }

    async fn unmount(&self, target: &Path) -> Result<(), MountError> {
        self.log.push(format!("mount unmount {}", target.display()));
        let (state, owned) = (self.state.clone(), target.to_path_buf());
        let operation = async move {
            let mut state = lock(&state);
            if state.busy_unmounts > 0 {
                state.busy_unmounts -= 1;
                return Err(MountError::Busy { target: owned });
            }
            if state.holders.values().any(|(path, _)| path.starts_with(&owned)) {
                return Err(MountError::Busy { target: owned });
            }
            let before = state.mounted.len();
            state.mounted.retain(|entry| entry.target != owned);
            if before == state.mounted.len() {
                return Err(MountError::Failed {
                    action: format!("unmount {}", owned.display()),
                    message: "not mounted".to_string(),
                });
            }
            Ok(())
        };
        let description = format!("unmount of {}", target.display());
        self.in_flight.run(target, description, operation, None::<std::future::Ready<_>>).await
    }

    async fn settle(&self, target: &Path, within: Duration) -> Result<(), MountError> {
        self.in_flight.settle(target, within).await
    }

    async fn holders(&self, target: &Path) -> Result<Vec<u32>, MountError> {
        Ok(lock(&self.state)
            .holders
            .iter()
            .filter(|(_, (path, _))| path.starts_with(target))
            .map(|(pid, _)| *pid)
            .collect())
    }

    async fn signal_holder(&self, pid: u32, signal: i32) -> Result<(), MountError> {
        self.log.push(format!("mount signal {pid} {signal}"));
        let mut state = lock(&self.state);
        let ignores = state.holders.get(&pid).map(|(_, ignores)| *ignores).unwrap_or(false);
        if signal == libc::SIGKILL || !ignores {
            state.holders.remove(&pid);
        }
        Ok(())
    }

    async fn check_read_write(&self, target: &Path) -> Result<(), MountError> {
        self.log.push(format!("mount check {}", target.display()));
        if lock(&self.state).read_write_fails {
            return Err(MountError::Failed {
                action: format!("read/write check of {}", target.display()),
                message: "read-only file system".to_string(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl BlockDevices for FakeMounts {
    async fn resolve(&self, name: &DeviceName) -> Result<Option<PathBuf>, BlockError> {
        Ok(lock(&self.state).devices.get(&name.to_string()).cloned())
    }

    async fn fsck(&self, device: &Path, fstype: &str, _timeout: Duration) -> Result<(), BlockError> {
        self.log.push(format!("block fsck {} {fstype}", device.display()));
        if lock(&self.state).fsck_fails {
            return Err(BlockError::Fsck {
                device: device.to_path_buf(),
                message: "exit code 4: errors left uncorrected".to_string(),
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- processes

type CommandHandler = Arc<dyn Fn(&CommandSpec) -> Result<CommandOutput, ProcessError> + Send + Sync>;

#[derive(Default)]
struct ProcessState {
    next_pid: u32,
    /// unit -> live pids
    units: BTreeMap<String, Vec<u32>>,
    /// units whose processes ignore SIGTERM (and every signal but SIGKILL)
    ignoring: HashSet<String>,
    /// programs that do not exist
    missing_programs: HashSet<String>,
    /// units whose processes exit right after starting
    crashing: HashSet<String>,
    open_ports: HashSet<SocketAddr>,
    handler: Option<CommandHandler>,
    specs: BTreeMap<String, ServiceSpec>,
}

/// Fake processes: units in memory; one-shot commands answered by a handler.
#[derive(Clone)]
pub struct FakeProcesses {
    state: Arc<Mutex<ProcessState>>,
    log: CallLog,
    /// True while spawns block.
    stalled: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for FakeProcesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeProcesses { .. }")
    }
}

impl FakeProcesses {
    /// No units, recording into `log`.
    pub fn new(log: CallLog) -> Self {
        let state = ProcessState { next_pid: 1000, ..ProcessState::default() };
        FakeProcesses { state: Arc::new(Mutex::new(state)), log, stalled: Arc::new(watch::channel(false).0) }
    }

    /// From now on `spawn` blocks before the process exists (as a fork and exec on a stalled host
    /// can), until [`FakeProcesses::resume_spawns`]; a caller that gives up meanwhile does not stop it.
    pub fn stall_spawns(&self) {
        self.stalled.send_replace(true);
    }

    /// Blocked spawns go on (their processes appear); new ones no longer block.
    pub fn resume_spawns(&self) {
        self.stalled.send_replace(false);
    }

    /// Processes of `unit` ignore every signal but SIGKILL.
    pub fn ignore_term(&self, unit: &str) {
        lock(&self.state).ignoring.insert(unit.to_string());
    }

    /// Spawning `program` fails as not found.
    pub fn missing_program(&self, program: &str) {
        lock(&self.state).missing_programs.insert(program.to_string());
    }

    /// Processes of `unit` exit right after starting.
    pub fn crash_on_start(&self, unit: &str) {
        lock(&self.state).crashing.insert(unit.to_string());
    }

    /// The unit's processes die (as after a crash).
    pub fn crash(&self, unit: &str) {
        lock(&self.state).units.remove(unit);
    }

    /// A TCP port that accepts connections.
    pub fn open_port(&self, address: SocketAddr) {
        lock(&self.state).open_ports.insert(address);
    }

    /// Answer `run` with `handler`.
    pub fn on_run(
        &self,
        handler: impl Fn(&CommandSpec) -> Result<CommandOutput, ProcessError> + Send + Sync + 'static,
    ) {
        lock(&self.state).handler = Some(Arc::new(handler));
    }

    /// The spec a unit was last started with.
    pub fn spec_of(&self, unit: &str) -> Option<ServiceSpec> {
        lock(&self.state).specs.get(unit).cloned()
    }

    /// Whether a unit has live processes.
    pub fn is_running(&self, unit: &str) -> bool {
        lock(&self.state).units.get(unit).is_some_and(|pids| !pids.is_empty())
    }
}

#[async_trait::async_trait]
impl Processes for FakeProcesses {
    fn kill_mode(&self) -> KillMode {
        KillMode::Cgroup
    }

    async fn spawn(&self, spec: &ServiceSpec) -> Result<u32, ProcessError> {
        self.log.push(format!("process spawn {} {}", spec.unit, spec.argv.join(" ")));
        // Like the Linux fork and exec on the blocking pool, the spawn goes on if the caller goes away.
        let (state, mut stalled, spec) = (self.state.clone(), self.stalled.subscribe(), spec.clone());
        let spawn = tokio::spawn(async move {
            let _ = stalled.wait_for(|stalled| !*stalled).await;
            let mut state = lock(&state);
            let program = spec.argv.first().cloned().unwrap_or_default();
            if state.missing_programs.contains(&program) {
                return Err(ProcessError::NotFound { program });
            }
            state.next_pid += 1;
            let pid = state.next_pid;
            state.specs.insert(spec.unit.clone(), spec.clone());
            if !state.crashing.contains(&spec.unit) {
                state.units.entry(spec.unit.clone()).or_default().push(pid);
            }
            Ok(pid)
        });
        spawn.await.map_err(|error| ProcessError::Failed { action: "spawn".to_string(), message: error.to_string() })?
    }

    async fn pids(&self, unit: &str) -> Result<Vec<u32>, ProcessError> {
        Ok(lock(&self.state).units.get(unit).cloned().unwrap_or_default())
    }

    async fn signal(&self, unit: &str, signal: Signal) -> Result<(), ProcessError> {
        self.log.push(format!("process signal {unit} {signal}"));
        let mut state = lock(&self.state);
        if signal == Signal::Kill || !state.ignoring.contains(unit) {
            state.units.remove(unit);
        }
        Ok(())
    }

    async fn kill(&self, unit: &str) -> Result<(), ProcessError> {
        self.log.push(format!("process kill {unit}"));
        lock(&self.state).units.remove(unit);
        Ok(())
    }

    async fn release(&self, unit: &str) -> Result<(), ProcessError> {
        self.log.push(format!("process release {unit}"));
        Ok(())
    }

    async fn tcp_accepts(&self, address: SocketAddr, _timeout: Duration) -> bool {
        lock(&self.state).open_ports.contains(&address)
    }

    async fn run(&self, command: &CommandSpec) -> Result<CommandOutput, ProcessError> {
        self.log.push(format!("process run {}", command.argv.join(" ")));
        let handler = lock(&self.state).handler.clone();
        match handler {
            Some(handler) => handler(command),
            None => Ok(CommandOutput { exit_code: Some(0), ..CommandOutput::default() }),
        }
    }
}

// ---------------------------------------------------------------- the whole host

/// A [`Host`] made of fakes, with handles to each fake for setting up and asserting.
#[derive(Debug, Clone)]
pub struct FakeHost {
    /// The shared call log.
    pub log: CallLog,
    /// The fake network.
    pub network: FakeNetwork,
    /// The fake mount table and block devices.
    pub mounts: FakeMounts,
    /// The fake processes.
    pub processes: FakeProcesses,
}

impl Default for FakeHost {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHost {
    /// An empty fake host.
    pub fn new() -> Self {
        let log = CallLog::default();
        FakeHost {
            network: FakeNetwork::new(log.clone()),
            mounts: FakeMounts::new(log.clone()),
            processes: FakeProcesses::new(log.clone()),
            log,
        }
    }

    /// The [`Host`] handles backed by these fakes (the tokio clock: pause it in tests).
    pub fn host(&self) -> Host {
        Host {
            network: Arc::new(self.network.clone()),
            mounts: Arc::new(self.mounts.clone()),
            block_devices: Arc::new(self.mounts.clone()),
            processes: Arc::new(self.processes.clone()),
            clock: Arc::new(TokioClock),
        }
    }
}
