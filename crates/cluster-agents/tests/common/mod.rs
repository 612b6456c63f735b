//! Shared helpers of the root tests: the root guard, unique names, and drop guards that remove every
//! namespace, loop device, mount and process a test made, also on failure.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// True when the test may run. Not root: skip with a message, except in CI (`CI=true`), where it fails.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root and CI=true: refusing to skip");
    }
    eprintln!("skipping {test}: needs root (run as root, or with CI=true to make this a failure)");
    false
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `PREFIX-PID-N`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// Run a command, returning its output (never panics on a non-zero exit).
pub fn run(argv: &[&str]) -> Output {
    Command::new(argv[0]).args(&argv[1..]).output().unwrap_or_else(|error| panic!("failed to run {argv:?}: {error}"))
}

/// Run a command that must succeed; returns its stdout.
pub fn must(argv: &[&str]) -> String {
    let output = run(argv);
    assert!(
        output.status.success(),
        "{argv:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        must(&["ip", "netns", "add", &name]);
        let netns = Netns { name };
        netns.exec(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Run a command inside the namespace; must succeed.
    pub fn exec(&self, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(argv);
        must(&full)
    }

    /// Run a command inside the namespace; returns whether it succeeded.
    pub fn try_exec(&self, argv: &[&str]) -> bool {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(argv);
        run(&full).status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Two namespaces joined by a veth pair (`eth0` in each), with 192.0.2.1/24 and 192.0.2.2/24 and
/// 2001:db8::1/64, 2001:db8::2/64 (no DAD). Nothing is created in the root namespace.
pub struct Segment {
    pub node: Netns,
    pub neighbour: Netns,
}

impl Segment {
    pub fn new() -> Segment {
        let node = Netns::new("clagent-node");
        let neighbour = Netns::new("clagent-nbr");
        must(&[
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            &node.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &neighbour.name,
        ]);
        for (netns, v4, v6) in
            [(&node, "192.0.2.1/24", "2001:db8::1/64"), (&neighbour, "192.0.2.2/24", "2001:db8::2/64")]
        {
            netns.exec(&["ip", "addr", "add", v4, "dev", "eth0"]);
            netns.exec(&["ip", "addr", "add", v6, "dev", "eth0", "nodad"]);
            netns.exec(&["ip", "link", "set", "eth0", "up"]);
        }
        Segment { node, neighbour }
    }

    pub fn mac_of_node(&self) -> String {
        let text = self.node.exec(&["cat", "/sys/class/net/eth0/address"]);
        text.trim().to_string()
    }
}

/// A loop device over a sparse file, detached on drop.
pub struct LoopDevice {
    pub device: String,
    image: tempfile::NamedTempFile,
}

impl LoopDevice {
    pub fn new(size_mb: u64) -> LoopDevice {
        let image = tempfile::NamedTempFile::new().expect("image file");
        image.as_file().set_len(size_mb * 1024 * 1024).expect("size image");
        let device =
            must(&["losetup", "--find", "--show", image.path().to_str().expect("utf-8 path")]).trim().to_string();
        LoopDevice { device, image }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).output();
    }
}

/// Unmounts (lazily, as a last resort) whatever is still mounted at a path on drop.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        }
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let wanted = path.to_str().expect("utf-8 path");
    mountinfo.lines().any(|line| line.split(' ').nth(4) == Some(wanted))
}

/// Kills (SIGKILL, by pid) and reaps a child on drop.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a pid is alive (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    /// `PF_EXITING` in the `flags` field of `/proc/PID/stat`: the process is being torn down (a killed
    /// process can still show state `R` for a moment, without memory or environment).
    const PF_EXITING: u64 = 0x4;
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let fields: Vec<&str> =
                stat.rfind(')').map(|index| stat[index + 2..].split_whitespace().collect()).unwrap_or_default();
            let state = fields.first().and_then(|state| state.chars().next());
            let exiting =
                fields.get(6).and_then(|flags| flags.parse::<u64>().ok()).is_some_and(|f| f & PF_EXITING != 0);
            !matches!(state, Some('Z') | Some('X') | None) && !exiting
        }
        Err(_) => false,
    }
}

/// Threads of process `pid` now inside one of the system calls `numbers` (from `/proc/PID/task/*/syscall`).
pub fn threads_in_syscall(pid: u32, numbers: &[i64]) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("syscall"))
                .ok()
                .and_then(|text| text.split(' ').next().and_then(|number| number.trim().parse::<i64>().ok()))
                .is_some_and(|number| numbers.contains(&number))
        })
        .count()
}

/// Threads of this test process now inside `mount(2)` or `umount2(2)`.
pub fn own_threads_mounting() -> usize {
    threads_in_syscall(std::process::id(), &[libc::SYS_mount, libc::SYS_umount2])
}

/// An ext4 filesystem whose device can be made to stop answering writes: a loop device over an image
/// file that lies on a second ext4 filesystem, itself on a loop device. [`StallableDevice::freeze`]
/// freezes the outer filesystem (`fsfreeze -f`): every write to the inner device then waits in the
/// kernel, so a `mount(2)` of the inner filesystem (ext4 writes its superblock while mounting) blocks,
/// uninterruptibly, until [`StallableDevice::thaw`]. It stands for a LUN that stopped answering
/// (device-mapper's `dmsetup suspend` does the same but needs a kernel with device-mapper, which this
/// test machine lacks). On drop: thaw, wait until no thread of this process (or an adopted child) is
/// still inside mount(2), unmount whatever is mounted from the inner device, detach both devices.
pub struct StallableDevice {
    /// The inner device: mount this one.
    pub device: String,
    outer: LoopDevice,
    outer_mount: PathBuf,
    children: Vec<i32>,
    _directory: tempfile::TempDir,
}

impl StallableDevice {
    pub fn new() -> StallableDevice {
        let outer = LoopDevice::new(64);
        must(&["mkfs.ext4", "-q", "-F", &outer.device]);
        let directory = tempfile::tempdir().expect("tempdir");
        let outer_mount = directory.path().join("outer");
        std::fs::create_dir(&outer_mount).expect("outer mountpoint");
        must(&["mount", "-t", "ext4", &outer.device, outer_mount.to_str().expect("utf-8 path")]);
        let image = outer_mount.join("inner.img");
        std::fs::File::create(&image).and_then(|file| file.set_len(32 * 1024 * 1024)).expect("inner image");
        let image = image.to_str().expect("utf-8 path").to_string();
        let device = match run(&["losetup", "--find", "--show", &image]) {
            output if output.status.success() => String::from_utf8_lossy(&output.stdout).trim().to_string(),
            output => {
                let _ = Command::new("umount").arg(&outer_mount).output();
                panic!("losetup of {image} failed: {}", String::from_utf8_lossy(&output.stderr));
            }
        };
        let stallable = StallableDevice { device, outer, outer_mount, children: Vec::new(), _directory: directory };
        must(&["mkfs.ext4", "-q", "-F", &stallable.device]);
        must(&["sync"]);
        stallable
    }

    /// From now on every write to [`StallableDevice::device`] blocks.
    pub fn freeze(&self) {
        must(&["fsfreeze", "--freeze", self.outer_mount.to_str().expect("utf-8 path")]);
    }

    /// The device answers again.
    pub fn thaw(&self) {
        let _ = run(&["fsfreeze", "--unfreeze", self.outer_mount.to_str().expect("utf-8 path")]);
    }

    /// The command that thaws the device (for a thread of its own).
    pub fn thaw_command(&self) -> Vec<String> {
        vec!["fsfreeze".to_string(), "--unfreeze".to_string(), self.outer_mount.display().to_string()]
    }

    /// The adopted children.
    pub fn children(&self) -> &[i32] {
        &self.children
    }

    /// A forked child that may be blocked on the device: killed and reaped (after the thaw) on drop.
    pub fn adopt_child(&mut self, pid: i32) {
        self.children.push(pid);
    }

    fn mountpoints(&self) -> Vec<PathBuf> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        mountinfo
            .lines()
            .filter_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                (right.split(' ').nth(1) == Some(self.device.as_str()))
                    .then(|| PathBuf::from(left.split(' ').nth(4).unwrap_or("")))
            })
            .collect()
    }
}

impl Drop for StallableDevice {
    fn drop(&mut self) {
        self.thaw();
        for pid in &self.children {
            let pid = nix::unistd::Pid::from_raw(*pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        // A mount still in flight lands now: let it, so that it can be unmounted below.
        for _ in 0..200 {
            if own_threads_mounting() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for mountpoint in self.mountpoints() {
            let _ = Command::new("umount").arg("-l").arg(&mountpoint).output();
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).output();
        if Command::new("umount").arg(&self.outer_mount).output().map(|output| !output.status.success()).unwrap_or(true)
        {
            let _ = Command::new("umount").arg("-l").arg(&self.outer_mount).output();
        }
        // `self.outer` detaches the outer loop device when dropped after this.
        let _ = &self.outer;
    }
}

/// Kills (SIGKILL, by pid) the listed processes on drop.
pub struct PidGuard(pub Vec<u32>);

impl Drop for PidGuard {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
