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

use cluster_package::{Failback, Failover};

use crate::package::{Desired, PackageState, Phase};
use crate::{ClusterState, Command};

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
}

// The planner runs on the leader every controller tick over every package: the common cases (a package
// running on its most preferred node, nothing to do) allocate nothing; strings are built only for the
// decisions and explanations that carry them.
impl<'a> Planner<'a> {
    fn new(state: &'a ClusterState, view: &'a View, now_ms: u64) -> Planner<'a> {
        let mut load = BTreeMap::new();
        for package in state.packages.values() {
            if let (Some(owner), true) = (&package.owner, package.phase.may_be_active()) {
                *load.entry(owner.as_str()).or_insert(0) += 1;
            }
        }
        Planner { state, view, now_ms, load }
    }

    fn liveness(&self, node: &str) -> Liveness {
        self.view.nodes.get(node).or_else(|| self.view.departed.get(node)).copied().unwrap_or(Liveness::Unknown)
    }

    /// Nodes the package may run on, in preference order.
    fn preference(&self, package: &'a PackageState) -> Vec<&'a str> {
        if package.def.nodes.is_empty() {
            self.view.nodes.keys().map(String::as_str).collect()
        } else {
            package.def.nodes.iter().map(String::as_str).collect()
        }
    }

    /// The first node of the preference order.
    fn most_preferred(&self, package: &'a PackageState) -> Option<&'a str> {
        if package.def.nodes.is_empty() {
            self.view.nodes.keys().next().map(String::as_str)
        } else {
            package.def.nodes.first().map(String::as_str)
        }
    }

    /// Whether `node` cannot take `package` whatever its lease (see `static_exclusion`).
    fn statically_excluded(&self, package: &PackageState, node: &str) -> bool {
        (!package.def.nodes.is_empty() && !package.def.nodes.iter().any(|n| n == node))
            || !self.view.nodes.contains_key(node)
            || package.banned.contains(node)
            || self.state.nodes.get(node).is_some_and(|record| record.standby || record.leaving)
    }

    /// Why `node` cannot take `package` whatever its lease, or `None`.
    fn static_exclusion(&self, package: &PackageState, node: &str) -> Option<String> {
        if !self.statically_excluded(package, node) {
            return None;
        }
        if !package.def.nodes.is_empty() && !package.def.nodes.iter().any(|n| n == node) {
            return Some("not in the package's nodes list".into());
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
        Some("has clusterd stopping or stopped".into())
    }

    /// Whether `node` cannot take `package` now (see `exclusion`).
    fn excluded(&self, package: &PackageState, node: &str) -> bool {
        self.statically_excluded(package, node) || self.liveness(node) != Liveness::Alive
    }

    /// Why `node` cannot take `package` now, or `None` if it can.
    fn exclusion(&self, package: &PackageState, node: &str) -> Option<String> {
        self.static_exclusion(package, node).or_else(|| match self.liveness(node) {
            Liveness::Alive => None,
            Liveness::Unknown => Some("lease not confirmed by this leader yet".into()),
            Liveness::Expired => Some("lease expired (node unreachable)".into()),
        })
    }

    /// The node the package should go to, excluding `avoid`.
    fn choose(&self, package: &'a PackageState, avoid: Option<&str>) -> Option<&'a str> {
        if let Some(target) = &package.target {
            if Some(target.as_str()) != avoid && !self.excluded(package, target) {
                return Some(target.as_str());
            }
            // A requested node whose lease this leader has not confirmed yet (it was just elected)
            // is waited for, a heartbeat or two, rather than passed over for another.
            if Some(target.as_str()) != avoid
                && self.liveness(target) == Liveness::Unknown
                && !self.statically_excluded(package, target)
            {
                return None;
            }
        }
        let preference = self.preference(package);
        let eligible = |node: &&'a str| Some(*node) != avoid && !self.excluded(package, node);
        // A node that is only "unknown" (a new leader has not heard it yet) may be fine a heartbeat
        // later: do not pass over a more preferred node for that, wait for its lease to be known.
        let undecided = |node: &&'a str| {
            Some(*node) != avoid && self.liveness(node) == Liveness::Unknown && !self.statically_excluded(package, node)
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
    fn undecided_node(&self, package: &'a PackageState, avoid: &str) -> bool {
        self.preference(package).into_iter().any(|node| {
            node != avoid && self.liveness(node) == Liveness::Unknown && !self.statically_excluded(package, node)
        })
    }

    fn assign(
        &mut self,
        name: &str,
        package: &PackageState,
        owner: Option<&'a str>,
        phase: Phase,
        reason: String,
    ) -> Action {
        if let (Some(node), true) = (owner, phase == Phase::Starting) {
            if package.owner.as_deref() != Some(node) {
                *self.load.entry(node).or_insert(0) += 1;
            }
        }
        Action::Propose(Command::Assign {
            package: name.to_owned(),
            expected_epoch: package.epoch,
            owner: owner.map(str::to_owned),
            phase,
            reason,
            at_ms: self.now_ms,
        })
    }

    /// Why a running package should leave its live owner, if it should.
    fn reason_to_leave(&self, package: &'a PackageState, owner: &str) -> Option<String> {
        if package.desired == Desired::Stopped {
            return Some("stop requested".into());
        }
        if let Some(why) = self.exclusion(package, owner) {
            return Some(format!("node {owner} {why}"));
        }
        if let Some(target) = package.target.as_deref().filter(|t| *t != owner) {
            if !self.excluded(package, target) {
                return Some(format!("move to {target} requested"));
            }
        }
        // On its most preferred node already: no node can be more preferred.
        if package.def.failback == Failback::Auto
            && package.phase == Phase::Running
            && self.most_preferred(package) != Some(owner)
        {
            // Fail back only to the node placement would choose now, and only if it is more
            // preferred than the owner: with least-loaded placement, moving to the first node of
            // the list and placing back on the least loaded one flapped forever (simulation, seed 47).
            let preference = self.preference(package);
            let rank = |node: &str| preference.iter().position(|n| *n == node).unwrap_or(usize::MAX);
            if let Some(better) = self.choose(package, None).filter(|node| rank(node) < rank(owner)) {
                return Some(format!("failback to {better}, which is preferred"));
            }
        }
        None
    }

    fn plan_package(&mut self, name: &str, package: &'a PackageState, actions: &mut Vec<Action>) {
        if package.frozen {
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
                            format!("stop of package {name} failed on {owner}")
                        } else {
                            format!("node {owner} lost its lease and has no watchdog")
                        };
                        actions.push(Action::Fence { node: owner.to_owned(), reason });
                    }
                    return;
                }
                let next = if package.desired == Desired::Running { self.choose(package, Some(owner)) } else { None };
                if next.is_none() && package.desired == Desired::Running && self.undecided_node(package, owner) {
                    // A node that may take it is only "unknown" (a new leader has not heard it
                    // yet): wait for its lease rather than commit "stopped" now and place the
                    // package one plan later (one more Raft round on the failover's path).
                    return;
                }
                let phase = if next.is_some() { Phase::Starting } else { Phase::Stopped };
                let reason = format!("node {owner} lost its lease ({})", protection.as_str());
                actions.push(self.assign(name, package, next, phase, reason));
                return;
            }
            if liveness == Liveness::Unknown {
                return;
            }
            if matches!(package.phase, Phase::Starting | Phase::Running) {
                if let Some(reason) = self.reason_to_leave(package, owner) {
                    actions.push(self.assign(name, package, Some(owner), Phase::Stopping, reason));
                }
            }
            return;
        }
        if package.desired == Desired::Running && package.phase != Phase::Blocked {
            if let Some(node) = self.choose(package, None) {
                let reason = match &package.target {
                    Some(target) if *target == node => format!("placed on {node} as requested"),
                    _ => format!("placed on {node} ({})", failover_word(package)),
                };
                actions.push(self.assign(name, package, Some(node), Phase::Starting, reason));
            }
        }
    }
}

fn failover_word(package: &PackageState) -> &'static str {
    match package.def.failover {
        Failover::Ordered => "first eligible node in preference order",
        Failover::LeastLoaded => "least loaded eligible node",
    }
}

/// The controller's decisions for every package, in package name order.
pub fn plan(state: &ClusterState, view: &View, now_ms: u64) -> Vec<Action> {
    let mut planner = Planner::new(state, view, now_ms);
    let mut actions = Vec::new();
    for (name, package) in &state.packages {
        planner.plan_package(name, package, &mut actions);
    }
    actions
}

/// `clusterctl pkg plan NAME`: where the package would go and why, in words.
pub fn explain(state: &ClusterState, view: &View, name: &str, now_ms: u64) -> Option<Vec<String>> {
    let package = state.packages.get(name)?;
    let planner = Planner::new(state, view, now_ms);
    let mut lines = vec![format!(
        "package {name}: desired {}, phase {}, owner {}, epoch {}{}",
        match package.desired {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        },
        package.phase.as_str(),
        package.owner.as_deref().unwrap_or("none"),
        package.epoch,
        if package.frozen { ", frozen (nothing is started, stopped or monitored)" } else { "" }
    )];
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
    for (rank, node) in planner.preference(package).into_iter().enumerate() {
        let verdict = match planner.exclusion(package, node) {
            None => format!("eligible, load {}", planner.load.get(node).copied().unwrap_or(0)),
            Some(why) => format!("excluded: {why}"),
        };
        lines.push(format!("  {}. {node} ({}): {verdict}", rank + 1, protection(state, node).as_str()));
    }
    let actions: Vec<Action> = plan(state, view, now_ms)
        .into_iter()
        .filter(|action| match action {
            Action::Propose(Command::Assign { package, .. }) => package == name,
            Action::Fence { node, .. } => package.owner.as_deref() == Some(node.as_str()),
            Action::Propose(_) => false,
        })
        .collect();
    if actions.is_empty() {
        lines.push(match (&package.owner, package.desired, package.phase) {
            (_, _, Phase::Blocked) => {
                format!("decision: none — blocked: {}", package.blocked_reason.as_deref().unwrap_or("a stop failed"))
            }
            (Some(owner), _, _) => format!("decision: none — stays on {owner}"),
            (None, Desired::Running, _) => "decision: none — no eligible node".to_owned(),
            (None, Desired::Stopped, _) => "decision: none — stays stopped".to_owned(),
        });
    }
    for action in actions {
        lines.push(match action {
            Action::Propose(Command::Assign { owner, phase, reason, .. }) => {
                format!("decision: {} on {} — {reason}", phase.as_str(), owner.as_deref().unwrap_or("no node"))
            }
            Action::Fence { node, reason } => format!("decision: fence {node} — {reason}"),
            Action::Propose(other) => format!("decision: {other:?}"),
        });
    }
    Some(lines)
}
