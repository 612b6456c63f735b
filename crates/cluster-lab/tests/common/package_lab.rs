//! The package lab of the failover tests: a 3-node `clusterd` lab running a package of a VIP, a
//! filesystem on the shared LUN and a process, watched from outside by the observer, with the helpers
//! the tests share (waiting for the package, post-mortem dumps, the split-brain verdict).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster_lab::history::{self, Kind, Record, SplitBrainReport};
use cluster_lab::lab::{Daemon, Lab, LabGuard, LabSpec};
use cluster_lab::observer::{Observer, ObserverSpec};
use serde_json::Value;

use super::lab_name;

pub const VIP: &str = "192.0.2.100";
pub const PROBE: &str = "192.0.2.100:8080";
/// `comm` of the package's process (`/usr/bin/python3 -m http.server`).
pub const PROCESS: &str = "python3";
pub const PACKAGE: &str = "web";
/// The node every test queries: never faulted by any test (n1 is the preferred owner, n2 the next).
pub const VIA: &str = "n3";

/// What varies between the tests' packages.
#[derive(Clone, Debug)]
pub struct PackageOptions {
    pub failback: &'static str,
    pub restart_max: u32,
    /// `false` only to document lease-only pauses: the VIP's duplicate probe would otherwise refuse the second
    /// owner's start (a second line of defence that the lease protocol does not rely on).
    pub check_duplicate: bool,
    pub kill_holders: bool,
}

impl Default for PackageOptions {
    fn default() -> PackageOptions {
        PackageOptions { failback: "manual", restart_max: 3, check_duplicate: true, kill_holders: true }
    }
}

pub fn package_toml(lab: &str, mountpoint: &Path, options: &PackageOptions) -> String {
    let mountpoint = mountpoint.display();
    format!(
        r#"name = "{PACKAGE}"
nodes = ["n1", "n2", "n3"]
failback = "{failback}"
auto_run = false
restart = {{ max = {restart_max}, within = "1m" }}

[[resource]]
name = "vip"
type = "ip"
address = "{VIP}/24"
interface = "eth0"
check_duplicate = {check_duplicate}

[[resource]]
name = "data"
type = "filesystem"
device = "LABEL=cl-{lab}"
mountpoint = "{mountpoint}"
fstype = "ext4"
kill_holders = {kill_holders}
unmount_retries = 1
stop_timeout = "5s"

[[resource]]
name = "server"
type = "process"
command = ["/usr/bin/python3", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory", "{mountpoint}"]
ready = {{ tcp = "127.0.0.1:8080" }}
monitor = {{ interval = "200ms", timeout = "2s" }}
kill_after = "2s"
stop_timeout = "5s"
"#,
        failback = options.failback,
        restart_max = options.restart_max,
        check_duplicate = options.check_duplicate,
        kill_holders = options.kill_holders,
    )
}

/// A 3-node lab with the package applied (not running yet) and the observer sampling.
pub struct Fixture {
    pub name: String,
    pub lab: Lab,
    pub mountpoint: PathBuf,
    pub started: Instant,
    pub observer: Option<Observer>,
    /// Last: the lab goes down after the observer stopped, also when the test panics.
    pub _guard: LabGuard,
}

impl Fixture {
    pub fn new(tag: &str, watchdog: bool, options: PackageOptions) -> Fixture {
        Fixture::with_spec(tag, watchdog, options, |_| {})
    }

    /// [`Fixture::new`] with the lab's spec changed by `customize` (witnesses, nodes running another
    /// `clusterd`).
    pub fn with_spec(
        tag: &str,
        watchdog: bool,
        options: PackageOptions,
        customize: impl FnOnce(&mut LabSpec),
    ) -> Fixture {
        let started = Instant::now();
        let (clusterd, clusterctl) = super::clusterd_binaries();
        let name = lab_name(tag);
        // The LUN's ext4 label is `cl-LAB` and ext4 keeps 16 bytes of a label: a longer one is cut silently and
        // `LABEL=cl-LAB` would never appear.
        assert!(name.len() <= 13, "lab name {name} too long for the LUN's label");
        let guard = LabGuard::new(&name);
        let mut spec = LabSpec {
            daemon: Daemon::Clusterd { clusterd, clusterctl, watchdog },
            lun_mib: 64,
            watchdog,
            tool: Some(super::clusterlab()),
            reboot_delay: Duration::from_secs(2),
            ..LabSpec::bare(&name, 3)
        };
        customize(&mut spec);
        let lab = Lab::up(&spec).unwrap_or_else(|error| panic!("lab {name} with clusterd: {error}"));
        let mountpoint = lab.paths().run_dir().join("srv");
        let package_file = lab.paths().run_dir().join("web.toml");
        std::fs::write(&package_file, package_toml(&name, &mountpoint, &options)).unwrap();
        let mut fixture = Fixture { name, lab, mountpoint, started, observer: None, _guard: guard };
        // The Raft leader lives on VIA, not on the owner the tests fault, unless a test moves it:
        // the leader also runs the fence agents. `killed_owner_that_leads_raft_*` kills both.
        fixture.lead_from(VIA);
        fixture.ctl(VIA, &["pkg", "apply", &package_file.display().to_string()]);
        let observer = Observer::start(
            &fixture.lab,
            ObserverSpec {
                vips: vec![VIP.parse().unwrap()],
                mounts: vec![fixture.mountpoint.clone()],
                processes: vec![PROCESS.into()],
                probes: vec![PROBE.parse().unwrap()],
                interval: Duration::from_millis(10),
                files: Vec::new(),
            },
            None,
        )
        .unwrap();
        fixture.observer = Some(observer);
        eprintln!("[{}] lab up and package applied after {:?}", fixture.name, fixture.started.elapsed());
        fixture
    }

    /// Moves the Raft leadership to `node`: a transfer can lose its election on a loaded machine
    /// (clusterd retries 3 times itself), so try again a few times before failing the test.
    pub fn lead_from(&self, node: &str) {
        self.transfer_leadership(node, node)
    }

    /// [`Fixture::lead_from`] `node`, asked through `VIA`.
    pub fn lead_from_via(&self, node: &str) {
        self.transfer_leadership(VIA, node)
    }

    fn transfer_leadership(&self, via: &str, node: &str) {
        if let Err(error) = super::transfer_leadership(&self.lab, via, node) {
            self.dump();
            panic!("[{}] leadership never moved to {node}: {error}", self.name)
        }
    }

    pub fn observer(&self) -> &Observer {
        self.observer.as_ref().expect("observer running")
    }

    pub fn ctl(&self, via: &str, args: &[&str]) -> String {
        self.lab.clusterctl(via, args).unwrap_or_else(|error| {
            self.dump();
            panic!("[{}] clusterctl {args:?} on {via}: {error}", self.name)
        })
    }

    /// `clusterctl ARGS --output json` through `via`.
    pub fn ctl_json(&self, via: &str, args: &[&str]) -> Value {
        let args: Vec<&str> = args.iter().copied().chain(["--output", "json"]).collect();
        let text = self.ctl(via, &args);
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("[{}] {args:?}: {error}: {text}", self.name))
    }

    /// `pkg status web --output json` through `via`; `None` while it does not answer.
    pub fn package(&self, via: &str) -> Option<Value> {
        let text = self.lab.clusterctl(via, &["pkg", "status", PACKAGE, "--output", "json"]).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits until the package's state satisfies `condition`; panics with diagnostics after `timeout`.
    pub fn wait_package(&self, what: &str, timeout: Duration, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(package) = self.package(VIA) {
                if condition(&package) {
                    return package;
                }
                last = Some(package);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.dump();
        panic!("[{}] timed out after {timeout:?} waiting for {what}; last package state: {last:#?}", self.name);
    }

    /// Waits until the package runs on `node` by the cluster's account AND as seen from outside: VIP, mount and
    /// process on `node` only, and the client reaches the VIP. Returns the package state.
    pub fn wait_running_on(&self, node: &str, timeout: Duration) -> Value {
        let begun = Instant::now();
        let package = self.wait_package(&format!("running on {node}"), timeout, |package| {
            package["owner"] == node && package["phase"] == "running"
        });
        let left = timeout.saturating_sub(begun.elapsed()).max(Duration::from_secs(2));
        let mount = self.mountpoint.display().to_string();
        let seen = self.observer().wait_for(left, |observer| {
            observer.holders(Kind::Vip, VIP) == [node]
                && observer.holders(Kind::Mount, &mount) == [node]
                && observer.holders(Kind::Process, PROCESS) == [node]
                && !observer.holders(Kind::Client, PROBE).is_empty()
        });
        if !seen {
            self.dump();
            panic!(
                "[{}] {PACKAGE} is running on {node} for the cluster, but the observer sees vip {:?}, mount {:?}, \
                 process {:?}, client {:?}",
                self.name,
                self.observer().holders(Kind::Vip, VIP),
                self.observer().holders(Kind::Mount, &mount),
                self.observer().holders(Kind::Process, PROCESS),
                self.observer().holders(Kind::Client, PROBE),
            );
        }
        package
    }

    /// Nothing of the package is active on any node, as seen from outside.
    pub fn wait_nothing_active(&self, timeout: Duration) {
        let mount = self.mountpoint.display().to_string();
        let gone = self.observer().wait_for(timeout, |observer| {
            observer.holders(Kind::Vip, VIP).is_empty()
                && observer.holders(Kind::Mount, &mount).is_empty()
                && observer.holders(Kind::Process, PROCESS).is_empty()
        });
        if !gone {
            self.dump();
            panic!("[{}] resources still active after {timeout:?}", self.name);
        }
    }

    /// `pkg run web` and wait until it runs on n1 (the preferred node).
    pub fn run_on_n1(&self) -> Value {
        self.ctl(VIA, &["pkg", "run", PACKAGE]);
        self.wait_running_on("n1", Duration::from_secs(20))
    }

    /// Pids of the package's process in `node`'s cgroup (and below it).
    pub fn process_pids(&self, node: &str) -> Vec<i32> {
        super::pids_named(&self.lab, node, PROCESS)
    }

    pub fn events(&self) -> String {
        self.lab.clusterctl(VIA, &["events"]).unwrap_or_else(|error| format!("(events unavailable: {error})"))
    }

    /// Prints what helps to understand a failure: events and the tail of every node's log.
    pub fn dump(&self) {
        super::dump_logs(&self.lab, &self.name, &self.events(), &["n1", "n2", "n3"]);
    }

    /// Stops the observer; returns the history with the faults merged in, its end, and the split-brain verdict.
    pub fn finish(&mut self) -> (Vec<Record>, u64, SplitBrainReport) {
        super::finish_observer(self.observer.take().expect("observer running"), &self.name, self.started)
    }

    /// `finish` and require that the checker passed.
    pub fn finish_without_split_brain(&mut self) -> Vec<Record> {
        let (records, _, report) = self.finish();
        if !report.passed() {
            self.dump();
        }
        assert!(report.passed(), "[{}] split brain: {:#?}", self.name, report.violations);
        records
    }

    pub fn print_timing(&self, records: &[Record], end_ns: u64, fault_ns: u64, fault: &str) {
        let timing = history::failover_timing(records, end_ns, Kind::Vip, VIP, Some(PROBE), fault_ns);
        eprintln!("[{}] failover after {fault}: {timing:?}", self.name);
    }
}

pub fn now_ns() -> u64 {
    cluster_lab::sys::now_ns()
}

/// The lab's fault log has `fault` for `node` at or after `after_ns`.
pub fn fault_recorded(lab: &Lab, fault: &str, node: &str, after_ns: u64) -> bool {
    let text = std::fs::read_to_string(lab.paths().fault_log()).unwrap_or_default();
    history::parse_jsonl(&text)
        .iter()
        .any(|record| record.resource == fault && record.node == node && record.t_ns >= after_ns)
}

pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A `clusterlab fence-agent` wrapper (fence agents run without arguments).
pub fn fence_wrapper(fixture: &Fixture) -> PathBuf {
    let path = fixture.lab.paths().run_dir().join("fence_clusterlab");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "#!/bin/sh\nexec {} fence-agent", super::clusterlab().display()).unwrap();
    drop(file);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}
