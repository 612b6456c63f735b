//! `clusterlab`: the lab's command line (composition root over the `cluster_lab` library).

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use cluster_lab::history;
use cluster_lab::keepalived::{self, BenchOptions, Keepalived};
use cluster_lab::lab::{Daemon, KeepalivedConfig, Lab, LabGuard, LabSpec};
use cluster_lab::nemesis::{self, FaultKind, NemesisOptions};
use cluster_lab::observer::{Observer, ObserverSpec};
use cluster_lab::partition::Partition;
use cluster_lab::{failover_bench, fence, scale_bench, watchdog};

#[derive(Parser)]
#[command(name = "clusterlab", about = "clusterd test lab: clusters in network namespaces, faults, observer, checkers")]
struct Cli {
    /// Lab name (1-16 characters a-z, 0-9); several labs can run at once.
    #[arg(long, short = 'n', global = true, default_value = "lab", env = "CLUSTERLAB_NAME")]
    name: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DaemonChoice {
    Clusterd,
    None,
    Keepalived,
}

#[derive(Subcommand)]
enum Command {
    /// Bring a lab up: switch, nodes, client, daemons, cluster formed.
    Up {
        /// Voting nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Learner nodes (added after the voters).
        #[arg(long, default_value_t = 0)]
        learners: usize,
        /// What the nodes run.
        #[arg(long, value_enum, default_value = "clusterd")]
        daemon: DaemonChoice,
        /// Shared LUN size in MiB (0: none).
        #[arg(long, default_value_t = 0)]
        lun_mib: u64,
        /// Emulated watchdog per node (clusterd config `[watchdog] device = "lab:…"`), served by a supervisor.
        #[arg(long)]
        watchdog: bool,
        /// Seconds a node stays off after a watchdog reset.
        #[arg(long, default_value_t = 2.0)]
        reboot_delay: f64,
        /// keepalived VIP (with --daemon keepalived).
        #[arg(long, default_value = "192.0.2.100")]
        vip: std::net::Ipv4Addr,
        /// keepalived advert_int (with --daemon keepalived).
        #[arg(long, default_value = "1")]
        advert_int: String,
        #[command(flatten)]
        raft: RaftArgs,
        #[command(flatten)]
        binaries: Binaries,
    },
    /// Remove everything the lab created (safe twice; also cleans a crashed run).
    Down,
    /// Show nodes, daemons, partition, LUN.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a node (its network and mount namespaces, CLUSTERCTL_SOCKET set).
    Exec {
        /// The node.
        node: String,
        /// The command.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Run a command in the client namespace.
    Client {
        /// The command.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Power loss of a node: every process killed, link down.
    Kill { node: String },
    /// Power a node on.
    Start { node: String },
    /// Power cycle a node.
    Restart { node: String },
    /// SIGKILL only the daemon (what it started stays).
    KillDaemon { node: String },
    /// Start the daemon again.
    StartDaemon { node: String },
    /// SIGTERM the daemon, as `systemctl stop clusterd` does, and wait for it to exit.
    StopDaemon {
        node: String,
        /// How long to wait for the daemon to exit, in seconds (systemd's TimeoutStopSec of the unit).
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
    },
    /// Give a node's emulated watchdog the `nowayout` property (`on`) or take it away (`off`).
    Nowayout {
        node: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// SIGSTOP the daemon.
    Pause { node: String },
    /// SIGCONT the daemon.
    Resume { node: String },
    /// Partition: `n1,n2 / n3` (both ways) or `n1 -> n2,n3` (one way); members are nodes or `client`.
    Partition {
        #[arg(trailing_var_arg = true, required = true)]
        spec: Vec<String>,
    },
    /// Remove any partition.
    Heal,
    /// Take a node's switch port down, then up.
    Flap {
        node: String,
        /// How long the link stays down.
        #[arg(long, default_value_t = 1000)]
        down_ms: u64,
    },
    /// Stall a node's disk: freeze its data filesystem, so every write and fsync of its clusterd blocks.
    StallDisk { node: String },
    /// Resume a stalled disk (thaw its data filesystem); does nothing when it is not stalled.
    ResumeDisk { node: String },
    /// Delay what a node sends (netem); 0 removes it.
    Delay { node: String, ms: u64 },
    /// Print the shared LUN's device.
    Lun,
    /// Sample VIPs, mounts, processes and client reachability; write JSON lines; check split brain.
    Observe {
        #[arg(long)]
        vip: Vec<IpAddr>,
        #[arg(long)]
        mount: Vec<PathBuf>,
        #[arg(long)]
        process: Vec<String>,
        /// ADDR:PORT reached from the client namespace.
        #[arg(long)]
        probe: Vec<SocketAddr>,
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        /// Seconds to observe.
        #[arg(long)]
        duration: f64,
        /// History file (JSON lines).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Check a history file: split brain and intervals.
    Check { history: PathBuf },
    /// Random faults against the key-value store, then heal and check linearizability.
    Nemesis {
        /// Seconds of faults.
        #[arg(long, default_value_t = 120.0)]
        duration: f64,
        #[arg(long, default_value = "kill,kill-daemon,pause,partition,flap,disk")]
        faults: String,
        /// Seed (default: from the clock; printed to reproduce).
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 3)]
        clients: usize,
        /// Nodes of the lab brought up for the run (unless --use-existing).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Run on the lab already up under --name.
        #[arg(long)]
        use_existing: bool,
        /// Write the operation history (JSON lines) here.
        #[arg(long)]
        history: Option<PathBuf>,
        /// Also run a package (VIP 192.0.2.100 + an HTTP server) and check it for split brain.
        #[arg(long)]
        packages: bool,
        /// Emulated watchdog per node (for `pause` with packages).
        #[arg(long)]
        watchdog: bool,
        #[command(flatten)]
        binaries: Binaries,
    },
    /// Failover benchmark of keepalived (defaults and tuned) in its own lab.
    BenchKeepalived {
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// advert_int values to measure (fractional ones use VRRPv3).
        #[arg(long, default_value = "1,0.1")]
        advert_int: String,
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        /// Seconds each split-brain scenario is held.
        #[arg(long, default_value_t = 5.0)]
        split_hold: f64,
        /// Write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Failover benchmarks of the failover engine: clusterd (defaults, 50/300) and keepalived (defaults, tuned)
    /// after `kill` of the owner, phases, `pkg move` switchover, in one run (labs NAME1..NAME4).
    BenchFailover {
        /// clusterd kill trials per category (owner is / is not the Raft leader).
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// keepalived kill trials per setting.
        #[arg(long, default_value_t = 20)]
        keepalived_trials: usize,
        /// `pkg move` trials.
        #[arg(long, default_value_t = 20)]
        move_trials: usize,
        /// keepalived's tuned advert_int.
        #[arg(long, default_value = "0.1")]
        tuned_advert_int: String,
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        /// Seed of the kill phases.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// CI mode: 2 trials of each kind.
        #[arg(long)]
        quick: bool,
        /// Run only these subjects (comma-separated; default: all four).
        #[arg(long, value_enum, value_delimiter = ',')]
        subjects: Vec<BenchSubjectArg>,
        /// Write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        #[command(flatten)]
        binaries: Binaries,
    },
    /// Promotion benchmark (issue 13): kill the node of a promotable package's primary (ocf:heartbeat:Stateful,
    /// the primary holds a VIP) which also owns a plain VIP package; both VIPs measured in the same trial.
    BenchPromotion {
        /// Kill trials.
        #[arg(long, default_value_t = 20)]
        trials: usize,
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        /// Seed of the kill phases.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// CI mode: 2 trials.
        #[arg(long)]
        quick: bool,
        /// Write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        #[command(flatten)]
        binaries: Binaries,
    },
    /// Scale benchmark: many one-process packages on a clusterd lab; request times, idle CPU, relocation of the
    /// packages of a killed node (lab NAME, removed at the end).
    BenchScale {
        /// Nodes in all.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Voting nodes among them (n1..nV; the others are Raft learners) [default: the nodes, at most 5].
        #[arg(long)]
        voters: Option<usize>,
        /// Packages.
        #[arg(long, default_value_t = 1000)]
        packages: usize,
        /// Kill trials of a node that is not the Raft leader.
        #[arg(long, default_value_t = 3)]
        trials: usize,
        /// One more trial that kills this many nodes at once (not the leader; learners first).
        #[arg(long, default_value_t = 0)]
        rack: usize,
        /// Skip the kill trial of the leader.
        #[arg(long)]
        no_leader_trial: bool,
        /// Sampling period of the observer during the kill trials (ms).
        #[arg(long, default_value_t = 50)]
        observe_ms: u64,
        /// Timed runs of each request.
        #[arg(long, default_value_t = 20)]
        status_runs: usize,
        /// Seconds of the idle CPU measurement.
        #[arg(long, default_value_t = 10.0)]
        idle_secs: f64,
        /// Packages per `pkg apply` call during the setup (each call waits until its packages run).
        #[arg(long, default_value_t = 100)]
        per_call: usize,
        #[command(flatten)]
        raft: RaftArgs,
        /// The cluster's `lease` setting, set before the packages (e.g. `3s`; the stop budget follows).
        #[arg(long)]
        lease: Option<String>,
        /// CI mode: 3 voters and 1 learner, 60 packages, 1 trial, short windows (overrides the other options).
        #[arg(long)]
        quick: bool,
        /// Bring the lab up with every package running, then stop and leave it up (to explore it).
        #[arg(long)]
        setup_only: bool,
        /// Write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        #[command(flatten)]
        binaries: Binaries,
    },
    /// Fence agent (fence-agents convention: name=value lines on stdin).
    FenceAgent,
    /// Serve the emulated watchdogs (started by `up --watchdog`).
    #[command(hide = true)]
    Supervise,
}

/// A subject of `bench-failover`.
#[derive(Clone, Copy, ValueEnum)]
enum BenchSubjectArg {
    /// clusterd, heartbeat 100 ms, lease 1 s, with the `pkg move` trials.
    ClusterdDefaults,
    /// clusterd, heartbeat 50 ms, lease 300 ms.
    ClusterdFast,
    /// keepalived, advert_int 1.
    KeepalivedDefaults,
    /// keepalived, the tuned advert_int.
    KeepalivedTuned,
}

impl BenchSubjectArg {
    fn subject(self) -> failover_bench::BenchSubject {
        match self {
            BenchSubjectArg::ClusterdDefaults => failover_bench::BenchSubject::ClusterdDefaults,
            BenchSubjectArg::ClusterdFast => failover_bench::BenchSubject::ClusterdFast,
            BenchSubjectArg::KeepalivedDefaults => failover_bench::BenchSubject::KeepalivedDefaults,
            BenchSubjectArg::KeepalivedTuned => failover_bench::BenchSubject::KeepalivedTuned,
        }
    }
}

/// Raft's timing written into every node file (`[raft]`); clusterd's defaults when absent.
#[derive(clap::Args)]
struct RaftArgs {
    /// The Raft leader's heartbeat to the voters, in ms (node file `[raft] heartbeat`).
    #[arg(long, requires = "election_timeout_ms")]
    raft_heartbeat_ms: Option<u64>,
    /// The election timeout, in ms (node file `[raft] election_timeout`).
    #[arg(long, requires = "raft_heartbeat_ms")]
    election_timeout_ms: Option<u64>,
}

impl RaftArgs {
    fn timing(&self) -> Option<cluster_lab::lab::RaftTiming> {
        Some(cluster_lab::lab::RaftTiming {
            heartbeat_ms: self.raft_heartbeat_ms?,
            election_timeout_ms: self.election_timeout_ms?,
        })
    }
}

#[derive(clap::Args)]
struct Binaries {
    /// clusterd binary (default: next to clusterlab).
    #[arg(long, env = "CLUSTERD_BIN")]
    clusterd: Option<PathBuf>,
    /// clusterctl binary (default: next to clusterlab).
    #[arg(long, env = "CLUSTERCTL_BIN")]
    clusterctl: Option<PathBuf>,
}

impl Binaries {
    fn resolve(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let here = std::env::current_exe().context("failed to find the clusterlab executable")?;
        let sibling = |name: &str| here.with_file_name(name);
        let clusterd = self.clusterd.clone().unwrap_or_else(|| sibling("clusterd"));
        let clusterctl = self.clusterctl.clone().unwrap_or_else(|| sibling("clusterctl"));
        for binary in [&clusterd, &clusterctl] {
            if !binary.exists() {
                bail!(
                    "binary {} not found (cargo build -p clusterd -p clusterctl, or set CLUSTERD_BIN/CLUSTERCTL_BIN)",
                    binary.display()
                );
            }
        }
        Ok((clusterd, clusterctl))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("clusterlab: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn open(name: &str) -> anyhow::Result<Lab> {
    Lab::open(name).with_context(|| format!("failed to open lab {name}"))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let name = cli.name.clone();
    match cli.command {
        Command::Up { nodes, learners, daemon, lun_mib, watchdog, reboot_delay, vip, advert_int, raft, binaries } => {
            let daemon = match daemon {
                DaemonChoice::None => Daemon::None,
                DaemonChoice::Keepalived => Daemon::Keepalived(KeepalivedConfig {
                    vip,
                    vrrp_version: if advert_int.contains('.') { 3 } else { 2 },
                    advert_int,
                }),
                DaemonChoice::Clusterd => {
                    let (clusterd, clusterctl) = binaries.resolve()?;
                    Daemon::Clusterd { clusterd, clusterctl, watchdog }
                }
            };
            let spec = LabSpec {
                name: name.clone(),
                voters: nodes,
                learners,
                daemon,
                lun_mib,
                tool: None,
                reboot_delay: Duration::from_secs_f64(reboot_delay),
                watchdog,
                other_clusterd: Default::default(),
                witnesses: Vec::new(),
                joining: Vec::new(),
                raft: raft.timing(),
            };
            let lab = Lab::up(&spec).with_context(|| format!("failed to bring lab {name} up"))?;
            print_status(&lab, false);
            println!("\nexplore: clusterlab --name {name} exec n1 -- clusterctl status\ntear down: clusterlab --name {name} down");
        }
        Command::Down => Lab::down(&name).with_context(|| format!("failed to remove lab {name}"))?,
        Command::Status { json } => print_status(&open(&name)?, json),
        Command::Exec { node, command } => {
            let lab = open(&name)?;
            let status = lab
                .node_command(&node, &command)
                .with_context(|| format!("failed to prepare the command in node {node}"))?
                .status()
                .with_context(|| format!("failed to run {} in node {node}", command[0]))?;
            return Ok(ExitCode::from(status.code().unwrap_or(1) as u8));
        }
        Command::Client { command } => {
            let lab = open(&name)?;
            let status = lab
                .client_command(&command)
                .context("failed to prepare the command in the client namespace")?
                .status()
                .with_context(|| format!("failed to run {} in the client namespace", command[0]))?;
            return Ok(ExitCode::from(status.code().unwrap_or(1) as u8));
        }
        Command::Kill { node } => open(&name)?.kill(&node).with_context(|| format!("failed to kill node {node}"))?,
        Command::Start { node } => open(&name)?.start(&node).with_context(|| format!("failed to start node {node}"))?,
        Command::Restart { node } => {
            open(&name)?.restart(&node).with_context(|| format!("failed to restart node {node}"))?
        }
        Command::KillDaemon { node } => {
            open(&name)?.kill_daemon(&node).with_context(|| format!("failed to kill the daemon of node {node}"))?
        }
        Command::StartDaemon { node } => {
            open(&name)?.start_daemon(&node).with_context(|| format!("failed to start the daemon of node {node}"))?
        }
        Command::StopDaemon { node, timeout } => open(&name)?
            .stop_daemon(&node, Duration::from_secs_f64(timeout))
            .with_context(|| format!("failed to stop the daemon of node {node}"))?,
        Command::Nowayout { node, state } => open(&name)?
            .set_watchdog_nowayout(&node, state == "on")
            .with_context(|| format!("failed to set nowayout of the watchdog of node {node}"))?,
        Command::Pause { node } => open(&name)?.pause(&node).with_context(|| format!("failed to pause node {node}"))?,
        Command::Resume { node } => {
            open(&name)?.resume(&node).with_context(|| format!("failed to resume node {node}"))?
        }
        Command::Partition { spec } => {
            let text = spec.join(" ");
            let partition: Partition = text.parse()?;
            open(&name)?.partition(&partition).with_context(|| format!("failed to partition {partition}"))?;
        }
        Command::Heal => open(&name)?.heal().context("failed to heal the partition")?,
        Command::Flap { node, down_ms } => open(&name)?
            .flap(&node, Duration::from_millis(down_ms))
            .with_context(|| format!("failed to flap node {node}"))?,
        Command::StallDisk { node } => {
            open(&name)?.stall_disk(&node).with_context(|| format!("failed to stall the disk of node {node}"))?
        }
        Command::ResumeDisk { node } => {
            open(&name)?.resume_disk(&node).with_context(|| format!("failed to resume the disk of node {node}"))?
        }
        Command::Delay { node, ms } => match open(&name)?.delay(&node, ms) {
            Ok(()) => {}
            Err(cluster_lab::lab::LabError::Unsupported(what)) => {
                println!("skipped: {what} is not supported on this host; no delay added");
            }
            Err(error) => return Err(error).with_context(|| format!("failed to delay node {node}")),
        },
        Command::Lun => match open(&name)?.lun() {
            Some(device) => println!("{device}"),
            None => bail!("lab {name} has no LUN (up --lun-mib N)"),
        },
        Command::Observe { vip, mount, process, probe, interval_ms, duration, output } => {
            let lab = open(&name)?;
            let spec = ObserverSpec {
                vips: vip,
                mounts: mount,
                processes: process,
                probes: probe,
                interval: Duration::from_millis(interval_ms),
                files: Vec::new(),
            };
            let observer = Observer::start(&lab, spec, output.as_deref()).context("failed to start the observer")?;
            std::thread::sleep(Duration::from_secs_f64(duration));
            let (records, end_ns) = observer.stop();
            return Ok(report_history(&records, end_ns));
        }
        Command::Check { history: path } => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
            let records = history::parse_jsonl(&text);
            let end_ns = records.iter().map(|record| record.t_ns).max().unwrap_or(0);
            return Ok(report_history(&records, end_ns));
        }
        Command::Nemesis {
            duration,
            faults,
            seed,
            clients,
            nodes,
            use_existing,
            history: history_path,
            packages,
            watchdog,
            binaries,
        } => {
            let faults: Vec<FaultKind> =
                faults.split(',').filter(|fault| !fault.trim().is_empty()).map(str::parse).collect::<Result<_, _>>()?;
            let seed = seed.unwrap_or_else(cluster_lab::sys::now_ns);
            println!("nemesis seed {seed} (reproduce with --seed {seed})");
            let _guard;
            let mut lab = if use_existing {
                open(&name)?
            } else {
                let (clusterd, clusterctl) = binaries.resolve()?;
                _guard = LabGuard::new(&name);
                Lab::up(&LabSpec {
                    daemon: Daemon::Clusterd { clusterd, clusterctl, watchdog },
                    watchdog,
                    ..LabSpec::bare(&name, nodes)
                })
                .with_context(|| format!("failed to bring lab {name} up"))?
            };
            let options = NemesisOptions {
                seed,
                duration: Duration::from_secs_f64(duration),
                faults,
                clients,
                operation_timeout: Duration::from_secs(5),
            };
            let mut split_brain = Vec::new();
            let report = if packages {
                let (clusterd, clusterctl) = binaries.resolve()?;
                let package = failover_bench::ClusterdVip {
                    clusterd,
                    clusterctl,
                    heartbeat: None,
                    lease: None,
                    vip: "192.0.2.100".parse().expect("valid address"),
                };
                let result =
                    failover_bench::run_package_nemesis(&mut lab, &package, &options, &mut |line| println!("{line}"))
                        .context("nemesis run failed")?;
                println!(
                    "package web: split brain {} (uncertain within one sample: {}), running and served at the end: {}",
                    if result.split_brain.is_empty() {
                        "none".to_string()
                    } else {
                        result.split_brain.len().to_string()
                    },
                    result.uncertain.len(),
                    result.running_at_end
                );
                split_brain = result.split_brain;
                result.kv
            } else {
                nemesis::run_kv_nemesis(&mut lab, &options, &mut |line| println!("{line}"))
                    .context("nemesis run failed")?
            };
            if let Some(path) = history_path {
                let text: String = report
                    .history
                    .iter()
                    .map(|operation| serde_json::to_string(operation).expect("operation serializes") + "\n")
                    .collect();
                std::fs::write(&path, text).with_context(|| format!("failed to write {}", path.display()))?;
            }
            println!(
                "{} operations ({} acknowledged, {} unknown) on {} keys",
                report.operations, report.acknowledged, report.unknown, report.keys
            );
            if report.passed() && split_brain.is_empty() {
                println!(
                    "verdict: PASS (linearizable, no lost acknowledged write{}); seed {seed}",
                    if packages { ", no split brain of the package" } else { "" }
                );
            } else {
                for (key, why) in &report.failures {
                    println!("key {key}: {why}");
                }
                println!("verdict: FAIL; reproduce with --seed {seed}");
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::BenchKeepalived { trials, advert_int, interval_ms, split_hold, report } => {
            let mut reports = Vec::new();
            for advert in advert_int.split(',') {
                let owner = Keepalived(KeepalivedConfig {
                    vip: "192.0.2.100".parse().expect("valid address"),
                    advert_int: advert.to_string(),
                    vrrp_version: if advert.contains('.') { 3 } else { 2 },
                });
                let options = BenchOptions {
                    lab: name.clone(),
                    nodes: 3,
                    trials,
                    interval: Duration::from_millis(interval_ms),
                    split_hold: Duration::from_secs_f64(split_hold),
                    history: None,
                };
                println!("== {}", keepalived::VipOwner::label(&owner));
                let result = keepalived::run_failover_bench(&owner, &options, &mut |line| println!("{line}"))
                    .with_context(|| format!("benchmark of keepalived advert_int {advert} failed"))?;
                print_bench(&result);
                reports.push(result);
            }
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_string_pretty(&reports)?)
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
        }
        Command::BenchFailover {
            trials,
            keepalived_trials,
            move_trials,
            tuned_advert_int,
            interval_ms,
            seed,
            quick,
            subjects,
            report,
            binaries,
        } => {
            let (clusterd, clusterctl) = binaries.resolve()?;
            let (trials, keepalived_trials, move_trials) =
                if quick { (2, 2, 2) } else { (trials, keepalived_trials, move_trials) };
            let options = failover_bench::FailoverBenchOptions {
                lab: name.clone(),
                trials,
                keepalived_trials,
                move_trials,
                interval: Duration::from_millis(interval_ms),
                seed,
                clusterd,
                clusterctl,
                tuned_advert_int,
                subjects: subjects.into_iter().map(BenchSubjectArg::subject).collect(),
            };
            let result =
                failover_bench::run(&options, &mut |line| println!("{line}")).context("failover benchmark failed")?;
            println!("{}", failover_bench::render(&result));
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_string_pretty(&result)?)
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
        }
        Command::BenchPromotion { trials, interval_ms, seed, quick, report, binaries } => {
            let (clusterd, clusterctl) = binaries.resolve()?;
            let options = cluster_lab::promotion_bench::PromotionBenchOptions {
                lab: name.clone(),
                trials: if quick { 2 } else { trials },
                interval: Duration::from_millis(interval_ms),
                seed,
                clusterd,
                clusterctl,
            };
            let result = cluster_lab::promotion_bench::run(&options, &mut |line| println!("{line}"))
                .context("promotion benchmark failed")?;
            print!("{}", cluster_lab::promotion_bench::render(&result));
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_string_pretty(&result)?)
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
            if result.failed_trials > 0 || result.split_brain > 0 {
                bail!("{} failed trial(s), {} split-brain violation(s)", result.failed_trials, result.split_brain);
            }
        }
        Command::BenchScale {
            nodes,
            voters,
            packages,
            trials,
            rack,
            no_leader_trial,
            observe_ms,
            status_runs,
            idle_secs,
            per_call,
            raft,
            lease,
            quick,
            setup_only,
            report,
            binaries,
        } => {
            let (clusterd, clusterctl) = binaries.resolve()?;
            let mut options = if quick {
                scale_bench::ScaleBenchOptions::quick(&name, clusterd, clusterctl)
            } else {
                scale_bench::ScaleBenchOptions {
                    nodes,
                    voters: voters.unwrap_or(nodes.min(5)),
                    packages,
                    trials,
                    rack,
                    leader_trial: !no_leader_trial,
                    observe_interval: Duration::from_millis(observe_ms.max(1)),
                    status_runs,
                    idle_window: Duration::from_secs_f64(idle_secs),
                    apply_chunk: per_call.max(1),
                    ..scale_bench::ScaleBenchOptions::full(&name, clusterd, clusterctl)
                }
            };
            options.setup_only = setup_only;
            options.raft = raft.timing();
            options.lease = lease;
            if options.nodes == 0 || options.packages == 0 {
                bail!("bench-scale needs at least one node and one package");
            }
            if options.voters == 0 || options.voters > options.nodes {
                bail!("bench-scale needs between 1 and {} voters (--nodes), not {}", options.nodes, options.voters);
            }
            let result = scale_bench::run(&options, &mut |line| println!("{line}"))
                .with_context(|| format!("scale benchmark in lab {name} failed"))?;
            if !setup_only {
                println!("{}", scale_bench::render(&result));
            }
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_string_pretty(&result)?)
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
            if !result.failures.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::FenceAgent => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input).context("failed to read stdin")?;
            let arguments = fence::parse_arguments(&input);
            let default_lab = std::env::var("CLUSTERLAB_NAME").ok().or(Some(name));
            let (code, output) = fence::run(&arguments, default_lab.as_deref());
            print!("{output}");
            return Ok(ExitCode::from(code as u8));
        }
        Command::Supervise => watchdog::supervise(&name).context("supervisor failed")?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(lab: &Lab, json: bool) {
    let status = lab.status();
    if json {
        println!("{}", serde_json::to_string_pretty(&status).expect("status serializes"));
        return;
    }
    println!("lab {}  client {}", lab.name(), status["client"].as_str().unwrap_or("-"));
    for node in status["nodes"].as_array().into_iter().flatten() {
        println!(
            "  {:<4} {:<12} {:<8} {:<5} daemon {:<8} processes {}{}",
            node["name"].as_str().unwrap_or("?"),
            node["address"].as_str().unwrap_or("?"),
            node["role"].as_str().unwrap_or("?"),
            if node["powered"].as_bool() == Some(true) { "on" } else { "off" },
            node["daemon"].as_str().unwrap_or("?"),
            node["processes"],
            match (node["data_disk"].as_str(), node["disk"].as_str()) {
                (Some(device), Some(disk)) => format!("  disk {device} {disk}"),
                _ => String::new(),
            },
        );
    }
    if let Some(partition) = status["partition"].as_str() {
        println!("  partition: {partition}");
    }
    if let Some(lun) = status["lun"].as_str() {
        println!("  lun: {lun}");
    }
}

fn report_history(records: &[history::Record], end_ns: u64) -> ExitCode {
    for ((kind, resource), intervals) in history::intervals(records, end_ns) {
        for interval in intervals {
            println!(
                "{kind:?} {resource} on {}: {:.1} ms{}",
                interval.node,
                (interval.end_ns - interval.start_ns) as f64 / 1e6,
                if interval.open { " (still active)" } else { "" }
            );
        }
    }
    let report = history::check_split_brain(records, end_ns);
    for overlap in &report.uncertain {
        println!(
            "possible overlap of {} {} on {} and {} within one sample ({:.1} ms)",
            format!("{:?}", overlap.kind).to_lowercase(),
            overlap.resource,
            overlap.nodes.0,
            overlap.nodes.1,
            overlap.millis()
        );
    }
    if report.passed() {
        println!("split brain: none");
        ExitCode::SUCCESS
    } else {
        for overlap in &report.violations {
            println!(
                "SPLIT BRAIN: {:?} {} active on {} and {} for {:.1} ms (t={}..{} ns)",
                overlap.kind,
                overlap.resource,
                overlap.nodes.0,
                overlap.nodes.1,
                overlap.millis(),
                overlap.from_ns,
                overlap.to_ns
            );
        }
        ExitCode::FAILURE
    }
}

fn print_bench(report: &keepalived::BenchReport) {
    let show = |value: Option<f64>| value.map(|ms| format!("{ms:.0} ms")).unwrap_or_else(|| "-".into());
    println!(
        "{}: {} trials ({} failed): new owner median {} p99 {}; client reaches VIP median {} p99 {}",
        report.label,
        report.trials.len(),
        report.failed_trials,
        show(report.new_owner_median_ms),
        show(report.new_owner_p99_ms),
        show(report.client_median_ms),
        show(report.client_p99_ms),
    );
    println!("  split brain during kill trials: {}", report.trial_split_brain.len());
    for scenario in &report.scenarios {
        println!(
            "  {} of owner {}: VIP on two nodes for {:.0} ms ({} overlaps)",
            scenario.fault,
            scenario.owner,
            scenario.overlap_ms,
            scenario.overlaps.len()
        );
    }
}
