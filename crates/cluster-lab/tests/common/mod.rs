//! Helpers shared by the lab's root tests: the root guard, unique lab names, namespace threads, leftovers.

#![allow(dead_code, unreachable_pub)]

pub mod package_lab;

use std::path::{Path, PathBuf};

use cluster_lab::lab::{self, LabPaths};

/// True when the test may run; false (after a message) when it must skip. Fails when `CI=true` and not root.
pub fn require_root(test: &str) -> bool {
    if cluster_lab::sys::is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root, and CI=true forbids skipping it");
    }
    eprintln!("skipping {test}: needs root (run as root, or CI=true to make this a failure)");
    false
}

/// A lab name unique to this process and test (tests run in parallel).
pub fn lab_name(tag: &str) -> String {
    format!("t{tag}{}", std::process::id() % 100_000)
}

/// Runs `work` on a fresh OS thread that entered the network namespace of `member` of lab `name`.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    member: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = Path::new("/run/netns").join(LabPaths::new(name).unwrap().netns(member));
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        work()
    })
}

/// Everything of lab `name` still on the host; empty when it is fully gone.
pub fn leftovers(name: &str, pids: &[i32]) -> Vec<String> {
    let paths = LabPaths::new(name).unwrap();
    let mut found = Vec::new();
    for netns in lab::netns_with_prefix(&paths.netns_prefix()) {
        found.push(format!("netns {netns}"));
    }
    if paths.cgroup().exists() {
        found.push(format!("cgroup {}", paths.cgroup().display()));
    }
    for device in lab::loop_devices_under(&paths.var_dir()) {
        found.push(format!("loop device {device}"));
    }
    for dir in [paths.run_dir(), paths.var_dir()] {
        for mount in lab::mounts_under(&dir) {
            found.push(format!("mount {}", mount.display()));
        }
        if dir.exists() {
            found.push(format!("folder {}", dir.display()));
        }
    }
    for pid in pids {
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|stat| !stat.contains(") Z")).unwrap_or(false);
        if alive {
            found.push(format!("process {pid}"));
        }
    }
    found
}

/// Every pid in the lab's cgroup now.
pub fn lab_pids(name: &str) -> Vec<i32> {
    pids_under(&LabPaths::new(name).unwrap().cgroup())
}

/// Every pid in `cgroup` and the cgroups below it now.
pub fn pids_under(cgroup: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![cgroup.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|line| line.parse::<i32>().ok()));
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    pids
}

/// The pids of processes named `comm` in `node`'s cgroup (and below it).
pub fn pids_named(lab: &lab::Lab, node: &str, comm: &str) -> Vec<i32> {
    let mut pids = pids_under(&lab.paths().cgroup().join(node));
    pids.retain(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|name| name.trim() == comm));
    pids
}

/// Moves the Raft leadership to `node`, asked through `via`: a transfer can lose its election on a
/// loaded machine (clusterd retries 3 times itself), so it is tried a few times; the last error.
pub fn transfer_leadership(lab: &lab::Lab, via: &str, node: &str) -> Result<(), lab::LabError> {
    let mut last = None;
    for _ in 0..5 {
        match lab.clusterctl(via, &["cluster", "transfer-leader", node]) {
            Ok(_) => return Ok(()),
            Err(error) => last = Some(error),
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    Err(last.expect("five attempts"))
}

/// The `clusterlab` binary built with this test.
pub fn clusterlab() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_clusterlab"))
}

/// The clusterd and clusterctl binaries: `CLUSTERD_BIN`/`CLUSTERCTL_BIN`, else the ones next to this
/// test binary's profile directory (built with cargo if missing).
pub fn clusterd_binaries() -> (PathBuf, PathBuf) {
    if let (Ok(clusterd), Ok(clusterctl)) = (std::env::var("CLUSTERD_BIN"), std::env::var("CLUSTERCTL_BIN")) {
        return (clusterd.into(), clusterctl.into());
    }
    // target/<profile>/deps/TEST-HASH → target/<profile>/
    let profile_dir = std::env::current_exe().unwrap().parent().and_then(|deps| deps.parent()).unwrap().to_path_buf();
    let clusterd = profile_dir.join("clusterd");
    let clusterctl = profile_dir.join("clusterctl");
    if !clusterd.exists() || !clusterctl.exists() {
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "clusterd", "-p", "clusterctl", "--target-dir"])
            .arg(target_dir)
            .status()
            .expect("run cargo build for clusterd and clusterctl");
        assert!(status.success(), "cargo build -p clusterd -p clusterctl failed");
    }
    (clusterd, clusterctl)
}

/// Prints what helps to understand a failed lab test: `events` (as fetched by the caller) and the tail of every
/// node's clusterd log, and keeps each whole log in the temp folder (the lab's folder goes away with the lab).
pub fn dump_logs(lab: &cluster_lab::lab::Lab, name: &str, events: &str, nodes: &[&str]) {
    eprintln!("[{name}] ---- events ----\n{events}");
    for node in nodes {
        let log = lab.paths().node_run_dir(node).join("clusterd.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|line| !line.contains("refused tls connection")).collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        eprintln!("[{name}] ---- {node} clusterd.log (tail) ----\n{tail}");
        let kept = std::env::temp_dir().join(format!("clusterlab-{name}-{node}.log"));
        if std::fs::write(&kept, &text).is_ok() {
            eprintln!("[{name}] full log of {node}: {}", kept.display());
        }
    }
}

/// Stops `observer`; returns the history with the faults merged in, its end, and the split-brain verdict, printed.
pub fn finish_observer(
    observer: cluster_lab::observer::Observer,
    name: &str,
    started: std::time::Instant,
) -> (Vec<cluster_lab::history::Record>, u64, cluster_lab::history::SplitBrainReport) {
    let (records, end_ns) = observer.stop();
    let report = cluster_lab::history::check_split_brain(&records, end_ns);
    eprintln!(
        "[{name}] split brain: {} violation(s), {} uncertain; test time {:?}",
        report.violations.len(),
        report.uncertain.len(),
        started.elapsed()
    );
    for overlap in report.violations.iter().chain(&report.uncertain) {
        eprintln!("[{name}]   {overlap:?} ({:.1} ms)", overlap.millis());
    }
    (records, end_ns, report)
}
