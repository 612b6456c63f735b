//! The replicated state machine: what every node holds after applying the committed log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use cluster_package::{Instances, PackageDef};

use crate::command::Report;
use crate::package::{Desired, Event, Failure, NodeRecord, PackageState, Phase, Redefinition, Role};
use crate::relations::{self, AsApplied};
use crate::{ClusterVersion, Command, CommandOutcome, Settings};

/// How many events the state keeps (older ones are dropped).
pub const EVENT_HISTORY: usize = 1_000;

/// Everything the committed log describes, apart from Raft membership (which the Raft layer keeps).
///
/// [`ClusterState::default`] is a state at this binary's cluster version (tests, the simulation);
/// a log replayed from its beginning starts from [`ClusterState::genesis`] instead, at the oldest
/// version, so that every release computes the same state from the same log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub settings: Settings,
    pub kv: BTreeMap<String, String>,
    pub packages: BTreeMap<String, PackageState>,
    pub nodes: BTreeMap<String, NodeRecord>,
    pub events: VecDeque<Event>,
    pub next_event: u64,
    /// Alert hooks and their delivery mark.
    pub alerts: crate::alerts::AlertState,
    /// The formats the cluster uses: the oldest release every member runs, as committed
    /// (`Command::ActivateVersion`). Commands of later versions are refused below it.
    pub cluster_version: ClusterVersion,
    /// Witnesses: voters that never host packages (`Command::NodeRole`).
    pub witnesses: BTreeSet<String>,
    /// Join tokens, issued certificates and revocations (`crate::join`).
    pub join: crate::join::JoinState,
}

impl Default for ClusterState {
    fn default() -> ClusterState {
        ClusterState { cluster_version: ClusterVersion::CURRENT, ..ClusterState::genesis() }
    }
}

fn rejected(reason: impl Into<String>) -> CommandOutcome {
    CommandOutcome::Rejected { reason: reason.into() }
}

fn unknown_package(name: &str) -> CommandOutcome {
    rejected(format!("package `{name}` does not exist"))
}

impl ClusterState {
    /// The state before the first entry of a log: empty, at the oldest cluster version (a log
    /// written by v0.1.0 has no `ActivateVersion`, and must apply here as it did there).
    pub fn genesis() -> ClusterState {
        ClusterState {
            settings: Settings::default(),
            kv: BTreeMap::new(),
            packages: BTreeMap::new(),
            nodes: BTreeMap::new(),
            events: VecDeque::new(),
            next_event: 0,
            alerts: crate::alerts::AlertState::default(),
            cluster_version: ClusterVersion::OLDEST,
            witnesses: BTreeSet::new(),
            join: crate::join::JoinState::default(),
        }
    }

    /// Applies one committed command. Deterministic and total: invalid commands are rejected with a
    /// reason and leave the state unchanged.
    ///
    /// A command that needs a later cluster version than the state's is rejected (the leader never
    /// proposes one; a member of the older version could not even decode it), and the commands
    /// whose meaning changed since v0.1.0 apply as v0.1.0 applied them while the cluster is at
    /// version 1, so that members of both releases compute the same state.
    pub fn apply(&mut self, command: &Command) -> CommandOutcome {
        let need = command.version_need();
        if need.needs > self.cluster_version && !matches!(command, Command::ActivateVersion { .. }) {
            return rejected(format!("{need}, and the cluster runs at {}", self.cluster_version));
        }
        match command {
            Command::KvSet { key, value } => {
                self.kv.insert(key.clone(), value.clone());
                CommandOutcome::Applied
            }
            Command::KvCas { key, expected, new } => {
                let current = self.kv.get(key);
                if current != expected.as_ref() {
                    return CommandOutcome::CasMismatch { current: current.cloned() };
                }
                self.kv.insert(key.clone(), new.clone());
                CommandOutcome::Applied
            }
            Command::KvDel { key } => CommandOutcome::Deleted { existed: self.kv.remove(key).is_some() },
            Command::SetSetting { name, value } => match self.settings.set_at(self.cluster_version, name, value) {
                Ok(()) => CommandOutcome::Applied,
                Err(err) => rejected(err.to_string()),
            },
            Command::LeasesSettled { ceiling_us } => {
                if self.settings.settle_leases(*ceiling_us) {
                    CommandOutcome::Applied
                } else {
                    rejected("the lease ceiling changed since")
                }
            }
            Command::SetFence { node, fence } => {
                match fence {
                    Some(fence) => self.settings.fencing.insert(node.clone(), fence.clone()),
                    None => self.settings.fencing.remove(node),
                };
                CommandOutcome::Applied
            }
            Command::PkgApply { def, at_ms } => self.apply_definition(def, *at_ms),
            Command::PkgRemove { name, at_ms } => self.remove_package(name, *at_ms),
            Command::PkgRun { name, node, at_ms } => {
                if let Some(node) = node {
                    if let Some(reason) = self.unusable_node(name, node) {
                        return rejected(reason);
                    }
                }
                self.operator(name, *at_ms, "run", |_, package| {
                    package.desired = Desired::Running;
                    package.target = node.clone();
                })
            }
            Command::PkgStop { name, at_ms } => self.operator(name, *at_ms, "stop", |_, package| {
                package.desired = Desired::Stopped;
                package.target = None;
            }),
            Command::PkgMove { name, to, at_ms } => {
                if let Some(reason) = self.unusable_node(name, to) {
                    return rejected(reason);
                }
                self.operator(name, *at_ms, "move", |_, package| {
                    package.desired = Desired::Running;
                    package.target = Some(to.clone());
                })
            }
            Command::PkgFreeze { name, frozen, at_ms } => {
                // A frozen package stays active when clusterd stops on its owner (maintenance): a
                // node without a watchdog then has nothing that stops it at its lease's end, so an
                // unfreeze must not let the controller reassign it on that lease's expiry.
                // (Since 0.2.0: v0.1.0 unfroze it as is.)
                let v0_1 = self.cluster_version < ClusterVersion::V0_2;
                let nodes = &self.nodes;
                let unprotected_owner = |package: &PackageState| {
                    if v0_1 {
                        return None;
                    }
                    let owner = package.owner.as_deref()?;
                    let record = nodes.get(owner)?;
                    let kept = package.frozen && package.phase.may_be_active() && package.phase != Phase::Blocked;
                    (!*frozen && kept && record.leaving && !record.watchdog).then(|| owner.to_owned())
                };
                let unprotected: BTreeMap<String, String> = self
                    .instances(name)
                    .filter_map(|(key, package)| unprotected_owner(package).map(|owner| (key.clone(), owner)))
                    .collect();
                self.operator(name, *at_ms, if *frozen { "freeze" } else { "unfreeze" }, |key, package| {
                    package.frozen = *frozen;
                    if let Some(owner) = unprotected.get(key) {
                        package.phase = Phase::Blocked;
                        package.blocked_reason = Some(format!(
                            "unfrozen while clusterd on {owner} is stopped: a frozen package stays running when \
                             clusterd stops, and {owner} has no watchdog to stop it; start clusterd on {owner} \
                             (it adopts or stops the package), or fence {owner}, or stop the resources there by \
                             hand and run `clusterctl pkg cleanup {name}`"
                        ));
                    }
                })
            }
            Command::PkgCleanup { name, at_ms } => {
                let outcome = self.operator(name, *at_ms, "cleanup", |_, package| {
                    package.failures.clear();
                    package.banned.clear();
                    package.restarts = 0;
                    package.stopping_after_failure = false;
                    if matches!(package.phase, Phase::Blocked | Phase::Failed) {
                        package.owner = None;
                        package.phase = Phase::Stopped;
                        package.blocked_reason = None;
                        package.resources.clear();
                        package.role = Role::Replica;
                        package.score = None;
                    }
                });
                for key in self.keys_named(name) {
                    self.reap_retired(&key, *at_ms);
                }
                outcome
            }
            Command::NodeStandby { name, standby, at_ms } => {
                self.nodes.entry(name.clone()).or_default().standby = *standby;
                let what = if *standby { "standby" } else { "online" };
                self.event(*at_ms, None, Some(name), 0, what, "operator", None);
                CommandOutcome::Applied
            }
            Command::NodeHello { name, watchdog, at_ms } => {
                let record = self.nodes.entry(name.clone()).or_default();
                record.leaving = false;
                record.watchdog = watchdog.is_some();
                record.watchdog_device = watchdog.clone();
                let reason = match watchdog {
                    Some(device) => format!("watchdog {device}"),
                    None => "no watchdog".to_owned(),
                };
                self.event(*at_ms, None, Some(name), 0, "node started", &reason, None);
                self.add_node_instances(name, *at_ms);
                CommandOutcome::Applied
            }
            Command::NodeWatchdog { name, watchdog, reason, at_ms } => {
                let record = self.nodes.entry(name.clone()).or_default();
                record.watchdog = watchdog.is_some();
                record.watchdog_device = watchdog.clone();
                let what = if watchdog.is_some() { "watchdog usable" } else { "watchdog unusable: lease-only" };
                self.event(*at_ms, None, Some(name), 0, what, reason, None);
                CommandOutcome::Applied
            }
            Command::NodeLeave { name, at_ms } => {
                self.nodes.entry(name.clone()).or_default().leaving = true;
                let reason = "clusterd is stopping: its packages move away";
                self.event(*at_ms, None, Some(name), 0, "leaving", reason, None);
                CommandOutcome::Applied
            }
            Command::Assign { package, expected_epoch, owner, phase, reason, at_ms } => {
                self.assign(package, *expected_epoch, owner.as_deref(), *phase, reason, *at_ms)
            }
            Command::Report { package, node, epoch, report, at_ms } => {
                self.report(package, node, *epoch, report, *at_ms)
            }
            Command::NodeFenced { node, owned, at_ms } => {
                // Only the assignments the fence decision was about: a package given to the node
                // again after it came back (a later epoch) is not released by a late record.
                let owned: Vec<String> = self
                    .packages
                    .iter()
                    .filter(|(name, p)| p.owner.as_deref() == Some(node.as_str()) && owned.get(*name) == Some(&p.epoch))
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in owned {
                    let package = self.packages.get_mut(&name).expect("listed package");
                    let from = package.phase;
                    let phase_ms = at_ms.saturating_sub(package.since_ms);
                    package.phase = if package.stopping_after_failure { Phase::Failed } else { Phase::Stopped };
                    package.owner = None;
                    package.blocked_reason = None;
                    package.stopping_after_failure = false;
                    package.resources.clear();
                    package.role = Role::Replica;
                    package.score = None;
                    package.since_ms = *at_ms;
                    let (epoch, to) = (package.epoch, package.phase);
                    let what = format!("{} -> {}", from.as_str(), to.as_str());
                    self.event(*at_ms, Some(&name), Some(node), epoch, &what, "node fenced", Some(phase_ms));
                    self.reap_retired(&name, *at_ms);
                }
                self.event(*at_ms, None, Some(node), 0, "fenced", "fence agent confirmed the node is off", None);
                CommandOutcome::Applied
            }
            Command::SetAlert { path, hook } => crate::alerts::set_alert(self, path, hook.as_ref()),
            Command::AlertsDelivered { next } => crate::alerts::delivered(self, *next),
            Command::SetRole { package, expected_epoch, role, reason, at_ms } => {
                self.set_role(package, *expected_epoch, *role, reason, *at_ms)
            }
            Command::NodeCapacity { name, capacity, at_ms } => {
                for capacity_name in capacity.keys() {
                    if let Err(reason) = cluster_package::check_capacity_name(capacity_name) {
                        return rejected(format!("capacity of node `{name}`: {reason}"));
                    }
                }
                let record = self.nodes.entry(name.clone()).or_default();
                if record.capacity == *capacity {
                    return CommandOutcome::Applied;
                }
                record.capacity = capacity.clone();
                let described: Vec<String> = capacity
                    .iter()
                    .map(|(capacity_name, value)| {
                        format!("{capacity_name} {}", cluster_package::format_quantity(*value))
                    })
                    .collect();
                let reason = if described.is_empty() { "unlimited".to_owned() } else { described.join(", ") };
                self.event(*at_ms, None, Some(name), 0, "capacity", &reason, None);
                CommandOutcome::Applied
            }
            Command::Batch(commands) => {
                CommandOutcome::Batch(commands.iter().map(|command| self.apply(command)).collect())
            }
            Command::ActivateVersion { version, at_ms } => self.activate(*version, *at_ms),
            Command::NodeRole { name, witness, at_ms } => {
                let changed = if *witness { self.witnesses.insert(name.clone()) } else { self.witnesses.remove(name) };
                if changed {
                    let (what, reason) = if *witness {
                        ("witness", "a voter that never hosts packages: its packages move away")
                    } else {
                        ("package node", "may host packages again")
                    };
                    self.event(*at_ms, None, Some(name), 0, what, reason, None);
                }
                CommandOutcome::Applied
            }
            Command::TokenCreate { hash, expires_ms, at_ms } => match self.join.create(hash, *at_ms, *expires_ms) {
                Ok(()) => CommandOutcome::Applied,
                Err(reason) => rejected(reason),
            },
            Command::TokenRevoke { hash, at_ms } => match self.join.revoke(hash, *at_ms) {
                Ok(()) => CommandOutcome::Applied,
                Err(reason) => rejected(reason),
            },
            Command::TokenRedeem { hash, node, address, fingerprint, at_ms } => {
                let known = self.nodes.contains_key(node);
                match self.join.redeem(hash, node, known, fingerprint, *at_ms) {
                    Ok(()) => {
                        let reason = format!("joined with a token at {address}: certificate {fingerprint}");
                        self.event(*at_ms, None, Some(node), 0, "joined", &reason, None);
                        CommandOutcome::Applied
                    }
                    Err(reason) => rejected(reason),
                }
            }
            Command::NodeRevoke { name, at_ms } => {
                self.join.revoke_node(name);
                let reason = "removed: its certificates are refused";
                self.event(*at_ms, None, Some(name), 0, "certificates revoked", reason, None);
                CommandOutcome::Applied
            }
            Command::CertRenewed { node, fingerprint, at_ms } => match self.join.renewed(node, fingerprint) {
                Ok(()) => {
                    let reason = format!("new certificate {fingerprint}");
                    self.event(*at_ms, None, Some(node), 0, "certificate renewed", &reason, None);
                    CommandOutcome::Applied
                }
                Err(reason) => rejected(reason),
            },
            Command::NodeAdmit { name, at_ms } => {
                if self.join.admit_node(name) {
                    let reason = "added again: certificates with its name are accepted";
                    self.event(*at_ms, None, Some(name), 0, "admitted", reason, None);
                }
                CommandOutcome::Applied
            }
        }
    }

    /// `Command::ActivateVersion`: the version only rises, and only to one this binary knows.
    fn activate(&mut self, version: ClusterVersion, at_ms: u64) -> CommandOutcome {
        if !version.supported() {
            return rejected(format!(
                "cluster version {} is newer than this clusterd ({}) understands",
                version.0,
                ClusterVersion::CURRENT
            ));
        }
        if version <= self.cluster_version {
            return rejected(format!("the cluster already runs at version {}", self.cluster_version));
        }
        let from = self.cluster_version;
        self.cluster_version = version;
        let reason = format!("every member runs {version} or later");
        self.event(at_ms, None, None, 0, &format!("cluster version {from} -> {version}"), &reason, None);
        CommandOutcome::Applied
    }

    /// Why `node` cannot take package `name`, if it cannot.
    /// Why `node` must not be removed from the cluster now, if it must not: it owns packages that
    /// may be active there (a removed owner can no longer report them stopped, so they would wait
    /// for its lease to expire, or for ever if blocked).
    pub fn removal_refused(&self, node: &str) -> Option<String> {
        let owned: Vec<String> = self
            .packages
            .iter()
            .filter(|(_, package)| package.owner.as_deref() == Some(node) && package.phase.may_be_active())
            .map(|(name, package)| format!("{name} ({})", package.phase.as_str()))
            .collect();
        (!owned.is_empty()).then(|| {
            format!(
                "refusing to remove node `{node}`: it owns {}: drain it first (`clusterctl node standby {node}`, then \
                 wait until `clusterctl status` shows them on other nodes or stopped; a blocked package needs \
                 `clusterctl pkg cleanup` or a fence of {node}), then remove it",
                owned.join(", ")
            )
        })
    }

    fn unusable_node(&self, name: &str, node: &str) -> Option<String> {
        let keys = self.keys_named(name);
        let key = match keys.as_slice() {
            [] => return None,
            [key] => key.as_str(),
            [first, ..] => {
                return Some(format!(
                    "package `{name}` has {} instances: name the one to place, e.g. `{first}`",
                    keys.len()
                ))
            }
        };
        let package = &self.packages[key];
        if !package.def.nodes.is_empty() && !package.def.nodes.iter().any(|n| n == node) {
            return Some(format!("node `{node}` is not in the nodes list of package `{name}`"));
        }
        if let Some(bound) = relations::bound_node(package, key).filter(|bound| *bound != node) {
            return Some(format!("instance `{key}` runs only on its node `{bound}`"));
        }
        if package.banned.contains(node) {
            return Some(format!(
                "package `{name}` failed beyond its restart budget on node `{node}`: run `clusterctl pkg cleanup {name}` first"
            ));
        }
        if self.nodes.get(node).is_some_and(|record| record.standby) {
            return Some(format!("node `{node}` is in standby"));
        }
        if self.witnesses.contains(node) {
            return Some(format!("node `{node}` is a witness: it never hosts packages"));
        }
        if self.nodes.get(node).is_some_and(|record| record.leaving) {
            return Some(format!("clusterd on node `{node}` is stopped or stopping"));
        }
        if package.occupies() == Some(node) {
            return None;
        }
        relations::placement_refusal(self, &AsApplied, key, &package.def, node)
            .map(|why| format!("package `{key}` cannot run on node `{node}`: {why}"))
    }

    /// `pkg remove`: every instance, once none may be active and no other package depends on it.
    fn remove_package(&mut self, name: &str, at_ms: u64) -> CommandOutcome {
        let keys = self.keys_named(name);
        let Some(first) = keys.first() else {
            return unknown_package(name);
        };
        let package_name = self.packages[first].def.name.clone();
        if package_name != name {
            return rejected(format!(
                "`{name}` is an instance of package `{package_name}`: remove the package, or lower its `instances`"
            ));
        }
        let active: Vec<String> = keys
            .iter()
            .filter_map(|key| {
                let package = &self.packages[key];
                (package.owner.is_some() || package.phase.may_be_active()).then(|| {
                    format!(
                        "`{key}` is {} on {}",
                        package.phase.as_str(),
                        package.owner.as_deref().unwrap_or("no node")
                    )
                })
            })
            .collect();
        if !active.is_empty() {
            return rejected(format!(
                "package {}: stop it first (`clusterctl pkg stop {name}`)",
                active.join(", package ")
            ));
        }
        let dependents: BTreeSet<&str> = self
            .packages
            .values()
            .filter(|other| other.def.name != name && other.def.dependency_on(name).is_some())
            .map(|other| other.def.name.as_str())
            .collect();
        if !dependents.is_empty() {
            let list: Vec<String> = dependents.iter().map(|dependent| format!("`{dependent}`")).collect();
            return rejected(format!(
                "package `{name}` is needed by {} (`depends`): remove them, or apply them without the dependency, first",
                list.join(", ")
            ));
        }
        for key in keys {
            let epoch = self.packages.remove(&key).map_or(0, |package| package.epoch);
            self.event(at_ms, Some(&key), None, epoch, "removed", "pkg remove", None);
        }
        CommandOutcome::Applied
    }

    /// Removes a retired instance once nothing of it may be active.
    fn reap_retired(&mut self, key: &str, at_ms: u64) {
        let Some(package) = self.packages.get(key) else { return };
        if package.retired && package.owner.is_none() && !package.phase.may_be_active() {
            let epoch = package.epoch;
            self.packages.remove(key);
            self.event(at_ms, Some(key), None, epoch, "removed", "instance beyond `instances`", None);
        }
    }

    /// The instances a definition asks for: `name`, `name:0`.., or `name:NODE` per node.
    fn wanted_instances(&self, def: &PackageDef) -> Vec<String> {
        match def.instances {
            Instances::Count(1) => vec![def.name.clone()],
            Instances::Count(count) => (0..count).map(|i| relations::instance_key(&def.name, &i.to_string())).collect(),
            Instances::All if !def.nodes.is_empty() => {
                def.nodes.iter().map(|node| relations::instance_key(&def.name, node)).collect()
            }
            Instances::All => self.nodes.keys().map(|node| relations::instance_key(&def.name, node)).collect(),
        }
    }

    /// A node announced itself: packages with an instance on every node (`instances = "all"`, no
    /// `nodes` list) get one there.
    fn add_node_instances(&mut self, node: &str, at_ms: u64) {
        let mut defs: BTreeMap<String, Arc<PackageDef>> = BTreeMap::new();
        for package in self.packages.values() {
            if package.def.instances == Instances::All && package.def.nodes.is_empty() {
                defs.entry(package.def.name.clone()).or_insert_with(|| Arc::clone(&package.def));
            }
        }
        for (name, def) in defs {
            let key = relations::instance_key(&name, node);
            if !self.packages.contains_key(&key) {
                self.add_instance(&key, &def, at_ms);
            }
        }
    }

    /// A new instance of a package: it takes the operator's choices (desired state, freeze) of its
    /// siblings, if any.
    fn add_instance(&mut self, key: &str, def: &Arc<PackageDef>, at_ms: u64) {
        // Shared with the log entry that carried it (one copy of a definition per node).
        let mut package = PackageState::new(Arc::clone(def), at_ms);
        package.instance = key.split_once(':').map(|(_, instance)| instance.to_owned());
        if let Some((_, sibling)) = self.instances(&def.name).find(|(_, sibling)| !sibling.retired) {
            package.desired = sibling.desired;
            package.frozen = sibling.frozen;
        }
        self.packages.insert(key.to_owned(), package);
        self.event(at_ms, Some(key), None, 0, "applied", "pkg apply", None);
    }

    /// `pkg apply`: a new package, or a new definition of an existing one. The definition must hold
    /// together with the other packages (dependencies defined, no cycle, no contradiction). Each
    /// instance is redefined as [`Redefinition`] says; instances are added or retired when
    /// `instances` changes (a change between one, N and one per node needs the package stopped).
    fn apply_definition(&mut self, def: &Arc<PackageDef>, at_ms: u64) -> CommandOutcome {
        let name = def.name.clone();
        if let Some(reason) = self.set_refusal(def) {
            return rejected(reason);
        }
        let existing = self.keys_named(&name);
        let wanted = self.wanted_instances(def);
        if let Some(first) = existing.first() {
            let old = &self.packages[first].def;
            let shape = |def: &PackageDef| match def.instances {
                Instances::Count(1) => 0,
                Instances::Count(_) => 1,
                Instances::All => 2,
            };
            if shape(old) != shape(def) {
                let busy: Vec<&String> = existing
                    .iter()
                    .filter(|key| {
                        let package = &self.packages[*key];
                        package.owner.is_some() || package.phase.may_be_active()
                    })
                    .collect();
                if !busy.is_empty() {
                    return rejected(format!(
                        "package `{name}` may be active ({}): stop it first (`clusterctl pkg stop {name}`) to change \
                         `instances` from {} to {}",
                        busy.iter().map(|key| key.as_str()).collect::<Vec<_>>().join(", "),
                        describe_instances(old.instances),
                        describe_instances(def.instances)
                    ));
                }
                for key in &existing {
                    let epoch = self.packages.remove(key).map_or(0, |package| package.epoch);
                    self.event(at_ms, Some(key), None, epoch, "removed", "pkg apply: `instances` changed", None);
                }
                for key in &wanted {
                    self.add_instance(key, def, at_ms);
                }
                return CommandOutcome::Applied;
            }
        }
        for key in &wanted {
            if self.packages.contains_key(key) {
                self.redefine(key, def, at_ms);
            } else {
                self.add_instance(key, def, at_ms);
            }
        }
        for key in existing.iter().filter(|key| !wanted.contains(key)) {
            let package = self.packages.get_mut(key).expect("listed instance");
            if !package.retired {
                package.retired = true;
                package.desired = Desired::Stopped;
                package.target = None;
                let epoch = package.epoch;
                self.event(at_ms, Some(key), None, epoch, "retired", "pkg apply: beyond `instances`", None);
            }
            self.reap_retired(key, at_ms);
        }
        CommandOutcome::Applied
    }

    /// Why `def` cannot join the other packages, naming them (see `cluster_package::validate_set`).
    fn set_refusal(&self, def: &PackageDef) -> Option<String> {
        let mut set: BTreeMap<&str, &PackageDef> = BTreeMap::new();
        for package in self.packages.values() {
            let slot = set.entry(package.def.name.as_str()).or_insert(&package.def);
            if !package.retired {
                *slot = &package.def;
            }
        }
        set.insert(def.name.as_str(), def);
        let name = def.name.as_str();
        let errors: Vec<String> = cluster_package::validate_set(set.into_values())
            .into_iter()
            .filter(|error| match error {
                cluster_package::SetError::UnknownPackage { package, .. } => package == name,
                cluster_package::SetError::Cycle { cycle } => cycle.iter().any(|step| step == name),
                cluster_package::SetError::Contradiction { packages, .. } => packages.iter().any(|p| p == name),
            })
            .map(|error| error.to_string())
            .collect();
        (!errors.is_empty()).then(|| format!("package `{name}` refused: {}", errors.join("; ")))
    }

    /// A new definition of the existing instance `key` (see [`Redefinition`]). A definition whose
    /// resources changed restarts, on its owner and at the same epoch, the first changed resource and
    /// every one after it (a running package goes `running -> starting`; it is not a failure); a
    /// change of placement or policy only restarts nothing (the controller moves the package if it
    /// must); an identical definition changes nothing and records nothing.
    fn redefine(&mut self, key: &str, def: &Arc<PackageDef>, at_ms: u64) {
        let (unchanged, policy_only, restarts, from) = {
            let redefinition = Redefinition::of(self.packages.get(key), def);
            let from = match &redefinition {
                Redefinition::Restart { from: Some(from), .. } => format!("resource {from} and every later one"),
                _ => "the removed resources".to_owned(),
            };
            let restarts = matches!(redefinition, Redefinition::Restart { .. });
            (redefinition == Redefinition::Unchanged, redefinition == Redefinition::PolicyOnly, restarts, from)
        };
        // Every change of a definition records an event naming the instance: clusterd's executor
        // compares definitions only for packages named by new events.
        let siblings_desired = self.instances(&def.name).find(|(_, sibling)| !sibling.retired).map(|(_, p)| p.desired);
        let Some(package) = self.packages.get_mut(key) else { return };
        if package.retired {
            // Wanted again before it was gone.
            package.retired = false;
            package.desired = siblings_desired.unwrap_or(package.desired);
        }
        if unchanged {
            return;
        }
        let restart = restarts && package.phase == Phase::Running;
        package.def = Arc::clone(def);
        let (epoch, owner) = (package.epoch, package.owner.clone());
        let (what, reason, phase_ms) = if restart {
            let phase_ms = at_ms.saturating_sub(package.since_ms);
            package.phase = Phase::Starting;
            package.since_ms = at_ms;
            ("running -> starting", format!("pkg apply: resources redefined: restarting {from}"), Some(phase_ms))
        } else if policy_only {
            ("definition replaced", "pkg apply: placement or policy only".to_owned(), None)
        } else {
            ("definition replaced", "pkg apply: resources redefined".to_owned(), None)
        };
        self.event(at_ms, Some(key), owner.as_deref(), epoch, what, &reason, phase_ms);
    }

    /// An operator's command on package `name` (every instance) or on one instance.
    fn operator(
        &mut self,
        name: &str,
        at_ms: u64,
        what: &str,
        mut change: impl FnMut(&str, &mut PackageState),
    ) -> CommandOutcome {
        let keys = self.keys_named(name);
        if keys.is_empty() {
            return unknown_package(name);
        }
        for key in keys {
            let package = self.packages.get_mut(&key).expect("named instance");
            change(&key, package);
            let epoch = package.epoch;
            self.event(at_ms, Some(&key), None, epoch, what, "operator", None);
        }
        CommandOutcome::Applied
    }

    fn assign(
        &mut self,
        name: &str,
        expected_epoch: u64,
        owner: Option<&str>,
        phase: Phase,
        reason: &str,
        at_ms: u64,
    ) -> CommandOutcome {
        let Some(package) = self.packages.get(name) else {
            return unknown_package(name);
        };
        if package.epoch != expected_epoch {
            return rejected(format!(
                "stale assignment of package `{name}`: epoch {expected_epoch}, current {}",
                package.epoch
            ));
        }
        let new_owner = owner.filter(|new_owner| package.owner.as_deref() != Some(*new_owner));
        if let (Some(node), Phase::Stopping) = (new_owner, phase) {
            // Only an owner stops its package: a plan made before the package was released (a new
            // leader's state that lags its log) must not tie it to a node again (found by the
            // simulation: a removed leader kept a released instance "stopping" on itself for ever).
            return rejected(format!(
                "stale assignment of package `{name}`: `stopping` on {node}, which does not own it (owner {})",
                package.owner.as_deref().unwrap_or("none")
            ));
        }
        if let (Some(owner), None, Phase::Stopping, Phase::Starting | Phase::Running) =
            (owner, new_owner, phase, package.phase)
        {
            // An orderly stop waits for what still needs the package there (dependents stop first),
            // whoever planned it.
            let relying = relations::dependents_relying(self, &AsApplied, name, package, owner);
            if !relying.is_empty() {
                return rejected(format!(
                    "refusing to stop package `{name}` on node `{owner}`: {} depend on it and must stop first",
                    relying.join(", ")
                ));
            }
        }
        if let Some(node) = new_owner.filter(|_| phase.may_be_active()) {
            // Relations are the state machine's to keep, like epochs: a plan made on an older state
            // (or by an older leader) must not put two anti-affine packages, or two instances, on one
            // node, start a dependent before what it needs runs, or overfill a node.
            let bound = relations::bound_node(package, name).filter(|bound| *bound != node);
            let refusal = match bound {
                Some(bound) => Some(format!("instance bound to node {bound}")),
                None => relations::placement_refusal(self, &AsApplied, name, &package.def, node),
            };
            if let Some(why) = refusal {
                return rejected(format!("refusing to place package `{name}` on node `{node}`: {why}"));
            }
        }
        let package = self.packages.get_mut(name).expect("checked above");
        let from = package.phase;
        let phase_ms = at_ms.saturating_sub(package.since_ms);
        if new_owner.is_some() {
            package.epoch += 1;
            package.restarts = 0;
            package.resources.clear();
            // A failure on the old owner does not make the new owner's stop end in `failed`.
            package.stopping_after_failure = false;
            // A placement intent is one-shot: used now, or dropped because the package went elsewhere.
            package.target = None;
        }
        if new_owner.is_some() || owner.is_none() {
            // A new owner starts as a replica: the old owner's primary role ended with its ownership,
            // under the same rules (docs/safety.md, "Promotable packages").
            package.role = Role::Replica;
            package.score = None;
        }
        if owner.is_none() {
            package.resources.clear();
        }
        package.owner = owner.map(str::to_owned);
        package.phase = phase;
        package.since_ms = at_ms;
        let epoch = package.epoch;
        let what = format!("{} -> {}", from.as_str(), phase.as_str());
        self.event(at_ms, Some(name), owner, epoch, &what, reason, Some(phase_ms));
        self.reap_retired(name, at_ms);
        CommandOutcome::Applied
    }

    /// The controller promotes or demotes an instance (see [`Role`]). A promotion is refused unless
    /// the instance runs as a replica and fewer than `primaries` instances may be promoted.
    fn set_role(&mut self, key: &str, expected_epoch: u64, role: Role, reason: &str, at_ms: u64) -> CommandOutcome {
        let Some(package) = self.packages.get(key) else {
            return unknown_package(key);
        };
        if package.epoch != expected_epoch {
            return rejected(format!(
                "stale role change of package `{key}`: epoch {expected_epoch}, current {}",
                package.epoch
            ));
        }
        let Some(promotable) = &package.def.promotable else {
            return rejected(format!("package `{key}` is not promotable"));
        };
        let from = package.role;
        match role {
            Role::Promoting => {
                if package.phase != Phase::Running
                    || package.owner.is_none()
                    || from != Role::Replica
                    || package.retired
                {
                    return rejected(format!(
                        "package `{key}` cannot be promoted while {} as {}",
                        package.phase.as_str(),
                        from.as_str()
                    ));
                }
                let name = package.def.name.clone();
                let promoted = relations::primaries(self, &name);
                if promoted >= promotable.primaries as usize {
                    return rejected(format!(
                        "package `{name}` has {promoted} of {} primaries already: `{key}` is not promoted",
                        promotable.primaries
                    ));
                }
            }
            Role::Demoting if matches!(from, Role::Promoting | Role::Primary) => {}
            Role::Demoting | Role::Primary | Role::Replica => {
                return rejected(format!("package `{key}` cannot go from {} to {}", from.as_str(), role.as_str()));
            }
        }
        let package = self.packages.get_mut(key).expect("checked above");
        package.role = role;
        let owner = package.owner.clone();
        let what = format!("{} -> {}", from.as_str(), role.as_str());
        self.event(at_ms, Some(key), owner.as_deref(), expected_epoch, &what, reason, None);
        CommandOutcome::Applied
    }

    fn report(&mut self, name: &str, node: &str, epoch: u64, report: &Report, at_ms: u64) -> CommandOutcome {
        // Whether packages that depend on this one still need it on `node`: a failure beyond the
        // restart budget then bans the node and lets the controller stop them first (below).
        let relied_on = matches!(report, Report::ResourceFailed { .. })
            && self.packages.get(name).is_some_and(|package| {
                !relations::dependents_relying(self, &AsApplied, name, package, node).is_empty()
            });
        let Some(package) = self.packages.get_mut(name) else {
            return unknown_package(name);
        };
        if package.epoch != epoch || package.owner.as_deref() != Some(node) {
            return rejected(format!(
                "stale report for package `{name}` from node `{node}` at epoch {epoch} (owner {}, epoch {})",
                package.owner.as_deref().unwrap_or("none"),
                package.epoch
            ));
        }
        let from = package.phase;
        let phase_ms = at_ms.saturating_sub(package.since_ms);
        let reason = match report {
            Report::Running { resources } => {
                package.resources = resources.clone();
                if from == Phase::Starting {
                    package.phase = Phase::Running;
                }
                "all resources started".to_owned()
            }
            Report::Stopped if from != Phase::Stopping => {
                // Only a stop that was asked for releases the package: a late `Stopped` (e.g. sent
                // after a lease lapse, while the owner has since started again at the same epoch)
                // must not free it for another node (found by the simulation, seed 1).
                return rejected(format!(
                    "stopped report for package `{name}` from node `{node}` while {}: ignored",
                    from.as_str()
                ));
            }
            Report::Stopped => {
                package.phase = if package.stopping_after_failure { Phase::Failed } else { Phase::Stopped };
                package.owner = None;
                package.stopping_after_failure = false;
                package.resources.clear();
                package.role = Role::Replica;
                package.score = None;
                "all resources stopped".to_owned()
            }
            Report::Promoted | Report::Demoted { .. } => {
                let to = match report {
                    Report::Promoted if package.role == Role::Promoting => Role::Primary,
                    Report::Demoted { .. } if package.role != Role::Replica => Role::Replica,
                    _ => {
                        return rejected(format!(
                            "{report:?} for package `{name}` from node `{node}` while {}: ignored",
                            package.role.as_str()
                        ))
                    }
                };
                let role_from = package.role;
                package.role = to;
                let why = match report {
                    Report::Demoted { reason } => reason.clone(),
                    _ => "promoted".to_owned(),
                };
                let what = format!("{} -> {}", role_from.as_str(), to.as_str());
                self.event(at_ms, Some(name), Some(node), epoch, &what, &why, None);
                return CommandOutcome::Applied;
            }
            Report::Score { score } => {
                package.score = *score;
                return CommandOutcome::Applied;
            }
            Report::Restarting { reason } if from == Phase::Running => {
                package.phase = Phase::Starting;
                package.resources.clear();
                reason.clone()
            }
            Report::Restarting { reason } => {
                return rejected(format!(
                    "restarting report for package `{name}` from node `{node}` while {} ({reason}): ignored",
                    from.as_str()
                ));
            }
            Report::StopFailed { reason } => {
                package.phase = Phase::Blocked;
                package.blocked_reason = Some(format!(
                    "stop failed on node {node}: {reason}. The package will not start elsewhere: fence {node} \
                     (configure `clusterctl cluster fence set {node} …`) or stop its resources by hand, then run \
                     `clusterctl pkg cleanup {name}`"
                ));
                package.last_failure =
                    Some(Failure { node: node.to_owned(), resource: None, reason: reason.clone(), at_ms });
                format!("stop failed: {reason}")
            }
            Report::ResourceFailed { resource, reason } => {
                let window = package.def.restart.within.as_millis() as u64;
                let times = package.failures.entry(node.to_owned()).or_default();
                times.retain(|t| at_ms.saturating_sub(*t) <= window);
                times.push(at_ms);
                package.last_failure = Some(Failure {
                    node: node.to_owned(),
                    resource: Some(resource.clone()),
                    reason: reason.clone(),
                    at_ms,
                });
                if !matches!(from, Phase::Starting | Phase::Running) {
                    // Already stopping (or blocked): record the failure, never restart. Turning
                    // `Stopping` back into `Starting` let the owner start again while its
                    // `Stopped` report was in flight (found by the simulation, seed 111).
                    format!("resource {resource} failed ({reason}) while {}", from.as_str())
                } else if package.recent_failures(node, at_ms) > package.def.restart.max as usize {
                    package.banned.insert(node.to_owned());
                    package.stopping_after_failure = true;
                    if relied_on {
                        // Dependents stop first: the ban makes the controller move them, then this
                        // package (an orderly stop, docs/packages.md "Dependencies"); its stop
                        // still ends in `failed`.
                        format!(
                            "resource {resource} failed ({reason}); restart budget exhausted on {node}: relocating \
                             once the packages that depend on it have stopped"
                        )
                    } else {
                        package.phase = Phase::Stopping;
                        format!("resource {resource} failed ({reason}); restart budget exhausted on {node}: relocating")
                    }
                } else {
                    package.restarts += 1;
                    package.phase = Phase::Starting;
                    format!("resource {resource} failed ({reason}); local restart {}", package.restarts)
                }
            }
        };
        if package.phase != from {
            package.since_ms = at_ms;
            let what = format!("{} -> {}", from.as_str(), package.phase.as_str());
            self.event(at_ms, Some(name), Some(node), epoch, &what, &reason, Some(phase_ms));
        }
        self.reap_retired(name, at_ms);
        CommandOutcome::Applied
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        at_ms: u64,
        package: Option<&str>,
        node: Option<&str>,
        epoch: u64,
        what: &str,
        reason: &str,
        phase_ms: Option<u64>,
    ) {
        self.events.push_back(Event {
            seq: self.next_event,
            at_ms,
            package: package.map(str::to_owned),
            node: node.map(str::to_owned),
            epoch,
            what: what.to_owned(),
            reason: reason.to_owned(),
            phase_ms,
        });
        self.next_event += 1;
        while self.events.len() > EVENT_HISTORY {
            self.events.pop_front();
        }
    }

    /// Value of one key.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.kv.get(key)
    }

    /// Keys starting with `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Vec<(String, String)> {
        self.kv
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }
}

/// `instances` in words.
fn describe_instances(instances: Instances) -> String {
    match instances {
        Instances::Count(count) => count.to_string(),
        Instances::All => "\"all\"".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::ResourceStatus;

    fn set(key: &str, value: &str) -> Command {
        Command::KvSet { key: key.into(), value: value.into() }
    }

    #[test]
    fn cas_compares_against_current_value_and_absence() {
        let mut state = ClusterState::default();
        let create = Command::KvCas { key: "a".into(), expected: None, new: "1".into() };
        assert_eq!(state.apply(&create), CommandOutcome::Applied);
        assert_eq!(state.apply(&create), CommandOutcome::CasMismatch { current: Some("1".into()) });
        let swap = Command::KvCas { key: "a".into(), expected: Some("1".into()), new: "2".into() };
        assert_eq!(state.apply(&swap), CommandOutcome::Applied);
        assert_eq!(state.apply(&swap), CommandOutcome::CasMismatch { current: Some("2".into()) });
        assert_eq!(state.get("a").map(String::as_str), Some("2"));
    }

    #[test]
    fn delete_reports_whether_the_key_existed() {
        let mut state = ClusterState::default();
        state.apply(&set("a", "1"));
        assert_eq!(state.apply(&Command::KvDel { key: "a".into() }), CommandOutcome::Deleted { existed: true });
        assert_eq!(state.apply(&Command::KvDel { key: "a".into() }), CommandOutcome::Deleted { existed: false });
    }

    #[test]
    fn list_returns_only_the_prefix_in_order() {
        let mut state = ClusterState::default();
        for key in ["b/2", "a/1", "b/1", "c", "b"] {
            state.apply(&set(key, key));
        }
        let keys: Vec<String> = state.list("b/").into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["b/1", "b/2"]);
        assert_eq!(state.list("").len(), 5);
    }

    #[test]
    fn rejected_setting_leaves_state_unchanged() {
        let mut state = ClusterState::default();
        let before = state.clone();
        let outcome = state.apply(&Command::SetSetting { name: "snapshot_period".into(), value: "x".into() });
        assert!(matches!(outcome, CommandOutcome::Rejected { .. }));
        assert_eq!(state, before);
    }

    fn package(max_restarts: u32) -> cluster_package::PackageDef {
        let text = format!(
            "name = \"web\"\nnodes = [\"n1\", \"n2\"]\nrestart = {{ max = {max_restarts}, within = \"10m\" }}\n\
             [[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"192.0.2.100/24\"\ninterface = \"eth0\"\n"
        );
        cluster_package::parse_package("web.toml", &text).expect("valid package")
    }

    fn assign(state: &mut ClusterState, owner: Option<&str>, phase: Phase) -> CommandOutcome {
        let epoch = state.packages["web"].epoch;
        state.apply(&Command::Assign {
            package: "web".into(),
            expected_epoch: epoch,
            owner: owner.map(str::to_owned),
            phase,
            reason: "test".into(),
            at_ms: 1_000,
        })
    }

    fn report(state: &mut ClusterState, node: &str, report: Report, at_ms: u64) -> CommandOutcome {
        let epoch = state.packages["web"].epoch;
        state.apply(&Command::Report { package: "web".into(), node: node.into(), epoch, report, at_ms })
    }

    #[test]
    fn every_change_of_owner_increments_the_epoch_and_stale_commands_are_refused() {
        let mut state = ClusterState::default();
        state.apply(&Command::PkgApply { def: Arc::new(package(1)), at_ms: 0 });
        assert_eq!(assign(&mut state, Some("n1"), Phase::Starting), CommandOutcome::Applied);
        assert_eq!(state.packages["web"].epoch, 1);
        report(&mut state, "n1", Report::Running { resources: vec![] }, 1_100);
        assert_eq!(state.packages["web"].phase, Phase::Running);
        // Stopping on the same owner keeps the epoch; the next owner gets a new one.
        assign(&mut state, Some("n1"), Phase::Stopping);
        assert_eq!(state.packages["web"].epoch, 1);
        report(&mut state, "n1", Report::Stopped, 1_200);
        assert_eq!((state.packages["web"].owner.clone(), state.packages["web"].phase), (None, Phase::Stopped));
        assign(&mut state, Some("n2"), Phase::Starting);
        assert_eq!(state.packages["web"].epoch, 2);
        // A report of the old owner, or at an old epoch, changes nothing.
        let before = state.clone();
        let stale = Command::Report {
            package: "web".into(),
            node: "n1".into(),
            epoch: 1,
            report: Report::Running { resources: vec![] },
            at_ms: 1_300,
        };
        assert!(matches!(state.apply(&stale), CommandOutcome::Rejected { .. }));
        let stale_assign = Command::Assign {
            package: "web".into(),
            expected_epoch: 1,
            owner: Some("n1".into()),
            phase: Phase::Starting,
            reason: "late".into(),
            at_ms: 1_300,
        };
        assert!(matches!(state.apply(&stale_assign), CommandOutcome::Rejected { .. }));
        assert_eq!(state, before);
    }

    #[test]
    fn failures_restart_locally_until_the_budget_is_spent_then_relocate() {
        let mut state = ClusterState::default();
        state.apply(&Command::PkgApply { def: Arc::new(package(2)), at_ms: 0 });
        assign(&mut state, Some("n1"), Phase::Starting);
        let failed = || Report::ResourceFailed { resource: "vip".into(), reason: "gone".into() };
        for (i, at) in [10_000, 20_000].into_iter().enumerate() {
            report(&mut state, "n1", Report::Running { resources: vec![] }, at - 1);
            report(&mut state, "n1", failed(), at);
            assert_eq!(state.packages["web"].phase, Phase::Starting, "restart {i}");
            assert_eq!(state.packages["web"].restarts, i as u32 + 1);
        }
        report(&mut state, "n1", failed(), 30_000);
        let package = &state.packages["web"];
        assert_eq!(package.phase, Phase::Stopping);
        assert!(package.banned.contains("n1"));
        report(&mut state, "n1", Report::Stopped, 30_100);
        assert_eq!(state.packages["web"].phase, Phase::Failed);
        assert_eq!(state.packages["web"].owner, None);
        // Cleanup forgets the ban.
        state.apply(&Command::PkgCleanup { name: "web".into(), at_ms: 40_000 });
        assert!(state.packages["web"].banned.is_empty());
        assert_eq!(state.packages["web"].phase, Phase::Stopped);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let mut state = ClusterState::default();
        state.apply(&Command::PkgApply { def: Arc::new(package(1)), at_ms: 0 });
        assign(&mut state, Some("n1"), Phase::Starting);
        let failed = Report::ResourceFailed { resource: "vip".into(), reason: "gone".into() };
        report(&mut state, "n1", failed.clone(), 1_000);
        // Eleven minutes later the first failure is outside the 10-minute window.
        report(&mut state, "n1", failed, 1_000 + 11 * 60_000);
        assert_eq!(state.packages["web"].phase, Phase::Starting);
        assert!(state.packages["web"].banned.is_empty());
    }

    #[test]
    fn a_failed_stop_blocks_until_fenced_and_says_how_to_resolve_it() {
        let mut state = ClusterState::default();
        state.apply(&Command::PkgApply { def: Arc::new(package(1)), at_ms: 0 });
        assign(&mut state, Some("n1"), Phase::Starting);
        report(&mut state, "n1", Report::StopFailed { reason: "umount: target is busy".into() }, 2_000);
        let package = &state.packages["web"];
        assert_eq!(package.phase, Phase::Blocked);
        assert!(package.blocked_reason.as_ref().unwrap().contains("clusterctl pkg cleanup web"));
        let epoch = state.packages["web"].epoch;
        let owned = BTreeMap::from([("web".to_owned(), epoch)]);
        state.apply(&Command::NodeFenced { node: "n1".into(), owned, at_ms: 3_000 });
        assert_eq!((state.packages["web"].owner.clone(), state.packages["web"].phase), (None, Phase::Stopped));
    }

    #[test]
    fn operator_commands_check_names_and_nodes() {
        let mut state = ClusterState::default();
        state.apply(&Command::PkgApply { def: Arc::new(package(1)), at_ms: 0 });
        let err = state.apply(&Command::PkgMove { name: "web".into(), to: "n9".into(), at_ms: 1 });
        assert_eq!(err, rejected("node `n9` is not in the nodes list of package `web`"));
        let err = state.apply(&Command::PkgRun { name: "db".into(), node: None, at_ms: 1 });
        assert_eq!(err, rejected("package `db` does not exist"));
        assign(&mut state, Some("n1"), Phase::Starting);
        let err = state.apply(&Command::PkgRemove { name: "web".into(), at_ms: 2 });
        assert!(matches!(err, CommandOutcome::Rejected { reason } if reason.contains("stop it first")));
        report(
            &mut state,
            "n1",
            Report::Running { resources: vec![ResourceStatus { name: "vip".into(), state: "running".into() }] },
            3,
        );
        assert_eq!(state.packages["web"].resources.len(), 1);
    }

    /// Regression (simulation seed 111): a failure reported while the owner was already stopping
    /// turned `stopping` back into `starting`, so the owner restarted while its `Stopped` was in
    /// flight, and that `Stopped` then freed the package for a second node.
    #[test]
    fn resource_failed_while_stopping_keeps_stopping() {
        let mut state = ClusterState::default();
        state.apply(&Command::PkgApply { def: Arc::new(package(3)), at_ms: 0 });
        assign(&mut state, Some("n1"), Phase::Starting);
        report(&mut state, "n1", Report::Running { resources: vec![] }, 10);
        assign(&mut state, Some("n1"), Phase::Stopping);
        let failed = Report::ResourceFailed { resource: "vip".into(), reason: "gone".into() };
        assert_eq!(report(&mut state, "n1", failed, 20), CommandOutcome::Applied);
        assert_eq!(state.packages["web"].phase, Phase::Stopping);
        assert!(state.packages["web"].last_failure.is_some());
    }

    /// Regression (simulation seed 1, lease-only): a `Stopped` sent after a lease lapse, arriving
    /// when the owner had started again at the same epoch, released a running package.
    #[test]
    fn stopped_is_accepted_only_while_stopping() {
        let mut state = ClusterState::default();
        state.apply(&Command::PkgApply { def: Arc::new(package(3)), at_ms: 0 });
        assign(&mut state, Some("n1"), Phase::Starting);
        report(&mut state, "n1", Report::Running { resources: vec![] }, 10);
        let before = state.clone();
        assert!(matches!(report(&mut state, "n1", Report::Stopped, 20), CommandOutcome::Rejected { .. }));
        assert_eq!(state, before);
    }

    /// A fence record releases only the assignments it was decided about.
    #[test]
    fn a_late_fence_record_does_not_release_a_newer_assignment() {
        let mut state = ClusterState::default();
        state.apply(&Command::PkgApply { def: Arc::new(package(3)), at_ms: 0 });
        assign(&mut state, Some("n1"), Phase::Starting);
        let stale = BTreeMap::from([("web".to_owned(), state.packages["web"].epoch - 1)]);
        state.apply(&Command::NodeFenced { node: "n1".into(), owned: stale, at_ms: 5 });
        assert_eq!(state.packages["web"].owner.as_deref(), Some("n1"));
    }

    /// A lease that reached the stop budget and came back is not a failure of the package: restarting
    /// from it is not counted against the restart budget (all nodes lapsing at once under load used
    /// to ban packages from every node after three such rounds: docs/benchmarks-scale.md).
    #[test]
    fn a_restart_after_a_lease_lapse_is_not_a_failure() {
        let mut state = ClusterState::default();
        state.apply(&Command::PkgApply { def: Arc::new(package(1)), at_ms: 0 });
        assign(&mut state, Some("n1"), Phase::Starting);
        for round in 0..5 {
            report(&mut state, "n1", Report::Running { resources: vec![] }, 10 + round);
            let lapsed = Report::Restarting { reason: "lease lapsed".into() };
            assert_eq!(report(&mut state, "n1", lapsed, 20 + round), CommandOutcome::Applied);
            let package = &state.packages["web"];
            assert_eq!((package.phase, package.restarts), (Phase::Starting, 0), "round {round}");
            assert!(package.failures.is_empty() && package.banned.is_empty() && package.last_failure.is_none());
        }
        // Only from running: while starting or stopping it is refused and changes nothing.
        let before = state.clone();
        let lapsed = Report::Restarting { reason: "lease lapsed".into() };
        assert!(matches!(report(&mut state, "n1", lapsed.clone(), 30), CommandOutcome::Rejected { .. }));
        assign(&mut state, Some("n1"), Phase::Stopping);
        let stopping = state.clone();
        assert!(matches!(report(&mut state, "n1", lapsed, 31), CommandOutcome::Rejected { .. }));
        assert_eq!(state, stopping);
        assert_ne!(before, stopping);
    }

    fn process_package(nodes: &str, commands: &[&str]) -> cluster_package::PackageDef {
        let mut text = format!("name = \"web\"\nnodes = [{nodes}]\n");
        for (index, command) in commands.iter().enumerate() {
            text.push_str(&format!(
                "\n[[resource]]\nname = \"r{index}\"\ntype = \"process\"\ncommand = [\"{command}\"]\n"
            ));
        }
        cluster_package::parse_package("web.toml", &text).expect("valid package")
    }

    #[test]
    fn a_redefinition_restarts_a_running_package_only_when_its_resources_changed() {
        let mut state = ClusterState::default();
        let def = process_package("\"n1\", \"n2\"", &["/bin/a", "/bin/b"]);
        state.apply(&Command::PkgApply { def: Arc::new(def.clone()), at_ms: 0 });
        assign(&mut state, Some("n1"), Phase::Starting);
        report(&mut state, "n1", Report::Running { resources: vec![] }, 10);
        // The same definition again: nothing happens, nothing is recorded.
        let before = state.clone();
        state.apply(&Command::PkgApply { def: Arc::new(def.clone()), at_ms: 20 });
        assert_eq!(state, before);
        // Placement only: the definition is replaced, the package keeps running.
        let placed = process_package("\"n2\", \"n1\"", &["/bin/a", "/bin/b"]);
        state.apply(&Command::PkgApply { def: Arc::new(placed.clone()), at_ms: 30 });
        assert_eq!(state.packages["web"].phase, Phase::Running);
        assert_eq!(*state.packages["web"].def, placed);
        assert_eq!(state.events.back().unwrap().reason, "pkg apply: placement or policy only");
        // A resource changed: restart on the same owner at the same epoch, from that resource on.
        let epoch = state.packages["web"].epoch;
        let changed = process_package("\"n2\", \"n1\"", &["/bin/a", "/bin/c"]);
        state.apply(&Command::PkgApply { def: Arc::new(changed), at_ms: 40 });
        let package = &state.packages["web"];
        assert_eq!((package.phase, package.epoch, package.owner.as_deref()), (Phase::Starting, epoch, Some("n1")));
        assert!(package.failures.is_empty() && package.restarts == 0);
        let event = state.events.back().unwrap();
        assert_eq!(event.what, "running -> starting");
        assert_eq!(event.reason, "pkg apply: resources redefined: restarting resource r1 and every later one");
        // A stopped package just gets the new definition.
        let mut stopped = ClusterState::default();
        stopped.apply(&Command::PkgApply { def: Arc::new(def), at_ms: 0 });
        stopped.apply(&Command::PkgApply { def: Arc::new(placed), at_ms: 1 });
        assert_eq!(stopped.packages["web"].phase, Phase::Stopped);
    }

    #[test]
    fn a_leaving_node_takes_nothing_until_it_announces_itself_again() {
        let mut state = ClusterState::default();
        state.apply(&Command::PkgApply { def: Arc::new(package(1)), at_ms: 0 });
        state.apply(&Command::NodeLeave { name: "n2".into(), at_ms: 1 });
        assert!(state.nodes["n2"].leaving);
        let err = state.apply(&Command::PkgMove { name: "web".into(), to: "n2".into(), at_ms: 2 });
        assert_eq!(err, rejected("clusterd on node `n2` is stopped or stopping"));
        state.apply(&Command::NodeHello { name: "n2".into(), watchdog: None, at_ms: 3 });
        assert!(!state.nodes["n2"].leaving);
        assert_eq!(
            state.apply(&Command::PkgMove { name: "web".into(), to: "n2".into(), at_ms: 4 }),
            CommandOutcome::Applied
        );
    }

    #[test]
    fn the_event_history_is_bounded() {
        let mut state = ClusterState::default();
        for i in 0..(EVENT_HISTORY as u64 + 10) {
            state.apply(&Command::NodeStandby { name: "n1".into(), standby: i % 2 == 0, at_ms: i });
        }
        assert_eq!(state.events.len(), EVENT_HISTORY);
        assert_eq!(state.events.front().unwrap().seq, 10);
    }

    /// Regression (issue 11, finding 4): a package frozen on a lease-only node whose clusterd then
    /// stopped keeps running there; unfreezing it must not let the controller reassign it when that
    /// node's lease expires.
    #[test]
    fn unfreezing_a_package_left_running_by_a_stopped_lease_only_daemon_blocks_it() {
        for watchdog in [false, true] {
            let mut state = ClusterState::default();
            state.apply(&Command::PkgApply { def: Arc::new(package(1)), at_ms: 0 });
            state.apply(&Command::NodeHello {
                name: "n1".into(),
                watchdog: watchdog.then(|| "/dev/watchdog".into()),
                at_ms: 0,
            });
            assign(&mut state, Some("n1"), Phase::Starting);
            report(&mut state, "n1", Report::Running { resources: vec![] }, 1);
            state.apply(&Command::PkgFreeze { name: "web".into(), frozen: true, at_ms: 2 });
            state.apply(&Command::NodeLeave { name: "n1".into(), at_ms: 3 });
            state.apply(&Command::PkgFreeze { name: "web".into(), frozen: false, at_ms: 4 });
            let web = &state.packages["web"];
            if watchdog {
                // Its watchdog resets n1 once the lease lapses with the package still active.
                assert_eq!(web.phase, Phase::Running);
            } else {
                assert_eq!(web.phase, Phase::Blocked);
                let reason = web.blocked_reason.as_deref().unwrap();
                assert!(reason.contains("unfrozen while clusterd on n1 is stopped"), "{reason}");
            }
        }
        // A node that announced itself again runs its executor: nothing to block.
        let mut state = ClusterState::default();
        state.apply(&Command::PkgApply { def: Arc::new(package(1)), at_ms: 0 });
        state.apply(&Command::NodeHello { name: "n1".into(), watchdog: None, at_ms: 0 });
        assign(&mut state, Some("n1"), Phase::Starting);
        state.apply(&Command::PkgFreeze { name: "web".into(), frozen: true, at_ms: 2 });
        state.apply(&Command::NodeLeave { name: "n1".into(), at_ms: 3 });
        state.apply(&Command::NodeHello { name: "n1".into(), watchdog: None, at_ms: 4 });
        state.apply(&Command::PkgFreeze { name: "web".into(), frozen: false, at_ms: 5 });
        assert_eq!(state.packages["web"].phase, Phase::Starting);
    }

    /// Regression (issue 11, trap B): `node remove` of an owner left its packages stuck.
    #[test]
    fn a_node_that_owns_packages_may_not_be_removed() {
        let mut state = ClusterState::default();
        state.apply(&Command::PkgApply { def: Arc::new(package(1)), at_ms: 0 });
        assert_eq!(state.removal_refused("n1"), None);
        assign(&mut state, Some("n1"), Phase::Starting);
        let refused = state.removal_refused("n1").expect("refused");
        assert!(refused.starts_with("refusing to remove node `n1`: it owns web (starting)"), "{refused}");
        assert!(refused.contains("clusterctl node standby n1"), "{refused}");
        assert_eq!(state.removal_refused("n2"), None);
        assign(&mut state, Some("n1"), Phase::Stopping);
        report(&mut state, "n1", Report::Stopped, 5);
        assert_eq!(state.removal_refused("n1"), None, "{:?}", state.packages["web"].phase);
    }

    #[test]
    fn a_log_replays_from_the_oldest_version_and_rises_only_by_activation() {
        let mut state = ClusterState::genesis();
        assert_eq!(state.cluster_version, ClusterVersion::V0_1);
        let hook = crate::alerts::AlertHook { events: vec!["failover".into()], timeout_ms: 30_000, recipient: None };
        let set_alert = Command::SetAlert { path: "/usr/lib/hook".into(), hook: Some(hook) };
        let CommandOutcome::Rejected { reason } = state.apply(&set_alert) else { panic!("must be rejected") };
        assert_eq!(reason, "command `SetAlert` needs cluster version 0.2.0, and the cluster runs at 0.1.0");
        assert!(state.alerts.hooks.is_empty());
        let activate = Command::ActivateVersion { version: ClusterVersion::V0_2, at_ms: 9 };
        assert_eq!(state.apply(&activate), CommandOutcome::Applied);
        assert_eq!(state.cluster_version, ClusterVersion::V0_2);
        assert_eq!(state.events.back().unwrap().what, "cluster version 0.1.0 -> 0.2.0");
        assert!(matches!(state.apply(&activate), CommandOutcome::Rejected { .. }), "never twice");
        let newer = Command::ActivateVersion { version: ClusterVersion(3), at_ms: 10 };
        assert!(matches!(state.apply(&newer), CommandOutcome::Rejected { reason } if reason.contains("newer than")));
        assert_eq!(state.apply(&set_alert), CommandOutcome::Applied);
        assert_eq!(ClusterState::default().cluster_version, ClusterVersion::CURRENT);
    }

    /// Members of v0.1.0 and of this release apply the same log to the same state: at cluster
    /// version 1 the commands whose meaning changed since apply as v0.1.0 applied them.
    #[test]
    fn at_cluster_version_1_settings_and_unfreeze_apply_as_v0_1_applied_them() {
        let mut old = ClusterState::genesis();
        let mut new = ClusterState::default();
        for state in [&mut old, &mut new] {
            state.apply(&Command::SetSetting { name: "lease".into(), value: "3s".into() });
            state.apply(&Command::SetSetting { name: "lease".into(), value: "1s".into() });
        }
        assert_eq!(old.settings.grantor_wait_ceiling_us, None, "v0.1.0 kept no ceiling");
        assert!(new.settings.grantor_wait_ceiling_us.is_some());
        // v0.1.0 had no rule tying the stop budget to two heartbeats.
        let budget = Command::SetSetting { name: "stop_budget".into(), value: "150ms".into() };
        assert_eq!(old.apply(&budget), CommandOutcome::Applied);
        assert!(matches!(new.apply(&budget), CommandOutcome::Rejected { .. }));
        // Unfreezing a package left running by a stopped lease-only daemon: v0.1.0 did not block it.
        for state in [&mut old, &mut new] {
            state.apply(&Command::PkgApply { def: Arc::new(package(1)), at_ms: 0 });
            state.apply(&Command::NodeHello { name: "n1".into(), watchdog: None, at_ms: 0 });
            assign(state, Some("n1"), Phase::Starting);
            report(state, "n1", Report::Running { resources: vec![] }, 1);
            state.apply(&Command::PkgFreeze { name: "web".into(), frozen: true, at_ms: 2 });
            state.apply(&Command::NodeLeave { name: "n1".into(), at_ms: 3 });
            state.apply(&Command::PkgFreeze { name: "web".into(), frozen: false, at_ms: 4 });
        }
        assert_eq!(old.packages["web"].phase, Phase::Running);
        assert_eq!(new.packages["web"].phase, Phase::Blocked);
    }

    // ---- relations (issue 13) ----

    fn related(name: &str, extra: &str) -> cluster_package::PackageDef {
        let text = format!(
            "name = \"{name}\"\n{extra}\n[[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"192.0.2.1/24\"\ninterface = \"eth0\"\n"
        );
        cluster_package::parse_package("p.toml", &text).expect("valid package")
    }

    fn apply_def(state: &mut ClusterState, def: cluster_package::PackageDef) -> CommandOutcome {
        state.apply(&Command::PkgApply { def: Arc::new(def), at_ms: 10 })
    }

    fn place(state: &mut ClusterState, key: &str, node: &str) -> CommandOutcome {
        let epoch = state.packages[key].epoch;
        state.apply(&Command::Assign {
            package: key.into(),
            expected_epoch: epoch,
            owner: Some(node.into()),
            phase: Phase::Starting,
            reason: "test".into(),
            at_ms: 20,
        })
    }

    fn report_on(state: &mut ClusterState, key: &str, report: Report) -> CommandOutcome {
        let package = &state.packages[key];
        let (node, epoch) = (package.owner.clone().expect("an owner"), package.epoch);
        state.apply(&Command::Report { package: key.into(), node, epoch, report, at_ms: 30 })
    }

    fn run_on(state: &mut ClusterState, key: &str, node: &str) {
        assert_eq!(place(state, key, node), CommandOutcome::Applied);
        assert_eq!(report_on(state, key, Report::Running { resources: vec![] }), CommandOutcome::Applied);
    }

    fn refusal(outcome: CommandOutcome) -> String {
        match outcome {
            CommandOutcome::Rejected { reason } => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn pkg_apply_refuses_a_dependency_on_a_missing_package_and_a_cycle_naming_them() {
        let mut state = ClusterState::default();
        let app = related("app", "depends = [{ package = \"db\", where = \"same-node\" }]");
        assert_eq!(
            refusal(apply_def(&mut state, app.clone())),
            "package `app` refused: package `app` depends on `db`, which is not defined"
        );
        assert!(state.packages.is_empty());
        assert_eq!(apply_def(&mut state, related("db", "")), CommandOutcome::Applied);
        assert_eq!(apply_def(&mut state, app), CommandOutcome::Applied);
        let cyclic = related("db", "depends = [{ package = \"app\", where = \"any-node\" }]");
        assert_eq!(refusal(apply_def(&mut state, cyclic)), "package `db` refused: dependency cycle: app -> db -> app");
        assert!(state.packages["db"].def.depends.is_empty(), "nothing changed");
        // A package others depend on is not removed.
        assert_eq!(
            refusal(state.apply(&Command::PkgRemove { name: "db".into(), at_ms: 40 })),
            "package `db` is needed by `app` (`depends`): remove them, or apply them without the dependency, first"
        );
    }

    #[test]
    fn instances_are_added_retired_and_reshaped_only_when_stopped() {
        let mut state = ClusterState::default();
        apply_def(&mut state, related("db", "instances = 2"));
        assert_eq!(state.keys_named("db"), ["db:0", "db:1"]);
        run_on(&mut state, "db:0", "n1");
        run_on(&mut state, "db:1", "n2");
        // Operator commands by package name reach every instance.
        state.apply(&Command::PkgFreeze { name: "db".into(), frozen: true, at_ms: 31 });
        assert!(state.instances("db").all(|(_, package)| package.frozen));
        state.apply(&Command::PkgFreeze { name: "db".into(), frozen: false, at_ms: 32 });
        // One more: a new instance, taking the siblings' desired state.
        apply_def(&mut state, related("db", "instances = 3"));
        assert_eq!(state.keys_named("db"), ["db:0", "db:1", "db:2"]);
        assert_eq!(state.packages["db:2"].desired, Desired::Running);
        // Two again: db:2, stopped, goes at once.
        apply_def(&mut state, related("db", "instances = 2"));
        assert_eq!(state.keys_named("db"), ["db:0", "db:1"]);
        // From 2 to 1 changes the keys: refused while instances may be active.
        let reason = refusal(apply_def(&mut state, related("db", "")));
        assert!(reason.contains("stop it first") && reason.contains("from 2 to 1"), "{reason}");
        // Stopped everywhere, the package may become a single-instance one.
        state.apply(&Command::PkgStop { name: "db".into(), at_ms: 40 });
        for key in ["db:0", "db:1"] {
            let node = state.packages[key].owner.clone().unwrap();
            let epoch = state.packages[key].epoch;
            state.apply(&Command::Assign {
                package: key.into(),
                expected_epoch: epoch,
                owner: Some(node),
                phase: Phase::Stopping,
                reason: "test".into(),
                at_ms: 41,
            });
            report_on(&mut state, key, Report::Stopped);
        }
        assert_eq!(apply_def(&mut state, related("db", "")), CommandOutcome::Applied);
        assert_eq!(state.keys_named("db"), ["db"]);
    }

    #[test]
    fn a_running_instance_beyond_the_count_stops_then_goes() {
        let mut state = ClusterState::default();
        apply_def(&mut state, related("db", "instances = 3"));
        run_on(&mut state, "db:2", "n3");
        apply_def(&mut state, related("db", "instances = 2"));
        let retired = &state.packages["db:2"];
        assert!(retired.retired && retired.desired == Desired::Stopped);
        let epoch = retired.epoch;
        state.apply(&Command::Assign {
            package: "db:2".into(),
            expected_epoch: epoch,
            owner: Some("n3".into()),
            phase: Phase::Stopping,
            reason: "test".into(),
            at_ms: 50,
        });
        report_on(&mut state, "db:2", Report::Stopped);
        assert!(!state.packages.contains_key("db:2"));
    }

    #[test]
    fn instances_on_every_node_follow_the_nodes_that_announce_themselves() {
        let mut state = ClusterState::default();
        state.apply(&Command::NodeHello { name: "n1".into(), watchdog: None, at_ms: 0 });
        apply_def(&mut state, related("agent", "instances = \"all\""));
        assert_eq!(state.keys_named("agent"), ["agent:n1"]);
        state.apply(&Command::NodeHello { name: "n2".into(), watchdog: None, at_ms: 1 });
        assert_eq!(state.keys_named("agent"), ["agent:n1", "agent:n2"]);
        // An instance is bound to its node.
        assert_eq!(
            refusal(place(&mut state, "agent:n1", "n2")),
            "refusing to place package `agent:n1` on node `n2`: instance bound to node n1"
        );
        assert_eq!(
            refusal(state.apply(&Command::PkgMove { name: "agent".into(), to: "n2".into(), at_ms: 2 })),
            "package `agent` has 2 instances: name the one to place, e.g. `agent:n1`"
        );
    }

    #[test]
    fn the_state_machine_refuses_an_assignment_that_breaks_a_relation() {
        let mut state = ClusterState::default();
        state.apply(&Command::NodeCapacity {
            name: "n3".into(),
            capacity: BTreeMap::from([("slots".into(), 1)]),
            at_ms: 0,
        });
        apply_def(&mut state, related("db", "instances = 2\nneeds = { slots = 1 }"));
        apply_def(&mut state, related("app", "depends = [{ package = \"db\", where = \"same-node\" }]"));
        apply_def(&mut state, related("batch", "depends = [{ package = \"db\", where = \"different-node\" }]"));
        // A dependent is not started before what it depends on runs where it must.
        assert_eq!(
            refusal(place(&mut state, "app", "n1")),
            "refusing to place package `app` on node `n1`: depends on db (same-node), which is not running"
        );
        run_on(&mut state, "db:0", "n1");
        assert_eq!(
            refusal(place(&mut state, "db:1", "n1")),
            "refusing to place package `db:1` on node `n1`: instance db:0 of db is there"
        );
        assert_eq!(
            refusal(place(&mut state, "batch", "n1")),
            "refusing to place package `batch` on node `n1`: db:0 is there, and batch must not share a node with db"
        );
        run_on(&mut state, "batch", "n3");
        assert_eq!(
            refusal(place(&mut state, "db:1", "n3")),
            "refusing to place package `db:1` on node `n3`: batch is there, and db must not share a node with batch"
        );
        run_on(&mut state, "app", "n1");
        // Capacity: n3 has one slot.
        apply_def(&mut state, related("other", "needs = { slots = 1 }"));
        state.apply(&Command::NodeCapacity {
            name: "n2".into(),
            capacity: BTreeMap::from([("slots".into(), 1)]),
            at_ms: 1,
        });
        run_on(&mut state, "db:1", "n2");
        let before = state.clone();
        assert_eq!(
            refusal(place(&mut state, "other", "n2")),
            "refusing to place package `other` on node `n2`: not enough slots: needs 1, 0 free of 1"
        );
        assert_eq!(state, before, "a refused assignment changes nothing");
        // An orderly stop of db:0 waits for app, which needs it on n1.
        let epoch = state.packages["db:0"].epoch;
        let stop = Command::Assign {
            package: "db:0".into(),
            expected_epoch: epoch,
            owner: Some("n1".into()),
            phase: Phase::Stopping,
            reason: "test".into(),
            at_ms: 40,
        };
        assert_eq!(
            refusal(state.apply(&stop)),
            "refusing to stop package `db:0` on node `n1`: app depend on it and must stop first"
        );
    }

    #[test]
    fn at_most_primaries_instances_may_be_promoted_and_a_new_owner_starts_as_a_replica() {
        let mut state = ClusterState::default();
        apply_def(
            &mut state,
            related("db", "instances = 3\npromotable = { primaries = 1, primary_only = [\"extra\"] }\n[[resource]]\nname = \"extra\"\ntype = \"ip\"\naddress = \"192.0.2.2/24\"\ninterface = \"eth0\""),
        );
        run_on(&mut state, "db:0", "n1");
        run_on(&mut state, "db:1", "n2");
        let promote = |state: &mut ClusterState, key: &str| {
            let epoch = state.packages[key].epoch;
            state.apply(&Command::SetRole {
                package: key.into(),
                expected_epoch: epoch,
                role: Role::Promoting,
                reason: "test".into(),
                at_ms: 60,
            })
        };
        assert_eq!(refusal(promote(&mut state, "db:2")), "package `db:2` cannot be promoted while stopped as replica");
        assert_eq!(promote(&mut state, "db:0"), CommandOutcome::Applied);
        assert_eq!(
            refusal(promote(&mut state, "db:1")),
            "package `db` has 1 of 1 primaries already: `db:1` is not promoted"
        );
        // Only from promoting: a late or stray report changes nothing.
        assert!(matches!(report_on(&mut state, "db:1", Report::Promoted), CommandOutcome::Rejected { .. }));
        assert_eq!(report_on(&mut state, "db:0", Report::Promoted), CommandOutcome::Applied);
        assert_eq!(state.packages["db:0"].role, Role::Primary);
        assert_eq!(report_on(&mut state, "db:0", Report::Score { score: Some(10) }), CommandOutcome::Applied);
        assert_eq!(state.packages["db:0"].score, Some(10));
        // Its own report of a demotion frees the role.
        let demoted = Report::Demoted { reason: "test".into() };
        assert_eq!(report_on(&mut state, "db:0", demoted), CommandOutcome::Applied);
        assert_eq!(state.packages["db:0"].role, Role::Replica);
        assert_eq!(promote(&mut state, "db:1"), CommandOutcome::Applied);
        // A new owner (the old one's lease expired) starts as a replica: the role is free again.
        let epoch = state.packages["db:1"].epoch;
        state.apply(&Command::Assign {
            package: "db:1".into(),
            expected_epoch: epoch,
            owner: Some("n3".into()),
            phase: Phase::Starting,
            reason: "test".into(),
            at_ms: 70,
        });
        let moved = &state.packages["db:1"];
        assert_eq!((moved.role, moved.score, moved.epoch), (Role::Replica, None, epoch + 1));
        assert_eq!(promote(&mut state, "db:0"), CommandOutcome::Applied);
    }
}
