//! The promotion benchmark (issue 13): how long after its node dies a promotable package's primary is
//! replaced, against a plain package's failover in the same trial.
//!
//! ```text
//!   lab up (3 nodes, clusterd defaults, lease-only like bench-failover) ─▶ pkg apply:
//!     web: a VIP (192.0.2.100), failback manual — the plain failover
//!     db:  instances = "all", promotable: ocf:heartbeat:Stateful on every node, the primary holds 192.0.2.110
//!   trials: settle (one primary P, every instance running, web moved to P, the Raft leader elsewhere)
//!     ─▶ random phase ─▶ kill P ─▶ observer: web's VIP, the primary's VIP and Stateful's `master` on new
//!     nodes ─▶ power P on again
//! ```
//! Both packages lose their node at the same instant and both wait for the same lease expiry, so the
//! difference of the two times is what a promotion costs over a plain start: the promotion is proposed
//! after the release of the dead node's instance (one more Raft round), then Stateful's `promote`,
//! then the VIP's start (its duplicate probe, 50 ms, as for web).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::history::{check_split_brain, percentile, Kind};
use crate::lab::{Daemon, Lab, LabError, LabGuard, LabSpec};
use crate::observer::{Observer, ObserverSpec};
use crate::sys;

/// The plain package's VIP.
pub const PLAIN_VIP: &str = "192.0.2.100";
/// The promotable package's VIP (started on its primary only).
pub const PRIMARY_VIP: &str = "192.0.2.110";
/// `ocf:heartbeat:Stateful`'s state file for the resource `data`, in each node's `/run/resource-agents`.
pub const STATEFUL_STATE: &str = "/run/resource-agents/Stateful-data.state";

/// Settings of `bench-promotion`.
#[derive(Clone, Debug)]
pub struct PromotionBenchOptions {
    /// Lab name.
    pub lab: String,
    /// Kill trials.
    pub trials: usize,
    /// Observer period.
    pub interval: Duration,
    /// Seed of the random kill phases.
    pub seed: u64,
    /// clusterd binary.
    pub clusterd: PathBuf,
    /// clusterctl binary.
    pub clusterctl: PathBuf,
}

/// One kill of the primary's node.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PromotionTrial {
    /// The node killed (owner of web, primary of db).
    pub killed: String,
    /// The Raft leader during the trial (never the killed node).
    pub leader: String,
    /// Where web's VIP came up.
    pub plain_to: Option<String>,
    /// Where the primary's VIP came up.
    pub primary_to: Option<String>,
    /// Kill → web's VIP on its new owner.
    pub failover_ms: Option<f64>,
    /// Kill → Stateful `master` on the new primary.
    pub promoted_ms: Option<f64>,
    /// Kill → the primary's VIP on the new primary.
    pub promotion_ms: Option<f64>,
}

/// Everything `bench-promotion` measured.
#[derive(Clone, Debug, Serialize)]
pub struct PromotionBenchReport {
    /// Seed.
    pub seed: u64,
    /// The trials.
    pub trials: Vec<PromotionTrial>,
    /// Trials that did not settle or measured nothing.
    pub failed_trials: usize,
    /// Split-brain violations the observer saw (VIPs, Stateful's `master`).
    pub split_brain: usize,
}

fn package_files() -> [(&'static str, String); 2] {
    let vip = |address: &str| {
        format!("[[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"{address}/24\"\ninterface = \"eth0\"\n")
    };
    [
        (
            "web.toml",
            format!("name = \"web\"\nnodes = [\"n1\", \"n2\", \"n3\"]\nfailback = \"manual\"\n\n{}", vip(PLAIN_VIP)),
        ),
        (
            "db.toml",
            format!(
                "name = \"db\"\nnodes = [\"n1\", \"n2\", \"n3\"]\ninstances = \"all\"\n\
                 promotable = {{ primaries = 1, primary_only = [\"vip\"] }}\n\n\
                 [[resource]]\nname = \"data\"\ntype = \"ocf\"\nagent = \"heartbeat:Stateful\"\n\n{}",
                vip(PRIMARY_VIP)
            ),
        ),
    ]
}

fn master() -> String {
    format!("{STATEFUL_STATE}=master")
}

fn powered(lab: &Lab) -> Vec<String> {
    lab.state().nodes.iter().filter(|node| node.powered).map(|node| node.name.clone()).collect()
}

/// Instances of `package` by key, as `via` sees them.
fn instances(lab: &Lab, via: &str, package: &str) -> BTreeMap<String, serde_json::Value> {
    let text = lab.clusterctl(via, &["pkg", "status", package, "--output", "json"]).unwrap_or_default();
    let list = match serde_json::from_str(&text).unwrap_or(serde_json::Value::Null) {
        serde_json::Value::Array(list) => list,
        value @ serde_json::Value::Object(_) => vec![value],
        _ => Vec::new(),
    };
    list.into_iter().filter_map(|item| Some((item["key"].as_str()?.to_owned(), item))).collect()
}

/// The node of db's one running primary, once every instance runs and the observer agrees.
fn settled_primary(lab: &Lab, observer: &Observer, via: &str) -> Option<String> {
    let db = instances(lab, via, "db");
    let running = db.values().filter(|instance| instance["phase"] == "running").count();
    let primaries: Vec<&serde_json::Value> =
        db.values().filter(|instance| instance["role"] == "primary" && instance["phase"] == "running").collect();
    let [primary] = primaries.as_slice() else { return None };
    let node = primary["owner"].as_str()?.to_owned();
    let seen = observer.holders(Kind::Vip, PRIMARY_VIP) == [node.clone()]
        && observer.holders(Kind::File, &master()) == [node.clone()];
    (running == 3 && seen).then_some(node)
}

fn wait_until<T>(timeout: Duration, mut found: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(value) = found() {
            return Some(value);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Settles a trial: one primary P (every instance running), web running on P, the leader elsewhere and
/// every lease alive. Returns (P, leader).
fn settle(lab: &Lab, observer: &Observer, log: &mut dyn FnMut(&str)) -> Result<(String, String), LabError> {
    let timeout = Duration::from_secs(60);
    let via = || powered(lab).into_iter().last().expect("a powered node");
    let primary = wait_until(timeout, || settled_primary(lab, observer, &via()))
        .ok_or_else(|| LabError::Timeout("one primary of db with every instance running".into()))?;
    let web = instances(lab, &via(), "web");
    if web.get("web").and_then(|web| web["owner"].as_str()) != Some(primary.as_str()) {
        lab.clusterctl(&via(), &["pkg", "move", "web", "--to", &primary])?;
    }
    wait_until(timeout, || {
        let web = instances(lab, &via(), "web");
        let running = web.get("web").is_some_and(|web| web["owner"] == primary.as_str() && web["phase"] == "running");
        (running && observer.holders(Kind::Vip, PLAIN_VIP) == [primary.clone()]).then_some(())
    })
    .ok_or_else(|| LabError::Timeout(format!("web running on {primary}")))?;
    let leader = lab.leader().unwrap_or_default();
    let leader = if leader == primary || leader.is_empty() {
        let target = powered(lab).into_iter().rfind(|node| *node != primary).expect("another node");
        lab.clusterctl(&target, &["cluster", "transfer-leader", &target])?;
        // A new leader waits one lease before it may reassign: start the trial after that.
        std::thread::sleep(Duration::from_millis(1_500));
        log(&format!("leadership moved to {target}"));
        target
    } else {
        leader
    };
    let alive = wait_until(timeout, || {
        let status = lab.cluster_status(&leader).ok()?;
        let nodes = status["nodes"].as_array()?;
        (nodes.iter().all(|node| node["lease"] == "alive") && status["leader"] == leader.as_str()).then_some(())
    });
    alive.ok_or_else(|| LabError::Timeout("every lease alive under the leader".into()))?;
    for package in ["web", "db"] {
        lab.clusterctl(&leader, &["pkg", "cleanup", package])?;
    }
    if settled_primary(lab, observer, &leader).as_deref() != Some(primary.as_str()) {
        return Err(LabError::Timeout(format!("db's primary to stay on {primary}")));
    }
    Ok((primary, leader))
}

fn first_after(observer: &Observer, kind: Kind, resource: &str, node: &str, after_ns: u64) -> Option<u64> {
    observer
        .records()
        .iter()
        .find(|record| {
            record.kind == kind
                && record.resource == resource
                && record.active
                && record.node == node
                && record.t_ns > after_ns
        })
        .map(|record| record.t_ns)
}

/// Runs the benchmark in lab `options.lab` (brought down at the end).
pub fn run(options: &PromotionBenchOptions, log: &mut dyn FnMut(&str)) -> Result<PromotionBenchReport, LabError> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let _guard = LabGuard::new(&options.lab);
    let mut spec = LabSpec::bare(&options.lab, 3);
    // No watchdog, no fence, as bench-failover: the same reassignment timing as with a watchdog.
    spec.daemon = Daemon::Clusterd {
        clusterd: options.clusterd.clone(),
        clusterctl: options.clusterctl.clone(),
        watchdog: false,
    };
    let mut lab = Lab::up(&spec)?;
    let folder = lab.paths().run_dir().join("packages");
    std::fs::create_dir_all(&folder).map_err(|error| sys::io_error("failed to create", &folder, error))?;
    for (file, text) in package_files() {
        let path = folder.join(file);
        std::fs::write(&path, text).map_err(|error| sys::io_error("failed to write", &path, error))?;
    }
    lab.clusterctl("n1", &["pkg", "apply", &folder.display().to_string()])?;
    let observer = Observer::start(
        &lab,
        ObserverSpec {
            vips: vec![PLAIN_VIP.parse().expect("address"), PRIMARY_VIP.parse().expect("address")],
            files: vec![(PathBuf::from(STATEFUL_STATE), "master".into())],
            interval: options.interval,
            ..ObserverSpec::default()
        },
        None,
    )
    .map_err(|error| LabError::Daemon { node: "observer".into(), reason: error.to_string() })?;
    let mut trials = Vec::new();
    let mut failed_trials = 0;
    for trial in 0..options.trials {
        let (primary, leader) = match settle(&lab, &observer, log) {
            Ok(settled) => settled,
            Err(error) => {
                failed_trials += 1;
                log(&format!("trial {}/{}: not started: {error}", trial + 1, options.trials));
                continue;
            }
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1_000)));
        let fault_ns = observer.mark(&primary, "kill");
        lab.kill(&primary)?;
        let moved = observer.wait_for(Duration::from_secs(30), |observer| {
            let plain = observer.holders(Kind::Vip, PLAIN_VIP);
            let promoted = observer.holders(Kind::Vip, PRIMARY_VIP);
            plain.len() == 1 && plain[0] != primary && promoted.len() == 1 && promoted[0] != primary
        });
        let plain_to = observer.holders(Kind::Vip, PLAIN_VIP).first().cloned();
        let primary_to = observer.holders(Kind::Vip, PRIMARY_VIP).first().cloned();
        let since = |kind: Kind, resource: &str, node: &Option<String>| {
            node.as_ref()
                .and_then(|node| first_after(&observer, kind, resource, node, fault_ns))
                .map(|t_ns| (t_ns as f64 - fault_ns as f64) / 1e6)
        };
        let result = PromotionTrial {
            killed: primary.clone(),
            leader,
            failover_ms: since(Kind::Vip, PLAIN_VIP, &plain_to),
            promoted_ms: since(Kind::File, &master(), &primary_to),
            promotion_ms: since(Kind::Vip, PRIMARY_VIP, &primary_to),
            plain_to,
            primary_to,
        };
        if !moved || result.failover_ms.is_none() || result.promotion_ms.is_none() {
            failed_trials += 1;
        }
        let show = |ms: Option<f64>| ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0} ms"));
        log(&format!(
            "trial {}/{}: killed {} (leader {}): web on {} after {}, db promoted on {} after {}, its VIP after {}",
            trial + 1,
            options.trials,
            result.killed,
            result.leader,
            result.plain_to.as_deref().unwrap_or("nobody"),
            show(result.failover_ms),
            result.primary_to.as_deref().unwrap_or("nobody"),
            show(result.promoted_ms),
            show(result.promotion_ms),
        ));
        trials.push(result);
        std::thread::sleep(Duration::from_millis(300));
        lab.start(&primary)?;
    }
    let (records, end_ns) = observer.stop();
    let split_brain = check_split_brain(&records, end_ns).violations.len();
    if let Err(error) = Lab::down(&options.lab) {
        log(&format!("teardown of {}: {error}", options.lab));
    }
    Ok(PromotionBenchReport { seed: options.seed, trials, failed_trials, split_brain })
}

/// The report as a table: median, p99 and maximum of each time, and of the difference per trial.
pub fn render(report: &PromotionBenchReport) -> String {
    let figure = |values: Vec<f64>| {
        let median = percentile(&values, 50.0).map_or("-".into(), |v| format!("{v:.0} ms"));
        let p99 = percentile(&values, 99.0).map_or("-".into(), |v| format!("{v:.0} ms"));
        let max = values.iter().copied().fold(None, |max: Option<f64>, v| Some(max.map_or(v, |m| m.max(v))));
        format!(
            "n={:>3}  median {median:>8}  p99 {p99:>8}  max {:>8}",
            values.len(),
            max.map_or("-".into(), |v| format!("{v:.0} ms"))
        )
    };
    let of = |pick: fn(&PromotionTrial) -> Option<f64>| report.trials.iter().filter_map(pick).collect::<Vec<f64>>();
    let difference: Vec<f64> = report.trials.iter().filter_map(|t| Some(t.promotion_ms? - t.failover_ms?)).collect();
    format!(
        "plain failover (kill -> web's VIP):          {}\n\
         promotion (kill -> Stateful promoted):       {}\n\
         promotion (kill -> the primary's VIP):       {}\n\
         promotion - failover, same trial (VIPs):     {}\n\
         failed trials {}, split-brain violations {}\n",
        figure(of(|t| t.failover_ms)),
        figure(of(|t| t.promoted_ms)),
        figure(of(|t| t.promotion_ms)),
        figure(difference),
        report.failed_trials,
        report.split_brain
    )
}
