//! The cluster a run starts from: node announcements, fence devices, three packages with
//! different placement policies, node 1 elected, every node's timers armed.

use std::collections::BTreeMap;
use std::sync::Arc;

use cluster_model::{Command, FenceConfig, Settings};
use rand::Rng as _;

use crate::sim::{ms, Event, Sim, Timer};

/// The drift bound the clocks are drawn within: the cluster's setting.
pub(crate) fn drift_ppm() -> u64 {
    Settings::default().clock_drift_ppm
}

/// A package file for the simulation: one VIP resource, the given placement policy.
pub fn package_text(name: &str, nodes: &[&str], failover: &str, failback: &str) -> String {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let nodes = if nodes.is_empty() { String::new() } else { format!("nodes = [{}]\n", nodes.join(", ")) };
    format!(
        "name = \"{name}\"\n{nodes}failover = \"{failover}\"\nfailback = \"{failback}\"\n\
         [[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"192.0.2.10/24\"\ninterface = \"eth0\"\n"
    )
}

/// Packages with relations (`SimConfig::relations`): a promotable database with two instances whose
/// primary holds a VIP (its agent sets promotion scores); an application on the same node as a
/// database instance; a web front end anywhere the application runs; a batch job never on the web
/// front end's node; an agent on every node. Every package needs a slot (nodes offer 4).
pub fn relation_packages() -> Vec<String> {
    let vip = |address: &str| {
        format!("[[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"{address}/24\"\ninterface = \"eth0\"\n")
    };
    vec![
        format!(
            "name = \"db\"\ninstances = 2\npromotable = {{ primaries = 1, primary_only = [\"vip\"] }}\n\
             needs = {{ slots = 1 }}\n[[resource]]\nname = \"data\"\ntype = \"ocf\"\nagent = \"heartbeat:Stateful\"\n{}",
            vip("192.0.2.20")
        ),
        format!(
            "name = \"app\"\ndepends = [{{ package = \"db\", where = \"same-node\" }}]\nneeds = {{ slots = 1 }}\n{}",
            vip("192.0.2.21")
        ),
        format!(
            "name = \"web\"\nfailover = \"least-loaded\"\ndepends = [{{ package = \"app\", where = \"any-node\" }}]\n\
             needs = {{ slots = 1 }}\n{}",
            vip("192.0.2.22")
        ),
        format!(
            "name = \"batch\"\ndepends = [{{ package = \"web\", where = \"different-node\" }}]\nneeds = {{ slots = 1 }}\n{}",
            vip("192.0.2.23")
        ),
        format!("name = \"agent\"\ninstances = \"all\"\nneeds = {{ slots = 1 }}\n{}", vip("192.0.2.24")),
    ]
}

/// The packages of a default run: ordered on every node, least-loaded on every node, and one
/// limited to two nodes with automatic failback.
pub fn default_packages() -> Vec<String> {
    vec![
        package_text("web", &[], "ordered", "manual"),
        package_text("db", &[], "least-loaded", "manual"),
        package_text("app", &["n3", "n2"], "ordered", "auto"),
    ]
}

/// The packages of a run with a witness (`SIM_WITNESS`): the default ones, with `app` preferring
/// the witness n3 first (it must be passed over).
pub fn witness_packages() -> Vec<String> {
    vec![
        package_text("web", &[], "ordered", "manual"),
        package_text("db", &[], "least-loaded", "manual"),
        package_text("app", &["n3", "n2", "n1"], "ordered", "auto"),
    ]
}

impl Sim {
    pub(crate) fn bootstrap(&mut self) {
        let mut log = Vec::new();
        for name in &self.names {
            log.push(Command::NodeHello {
                name: name.clone(),
                watchdog: self.config.scenario.watchdog().then(|| "/dev/watchdog".into()),
                at_ms: 0,
            });
            if self.config.scenario.fencing() {
                log.push(Command::SetFence {
                    node: name.clone(),
                    fence: Some(FenceConfig {
                        agent: "fence_sim".into(),
                        params: BTreeMap::from([("plug".to_owned(), name.clone())]),
                    }),
                });
            }
        }
        for name in self.config.witnesses.iter().filter(|_| !self.config.witness_not_recorded) {
            log.push(Command::NodeRole { name: name.clone(), witness: true, at_ms: 0 });
        }
        if let Some((heartbeat, lease)) = self.config.timings {
            // Heartbeat first: a shorter lease must already fit two heartbeats in its stop budget.
            log.push(Command::SetSetting { name: "heartbeat".into(), value: format!("{heartbeat}ms") });
            log.push(Command::SetSetting { name: "lease".into(), value: format!("{lease}ms") });
        }
        if !self.config.node_capacity.is_empty() {
            for name in &self.names {
                let capacity = self.config.node_capacity.clone();
                log.push(Command::NodeCapacity { name: name.clone(), capacity, at_ms: 0 });
            }
        }
        let mut defs = Vec::new();
        for text in self.config.packages.clone() {
            let def = cluster_package::parse_package("sim.toml", &text)
                .unwrap_or_else(|errors| panic!("the simulator's package is invalid: {errors:?}"));
            defs.push(def);
        }
        let errors = cluster_package::validate_set(&defs);
        assert!(errors.is_empty(), "the simulator's packages do not hold together: {errors:?}");
        self.relations = crate::invariants::Relations::of(&defs);
        let refs: Vec<&cluster_package::PackageDef> = defs.iter().collect();
        for def in cluster_package::start_order(&refs) {
            self.packages.push(def.name.clone());
            log.push(Command::PkgApply { def: Arc::new(def.clone()), at_ms: 0 });
        }
        self.log = log;
        for n in 0..self.nodes.len() {
            let rate = self.nodes[n].clock.rate_ppm();
            self.trace(|| format!("n{} clock rate {rate} ppm of true time", n + 1));
        }
        for n in 0..self.nodes.len() {
            self.catch_up(n, self.log.len());
            // Spread the first heartbeats over one period.
            let offset = self.rng.random_range(0..ms(self.heartbeat_ms()));
            let first = self.nodes[n].clock.local(offset);
            self.timer_at(n, first, Timer::Heartbeat);
        }
        self.elect(0);
        let fault_end = self.config.fault_phase.as_micros() as u64;
        let end = fault_end + self.config.heal_phase.as_micros() as u64;
        let first_fault = self.rng.random_range(ms(200)..ms(800));
        self.schedule(first_fault, Event::Fault);
        self.schedule(fault_end, Event::Heal);
        self.schedule(end, Event::End);
    }

    pub(crate) fn heartbeat_ms(&self) -> u64 {
        self.nodes[0].state.settings.heartbeat_ms.max(1)
    }
}
