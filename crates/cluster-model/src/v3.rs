//! The replicated state as snapshot version 3 (and 2) stored it, before package relations (issue 13):
//! frozen copies of the types that changed, to read an older snapshot into the current state. Only
//! what changed is copied; everything else is the current type (its encoding did not change).
//!
//! Changed since version 3: `PackageDef` (ends with `depends`, `instances`, `promotable`, `needs`),
//! `PackageState` (ends with `role`, `score`, `retired`, `instance`), `NodeRecord` (ends with `capacity`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use cluster_package::{Failback, Failover, Instances, PackageDef, ResourceDef, Restart};
use serde::{Deserialize, Serialize};

use crate::package::{Desired, Event, Failure, NodeRecord, PackageState, Phase, ResourceStatus, Role};
use crate::{ClusterState, Settings};

/// `ClusterState` of snapshot version 3.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterStateV3 {
    settings: Settings,
    kv: BTreeMap<String, String>,
    packages: BTreeMap<String, PackageStateV3>,
    nodes: BTreeMap<String, NodeRecordV3>,
    events: VecDeque<Event>,
    next_event: u64,
    alerts: crate::alerts::AlertState,
}

#[derive(Debug, Serialize, Deserialize)]
struct PackageDefV3 {
    name: String,
    nodes: Vec<String>,
    failover: Failover,
    failback: Failback,
    auto_run: bool,
    restart: Restart,
    resources: Vec<ResourceDef>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PackageStateV3 {
    def: PackageDefV3,
    desired: Desired,
    frozen: bool,
    owner: Option<String>,
    epoch: u64,
    phase: Phase,
    since_ms: u64,
    target: Option<String>,
    stopping_after_failure: bool,
    failures: BTreeMap<String, Vec<u64>>,
    banned: BTreeSet<String>,
    restarts: u32,
    last_failure: Option<Failure>,
    resources: Vec<ResourceStatus>,
    blocked_reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeRecordV3 {
    standby: bool,
    watchdog: bool,
    watchdog_device: Option<String>,
    leaving: bool,
}

impl From<ClusterStateV3> for ClusterState {
    fn from(old: ClusterStateV3) -> ClusterState {
        let packages = old
            .packages
            .into_iter()
            .map(|(name, package)| {
                let def = package.def;
                let def = PackageDef {
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
                };
                let state = PackageState {
                    def,
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
                };
                (name, state)
            })
            .collect();
        let nodes = old
            .nodes
            .into_iter()
            .map(|(name, record)| {
                let record = NodeRecord {
                    standby: record.standby,
                    watchdog: record.watchdog,
                    watchdog_device: record.watchdog_device,
                    leaving: record.leaving,
                    capacity: BTreeMap::new(),
                };
                (name, record)
            })
            .collect();
        ClusterState {
            settings: old.settings,
            kv: old.kv,
            packages,
            nodes,
            events: old.events,
            next_event: old.next_event,
            alerts: old.alerts,
        }
    }
}

/// The version-3 form of a state, for a node that must write it (its relations, roles, scores,
/// retired instances and node capacities are left out: a version-3 reader knows nothing of them).
impl From<&ClusterState> for ClusterStateV3 {
    fn from(state: &ClusterState) -> ClusterStateV3 {
        let packages = state
            .packages
            .iter()
            .map(|(name, package)| {
                let def = &package.def;
                let old = PackageStateV3 {
                    def: PackageDefV3 {
                        name: def.name.clone(),
                        nodes: def.nodes.clone(),
                        failover: def.failover,
                        failback: def.failback,
                        auto_run: def.auto_run,
                        restart: def.restart,
                        resources: def.resources.clone(),
                    },
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
                };
                (name.clone(), old)
            })
            .collect();
        let nodes = state
            .nodes
            .iter()
            .map(|(name, record)| {
                let old = NodeRecordV3 {
                    standby: record.standby,
                    watchdog: record.watchdog,
                    watchdog_device: record.watchdog_device.clone(),
                    leaving: record.leaving,
                };
                (name.clone(), old)
            })
            .collect();
        ClusterStateV3 {
            settings: state.settings.clone(),
            kv: state.kv.clone(),
            packages,
            nodes,
            events: state.events.clone(),
            next_event: state.next_event,
            alerts: state.alerts.clone(),
        }
    }
}
