//! Root test: the `process` agent on the real host: a daemonizing service is fully stopped (cgroup v2
//! and process-group modes), a service ignoring SIGTERM is killed after the timeout, readiness by TCP,
//! and two nodes' daemons sharing one host never see each other's units.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_agents::conformance::check_lifecycle;
use cluster_agents::{build_agent, ActionContext, Agent, MonitorState};
use cluster_host::fake::FakeHost;
use cluster_host::{Host, KillMode, LinuxProcesses, ProcessConfig, Processes};
use cluster_package::{Monitor, ProcessOutput, ProcessResource, Readiness, ResourceDef, ResourceKind};
use common::{alive, require_root, unique};

/// A private cgroup parent (or a private pid-file directory) removed on drop, with everything in it.
struct Units {
    processes: Arc<LinuxProcesses>,
    cgroup_parent: Option<PathBuf>,
    _state: tempfile::TempDir,
}

impl Units {
    fn new(force_process_groups: bool) -> Units {
        let state = tempfile::tempdir().expect("state dir");
        let cgroup_parent =
            if force_process_groups { None } else { cgroup_mount().map(|mount| mount.join(unique("clusterd-test"))) };
        let processes = Arc::new(LinuxProcesses::new(ProcessConfig {
            cgroup_parent: cgroup_parent.clone(),
            node: None,
            force_process_groups,
            state_directory: state.path().to_path_buf(),
        }));
        Units { processes, cgroup_parent, _state: state }
    }

    /// The units of `node`, sharing this one's cgroup parent and pid-file directory (two daemons on one host).
    fn of_node(&self, node: &str, force_process_groups: bool) -> Arc<LinuxProcesses> {
        Arc::new(LinuxProcesses::new(ProcessConfig {
            cgroup_parent: self.cgroup_parent.clone(),
            node: Some(node.to_string()),
            force_process_groups,
            state_directory: self._state.path().to_path_buf(),
        }))
    }

    fn host(&self) -> Host {
        let mut host = FakeHost::new().host();
        host.processes = self.processes.clone();
        host
    }
}

impl Drop for Units {
    fn drop(&mut self) {
        let Some(parent) = &self.cgroup_parent else {
            return;
        };
        if let Ok(entries) = std::fs::read_dir(parent) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    let _ = std::fs::write(entry.path().join("cgroup.kill"), "1");
                    for _ in 0..50 {
                        if std::fs::remove_dir(entry.path()).is_ok() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        let _ = std::fs::remove_dir(parent);
    }
}

fn cgroup_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(left.split(' ').nth(4).unwrap_or("")))
    })
}

fn service(name: &str, script: &str, ready: Readiness, kill_after: Duration) -> ResourceDef {
    ResourceDef {
        name: name.to_string(),
        start_timeout: Duration::from_secs(20),
        stop_timeout: Duration::from_secs(20),
        monitor: Monitor { interval: Duration::from_secs(10), timeout: Duration::from_secs(20), depth: 0 },
        kind: ResourceKind::Process(ProcessResource {
            command: vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()],
            environment: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
            user: None,
            group: None,
            working_directory: Some(PathBuf::from("/")),
            output: ProcessOutput::Journal,
            ready,
            stop_signal: "SIGTERM".to_string(),
            kill_after,
        }),
    }
}

fn context(package: &str) -> ActionContext {
    ActionContext::new(package, 3, Duration::from_secs(20))
}

/// Every pid the unit has, after waiting for the daemon to have forked away.
async fn pids_after_daemonizing(processes: &LinuxProcesses, unit: &str) -> Vec<u32> {
    for _ in 0..50 {
        let pids = processes.pids(unit).await.expect("pids");
        if pids.len() >= 3 {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    processes.pids(unit).await.expect("pids")
}

/// The service double-forks a grandchild into its own session (like a daemon), then waits.
const DAEMONIZING: &str = "setsid sh -c 'sleep 300' </dev/null >/dev/null 2>&1 & exec sleep 300";

async fn daemonized_grandchild_is_stopped(force_process_groups: bool) {
    let units = Units::new(force_process_groups);
    let expected_mode = if force_process_groups { KillMode::ProcessGroup } else { KillMode::Cgroup };
    assert_eq!(units.processes.kill_mode(), expected_mode, "cgroup v2 must be usable here");
    let package = unique("pkg");
    let agent = build_agent(
        &service("daemon", DAEMONIZING, Readiness::AliveFor(Duration::from_millis(300)), Duration::from_secs(5)),
        &units.host(),
    );
    agent.start(&context(&package)).await.expect("start");
    let unit = format!("{package}.daemon");
    let pids = pids_after_daemonizing(&units.processes, &unit).await;
    assert!(pids.len() >= 2, "expected the service and its daemonized grandchild, found {pids:?}");
    // The grandchild is in another session: a process-group kill alone would miss it.
    let sessions: std::collections::HashSet<i32> = pids
        .iter()
        .filter_map(|pid| nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(*pid as i32))).ok())
        .map(|pid| pid.as_raw())
        .collect();
    assert!(sessions.len() >= 2, "grandchild did not leave the session: {pids:?}");
    assert_eq!(agent.monitor(&context(&package)).await, Ok(MonitorState::Running));

    agent.stop(&context(&package)).await.expect("stop");
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} survived stop");
    }
    assert_eq!(agent.monitor(&context(&package)).await, Ok(MonitorState::NotRunning));
}

#[tokio::test]
async fn a_daemonizing_service_is_fully_stopped_with_cgroup_v2() {
    if !require_root("process cgroup v2") {
        return;
    }
    daemonized_grandchild_is_stopped(false).await;
}

#[tokio::test]
async fn a_daemonizing_service_is_fully_stopped_with_process_groups() {
    if !require_root("process groups") {
        return;
    }
    daemonized_grandchild_is_stopped(true).await;
}

#[tokio::test]
async fn a_service_ignoring_sigterm_is_killed_after_the_timeout() {
    if !require_root("process ignoring sigterm") {
        return;
    }
    let units = Units::new(false);
    let package = unique("pkg");
    let script = "trap '' TERM; while :; do sleep 0.1; done";
    let agent = build_agent(
        &service("stubborn", script, Readiness::AliveFor(Duration::from_millis(200)), Duration::from_secs(1)),
        &units.host(),
    );
    agent.start(&context(&package)).await.expect("start");
    let pids = units.processes.pids(&format!("{package}.stubborn")).await.expect("pids");
    assert!(!pids.is_empty());
    let began = Instant::now();
    agent.stop(&context(&package)).await.expect("stop");
    let elapsed = began.elapsed();
    assert!(elapsed >= Duration::from_secs(1), "killed before kill_after: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "kill took too long: {elapsed:?}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived");
    }
}

#[tokio::test]
async fn readiness_by_tcp_port_waits_until_the_port_accepts() {
    if !require_root("process readiness by tcp") {
        return;
    }
    let units = Units::new(false);
    let package = unique("pkg");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let script = format!(
        "sleep 1; exec perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalAddr => \"127.0.0.1\", LocalPort => {port}, Listen => 5, ReuseAddr => 1) or die \"listen: $!\"; while (1) {{ $c = $s->accept; close $c if $c }}'"
    );
    let agent =
        build_agent(&service("listener", &script, Readiness::TcpPort(address), Duration::from_secs(2)), &units.host());
    let began = Instant::now();
    agent.start(&context(&package)).await.expect("start");
    assert!(began.elapsed() >= Duration::from_secs(1), "start returned before the port was open");
    assert!(std::net::TcpStream::connect(address).is_ok(), "port not accepting after start");
    agent.stop(&context(&package)).await.expect("stop");
    assert!(std::net::TcpStream::connect(address).is_err(), "port still accepting after stop");
}

#[tokio::test]
async fn process_agent_passes_the_conformance_suite_on_the_real_host() {
    if !require_root("process conformance") {
        return;
    }
    let units = Units::new(false);
    let package = unique("pkg");
    let agent: Box<dyn Agent> = build_agent(
        &service("sleeper", "exec sleep 300", Readiness::AliveFor(Duration::from_millis(100)), Duration::from_secs(2)),
        &units.host(),
    );
    check_lifecycle(agent.as_ref(), &context(&package)).await.unwrap_or_else(|failures| panic!("{failures:#?}"));
}

/// Two daemons on one host (two nodes of a lab, or `clusterd@n1` and `clusterd@n2`) share the parent cgroup
/// and the pid-file directory; each runs the same package's resource. Neither sees, signals or stops the
/// other's unit, in cgroup v2 mode and in process-group mode (where units are also found by environment).
async fn two_nodes_on_one_host_never_see_each_others_units(force_process_groups: bool) {
    let units = Units::new(force_process_groups);
    let (n1, n2) = (units.of_node("n1", force_process_groups), units.of_node("n2", force_process_groups));
    let expected_mode = if force_process_groups { KillMode::ProcessGroup } else { KillMode::Cgroup };
    assert_eq!(n1.kill_mode(), expected_mode);
    let package = unique("pkg");
    let unit = format!("{package}.server");
    let resource =
        service("server", DAEMONIZING, Readiness::AliveFor(Duration::from_millis(200)), Duration::from_secs(2));
    let host_of = |processes: &Arc<LinuxProcesses>| {
        let mut host = FakeHost::new().host();
        host.processes = processes.clone();
        host
    };
    let (agent1, agent2) = (build_agent(&resource, &host_of(&n1)), build_agent(&resource, &host_of(&n2)));

    agent1.start(&context(&package)).await.expect("start on n1");
    let pids1 = pids_after_daemonizing(&n1, &unit).await;
    assert!(pids1.len() >= 2, "n1's unit: {pids1:?}");
    assert_eq!(n2.pids(&unit).await.expect("pids"), Vec::<u32>::new(), "n2 sees n1's unit");
    assert_eq!(agent2.monitor(&context(&package)).await, Ok(MonitorState::NotRunning));
    // Stopping on n2 (a probe finding nothing) leaves n1's unit alone.
    agent2.stop(&context(&package)).await.expect("stop on n2");
    assert!(pids1.iter().all(|pid| alive(*pid)), "n2's stop touched n1's unit {pids1:?}");

    agent2.start(&context(&package)).await.expect("start on n2");
    let pids2 = pids_after_daemonizing(&n2, &unit).await;
    assert!(pids2.iter().all(|pid| !pids1.contains(pid)), "n2 adopted n1's processes: {pids1:?} {pids2:?}");
    let mut seen1 = n1.pids(&unit).await.expect("pids");
    seen1.sort();
    let mut expected1 = pids1.clone();
    expected1.sort();
    assert_eq!(seen1, expected1, "n1 sees n2's processes");

    agent1.stop(&context(&package)).await.expect("stop on n1");
    assert!(pids1.iter().all(|pid| !alive(*pid)), "n1's unit survived its stop");
    assert!(pids2.iter().all(|pid| alive(*pid)), "n1's stop killed n2's unit {pids2:?}");
    assert_eq!(agent2.monitor(&context(&package)).await, Ok(MonitorState::Running));
    agent2.stop(&context(&package)).await.expect("stop on n2");
    assert!(pids2.iter().all(|pid| !alive(*pid)), "n2's unit survived its stop");
}

#[tokio::test]
async fn two_nodes_on_one_host_never_see_each_others_units_with_cgroup_v2() {
    if !require_root("two nodes, cgroup v2") {
        return;
    }
    two_nodes_on_one_host_never_see_each_others_units(false).await;
}

#[tokio::test]
async fn two_nodes_on_one_host_never_see_each_others_units_with_process_groups() {
    if !require_root("two nodes, process groups") {
        return;
    }
    two_nodes_on_one_host_never_see_each_others_units(true).await;
}
