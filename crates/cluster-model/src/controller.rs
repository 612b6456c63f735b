//! The controller's placement logic: a pure function of the replicated state and the leader's view
//! of node leases. It runs on the leader; `clusterctl pkg plan` runs the same code to explain it.
//!
//! ```text
//!  ClusterState + View (lease of every node: alive / unknown / expired) ──plan──> [Action]
//!     Action::Propose(Assign …)   an ownership or phase change, conditional on the epoch seen
//!     Action::Fence { node }      power a node off before its packages may move
//! ```
//!
//! Safety rules (docs/safety.md): a package moves away from a node that is still alive only through
//! `Stopping` and the owner's own `Stopped` report; it moves away from a node whose lease has not
//! certainly expired never; from an expired node only when the node is covered by a watchdog or
//! declared lease-only, or after a fence confirmed it is off.

use std::collections::{BTreeMap, BTreeSet};

use cluster_package::{Failback, Failover, Location, NodeName};

use crate::package::{Desired, PackageState, Phase, Role};
use crate::{relations, ClusterState, Command};

/// The leader's knowledge of one node's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The node renewed its lease recently: it can take packages.
    Alive,
    /// Not heard yet by this leader, and its lease may still be running: wait.
    Unknown,
    /// Its lease has certainly ended (drift bound and margin included).
    Expired,
}

/// What the controller knows beyond the replicated state (leader-local, soft).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Every member node and its lease.
    pub nodes: BTreeMap<String, Liveness>,
    /// Owners of packages that are no longer members, and their lease: they take no package, and
    /// what they own moves once their lease expired, under their protection's rules.
    pub departed: BTreeMap<String, Liveness>,
    /// Nodes a fence is running against.
    pub fencing: BTreeSet<String>,
}

/// What the controller wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Propose(Command),
    Fence { node: String, reason: String },
}

/// How a node protects the cluster against its own pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    Watchdog,
    Fencing,
    /// Neither: safe against crashes and partitions, not against pauses.
    LeaseOnly,
}

impl Protection {
    pub fn as_str(self) -> &'static str {
        match self {
            Protection::Watchdog => "watchdog",
            Protection::Fencing => "fencing",
            Protection::LeaseOnly => "lease-only",
        }
    }
}

/// The protection of `node`: a watchdog wins, then a fence device, else lease-only.
pub fn protection(state: &ClusterState, node: &str) -> Protection {
    if state.nodes.get(node).is_some_and(|record| record.watchdog) {
        Protection::Watchdog
    } else if state.settings.fencing.contains_key(node) {
        Protection::Fencing
    } else {
        Protection::LeaseOnly
    }
}

struct Planner<'a> {
    state: &'a ClusterState,
    view: &'a View,
    now_ms: u64,
    /// Packages each node holds or is about to hold (least-loaded placement).
    load: BTreeMap<&'a str, usize>,
    /// This plan laid over the state: where it places instances, which it takes away from their
    /// owner, which must leave their node (and why), which it decided anything about.
    placed: BTreeMap<&'a str, &'a str>,
    released: BTreeSet<&'a str>,
    leaving: BTreeMap<&'a str, String>,
    decided: BTreeSet<&'a str>,
    /// Packages with a `different-node` dependency on each package name (index of the state).
    avoided_by: BTreeMap<&'a str, Vec<&'a str>>,
    /// Packages with a dependency on each package name (index of the state).
    dependents: BTreeMap<&'a str, Vec<&'a str>>,
    /// Capacity in use per node, with this plan's placements (only nodes that declare capacities).
    used: BTreeMap<&'a str, BTreeMap<String, u64>>,
}

impl relations::Occupancy for Planner<'_> {
    fn occupies<'s>(&'s self, key: &str, package: &'s PackageState) -> Option<&'s str> {
        if let Some(node) = self.placed.get(key) {
            return Some(node);
        }
        if self.released.contains(key) {
            return None;
        }
        package.occupies()
    }

    /// Runs there and stays: not placed or released by this plan, not leaving, its owner not expired.
    fn runs_on<'s>(&'s self, key: &str, package: &'s PackageState) -> Option<&'s str> {
        if self.placed.contains_key(key) || self.released.contains(key) || self.leaving.contains_key(key) {
            return None;
        }
        package.running_on().filter(|owner| self.liveness(owner) != Liveness::Expired)
    }

    fn avoided_by<'s>(&'s self, _state: &'s ClusterState, name: &str) -> Vec<&'s str> {
        self.avoided_by.get(name).cloned().unwrap_or_default()
    }

    fn used_on(&self, _state: &ClusterState, node: &str, _except: &str) -> BTreeMap<String, u64> {
        self.used.get(node).cloned().unwrap_or_default()
    }

    fn dependents_of<'s>(&'s self, _state: &'s ClusterState, name: &str) -> Vec<&'s str> {
        self.dependents.get(name).cloned().unwrap_or_default()
    }
}

// The planner runs on the leader every controller tick over every package: the common cases (a package
// running on its most preferred node, nothing to do) allocate nothing; strings are built only for the
// decisions and explanations that carry them. Relations cost only for the packages that have them.
impl<'a> Planner<'a> {
    fn new(state: &'a ClusterState, view: &'a View, now_ms: u64) -> Planner<'a> {
        let mut load = BTreeMap::new();
        let mut avoided_by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut used: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
        for (node, record) in &state.nodes {
            if !record.capacity.is_empty() {
                used.insert(node.as_str(), BTreeMap::new());
            }
        }
        for package in state.packages.values() {
            if let Some(owner) = package.occupies() {
                *load.entry(owner).or_insert(0) += 1;
                if let Some(in_use) = used.get_mut(owner) {
                    for (capacity, need) in &package.def.needs {
                        *in_use.entry(capacity.clone()).or_insert(0) += need;
                    }
                }
            }
            for dependency in &package.def.depends {
                let list = dependents.entry(dependency.package.as_str()).or_default();
                if !list.contains(&package.def.name.as_str()) {
                    list.push(package.def.name.as_str());
                }
                if dependency.location == Location::DifferentNode {
                    let list = avoided_by.entry(dependency.package.as_str()).or_default();
                    if !list.contains(&package.def.name.as_str()) {
                        list.push(package.def.name.as_str());
                    }
                }
            }
        }
        Planner {
            state,
            view,
            now_ms,
            load,
            placed: BTreeMap::new(),
            released: BTreeSet::new(),
            leaving: BTreeMap::new(),
            decided: BTreeSet::new(),
            avoided_by,
            dependents,
            used,
        }
    }

    fn liveness(&self, node: &str) -> Liveness {
        self.view.nodes.get(node).or_else(|| self.view.departed.get(node)).copied().unwrap_or(Liveness::Unknown)
    }

    /// Nodes the package may run on, in preference order (an instance bound to a node: that node).
    fn preference(&self, key: &'a str, package: &'a PackageState) -> Vec<&'a str> {
        if let Some(node) = relations::bound_node(package, key) {
            return vec![node];
        }
        if package.def.nodes.is_empty() {
            self.view.nodes.keys().map(String::as_str).collect()
        } else {
            package.def.nodes.iter().map(NodeName::as_str).collect()
        }
    }

    /// The first node of the preference order.
    fn most_preferred(&self, key: &'a str, package: &'a PackageState) -> Option<&'a str> {
        if let Some(node) = relations::bound_node(package, key) {
            return Some(node);
        }
        if package.def.nodes.is_empty() {
            self.view.nodes.keys().next().map(String::as_str)
        } else {
            package.def.nodes.first().map(NodeName::as_str)
        }
    }

    /// Whether `node` cannot take `package` whatever its lease (see `static_exclusion`).
    fn statically_excluded(&self, key: &str, package: &PackageState, node: &str) -> bool {
        (!package.def.nodes.is_empty() && !package.def.nodes.iter().any(|n| n == node))
            || relations::bound_node(package, key).is_some_and(|bound| bound != node)
            || !self.view.nodes.contains_key(node)
            || package.banned.contains(node)
            || self.state.nodes.get(node).is_some_and(|record| record.standby || record.leaving)
            || self.state.witnesses.contains(node)
    }

    /// Why `node` cannot take `package` whatever its lease, or `None`.
    fn static_exclusion(&self, key: &str, package: &PackageState, node: &str) -> Option<String> {
        if !self.statically_excluded(key, package, node) {
            return None;
        }
        if !package.def.nodes.is_empty() && !package.def.nodes.iter().any(|n| n == node) {
            return Some("not in the package's nodes list".into());
        }
        if let Some(bound) = relations::bound_node(package, key).filter(|bound| *bound != node) {
            return Some(format!("instance of node {bound}"));
        }
        if !self.view.nodes.contains_key(node) {
            return Some("not a member of the cluster".into());
        }
        if package.banned.contains(node) {
            return Some("failed beyond its restart budget here (pkg cleanup clears it)".into());
        }
        if self.state.nodes.get(node).is_some_and(|record| record.standby) {
            return Some("in standby".into());
        }
        if self.state.witnesses.contains(node) {
            return Some("is a witness (it never hosts packages)".into());
        }
        Some("has clusterd stopping or stopped".into())
    }

    /// Why the relations of `package` keep it off `node` now (an instance of it, a package it must not
    /// share a node with, an unmet dependency, not enough capacity), or `None`.
    fn relation_exclusion(&self, key: &str, package: &PackageState, node: &str) -> Option<String> {
        if !self.has_relations(package) {
            return None;
        }
        relations::placement_refusal(self.state, self, key, &package.def, node)
    }

    /// Whether anything but the node lists and leases can keep `package` off a node.
    fn has_relations(&self, package: &PackageState) -> bool {
        let def = &package.def;
        def.multi_instance()
            || !def.depends.is_empty()
            || (!def.needs.is_empty() && !self.used.is_empty())
            || self.avoided_by.contains_key(def.name.as_str())
    }

    /// Whether `node` cannot take `package` now (see `exclusion`).
    fn excluded(&self, key: &str, package: &PackageState, node: &str) -> bool {
        self.statically_excluded(key, package, node)
            || self.liveness(node) != Liveness::Alive
            || self.relation_exclusion(key, package, node).is_some()
    }

    /// Why `node` cannot take `package` now, or `None` if it can.
    fn exclusion(&self, key: &str, package: &PackageState, node: &str) -> Option<String> {
        self.static_exclusion(key, package, node)
            .or_else(|| match self.liveness(node) {
                Liveness::Alive => None,
                Liveness::Unknown => Some("lease not confirmed by this leader yet".into()),
                Liveness::Expired => Some("lease expired (node unreachable)".into()),
            })
            .or_else(|| self.relation_exclusion(key, package, node))
    }

    /// The node the package should go to, excluding `avoid`.
    fn choose(&self, key: &'a str, package: &'a PackageState, avoid: Option<&str>) -> Option<&'a str> {
        if let Some(target) = &package.target {
            if Some(target.as_str()) != avoid && !self.excluded(key, package, target) {
                return Some(target.as_str());
            }
            // A requested node whose lease this leader has not confirmed yet (it was just elected)
            // is waited for, a heartbeat or two, rather than passed over for another.
            if Some(target.as_str()) != avoid
                && self.liveness(target) == Liveness::Unknown
                && !self.statically_excluded(key, package, target)
            {
                return None;
            }
        }
        let preference = self.preference(key, package);
        let eligible = |node: &&'a str| Some(*node) != avoid && !self.excluded(key, package, node);
        // A node that is only "unknown" (a new leader has not heard it yet) may be fine a heartbeat
        // later: do not pass over a more preferred node for that, wait for its lease to be known.
        let undecided = |node: &&'a str| {
            Some(*node) != avoid
                && self.liveness(node) == Liveness::Unknown
                && !self.statically_excluded(key, package, node)
        };
        match package.def.failover {
            Failover::Ordered => {
                let rank = preference.iter().position(eligible)?;
                if preference.iter().take(rank).any(undecided) {
                    return None;
                }
                Some(preference[rank])
            }
            Failover::LeastLoaded => preference
                .iter()
                .copied()
                .filter(eligible)
                .enumerate()
                .min_by_key(|(rank, node)| (self.load.get(node).copied().unwrap_or(0), *rank))
                .map(|(_, node)| node),
        }
    }

    /// Whether a node other than `avoid` could take `package` but its lease is not known yet.
    fn undecided_node(&self, key: &'a str, package: &'a PackageState, avoid: &str) -> bool {
        self.preference(key, package).into_iter().any(|node| {
            node != avoid && self.liveness(node) == Liveness::Unknown && !self.statically_excluded(key, package, node)
        })
    }

    fn assign(
        &mut self,
        key: &'a str,
        package: &PackageState,
        owner: Option<&'a str>,
        phase: Phase,
        reason: String,
    ) -> Action {
        self.decided.insert(key);
        if package.owner.as_deref() != owner {
            self.released.insert(key);
        }
        if let (Some(node), true) = (owner, phase == Phase::Starting) {
            if package.owner.as_deref() != Some(node) {
                *self.load.entry(node).or_insert(0) += 1;
                self.placed.insert(key, node);
                if let Some(in_use) = self.used.get_mut(node) {
                    for (capacity, need) in &package.def.needs {
                        *in_use.entry(capacity.clone()).or_insert(0) += need;
                    }
                }
            }
        }
        Action::Propose(Command::Assign {
            package: key.to_owned(),
            expected_epoch: package.epoch,
            owner: owner.map(str::to_owned),
            phase,
            reason,
            at_ms: self.now_ms,
        })
    }

    /// Why a running package should leave its live owner by policy, if it should (relations aside).
    fn reason_to_leave(&self, key: &'a str, package: &'a PackageState, owner: &str) -> Option<String> {
        if package.desired == Desired::Stopped {
            return Some(if package.retired { "instance beyond `instances`".into() } else { "stop requested".into() });
        }
        if let Some(why) = self.static_exclusion(key, package, owner).or_else(|| match self.liveness(owner) {
            Liveness::Alive => None,
            Liveness::Unknown => Some("lease not confirmed by this leader yet".into()),
            Liveness::Expired => Some("lease expired (node unreachable)".into()),
        }) {
            return Some(format!("node {owner} {why}"));
        }
        if let Some(target) = package.target.as_deref().filter(|t| *t != owner) {
            if !self.excluded(key, package, target) {
                return Some(format!("move to {target} requested"));
            }
        }
        // On its most preferred node already: no node can be more preferred.
        if package.def.failback == Failback::Auto
            && package.phase == Phase::Running
            && self.most_preferred(key, package) != Some(owner)
        {
            // Fail back only to the node placement would choose now, and only if it is more
            // preferred than the owner: with least-loaded placement, moving to the first node of
            // the list and placing back on the least loaded one flapped forever (simulation, seed 47).
            let preference = self.preference(key, package);
            let rank = |node: &str| preference.iter().position(|n| *n == node).unwrap_or(usize::MAX);
            if let Some(better) = self.choose(key, package, None).filter(|node| rank(node) < rank(owner)) {
                return Some(format!("failback to {better}, which is preferred"));
            }
        }
        None
    }

    /// Why a running package must leave its node because of its relations: a dependency no longer
    /// met there (what it needs stopped, moves or leaves), or a package it must not share a node with.
    fn relation_reason_to_leave(&self, package: &'a PackageState, owner: &str) -> Option<String> {
        for dependency in &package.def.depends {
            if dependency.location == Location::DifferentNode {
                let shared = self.state.instances(&dependency.package).find(|(other, other_package)| {
                    relations::Occupancy::occupies(self, other, other_package) == Some(owner)
                });
                if let Some((other, _)) = shared {
                    return Some(format!("must not share node {owner} with {other} (different-node)"));
                }
            }
            if let Some(why) = relations::dependency_unmet(self.state, self, dependency, owner) {
                // Unmet because what it depends on leaves (moved, stopped, drained): say so.
                let leaving = self.state.instances(&dependency.package).find_map(|(other, other_package)| {
                    let node = other_package.running_on()?;
                    self.leaving.get(other.as_str()).map(|reason| (other, node, reason))
                });
                return Some(match leaving {
                    Some((other, node, reason)) => format!(
                        "depends on {} ({}); {other} leaves {node} ({reason})",
                        dependency.package,
                        dependency.location.as_str()
                    ),
                    None => why,
                });
            }
        }
        None
    }

    /// Fills `leaving`: the packages on live owners that must stop there, by policy, then by their
    /// relations until nothing changes (a dependent of a leaving package leaves too).
    fn plan_leaving(&mut self) {
        let state = self.state;
        let staying = |planner: &Planner<'a>, key: &str, package: &PackageState| {
            !package.frozen
                && matches!(package.phase, Phase::Starting | Phase::Running)
                && package.owner.as_deref().is_some_and(|owner| planner.liveness(owner) == Liveness::Alive)
                && !planner.leaving.contains_key(key)
        };
        for (key, package) in &state.packages {
            if !staying(self, key, package) {
                continue;
            }
            let owner = package.owner.as_deref().expect("an owner");
            if let Some(reason) = self.reason_to_leave(key, package, owner) {
                self.leaving.insert(key.as_str(), reason);
            }
        }
        let related: Vec<(&'a String, &'a PackageState)> = state
            .packages
            .iter()
            .filter(|(_, package)| {
                !package.def.depends.is_empty() || self.avoided_by.contains_key(package.def.name.as_str())
            })
            .collect();
        loop {
            let mut changed = false;
            for (key, package) in &related {
                if !staying(self, key, package) {
                    continue;
                }
                let owner = package.owner.as_deref().expect("an owner");
                if let Some(reason) = self.relation_reason_to_leave(package, owner) {
                    self.leaving.insert(key.as_str(), reason);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// The instances of other packages that still need `key` where it is (they depend on it, and no
    /// other instance of it would do): they stop before it leaves.
    fn dependents_relying<'s>(&'s self, key: &str, package: &PackageState, owner: &str) -> Vec<&'s str> {
        relations::dependents_relying(self.state, self, key, package, owner)
    }

    fn plan_package(&mut self, key: &'a str, package: &'a PackageState, actions: &mut Vec<Action>) {
        if package.frozen || self.decided.contains(key) {
            return;
        }
        if let Some(owner) = package.owner.as_deref() {
            let liveness = self.liveness(owner);
            if package.phase == Phase::Blocked || liveness == Liveness::Expired {
                // The owner can no longer be trusted to stop: its lease must have ended under a
                // watchdog or in declared lease-only mode, or a fence must confirm it is off.
                let protection = protection(self.state, owner);
                let fence_first = package.phase == Phase::Blocked || protection == Protection::Fencing;
                if fence_first {
                    if self.state.settings.fencing.contains_key(owner) && !self.view.fencing.contains(owner) {
                        let reason = if package.phase == Phase::Blocked {
                            format!("stop of package {key} failed on {owner}")
                        } else {
                            format!("node {owner} lost its lease and has no watchdog")
                        };
                        actions.push(Action::Fence { node: owner.to_owned(), reason });
                    }
                    return;
                }
                // Released now: what depended on it sees it gone, in this plan too.
                self.released.insert(key);
                let wanted = package.desired == Desired::Running && !package.retired;
                let next = if wanted { self.choose(key, package, Some(owner)) } else { None };
                if next.is_none() && wanted && self.undecided_node(key, package, owner) {
                    // A node that may take it is only "unknown" (a new leader has not heard it
                    // yet): wait for its lease rather than commit "stopped" now and place the
                    // package one plan later (one more Raft round on the failover's path).
                    self.released.remove(key);
                    return;
                }
                let phase = if next.is_some() { Phase::Starting } else { Phase::Stopped };
                let reason = format!("node {owner} lost its lease ({})", protection.as_str());
                actions.push(self.assign(key, package, next, phase, reason));
                return;
            }
            if liveness == Liveness::Unknown {
                return;
            }
            if matches!(package.phase, Phase::Starting | Phase::Running) {
                if let Some(reason) = self.leaving.get(key).cloned() {
                    // What depends on it here stops first (it leaves too: see `plan_leaving`).
                    if self.dependents_relying(key, package, owner).is_empty() {
                        actions.push(self.assign(key, package, Some(owner), Phase::Stopping, reason));
                    }
                }
            }
            return;
        }
        if package.desired == Desired::Running && package.phase != Phase::Blocked && !package.retired {
            if let Some(node) = self.choose(key, package, None) {
                let reason = match &package.target {
                    Some(target) if *target == node => format!("placed on {node} as requested"),
                    _ => format!("placed on {node} ({})", failover_word(package)),
                };
                actions.push(self.assign(key, package, Some(node), Phase::Starting, reason));
            }
        }
    }

    /// Promotes replicas of promotable packages while fewer than `primaries` instances may be
    /// promoted (instances released by this plan no longer count), the highest promotion score first;
    /// demotes the lowest beyond `primaries` (after a redefinition lowered it).
    fn plan_roles(&mut self, actions: &mut Vec<Action>) {
        let state = self.state;
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for package in state.packages.values() {
            let Some(promotable) = &package.def.promotable else { continue };
            if !seen.insert(package.def.name.as_str()) {
                continue;
            }
            let name = package.def.name.as_str();
            let instances: Vec<(&'a String, &'a PackageState)> = state.instances(name).collect();
            let counted =
                |key: &str, instance: &PackageState| instance.role.may_be_primary() && !self.released.contains(key);
            let promoted = instances.iter().filter(|(key, instance)| counted(key, instance)).count();
            let wanted = promotable.primaries as usize;
            if promoted < wanted {
                let mut candidates: Vec<(i64, usize, &'a String, &'a PackageState)> = instances
                    .iter()
                    .filter(|(key, instance)| self.promotable_now(key, instance))
                    .map(|(key, instance)| {
                        let owner = instance.owner.as_deref().expect("a running instance has an owner");
                        let rank = self.preference(key, instance).iter().position(|node| *node == owner);
                        (instance.score.unwrap_or(0), rank.unwrap_or(usize::MAX), *key, *instance)
                    })
                    .collect();
                candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(b.2)));
                for (score, _, key, instance) in candidates.into_iter().take(wanted - promoted) {
                    let owner = instance.owner.as_deref().unwrap_or("no node");
                    let reason = match instance.score {
                        Some(_) => format!("promoted on {owner} ({promoted} of {wanted} primaries; score {score})"),
                        None => format!("promoted on {owner} ({promoted} of {wanted} primaries)"),
                    };
                    actions.push(self.set_role(key, instance, Role::Promoting, reason));
                }
            } else if promoted > wanted {
                let mut extra: Vec<(i64, &'a String, &'a PackageState)> = instances
                    .iter()
                    .filter(|(key, instance)| {
                        matches!(instance.role, Role::Promoting | Role::Primary)
                            && !self.released.contains(key.as_str())
                            && !self.decided.contains(key.as_str())
                    })
                    .map(|(key, instance)| (instance.score.unwrap_or(0), *key, *instance))
                    .collect();
                extra.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)));
                for (_, key, instance) in extra.into_iter().take(promoted - wanted) {
                    let reason = format!("{promoted} primaries, {wanted} wanted");
                    actions.push(self.set_role(key, instance, Role::Demoting, reason));
                }
            }
        }
    }

    /// Whether instance `key` may be promoted now: a replica running on a live owner, staying there,
    /// and, when its agents promote (`promote` resources), with a promotion score of 0 or more.
    fn promotable_now(&self, key: &str, instance: &PackageState) -> bool {
        let agents_decide = instance.def.promotable.as_ref().is_some_and(|promotable| !promotable.promote.is_empty());
        instance.phase == Phase::Running
            && instance.role == Role::Replica
            && !instance.frozen
            && !instance.retired
            && instance.desired == Desired::Running
            && instance.owner.as_deref().is_some_and(|owner| self.liveness(owner) == Liveness::Alive)
            && !self.leaving.contains_key(key)
            && !self.decided.contains(key)
            && (!agents_decide || instance.score.is_some_and(|score| score >= 0))
    }

    fn set_role(&mut self, key: &'a str, instance: &PackageState, role: Role, reason: String) -> Action {
        self.decided.insert(key);
        Action::Propose(Command::SetRole {
            package: key.to_owned(),
            expected_epoch: instance.epoch,
            role,
            reason,
            at_ms: self.now_ms,
        })
    }
}

fn failover_word(package: &PackageState) -> &'static str {
    match package.def.failover {
        Failover::Ordered => "first eligible node in preference order",
        Failover::LeastLoaded => "least loaded eligible node",
    }
}

/// The controller's decisions for every package, in package name order, then the promotions and
/// demotions (which may count on the releases before them: a proposer applies them in this order).
pub fn plan(state: &ClusterState, view: &View, now_ms: u64) -> Vec<Action> {
    let mut planner = Planner::new(state, view, now_ms);
    planner.plan_leaving();
    let mut actions = Vec::new();
    for (key, package) in &state.packages {
        planner.plan_package(key, package, &mut actions);
    }
    planner.plan_roles(&mut actions);
    actions
}

/// Whether a proposal of a plan must wait until the proposals before it were answered: a promotion
/// counts on the releases of the same plan (each command is checked on its own when applied, so
/// proposing it early is never unsafe, only refused).
pub fn after_the_others(command: &Command) -> bool {
    matches!(command, Command::SetRole { .. })
}

/// Why package `key`, desired running, is not running and not being placed (fits nowhere, waits for
/// what it depends on), in one line; `None` when it runs, is placed by this plan, or is not wanted.
pub fn waiting_reason(state: &ClusterState, view: &View, key: &str, now_ms: u64) -> Option<String> {
    waiting_reasons(state, view, now_ms).into_iter().find(|(waiting, _)| waiting == key).map(|(_, why)| why)
}

/// [`waiting_reason`] of every package that waits, in key order (one planner for them all).
pub fn waiting_reasons(state: &ClusterState, view: &View, now_ms: u64) -> Vec<(String, String)> {
    let candidates: Vec<(&String, &PackageState)> = state
        .packages
        .iter()
        .filter(|(_, package)| {
            package.owner.is_none()
                && package.desired == Desired::Running
                && !package.frozen
                && !package.retired
                && package.phase != Phase::Blocked
        })
        .collect();
    if candidates.is_empty() {
        return Vec::new();
    }
    let mut planner = Planner::new(state, view, now_ms);
    planner.plan_leaving();
    candidates
        .into_iter()
        .filter(|(key, package)| planner.choose(key, package, None).is_none())
        .map(|(key, package)| {
            let reasons: Vec<String> = planner
                .preference(key, package)
                .into_iter()
                .filter_map(|node| planner.exclusion(key, package, node).map(|why| format!("{node}: {why}")))
                .collect();
            let why = if reasons.is_empty() {
                "no eligible node".to_owned()
            } else {
                format!("fits nowhere: {}", reasons.join("; "))
            };
            (key.clone(), why)
        })
        .collect()
}

/// `clusterctl pkg plan NAME`: where the package (each of its instances) would go and why, in words.
pub fn explain(state: &ClusterState, view: &View, name: &str, now_ms: u64) -> Option<Vec<String>> {
    let keys = state.keys_named(name);
    if keys.is_empty() {
        return None;
    }
    let mut planner = Planner::new(state, view, now_ms);
    planner.plan_leaving();
    let actions = plan(state, view, now_ms);
    let mut lines = Vec::new();
    let first = &state.packages[&keys[0]];
    if first.def.multi_instance() || keys.len() > 1 {
        lines.push(format!(
            "package {}: {} instance{}{}",
            first.def.name,
            keys.len(),
            if keys.len() == 1 { "" } else { "s" },
            match &first.def.promotable {
                Some(promotable) => format!(
                    ", promotable: {} of {} primaries",
                    relations::primaries(state, &first.def.name),
                    promotable.primaries
                ),
                None => String::new(),
            }
        ));
    }
    for key in &keys {
        let (key, package) = state.packages.get_key_value(key.as_str()).expect("named instance");
        explain_instance(state, &planner, &actions, key, package, &mut lines);
    }
    Some(lines)
}

fn explain_instance<'a>(
    state: &'a ClusterState,
    planner: &Planner<'a>,
    actions: &[Action],
    key: &'a str,
    package: &'a PackageState,
    lines: &mut Vec<String>,
) {
    let role = match &package.def.promotable {
        Some(_) => format!(
            ", role {}{}",
            package.role.as_str(),
            package.score.map(|score| format!(" (score {score})")).unwrap_or_default()
        ),
        None => String::new(),
    };
    lines.push(format!(
        "package {key}: desired {}, phase {}, owner {}, epoch {}{role}{}",
        match package.desired {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        },
        package.phase.as_str(),
        package.owner.as_deref().unwrap_or("none"),
        package.epoch,
        if package.frozen { ", frozen (nothing is started, stopped or monitored)" } else { "" }
    ));
    lines.push(format!(
        "policy: failover {}, failback {}",
        match package.def.failover {
            Failover::Ordered => "ordered",
            Failover::LeastLoaded => "least-loaded",
        },
        match package.def.failback {
            Failback::Manual => "manual",
            Failback::Auto => "auto",
        }
    ));
    for dependency in &package.def.depends {
        let running: Vec<String> = state
            .instances(&dependency.package)
            .filter_map(|(other, other_package)| {
                relations::Occupancy::runs_on(planner, other, other_package).map(|node| format!("{other} on {node}"))
            })
            .collect();
        lines.push(format!(
            "depends on {} ({}): {}",
            dependency.package,
            dependency.location.as_str(),
            if running.is_empty() { "not running".to_owned() } else { format!("running: {}", running.join(", ")) }
        ));
    }
    if !package.def.needs.is_empty() {
        let needs: Vec<String> = package
            .def
            .needs
            .iter()
            .map(|(capacity, need)| format!("{capacity} {}", cluster_package::format_quantity(*need)))
            .collect();
        lines.push(format!("needs: {}", needs.join(", ")));
    }
    for (rank, node) in planner.preference(key, package).into_iter().enumerate() {
        let verdict = match planner.exclusion(key, package, node) {
            None => format!("eligible, load {}", planner.load.get(node).copied().unwrap_or(0)),
            Some(why) => format!("excluded: {why}"),
        };
        lines.push(format!("  {}. {node} ({}): {verdict}", rank + 1, protection(state, node).as_str()));
    }
    let mine: Vec<&Action> = actions
        .iter()
        .filter(|action| match action {
            Action::Propose(Command::Assign { package, .. } | Command::SetRole { package, .. }) => package == key,
            Action::Fence { node, .. } => package.owner.as_deref() == Some(node.as_str()),
            Action::Propose(_) => false,
        })
        .collect();
    if mine.is_empty() {
        lines.push(match (&package.owner, package.desired, package.phase) {
            (_, _, Phase::Blocked) => {
                format!("decision: none — blocked: {}", package.blocked_reason.as_deref().unwrap_or("a stop failed"))
            }
            (Some(owner), _, Phase::Starting | Phase::Running) if planner.leaving.contains_key(key) => {
                let relying = planner.dependents_relying(key, package, owner);
                let reason = &planner.leaving[key];
                if relying.is_empty() {
                    format!("decision: none — leaves {owner} ({reason}) once its owner is heard")
                } else {
                    format!(
                        "decision: none — leaves {owner} ({reason}) once what depends on it there has stopped: {}",
                        relying.join(", ")
                    )
                }
            }
            (Some(owner), _, _) => format!("decision: none — stays on {owner}"),
            (None, Desired::Running, _) if package.retired => "decision: none — retired".to_owned(),
            (None, Desired::Running, _) if !package.def.depends.is_empty() || planner.has_relations(package) => {
                "decision: none — no eligible node (see the exclusions and dependencies above)".to_owned()
            }
            (None, Desired::Running, _) => "decision: none — no eligible node".to_owned(),
            (None, Desired::Stopped, _) => "decision: none — stays stopped".to_owned(),
        });
    }
    for action in mine {
        lines.push(match action {
            Action::Propose(Command::Assign { owner, phase, reason, .. }) => {
                format!("decision: {} on {} — {reason}", phase.as_str(), owner.as_deref().unwrap_or("no node"))
            }
            Action::Propose(Command::SetRole { role, reason, .. }) => format!("decision: {} — {reason}", role.as_str()),
            Action::Fence { node, reason } => format!("decision: fence {node} — {reason}"),
            Action::Propose(other) => format!("decision: {other:?}"),
        });
    }
}
