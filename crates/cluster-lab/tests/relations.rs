//! Root lab tests of package relations (issue 13), watched from outside by the observer: a same-node
//! pair whose node dies moves as a pair (the dependent starts after what it needs, on the same node),
//! and a promotable package of `ocf:heartbeat:Stateful` (Debian's resource-agents, not ours) whose
//! primary holds a VIP: when the primary's node dies a replica is promoted and the VIP follows; when the
//! primary is cut off it demotes before another is promoted. "Never two primaries" is the observer's
//! split-brain checker applied to the VIP and to Stateful's state file holding `master` in each node's
//! own `/run/resource-agents`.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster_lab::history::{self, Interval, Kind, Record};
use cluster_lab::lab::{Daemon, Lab, LabGuard, LabSpec};
use cluster_lab::observer::{Observer, ObserverSpec};
use common::package_lab::now_ns;
use common::{lab_name, require_root};
use serde_json::Value;

/// The node the tests ask first and fault never: it leads Raft, so the faults hit owners only.
const VIA: &str = "n3";
const DB_VIP: &str = "192.0.2.101";
const APP_VIP: &str = "192.0.2.102";
const PRIMARY_VIP: &str = "192.0.2.110";
/// `ocf:heartbeat:Stateful`'s state file for a resource named `data` (`HA_RSCTMP`), in each node's own
/// `/run/resource-agents`.
const STATEFUL_STATE: &str = "/run/resource-agents/Stateful-data.state";

fn master() -> String {
    format!("{STATEFUL_STATE}=master")
}

struct RelationsLab {
    name: String,
    lab: Lab,
    /// The node asked (and leading Raft): never the one a test faults.
    via: String,
    started: Instant,
    observer: Option<Observer>,
    /// Last: the lab goes down after the observer stopped, also when the test panics.
    _guard: LabGuard,
}

impl RelationsLab {
    /// A 3-node lab with watchdogs, the leadership on `VIA`, `packages` applied together, observed.
    fn new(tag: &str, packages: &[(&str, String)], spec: ObserverSpec) -> RelationsLab {
        let started = Instant::now();
        let (clusterd, clusterctl) = common::clusterd_binaries();
        let name = lab_name(tag);
        let guard = LabGuard::new(&name);
        let lab = Lab::up(&LabSpec {
            daemon: Daemon::Clusterd { clusterd, clusterctl, watchdog: true },
            watchdog: true,
            tool: Some(common::clusterlab()),
            reboot_delay: Duration::from_secs(2),
            ..LabSpec::bare(&name, 3)
        })
        .unwrap_or_else(|error| panic!("lab {name} with clusterd: {error}"));
        let mut fixture = RelationsLab { name, lab, via: VIA.into(), started, observer: None, _guard: guard };
        fixture.lead_from(VIA);
        let folder = fixture.lab.paths().run_dir().join("packages");
        std::fs::create_dir_all(&folder).unwrap();
        for (file, text) in packages {
            std::fs::write(folder.join(file), text).unwrap();
        }
        fixture.ctl(&["pkg", "apply", &folder.display().to_string()]);
        fixture.observer = Some(Observer::start(&fixture.lab, spec, None).unwrap());
        eprintln!("[{}] lab up and packages applied after {:?}", fixture.name, fixture.started.elapsed());
        fixture
    }

    /// Moves the Raft leadership to `node` and asks it from now on.
    fn lead_from(&mut self, node: &str) {
        let mut last = None;
        for _ in 0..5 {
            match self.lab.clusterctl(node, &["cluster", "transfer-leader", node]) {
                Ok(_) => {
                    self.via = node.to_owned();
                    return;
                }
                Err(error) => last = Some(error),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        self.dump();
        panic!("[{}] leadership never moved to {node}: {last:?}", self.name)
    }

    fn ctl(&self, args: &[&str]) -> String {
        self.lab.clusterctl(&self.via, args).unwrap_or_else(|error| {
            self.dump();
            panic!("[{}] clusterctl {args:?}: {error}", self.name)
        })
    }

    /// Every instance of `package` by key (`pkg status --output json`); empty while it does not answer.
    fn instances(&self, package: &str) -> BTreeMap<String, Value> {
        let text = self.lab.clusterctl(&self.via, &["pkg", "status", package, "--output", "json"]).unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let list = match value {
            Value::Array(list) => list,
            Value::Object(_) => vec![value],
            _ => Vec::new(),
        };
        list.into_iter().filter_map(|item| Some((item["key"].as_str()?.to_owned(), item))).collect()
    }

    fn observer(&self) -> &Observer {
        self.observer.as_ref().expect("observer running")
    }

    /// Waits until the observer sees `resource` of `kind` on exactly `nodes`.
    fn wait_seen(&self, kind: Kind, resource: &str, nodes: &[&str], timeout: Duration) {
        let seen = self.observer().wait_for(timeout, |observer| observer.holders(kind, resource) == nodes);
        if !seen {
            self.dump();
            panic!(
                "[{}] {resource} ({kind:?}) on {:?} after {timeout:?}, expected {nodes:?}",
                self.name,
                self.observer().holders(kind, resource)
            );
        }
    }

    /// Waits until `condition` holds for the instances of `package`; returns them.
    fn wait_instances(
        &self,
        package: &str,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&BTreeMap<String, Value>) -> bool,
    ) -> BTreeMap<String, Value> {
        let deadline = Instant::now() + timeout;
        let mut last = BTreeMap::new();
        while Instant::now() < deadline {
            last = self.instances(package);
            if condition(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.dump();
        panic!("[{}] timed out after {timeout:?} waiting for {what}; last: {last:#?}", self.name);
    }

    fn dump(&self) {
        let events =
            self.lab.clusterctl(&self.via, &["events"]).unwrap_or_else(|error| format!("(no events: {error})"));
        common::dump_logs(&self.lab, &self.name, &events, &["n1", "n2", "n3"]);
    }

    /// Stops the observer; requires the split-brain checker to pass (VIPs, and Stateful's `master`).
    fn finish_without_split_brain(&mut self) -> (Vec<Record>, u64) {
        let observer = self.observer.take().expect("observer running");
        let (records, end_ns, report) = common::finish_observer(observer, &self.name, self.started);
        if !report.passed() {
            self.dump();
        }
        assert!(report.passed(), "[{}] split brain: {:#?}", self.name, report.violations);
        (records, end_ns)
    }
}

fn vip(name: &str, address: &str) -> String {
    format!("[[resource]]\nname = \"{name}\"\ntype = \"ip\"\naddress = \"{address}/24\"\ninterface = \"eth0\"\n")
}

/// The first sample at or after `after_ns` that saw `(kind, resource)` active on `node`.
fn first_seen(records: &[Record], kind: Kind, resource: &str, node: &str, after_ns: u64) -> Option<u64> {
    records
        .iter()
        .find(|r| r.kind == kind && r.resource == resource && r.node == node && r.active && r.t_ns >= after_ns)
        .map(|r| r.t_ns)
}

/// Every interval of `dependent` on a node lies within an interval of `dependency` on the same node,
/// as the observer saw them: it started after it and stopped no later.
fn nested_in(records: &[Record], end_ns: u64, dependent: &str, dependency: &str) -> Result<usize, String> {
    let intervals = history::intervals(records, end_ns);
    let of = |resource: &str| intervals.get(&(Kind::Vip, resource.to_owned())).cloned().unwrap_or_default();
    let (dependents, dependencies): (Vec<Interval>, Vec<Interval>) = (of(dependent), of(dependency));
    for interval in &dependents {
        let covered = dependencies.iter().any(|outer| {
            outer.node == interval.node && outer.start_ns <= interval.start_ns && outer.end_ns >= interval.end_ns
        });
        if !covered {
            return Err(format!(
                "{dependent} active on {} from {} to {} ns outside every interval of {dependency} there: {dependencies:?}",
                interval.node, interval.start_ns, interval.end_ns
            ));
        }
    }
    Ok(dependents.len())
}

/// Kill the node of a same-node pair: both move to the next node, the dependent starts after what it
/// depends on there, and never runs anywhere without it (the observer's history).
#[test]
fn killing_the_node_of_a_same_node_pair_moves_both_and_the_dependent_starts_after() {
    if !require_root("killing_the_node_of_a_same_node_pair_moves_both_and_the_dependent_starts_after") {
        return;
    }
    let db = format!("name = \"db\"\nnodes = [\"n1\", \"n2\", \"n3\"]\n{}", vip("vip", DB_VIP));
    let app = format!(
        "name = \"app\"\nnodes = [\"n1\", \"n2\", \"n3\"]\ndepends = [{{ package = \"db\", where = \"same-node\" }}]\n{}",
        vip("vip", APP_VIP)
    );
    let spec = ObserverSpec {
        vips: vec![DB_VIP.parse().unwrap(), APP_VIP.parse().unwrap()],
        interval: Duration::from_millis(5),
        ..ObserverSpec::default()
    };
    let mut fixture = RelationsLab::new("pair", &[("app.toml", app), ("db.toml", db)], spec);
    fixture.wait_seen(Kind::Vip, DB_VIP, &["n1"], Duration::from_secs(20));
    fixture.wait_seen(Kind::Vip, APP_VIP, &["n1"], Duration::from_secs(20));
    let killed_ns = fixture.observer().mark("n1", "kill");
    fixture.lab.kill("n1").unwrap();
    fixture.wait_seen(Kind::Vip, DB_VIP, &["n2"], Duration::from_secs(20));
    fixture.wait_seen(Kind::Vip, APP_VIP, &["n2"], Duration::from_secs(20));
    let instances = fixture.wait_instances("app", "app running on n2", Duration::from_secs(10), |packages| {
        packages.get("app").is_some_and(|app| app["owner"] == "n2" && app["phase"] == "running")
    });
    assert_eq!(instances["app"]["owner"], "n2");
    let (records, end_ns) = fixture.finish_without_split_brain();
    let db_up = first_seen(&records, Kind::Vip, DB_VIP, "n2", killed_ns).expect("db's VIP on n2");
    let app_up = first_seen(&records, Kind::Vip, APP_VIP, "n2", killed_ns).expect("app's VIP on n2");
    assert!(app_up > db_up, "the dependent started after its dependency: db {db_up} ns, app {app_up} ns");
    let nested =
        nested_in(&records, end_ns, APP_VIP, DB_VIP).unwrap_or_else(|error| panic!("[{}] {error}", fixture.name));
    assert!(nested >= 2, "app ran on n1, then on n2");
    eprintln!(
        "[{}] after the kill of n1: db on n2 after {:.0} ms, app after {:.0} ms",
        fixture.name,
        (db_up - killed_ns) as f64 / 1e6,
        (app_up - killed_ns) as f64 / 1e6
    );
}

/// A promotable package: `ocf:heartbeat:Stateful` on every node, the primary holds a VIP.
fn promotable_db() -> String {
    format!(
        "name = \"db\"\nnodes = [\"n1\", \"n2\", \"n3\"]\ninstances = \"all\"\n\
         promotable = {{ primaries = 1, primary_only = [\"vip\"] }}\n\n\
         [[resource]]\nname = \"data\"\ntype = \"ocf\"\nagent = \"heartbeat:Stateful\"\n\
         monitor = {{ interval = \"1s\", timeout = \"10s\" }}\n\n{}",
        vip("vip", PRIMARY_VIP)
    )
}

fn promotion_spec() -> ObserverSpec {
    ObserverSpec {
        vips: vec![PRIMARY_VIP.parse().unwrap()],
        files: vec![(PathBuf::from(STATEFUL_STATE), "master".into())],
        interval: Duration::from_millis(5),
        ..ObserverSpec::default()
    }
}

/// The instance of `db` that is primary and runs, if exactly one is.
fn primary(instances: &BTreeMap<String, Value>) -> Option<String> {
    let primaries: Vec<&Value> =
        instances.values().filter(|p| p["role"] == "primary" && p["phase"] == "running").collect();
    match primaries.as_slice() {
        [only] => only["owner"].as_str().map(str::to_owned),
        _ => None,
    }
}

/// Kill the primary's node: a replica is promoted (Stateful's `master` appears on it), the VIP follows,
/// and at no instant are two instances promoted or two VIPs up.
#[test]
fn killing_the_primary_promotes_a_replica_and_the_vip_follows() {
    if !require_root("killing_the_primary_promotes_a_replica_and_the_vip_follows") {
        return;
    }
    let mut fixture = RelationsLab::new("promo", &[("db.toml", promotable_db())], promotion_spec());
    // Every instance runs and reported its score (Stateful: 5) before the fault.
    let instances = fixture.wait_instances("db", "three instances and one primary", Duration::from_secs(30), |i| {
        primary(i).is_some()
            && i.values().filter(|p| p["phase"] == "running" && p["score"].as_i64().is_some()).count() == 3
    });
    // The first instance running with a score is promoted; no later one takes the role away.
    let first = primary(&instances).unwrap();
    fixture.wait_seen(Kind::File, &master(), &[first.as_str()], Duration::from_secs(10));
    fixture.wait_seen(Kind::Vip, PRIMARY_VIP, &[first.as_str()], Duration::from_secs(10));
    if first == fixture.via {
        // The primary's node is killed, not the Raft leader's (another test kills both).
        let other = if first == "n1" { "n2" } else { "n1" };
        fixture.lead_from(other);
    }
    let killed_ns = fixture.observer().mark(&first, "kill");
    fixture.lab.kill(&first).unwrap();
    let instances = fixture.wait_instances("db", "a new primary", Duration::from_secs(20), |i| {
        primary(i).is_some_and(|node| node != first)
    });
    let second = primary(&instances).unwrap();
    fixture.wait_seen(Kind::File, &master(), &[second.as_str()], Duration::from_secs(10));
    fixture.wait_seen(Kind::Vip, PRIMARY_VIP, &[second.as_str()], Duration::from_secs(10));
    let (records, _) = fixture.finish_without_split_brain();
    let promoted = first_seen(&records, Kind::File, &master(), &second, killed_ns).expect("promoted");
    let vip_up = first_seen(&records, Kind::Vip, PRIMARY_VIP, &second, killed_ns).expect("VIP up");
    assert!(vip_up >= promoted, "the VIP comes after the promotion");
    eprintln!(
        "[{}] after the kill of {first}: {second} promoted after {:.0} ms, its VIP up after {:.0} ms",
        fixture.name,
        (promoted - killed_ns) as f64 / 1e6,
        (vip_up - killed_ns) as f64 / 1e6
    );
}

/// Cut the primary off: it demotes (and stops) at its lease's stop budget, before the majority promotes
/// another replica; once healed it comes back as a replica.
#[test]
fn a_partitioned_primary_demotes_before_another_is_promoted() {
    if !require_root("a_partitioned_primary_demotes_before_another_is_promoted") {
        return;
    }
    let mut fixture = RelationsLab::new("demote", &[("db.toml", promotable_db())], promotion_spec());
    let instances = fixture.wait_instances("db", "three instances and one primary", Duration::from_secs(30), |i| {
        primary(i).is_some() && i.values().filter(|p| p["phase"] == "running").count() == 3
    });
    let first = primary(&instances).unwrap();
    if first == fixture.via {
        let other = if first == "n1" { "n2" } else { "n1" };
        fixture.lead_from(other);
    }
    fixture.wait_seen(Kind::File, &master(), &[first.as_str()], Duration::from_secs(10));
    let rest: Vec<&str> = ["n1", "n2", "n3"].into_iter().filter(|node| *node != first).collect();
    let cut_ns = now_ns();
    fixture.lab.partition(&format!("{first} / {}", rest.join(",")).parse().unwrap()).unwrap();
    let instances = fixture.wait_instances("db", "a new primary", Duration::from_secs(20), |i| {
        primary(i).is_some_and(|node| node != first)
    });
    let second = primary(&instances).unwrap();
    fixture.wait_seen(Kind::File, &master(), &[second.as_str()], Duration::from_secs(10));
    fixture.wait_seen(Kind::Vip, PRIMARY_VIP, &[second.as_str()], Duration::from_secs(10));
    fixture.lab.heal().unwrap();
    let old_key = format!("db:{first}");
    fixture.wait_instances("db", "the old primary back as a replica", Duration::from_secs(30), |i| {
        i.get(&old_key).is_some_and(|old| old["phase"] == "running" && old["role"] == "replica")
            && primary(i).as_deref() == Some(second.as_str())
    });
    fixture.wait_seen(Kind::File, &master(), &[second.as_str()], Duration::from_secs(10));
    let (records, end_ns) = fixture.finish_without_split_brain();
    let intervals = history::intervals(&records, end_ns);
    let masters = intervals.get(&(Kind::File, master())).cloned().unwrap_or_default();
    let old = masters.iter().find(|i| i.node == first && i.start_ns < cut_ns).expect("promoted before the cut");
    let new = masters.iter().find(|i| i.node == second && i.start_ns > cut_ns).expect("a later promotion");
    assert!(
        old.possible_end_ns < new.possible_start_ns,
        "{first} demoted (last seen promoted {} ns, first seen not {} ns) before {second} was promoted ({} ns)",
        old.end_ns,
        old.possible_end_ns,
        new.start_ns
    );
    eprintln!(
        "[{}] after the cut: {first} demoted within {:.0} ms, {second} promoted after {:.0} ms",
        fixture.name,
        (old.possible_end_ns - cut_ns) as f64 / 1e6,
        (new.start_ns - cut_ns) as f64 / 1e6
    );
}
