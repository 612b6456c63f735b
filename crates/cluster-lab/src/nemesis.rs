//! Nemesis runs: a fault schedule drawn from a seed (pure), key-value clients in the client namespace, a heal
//! phase, and the linearizability verdict with the seed to reproduce it.
//!
//! ```text
//!   seed ──▶ schedule(): [t, fault] [t', recovery] … heal ──▶ executed on the lab
//!   clients (threads): clusterctl --endpoint nX kv set|get|cas  ──▶ invoke/complete times ─┐
//!   after heal: final reads of every key ──────────────────────────────────────────────────┴▶ checker
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::lab::{Lab, LabError};
use crate::linearizability::{self, Call, Operation, Outcome};
use crate::partition::Partition;
use crate::sys;

/// A kind of fault the nemesis may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Power loss of a node, powered on again later.
    Kill,
    /// SIGKILL of the daemon, restarted later.
    KillDaemon,
    /// SIGSTOP of the daemon, SIGCONT later.
    Pause,
    /// One node cut from the others (both ways), healed later.
    Partition,
    /// The node's link down for a moment.
    Flap,
    /// The node's disk stalled (its data filesystem frozen), resumed later.
    Disk,
}

impl FaultKind {
    /// Every fault kind, for runs that draw from all of them.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Kill,
        FaultKind::KillDaemon,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Flap,
        FaultKind::Disk,
    ];

    /// The name `FromStr` accepts, which is also how [`Action`]s of this kind start (`kill n1`, `disk` is
    /// `stall-disk n1`).
    pub fn action_prefix(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::KillDaemon => "kill-daemon",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Flap => "flap",
            FaultKind::Disk => "stall-disk",
        }
    }
}

/// A fault kind that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("unknown fault {0:?}: expected kill, kill-daemon, pause, partition, flap or disk")]
pub struct UnknownFault(String);

impl FromStr for FaultKind {
    type Err = UnknownFault;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "kill" => Ok(FaultKind::Kill),
            "kill-daemon" => Ok(FaultKind::KillDaemon),
            "pause" => Ok(FaultKind::Pause),
            "partition" => Ok(FaultKind::Partition),
            "flap" => Ok(FaultKind::Flap),
            "disk" => Ok(FaultKind::Disk),
            other => Err(UnknownFault(other.to_string())),
        }
    }
}

/// One thing the nemesis does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Power loss.
    Kill(String),
    /// Power on.
    Start(String),
    /// SIGKILL the daemon.
    KillDaemon(String),
    /// Start the daemon.
    StartDaemon(String),
    /// SIGSTOP the daemon.
    Pause(String),
    /// SIGCONT the daemon.
    Resume(String),
    /// Partition.
    Partition(String),
    /// Remove any partition.
    Heal,
    /// Link down for this many milliseconds.
    Flap(String, u64),
    /// Freeze the node's data filesystem.
    StallDisk(String),
    /// Thaw it.
    ResumeDisk(String),
}

impl fmt::Display for Action {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Kill(node) => write!(formatter, "kill {node}"),
            Action::Start(node) => write!(formatter, "start {node}"),
            Action::KillDaemon(node) => write!(formatter, "kill-daemon {node}"),
            Action::StartDaemon(node) => write!(formatter, "start-daemon {node}"),
            Action::Pause(node) => write!(formatter, "pause {node}"),
            Action::Resume(node) => write!(formatter, "resume {node}"),
            Action::Partition(partition) => write!(formatter, "partition {partition}"),
            Action::Heal => write!(formatter, "heal"),
            Action::Flap(node, ms) => write!(formatter, "flap {node} {ms}ms"),
            Action::StallDisk(node) => write!(formatter, "stall-disk {node}"),
            Action::ResumeDisk(node) => write!(formatter, "resume-disk {node}"),
        }
    }
}

/// An action at a time after the start of the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Milliseconds after the start.
    pub at_ms: u64,
    /// What to do.
    pub action: Action,
}

/// The fault schedule for a run: one fault at a time (so a majority stays up), each followed by its recovery,
/// then the heal phase at `duration_ms` (heal; per node: resume its disk, power on, resume and start its daemon).
/// Same seed, same schedule.
pub fn schedule(seed: u64, duration_ms: u64, faults: &[FaultKind], nodes: &[String]) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut steps = Vec::new();
    let mut at = 1_000 + rng.random_range(0..1_000);
    if !faults.is_empty() && !nodes.is_empty() {
        while at < duration_ms {
            let fault = faults[rng.random_range(0..faults.len())];
            let node = nodes[rng.random_range(0..nodes.len())].clone();
            let hold = rng.random_range(1_000..5_000);
            let recover_at = (at + hold).min(duration_ms);
            let (fault_action, recovery) = match fault {
                FaultKind::Kill => (Action::Kill(node.clone()), Some(Action::Start(node))),
                FaultKind::KillDaemon => (Action::KillDaemon(node.clone()), Some(Action::StartDaemon(node))),
                FaultKind::Pause => (Action::Pause(node.clone()), Some(Action::Resume(node))),
                FaultKind::Partition => {
                    let others: Vec<&str> = nodes.iter().filter(|other| **other != node).map(String::as_str).collect();
                    if others.is_empty() {
                        at += hold;
                        continue;
                    }
                    let one_way = rng.random_bool(0.25);
                    let separator = if one_way { " -> " } else { " / " };
                    (Action::Partition(format!("{node}{separator}{}", others.join(","))), Some(Action::Heal))
                }
                FaultKind::Flap => (Action::Flap(node, rng.random_range(200..2_000)), None),
                FaultKind::Disk => (Action::StallDisk(node.clone()), Some(Action::ResumeDisk(node))),
            };
            steps.push(Step { at_ms: at, action: fault_action });
            if let Some(recovery) = recovery {
                steps.push(Step { at_ms: recover_at, action: recovery });
            }
            at = recover_at + rng.random_range(1_000..3_000);
        }
    }
    steps.push(Step { at_ms: duration_ms, action: Action::Heal });
    for node in nodes {
        // The disk first: a daemon started on a stalled disk would block opening its log.
        for action in [
            Action::ResumeDisk(node.clone()),
            Action::Start(node.clone()),
            Action::Resume(node.clone()),
            Action::StartDaemon(node.clone()),
        ] {
            steps.push(Step { at_ms: duration_ms, action });
        }
    }
    steps
}

/// Applies one action to the lab.
pub fn apply(lab: &mut Lab, action: &Action) -> Result<(), LabError> {
    match action {
        Action::Kill(node) => lab.kill(node),
        Action::Start(node) => lab.start(node),
        Action::KillDaemon(node) => lab.kill_daemon(node),
        Action::StartDaemon(node) => lab.start_daemon(node),
        Action::Pause(node) => lab.pause(node),
        Action::Resume(node) => lab.resume(node),
        Action::Partition(text) => {
            let partition: Partition =
                text.parse().map_err(|error| LabError::Daemon { node: "-".into(), reason: format!("{error}") })?;
            lab.partition(&partition)
        }
        Action::Heal => lab.heal(),
        Action::Flap(node, ms) => lab.flap(node, Duration::from_millis(*ms)),
        Action::StallDisk(node) => lab.stall_disk(node),
        Action::ResumeDisk(node) => lab.resume_disk(node),
    }
}

/// Settings of a key-value nemesis run.
#[derive(Clone, Debug)]
pub struct NemesisOptions {
    /// Seed of the schedule and of the clients' choices.
    pub seed: u64,
    /// Length of the fault phase.
    pub duration: Duration,
    /// Faults to draw from.
    pub faults: Vec<FaultKind>,
    /// Concurrent clients.
    pub clients: usize,
    /// A client's operation is abandoned (outcome unknown) after this long.
    pub operation_timeout: Duration,
}

/// The outcome of a nemesis run.
#[derive(Debug, Serialize)]
pub struct NemesisReport {
    /// Seed to reproduce.
    pub seed: u64,
    /// Steps executed (with errors, if any).
    pub steps: Vec<(u64, String, Option<String>)>,
    /// Operations recorded.
    pub operations: usize,
    /// Acknowledged operations.
    pub acknowledged: usize,
    /// Operations whose outcome is unknown.
    pub unknown: usize,
    /// Keys checked.
    pub keys: usize,
    /// Keys that are not linearizable (or undecided), with the checker's explanation.
    pub failures: Vec<(String, String)>,
    /// The full history.
    #[serde(skip)]
    pub history: Vec<Operation>,
}

impl NemesisReport {
    /// True when the history is linearizable (no lost acknowledged write, no stale read).
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

fn run_kv(
    lab: &Lab,
    node_address: std::net::Ipv4Addr,
    args: &[&str],
    timeout: Duration,
) -> Result<(Option<i32>, String), LabError> {
    let mut command = lab.remote_clusterctl(node_address, args)?;
    command.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    let mut child = command.spawn().map_err(|source| sys::SysError::Spawn { program: "clusterctl".into(), source })?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut stdout = String::new();
                if let Some(mut pipe) = child.stdout.take() {
                    use std::io::Read;
                    let _ = pipe.read_to_string(&mut stdout);
                }
                return Ok((status.code(), stdout));
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok((None, String::new()));
            }
        }
    }
}

fn outcome_of(call: &Call, code: Option<i32>, stdout: &str) -> Outcome {
    let value = stdout.strip_suffix('\n').unwrap_or(stdout).to_string();
    match (call, code) {
        (Call::Get, Some(0)) => Outcome::Value(Some(value)),
        (Call::Get, Some(3)) => Outcome::Value(None),
        (Call::Del, Some(3)) => Outcome::NotFound,
        (Call::Cas { .. }, Some(3 | 4)) => Outcome::CasMismatch,
        (_, Some(0)) => Outcome::Ok,
        _ => Outcome::Unknown,
    }
}

fn args_of<'a>(call: &'a Call, key: &'a str) -> Vec<&'a str> {
    match call {
        Call::Set(value) => vec!["kv", "set", key, value],
        Call::Get => vec!["kv", "get", key],
        Call::Cas { expected: Some(expected), new } => vec!["kv", "cas", key, expected, new],
        Call::Cas { expected: None, new } => vec!["kv", "cas", key, "--absent", new],
        Call::Del => vec!["kv", "del", key],
    }
}

/// Runs one key-value operation from the client namespace through `node_address` (with the admin certificate),
/// abandoned after `timeout`; a timeout, a refused connection or an unexpected exit code is `Outcome::Unknown`.
pub fn run_kv_operation(
    lab: &Lab,
    node_address: std::net::Ipv4Addr,
    key: &str,
    call: &Call,
    timeout: Duration,
) -> Result<Outcome, LabError> {
    let (code, stdout) = run_kv(lab, node_address, &args_of(call, key), timeout)?;
    Ok(outcome_of(call, code, &stdout))
}

/// Runs clients against the lab's key-value store while the nemesis injects faults, heals, reads every key,
/// and checks linearizability. `log` receives progress lines.
pub fn run_kv_nemesis(
    lab: &mut Lab,
    options: &NemesisOptions,
    log: &mut dyn FnMut(&str),
) -> Result<NemesisReport, LabError> {
    let nodes = lab.node_names();
    let steps = schedule(options.seed, options.duration.as_millis() as u64, &options.faults, &nodes);
    let addresses: Vec<std::net::Ipv4Addr> = lab.state().nodes.iter().map(|node| node.address).collect();
    let history = Arc::new(Mutex::new(Vec::<Operation>::new()));
    let keys = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let client_lab = Arc::new(Lab::open(lab.name())?);
    let mut threads = Vec::new();
    for client in 0..options.clients {
        let (history, keys, stop, addresses, client_lab) =
            (history.clone(), keys.clone(), stop.clone(), addresses.clone(), client_lab.clone());
        let seed = options.seed.wrapping_mul(1_000_003).wrapping_add(client as u64);
        let timeout = options.operation_timeout;
        threads.push(std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut process = client as u64;
            let mut counter = 0u64;
            let mut last_seen: std::collections::HashMap<String, Option<String>> = Default::default();
            while !stop.load(Ordering::Relaxed) {
                let window = started.elapsed().as_secs() / 8;
                let key = format!("nem{window}-{}", rng.random_range(0..2));
                keys.lock().expect("keys lock").insert(key.clone());
                counter += 1;
                let value = format!("c{client}v{counter}");
                let call = match rng.random_range(0..10) {
                    0..=3 => Call::Get,
                    4..=6 => Call::Set(value),
                    _ => Call::Cas { expected: last_seen.get(&key).cloned().flatten(), new: value },
                };
                let address = addresses[rng.random_range(0..addresses.len())];
                let invoke_ns = sys::now_ns();
                let result = run_kv(&client_lab, address, &args_of(&call, &key), timeout);
                let complete_ns = sys::now_ns();
                let outcome = match result {
                    Ok((Some(2), _)) => {
                        eprintln!("clusterlab: clusterctl rejected its arguments (exit 2); stopping client {client}");
                        return;
                    }
                    Ok((code, stdout)) => outcome_of(&call, code, &stdout),
                    Err(_) => Outcome::Unknown,
                };
                match (&call, &outcome) {
                    (_, Outcome::Value(value)) => {
                        last_seen.insert(key.clone(), value.clone());
                    }
                    (Call::Set(value) | Call::Cas { new: value, .. }, Outcome::Ok) => {
                        last_seen.insert(key.clone(), Some(value.clone()));
                    }
                    _ => {}
                }
                let unknown = outcome == Outcome::Unknown;
                history.lock().expect("history lock").push(Operation {
                    client: process,
                    key,
                    call,
                    outcome,
                    invoke_ns,
                    complete_ns,
                });
                if unknown {
                    // A process with an operation in doubt never issues another one (as in Jepsen).
                    process += 1_000;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }));
    }
    let mut executed = Vec::new();
    for step in &steps {
        let at = Duration::from_millis(step.at_ms);
        let elapsed = started.elapsed();
        if at > elapsed {
            std::thread::sleep(at - elapsed);
        }
        let result = apply(lab, &step.action);
        let error = match result {
            Ok(()) => None,
            // Recoveries of the heal phase are idempotent: "not running" is expected there.
            Err(LabError::NoDaemon(_)) | Err(LabError::PoweredOff(_)) | Err(LabError::NoDataDisk(_))
                if step.at_ms >= options.duration.as_millis() as u64 =>
            {
                None
            }
            Err(error) => Some(error.to_string()),
        };
        log(&format!(
            "{:>7.1}s {}{}",
            started.elapsed().as_secs_f64(),
            step.action,
            error.as_ref().map(|error| format!(" (error: {error})")).unwrap_or_default()
        ));
        executed.push((step.at_ms, step.action.to_string(), error));
    }
    // Heal phase: let the clients see a healthy cluster for a while.
    let healed = sys::wait_until(Duration::from_secs(30), || lab.leader().is_some());
    log(&format!(
        "{:>7.1}s heal phase: leader {}",
        started.elapsed().as_secs_f64(),
        if healed { "elected" } else { "NOT elected within 30 s" }
    ));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    // Final reads: every key, until a definite answer.
    let final_keys: Vec<String> = keys.lock().expect("keys lock").iter().cloned().collect();
    for key in &final_keys {
        for attempt in 0..20 {
            let address = addresses[attempt % addresses.len()];
            let invoke_ns = sys::now_ns();
            let (code, stdout) = run_kv(lab, address, &["kv", "get", key], options.operation_timeout)?;
            let complete_ns = sys::now_ns();
            let outcome = outcome_of(&Call::Get, code, &stdout);
            if outcome != Outcome::Unknown {
                history.lock().expect("history lock").push(Operation {
                    client: u64::MAX,
                    key: key.clone(),
                    call: Call::Get,
                    outcome,
                    invoke_ns,
                    complete_ns,
                });
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let history = history.lock().expect("history lock").clone();
    let verdict = linearizability::check(&history);
    let unknown = history.iter().filter(|operation| operation.outcome == Outcome::Unknown).count();
    let failures = verdict.failures().into_iter().map(|(key, verdict)| (key.clone(), format!("{verdict:?}"))).collect();
    Ok(NemesisReport {
        seed: options.seed,
        steps: executed,
        operations: history.len(),
        acknowledged: history.len() - unknown,
        unknown,
        keys: verdict.keys.len(),
        failures,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<String> {
        vec!["n1".into(), "n2".into(), "n3".into()]
    }

    const ALL: [FaultKind; 6] = FaultKind::ALL;

    #[test]
    fn same_seed_same_schedule() {
        assert_eq!(schedule(7, 60_000, &ALL, &nodes()), schedule(7, 60_000, &ALL, &nodes()));
        assert_ne!(schedule(7, 60_000, &ALL, &nodes()), schedule(8, 60_000, &ALL, &nodes()));
    }

    #[test]
    fn every_fault_is_recovered_before_the_next_and_the_run_ends_healed() {
        let steps = schedule(42, 120_000, &ALL, &nodes());
        let mut outstanding: Option<Action> = None;
        for step in steps.iter().filter(|step| step.at_ms < 120_000) {
            match &step.action {
                Action::Kill(node) => {
                    assert!(outstanding.is_none());
                    outstanding = Some(Action::Start(node.clone()));
                }
                Action::KillDaemon(node) => {
                    assert!(outstanding.is_none());
                    outstanding = Some(Action::StartDaemon(node.clone()));
                }
                Action::Pause(node) => {
                    assert!(outstanding.is_none());
                    outstanding = Some(Action::Resume(node.clone()));
                }
                Action::Partition(text) => {
                    assert!(outstanding.is_none());
                    assert!(text.parse::<Partition>().is_ok(), "{text}");
                    outstanding = Some(Action::Heal);
                }
                Action::StallDisk(node) => {
                    assert!(outstanding.is_none());
                    outstanding = Some(Action::ResumeDisk(node.clone()));
                }
                Action::Flap(_, ms) => assert!(outstanding.is_none() && *ms < 2_000),
                recovery => assert_eq!(outstanding.take().as_ref(), Some(recovery)),
            }
        }
        let tail: Vec<&Step> = steps.iter().filter(|step| step.at_ms == 120_000).collect();
        assert_eq!(tail[0].action, Action::Heal);
        for node in nodes() {
            assert!(tail.iter().any(|step| step.action == Action::Start(node.clone())));
            assert!(tail.iter().any(|step| step.action == Action::Resume(node.clone())));
            let resume_disk = tail.iter().position(|step| step.action == Action::ResumeDisk(node.clone()));
            let start_daemon = tail.iter().position(|step| step.action == Action::StartDaemon(node.clone()));
            assert!(resume_disk.is_some() && resume_disk < start_daemon, "{node}: the disk resumes before the daemon");
        }
        assert!(steps.windows(2).all(|pair| pair[0].at_ms <= pair[1].at_ms));
    }

    #[test]
    fn only_the_chosen_faults_are_drawn() {
        let steps = schedule(1, 300_000, &[FaultKind::Pause], &nodes());
        assert!(steps
            .iter()
            .filter(|step| step.at_ms < 300_000)
            .all(|step| matches!(step.action, Action::Pause(_) | Action::Resume(_))));
        assert!(steps.len() > 10);
    }

    #[test]
    fn fault_names_parse() {
        assert_eq!("kill-daemon".parse::<FaultKind>().unwrap(), FaultKind::KillDaemon);
        assert_eq!("disk".parse::<FaultKind>().unwrap(), FaultKind::Disk);
        assert!("meteor".parse::<FaultKind>().is_err());
    }

    #[test]
    fn every_kind_is_drawn_and_named_by_its_actions() {
        let steps = schedule(42, 300_000, &FaultKind::ALL, &nodes());
        for kind in FaultKind::ALL {
            let prefix = format!("{} ", kind.action_prefix());
            assert!(
                steps.iter().any(|step| step.at_ms < 300_000 && step.action.to_string().starts_with(&prefix)),
                "{kind:?} is never drawn in 300 s"
            );
        }
        // `kill ` must not match `kill-daemon n1`, nor `stall-disk` anything else.
        let kill_daemon = Action::KillDaemon("n1".into()).to_string();
        assert!(!kill_daemon.starts_with("kill "));
    }

    #[test]
    fn a_disk_stall_is_followed_by_its_resume_on_the_same_node() {
        let steps = schedule(9, 300_000, &[FaultKind::Disk], &nodes());
        let stalls: Vec<usize> =
            (0..steps.len()).filter(|index| matches!(steps[*index].action, Action::StallDisk(_))).collect();
        assert!(stalls.len() > 10, "{} stalls in 300 s", stalls.len());
        for index in stalls {
            let (stall, resume) = (&steps[index], &steps[index + 1]);
            match (&stall.action, &resume.action) {
                (Action::StallDisk(stalled), Action::ResumeDisk(resumed)) => assert_eq!(stalled, resumed),
                other => panic!("expected stall-disk then resume-disk, got {other:?}"),
            }
            let held = resume.at_ms - stall.at_ms;
            assert!(held < 5_000 && (held >= 1_000 || resume.at_ms == 300_000), "stalled for {held} ms");
        }
    }

    #[test]
    fn exit_codes_map_to_outcomes() {
        assert_eq!(outcome_of(&Call::Get, Some(0), "v1\n"), Outcome::Value(Some("v1".into())));
        assert_eq!(outcome_of(&Call::Get, Some(3), ""), Outcome::Value(None));
        assert_eq!(outcome_of(&Call::Get, Some(5), ""), Outcome::Unknown);
        assert_eq!(outcome_of(&Call::Set("x".into()), Some(0), ""), Outcome::Ok);
        assert_eq!(outcome_of(&Call::Set("x".into()), None, ""), Outcome::Unknown);
        let cas = Call::Cas { expected: None, new: "x".into() };
        assert_eq!(outcome_of(&cas, Some(4), "y\n"), Outcome::CasMismatch);
        assert_eq!(outcome_of(&Call::Del, Some(3), ""), Outcome::NotFound);
    }
}
