//! The failover benchmarks of the failover engine (issue 5): clusterd (a VIP + process package) and keepalived
//! side by side after `kill` of the owner, the phase breakdown from `clusterctl events`, the `pkg move`
//! switchover, and the scale figures, each measured from outside with the observer and a client prober.
//!
//! ```text
//!   for each subject (clusterd defaults, clusterd 50/300, keepalived advert_int 1, keepalived tuned):
//!     lab up ─▶ prepare (settings, pkg apply) ─▶ trials:
//!       settle (one owner, client served for 1 s) ─▶ [clusterd: put the Raft leader where the trial wants it]
//!       ─▶ random phase ─▶ kill OWNER ─▶ observer: VIP on a new node ─▶ prober: client connects ─▶ events
//!       ─▶ power OWNER on again
//!   clusterd defaults lab also: pkg move trials (command ─▶ client served by the new owner)
//! ```
//!
//! The client prober is a thread in the client namespace that opens a TCP connection to `VIP:PORT` every few
//! milliseconds and records each attempt: *served* (connected: the package's server answers) or *answered*
//! (connected or refused: the VIP answers, which is all keepalived offers).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::history::{check_split_brain, percentile, Kind, Overlap};
use crate::keepalived::{Keepalived, VipOwner};
use crate::lab::{Daemon, KeepalivedConfig, Lab, LabError, LabGuard, LabSpec};
use crate::observer::{Observer, ObserverSpec};
use crate::sys;

/// The package's TCP port (a `python3 -m http.server`, ready when the port accepts).
pub const SERVER_PORT: u16 = 8080;
/// Where each clusterd subject's daemon logs are copied at its end.
const BENCH_LOGS: &str = "/tmp/clusterlab-bench-logs";
/// The package's process name as the observer sees it (`comm`).
pub const SERVER_COMM: &str = "python3";

/// A clusterd lab with one package: a VIP and an HTTP server behind it.
#[derive(Clone, Debug)]
pub struct ClusterdVip {
    /// `clusterd` binary.
    pub clusterd: PathBuf,
    /// `clusterctl` binary.
    pub clusterctl: PathBuf,
    /// `heartbeat` setting (`None`: the default, 100 ms).
    pub heartbeat: Option<String>,
    /// `lease` setting (`None`: the default, 1 s).
    pub lease: Option<String>,
    /// The package's VIP.
    pub vip: Ipv4Addr,
}

impl ClusterdVip {
    /// The package file (TOML).
    pub fn package_text(&self) -> String {
        format!(
            "name = \"web\"\nnodes = [\"n1\", \"n2\", \"n3\"]\nfailover = \"ordered\"\nfailback = \"manual\"\nauto_run = true\n\n\
             [[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"{vip}/24\"\ninterface = \"eth0\"\n\n\
             [[resource]]\nname = \"server\"\ntype = \"process\"\n\
             command = [\"/usr/bin/python3\", \"-m\", \"http.server\", \"{SERVER_PORT}\", \"--bind\", \"0.0.0.0\", \"--directory\", \"/var/empty\"]\n\
             ready = {{ tcp = \"127.0.0.1:{SERVER_PORT}\" }}\n",
            vip = self.vip
        )
    }

    /// The lease length in milliseconds (for the settle time after a leadership change).
    fn lease_ms(&self) -> u64 {
        self.lease.as_deref().and_then(parse_ms).unwrap_or(1_000)
    }
}

fn parse_ms(text: &str) -> Option<u64> {
    if let Some(ms) = text.strip_suffix("ms") {
        ms.parse().ok()
    } else {
        text.strip_suffix('s').and_then(|s| s.parse::<f64>().ok()).map(|s| (s * 1000.0) as u64)
    }
}

impl VipOwner for ClusterdVip {
    fn label(&self) -> String {
        format!(
            "clusterd heartbeat {} lease {}",
            self.heartbeat.as_deref().unwrap_or("100ms (default)"),
            self.lease.as_deref().unwrap_or("1s (default)")
        )
    }

    fn daemon(&self) -> Daemon {
        // No watchdog, no fence: the nodes run lease-only, which lets the controller reassign after the lease
        // like a watchdog would (docs/safety.md rule 7); the timing of a kill is the same, and no emulated
        // watchdog can reset a node that the loaded benchmark host scheduled late.
        Daemon::Clusterd { clusterd: self.clusterd.clone(), clusterctl: self.clusterctl.clone(), watchdog: false }
    }

    fn vip(&self) -> Ipv4Addr {
        self.vip
    }

    fn prepare(&self, lab: &mut Lab) -> Result<(), LabError> {
        // heartbeat first: it must stay ≤ lease/3 at every step.
        if let Some(heartbeat) = &self.heartbeat {
            lab.clusterctl("n1", &["cluster", "set", "heartbeat", heartbeat])?;
        }
        if let Some(lease) = &self.lease {
            lab.clusterctl("n1", &["cluster", "set", "lease", lease])?;
        }
        let path = lab.paths().run_dir().join("web.toml");
        std::fs::write(&path, self.package_text()).map_err(|error| sys::io_error("failed to write", &path, error))?;
        lab.clusterctl("n1", &["pkg", "apply", &path.display().to_string()])?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// The client prober.

/// One connection attempt of the prober.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    start_ns: u64,
    end_ns: u64,
    /// Connected.
    served: bool,
    /// Connected or refused.
    answered: bool,
}

/// Connects to `target` from the client namespace every `interval`, recording every attempt.
struct Prober {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    fn start(lab: &Lab, target: SocketAddr, interval: Duration) -> Result<Prober, LabError> {
        let netns = Path::new("/run/netns").join(lab.paths().netns("client"));
        let file = File::open(&netns).map_err(|error| sys::io_error("failed to open", &netns, error))?;
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let thread = {
            let (attempts, stop) = (attempts.clone(), stop.clone());
            std::thread::Builder::new()
                .name("probe-client".into())
                .spawn(move || {
                    // A dedicated OS thread: setns only affects it.
                    let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET);
                    let _ = ready_sender.send(entered.is_ok());
                    if entered.is_err() {
                        return;
                    }
                    let timeout = Duration::from_millis(20);
                    while !stop.load(Ordering::Relaxed) {
                        let start_ns = sys::now_ns();
                        let result = TcpStream::connect_timeout(&target, timeout);
                        let end_ns = sys::now_ns();
                        let served = result.is_ok();
                        let answered = match result {
                            Ok(_) => true,
                            Err(error) => error.kind() == std::io::ErrorKind::ConnectionRefused,
                        };
                        attempts.lock().expect("prober lock").push(Attempt { start_ns, end_ns, served, answered });
                        std::thread::sleep(interval);
                    }
                })
                .expect("spawn prober thread")
        };
        if ready.recv() != Ok(true) {
            return Err(LabError::Daemon { node: "client".into(), reason: "prober failed to enter the netns".into() });
        }
        Ok(Prober { attempts, stop, thread: Some(thread) })
    }

    /// End time of the first attempt started at or after `t_ns` that satisfies `ok`.
    fn first_after(&self, t_ns: u64, ok: impl Fn(&Attempt) -> bool) -> Option<u64> {
        self.attempts
            .lock()
            .expect("prober lock")
            .iter()
            .find(|attempt| attempt.start_ns >= t_ns && ok(attempt))
            .map(|attempt| attempt.end_ns)
    }

    /// Every attempt of the last `window` satisfied `ok` (and there were some).
    fn steady(&self, window: Duration, ok: impl Fn(&Attempt) -> bool) -> bool {
        let since = sys::now_ns().saturating_sub(window.as_nanos() as u64);
        let attempts = self.attempts.lock().expect("prober lock");
        let recent: Vec<&Attempt> = attempts.iter().rev().take_while(|attempt| attempt.start_ns >= since).collect();
        recent.len() >= 3 && recent.iter().all(|attempt| ok(attempt))
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reports.

/// One `kill` trial.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KillTrial {
    /// The killed owner.
    pub killed: String,
    /// The Raft leader just before the kill (clusterd only).
    pub leader: Option<String>,
    /// The killed owner was the Raft leader.
    pub owner_was_leader: bool,
    /// The node that took over.
    pub new_owner: Option<String>,
    /// kill → the VIP is on the new owner (observer), ms.
    pub vip_ms: Option<f64>,
    /// kill → a client's connection to VIP:PORT is answered (connected or refused), ms.
    pub answered_ms: Option<f64>,
    /// kill → a client's connection to VIP:PORT is accepted (the server runs), ms; keepalived: = answered.
    pub served_ms: Option<f64>,
    /// kill → the controller's reassignment (`running -> starting` event at_ms), ms.
    pub detection_ms: Option<f64>,
    /// Reassignment → the VIP is on the new owner: commit, apply on the new owner, the ip agent's duplicate
    /// probe, ms.
    pub commit_to_vip_ms: Option<f64>,
    /// The `starting -> running` event's `phase_ms` (assignment → every resource started, reported).
    pub start_phase_ms: Option<u64>,
    /// `running` event → client served, ms.
    pub reachability_ms: Option<f64>,
}

/// One `pkg move` trial.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MoveTrial {
    /// From.
    pub from: String,
    /// To.
    pub to: String,
    /// Command issued → client served by the new owner, ms.
    pub total_ms: Option<f64>,
    /// `stopping -> stopped` `phase_ms` (the resources' stop, reported and committed).
    pub stop_phase_ms: Option<u64>,
    /// `starting -> running` `phase_ms` (the resources' start, reported and committed).
    pub start_phase_ms: Option<u64>,
    /// total − stop − start, ms.
    pub remainder_ms: Option<f64>,
}

/// Median and p99 of a set of values.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figure {
    /// Values.
    pub count: usize,
    /// Median.
    pub median: Option<f64>,
    /// p99 (nearest rank: the maximum below 100 values).
    pub p99: Option<f64>,
}

impl Figure {
    fn of(values: impl Iterator<Item = f64>) -> Figure {
        let values: Vec<f64> = values.collect();
        Figure { count: values.len(), median: percentile(&values, 50.0), p99: percentile(&values, 99.0) }
    }

    fn show(&self) -> String {
        let ms = |value: Option<f64>| value.map(|ms| format!("{ms:.0}")).unwrap_or_else(|| "-".into());
        format!("n={:<3} median {:>5} ms  p99 {:>5} ms", self.count, ms(self.median), ms(self.p99))
    }
}

/// The `kill` trials of one subject.
#[derive(Clone, Debug, Serialize)]
pub struct SubjectReport {
    /// What was measured.
    pub label: String,
    /// Every trial.
    pub trials: Vec<KillTrial>,
    /// Trials where nothing took over within the timeout.
    pub failed_trials: usize,
    /// Split brain on the VIP or the process during the trials (expected none).
    pub split_brain: Vec<Overlap>,
}

impl SubjectReport {
    /// Fault → client served, over the trials that match `filter`.
    pub fn served(&self, filter: impl Fn(&KillTrial) -> bool) -> Figure {
        Figure::of(self.trials.iter().filter(|trial| filter(trial)).filter_map(|trial| trial.served_ms))
    }
}

/// Settings of `bench-failover`.
#[derive(Clone, Debug)]
pub struct FailoverBenchOptions {
    /// Lab name prefix (one lab per subject, `NAME` + a digit).
    pub lab: String,
    /// clusterd kill trials per category (owner is the leader / is not).
    pub trials: usize,
    /// keepalived kill trials.
    pub keepalived_trials: usize,
    /// `pkg move` trials.
    pub move_trials: usize,
    /// Observer and prober period.
    pub interval: Duration,
    /// Seed of the random kill phases.
    pub seed: u64,
    /// clusterd binaries.
    pub clusterd: PathBuf,
    /// clusterctl binary.
    pub clusterctl: PathBuf,
    /// keepalived's tuned advert_int.
    pub tuned_advert_int: String,
    /// The subjects to run (all four when empty), in the fixed order of [`BenchSubject`].
    pub subjects: Vec<BenchSubject>,
}

/// One subject of `bench-failover`; each runs in its own lab (`NAME1`…`NAME4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchSubject {
    /// clusterd, heartbeat 100 ms, lease 1 s (and the `pkg move` trials), lab `NAME1`.
    ClusterdDefaults,
    /// clusterd, heartbeat 50 ms, lease 300 ms, lab `NAME2`.
    ClusterdFast,
    /// keepalived advert_int 1, lab `NAME3`.
    KeepalivedDefaults,
    /// keepalived with the tuned advert_int, lab `NAME4`.
    KeepalivedTuned,
}

/// Everything `bench-failover` measured.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverBenchReport {
    /// Seed.
    pub seed: u64,
    /// One per subject.
    pub subjects: Vec<SubjectReport>,
    /// `pkg move` trials (clusterd defaults lab).
    pub moves: Vec<MoveTrial>,
}

// ---------------------------------------------------------------------------------------------------------
// Helpers.

fn wall_ms_minus_mono_ns() -> (u64, u64) {
    let mono = sys::now_ns();
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    (wall, mono)
}

/// A wall-clock millisecond (event `at_ms`) on the monotonic clock, given one simultaneous reading of both.
fn wall_to_mono_ns(at_ms: u64, reading: (u64, u64)) -> u64 {
    let (wall, mono) = reading;
    (mono as i128 + (at_ms as i128 - wall as i128) * 1_000_000).max(0) as u64
}

fn millis_between(from_ns: u64, to_ns: u64) -> f64 {
    (to_ns as f64 - from_ns as f64) / 1e6
}

#[derive(Clone, Debug, serde::Deserialize)]
struct EventLine {
    at_ms: u64,
    package: Option<String>,
    node: Option<String>,
    what: String,
    phase_ms: Option<u64>,
}

fn events(lab: &Lab, node: &str) -> Vec<EventLine> {
    lab.clusterctl(node, &["events", "--output", "json"])
        .map(|text| text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect())
        .unwrap_or_default()
}

fn status(lab: &Lab, node: &str) -> Option<serde_json::Value> {
    lab.cluster_status(node).ok()
}

fn powered(lab: &Lab) -> Vec<String> {
    lab.state().nodes.iter().filter(|node| node.powered).map(|node| node.name.clone()).collect()
}

/// Waits for one VIP holder that the client reaches steadily; for clusterd also the package `running` there,
/// every node's lease alive and a leader. Returns the owner (and the leader for clusterd).
fn settle(
    lab: &Lab,
    observer: &Observer,
    prober: &Prober,
    vip: &str,
    clusterd: bool,
    timeout: Duration,
) -> Result<(String, Option<String>), LabError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let holders = observer.holders(Kind::Vip, vip);
        let steady =
            prober.steady(
                Duration::from_millis(1000),
                |attempt| {
                    if clusterd {
                        attempt.served
                    } else {
                        attempt.answered
                    }
                },
            );
        if holders.len() == 1 && steady {
            if !clusterd {
                return Ok((holders[0].clone(), None));
            }
            let node = powered(lab).into_iter().find(|node| *node != holders[0]).unwrap_or(holders[0].clone());
            if let Some(status) = status(lab, &node) {
                let leases_alive = status["nodes"]
                    .as_array()
                    .is_some_and(|nodes| nodes.iter().all(|node| node["lease"].as_str() == Some("alive")));
                let running = status["packages"].as_array().is_some_and(|packages| {
                    packages.iter().any(|package| {
                        package["owner"].as_str() == Some(holders[0].as_str()) && package["phase"] == "running"
                    })
                });
                if leases_alive && running && status["quorum"] == true {
                    return Ok((holders[0].clone(), status["leader"].as_str().map(String::from)));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(LabError::Timeout(format!("one stable owner of {vip} that the client reaches")))
}

// ---------------------------------------------------------------------------------------------------------
// The kill trials.

struct Subject<'a> {
    owner: &'a dyn VipOwner,
    clusterd: Option<&'a ClusterdVip>,
    /// keepalived: master-down interval plus margin to wait after a node comes back (it preempts).
    preempt_settle: Duration,
    trials: usize,
}

fn run_subject(
    subject: &Subject<'_>,
    lab_name: &str,
    options: &FailoverBenchOptions,
    rng: &mut StdRng,
    moves: Option<&mut Vec<MoveTrial>>,
    log: &mut dyn FnMut(&str),
) -> Result<SubjectReport, LabError> {
    let _guard = LabGuard::new(lab_name);
    let mut spec = LabSpec::bare(lab_name, 3);
    spec.daemon = subject.owner.daemon();
    let mut lab = Lab::up(&spec)?;
    subject.owner.prepare(&mut lab)?;
    let vip = subject.owner.vip();
    let vip_text = vip.to_string();
    let clusterd = subject.clusterd.is_some();
    let port = if clusterd { SERVER_PORT } else { 80 };
    let observer = Observer::start(
        &lab,
        ObserverSpec {
            vips: vec![vip.into()],
            processes: if clusterd { vec![SERVER_COMM.to_string()] } else { Vec::new() },
            interval: options.interval,
            files: Vec::new(),
            ..ObserverSpec::default()
        },
        None,
    )
    .map_err(|error| LabError::Daemon { node: "observer".into(), reason: error.to_string() })?;
    let prober = Prober::start(&lab, SocketAddr::from((vip, port)), options.interval)?;
    let mut trials = Vec::new();
    let mut failed_trials = 0;
    let trial_count = if clusterd { subject.trials * 2 } else { subject.trials };
    let mut unsettled_in_a_row = 0;
    for trial in 0..trial_count {
        // A lab that does not settle costs this trial (counted as failed), not the whole run.
        let (mut owner, mut leader) =
            match settle(&lab, &observer, &prober, &vip_text, clusterd, Duration::from_secs(90)) {
                Ok(settled) => {
                    unsettled_in_a_row = 0;
                    settled
                }
                Err(error) if unsettled_in_a_row < 2 => {
                    unsettled_in_a_row += 1;
                    failed_trials += 1;
                    log(&format!("{} trial {}/{trial_count}: not started: {error}", subject.owner.label(), trial + 1));
                    continue;
                }
                Err(error) => return Err(error),
            };
        if let Some(package) = subject.clusterd {
            // Even trials: the owner is not the leader; odd trials: it is. When it is not, the leader is
            // the last node of the package's preference order other than the owner, so that the next
            // owner is a follower: the reassignment is replicated and applied there, as in most failovers.
            let want_leader = trial % 2 == 1;
            let target = if want_leader {
                owner.clone()
            } else {
                powered(&lab).into_iter().rfind(|node| *node != owner).expect("another node")
            };
            if leader.as_deref() != Some(target.as_str()) {
                let ask = powered(&lab).into_iter().next().expect("a powered node");
                if let Err(error) = lab.clusterctl(&ask, &["cluster", "transfer-leader", &target]) {
                    failed_trials += 1;
                    log(&format!("{} trial {}/{trial_count}: not started: {error}", subject.owner.label(), trial + 1));
                    continue;
                }
                // A new leader waits one lease before it may reassign: start the trial after that.
                std::thread::sleep(Duration::from_millis(package.lease_ms() + 500));
                (owner, leader) = settle(&lab, &observer, &prober, &vip_text, true, Duration::from_secs(90))?;
            }
        }
        if clusterd {
            // Every trial starts without failure history: with a short lease, the leadership transfer
            // above can let the owner's lease lapse (it stops the package, which counts as a failure);
            // after a few trials the restart budget excluded every node and nothing could take over.
            let ask = powered(&lab).into_iter().next().expect("a powered node");
            lab.clusterctl(&ask, &["pkg", "cleanup", "web"])?;
        }
        // A random phase relative to heartbeats and adverts.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1_000)));
        let reading = wall_ms_minus_mono_ns();
        let fault_ns = observer.mark(&owner, "kill");
        lab.kill(&owner)?;
        // Attempts started before the kill completed may still reach the old owner.
        let killed_ns = sys::now_ns();
        let moved = observer.wait_for(Duration::from_secs(30), |observer| {
            let holders = observer.holders(Kind::Vip, &vip_text);
            holders.len() == 1 && holders[0] != owner
        });
        let served_ns = if moved {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let found =
                    prober.first_after(killed_ns, |attempt| if clusterd { attempt.served } else { attempt.answered });
                if found.is_some() || Instant::now() > deadline {
                    break found;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            None
        };
        let new_owner = observer.holders(Kind::Vip, &vip_text).first().cloned();
        let vip_ns = new_owner.as_ref().and_then(|new_owner| {
            observer
                .records()
                .iter()
                .find(|record| {
                    record.kind == Kind::Vip && record.active && record.node == *new_owner && record.t_ns > fault_ns
                })
                .map(|record| record.t_ns)
        });
        let answered_ns = prober.first_after(killed_ns, |attempt| attempt.answered);
        let mut result = KillTrial {
            killed: owner.clone(),
            leader: leader.clone(),
            owner_was_leader: leader.as_deref() == Some(owner.as_str()),
            new_owner: new_owner.clone(),
            vip_ms: vip_ns.map(|t| millis_between(fault_ns, t)),
            answered_ms: answered_ns.map(|t| millis_between(fault_ns, t)),
            served_ms: served_ns.map(|t| millis_between(fault_ns, t)),
            ..KillTrial::default()
        };
        if served_ns.is_none() {
            failed_trials += 1;
        }
        if let (true, Some(new_owner)) = (clusterd, &new_owner) {
            // The running report may land a little after the client connects.
            let mut found = None;
            for _ in 0..40 {
                let list = events(&lab, new_owner);
                let fault_wall = reading.0;
                let assign = list.iter().find(|event| {
                    event.package.as_deref() == Some("web")
                        && event.what.ends_with("-> starting")
                        && event.node.as_deref() == Some(new_owner.as_str())
                        && event.at_ms + 50 >= fault_wall
                });
                let running = assign.and_then(|assign| {
                    list.iter().find(|event| {
                        event.package.as_deref() == Some("web")
                            && event.what == "starting -> running"
                            && event.at_ms >= assign.at_ms
                    })
                });
                if let (Some(assign), Some(running)) = (assign, running) {
                    found = Some((assign.clone(), running.clone()));
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Some((assign, running)) = found {
                let assign_ns = wall_to_mono_ns(assign.at_ms, reading);
                let running_ns = wall_to_mono_ns(running.at_ms, reading);
                result.detection_ms = Some(millis_between(fault_ns, assign_ns));
                result.commit_to_vip_ms = vip_ns.map(|t| millis_between(assign_ns, t));
                result.start_phase_ms = running.phase_ms;
                result.reachability_ms = served_ns.map(|t| millis_between(running_ns, t));
            }
        }
        log(&format!(
            "{} trial {}/{}: killed {}{} -> {}: vip {:.0} ms, served {} ms, detection {} ms",
            subject.owner.label(),
            trial + 1,
            trial_count,
            owner,
            if result.owner_was_leader { " (leader)" } else { "" },
            new_owner.as_deref().unwrap_or("nobody"),
            result.vip_ms.unwrap_or(f64::NAN),
            result.served_ms.map(|ms| format!("{ms:.0}")).unwrap_or_else(|| "-".into()),
            result.detection_ms.map(|ms| format!("{ms:.0}")).unwrap_or_else(|| "-".into()),
        ));
        trials.push(result);
        std::thread::sleep(Duration::from_millis(300));
        lab.start(&owner)?;
        if !subject.preempt_settle.is_zero() {
            std::thread::sleep(subject.preempt_settle);
        }
    }
    if let (Some(moves), true) = (moves, clusterd) {
        for trial in 0..options.move_trials {
            let owner = match settle(&lab, &observer, &prober, &vip_text, true, Duration::from_secs(60)) {
                Ok((owner, _)) => owner,
                Err(error) => {
                    // Keep what was measured; say what the cluster looks like.
                    log(&format!("pkg move trials stopped: {error}"));
                    for node in powered(&lab) {
                        log(&format!("status on {node}: {}", lab.clusterctl(&node, &["status"]).unwrap_or_default()));
                        log(&format!("events on {node}: {}", lab.clusterctl(&node, &["events"]).unwrap_or_default()));
                    }
                    break;
                }
            };
            let nodes = powered(&lab);
            let others: Vec<&String> = nodes.iter().filter(|node| **node != owner).collect();
            let to = others[rng.random_range(0..others.len())].clone();
            std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
            let reading = wall_ms_minus_mono_ns();
            let command_ns = sys::now_ns();
            lab.clusterctl(&to, &["pkg", "move", "web", "--to", &to])?;
            let moved = observer.wait_for(Duration::from_secs(30), |observer| {
                observer.holders(Kind::Vip, &vip_text) == vec![to.clone()]
            });
            // Served by the new owner: an accepted connection started after the old owner lost the VIP.
            let old_gone_ns = observer
                .records()
                .iter()
                .find(|record| {
                    record.kind == Kind::Vip && !record.active && record.node == owner && record.t_ns > command_ns
                })
                .map(|record| record.t_ns);
            let mut served_ns = None;
            if let (true, Some(old_gone_ns)) = (moved, old_gone_ns) {
                let deadline = Instant::now() + Duration::from_secs(30);
                while served_ns.is_none() && Instant::now() < deadline {
                    served_ns = prober.first_after(old_gone_ns, |attempt| attempt.served);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let mut result = MoveTrial { from: owner.clone(), to: to.clone(), ..MoveTrial::default() };
            result.total_ms = served_ns.map(|t| millis_between(command_ns, t));
            for _ in 0..40 {
                let list = events(&lab, &to);
                let since = reading.0.saturating_sub(50);
                let recent = |what: &str| {
                    list.iter()
                        .filter(|event| event.package.as_deref() == Some("web") && event.at_ms >= since)
                        .find(|event| event.what == what)
                        .and_then(|event| event.phase_ms)
                };
                result.stop_phase_ms = recent("stopping -> stopped");
                result.start_phase_ms = recent("starting -> running");
                if result.stop_phase_ms.is_some() && result.start_phase_ms.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let (Some(total), Some(stop), Some(start)) =
                (result.total_ms, result.stop_phase_ms, result.start_phase_ms)
            {
                result.remainder_ms = Some(total - stop as f64 - start as f64);
            }
            log(&format!(
                "pkg move {}/{}: {owner} -> {to}: total {} ms, stop {:?} ms, start {:?} ms",
                trial + 1,
                options.move_trials,
                result.total_ms.map(|ms| format!("{ms:.0}")).unwrap_or_else(|| "-".into()),
                result.stop_phase_ms,
                result.start_phase_ms
            ));
            moves.push(result);
        }
    }
    drop(prober);
    let (records, end_ns) = observer.stop();
    let split_brain = check_split_brain(&records, end_ns).violations;
    if clusterd {
        // The daemons' logs explain the phases (election, the new leader's wait, the plan).
        let kept = Path::new(BENCH_LOGS);
        let _ = std::fs::create_dir_all(kept);
        for node in lab.node_names() {
            let _ = std::fs::copy(
                lab.paths().node_run_dir(&node).join("clusterd.log"),
                kept.join(format!("{lab_name}-{node}.log")),
            );
        }
        log(&format!("clusterd logs kept in {BENCH_LOGS}/{lab_name}-*.log"));
    }
    if let Err(error) = Lab::down(lab_name) {
        log(&format!("teardown of {lab_name}: {error}"));
    }
    Ok(SubjectReport { label: subject.owner.label(), trials, failed_trials, split_brain })
}

/// Runs the four subjects (clusterd defaults with `pkg move` trials, clusterd 50/300, keepalived defaults,
/// keepalived tuned) one after the other in labs `NAME1`…`NAME4`, or only those of `options.subjects`.
pub fn run(options: &FailoverBenchOptions, log: &mut dyn FnMut(&str)) -> Result<FailoverBenchReport, LabError> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let vip: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
    let defaults = ClusterdVip {
        clusterd: options.clusterd.clone(),
        clusterctl: options.clusterctl.clone(),
        heartbeat: None,
        lease: None,
        vip,
    };
    let fast = ClusterdVip { heartbeat: Some("50ms".into()), lease: Some("300ms".into()), ..defaults.clone() };
    let keepalived_default = Keepalived(KeepalivedConfig { vip, advert_int: "1".into(), vrrp_version: 2 });
    let tuned = options.tuned_advert_int.clone();
    let keepalived_tuned = Keepalived(KeepalivedConfig {
        vip,
        vrrp_version: if tuned.contains('.') { 3 } else { 2 },
        advert_int: tuned.clone(),
    });
    let master_down = |advert: &str| {
        let advert: f64 = advert.parse().unwrap_or(1.0);
        Duration::from_secs_f64(advert * 4.0 + 0.5)
    };
    let wanted = |subject: BenchSubject| options.subjects.is_empty() || options.subjects.contains(&subject);
    let mut moves = Vec::new();
    let mut subjects = Vec::new();
    if wanted(BenchSubject::ClusterdDefaults) {
        subjects.push(run_subject(
            &Subject {
                owner: &defaults,
                clusterd: Some(&defaults),
                preempt_settle: Duration::ZERO,
                trials: options.trials,
            },
            &format!("{}1", options.lab),
            options,
            &mut rng,
            Some(&mut moves),
            log,
        )?);
    }
    if wanted(BenchSubject::ClusterdFast) {
        subjects.push(run_subject(
            &Subject { owner: &fast, clusterd: Some(&fast), preempt_settle: Duration::ZERO, trials: options.trials },
            &format!("{}2", options.lab),
            options,
            &mut rng,
            None,
            log,
        )?);
    }
    if wanted(BenchSubject::KeepalivedDefaults) {
        subjects.push(run_subject(
            &Subject {
                owner: &keepalived_default,
                clusterd: None,
                preempt_settle: master_down("1"),
                trials: options.keepalived_trials,
            },
            &format!("{}3", options.lab),
            options,
            &mut rng,
            None,
            log,
        )?);
    }
    if wanted(BenchSubject::KeepalivedTuned) {
        subjects.push(run_subject(
            &Subject {
                owner: &keepalived_tuned,
                clusterd: None,
                preempt_settle: master_down(&tuned),
                trials: options.keepalived_trials,
            },
            &format!("{}4", options.lab),
            options,
            &mut rng,
            None,
            log,
        )?);
    }
    Ok(FailoverBenchReport { seed: options.seed, subjects, moves })
}

/// The report as text tables.
pub fn render(report: &FailoverBenchReport) -> String {
    let mut text = String::new();
    text.push_str("kill of the owner: fault -> client served (clusterd: TCP connect to VIP:8080 accepted; keepalived: VIP answers)\n");
    for subject in &report.subjects {
        let clusterd = subject.label.starts_with("clusterd");
        text.push_str(&format!(
            "  {:<48} all        {}  (failed {}, split brain {})\n",
            subject.label,
            subject.served(|_| true).show(),
            subject.failed_trials,
            subject.split_brain.len()
        ));
        if clusterd {
            let vip = Figure::of(subject.trials.iter().filter_map(|trial| trial.vip_ms));
            text.push_str(&format!("  {:<48} VIP up     {}\n", "", vip.show()));
            text.push_str(&format!(
                "  {:<48} not leader {}\n",
                "",
                subject.served(|trial| !trial.owner_was_leader).show()
            ));
            text.push_str(&format!(
                "  {:<48} leader     {}\n",
                "",
                subject.served(|trial| trial.owner_was_leader).show()
            ));
            for (name, leader) in [("owner not leader", false), ("owner = leader", true)] {
                let pick = |f: fn(&KillTrial) -> Option<f64>| {
                    Figure::of(subject.trials.iter().filter(|trial| trial.owner_was_leader == leader).filter_map(f))
                };
                text.push_str(&format!("    phases, {name}:\n"));
                text.push_str(&format!(
                    "      detection (kill -> reassignment)        {}\n",
                    pick(|t| t.detection_ms).show()
                ));
                text.push_str(&format!(
                    "      commit + apply + ip probe (-> VIP up)   {}\n",
                    pick(|t| t.commit_to_vip_ms).show()
                ));
                text.push_str(&format!(
                    "      start (starting -> running phase_ms)    {}\n",
                    pick(|t| t.start_phase_ms.map(|ms| ms as f64)).show()
                ));
                text.push_str(&format!(
                    "      reachability (running -> client)        {}\n",
                    pick(|t| t.reachability_ms).show()
                ));
                text.push_str(&format!(
                    "      kill -> VIP on the new owner            {}\n",
                    pick(|t| t.vip_ms).show()
                ));
            }
        } else {
            let vip = Figure::of(subject.trials.iter().filter_map(|trial| trial.vip_ms));
            text.push_str(&format!("  {:<48} VIP up     {}\n", "", vip.show()));
        }
    }
    let served = |label: &str| {
        report.subjects.iter().find(|subject| subject.label.starts_with(label)).and_then(|s| s.served(|_| true).median)
    };
    let vip_up = |label: &str| {
        report
            .subjects
            .iter()
            .find(|subject| subject.label.starts_with(label))
            .and_then(|s| Figure::of(s.trials.iter().filter_map(|trial| trial.vip_ms)).median)
    };
    let (ours, theirs) = ("clusterd heartbeat 100ms", "keepalived advert_int 1 ");
    if let (Some(ours), Some(theirs)) = (vip_up(ours), vip_up(theirs)) {
        text.push_str(&format!(
            "ratio clusterd/keepalived at defaults, VIP answering from the new owner (medians): {:.2}\n",
            ours / theirs
        ));
    }
    if let (Some(ours), Some(theirs)) = (served(ours), served(theirs)) {
        text.push_str(&format!(
            "ratio clusterd client served (VIP + server start) / keepalived VIP answering (medians): {:.2}\n",
            ours / theirs
        ));
    }
    if !report.moves.is_empty() {
        text.push_str("pkg move (command -> client served by the new owner):\n");
        text.push_str(&format!(
            "  total              {}\n",
            Figure::of(report.moves.iter().filter_map(|m| m.total_ms)).show()
        ));
        text.push_str(&format!(
            "  stop phase_ms      {}\n",
            Figure::of(report.moves.iter().filter_map(|m| m.stop_phase_ms.map(|ms| ms as f64))).show()
        ));
        text.push_str(&format!(
            "  start phase_ms     {}\n",
            Figure::of(report.moves.iter().filter_map(|m| m.start_phase_ms.map(|ms| ms as f64))).show()
        ));
        text.push_str(&format!(
            "  remainder          {}\n",
            Figure::of(report.moves.iter().filter_map(|m| m.remainder_ms)).show()
        ));
    }
    text
}

// ---------------------------------------------------------------------------------------------------------
// Nemesis over packages.

/// The outcome of a nemesis run over a package and the key-value store.
#[derive(Debug)]
pub struct PackageNemesisReport {
    /// The key-value part (linearizability, steps, seed).
    pub kv: crate::nemesis::NemesisReport,
    /// Certain overlaps of the package's VIP or process on two nodes.
    pub split_brain: Vec<Overlap>,
    /// Overlaps within one sampling period (not failures).
    pub uncertain: Vec<Overlap>,
    /// Whether the package ran on exactly one node, served to the client, at the end.
    pub running_at_end: bool,
}

impl PackageNemesisReport {
    /// No split brain and a linearizable key-value history.
    pub fn passed(&self) -> bool {
        self.split_brain.is_empty() && self.kv.passed()
    }
}

/// Applies the VIP + server package of [`ClusterdVip`] to a clusterd lab, then runs the key-value nemesis
/// (its faults and clients) while the observer watches the package's VIP and process on every node; checks
/// split brain on both and linearizability of the key-value history.
pub fn run_package_nemesis(
    lab: &mut Lab,
    package: &ClusterdVip,
    options: &crate::nemesis::NemesisOptions,
    log: &mut dyn FnMut(&str),
) -> Result<PackageNemesisReport, LabError> {
    package.prepare(lab)?;
    let vip_text = package.vip.to_string();
    let observer = Observer::start(
        lab,
        ObserverSpec {
            vips: vec![package.vip.into()],
            processes: vec![SERVER_COMM.to_string()],
            interval: Duration::from_millis(5),
            files: Vec::new(),
            ..ObserverSpec::default()
        },
        None,
    )
    .map_err(|error| LabError::Daemon { node: "observer".into(), reason: error.to_string() })?;
    let prober = Prober::start(lab, SocketAddr::from((package.vip, SERVER_PORT)), Duration::from_millis(10))?;
    let started = observer.wait_for(Duration::from_secs(30), |observer| {
        observer.holders(Kind::Vip, &vip_text).len() == 1 && observer.holders(Kind::Process, SERVER_COMM).len() == 1
    });
    if !started {
        return Err(LabError::Timeout("package web running before the nemesis".into()));
    }
    log(&format!("package web running on {:?}", observer.holders(Kind::Vip, &vip_text)));
    let kv = crate::nemesis::run_kv_nemesis(lab, options, log)?;
    // After the heal phase the package must run again on exactly one node and serve.
    let settled = sys::wait_until(Duration::from_secs(30), || {
        observer.holders(Kind::Vip, &vip_text).len() == 1
            && observer.holders(Kind::Process, SERVER_COMM).len() == 1
            && prober.steady(Duration::from_millis(500), |attempt| attempt.served)
    });
    log(&format!(
        "end: VIP on {:?}, process on {:?}",
        observer.holders(Kind::Vip, &vip_text),
        observer.holders(Kind::Process, SERVER_COMM)
    ));
    drop(prober);
    let (records, end_ns) = observer.stop();
    let report = check_split_brain(&records, end_ns);
    for overlap in &report.violations {
        log(&format!(
            "SPLIT BRAIN: {:?} {} on {} and {} for {:.1} ms",
            overlap.kind,
            overlap.resource,
            overlap.nodes.0,
            overlap.nodes.1,
            overlap.millis()
        ));
    }
    Ok(PackageNemesisReport {
        kv,
        split_brain: report.violations,
        uncertain: report.uncertain,
        running_at_end: settled,
    })
}
