//! Root test: an abandoned action (its future dropped at the stop budget, as the executor's
//! `select!` does, or at the resource's `start_timeout`) must not keep acting on the node after the
//! runner called the resource stopped (issue 11, suspected S1 violation 2).
//!
//! - A `filesystem` whose device stops answering: `mount(2)` blocks in the kernel and cannot be
//!   cancelled. The stop that follows must not report "not mounted" while the mount may still land,
//!   and a mount that lands after its caller went away must be undone at once.
//! - An `ocf` agent (and a `process` readiness check) whose action forked children into its process
//!   group: dropping the action kills the whole group, not only the script.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cluster_agents::{AgentOptions, MonitorState, PackageRunner, RunError};
use cluster_host::fake::FakeHost;
use cluster_host::{Host, LinuxBlockDevices, LinuxMounts, LinuxProcesses, Mounts, ProcessConfig};
use cluster_package::{
    DeviceSpec, FilesystemResource, Monitor, OcfAgentRef, OcfResource, PackageDef, ProcessOutput, ProcessResource,
    Readiness, ResourceDef, ResourceKind,
};
use common::{alive, is_mounted, own_threads_mounting, require_root, threads_in_syscall, PidGuard, StallableDevice};

fn filesystem(device: &str, mountpoint: &Path, start_timeout: Duration, stop_timeout: Duration) -> ResourceDef {
    ResourceDef {
        name: "data".to_string(),
        start_timeout,
        stop_timeout,
        monitor: Monitor { interval: Duration::from_secs(10), timeout: Duration::from_secs(1), depth: 0 },
        kind: ResourceKind::Filesystem(FilesystemResource {
            device: DeviceSpec::Path(PathBuf::from(device)),
            mountpoint: mountpoint.to_path_buf(),
            fstype: "ext4".to_string(),
            options: Vec::new(),
            fsck: false,
            device_timeout: Duration::from_secs(2),
            kill_holders: true,
            unmount_retries: 2,
        }),
    }
}

fn package(resource: ResourceDef) -> PackageDef {
    let text = "name = \"web\"\n\n[[resource]]\nname = \"x\"\ntype = \"process\"\ncommand = [\"/bin/true\"]\n";
    let mut package = cluster_package::parse_package("web.toml", text).expect("valid package");
    package.resources = vec![resource];
    package
}

/// Real mounts and block devices (in-flight records under `state`); fakes for the rest.
fn mount_host(state: &Path) -> Host {
    let mut host = FakeHost::new().host();
    host.mounts = Arc::new(LinuxMounts::with_state_directory(state));
    host.block_devices = Arc::new(LinuxBlockDevices::new());
    host
}

/// Waits until no thread of this process is inside mount(2)/umount2(2) any more, then up to `grace`
/// for `mountpoint` to be unmounted; true if it is still mounted then (the abandoned mount landed
/// and stayed).
async fn landed_and_stayed(mountpoint: &Path, grace: Duration) -> bool {
    for _ in 0..200 {
        if own_threads_mounting() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if !is_mounted(mountpoint) && own_threads_mounting() == 0 {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    is_mounted(mountpoint)
}

/// Thaws `device` after `delay`, from a thread of its own (`fsfreeze` blocks).
fn thaw_after(device: &StallableDevice, delay: Duration) -> std::thread::JoinHandle<()> {
    let thaw = device.thaw_command();
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let _ = std::process::Command::new(&thaw[0]).args(&thaw[1..]).output();
    })
}

/// Failed before the fix: the start timed out (`start_timeout` 2 s) with its mount blocked in the
/// kernel, the rollback stop found nothing mounted and called the package down (the engine then
/// relocates it), a probe and an explicit stop said the same, and once the device answered the
/// mount landed and stayed: mounted on a node that no longer tracked it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_timed_out_does_not_leave_its_mount_behind() {
    if !require_root("abandoned mount after start_timeout") {
        return;
    }
    let device = StallableDevice::new();
    let directory = tempfile::tempdir().expect("tempdir");
    let mountpoint = directory.path().join("data");
    let state = directory.path().join("state");
    let host = mount_host(&state);
    let resource = filesystem(&device.device, &mountpoint, Duration::from_secs(2), Duration::from_secs(2));
    let runner = PackageRunner::new(&package(resource), &host, &AgentOptions::default());

    device.freeze();
    let start = runner.start(1).await.expect_err("a start with its device stalled");
    let probe = runner.probe(1).await.remove(0).state;
    let stop = runner.stop(1).await;
    device.thaw();
    let landed = landed_and_stayed(&mountpoint, Duration::from_secs(3)).await;
    let stop_after = runner.stop(1).await;

    let facts = format!(
        "start: {start}\nprobe while the mount is in flight: {probe:?}\nstop while the mount is in flight: {stop:?}\n\
         the abandoned mount landed and stayed: {landed}\nstop once the device answers: {stop_after:?}"
    );
    // The package may still become active here: the engine must not start it elsewhere (StopFailed).
    assert!(start.leaves_resources_active(), "{facts}");
    let expected = format!("mount of {} at {} still in flight", device.device, mountpoint.display());
    assert!(start.to_string().contains(&expected), "the failure names the device and the mountpoint\n{facts}");
    assert!(probe.is_err(), "a probe must not say running or stopped while the mount is in flight\n{facts}");
    match &stop {
        Err(RunError::StopFailed { failures, .. }) => {
            assert!(failures[0].error.message.contains(&expected), "{facts}")
        }
        other => panic!("stop while the mount is in flight: {other:?}\n{facts}"),
    }
    assert!(!landed, "{facts}");
    assert!(stop_after.is_ok(), "{facts}");
    assert!(!is_mounted(&mountpoint), "{facts}");
}

/// Failed before the fix: the executor drops the start at the lease's stop budget (`select!`) and
/// stops the package; that stop returned Ok at once although the mount was still in flight, and the
/// mount landed once the device answered. Now the stop waits for the mount, which is undone as soon
/// as it lands, and only then reports the package stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_start_does_not_leave_its_mount_behind() {
    if !require_root("abandoned mount after a dropped start") {
        return;
    }
    let device = StallableDevice::new();
    let directory = tempfile::tempdir().expect("tempdir");
    let mountpoint = directory.path().join("data");
    let state = directory.path().join("state");
    let host = mount_host(&state);
    let resource = filesystem(&device.device, &mountpoint, Duration::from_secs(30), Duration::from_secs(10));
    let runner = PackageRunner::new(&package(resource), &host, &AgentOptions::default());

    device.freeze();
    tokio::select! {
        outcome = runner.start(1) => panic!("start returned with its device stalled: {outcome:?}"),
        () = tokio::time::sleep(Duration::from_secs(2)) => {}
    }
    // The device answers again while the stop is running (as when a SAN path comes back).
    let thaw = thaw_after(&device, Duration::from_secs(1));
    let began = std::time::Instant::now();
    let stop = runner.stop(1).await;
    let stop_took = began.elapsed();
    let mounted_when_stopped = is_mounted(&mountpoint);
    thaw.join().expect("thaw thread");
    let landed = landed_and_stayed(&mountpoint, Duration::from_secs(3)).await;

    let facts = format!(
        "stop: {stop:?} after {stop_took:?}\nmounted when the stop returned: {mounted_when_stopped}\n\
         the abandoned mount landed and stayed: {landed}"
    );
    assert!(stop.is_ok(), "{facts}");
    assert!(stop_took >= Duration::from_millis(900), "the stop waited for the mount in flight\n{facts}");
    assert!(!mounted_when_stopped, "{facts}");
    assert!(!landed, "{facts}");
}

/// Failed before the fix: a daemon killed while its mount was blocked in the kernel leaves the mount
/// in flight (a thread in uninterruptible sleep outlives SIGKILL until the call returns, and the
/// mount then may land). A restarted daemon probing the resource saw "not running" and its stop
/// returned Ok. Now the in-flight record of the killed daemon makes the probe and the stop fail while
/// the mount may still land; once the call has returned, the probe reports what the kernel did (the
/// mount landed or gave up on the pending SIGKILL) and the stop leaves nothing mounted.
#[test]
fn a_mount_left_in_flight_by_a_killed_daemon_is_not_reported_stopped() {
    if !require_root("mount in flight in a killed daemon") {
        return;
    }
    let mut device = StallableDevice::new();
    let directory = tempfile::tempdir().expect("tempdir");
    let mountpoint = directory.path().join("data");
    let state = directory.path().join("state");
    std::fs::create_dir_all(&mountpoint).expect("mountpoint");
    device.freeze();
    // The "old daemon": a forked child mounting through its own LinuxMounts with the same state directory.
    // SAFETY: this test thread is the only one that runs here (no runtime exists yet); the child builds its own
    // runtime, does one mount and leaves with `_exit`, never returning into the test harness.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => {
                    let mounts = LinuxMounts::with_state_directory(&state);
                    let result = runtime.block_on(mounts.mount(Path::new(&device.device), &mountpoint, "ext4", &[]));
                    i32::from(result.is_err())
                }
                Err(_) => 2,
            };
            // SAFETY: leaves the forked child without running the parent's destructors or atexit handlers.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => device.adopt_child(child.as_raw()),
    }
    let child = *device.children().last().expect("child");
    let mut blocked = false;
    for _ in 0..200 {
        if threads_in_syscall(child as u32, &[libc::SYS_mount]) > 0 {
            blocked = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(blocked, "the child never blocked in mount(2)");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), nix::sys::signal::Signal::SIGKILL).expect("kill child");
    std::thread::sleep(Duration::from_millis(200));
    assert!(threads_in_syscall(child as u32, &[libc::SYS_mount]) > 0, "SIGKILL does not end a blocked mount(2)");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        // The "restarted daemon".
        let host = mount_host(&state);
        let resource = filesystem(&device.device, &mountpoint, Duration::from_secs(2), Duration::from_secs(2));
        let runner = PackageRunner::new(&package(resource), &host, &AgentOptions::default());
        let probe = runner.probe(1).await.remove(0).state;
        let stop = runner.stop(1).await;
        device.thaw();
        let reaped =
            tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None))
                .await
                .expect("waitpid task");
        let landed = is_mounted(&mountpoint);
        let probe_after = runner.probe(1).await.remove(0).state;
        let stop_after = runner.stop(1).await;
        let facts = format!(
            "probe while the killed daemon's mount is in flight: {probe:?}\nstop then: {stop:?}\n\
             child: {reaped:?}\nthe killed daemon's mount landed: {landed}\nprobe after: {probe_after:?}\n\
             stop after: {stop_after:?}"
        );
        assert!(probe.is_err(), "{facts}");
        let expected = format!("mount of {} at {} still in flight", device.device, mountpoint.display());
        match &stop {
            Err(RunError::StopFailed { failures, .. }) => {
                assert!(failures[0].error.message.contains(&expected), "{facts}")
            }
            other => panic!("stop while the mount is in flight: {other:?}\n{facts}"),
        }
        // Whether the kernel completes a mount whose caller was killed depends on where it slept: a
        // later step of ext4's mount may see the pending SIGKILL and give up. Either way, once the
        // call has returned, the restarted daemon must report what the kernel did.
        let expected_after = if landed { MonitorState::Running } else { MonitorState::NotRunning };
        assert_eq!(probe_after, Ok(expected_after), "{facts}");
        assert!(stop_after.is_ok() && !is_mounted(&mountpoint), "{facts}");
    });
}

/// An OCF agent whose start forks a background child into its process group, starts a foreground
/// child and waits for it (hangs). The pids of both go to the file named by `OCF_RESKEY_pids`.
const HANGING_AGENT: &str = r#"#!/bin/sh
case "$1" in
  start)
    sleep 300 </dev/null >/dev/null 2>&1 &
    echo $! > "$OCF_RESKEY_pids.tmp"
    sleep 301 </dev/null >/dev/null 2>&1 &
    echo $! >> "$OCF_RESKEY_pids.tmp"
    mv "$OCF_RESKEY_pids.tmp" "$OCF_RESKEY_pids"
    wait
    ;;
  stop|validate-all) exit 0 ;;
  monitor) exit 7 ;;
  meta-data) echo '<resource-agent name="hanging"/>'; exit 0 ;;
  *) exit 3 ;;
esac
"#;

fn processes_host(state: &Path) -> Host {
    let mut host = FakeHost::new().host();
    host.processes = Arc::new(LinuxProcesses::new(ProcessConfig {
        cgroup_parent: None,
        node: None,
        force_process_groups: true,
        state_directory: state.to_path_buf(),
    }));
    host
}

/// The pids listed in `file`, once it exists (the action wrote it).
async fn pids_in(file: &Path) -> Vec<u32> {
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(file) {
            return text.lines().filter_map(|line| line.trim().parse().ok()).collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} was never written", file.display());
}

/// Whether every pid is gone within two seconds.
async fn all_gone(pids: &[u32]) -> bool {
    for _ in 0..40 {
        if pids.iter().all(|pid| !alive(*pid)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Failed before the fix: dropping the start killed only the agent script (`kill_on_drop`); its
/// background child and the child it waited for kept running, outside anything the runner tracks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_ocf_action_takes_its_whole_process_group_with_it() {
    if !require_root("ocf action dropped") {
        return;
    }
    let directory = tempfile::tempdir().expect("tempdir");
    let script = directory.path().join("hanging");
    std::fs::write(&script, HANGING_AGENT).expect("write agent");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod agent");
    let pid_file = directory.path().join("pids");
    let resource = ResourceDef {
        name: "app".to_string(),
        start_timeout: Duration::from_secs(60),
        stop_timeout: Duration::from_secs(10),
        monitor: Monitor { interval: Duration::from_secs(10), timeout: Duration::from_secs(10), depth: 0 },
        kind: ResourceKind::Ocf(OcfResource {
            agent: OcfAgentRef::Path(script),
            params: BTreeMap::from([("pids".to_string(), pid_file.display().to_string())]),
        }),
    };
    let host = processes_host(&directory.path().join("state"));
    let runner = PackageRunner::new(&package(resource), &host, &AgentOptions::default());

    let pids = tokio::select! {
        outcome = runner.start(1) => panic!("the hanging start returned: {outcome:?}"),
        // Checked inside the branch: `select!` drops the start as soon as a branch is ready.
        seen = async {
            let pids = pids_in(&pid_file).await;
            let running = pids.iter().all(|pid| alive(*pid));
            (pids, running)
        } => seen,
    };
    let (pids, running) = pids;
    let _guard = PidGuard(pids.clone());
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(running, "children running before the drop: {pids:?}");
    // The start future was dropped when `select!` returned.
    assert!(all_gone(&pids).await, "children of the dropped ocf start survived: {pids:?}");
}

/// Failed before the fix: a `process` resource's start dropped during its readiness check left the
/// check command's children running; the service itself is stopped by the stop that follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_readiness_check_takes_its_whole_process_group_with_it() {
    if !require_root("process readiness check dropped") {
        return;
    }
    let directory = tempfile::tempdir().expect("tempdir");
    let pid_file = directory.path().join("pids");
    let check = format!(
        "sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {file}.tmp; sleep 301 </dev/null >/dev/null 2>&1 & \
         echo $! >> {file}.tmp; mv {file}.tmp {file}; wait",
        file = pid_file.display()
    );
    let resource = ResourceDef {
        name: "server".to_string(),
        start_timeout: Duration::from_secs(60),
        stop_timeout: Duration::from_secs(10),
        monitor: Monitor { interval: Duration::from_secs(10), timeout: Duration::from_secs(10), depth: 0 },
        kind: ResourceKind::Process(ProcessResource {
            command: vec!["sleep".to_string(), "300".to_string()],
            environment: BTreeMap::new(),
            user: None,
            group: None,
            working_directory: None,
            output: ProcessOutput::Journal,
            ready: Readiness::Command(vec!["/bin/sh".to_string(), "-c".to_string(), check]),
            stop_signal: "SIGTERM".to_string(),
            kill_after: Duration::from_secs(2),
        }),
    };
    let state = directory.path().join("state");
    let host = processes_host(&state);
    let package_name = common::unique("pkg");
    let mut definition = package(resource);
    definition.name = package_name.clone();
    let runner = PackageRunner::new(&definition, &host, &AgentOptions::default());

    let pids = tokio::select! {
        outcome = runner.start(1) => panic!("the start returned during its hanging readiness check: {outcome:?}"),
        pids = pids_in(&pid_file) => pids,
    };
    let _guard = PidGuard(pids.clone());
    let service = host.processes.pids(&format!("{package_name}.server")).await.expect("unit pids");
    let _service_guard = PidGuard(service.clone());
    assert_eq!(pids.len(), 2, "{pids:?}");
    let check_gone = all_gone(&pids).await;
    runner.stop(1).await.expect("stop of the service");
    assert!(service.iter().all(|pid| !alive(*pid)), "the service survived its stop: {service:?}");
    assert!(check_gone, "children of the dropped readiness check survived: {pids:?}");
}
