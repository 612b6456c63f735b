//! keepalived in the lab (VRRP nodes on the lab bridge) and the failover benchmark, generic over what owns the
//! VIP ([`VipOwner`]), measured with the same observer and checkers as clusterd.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::history::{check_split_brain, failover_timing, percentile, FailoverTiming, Kind, Overlap, Record};
use crate::lab::{Daemon, KeepalivedConfig, Lab, LabError, LabGuard, LabSpec};
use crate::observer::{Observer, ObserverSpec};
use crate::partition::Partition;

/// keepalived.conf for node `node` (index 0 has the highest priority).
pub fn config_text(node: &str, index: usize, config: &KeepalivedConfig) -> String {
    let priority = 200usize.saturating_sub(index * 10).max(1);
    format!(
        "global_defs {{\n  router_id {node}\n  vrrp_version {version}\n  script_user root\n}}\n\nvrrp_instance lab {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int {advert}\n  virtual_ipaddress {{\n    {vip}/24 dev eth0\n  }}\n}}\n",
        version = config.vrrp_version,
        advert = config.advert_int,
        vip = config.vip,
    )
}

/// Something that keeps a VIP on one lab node: keepalived now, a clusterd package once the failover engine
/// exists. The benchmark only needs to know how to build the lab and which address to watch.
pub trait VipOwner {
    /// A short label for reports (`keepalived advert_int 1`).
    fn label(&self) -> String;
    /// What each lab node runs.
    fn daemon(&self) -> Daemon;
    /// The address to watch.
    fn vip(&self) -> Ipv4Addr;
    /// Anything to do once the lab is up (e.g. `clusterctl pkg apply`).
    fn prepare(&self, _lab: &mut Lab) -> Result<(), LabError> {
        Ok(())
    }
}

/// keepalived as a [`VipOwner`].
#[derive(Clone, Debug)]
pub struct Keepalived(pub KeepalivedConfig);

impl VipOwner for Keepalived {
    fn label(&self) -> String {
        format!("keepalived advert_int {} (VRRPv{})", self.0.advert_int, self.0.vrrp_version)
    }

    fn daemon(&self) -> Daemon {
        Daemon::Keepalived(self.0.clone())
    }

    fn vip(&self) -> Ipv4Addr {
        self.0.vip
    }
}

/// Settings of a failover benchmark.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Lab name.
    pub lab: String,
    /// Nodes (3).
    pub nodes: usize,
    /// Failover trials after `kill` of the owner.
    pub trials: usize,
    /// Observer sampling period.
    pub interval: Duration,
    /// How long each split-brain scenario (partition, kill-daemon) is held.
    pub split_hold: Duration,
    /// Where to write the observer's history (JSON lines), if anywhere.
    pub history: Option<PathBuf>,
}

/// A split-brain scenario's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct SplitBrainScenario {
    /// `partition` or `kill-daemon`.
    pub fault: String,
    /// The owner the fault hit.
    pub owner: String,
    /// Certain overlaps (two nodes holding the VIP).
    pub overlaps: Vec<Overlap>,
    /// Total certain overlap, ms.
    pub overlap_ms: f64,
}

/// Results of one benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// What was measured.
    pub label: String,
    /// Per trial phase timings.
    pub trials: Vec<FailoverTiming>,
    /// Median fault → new owner has the VIP (ms).
    pub new_owner_median_ms: Option<f64>,
    /// p99 of the same.
    pub new_owner_p99_ms: Option<f64>,
    /// Median fault → client reaches the VIP on the new owner (ms).
    pub client_median_ms: Option<f64>,
    /// p99 of the same.
    pub client_p99_ms: Option<f64>,
    /// Trials where the VIP did not come back.
    pub failed_trials: usize,
    /// Split brain during the failover trials (expected none).
    pub trial_split_brain: Vec<Overlap>,
    /// Split-brain scenarios.
    pub scenarios: Vec<SplitBrainScenario>,
}

fn wait_stable(observer: &Observer, vip: &str, probe: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut candidate: Option<(String, Instant)> = None;
    while Instant::now() < deadline {
        let holders = observer.holders(Kind::Vip, vip);
        let reached = !observer.holders(Kind::Client, probe).is_empty();
        if holders.len() == 1 && reached {
            match &candidate {
                Some((owner, since)) if *owner == holders[0] => {
                    if since.elapsed() > Duration::from_millis(1500) {
                        return Some(owner.clone());
                    }
                }
                _ => candidate = Some((holders[0].clone(), Instant::now())),
            }
        } else {
            candidate = None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Brings up a lab whose nodes run `owner`, kills the VIP's owner `trials` times (powering it on again after
/// each failover), then holds a partition and a kill-daemon of the owner, and reports timings and split brain.
pub fn run_failover_bench(
    owner: &dyn VipOwner,
    options: &BenchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<BenchReport, LabError> {
    let _guard = LabGuard::new(&options.lab);
    let mut spec = LabSpec::bare(&options.lab, options.nodes);
    spec.daemon = owner.daemon();
    let mut lab = Lab::up(&spec)?;
    owner.prepare(&mut lab)?;
    let vip = owner.vip();
    let vip_text = vip.to_string();
    let probe = SocketAddr::from((vip, 80));
    let probe_text = probe.to_string();
    let observer = Observer::start(
        &lab,
        ObserverSpec {
            vips: vec![vip.into()],
            probes: vec![probe],
            interval: options.interval,
            files: Vec::new(),
            ..ObserverSpec::default()
        },
        options.history.as_deref(),
    )
    .map_err(|error| LabError::Daemon { node: "observer".into(), reason: error.to_string() })?;
    let mut faults = Vec::new();
    let mut failed_trials = 0;
    let mut jitter = rand::rngs::StdRng::seed_from_u64(options.trials as u64);
    for trial in 0..options.trials {
        let Some(old) = wait_stable(&observer, &vip_text, &probe_text, Duration::from_secs(60)) else {
            return Err(LabError::Timeout(format!("one stable owner of {vip_text}")));
        };
        // A random phase relative to the owner's timers (adverts, heartbeats): waiting for stability alone
        // would always kill at the same phase and bias the figures.
        std::thread::sleep(Duration::from_millis(jitter.random_range(0..1_000)));
        let fault_ns = observer.mark(&old, "kill");
        lab.kill(&old)?;
        let moved = observer.wait_for(Duration::from_secs(30), |observer| {
            let holders = observer.holders(Kind::Vip, &vip_text);
            holders.len() == 1 && holders[0] != old && !observer.holders(Kind::Client, &probe_text).is_empty()
        });
        if !moved {
            failed_trials += 1;
        }
        // Let the client probe settle, then power the old owner on again.
        std::thread::sleep(Duration::from_millis(300));
        lab.start(&old)?;
        faults.push(fault_ns);
        log(&format!("trial {}/{}: killed {old}", trial + 1, options.trials));
    }
    let trials_end_ns = crate::sys::now_ns();
    let mut scenarios = Vec::new();
    for fault in ["partition", "kill-daemon"] {
        let Some(old) = wait_stable(&observer, &vip_text, &probe_text, Duration::from_secs(60)) else {
            return Err(LabError::Timeout(format!("one stable owner of {vip_text}")));
        };
        let start_ns = observer.mark(&old, fault);
        if fault == "partition" {
            let others: Vec<String> = lab.node_names().into_iter().filter(|node| *node != old).collect();
            let partition: Partition = format!("{old} / {}", others.join(",")).parse().expect("a valid partition");
            lab.partition(&partition)?;
        } else {
            lab.kill_daemon(&old)?;
        }
        std::thread::sleep(options.split_hold);
        let end_ns = observer.mark(&old, "recover");
        if fault == "partition" {
            lab.heal()?;
        } else {
            lab.start_daemon(&old)?;
        }
        let window: Vec<Record> = observer
            .records()
            .into_iter()
            .filter(|record| record.t_ns >= start_ns && record.t_ns <= end_ns)
            .chain(seed_records(&observer, start_ns))
            .collect();
        let report = check_split_brain(&window, end_ns);
        let overlap_ms = report.violations.iter().map(Overlap::millis).fold(0.0, |total, ms| total + ms);
        log(&format!("{fault} of {old}: split brain for {overlap_ms:.0} ms"));
        scenarios.push(SplitBrainScenario {
            fault: fault.to_string(),
            owner: old,
            overlaps: report.violations,
            overlap_ms,
        });
    }
    let (records, end_ns) = observer.stop();
    let trial_records: Vec<Record> = records.iter().filter(|record| record.t_ns <= trials_end_ns).cloned().collect();
    let trial_split_brain = check_split_brain(&trial_records, trials_end_ns).violations;
    let timings: Vec<FailoverTiming> = faults
        .iter()
        .map(|fault_ns| failover_timing(&records, end_ns, Kind::Vip, &vip_text, Some(&probe_text), *fault_ns))
        .collect();
    let new_owner: Vec<f64> = timings.iter().filter_map(|timing| timing.new_started_ms).collect();
    let client: Vec<f64> = timings.iter().filter_map(|timing| timing.client_reached_ms).collect();
    Ok(BenchReport {
        label: owner.label(),
        new_owner_median_ms: percentile(&new_owner, 50.0),
        new_owner_p99_ms: percentile(&new_owner, 99.0),
        client_median_ms: percentile(&client, 50.0),
        client_p99_ms: percentile(&client, 99.0),
        failed_trials,
        trials: timings,
        trial_split_brain,
        scenarios,
    })
}

/// Records that say who held what just before `t_ns` (so a window of the history starts from the right state).
fn seed_records(observer: &Observer, t_ns: u64) -> Vec<Record> {
    let mut latest: std::collections::BTreeMap<(Kind, String, String), Record> = Default::default();
    for record in observer.records().into_iter().filter(|record| record.t_ns < t_ns) {
        latest.insert((record.kind, record.resource.clone(), record.node.clone()), record);
    }
    latest
        .into_values()
        .filter(|record| record.active && record.kind != Kind::Fault)
        .map(|record| Record { t_ns, prev_t_ns: t_ns, ..record })
        .collect()
}
