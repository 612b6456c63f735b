//! Replicated package state: definition, desired state, owner, epoch, phase, failures, events.
//!
//! Ownership changes only through [`crate::Command::Assign`] (proposed by the controller on the
//! leader, conditional on the epoch it saw) and through reports of the owner itself
//! ([`crate::Command::Report`], ignored unless they carry the current epoch and come from the owner).
//!
//! ```text
//!             Assign(owner=N)          Report Running
//!  Stopped ───────────────> Starting ───────────────> Running
//!     ^                        │  ^ resource failed,        │
//!     │ Report Stopped         │  └─ budget left, Restarting,
//!     │                        │     resources redefined ───┤
//!     │                        v                            v
//!  Stopping <──────────── (move, stop, standby, failback, budget exhausted)
//!     │ Report StopFailed
//!     v
//!  Blocked ── fence confirmed / pkg cleanup ──> Stopped
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cluster_package::PackageDef;
use serde::{Deserialize, Serialize};

/// What the operator wants for a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
}

/// Where a package is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not active anywhere.
    Stopped,
    /// Assigned to its owner, which is starting it.
    Starting,
    /// Active on its owner.
    Running,
    /// Its owner is stopping it.
    Stopping,
    /// Stopped after failures beyond its restart budget (or no node could take it).
    Failed,
    /// A stop failed and the node could not be fenced: never started elsewhere until resolved.
    Blocked,
}

impl Phase {
    /// Whether resources may be active on the owner in this phase.
    pub fn may_be_active(self) -> bool {
        matches!(self, Phase::Starting | Phase::Running | Phase::Stopping | Phase::Blocked)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Failed => "failed",
            Phase::Blocked => "blocked",
        }
    }
}

/// The role of an instance of a promotable package. Like ownership, the primary role changes only
/// through committed commands: the controller's `SetRole` (conditional on the instance's epoch, and
/// refused beyond `primaries`), and the owner's own reports (docs/safety.md, "Promotable packages").
///
/// ```text
///   Replica ──SetRole(Promoting)──> Promoting ──Report Promoted──> Primary
///      ^                                │                              │ SetRole(Demoting)
///      │                                v                              v
///      └──── Report Demoted / Stopped, a new owner (Assign), fence, cleanup ──── Demoting
/// ```
/// Every role but `Replica` counts against `primaries`: the instance may be promoted on its owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Not promoted (every instance of a package that is not promotable).
    #[default]
    Replica,
    /// Chosen as primary: its owner promotes it.
    Promoting,
    /// Promoted on its owner.
    Primary,
    /// Its owner demotes it.
    Demoting,
}

impl Role {
    /// Whether the instance may be promoted on its owner (counts against `primaries`).
    pub fn may_be_primary(self) -> bool {
        self != Role::Replica
    }

    /// Whether the owner should hold it promoted.
    pub fn wants_promoted(self) -> bool {
        matches!(self, Role::Promoting | Role::Primary)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Replica => "replica",
            Role::Promoting => "promoting",
            Role::Primary => "primary",
            Role::Demoting => "demoting",
        }
    }
}

/// The last failure of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub node: String,
    pub resource: Option<String>,
    pub reason: String,
    pub at_ms: u64,
}

/// State of one resource as last reported by the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub name: String,
    pub state: String,
}

/// Everything the cluster knows about one package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageState {
    /// Shared with every copy of this state (a node's package workers, the leader's plan): the
    /// definition is most of a package's size, and it changes only with `pkg apply`.
    pub def: Arc<PackageDef>,
    pub desired: Desired,
    /// Maintenance: nothing is started, stopped or monitored.
    pub frozen: bool,
    pub owner: Option<String>,
    /// Fencing token: increases with every change of owner.
    pub epoch: u64,
    pub phase: Phase,
    /// When the current phase began (proposer's clock, ms since the Unix epoch).
    pub since_ms: u64,
    /// One-shot placement intent (`pkg run --node`, `pkg move --to`), cleared once used.
    pub target: Option<String>,
    /// The owner is stopping because the restart budget is exhausted there.
    pub stopping_after_failure: bool,
    /// Failure times per node, within the restart window.
    pub failures: BTreeMap<String, Vec<u64>>,
    /// Nodes where the package failed beyond its budget: excluded until `pkg cleanup`.
    pub banned: BTreeSet<String>,
    /// Local restarts at the current owner.
    pub restarts: u32,
    pub last_failure: Option<Failure>,
    pub resources: Vec<ResourceStatus>,
    /// Why the package is blocked, and how to resolve it.
    pub blocked_reason: Option<String>,
    /// Promotable packages: this instance's role.
    pub role: Role,
    /// Promotable packages: the promotion score its owner's agents set (`crm_master`), at this epoch.
    pub score: Option<i64>,
    /// An instance beyond `instances` after a redefinition: it stops, then it is removed.
    pub retired: bool,
    /// Which instance this is (`0`, `1` … or the node of an `instances = "all"` instance); `None`
    /// for a package with one instance. Its key in `ClusterState::packages` is [`PackageState::key`].
    pub instance: Option<String>,
}

impl PackageState {
    pub fn new(def: impl Into<Arc<PackageDef>>, at_ms: u64) -> PackageState {
        let def = def.into();
        let desired = if def.auto_run { Desired::Running } else { Desired::Stopped };
        PackageState {
            def,
            desired,
            frozen: false,
            owner: None,
            epoch: 0,
            phase: Phase::Stopped,
            since_ms: at_ms,
            target: None,
            stopping_after_failure: false,
            failures: BTreeMap::new(),
            banned: BTreeSet::new(),
            restarts: 0,
            last_failure: None,
            resources: Vec::new(),
            blocked_reason: None,
            role: Role::Replica,
            score: None,
            retired: false,
            instance: None,
        }
    }

    /// Its key in `ClusterState::packages`: the package name, or `NAME:INSTANCE`.
    pub fn key(&self) -> String {
        match &self.instance {
            Some(instance) => format!("{}:{instance}", self.def.name),
            None => self.def.name.clone(),
        }
    }

    /// The package this state belongs to (`web` for the instances `web:0` and `web:1`).
    pub fn package_name(&self) -> &str {
        &self.def.name
    }

    /// The node this instance may be active on, if any (owner in a phase where resources may run).
    pub fn occupies(&self) -> Option<&str> {
        self.owner.as_deref().filter(|_| self.phase.may_be_active())
    }

    /// The node this instance runs on (phase `running`), if any.
    pub fn running_on(&self) -> Option<&str> {
        self.owner.as_deref().filter(|_| self.phase == Phase::Running)
    }

    /// Failures on `node` within the restart window ending at `now_ms`.
    pub fn recent_failures(&self, node: &str, now_ms: u64) -> usize {
        let window = self.def.restart.within.as_millis() as u64;
        self.failures.get(node).map_or(0, |times| times.iter().filter(|t| now_ms.saturating_sub(**t) <= window).count())
    }
}

/// What `pkg apply` of a new definition does to a package: decided here once, applied by
/// `ClusterState::apply`, shown by `clusterctl pkg apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redefinition<'a> {
    /// A new package.
    New,
    /// The same definition: nothing changes, nothing is recorded.
    Unchanged,
    /// Placement or policy only (`nodes`, `failover`, `failback`, `auto_run`, `restart`): nothing restarts.
    PolicyOnly,
    /// Resources changed while the package may be active on `owner`: the resource `from` and every
    /// later one restart there, at the same epoch (`None`: only removed resources stop).
    Restart { owner: &'a str, from: Option<&'a str> },
    /// Resources changed on a package that is not starting or running: they take effect at its next start.
    NextStart,
}

impl Redefinition<'_> {
    /// What `current` becomes when `new` is applied.
    pub fn of<'a>(current: Option<&'a PackageState>, new: &'a PackageDef) -> Redefinition<'a> {
        let Some(current) = current else { return Redefinition::New };
        if *current.def == *new {
            return Redefinition::Unchanged;
        }
        let Some(first) = current.def.first_redefined_resource(new) else { return Redefinition::PolicyOnly };
        match (&current.owner, current.phase) {
            (Some(owner), Phase::Starting | Phase::Running) => {
                Redefinition::Restart { owner, from: new.resources.get(first).map(|resource| resource.name.as_str()) }
            }
            _ => Redefinition::NextStart,
        }
    }

    /// In words, for events and `clusterctl pkg apply`.
    pub fn describe(&self) -> String {
        match self {
            Redefinition::New => "applied".into(),
            Redefinition::Unchanged => "unchanged".into(),
            Redefinition::PolicyOnly => "definition replaced (placement or policy only: nothing restarts)".into(),
            Redefinition::Restart { owner, from: Some(from) } => {
                format!("resources redefined: resource {from} and every later one restart on {owner}")
            }
            Redefinition::Restart { owner, from: None } => {
                format!("resources redefined: the removed resources stop on {owner}")
            }
            Redefinition::NextStart => {
                "definition replaced (resources redefined: takes effect at its next start)".into()
            }
        }
    }
}

/// One recorded transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number, increasing (for `events --follow`).
    pub seq: u64,
    pub at_ms: u64,
    pub package: Option<String>,
    pub node: Option<String>,
    pub epoch: u64,
    /// `phase_from -> phase_to`, or an operator action (`apply`, `standby` …).
    pub what: String,
    pub reason: String,
    /// Time spent in the phase that ended, when this is a transition.
    pub phase_ms: Option<u64>,
}

/// What the cluster records about a node besides Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Drained: no package runs here.
    pub standby: bool,
    /// The node armed a watchdog (reported by the node itself at start).
    pub watchdog: bool,
    /// The watchdog device, for `status`.
    pub watchdog_device: Option<String>,
    /// `clusterd` on this node is stopping or stopped cleanly (`NodeLeave`): nothing is placed here
    /// until it announces itself again.
    pub leaving: bool,
    /// What the node offers to packages' `needs`, by capacity name (node file `capacity`, announced
    /// with `NodeCapacity`). A capacity a node does not declare is unlimited there.
    pub capacity: BTreeMap<String, u64>,
}
