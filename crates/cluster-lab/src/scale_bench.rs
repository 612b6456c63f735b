//! The scale benchmark (issue: "1,000 packages on a 5-node lab: `clusterctl status` time and the time to relocate
//! 100 packages of a killed node"), measured from outside on a clusterd lab.
//!
//! ```text
//!   lab up (N nodes, lease-only) ─▶ pkg apply P one-process packages (auto_run, ordered, failback auto,
//!   primaries rotated over the nodes, fallbacks spread) ─▶ wait until every package runs on its primary
//!   ─▶ idle CPU of every clusterd (/proc/PID/stat over a window)
//!   ─▶ request times from the leader and a follower: status, status --output json, pkg list, cluster settings
//!   ─▶ trials: kill a node (not the Raft leader; with --leader-trial also the leader) that owns ≥ 1 package
//!        ─▶ poll `pkg list` on a survivor until every package of the victim runs elsewhere
//!        ─▶ events: kill → each package's `starting -> running` (first, median, last), reassignments
//!        ─▶ power the victim on ─▶ failback: every package back on its primary
//!   ─▶ lab down (also on error)
//! ```
//!
//! Every package is one `process` resource running `sleep infinity` (ready once alive for 100 ms), so the figures
//! are the cluster's own costs: placement, Raft, the executor, the process agent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::history::percentile;
use crate::lab::{Daemon, Lab, LabError, LabGuard, LabSpec};
use crate::sys;

/// Settings of `bench-scale`.
#[derive(Clone, Debug)]
pub struct ScaleBenchOptions {
    /// Lab name.
    pub lab: String,
    /// Voting nodes.
    pub nodes: usize,
    /// Packages.
    pub packages: usize,
    /// Kill trials of a node that is not the Raft leader.
    pub trials: usize,
    /// Also one kill trial of the leader (when it owns packages).
    pub leader_trial: bool,
    /// Timed runs of each request.
    pub status_runs: usize,
    /// Window of the idle CPU measurement.
    pub idle_window: Duration,
    /// Packages applied per `clusterctl pkg apply` call.
    pub apply_chunk: usize,
    /// How long to wait for the packages to run (start, relocation, failback).
    pub settle_timeout: Duration,
    /// `clusterd` binary.
    pub clusterd: PathBuf,
    /// `clusterctl` binary.
    pub clusterctl: PathBuf,
    /// Stop once every package runs and leave the lab up (to explore it).
    pub setup_only: bool,
}

impl ScaleBenchOptions {
    /// The full benchmark: 5 nodes, 1,000 packages.
    pub fn full(lab: &str, clusterd: PathBuf, clusterctl: PathBuf) -> ScaleBenchOptions {
        ScaleBenchOptions {
            lab: lab.to_string(),
            nodes: 5,
            packages: 1000,
            trials: 3,
            leader_trial: true,
            status_runs: 20,
            idle_window: Duration::from_secs(10),
            apply_chunk: 100,
            settle_timeout: Duration::from_secs(300),
            clusterd,
            clusterctl,
            setup_only: false,
        }
    }

    /// CI mode: 3 nodes, 60 packages, one trial, short windows (well under two minutes).
    pub fn quick(lab: &str, clusterd: PathBuf, clusterctl: PathBuf) -> ScaleBenchOptions {
        ScaleBenchOptions {
            nodes: 3,
            packages: 60,
            trials: 1,
            leader_trial: false,
            status_runs: 5,
            idle_window: Duration::from_secs(3),
            settle_timeout: Duration::from_secs(45),
            ..ScaleBenchOptions::full(lab, clusterd, clusterctl)
        }
    }
}

/// Median, p99 and maximum of a set of values (ms).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figure {
    /// Values.
    pub count: usize,
    /// Median.
    pub median: Option<f64>,
    /// p99 (nearest rank: the maximum below 100 values).
    pub p99: Option<f64>,
    /// Maximum.
    pub max: Option<f64>,
}

impl Figure {
    fn of(values: &[f64]) -> Figure {
        Figure {
            count: values.len(),
            median: percentile(values, 50.0),
            p99: percentile(values, 99.0),
            max: values.iter().copied().reduce(f64::max),
        }
    }

    fn show(&self) -> String {
        let ms = |value: Option<f64>| value.map(|ms| format!("{ms:.0}")).unwrap_or_else(|| "-".into());
        format!("n={:<3} median {:>6} ms  p99 {:>6} ms", self.count, ms(self.median), ms(self.p99))
    }
}

/// Wall time of one kind of `clusterctl` request, run on one node.
#[derive(Clone, Debug, Serialize)]
pub struct RequestTiming {
    /// The node `clusterctl` ran on (through its Unix socket).
    pub node: String,
    /// Whether that node was the Raft leader (otherwise the request is forwarded to it).
    pub leader: bool,
    /// The arguments.
    pub request: String,
    /// Wall time of the whole command (process start included), ms.
    pub wall_ms: Figure,
    /// Bytes written to stdout.
    pub output_bytes: usize,
}

/// Idle CPU of one node's clusterd.
#[derive(Clone, Debug, Serialize)]
pub struct IdleCpu {
    /// The node.
    pub node: String,
    /// Packages it runs.
    pub packages: usize,
    /// Whether it was the Raft leader.
    pub leader: bool,
    /// User + system CPU over the window, percent of one core.
    pub percent: f64,
}

/// One kill of a package owner.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RelocationTrial {
    /// The killed node.
    pub killed: String,
    /// It was the Raft leader.
    pub was_leader: bool,
    /// Packages it ran.
    pub packages: usize,
    /// Kill → every package of the victim seen running elsewhere by polling `pkg list` on a survivor, ms.
    pub all_running_polled_ms: Option<f64>,
    /// Kill → the first reassignment (`-> starting` event), ms.
    pub first_assign_ms: Option<f64>,
    /// Kill → the last reassignment, ms.
    pub last_assign_ms: Option<f64>,
    /// Kill → `starting -> running` event of each package (first, median, last), ms.
    pub running_first_ms: Option<f64>,
    /// Median of the above.
    pub running_median_ms: Option<f64>,
    /// Last of the above.
    pub running_last_ms: Option<f64>,
    /// Packages whose `starting -> running` event was found.
    pub running_events: usize,
    /// Where the packages went.
    pub new_owners: BTreeMap<String, usize>,
    /// Power on → every package back on its primary (failback = auto), ms.
    pub failback_ms: Option<f64>,
}

/// Everything `bench-scale` measured.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleBenchReport {
    /// Nodes.
    pub nodes: usize,
    /// Packages.
    pub packages: usize,
    /// `pkg apply` of every package, ms.
    pub apply_ms: f64,
    /// First apply → every package running, ms.
    pub all_running_ms: f64,
    /// Idle CPU of every clusterd with every package running.
    pub idle_cpu: Vec<IdleCpu>,
    /// The idle window, s.
    pub idle_window_s: f64,
    /// Request times.
    pub requests: Vec<RequestTiming>,
    /// Kill trials.
    pub relocations: Vec<RelocationTrial>,
    /// What went wrong (the trials stop at the first failure; what was measured before is kept).
    pub failures: Vec<String>,
}

/// One event line of `clusterctl events --output json`.
#[derive(Clone, Debug, serde::Deserialize)]
struct EventLine {
    at_ms: u64,
    package: Option<String>,
    node: Option<String>,
    what: String,
}

/// A package as `pkg list --output json` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Placement {
    owner: Option<String>,
    phase: String,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn package_name(index: usize) -> String {
    format!("s{index:04}")
}

fn node_name(index: usize) -> String {
    format!("n{}", index + 1)
}

/// Preference list of package `index`: its primary rotates over the nodes, and the fallbacks of the packages of
/// one primary rotate over the other nodes, so a killed node's packages spread over every survivor.
fn preference(index: usize, nodes: usize) -> Vec<String> {
    let primary = index % nodes;
    let others: Vec<usize> = (1..nodes).map(|step| (primary + step) % nodes).collect();
    let shift = if others.is_empty() { 0 } else { (index / nodes) % others.len() };
    let mut list = vec![node_name(primary)];
    list.extend(others.iter().cycle().skip(shift).take(others.len()).map(|node| node_name(*node)));
    list
}

fn sleep_binary() -> &'static str {
    if std::path::Path::new("/usr/bin/sleep").exists() {
        "/usr/bin/sleep"
    } else {
        "/bin/sleep"
    }
}

/// The package file of package `index`.
pub fn package_text(index: usize, nodes: usize) -> String {
    let list: Vec<String> = preference(index, nodes).iter().map(|node| format!("\"{node}\"")).collect();
    format!(
        "name = \"{name}\"\nnodes = [{list}]\nfailover = \"ordered\"\nfailback = \"auto\"\nauto_run = true\n\n\
         [[resource]]\nname = \"main\"\ntype = \"process\"\ncommand = [\"{sleep}\", \"infinity\"]\n\
         ready = {{ alive_for = \"100ms\" }}\n",
        name = package_name(index),
        list = list.join(", "),
        sleep = sleep_binary(),
    )
}

/// Every package's owner and phase, from `pkg list` on `node`: the text table (`PACKAGE PHASE OWNER …`), which
/// costs the polling host far less than the JSON of every definition.
fn placements(lab: &Lab, node: &str) -> Result<BTreeMap<String, Placement>, LabError> {
    let text = lab.clusterctl(node, &["pkg", "list"])?;
    Ok(parse_package_list(&text))
}

fn parse_package_list(text: &str) -> BTreeMap<String, Placement> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut columns = line.split_whitespace();
            let name = columns.next()?.to_string();
            let phase = columns.next()?.to_string();
            let owner = columns.next().filter(|owner| *owner != "-").map(String::from);
            Some((name, Placement { owner, phase }))
        })
        .collect()
}

fn powered(lab: &Lab) -> Vec<String> {
    lab.state().nodes.iter().filter(|node| node.powered).map(|node| node.name.clone()).collect()
}

/// The leader as a powered node sees it (status answered by the leader itself).
fn leader(lab: &Lab) -> Option<String> {
    lab.leader()
}

/// Counts per phase, for progress lines.
fn phase_summary(placements: &BTreeMap<String, Placement>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for placement in placements.values() {
        *counts.entry(placement.phase.as_str()).or_insert(0) += 1;
    }
    counts.iter().map(|(phase, count)| format!("{count} {phase}")).collect::<Vec<_>>().join(", ")
}

/// Waits until `done` holds for the placements seen from some powered node; returns the elapsed time.
fn wait_placements(
    lab: &Lab,
    what: &str,
    timeout: Duration,
    poll: Duration,
    log: &mut dyn FnMut(&str),
    done: impl Fn(&BTreeMap<String, Placement>) -> bool,
) -> Result<Duration, LabError> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut last_seen = String::new();
    loop {
        for node in powered(lab) {
            match placements(lab, &node) {
                Ok(seen) => {
                    if done(&seen) {
                        return Ok(started.elapsed());
                    }
                    last_seen = phase_summary(&seen);
                    break;
                }
                Err(error) => last_seen = format!("pkg list on {node} failed: {error}"),
            }
        }
        if started.elapsed() > timeout {
            return Err(LabError::Timeout(format!("{what} (last seen: {last_seen})")));
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            log(&format!("  waiting for {what}: {last_seen}"));
            last_report = Instant::now();
        }
        std::thread::sleep(poll);
    }
}

fn on_primaries(placements: &BTreeMap<String, Placement>, packages: usize, nodes: usize) -> bool {
    placements.len() == packages
        && (0..packages).all(|index| {
            placements.get(&package_name(index)).is_some_and(|placement| {
                placement.phase == "running" && placement.owner.as_deref() == Some(node_name(index % nodes).as_str())
            })
        })
}

/// User + system CPU ticks of a process.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may contain spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a configuration value; no memory is passed.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn idle_cpu(
    lab: &Lab,
    window: Duration,
    placements: &BTreeMap<String, Placement>,
    leader: Option<&str>,
) -> Vec<IdleCpu> {
    let daemons: Vec<(String, i32)> =
        lab.state().nodes.iter().filter_map(|node| Some((node.name.clone(), node.daemon_pid?))).collect();
    let before: Vec<Option<u64>> = daemons.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
    let started = Instant::now();
    std::thread::sleep(window);
    let elapsed = started.elapsed().as_secs_f64();
    let hz = clock_ticks_per_second();
    daemons
        .iter()
        .zip(before)
        .filter_map(|((node, pid), before)| {
            let used = cpu_ticks(*pid)?.checked_sub(before?)?;
            Some(IdleCpu {
                node: node.clone(),
                packages: placements.values().filter(|p| p.owner.as_deref() == Some(node.as_str())).count(),
                leader: leader == Some(node.as_str()),
                percent: used as f64 / hz / elapsed * 100.0,
            })
        })
        .collect()
}

fn time_request(lab: &Lab, node: &str, leader: bool, args: &[&str], runs: usize) -> Result<RequestTiming, LabError> {
    let mut values = Vec::new();
    let mut output_bytes = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let output = lab.clusterctl(node, args)?;
        values.push(started.elapsed().as_secs_f64() * 1000.0);
        output_bytes = output.len();
    }
    Ok(RequestTiming {
        node: node.to_string(),
        leader,
        request: args.join(" "),
        wall_ms: Figure::of(&values),
        output_bytes,
    })
}

fn events(lab: &Lab, node: &str) -> Result<Vec<EventLine>, LabError> {
    let text = lab.clusterctl(node, &["events", "--output", "json"])?;
    Ok(text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect())
}

/// Kills `victim`, waits until its packages run elsewhere, reads the timings from the events, powers it on
/// and waits for the failback.
fn relocation_trial(
    lab: &mut Lab,
    options: &ScaleBenchOptions,
    victim: &str,
    was_leader: bool,
    log: &mut dyn FnMut(&str),
) -> Result<(RelocationTrial, Option<String>), LabError> {
    let observer = powered(lab).into_iter().find(|node| node != victim).expect("a surviving node");
    let before = placements(lab, &observer)?;
    let moved: BTreeSet<String> = before
        .iter()
        .filter(|(_, placement)| placement.owner.as_deref() == Some(victim))
        .map(|(name, _)| name.clone())
        .collect();
    let mut trial =
        RelocationTrial { killed: victim.to_string(), was_leader, packages: moved.len(), ..RelocationTrial::default() };
    // Different trials kill at different points of the heartbeat cycle.
    std::thread::sleep(Duration::from_millis(137 * (sys::now_ns() % 7)));
    let kill_wall_ms = wall_ms();
    let kill = Instant::now();
    lab.kill(victim)?;
    let polled = wait_placements(
        lab,
        &format!("the {} packages of {victim} running elsewhere", moved.len()),
        options.settle_timeout,
        // Not faster: each poll is a clusterctl process and a read of every package on a host the
        // relocation itself keeps busy; the per-package times come from the events.
        Duration::from_millis(100),
        log,
        |seen| {
            moved.iter().all(|name| {
                seen.get(name).is_some_and(|p| p.phase == "running" && p.owner.as_deref().is_some_and(|o| o != victim))
            })
        },
    );
    let polled_at = kill.elapsed();
    let relocated = polled.is_ok();
    match polled {
        Ok(_) => trial.all_running_polled_ms = Some(polled_at.as_secs_f64() * 1000.0),
        Err(error) => log(&format!("  {error}")),
    }
    let after = placements(lab, &observer).unwrap_or_default();
    for name in &moved {
        if let Some(owner) = after.get(name).and_then(|p| p.owner.clone()) {
            *trial.new_owners.entry(owner).or_insert(0) += 1;
        }
    }
    let history = events(lab, &observer)?;
    let since = |at_ms: u64| at_ms as f64 - kill_wall_ms as f64;
    let recent = |event: &&EventLine| {
        event.at_ms + 5 >= kill_wall_ms && event.package.as_ref().is_some_and(|package| moved.contains(package))
    };
    let assigns: Vec<f64> = history
        .iter()
        .filter(recent)
        .filter(|event| event.what.ends_with("-> starting") && event.node.as_deref() != Some(victim))
        .map(|event| since(event.at_ms))
        .collect();
    trial.first_assign_ms = assigns.iter().copied().reduce(f64::min);
    trial.last_assign_ms = assigns.iter().copied().reduce(f64::max);
    let mut running: BTreeMap<&str, f64> = BTreeMap::new();
    for event in history.iter().filter(recent) {
        if event.what == "starting -> running" && event.node.as_deref() != Some(victim) {
            let package = event.package.as_deref().expect("filtered on the package");
            running.entry(package).or_insert(since(event.at_ms));
        }
    }
    let values: Vec<f64> = running.values().copied().collect();
    trial.running_events = values.len();
    trial.running_first_ms = values.iter().copied().reduce(f64::min);
    trial.running_median_ms = percentile(&values, 50.0);
    trial.running_last_ms = values.iter().copied().reduce(f64::max);
    log(&format!(
        "  kill {victim}{}: {} packages; reassigned {}..{} ms, running first {} / median {} / last {} ms ({} events); \
         all seen running by polling at {} ms; now on {:?}",
        if was_leader { " (leader)" } else { "" },
        trial.packages,
        show(trial.first_assign_ms),
        show(trial.last_assign_ms),
        show(trial.running_first_ms),
        show(trial.running_median_ms),
        show(trial.running_last_ms),
        trial.running_events,
        show(trial.all_running_polled_ms),
        trial.new_owners,
    ));
    std::thread::sleep(Duration::from_millis(300));
    let power_on = Instant::now();
    lab.start(victim)?;
    let (packages, nodes) = (options.packages, options.nodes);
    let failback = wait_placements(
        lab,
        "every package back on its primary",
        options.settle_timeout,
        Duration::from_millis(100),
        log,
        |seen| on_primaries(seen, packages, nodes),
    );
    match failback {
        Ok(_) => {
            trial.failback_ms = Some(power_on.elapsed().as_secs_f64() * 1000.0);
            log(&format!("  failback to {victim}: every package on its primary after {} ms", show(trial.failback_ms)));
            let error = (!relocated).then(|| format!("the packages of {victim} did not all run elsewhere in time"));
            Ok((trial, error))
        }
        Err(error) => Ok((trial, Some(error.to_string()))),
    }
}

fn show(value: Option<f64>) -> String {
    value.map(|ms| format!("{ms:.0}")).unwrap_or_else(|| "-".into())
}

/// Runs the benchmark in lab `options.lab`, which is removed at the end (also on error; the daemons' logs
/// are then kept in `/tmp/clusterlab-bench-logs`).
pub fn run(options: &ScaleBenchOptions, log: &mut dyn FnMut(&str)) -> Result<ScaleBenchReport, LabError> {
    if options.setup_only {
        let result = run_in_lab(options, log);
        if result.is_err() {
            let _ = Lab::down(&options.lab);
        }
        return result;
    }
    let _guard = LabGuard::new(&options.lab);
    let result = run_in_lab(options, log);
    if result.is_err() {
        keep_logs(&options.lab, log);
    }
    if let Err(error) = Lab::down(&options.lab) {
        log(&format!("teardown of {}: {error}", options.lab));
    }
    result
}

fn keep_logs(lab: &str, log: &mut dyn FnMut(&str)) {
    let Ok(lab) = Lab::open(lab) else { return };
    let target = PathBuf::from("/tmp/clusterlab-bench-logs");
    let _ = std::fs::create_dir_all(&target);
    for node in lab.node_names() {
        let _ = std::fs::copy(
            lab.paths().node_run_dir(&node).join("clusterd.log"),
            target.join(format!("{}-{node}.log", lab.name())),
        );
    }
    log(&format!("clusterd logs kept in {}", target.display()));
}

fn run_in_lab(options: &ScaleBenchOptions, log: &mut dyn FnMut(&str)) -> Result<ScaleBenchReport, LabError> {
    let mut spec = LabSpec::bare(&options.lab, options.nodes);
    // Lease-only, like the failover benchmark: no emulated watchdog can reset a node the loaded host scheduled late.
    spec.daemon = Daemon::Clusterd {
        clusterd: options.clusterd.clone(),
        clusterctl: options.clusterctl.clone(),
        watchdog: false,
    };
    log(&format!("lab {}: {} nodes up", options.lab, options.nodes));
    let mut lab = Lab::up(&spec)?;
    let first = leader(&lab).unwrap_or_else(|| node_name(0));
    // Package files, in chunks of one directory each (`pkg apply DIR`).
    let root = lab.paths().run_dir().join("scale-packages");
    let mut chunks = Vec::new();
    for (chunk, start) in (0..options.packages).step_by(options.apply_chunk.max(1)).enumerate() {
        let dir = root.join(format!("{chunk:03}"));
        std::fs::create_dir_all(&dir).map_err(|error| sys::io_error("failed to create", &dir, error))?;
        for index in start..(start + options.apply_chunk.max(1)).min(options.packages) {
            let path = dir.join(format!("{}.toml", package_name(index)));
            std::fs::write(&path, package_text(index, options.nodes))
                .map_err(|error| sys::io_error("failed to write", &path, error))?;
        }
        chunks.push(dir);
    }
    log(&format!("applying {} packages on {first} ({} per call)", options.packages, options.apply_chunk));
    let applying = Instant::now();
    for dir in &chunks {
        lab.clusterctl(&first, &["pkg", "apply", &dir.display().to_string()])?;
    }
    let apply_ms = applying.elapsed().as_secs_f64() * 1000.0;
    let (packages, nodes) = (options.packages, options.nodes);
    wait_placements(
        &lab,
        "every package running on its primary",
        options.settle_timeout,
        Duration::from_millis(100),
        log,
        |seen| on_primaries(seen, packages, nodes),
    )?;
    let all_running_ms = applying.elapsed().as_secs_f64() * 1000.0;
    log(&format!("applied in {apply_ms:.0} ms; every package running after {all_running_ms:.0} ms"));
    if options.setup_only {
        log(&format!("lab {0} left up: clusterlab --name {0} exec n1 -- clusterctl status", options.lab));
        return Ok(ScaleBenchReport {
            nodes: options.nodes,
            packages: options.packages,
            apply_ms,
            all_running_ms,
            idle_cpu: Vec::new(),
            idle_window_s: 0.0,
            requests: Vec::new(),
            relocations: Vec::new(),
            failures: Vec::new(),
        });
    }

    // Idle: let the last reports and monitors settle first.
    std::thread::sleep(Duration::from_secs(2));
    let leader_now = leader(&lab);
    let seen = placements(&lab, &first)?;
    let idle = idle_cpu(&lab, options.idle_window, &seen, leader_now.as_deref());
    for cpu in &idle {
        log(&format!(
            "  idle cpu {}{}: {:.1} % of a core ({} packages)",
            cpu.node,
            if cpu.leader { " (leader)" } else { "" },
            cpu.percent,
            cpu.packages
        ));
    }

    let leader_node = leader_now.clone().unwrap_or_else(|| node_name(0));
    let follower = powered(&lab).into_iter().find(|node| *node != leader_node).unwrap_or_else(|| leader_node.clone());
    let mut requests = Vec::new();
    for (node, is_leader) in [(leader_node.clone(), true), (follower.clone(), false)] {
        for args in [
            &["status"][..],
            &["status", "--output", "json"][..],
            &["pkg", "list"][..],
            &["pkg", "list", "--output", "json"][..],
            &["cluster", "settings"][..],
        ] {
            let timing = time_request(&lab, &node, is_leader, args, options.status_runs)?;
            log(&format!(
                "  {:<28} on {node}{:<9} {}  ({} bytes)",
                timing.request,
                if is_leader { " (leader)" } else { "" },
                timing.wall_ms.show(),
                timing.output_bytes
            ));
            requests.push(timing);
        }
    }

    let mut relocations = Vec::new();
    let mut failures = Vec::new();
    let mut victims_done = BTreeSet::new();
    for trial in 0..options.trials {
        let leader_node = leader(&lab).ok_or_else(|| LabError::Timeout("a leader before the kill trial".into()))?;
        let seen = placements(&lab, &leader_node)?;
        // A node that is not the leader and owns packages; a different one each trial where possible.
        let owned = |node: &str| seen.values().filter(|p| p.owner.as_deref() == Some(node)).count();
        let mut candidates: Vec<String> =
            powered(&lab).into_iter().filter(|node| *node != leader_node && owned(node) > 0).collect();
        candidates.sort_by_key(|node| (victims_done.contains(node), std::cmp::Reverse(owned(node))));
        let Some(victim) = candidates.into_iter().next() else {
            log("no node other than the leader owns packages: no kill trial");
            break;
        };
        log(&format!("trial {}/{}: kill {victim} (leader {leader_node})", trial + 1, options.trials));
        let (result, failure) = relocation_trial(&mut lab, options, &victim, false, log)?;
        relocations.push(result);
        victims_done.insert(victim);
        if let Some(failure) = failure {
            failures.push(failure);
            break;
        }
    }
    if options.leader_trial && failures.is_empty() {
        if let Some(leader_node) = leader(&lab) {
            log(&format!("leader trial: kill {leader_node} (the leader)"));
            let (result, failure) = relocation_trial(&mut lab, options, &leader_node, true, log)?;
            relocations.push(result);
            failures.extend(failure);
        }
    }
    if !failures.is_empty() {
        keep_logs(&options.lab, log);
    }
    Ok(ScaleBenchReport {
        nodes: options.nodes,
        packages: options.packages,
        apply_ms,
        all_running_ms,
        idle_cpu: idle,
        idle_window_s: options.idle_window.as_secs_f64(),
        requests,
        relocations,
        failures,
    })
}

/// The report as text.
pub fn render(report: &ScaleBenchReport) -> String {
    let mut text = format!(
        "scale: {} packages on {} nodes\n  pkg apply (all)            {:>7.0} ms\n  apply -> all running       {:>7.0} ms\n",
        report.packages, report.nodes, report.apply_ms, report.all_running_ms
    );
    text.push_str(&format!("idle CPU of clusterd over {:.0} s (percent of one core):\n", report.idle_window_s));
    for cpu in &report.idle_cpu {
        text.push_str(&format!(
            "  {:<4}{:<9} {:>5.1} %  ({} packages)\n",
            cpu.node,
            if cpu.leader { " (leader)" } else { "" },
            cpu.percent,
            cpu.packages
        ));
    }
    text.push_str("request wall time (clusterctl in the node, Unix socket; a follower forwards to the leader):\n");
    for request in &report.requests {
        text.push_str(&format!(
            "  {:<28} {:<9} {}  max {:>6} ms  {:>8} bytes\n",
            request.request,
            if request.leader { "leader" } else { "follower" },
            request.wall_ms.show(),
            show(request.wall_ms.max),
            request.output_bytes
        ));
    }
    text.push_str("kill of a package owner (from the kill; events are the proposer's wall clock, same host):\n");
    for trial in &report.relocations {
        text.push_str(&format!(
            "  {}{}: {} packages -> {:?}\n    reassigned first {} / last {} ms; running first {} / median {} / last {} ms \
             ({} events); all seen running {} ms; failback {} ms\n",
            trial.killed,
            if trial.was_leader { " (leader)" } else { "" },
            trial.packages,
            trial.new_owners,
            show(trial.first_assign_ms),
            show(trial.last_assign_ms),
            show(trial.running_first_ms),
            show(trial.running_median_ms),
            show(trial.running_last_ms),
            trial.running_events,
            show(trial.all_running_polled_ms),
            show(trial.failback_ms),
        ));
    }
    for failure in &report.failures {
        text.push_str(&format!("FAILED: {failure}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_table_is_read_by_column() {
        let text = "PACKAGE  PHASE     OWNER  EPOCH  SINCE     RESTARTS  LAST FAILURE\n\
                    s0000    running  n1     1      2 s ago   0         -\n\
                    s0001    stopped  -      0      12 s ago  0         -\n";
        let seen = parse_package_list(text);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen["s0000"], Placement { owner: Some("n1".into()), phase: "running".into() });
        assert_eq!(seen["s0001"], Placement { owner: None, phase: "stopped".into() });
    }

    #[test]
    fn preferences_rotate_primaries_and_spread_fallbacks() {
        let lists: Vec<Vec<String>> = (0..10).map(|index| preference(index, 5)).collect();
        assert_eq!(lists[0], ["n1", "n2", "n3", "n4", "n5"]);
        assert_eq!(lists[1], ["n2", "n3", "n4", "n5", "n1"]);
        assert_eq!(lists[5], ["n1", "n3", "n4", "n5", "n2"]);
        // The packages of n1 fall back to every other node in turn.
        let fallbacks: BTreeSet<String> =
            (0..20).filter(|index| index % 5 == 0).map(|index| preference(index, 5)[1].clone()).collect();
        assert_eq!(fallbacks.len(), 4);
        assert_eq!(preference(0, 1), ["n1"]);
    }
}
