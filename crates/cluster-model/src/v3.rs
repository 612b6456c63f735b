//! The replicated state as snapshot version 3 (and 2) stored it, before package relations (issue 13):
//! frozen copies of the types that changed, to read an older snapshot into the current state. Only
//! what changed is copied; everything else is the current type (its encoding did not change).
//!
//! v0.1.0 stored the same package, package state and node record shapes (`crate::compat::v0_1`
//! uses these types).
//!
//! Changed since version 3: `PackageDef` (ends with `depends`, `instances`, `promotable`, `needs`),
//! `PackageState` (ends with `role`, `score`, `retired`, `instance`), `NodeRecord` (ends with `capacity`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use cluster_package::{Failback, Failover, Instances, NodeName, PackageDef, ResourceDef, Restart};
use serde::{Deserialize, Serialize};

use crate::package::{Desired, Event, Failure, NodeRecord, PackageState, Phase, ResourceStatus, Role};
use crate::{ClusterState, Settings};

/// `ClusterState` of snapshot version 3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStateV3 {
    pub settings: Settings,
    pub kv: BTreeMap<String, String>,
    pub packages: BTreeMap<String, PackageStateV3>,
    pub nodes: BTreeMap<String, NodeRecordV3>,
    pub events: VecDeque<Event>,
    pub next_event: u64,
    pub alerts: crate::alerts::AlertState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageDefV3 {
    pub name: String,
    /// Serialized as a list of strings, as v0.1.0 wrote it.
    pub nodes: Vec<NodeName>,
    pub failover: Failover,
    pub failback: Failback,
    pub auto_run: bool,
    pub restart: Restart,
    pub resources: Vec<ResourceDef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageStateV3 {
    pub def: PackageDefV3,
    pub desired: Desired,
    pub frozen: bool,
    pub owner: Option<String>,
    pub epoch: u64,
    pub phase: Phase,
    pub since_ms: u64,
    pub target: Option<String>,
    pub stopping_after_failure: bool,
    pub failures: BTreeMap<String, Vec<u64>>,
    pub banned: BTreeSet<String>,
    pub restarts: u32,
    pub last_failure: Option<Failure>,
    pub resources: Vec<ResourceStatus>,
    pub blocked_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecordV3 {
    pub standby: bool,
    pub watchdog: bool,
    pub watchdog_device: Option<String>,
    pub leaving: bool,
}

impl From<PackageDefV3> for PackageDef {
    /// A definition without relations.
    fn from(def: PackageDefV3) -> PackageDef {
        PackageDef {
            name: def.name,
            nodes: def.nodes,
            failover: def.failover,
            failback: def.failback,
            auto_run: def.auto_run,
            restart: def.restart,
            resources: def.resources,
            depends: Vec::new(),
            instances: Instances::Count(1),
            promotable: None,
            needs: BTreeMap::new(),
        }
    }
}

impl From<PackageStateV3> for PackageState {
    /// A single instance, not promotable: a replica without a score.
    fn from(package: PackageStateV3) -> PackageState {
        PackageState {
            def: std::sync::Arc::new(package.def.into()),
            desired: package.desired,
            frozen: package.frozen,
            owner: package.owner,
            epoch: package.epoch,
            phase: package.phase,
            since_ms: package.since_ms,
            target: package.target,
            stopping_after_failure: package.stopping_after_failure,
            failures: package.failures,
            banned: package.banned,
            restarts: package.restarts,
            last_failure: package.last_failure,
            resources: package.resources,
            blocked_reason: package.blocked_reason,
            role: Role::Replica,
            score: None,
            retired: false,
            instance: None,
        }
    }
}

impl From<NodeRecordV3> for NodeRecord {
    /// No capacity announced: unlimited.
    fn from(record: NodeRecordV3) -> NodeRecord {
        NodeRecord {
            standby: record.standby,
            watchdog: record.watchdog,
            watchdog_device: record.watchdog_device,
            leaving: record.leaving,
            capacity: BTreeMap::new(),
        }
    }
}

impl From<&PackageDef> for PackageDefV3 {
    /// The definition without its relations (lossy: `crate::compat` refuses what must not be lost).
    fn from(def: &PackageDef) -> PackageDefV3 {
        PackageDefV3 {
            name: def.name.clone(),
            nodes: def.nodes.clone(),
            failover: def.failover,
            failback: def.failback,
            auto_run: def.auto_run,
            restart: def.restart,
            resources: def.resources.clone(),
        }
    }
}

impl From<&PackageState> for PackageStateV3 {
    /// The state without relations, role, score, retirement or instance (lossy).
    fn from(package: &PackageState) -> PackageStateV3 {
        PackageStateV3 {
            def: package.def.as_ref().into(),
            desired: package.desired,
            frozen: package.frozen,
            owner: package.owner.clone(),
            epoch: package.epoch,
            phase: package.phase,
            since_ms: package.since_ms,
            target: package.target.clone(),
            stopping_after_failure: package.stopping_after_failure,
            failures: package.failures.clone(),
            banned: package.banned.clone(),
            restarts: package.restarts,
            last_failure: package.last_failure.clone(),
            resources: package.resources.clone(),
            blocked_reason: package.blocked_reason.clone(),
        }
    }
}

impl From<&NodeRecord> for NodeRecordV3 {
    /// The record without its capacity (lossy).
    fn from(record: &NodeRecord) -> NodeRecordV3 {
        NodeRecordV3 {
            standby: record.standby,
            watchdog: record.watchdog,
            watchdog_device: record.watchdog_device.clone(),
            leaving: record.leaving,
        }
    }
}

impl From<ClusterStateV3> for ClusterState {
    fn from(old: ClusterStateV3) -> ClusterState {
        ClusterState {
            settings: old.settings,
            kv: old.kv,
            packages: old.packages.into_iter().map(|(name, package)| (name, package.into())).collect(),
            nodes: old.nodes.into_iter().map(|(name, record)| (name, record.into())).collect(),
            events: old.events,
            next_event: old.next_event,
            alerts: old.alerts,
            // Written before cluster versions existed: as a log replayed from its start.
            ..ClusterState::genesis()
        }
    }
}

/// The version-3 form of a state, for a node that must write it (its relations, roles, scores,
/// retired instances and node capacities are left out: a version-3 reader knows nothing of them).
impl From<&ClusterState> for ClusterStateV3 {
    fn from(state: &ClusterState) -> ClusterStateV3 {
        ClusterStateV3 {
            settings: state.settings.clone(),
            kv: state.kv.clone(),
            packages: state.packages.iter().map(|(name, package)| (name.clone(), package.into())).collect(),
            nodes: state.nodes.iter().map(|(name, record)| (name.clone(), record.into())).collect(),
            events: state.events.clone(),
            next_event: state.next_event,
            alerts: state.alerts.clone(),
        }
    }
}
