//! The scale benchmark (issue 14: "50 nodes, 1,000 packages: the time to relocate the packages of a killed node,
//! `clusterctl status` time, leader CPU, idle CPU per node"), measured from outside on a clusterd lab.
//!
//! ```text
//!   lab up (V voters + N−V learners, lease-only) ─▶ pkg apply P one-process packages (auto_run, ordered,
//!   failback auto, primaries rotated over the nodes, fallbacks spread) ─▶ wait until every package runs on
//!   its primary ─▶ idle CPU and RSS of every clusterd (/proc/PID/stat and status over a window)
//!   ─▶ request times on the leader, a voter and a learner: status, status --output json, pkg list, settings
//!   ─▶ trials: kill a node that is not the Raft leader (learners and voters in turn), once K nodes at once
//!        (`--rack K`), once the leader; the observer samples the moved packages' processes on every node
//!        ─▶ poll `pkg list` on a survivor until every package of the victims runs elsewhere
//!        ─▶ events: kill → each package's `starting -> running` (first, 100th, median, last), reassignments;
//!           CPU of every survivor over the relocation (the leader's apart)
//!        ─▶ power the victims on ─▶ failback: every package back on its primary ─▶ split-brain check (S1)
//!   ─▶ lab down (also on error)
//! ```
//!
//! Every package is one `process` resource running `sleep infinity` under its own name (a symlink `sNNNN` to
//! `sleep`, so the observer tells the packages apart by `comm`), ready once alive for 100 ms: the figures are
//! the cluster's own costs: placement, Raft, leases, the executor, the process agent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::history::{check_split_brain, percentile, Kind};
use crate::lab::{Daemon, Lab, LabError, LabGuard, LabSpec, Role};
use crate::observer::{Observer, ObserverSpec};
use crate::sys;

/// Settings of `bench-scale`.
#[derive(Clone, Debug)]
pub struct ScaleBenchOptions {
    /// Lab name.
    pub lab: String,
    /// Nodes in all (`voters` of them vote, the others are Raft learners).
    pub nodes: usize,
    /// Voting nodes (n1..nV).
    pub voters: usize,
    /// Packages.
    pub packages: usize,
    /// Kill trials of one node that is not the Raft leader (learners and voters in turn).
    pub trials: usize,
    /// One more trial that kills this many nodes at once (not the leader; learners first); 0: none.
    pub rack: usize,
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
    /// Sampling period of the observer during the kill trials.
    pub observe_interval: Duration,
    /// `clusterd` binary.
    pub clusterd: PathBuf,
    /// `clusterctl` binary.
    pub clusterctl: PathBuf,
    /// Stop once every package runs and leave the lab up (to explore it).
    pub setup_only: bool,
    /// Raft's timing in the nodes' files; `None`: clusterd's defaults.
    pub raft: Option<crate::lab::RaftTiming>,
    /// The cluster's `lease` setting (`clusterctl cluster set lease`, before the packages; the stop
    /// budget follows it); `None`: the default (1 s).
    pub lease: Option<String>,
}

impl ScaleBenchOptions {
    /// The 5-node benchmark: 5 voters, 1,000 packages.
    pub fn full(lab: &str, clusterd: PathBuf, clusterctl: PathBuf) -> ScaleBenchOptions {
        ScaleBenchOptions {
            lab: lab.to_string(),
            nodes: 5,
            voters: 5,
            packages: 1000,
            trials: 3,
            rack: 0,
            leader_trial: true,
            status_runs: 20,
            idle_window: Duration::from_secs(10),
            apply_chunk: 100,
            settle_timeout: Duration::from_secs(300),
            observe_interval: Duration::from_millis(50),
            clusterd,
            clusterctl,
            setup_only: false,
            raft: None,
            lease: None,
        }
    }

    /// CI mode: 3 voters and 1 learner, 60 packages, one trial (the learner), short windows (well under two
    /// minutes).
    pub fn quick(lab: &str, clusterd: PathBuf, clusterctl: PathBuf) -> ScaleBenchOptions {
        ScaleBenchOptions {
            nodes: 4,
            voters: 3,
            packages: 60,
            trials: 1,
            leader_trial: false,
            status_runs: 5,
            idle_window: Duration::from_secs(3),
            settle_timeout: Duration::from_secs(45),
            ..ScaleBenchOptions::full(lab, clusterd, clusterctl)
        }
    }

    /// Learners: the nodes after the voters.
    pub fn learners(&self) -> usize {
        self.nodes.saturating_sub(self.voters)
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

/// Minimum, median and maximum of a set of values.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    /// Values.
    pub count: usize,
    /// Minimum.
    pub min: Option<f64>,
    /// Median (nearest rank).
    pub median: Option<f64>,
    /// Maximum.
    pub max: Option<f64>,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        Spread {
            count: values.len(),
            min: values.iter().copied().reduce(f64::min),
            median: percentile(values, 50.0),
            max: values.iter().copied().reduce(f64::max),
        }
    }

    fn show(&self, decimals: usize) -> String {
        let value = |value: Option<f64>| value.map(|v| format!("{v:.decimals$}")).unwrap_or_else(|| "-".into());
        format!("{} / {} / {}", value(self.min), value(self.median), value(self.max))
    }
}

/// Wall time of one kind of `clusterctl` request, run on one node.
#[derive(Clone, Debug, Serialize)]
pub struct RequestTiming {
    /// The node `clusterctl` ran on (through its Unix socket).
    pub node: String,
    /// `leader`, `voter` or `learner` (a voter or a learner forwards `status` and reads to the leader).
    pub role: String,
    /// The arguments.
    pub request: String,
    /// Wall time of the whole command (process start included), ms.
    pub wall_ms: Figure,
    /// Bytes written to stdout.
    pub output_bytes: usize,
}

/// CPU and memory of one node's clusterd over a window.
#[derive(Clone, Debug, Serialize)]
pub struct NodeUsage {
    /// The node.
    pub node: String,
    /// `leader`, `voter` or `learner`.
    pub role: String,
    /// Packages it runs.
    pub packages: usize,
    /// User + system CPU over the window, percent of one core.
    pub cpu_percent: f64,
    /// Resident memory at the end of the window, MiB (`VmRSS`: includes the pages of the binary, which the
    /// nodes of a lab share).
    pub rss_mib: f64,
    /// Of which anonymous memory (`RssAnon`: the node's own), MiB.
    pub anon_mib: f64,
}

/// The distribution of CPU and RSS over a set of nodes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UsageSummary {
    /// CPU, percent of one core.
    pub cpu_percent: Spread,
    /// RSS, MiB.
    pub rss_mib: Spread,
    /// Anonymous RSS, MiB.
    pub anon_mib: Spread,
}

impl UsageSummary {
    fn of<'a>(usage: impl Iterator<Item = &'a NodeUsage> + Clone) -> UsageSummary {
        UsageSummary {
            cpu_percent: Spread::of(&usage.clone().map(|u| u.cpu_percent).collect::<Vec<_>>()),
            rss_mib: Spread::of(&usage.clone().map(|u| u.rss_mib).collect::<Vec<_>>()),
            anon_mib: Spread::of(&usage.map(|u| u.anon_mib).collect::<Vec<_>>()),
        }
    }
}

/// One kill of one or several package owners at once.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RelocationTrial {
    /// The killed nodes.
    pub killed: Vec<String>,
    /// Their roles (`leader`, `voter`, `learner`).
    pub roles: Vec<String>,
    /// Packages they ran.
    pub packages: usize,
    /// Kill → every package of the victims seen running elsewhere by polling `pkg list` on a survivor, ms.
    pub all_running_polled_ms: Option<f64>,
    /// Kill → the first reassignment (`-> starting` event), ms.
    pub first_assign_ms: Option<f64>,
    /// Kill → the last reassignment, ms.
    pub last_assign_ms: Option<f64>,
    /// Kill → `starting -> running` event of the first package, ms.
    pub running_first_ms: Option<f64>,
    /// Same, of the 100th package to run (when at least 100 moved).
    pub running_100th_ms: Option<f64>,
    /// Median of the above.
    pub running_median_ms: Option<f64>,
    /// Last of the above.
    pub running_last_ms: Option<f64>,
    /// Packages whose `starting -> running` event was found.
    pub running_events: usize,
    /// Where the packages went.
    pub new_owners: BTreeMap<String, usize>,
    /// Packages of other nodes whose owner changed during the relocation (should be 0).
    pub bystanders_moved: usize,
    /// The leader once the packages ran elsewhere.
    pub leader_after: Option<String>,
    /// Its CPU from the kill until every package ran elsewhere (polled), percent of one core.
    pub leader_cpu_percent: Option<f64>,
    /// CPU of the other survivors over the same window.
    pub others_cpu_percent: Spread,
    /// Power on → every package back on its primary (failback = auto), ms.
    pub failback_ms: Option<f64>,
    /// Processes observed (the moved packages').
    pub observed_processes: usize,
    /// Of those, the ones the observer saw on a surviving node (all of them, or the observer is blind).
    pub observed_elsewhere: usize,
    /// Observer sampling period, ms.
    pub observe_interval_ms: f64,
    /// Certain overlaps of one package's process on two nodes, from the kill until the failback (S1).
    pub split_brain: Vec<String>,
    /// Overlaps the sampling period cannot exclude (informational).
    pub uncertain_overlaps: usize,
}

/// Everything `bench-scale` measured.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleBenchReport {
    /// Nodes.
    pub nodes: usize,
    /// Voters among them.
    pub voters: usize,
    /// Packages.
    pub packages: usize,
    /// Load average (1 min) of the host when the run started, and when it ended.
    pub load_before: Option<f64>,
    /// Same, at the end.
    pub load_after: Option<f64>,
    /// `pkg apply` of every package, ms.
    pub apply_ms: f64,
    /// First apply → every package running, ms (each chunk waits until the previous one runs).
    pub all_running_ms: f64,
    /// Raft term before the first apply (each election raises it).
    pub term_before_apply: Option<u64>,
    /// Raft term once every package ran.
    pub term_after_setup: Option<u64>,
    /// Raft term at the end of the trials.
    pub term_end: Option<u64>,
    /// `pkg apply` calls that failed and were repeated (an election under load).
    pub apply_retries: Vec<String>,
    /// Idle CPU and RSS of every clusterd with every package running.
    pub idle: Vec<NodeUsage>,
    /// Their distribution over every node.
    pub idle_all: UsageSummary,
    /// Over the voters that do not lead.
    pub idle_voters: UsageSummary,
    /// Over the learners.
    pub idle_learners: UsageSummary,
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

/// A package as `pkg list` shows it.
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
    if Path::new("/usr/bin/sleep").exists() {
        "/usr/bin/sleep"
    } else {
        "/bin/sleep"
    }
}

/// The package file of package `index`, whose process is `program_dir/sNNNN` (a link to `sleep`).
pub fn package_text(index: usize, nodes: usize, program_dir: &Path) -> String {
    let list: Vec<String> = preference(index, nodes).iter().map(|node| format!("\"{node}\"")).collect();
    format!(
        "name = \"{name}\"\nnodes = [{list}]\nfailover = \"ordered\"\nfailback = \"auto\"\nauto_run = true\n\n\
         [[resource]]\nname = \"main\"\ntype = \"process\"\ncommand = [\"{program}\", \"infinity\"]\n\
         ready = {{ alive_for = \"100ms\" }}\n",
        name = package_name(index),
        list = list.join(", "),
        program = program_dir.join(package_name(index)).display(),
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

fn role(lab: &Lab, node: &str, leader: Option<&str>) -> String {
    if leader == Some(node) {
        return "leader".into();
    }
    match lab.state().nodes.iter().find(|record| record.name == node).map(|record| record.role) {
        Some(Role::Learner) => "learner".into(),
        _ => "voter".into(),
    }
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

/// Packages 0..`applied` all run on their primaries.
fn prefix_on_primaries(placements: &BTreeMap<String, Placement>, applied: usize, nodes: usize) -> bool {
    (0..applied).all(|index| {
        placements.get(&package_name(index)).is_some_and(|placement| {
            placement.phase == "running" && placement.owner.as_deref() == Some(node_name(index % nodes).as_str())
        })
    })
}

/// The Raft term, from `status --output json` on the first powered node that answers.
fn term(lab: &Lab) -> Option<u64> {
    powered(lab).iter().find_map(|node| {
        let text = lab.clusterctl(node, &["status", "--output", "json"]).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?.get("term")?.as_u64()
    })
}

fn show_term(term: Option<u64>) -> String {
    term.map_or("-".into(), |term| term.to_string())
}

fn on_primaries(placements: &BTreeMap<String, Placement>, packages: usize, nodes: usize) -> bool {
    placements.len() == packages && prefix_on_primaries(placements, packages, nodes)
}

/// User + system CPU ticks of a process.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the command (which may contain spaces): state is field 3, utime 14, stime 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of a process and its anonymous part, MiB (`VmRSS` and `RssAnon` of /proc/PID/status).
fn memory_mib(pid: i32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((status_mib(&status, "VmRSS:")?, status_mib(&status, "RssAnon:")?))
}

fn status_mib(status: &str, field: &str) -> Option<f64> {
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
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

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// CPU ticks of every running clusterd, to diff against later ones.
struct CpuSample {
    at: Instant,
    ticks: BTreeMap<String, (i32, u64)>,
}

impl CpuSample {
    fn take(lab: &Lab) -> CpuSample {
        let ticks = lab
            .state()
            .nodes
            .iter()
            .filter_map(|node| {
                let pid = node.daemon_pid?;
                Some((node.name.clone(), (pid, cpu_ticks(pid)?)))
            })
            .collect();
        CpuSample { at: Instant::now(), ticks }
    }

    /// CPU percent of one core of each node since `self`, for the daemons still running the same process.
    fn percent_until(&self, later: &CpuSample) -> BTreeMap<String, f64> {
        let elapsed = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let hz = clock_ticks_per_second();
        self.ticks
            .iter()
            .filter_map(|(node, (pid, before))| {
                let (later_pid, after) = later.ticks.get(node)?;
                let percent = after.saturating_sub(*before) as f64 / hz / elapsed * 100.0;
                (later_pid == pid).then(|| (node.clone(), percent))
            })
            .collect()
    }
}

fn idle_usage(
    lab: &Lab,
    window: Duration,
    placements: &BTreeMap<String, Placement>,
    leader: Option<&str>,
) -> Vec<NodeUsage> {
    let before = CpuSample::take(lab);
    std::thread::sleep(window);
    let after = CpuSample::take(lab);
    let percent = before.percent_until(&after);
    let mut usage: Vec<NodeUsage> = percent
        .into_iter()
        .map(|(node, cpu_percent)| {
            let pid = after.ticks.get(&node).map(|(pid, _)| *pid);
            let (rss_mib, anon_mib) = pid.and_then(memory_mib).unwrap_or((0.0, 0.0));
            NodeUsage {
                role: role(lab, &node, leader),
                packages: placements.values().filter(|p| p.owner.as_deref() == Some(node.as_str())).count(),
                rss_mib,
                anon_mib,
                cpu_percent,
                node,
            }
        })
        .collect();
    usage.sort_by_key(|u| u.node.trim_start_matches('n').parse::<usize>().unwrap_or(usize::MAX));
    usage
}

fn time_request(lab: &Lab, node: &str, role: &str, args: &[&str], runs: usize) -> Result<RequestTiming, LabError> {
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
        role: role.to_string(),
        request: args.join(" "),
        wall_ms: Figure::of(&values),
        output_bytes,
    })
}

fn events(lab: &Lab, node: &str) -> Result<Vec<EventLine>, LabError> {
    let text = lab.clusterctl(node, &["events", "--output", "json"])?;
    Ok(text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect())
}

/// The n-th smallest value (1-based), if there are that many.
fn nth_smallest(values: &[f64], n: usize) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    n.checked_sub(1).and_then(|index| sorted.get(index).copied())
}

/// Kills `victims` at once, waits until their packages run elsewhere, reads the timings from the events and
/// the survivors' CPU, powers them on, waits for the failback, and checks the observer's history for S1.
fn relocation_trial(
    lab: &mut Lab,
    options: &ScaleBenchOptions,
    victims: &[String],
    leader_before: Option<&str>,
    log: &mut dyn FnMut(&str),
) -> Result<(RelocationTrial, Option<String>), LabError> {
    let survivor = powered(lab).into_iter().find(|node| !victims.contains(node)).expect("a surviving node");
    let before = placements(lab, &survivor)?;
    let owned_by_victim = |placement: &Placement| placement.owner.as_ref().is_some_and(|owner| victims.contains(owner));
    let moved: BTreeSet<String> =
        before.iter().filter(|(_, placement)| owned_by_victim(placement)).map(|(name, _)| name.clone()).collect();
    let mut trial = RelocationTrial {
        killed: victims.to_vec(),
        roles: victims.iter().map(|victim| role(lab, victim, leader_before)).collect(),
        packages: moved.len(),
        observed_processes: moved.len(),
        observe_interval_ms: options.observe_interval.as_secs_f64() * 1000.0,
        ..RelocationTrial::default()
    };
    let observer = Observer::start(
        lab,
        ObserverSpec {
            processes: moved.iter().cloned().collect(),
            interval: options.observe_interval,
            ..ObserverSpec::default()
        },
        None,
    )
    .map_err(|error| LabError::Timeout(format!("the observer to start: {error}")))?;
    // Different trials kill at different points of the heartbeat cycle.
    std::thread::sleep(Duration::from_millis(137 * (sys::now_ns() % 7)));
    let kill_wall_ms = wall_ms();
    let cpu_at_kill = CpuSample::take(lab);
    let kill = Instant::now();
    for victim in victims {
        lab.kill(victim)?;
    }
    let polled = wait_placements(
        lab,
        &format!("the {} packages of {} running elsewhere", moved.len(), victims.join(",")),
        options.settle_timeout,
        // Each poll is a clusterctl process and a read of every package (served by the leader, whose CPU is
        // measured meanwhile): 4 per second; the per-package times come from the events.
        Duration::from_millis(250),
        log,
        |seen| {
            moved.iter().all(|name| {
                seen.get(name).is_some_and(|p| {
                    p.phase == "running" && p.owner.as_ref().is_some_and(|owner| !victims.contains(owner))
                })
            })
        },
    );
    let cpu_relocated = CpuSample::take(lab);
    let polled_at = kill.elapsed();
    let relocated = polled.is_ok();
    match polled {
        Ok(_) => trial.all_running_polled_ms = Some(polled_at.as_secs_f64() * 1000.0),
        Err(error) => log(&format!("  {error}")),
    }
    trial.leader_after = leader(lab);
    let cpu = cpu_at_kill.percent_until(&cpu_relocated);
    trial.leader_cpu_percent = trial.leader_after.as_ref().and_then(|leader| cpu.get(leader).copied());
    let others: Vec<f64> = cpu
        .iter()
        .filter(|(node, _)| Some(*node) != trial.leader_after.as_ref() && !victims.contains(node))
        .map(|(_, percent)| *percent)
        .collect();
    trial.others_cpu_percent = Spread::of(&others);
    let observer_node = powered(lab).into_iter().next().unwrap_or(survivor);
    let after = placements(lab, &observer_node).unwrap_or_default();
    for name in &moved {
        if let Some(owner) = after.get(name).and_then(|p| p.owner.clone()) {
            *trial.new_owners.entry(owner).or_insert(0) += 1;
        }
    }
    trial.bystanders_moved = before
        .iter()
        .filter(|(name, placement)| {
            !moved.contains(*name) && after.get(*name).is_some_and(|now| now.owner != placement.owner)
        })
        .count();
    let history = events(lab, &observer_node)?;
    let since = |at_ms: u64| at_ms as f64 - kill_wall_ms as f64;
    let recent = |event: &&EventLine| {
        event.at_ms + 5 >= kill_wall_ms && event.package.as_ref().is_some_and(|package| moved.contains(package))
    };
    let elsewhere = |event: &&EventLine| event.node.as_ref().is_some_and(|node| !victims.contains(node));
    let assigns: Vec<f64> = history
        .iter()
        .filter(recent)
        .filter(elsewhere)
        .filter(|event| event.what.ends_with("-> starting"))
        .map(|event| since(event.at_ms))
        .collect();
    trial.first_assign_ms = assigns.iter().copied().reduce(f64::min);
    trial.last_assign_ms = assigns.iter().copied().reduce(f64::max);
    let mut running: BTreeMap<&str, f64> = BTreeMap::new();
    for event in history.iter().filter(recent).filter(elsewhere) {
        if event.what == "starting -> running" {
            let package = event.package.as_deref().expect("filtered on the package");
            running.entry(package).or_insert(since(event.at_ms));
        }
    }
    let values: Vec<f64> = running.values().copied().collect();
    trial.running_events = values.len();
    trial.running_first_ms = values.iter().copied().reduce(f64::min);
    trial.running_100th_ms = nth_smallest(&values, 100);
    trial.running_median_ms = percentile(&values, 50.0);
    trial.running_last_ms = values.iter().copied().reduce(f64::max);
    log(&format!(
        "  kill {}: {} packages; reassigned {}..{} ms, running first {} / 100th {} / median {} / last {} ms ({} events); \
         all seen running by polling at {} ms; leader {} cpu {} %, others {} %; bystanders moved {}",
        victims.join(","),
        trial.packages,
        show(trial.first_assign_ms),
        show(trial.last_assign_ms),
        show(trial.running_first_ms),
        show(trial.running_100th_ms),
        show(trial.running_median_ms),
        show(trial.running_last_ms),
        trial.running_events,
        show(trial.all_running_polled_ms),
        trial.leader_after.as_deref().unwrap_or("-"),
        trial.leader_cpu_percent.map_or("-".into(), |p| format!("{p:.1}")),
        trial.others_cpu_percent.show(1),
        trial.bystanders_moved,
    ));
    std::thread::sleep(Duration::from_millis(300));
    let power_on = Instant::now();
    for victim in victims {
        lab.start(victim)?;
    }
    let (packages, nodes) = (options.packages, options.nodes);
    let failback = wait_placements(
        lab,
        "every package back on its primary",
        options.settle_timeout,
        Duration::from_millis(100),
        log,
        |seen| on_primaries(seen, packages, nodes),
    );
    let (records, end_ns) = observer.stop();
    trial.observed_elsewhere = records
        .iter()
        .filter(|record| record.kind == Kind::Process && record.active && !victims.contains(&record.node))
        .map(|record| record.resource.as_str())
        .collect::<BTreeSet<_>>()
        .len();
    let verdict = check_split_brain(&records, end_ns);
    trial.uncertain_overlaps = verdict.uncertain.len();
    trial.split_brain = verdict
        .violations
        .iter()
        .map(|overlap| {
            format!(
                "{} on {} and {} for {:.1} ms",
                overlap.resource,
                overlap.nodes.0,
                overlap.nodes.1,
                overlap.to_ns.saturating_sub(overlap.from_ns) as f64 / 1e6
            )
        })
        .collect();
    log(&format!(
        "  split brain (S1) over {} processes ({} seen on a survivor) sampled every {} ms: {} certain, {} uncertain \
         overlaps",
        trial.observed_processes,
        trial.observed_elsewhere,
        trial.observe_interval_ms,
        trial.split_brain.len(),
        trial.uncertain_overlaps
    ));
    let mut failure = match failback {
        Ok(_) => {
            trial.failback_ms = Some(power_on.elapsed().as_secs_f64() * 1000.0);
            log(&format!("  failback: every package on its primary after {} ms", show(trial.failback_ms)));
            (!relocated).then(|| format!("the packages of {} did not all run elsewhere in time", victims.join(",")))
        }
        Err(error) => Some(error.to_string()),
    };
    if relocated && trial.observed_elsewhere < trial.observed_processes {
        failure = Some(format!(
            "the observer saw only {} of the {} moved packages' processes on a surviving node",
            trial.observed_elsewhere, trial.observed_processes
        ));
    }
    if !trial.split_brain.is_empty() {
        failure =
            Some(format!("split brain after the kill of {}: {}", victims.join(","), trial.split_brain.join("; ")));
    }
    Ok((trial, failure))
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

/// Victims of the single-node trials: a node that is not the leader and owns packages, learners and voters in
/// turn, one not killed before where possible.
fn next_victim(
    lab: &Lab,
    seen: &BTreeMap<String, Placement>,
    leader: &str,
    done: &BTreeMap<String, String>,
) -> Option<String> {
    let owned = |node: &str| seen.values().filter(|p| p.owner.as_deref() == Some(node)).count();
    let killed_as = |kind: &str| done.values().filter(|role| role.as_str() == kind).count();
    let mut candidates: Vec<(String, String)> = powered(lab)
        .into_iter()
        .filter(|node| node != leader && owned(node) > 0)
        .map(|node| {
            let kind = role(lab, &node, Some(leader));
            (node, kind)
        })
        .collect();
    candidates.sort_by_key(|(node, kind)| {
        (done.contains_key(node), killed_as(kind), kind != "learner", std::cmp::Reverse(owned(node)))
    });
    candidates.into_iter().next().map(|(node, _)| node)
}

/// Victims of the rack trial: `count` nodes that are not the leader and own packages, learners first, and
/// fewer than half the voters (the quorum stays).
fn rack_victims(lab: &Lab, seen: &BTreeMap<String, Placement>, leader: &str, count: usize) -> Vec<String> {
    let owns = |node: &str| seen.values().any(|p| p.owner.as_deref() == Some(node));
    let voters = lab.state().nodes.iter().filter(|node| node.role == Role::Voter).count();
    let mut voters_left = voters.saturating_sub(1) / 2;
    let mut candidates: Vec<(bool, String)> = powered(lab)
        .into_iter()
        .filter(|node| node != leader && owns(node))
        .map(|node| (role(lab, &node, Some(leader)) == "voter", node))
        .collect();
    // Learners first, then by name (numerically) for a reproducible choice.
    candidates.sort_by_key(|(voter, node)| (*voter, node.trim_start_matches('n').parse::<usize>().unwrap_or(0)));
    let mut chosen = Vec::new();
    for (voter, node) in candidates {
        if chosen.len() == count {
            break;
        }
        if voter {
            if voters_left == 0 {
                continue;
            }
            voters_left -= 1;
        }
        chosen.push(node);
    }
    chosen
}

/// One link per package to the `sleep` binary, named after the package (its process's `comm`).
fn program_links(dir: &Path, packages: usize) -> Result<(), LabError> {
    std::fs::create_dir_all(dir).map_err(|error| sys::io_error("failed to create", dir, error))?;
    for index in 0..packages {
        let link = dir.join(package_name(index));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sleep_binary(), &link)
            .map_err(|error| sys::io_error("failed to create the link", &link, error))?;
    }
    Ok(())
}

fn run_in_lab(options: &ScaleBenchOptions, log: &mut dyn FnMut(&str)) -> Result<ScaleBenchReport, LabError> {
    let load_before = load_average();
    let mut spec = LabSpec::bare(&options.lab, options.voters.min(options.nodes));
    spec.learners = options.learners();
    spec.raft = options.raft;
    // Lease-only, like the failover benchmark: no emulated watchdog can reset a node the loaded host scheduled late.
    spec.daemon = Daemon::Clusterd {
        clusterd: options.clusterd.clone(),
        clusterctl: options.clusterctl.clone(),
        watchdog: false,
    };
    log(&format!(
        "lab {}: {} nodes up ({} voters, {} learners); load average {}",
        options.lab,
        options.nodes,
        spec.voters,
        spec.learners,
        load_before.map_or("-".into(), |load| format!("{load:.2}"))
    ));
    let mut lab = Lab::up(&spec)?;
    let first = leader(&lab).unwrap_or_else(|| node_name(0));
    let programs = lab.paths().run_dir().join("scale-bin");
    program_links(&programs, options.packages)?;
    // Package files, in chunks of one directory each (`pkg apply DIR`).
    let root = lab.paths().run_dir().join("scale-packages");
    let mut chunks = Vec::new();
    for (chunk, start) in (0..options.packages).step_by(options.apply_chunk.max(1)).enumerate() {
        let dir = root.join(format!("{chunk:03}"));
        std::fs::create_dir_all(&dir).map_err(|error| sys::io_error("failed to create", &dir, error))?;
        for index in start..(start + options.apply_chunk.max(1)).min(options.packages) {
            let path = dir.join(format!("{}.toml", package_name(index)));
            std::fs::write(&path, package_text(index, options.nodes, &programs))
                .map_err(|error| sys::io_error("failed to write", &path, error))?;
        }
        chunks.push(dir);
    }
    if let Some(lease) = &options.lease {
        lab.clusterctl(&first, &["cluster", "set", "lease", lease])?;
        log(&format!("cluster setting lease = {lease}"));
    }
    log(&format!("applying {} packages on {first} ({} per call)", options.packages, options.apply_chunk));
    let term_before = term(&lab);
    let applying = Instant::now();
    let mut apply_ms = 0.0;
    let mut apply_retries = Vec::new();
    let (packages, nodes) = (options.packages, options.nodes);
    for (chunk, dir) in chunks.iter().enumerate() {
        let call = Instant::now();
        // Applying the same definitions again changes nothing: a call that lost its leader (an election under
        // load) is repeated, counted, and the failure kept for the report.
        let mut attempt = 0;
        loop {
            match lab.clusterctl(&first, &["pkg", "apply", &dir.display().to_string()]) {
                Ok(_) => break,
                Err(error) if attempt < 3 => {
                    attempt += 1;
                    apply_retries.push(format!("chunk {chunk}: {error}"));
                    log(&format!("  pkg apply of chunk {chunk} failed, repeated: {error}"));
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(error) => return Err(error),
            }
        }
        apply_ms += call.elapsed().as_secs_f64() * 1000.0;
        // One chunk's starts at a time: with 50 nodes on two shared cores, 1,000 starts at once starve the
        // leader's heartbeats (elections in the middle of the setup).
        let applied = ((chunk + 1) * options.apply_chunk.max(1)).min(packages);
        wait_placements(
            &lab,
            &format!("the first {applied} packages running on their primaries"),
            options.settle_timeout,
            Duration::from_millis(200),
            log,
            |seen| prefix_on_primaries(seen, applied, nodes),
        )?;
    }
    wait_placements(
        &lab,
        "every package running on its primary",
        options.settle_timeout,
        Duration::from_millis(100),
        log,
        |seen| on_primaries(seen, packages, nodes),
    )?;
    let all_running_ms = applying.elapsed().as_secs_f64() * 1000.0;
    let term_setup = term(&lab);
    log(&format!(
        "applied in {apply_ms:.0} ms (sum of the calls); every package running after {all_running_ms:.0} ms; \
         raft term {} -> {}",
        show_term(term_before),
        show_term(term_setup)
    ));
    let mut report = ScaleBenchReport {
        nodes: options.nodes,
        voters: spec.voters,
        packages: options.packages,
        load_before,
        load_after: None,
        apply_ms,
        all_running_ms,
        term_before_apply: term_before,
        term_after_setup: term_setup,
        term_end: None,
        apply_retries,
        idle: Vec::new(),
        idle_all: UsageSummary::default(),
        idle_voters: UsageSummary::default(),
        idle_learners: UsageSummary::default(),
        idle_window_s: options.idle_window.as_secs_f64(),
        requests: Vec::new(),
        relocations: Vec::new(),
        failures: Vec::new(),
    };
    if options.setup_only {
        log(&format!("lab {0} left up: clusterlab --name {0} exec n1 -- clusterctl status", options.lab));
        return Ok(report);
    }

    // Idle: let the last reports and monitors settle first.
    std::thread::sleep(Duration::from_secs(2));
    let leader_now = leader(&lab);
    let seen = placements(&lab, &first)?;
    report.idle = idle_usage(&lab, options.idle_window, &seen, leader_now.as_deref());
    report.idle_all = UsageSummary::of(report.idle.iter());
    report.idle_voters = UsageSummary::of(report.idle.iter().filter(|u| u.role == "voter"));
    report.idle_learners = UsageSummary::of(report.idle.iter().filter(|u| u.role == "learner"));
    for usage in &report.idle {
        if usage.role == "leader" {
            log(&format!(
                "  idle {} (leader): cpu {:.2} % of a core, rss {:.1} MiB (anon {:.1}), {} packages",
                usage.node, usage.cpu_percent, usage.rss_mib, usage.anon_mib, usage.packages
            ));
        }
    }
    for (what, summary) in
        [("every node", &report.idle_all), ("voters", &report.idle_voters), ("learners", &report.idle_learners)]
    {
        if summary.cpu_percent.count > 0 {
            log(&format!(
                "  idle {what} ({}): cpu min/median/max {} %, rss {} MiB, anon {} MiB",
                summary.cpu_percent.count,
                summary.cpu_percent.show(2),
                summary.rss_mib.show(1),
                summary.anon_mib.show(1)
            ));
        }
    }

    let leader_node = leader_now.clone().unwrap_or_else(|| node_name(0));
    let mut askers = vec![(leader_node.clone(), "leader".to_string())];
    for kind in ["voter", "learner"] {
        if let Some(node) =
            powered(&lab).into_iter().find(|node| *node != leader_node && role(&lab, node, Some(&leader_node)) == kind)
        {
            askers.push((node, kind.to_string()));
        }
    }
    for (node, kind) in &askers {
        for args in [
            &["status"][..],
            &["status", "--output", "json"][..],
            &["pkg", "list"][..],
            &["pkg", "list", "--output", "json"][..],
            &["cluster", "settings"][..],
        ] {
            let timing = time_request(&lab, node, kind, args, options.status_runs)?;
            log(&format!(
                "  {:<28} on {node:<4} ({kind:<7}) {}  ({} bytes)",
                timing.request,
                timing.wall_ms.show(),
                timing.output_bytes
            ));
            report.requests.push(timing);
        }
    }

    let mut victims_done: BTreeMap<String, String> = BTreeMap::new();
    for trial in 0..options.trials {
        let leader_node = leader(&lab).ok_or_else(|| LabError::Timeout("a leader before the kill trial".into()))?;
        let seen = placements(&lab, &leader_node)?;
        let Some(victim) = next_victim(&lab, &seen, &leader_node, &victims_done) else {
            log("no node other than the leader owns packages: no kill trial");
            break;
        };
        let kind = role(&lab, &victim, Some(&leader_node));
        log(&format!("trial {}/{}: kill {victim} ({kind}; leader {leader_node})", trial + 1, options.trials));
        let (result, failure) =
            relocation_trial(&mut lab, options, std::slice::from_ref(&victim), Some(&leader_node), log)?;
        report.relocations.push(result);
        victims_done.insert(victim, kind);
        if let Some(failure) = failure {
            report.failures.push(failure);
            break;
        }
    }
    if options.rack > 0 && report.failures.is_empty() {
        if let Some(leader_node) = leader(&lab) {
            let seen = placements(&lab, &leader_node)?;
            let victims = rack_victims(&lab, &seen, &leader_node, options.rack);
            log(&format!("rack trial: kill {} at once (leader {leader_node})", victims.join(",")));
            let (result, failure) = relocation_trial(&mut lab, options, &victims, Some(&leader_node), log)?;
            report.relocations.push(result);
            report.failures.extend(failure);
        }
    }
    if options.leader_trial && report.failures.is_empty() {
        if let Some(leader_node) = leader(&lab) {
            log(&format!("leader trial: kill {leader_node} (the leader)"));
            let (result, failure) =
                relocation_trial(&mut lab, options, std::slice::from_ref(&leader_node), Some(&leader_node), log)?;
            report.relocations.push(result);
            report.failures.extend(failure);
        }
    }
    if !report.failures.is_empty() {
        keep_logs(&options.lab, log);
    }
    report.load_after = load_average();
    report.term_end = term(&lab);
    Ok(report)
}

/// The report as text.
pub fn render(report: &ScaleBenchReport) -> String {
    let load = |load: Option<f64>| load.map_or("-".into(), |load| format!("{load:.2}"));
    let mut text = format!(
        "scale: {} packages on {} nodes ({} voters); load average {} before, {} after\n  \
         pkg apply (all)            {:>7.0} ms\n  apply -> all running       {:>7.0} ms\n  \
         raft term                  {} before the apply, {} once all ran, {} at the end\n",
        report.packages,
        report.nodes,
        report.voters,
        load(report.load_before),
        load(report.load_after),
        report.apply_ms,
        report.all_running_ms,
        show_term(report.term_before_apply),
        show_term(report.term_after_setup),
        show_term(report.term_end)
    );
    text.push_str(&format!(
        "idle clusterd over {:.0} s (CPU in percent of one core; RSS, and its anonymous part):\n",
        report.idle_window_s
    ));
    for usage in report.idle.iter().filter(|usage| usage.role == "leader") {
        text.push_str(&format!(
            "  leader {:<4}               cpu {:>5.2} %  rss {:>5.1} MiB  anon {:>5.1} MiB  ({} packages)\n",
            usage.node, usage.cpu_percent, usage.rss_mib, usage.anon_mib, usage.packages
        ));
    }
    for (what, summary) in
        [("every node", &report.idle_all), ("voters", &report.idle_voters), ("learners", &report.idle_learners)]
    {
        if summary.cpu_percent.count > 0 {
            text.push_str(&format!(
                "  {:<11} ({:>2}) min/median/max  cpu {} %  rss {} MiB  anon {} MiB\n",
                what,
                summary.cpu_percent.count,
                summary.cpu_percent.show(2),
                summary.rss_mib.show(1),
                summary.anon_mib.show(1)
            ));
        }
    }
    if report.idle.len() <= 10 {
        for usage in report.idle.iter().filter(|usage| usage.role != "leader") {
            text.push_str(&format!(
                "  {:<4} ({:<7})            cpu {:>5.2} %  rss {:>5.1} MiB  anon {:>5.1} MiB  ({} packages)\n",
                usage.node, usage.role, usage.cpu_percent, usage.rss_mib, usage.anon_mib, usage.packages
            ));
        }
    }
    text.push_str("request wall time (clusterctl in the node, Unix socket; others forward to the leader):\n");
    for request in &report.requests {
        text.push_str(&format!(
            "  {:<28} {:<8} {}  max {:>6} ms  {:>8} bytes\n",
            request.request,
            request.role,
            request.wall_ms.show(),
            show(request.wall_ms.max),
            request.output_bytes
        ));
    }
    text.push_str("kill of package owners (from the kill; events are the proposer's wall clock, same host):\n");
    for trial in &report.relocations {
        let killed: Vec<String> =
            trial.killed.iter().zip(&trial.roles).map(|(node, role)| format!("{node} ({role})")).collect();
        text.push_str(&format!(
            "  {}: {} packages -> {} nodes\n    reassigned first {} / last {} ms; running first {} / 100th {} / \
             median {} / last {} ms ({} events); all seen running {} ms; failback {} ms\n    \
             cpu until relocated: leader {} {} %, other survivors {} %; bystanders moved {}; \
             split brain: {} certain, {} uncertain over {} processes ({} seen on a survivor) every {} ms\n",
            killed.join(", "),
            trial.packages,
            trial.new_owners.len(),
            show(trial.first_assign_ms),
            show(trial.last_assign_ms),
            show(trial.running_first_ms),
            show(trial.running_100th_ms),
            show(trial.running_median_ms),
            show(trial.running_last_ms),
            trial.running_events,
            show(trial.all_running_polled_ms),
            show(trial.failback_ms),
            trial.leader_after.as_deref().unwrap_or("-"),
            trial.leader_cpu_percent.map_or("-".into(), |p| format!("{p:.1}")),
            trial.others_cpu_percent.show(1),
            trial.bystanders_moved,
            trial.split_brain.len(),
            trial.uncertain_overlaps,
            trial.observed_processes,
            trial.observed_elsewhere,
            trial.observe_interval_ms,
        ));
    }
    for retry in &report.apply_retries {
        text.push_str(&format!("pkg apply repeated: {retry}\n"));
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

    #[test]
    fn fifty_nodes_spread_a_killed_nodes_twenty_packages_over_twenty_survivors() {
        // 1,000 packages on 50 nodes: n7 is the primary of 20, whose first fallbacks are 20 different nodes.
        let firsts: BTreeSet<String> =
            (0..1000).filter(|index| index % 50 == 6).map(|index| preference(index, 50)[1].clone()).collect();
        assert_eq!(firsts.len(), 20);
        assert!(!firsts.contains("n7"));
    }

    #[test]
    fn each_package_runs_its_own_link_to_sleep() {
        let text = package_text(7, 3, Path::new("/run/clusterlab/x/scale-bin"));
        assert!(text.contains("name = \"s0007\""), "{text}");
        assert!(text.contains("command = [\"/run/clusterlab/x/scale-bin/s0007\", \"infinity\"]"), "{text}");
        assert!(text.contains("nodes = [\"n2\", \"n3\", \"n1\"]"), "{text}");
    }

    #[test]
    fn cpu_ticks_and_rss_are_read_from_proc() {
        let stat = "1234 (clusterd worker) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 70 0 0 20 0 6 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(320));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        let status = "Name:\tclusterd\nVmHWM:\t   20480 kB\nVmRSS:\t   13312 kB\nRssAnon:\t    9216 kB\nThreads:\t6\n";
        assert_eq!(status_mib(status, "VmRSS:"), Some(13.0));
        assert_eq!(status_mib(status, "RssAnon:"), Some(9.0));
        assert_eq!(status_mib("Name:\tx\n", "VmRSS:"), None);
    }

    #[test]
    fn a_chunk_is_done_once_its_packages_run_on_their_primaries() {
        let running = |owner: &str| Placement { owner: Some(owner.into()), phase: "running".into() };
        let mut seen: BTreeMap<String, Placement> =
            (0..4).map(|index| (package_name(index), running(&node_name(index % 2)))).collect();
        assert!(prefix_on_primaries(&seen, 4, 2));
        assert!(on_primaries(&seen, 4, 2));
        assert!(!on_primaries(&seen, 5, 2), "a package not applied yet");
        seen.insert(package_name(3), running("n1"));
        assert!(prefix_on_primaries(&seen, 3, 2));
        assert!(!prefix_on_primaries(&seen, 4, 2), "s0003 runs on a fallback");
        seen.insert(package_name(2), Placement { owner: Some("n1".into()), phase: "starting".into() });
        assert!(!prefix_on_primaries(&seen, 3, 2), "s0002 is still starting");
    }

    #[test]
    fn spreads_and_ranks() {
        let spread = Spread::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((spread.min, spread.median, spread.max), (Some(1.0), Some(2.0), Some(10.0)));
        assert_eq!(Spread::of(&[]).median, None);
        let values: Vec<f64> = (1..=150).rev().map(f64::from).collect();
        assert_eq!(nth_smallest(&values, 100), Some(100.0));
        assert_eq!(nth_smallest(&values[..99], 100), None);
        assert_eq!(nth_smallest(&values, 0), None);
    }
}
