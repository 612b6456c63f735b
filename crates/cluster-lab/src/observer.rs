//! The outside observer: one dedicated thread per node (which enters the node's network namespace once and
//! keeps a netlink socket bound there) samples VIPs, mounts and processes; one thread in the client namespace
//! probes the VIPs with TCP connects. All samples use `CLOCK_MONOTONIC`; changes become history records.
//!
//! ```text
//!   thread n1 (netns n1) ─┐ RTM_GETADDR dump, /proc/HOLDER/mountinfo, cgroup.procs + comm, /proc/HOLDER/root/FILE
//!   thread n2 (netns n2) ─┼─▶ transitions ─▶ history (memory + JSON lines file) + current holders
//!   thread client        ─┘ connect(VIP:port): connected or refused = reached
//! ```
//!
//! Never used from a tokio worker: the threads are plain OS threads and `setns` only affects them.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::history::{Kind, Record};
use crate::lab::{cgroup_pids, Lab, LabPaths};
use crate::sys::{self, io_error, SysError};

/// Errors of the observer.
#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    /// A host operation failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// A netlink operation failed.
    #[error("netlink dump in node {node} failed: {source}")]
    Netlink {
        /// The node.
        node: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// What to observe.
#[derive(Clone, Debug)]
pub struct ObserverSpec {
    /// Addresses whose presence on any interface of a node is recorded.
    pub vips: Vec<IpAddr>,
    /// Mount points whose presence in a node's mount namespace is recorded.
    pub mounts: Vec<PathBuf>,
    /// Process names (`comm`) whose presence among a node's processes is recorded.
    pub processes: Vec<String>,
    /// Addresses the client namespace tries to reach (TCP connect; connected or refused counts as reached).
    pub probes: Vec<SocketAddr>,
    /// Sampling period.
    pub interval: Duration,
    /// Files of a node's own filesystem view (its mount namespace) that count as active while they
    /// hold this text (its first line), e.g. `ocf:heartbeat:Stateful`'s state file holding `master`:
    /// resource `PATH=TEXT`, kind `file`.
    pub files: Vec<(PathBuf, String)>,
}

impl Default for ObserverSpec {
    fn default() -> Self {
        ObserverSpec {
            vips: Vec::new(),
            mounts: Vec::new(),
            processes: Vec::new(),
            probes: Vec::new(),
            interval: Duration::from_millis(5),
            files: Vec::new(),
        }
    }
}

type Current = BTreeMap<(Kind, String, String), bool>;

struct Shared {
    history: Mutex<Vec<Record>>,
    current: Mutex<Current>,
    output: Mutex<Option<File>>,
    stop: AtomicBool,
}

impl Shared {
    fn push(&self, record: Record) {
        if let Some(file) = self.output.lock().expect("observer lock").as_mut() {
            let _ = writeln!(file, "{}", serde_json::to_string(&record).expect("record serializes"));
        }
        self.history.lock().expect("observer lock").push(record);
    }
}

/// A running observer; stop it with [`Observer::stop`].
pub struct Observer {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    fault_log: PathBuf,
    started_ns: u64,
}

/// Tracks one thread's last state per resource and emits transitions.
struct Tracker {
    node: String,
    last: BTreeMap<(Kind, String), bool>,
    last_sample_ns: Option<u64>,
}

impl Tracker {
    fn new(node: &str) -> Tracker {
        Tracker { node: node.to_string(), last: BTreeMap::new(), last_sample_ns: None }
    }

    fn sample(&mut self, shared: &Shared, t_ns: u64, states: Vec<(Kind, String, bool)>) {
        let prev_t_ns = self.last_sample_ns.unwrap_or(t_ns);
        {
            let mut current = shared.current.lock().expect("observer lock");
            for (kind, resource, active) in &states {
                current.insert((*kind, resource.clone(), self.node.clone()), *active);
            }
        }
        for (kind, resource, active) in states {
            let previous = self.last.insert((kind, resource.clone()), active);
            let changed = match previous {
                Some(previous) => previous != active,
                None => active,
            };
            if changed {
                shared.push(Record { t_ns, prev_t_ns, node: self.node.clone(), kind, resource, active });
            }
        }
        self.last_sample_ns = Some(t_ns);
    }
}

fn enter_netns(paths: &LabPaths, member: &str) -> Result<(), SysError> {
    let path = Path::new("/run/netns").join(paths.netns(member));
    let file = File::open(&path).map_err(|error| io_error("failed to open", &path, error))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|errno| io_error("failed to enter", &path, errno.into()))
}

/// A NETLINK_ROUTE socket of the current thread's network namespace.
struct RouteSocket {
    fd: std::os::fd::OwnedFd,
    sequence: u32,
}

const NLMSG_HEADER: usize = 16;

impl RouteSocket {
    fn open() -> std::io::Result<RouteSocket> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2) call; the returned descriptor is checked and then owned by OwnedFd.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a valid, freshly created descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(RouteSocket { fd, sequence: 1 })
    }

    /// Every address on every interface (RTM_GETADDR dump).
    fn addresses(&mut self) -> std::io::Result<Vec<IpAddr>> {
        use std::os::fd::AsRawFd;
        self.sequence = self.sequence.wrapping_add(1);
        let mut request = [0u8; NLMSG_HEADER + 8];
        let length = request.len() as u32;
        request[0..4].copy_from_slice(&length.to_ne_bytes());
        request[4..6].copy_from_slice(&libc::RTM_GETADDR.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        request[6..8].copy_from_slice(&flags.to_ne_bytes());
        request[8..12].copy_from_slice(&self.sequence.to_ne_bytes());
        request[NLMSG_HEADER] = libc::AF_UNSPEC as u8;
        // SAFETY: the buffer is valid for its length; an unconnected netlink socket sends to the kernel.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut addresses = Vec::new();
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: the buffer is valid and writable for its length.
            let received = unsafe { libc::recv(self.fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
            if received < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let data = &buffer[..received as usize];
            let mut offset = 0;
            while offset + NLMSG_HEADER <= data.len() {
                let length = u32::from_ne_bytes(data[offset..offset + 4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(data[offset + 4..offset + 6].try_into().expect("2 bytes"));
                let sequence = u32::from_ne_bytes(data[offset + 8..offset + 12].try_into().expect("4 bytes"));
                if length < NLMSG_HEADER || offset + length > data.len() {
                    break;
                }
                if sequence == self.sequence {
                    match kind as i32 {
                        libc::NLMSG_DONE => return Ok(addresses),
                        libc::NLMSG_ERROR => {
                            let code = i32::from_ne_bytes(
                                data[offset + NLMSG_HEADER..offset + NLMSG_HEADER + 4].try_into().expect("4 bytes"),
                            );
                            return Err(std::io::Error::from_raw_os_error(-code));
                        }
                        _ if kind == libc::RTM_NEWADDR => {
                            parse_address(&data[offset + NLMSG_HEADER..offset + length], &mut addresses)
                        }
                        _ => {}
                    }
                }
                offset += (length + 3) & !3;
            }
        }
    }
}

/// Parses an `ifaddrmsg` and its attributes; pushes `IFA_LOCAL` (IPv4) or `IFA_ADDRESS`.
fn parse_address(message: &[u8], addresses: &mut Vec<IpAddr>) {
    if message.len() < 8 {
        return;
    }
    let family = message[0] as i32;
    let mut local = None;
    let mut address = None;
    let mut offset = 8;
    while offset + 4 <= message.len() {
        let length = u16::from_ne_bytes([message[offset], message[offset + 1]]) as usize;
        let kind = u16::from_ne_bytes([message[offset + 2], message[offset + 3]]);
        if length < 4 || offset + length > message.len() {
            break;
        }
        let payload = &message[offset + 4..offset + length];
        let value = match (family, payload.len()) {
            (libc::AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(payload).expect("4 bytes"))),
            (libc::AF_INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(payload).expect("16 bytes"))),
            _ => None,
        };
        match kind {
            libc::IFA_LOCAL => local = value,
            libc::IFA_ADDRESS => address = value,
            _ => {}
        }
        offset += (length + 3) & !3;
    }
    if let Some(found) = local.or(address) {
        addresses.push(found);
    }
}

fn holder_pid(paths: &LabPaths, node: &str) -> Option<i32> {
    fs::read_to_string(paths.node_run_dir(node).join("holder.pid"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|pid| sys::pid_alive(*pid))
}

fn mounted(holder: Option<i32>, mounts: &[PathBuf]) -> Vec<bool> {
    let table = holder.and_then(|pid| fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()).unwrap_or_default();
    let points: Vec<&str> = table.lines().filter_map(|line| line.split_whitespace().nth(4)).collect();
    mounts.iter().map(|mount| points.iter().any(|point| Path::new(point) == mount)).collect()
}

fn node_loop(
    shared: Arc<Shared>,
    paths: LabPaths,
    node: String,
    spec: ObserverSpec,
    ready: std::sync::mpsc::Sender<Result<(), ObserverError>>,
) {
    let setup = enter_netns(&paths, &node)
        .map_err(ObserverError::from)
        .and_then(|()| RouteSocket::open().map_err(|source| ObserverError::Netlink { node: node.clone(), source }));
    let mut socket = match setup {
        Ok(socket) => {
            let _ = ready.send(Ok(()));
            socket
        }
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let cgroup = paths.cgroup().join(&node);
    let mut tracker = Tracker::new(&node);
    let mut next = std::time::Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let t_ns = sys::now_ns();
        let mut states = Vec::new();
        if !spec.vips.is_empty() {
            let present = socket.addresses().unwrap_or_default();
            for vip in &spec.vips {
                states.push((Kind::Vip, vip.to_string(), present.contains(vip)));
            }
        }
        if !spec.mounts.is_empty() {
            let found = mounted(holder_pid(&paths, &node), &spec.mounts);
            for (mount, active) in spec.mounts.iter().zip(found) {
                states.push((Kind::Mount, mount.display().to_string(), active));
            }
        }
        if !spec.files.is_empty() {
            // Through the holder's root: the node's own mount namespace.
            let root = holder_pid(&paths, &node).map(|pid| PathBuf::from(format!("/proc/{pid}/root")));
            for (path, text) in &spec.files {
                let held = root
                    .as_ref()
                    .and_then(|root| fs::read_to_string(root.join(path.strip_prefix("/").unwrap_or(path))).ok());
                let active = held.is_some_and(|content| content.lines().next().map(str::trim) == Some(text.as_str()));
                states.push((Kind::File, format!("{}={text}", path.display()), active));
            }
        }
        if !spec.processes.is_empty() {
            let names: Vec<String> =
                cgroup_pids(&cgroup).into_iter().filter(|pid| sys::pid_alive(*pid)).filter_map(sys::pid_comm).collect();
            for process in &spec.processes {
                states.push((Kind::Process, process.clone(), names.contains(process)));
            }
        }
        tracker.sample(&shared, t_ns, states);
        next += spec.interval;
        let now = std::time::Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

fn client_loop(
    shared: Arc<Shared>,
    paths: LabPaths,
    spec: ObserverSpec,
    ready: std::sync::mpsc::Sender<Result<(), ObserverError>>,
) {
    if let Err(error) = enter_netns(&paths, "client") {
        let _ = ready.send(Err(error.into()));
        return;
    }
    let _ = ready.send(Ok(()));
    let mut tracker = Tracker::new("client");
    let timeout = spec.interval.max(Duration::from_millis(20));
    let mut next = std::time::Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let t_ns = sys::now_ns();
        let states = spec
            .probes
            .iter()
            .map(|probe| {
                let reached = match TcpStream::connect_timeout(probe, timeout) {
                    Ok(_) => true,
                    Err(error) => error.kind() == std::io::ErrorKind::ConnectionRefused,
                };
                (Kind::Client, probe.to_string(), reached)
            })
            .collect();
        tracker.sample(&shared, t_ns, states);
        next += spec.interval;
        let now = std::time::Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

impl Observer {
    /// Starts sampling every node of the lab (and the client probes); `output` receives JSON lines.
    pub fn start(lab: &Lab, spec: ObserverSpec, output: Option<&Path>) -> Result<Observer, ObserverError> {
        let output = match output {
            Some(path) => Some(File::create(path).map_err(|error| io_error("failed to create", path, error))?),
            None => None,
        };
        let shared = Arc::new(Shared {
            history: Mutex::new(Vec::new()),
            current: Mutex::new(BTreeMap::new()),
            output: Mutex::new(output),
            stop: AtomicBool::new(false),
        });
        let started_ns = sys::now_ns();
        let mut observer =
            Observer { shared: shared.clone(), threads: Vec::new(), fault_log: lab.paths().fault_log(), started_ns };
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let mut expected = 0;
        for node in lab.node_names() {
            let (shared, paths, spec, sender) =
                (shared.clone(), lab.paths().clone(), spec.clone(), ready_sender.clone());
            observer.threads.push(
                std::thread::Builder::new()
                    .name(format!("observe-{node}"))
                    .spawn(move || node_loop(shared, paths, node, spec, sender))
                    .expect("spawn observer thread"),
            );
            expected += 1;
        }
        if !spec.probes.is_empty() {
            let (shared, paths, spec, sender) =
                (shared.clone(), lab.paths().clone(), spec.clone(), ready_sender.clone());
            observer.threads.push(
                std::thread::Builder::new()
                    .name("observe-client".into())
                    .spawn(move || client_loop(shared, paths, spec, sender))
                    .expect("spawn observer thread"),
            );
            expected += 1;
        }
        for _ in 0..expected {
            if let Ok(Err(error)) = ready.recv() {
                observer.shared.stop.store(true, Ordering::Relaxed);
                return Err(error);
            }
        }
        Ok(observer)
    }

    /// Time the observer started (ns, `CLOCK_MONOTONIC`).
    pub fn started_ns(&self) -> u64 {
        self.started_ns
    }

    /// Records a marker (e.g. a fault injected by the caller) on the same clock.
    pub fn mark(&self, node: &str, what: &str) -> u64 {
        let t_ns = sys::now_ns();
        self.shared.push(Record {
            t_ns,
            prev_t_ns: t_ns,
            node: node.to_string(),
            kind: Kind::Fault,
            resource: what.to_string(),
            active: true,
        });
        t_ns
    }

    /// The records so far.
    pub fn records(&self) -> Vec<Record> {
        self.shared.history.lock().expect("observer lock").clone()
    }

    /// Nodes on which `(kind, resource)` was active at their latest sample.
    pub fn holders(&self, kind: Kind, resource: &str) -> Vec<String> {
        self.shared
            .current
            .lock()
            .expect("observer lock")
            .iter()
            .filter(|((k, r, _), active)| *k == kind && r == resource && **active)
            .map(|((_, _, node), _)| node.clone())
            .collect()
    }

    /// Waits until `condition(self)` holds, polling every millisecond.
    pub fn wait_for(&self, timeout: Duration, mut condition: impl FnMut(&Observer) -> bool) -> bool {
        sys::wait_until(timeout, || condition(self))
    }

    /// Stops sampling; returns the history with the lab's fault log (written since the start) merged in, and
    /// the end time.
    pub fn stop(mut self) -> (Vec<Record>, u64) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let end_ns = sys::now_ns();
        let mut records = self.records();
        if let Ok(text) = fs::read_to_string(&self.fault_log) {
            let faults = crate::history::parse_jsonl(&text).into_iter().filter(|record| record.t_ns >= self.started_ns);
            for fault in faults {
                if !records.contains(&fault) {
                    records.push(fault);
                }
            }
        }
        records.sort_by_key(|record| record.t_ns);
        (records, end_ns)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
