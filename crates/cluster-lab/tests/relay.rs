//! Root lab test of relayed lease renewals (issue 14, item 4), watched from outside by the observer:
//! learners renew through a voter that does not lead, and a relay that stops answering (cut off
//! from its learner, or dead) stops no package: its learners renew with the leader directly.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster_lab::history::{Kind, Record};
use cluster_lab::lab::{Daemon, Lab, LabGuard, LabSpec};
use cluster_lab::observer::{Observer, ObserverSpec};
use cluster_lab::partition::Partition;
use common::package_lab::now_ns;
use common::{lab_name, require_root};
use serde_json::Value;

/// The voter that leads Raft and is asked: never faulted here.
const LEADER: &str = "n1";
/// Learners, each the preferred node of one package (process `relay-NODE`).
const LEARNERS: [&str; 2] = ["n4", "n5"];

struct RelayLab {
    name: String,
    lab: Lab,
    started: Instant,
    observer: Option<Observer>,
    _guard: LabGuard,
}

fn process_name(node: &str) -> String {
    format!("relay-{node}")
}

impl RelayLab {
    /// Three voters and two learners, the leadership on [`LEADER`], one package per learner running.
    fn new(tag: &str) -> RelayLab {
        let started = Instant::now();
        let (clusterd, clusterctl) = common::clusterd_binaries();
        let name = lab_name(tag);
        let guard = LabGuard::new(&name);
        let lab = Lab::up(&LabSpec {
            daemon: Daemon::Clusterd { clusterd, clusterctl, watchdog: false },
            tool: Some(common::clusterlab()),
            voters: 3,
            learners: 2,
            ..LabSpec::bare(&name, 3)
        })
        .unwrap_or_else(|error| panic!("lab {name} with clusterd: {error}"));
        let mut fixture = RelayLab { name, lab, started, observer: None, _guard: guard };
        fixture.lead_from(LEADER);
        let folder = fixture.lab.paths().run_dir().join("packages");
        std::fs::create_dir_all(&folder).unwrap();
        let sleep = which("sleep");
        for (index, node) in LEARNERS.iter().enumerate() {
            // A copy of sleep(1) under the package's own name: the observer tells them apart by `comm`.
            let binary = fixture.lab.paths().run_dir().join(process_name(node));
            std::fs::copy(&sleep, &binary).unwrap();
            let other = LEARNERS[1 - index];
            let package = format!(
                "name = \"p{node}\"\nnodes = [\"{node}\", \"{other}\"]\n\n[[resource]]\nname = \"server\"\ntype = \
                 \"process\"\ncommand = [\"{}\", \"1000000\"]\n",
                binary.display()
            );
            std::fs::write(folder.join(format!("p{node}.toml")), package).unwrap();
        }
        fixture.ctl(&["pkg", "apply", &folder.display().to_string()]);
        for node in LEARNERS {
            fixture.ctl(&["pkg", "run", &format!("p{node}")]);
        }
        let spec = ObserverSpec {
            processes: LEARNERS.iter().map(|node| process_name(node)).collect(),
            interval: Duration::from_millis(10),
            ..ObserverSpec::default()
        };
        fixture.observer = Some(Observer::start(&fixture.lab, spec, None).unwrap());
        for node in LEARNERS {
            fixture.wait_running(node);
        }
        eprintln!("[{}] lab up, packages running after {:?}", fixture.name, fixture.started.elapsed());
        fixture
    }

    fn lead_from(&self, node: &str) {
        if let Err(error) = common::transfer_leadership(&self.lab, node, node) {
            self.dump();
            panic!("[{}] leadership never moved to {node}: {error}", self.name)
        }
    }

    fn ctl(&self, args: &[&str]) -> String {
        self.lab.clusterctl(LEADER, args).unwrap_or_else(|error| {
            self.dump();
            panic!("[{}] clusterctl {args:?}: {error}", self.name)
        })
    }

    /// (owner, phase, epoch) of `node`'s package.
    fn package(&self, node: &str) -> Option<(String, String, u64)> {
        let text = self.lab.clusterctl(LEADER, &["pkg", "status", &format!("p{node}"), "--output", "json"]).ok()?;
        let package: Value = serde_json::from_str(&text).ok()?;
        Some((package["owner"].as_str()?.to_owned(), package["phase"].as_str()?.to_owned(), package["epoch"].as_u64()?))
    }

    fn wait_running(&self, node: &str) -> (String, String, u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(package) = self.package(node).filter(|(owner, phase, _)| owner == node && phase == "running") {
                return package;
            }
            if Instant::now() > deadline {
                self.dump();
                panic!("[{}] package p{node} not running on {node}: {:?}", self.name, self.package(node));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pids of `node`'s package process in its cgroup (and below).
    fn pids(&self, node: &str) -> Vec<i32> {
        common::pids_named(&self.lab, node, &process_name(node))
    }

    fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.lab.paths().node_run_dir(node).join("clusterd.log")).unwrap_or_default()
    }

    /// The voter that relays `learner`'s renewals now, from the learner's log.
    fn relay_of(&self, learner: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log(learner);
            let relay = log
                .lines()
                .rev()
                .find(|line| line.contains("lease renewals relayed by a voter"))
                .and_then(|line| line.split_whitespace().find_map(|word| word.strip_prefix("relay=")))
                .map(str::to_owned);
            if let Some(relay) = relay {
                return relay;
            }
            if Instant::now() > deadline {
                self.dump();
                panic!("[{}] {learner} never renewed through a voter", self.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn dump(&self) {
        let events = self.lab.clusterctl(LEADER, &["events"]).unwrap_or_default();
        common::dump_logs(&self.lab, &self.name, &events, &["n1", "n2", "n3", "n4", "n5"]);
    }
}

fn which(program: &str) -> PathBuf {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("{program} not found"))
}

/// Samples where the observer did not see `node`'s package process on `node` after `after_ns`.
fn process_gaps(records: &[Record], node: &str, after_ns: u64) -> usize {
    let name = process_name(node);
    records
        .iter()
        .filter(|record| {
            record.kind == Kind::Process
                && record.resource == name
                && record.node == node
                && !record.active
                && record.t_ns > after_ns
        })
        .count()
}

#[test]
fn a_relay_that_stops_answering_stops_no_package_of_its_learners() {
    if !require_root("a_relay_that_stops_answering_stops_no_package_of_its_learners") {
        return;
    }
    let mut fixture = RelayLab::new("relay");
    let relays: Vec<String> = LEARNERS.iter().map(|learner| fixture.relay_of(learner)).collect();
    eprintln!("[{}] relays: {LEARNERS:?} -> {relays:?}", fixture.name);
    for relay in &relays {
        assert!(["n2", "n3"].contains(&relay.as_str()), "a learner renews through a voter that does not lead: {relay}");
    }
    let before: Vec<_> = LEARNERS.iter().map(|node| (fixture.package(node), fixture.pids(node))).collect();
    for (node, (_, pids)) in LEARNERS.iter().zip(&before) {
        assert_eq!(pids.len(), 1, "one process of p{node} on {node}: {pids:?}");
    }
    let first_fault_ns = now_ns();

    // 1. The first learner cut off from its relay (both ways) for 3 s; everything else reaches everything.
    let (learner, relay) = (LEARNERS[0], relays[0].clone());
    let cut: Partition = format!("{learner} / {relay}").parse().unwrap();
    fixture.lab.partition(&cut).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let log = fixture.log(learner);
    fixture.lab.heal().unwrap();
    assert!(
        log.contains("lease renewal through a voter failed"),
        "[{}] {learner} did not notice that its relay {relay} stopped answering",
        fixture.name
    );

    // 2. The second learner's relay powered off for 3 s (two voters of three still lead).
    let (learner, relay) = (LEARNERS[1], relays[1].clone());
    fixture.lab.kill(&relay).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let log = fixture.log(learner);
    fixture.lab.start(&relay).unwrap();
    assert!(
        log.contains("lease renewal through a voter failed"),
        "[{}] {learner} did not notice that its relay {relay} died",
        fixture.name
    );

    // Neither package moved, restarted or changed epoch.
    let after: Vec<_> = LEARNERS.iter().map(|node| (fixture.package(node), fixture.pids(node))).collect();
    if after != before {
        fixture.dump();
    }
    assert_eq!(after, before, "packages (owner, phase, epoch) and their pids before and after the faults");
    let (records, _, report) =
        common::finish_observer(fixture.observer.take().expect("observer running"), &fixture.name, fixture.started);
    assert!(report.violations.is_empty(), "split brain: {:?}", report.violations);
    for node in LEARNERS {
        assert_eq!(process_gaps(&records, node, first_fault_ns), 0, "the observer saw p{node}'s process leave {node}");
    }
}
