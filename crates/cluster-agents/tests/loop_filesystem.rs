//! Root test: the `filesystem` agent mounting ext4 on a loop device, found by `LABEL=`, unmounting it
//! also while a process holds a file open under the mountpoint.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use cluster_agents::conformance::check_lifecycle;
use cluster_agents::{build_agent, ActionContext, MonitorState, OcfStatus};
use std::sync::Arc;

use cluster_host::fake::FakeHost;
use cluster_host::{Host, LinuxBlockDevices, LinuxMounts};
use cluster_package::{DeviceSpec, FilesystemResource, Monitor, ResourceDef, ResourceKind};
use common::{alive, is_mounted, must, require_root, unique, ChildGuard, LoopDevice, MountGuard};

fn resource(device: DeviceSpec, mountpoint: PathBuf, kill_holders: bool) -> ResourceDef {
    ResourceDef {
        name: "data".to_string(),
        start_timeout: Duration::from_secs(30),
        stop_timeout: Duration::from_secs(30),
        monitor: Monitor { interval: Duration::from_secs(10), timeout: Duration::from_secs(20), depth: 10 },
        kind: ResourceKind::Filesystem(FilesystemResource {
            device,
            mountpoint,
            fstype: "ext4".to_string(),
            options: vec!["noatime".to_string()],
            fsck: true,
            device_timeout: Duration::from_secs(5),
            kill_holders,
            unmount_retries: 2,
        }),
    }
}

/// Real mounts and block devices, recording mounts in flight under `state` (not the host's
/// `/run/clusterd`); fakes for the rest (no cgroup is created).
fn host(state: &tempfile::TempDir) -> Host {
    let mut host = FakeHost::new().host();
    host.mounts = Arc::new(LinuxMounts::with_state_directory(state.path()));
    host.block_devices = Arc::new(LinuxBlockDevices::new());
    host
}

fn context() -> ActionContext {
    ActionContext::new("web", 1, Duration::from_secs(30))
}

fn deep() -> ActionContext {
    let mut context = context();
    context.depth = 10;
    context
}

/// An ext4 loop device with a unique label (ext4 labels hold 16 bytes).
fn ext4_device() -> (LoopDevice, String) {
    let device = LoopDevice::new(32);
    let label = format!("cl{}", unique("").replace('-', ""));
    let label: String = label.chars().take(16).collect();
    must(&["mkfs.ext4", "-q", "-F", "-L", &label, &device.device]);
    (device, label)
}

#[tokio::test]
async fn ext4_by_label_is_mounted_checked_and_unmounted() {
    if !require_root("filesystem on a loop device") {
        return;
    }
    let (device, label) = ext4_device();
    let directory = tempfile::tempdir().expect("tempdir");
    let mountpoint = directory.path().join("mnt/data");
    let _mount_guard = MountGuard(mountpoint.clone());
    let host = host(&directory);
    let agent = build_agent(&resource(DeviceSpec::Label(label.clone()), mountpoint.clone(), true), &host);

    check_lifecycle(agent.as_ref(), &context()).await.unwrap_or_else(|failures| panic!("{failures:#?}"));

    agent.start(&context()).await.expect("start");
    assert!(is_mounted(&mountpoint), "not mounted after start");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let line = mountinfo.lines().find(|line| line.split(' ').nth(4) == mountpoint.to_str()).expect("mount line");
    assert!(line.contains(&device.device) && line.contains(" ext4 ") && line.contains("noatime"), "{line}");
    assert_eq!(agent.monitor(&deep()).await, Ok(MonitorState::Running), "read/write check");
    agent.stop(&context()).await.expect("stop");
    assert!(!is_mounted(&mountpoint), "still mounted after stop");
}

#[tokio::test]
async fn unmount_kills_a_process_holding_a_file_open() {
    if !require_root("filesystem with a holder") {
        return;
    }
    let (device, _label) = ext4_device();
    let directory = tempfile::tempdir().expect("tempdir");
    let mountpoint = directory.path().join("data");
    let _mount_guard = MountGuard(mountpoint.clone());
    let host = host(&directory);
    let agent =
        build_agent(&resource(DeviceSpec::Path(PathBuf::from(&device.device)), mountpoint.clone(), true), &host);
    agent.start(&context()).await.expect("start");

    // A holder that ignores SIGTERM: it must be killed with SIGKILL after the grace period.
    let script = format!("trap '' TERM; exec 3>>'{}/held.log'; while :; do sleep 0.2; done", mountpoint.display());
    let holder = ChildGuard(std::process::Command::new("sh").arg("-c").arg(&script).spawn().expect("spawn holder"));
    let pid = holder.0.id();
    // Wait until it has the file open.
    for _ in 0..50 {
        if mountpoint.join("held.log").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(alive(pid));

    let began = std::time::Instant::now();
    agent.stop(&context()).await.expect("stop despite the holder");
    assert!(!is_mounted(&mountpoint), "still mounted");
    assert!(began.elapsed() >= Duration::from_secs(2), "holder was given its grace period before SIGKILL");
    let mut holder = holder;
    let status = holder.0.wait().expect("reap holder");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "holder killed by SIGKILL");
}

#[tokio::test]
async fn unmount_without_killing_holders_fails_clearly() {
    if !require_root("filesystem busy") {
        return;
    }
    let (device, _label) = ext4_device();
    let directory = tempfile::tempdir().expect("tempdir");
    let mountpoint = directory.path().join("data");
    let _mount_guard = MountGuard(mountpoint.clone());
    let host = host(&directory);
    let agent =
        build_agent(&resource(DeviceSpec::Path(PathBuf::from(&device.device)), mountpoint.clone(), false), &host);
    agent.start(&context()).await.expect("start");
    let holder = ChildGuard(
        std::process::Command::new("sleep").arg("300").current_dir(&mountpoint).spawn().expect("spawn holder"),
    );
    let error = agent.stop(&context()).await.expect_err("busy");
    assert_eq!(error.status, OcfStatus::ErrGeneric);
    assert_eq!(
        error.message,
        format!(
            "failed to unmount {} after 2 attempts: target is busy (held by pids {})",
            mountpoint.display(),
            holder.0.id()
        )
    );
    assert!(is_mounted(&mountpoint));
    drop(holder);
    agent.stop(&context()).await.expect("stop once the holder is gone");
    assert!(!is_mounted(&mountpoint));
}
