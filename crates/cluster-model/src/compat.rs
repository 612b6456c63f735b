//! Frozen copies of the serialized types of earlier releases, and their conversions to and from
//! today's types. postcard is not self-describing: bytes written by v0.1.0 decode only with types of
//! exactly v0.1.0's shape, so those shapes are kept here, unchanged for ever.
//!
//! ```text
//!   v0.1.0 bytes ──postcard──> v0_1::Command ──From──> Command            (always works: reading)
//!   Command ──to_v0_1──> v0_1::Command ──postcard──> v0.1.0 bytes          (fails with NeedsVersion
//!                                                                          for what v0.1.0 lacks)
//! ```
//!
//! Types whose encoding has not changed since v0.1.0 are re-exported instead of copied; the fixture
//! tests (`compat/v0.1.0/fixtures.json`, written by v0.1.0's own code) pin their bytes, so a change
//! of such a type fails those tests: copy v0.1.0's shape here before changing it.

use std::sync::Arc;

use crate::version::{ClusterVersion, NeedsVersion};
use crate::{ClusterState, Command};

/// v0.1.0 (cluster version 1): the types as that release serialized them.
pub mod v0_1 {
    use std::collections::{BTreeMap, VecDeque};

    use serde::{Deserialize, Serialize};

    // Unchanged since v0.1.0 (pinned by the fixture tests).
    pub use crate::package::{Event, Phase, ResourceStatus};
    pub use crate::settings::FenceConfig;
    // v0.1.0's shapes, which development snapshots of version 3 stored too (before relations).
    pub use crate::v3::{NodeRecordV3 as NodeRecord, PackageDefV3 as PackageDef, PackageStateV3 as PackageState};

    /// v0.1.0's `Report`: no promotion reports.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Report {
        Running { resources: Vec<ResourceStatus> },
        Stopped,
        StopFailed { reason: String },
        ResourceFailed { resource: String, reason: String },
        Restarting { reason: String },
    }

    /// v0.1.0's `Settings`: no lease ceiling.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Settings {
        pub snapshot_period: u64,
        pub heartbeat_ms: u64,
        pub lease_ms: u64,
        pub clock_drift_ppm: u64,
        pub lease_margin_ms: u64,
        pub stop_budget_ms: Option<u64>,
        pub fencing: BTreeMap<String, FenceConfig>,
    }

    /// v0.1.0's `ClusterState` (snapshot data version 2): no alert hooks, no cluster version,
    /// no witnesses, no join tokens or certificates.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ClusterState {
        pub settings: Settings,
        pub kv: BTreeMap<String, String>,
        pub packages: BTreeMap<String, PackageState>,
        pub nodes: BTreeMap<String, NodeRecord>,
        pub events: VecDeque<Event>,
        pub next_event: u64,
    }

    /// v0.1.0's `Command`: its 19 variants, in its order.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Command {
        KvSet { key: String, value: String },
        KvCas { key: String, expected: Option<String>, new: String },
        KvDel { key: String },
        SetSetting { name: String, value: String },
        SetFence { node: String, fence: Option<FenceConfig> },
        PkgApply { def: Box<PackageDef>, at_ms: u64 },
        PkgRemove { name: String, at_ms: u64 },
        PkgRun { name: String, node: Option<String>, at_ms: u64 },
        PkgStop { name: String, at_ms: u64 },
        PkgMove { name: String, to: String, at_ms: u64 },
        PkgFreeze { name: String, frozen: bool, at_ms: u64 },
        PkgCleanup { name: String, at_ms: u64 },
        NodeStandby { name: String, standby: bool, at_ms: u64 },
        NodeHello { name: String, watchdog: Option<String>, at_ms: u64 },
        Assign { package: String, expected_epoch: u64, owner: Option<String>, phase: Phase, reason: String, at_ms: u64 },
        Report { package: String, node: String, epoch: u64, report: Report, at_ms: u64 },
        NodeFenced { node: String, owned: BTreeMap<String, u64>, at_ms: u64 },
        NodeLeave { name: String, at_ms: u64 },
        NodeWatchdog { name: String, watchdog: Option<String>, reason: String, at_ms: u64 },
    }

    /// v0.1.0's `CommandOutcome` (the answer of a `Propose` peer RPC).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum CommandOutcome {
        Applied,
        Deleted { existed: bool },
        CasMismatch { current: Option<String> },
        Rejected { reason: String },
    }
}

impl From<v0_1::Command> for Command {
    fn from(command: v0_1::Command) -> Command {
        use v0_1::Command as Old;
        match command {
            Old::KvSet { key, value } => Command::KvSet { key, value },
            Old::KvCas { key, expected, new } => Command::KvCas { key, expected, new },
            Old::KvDel { key } => Command::KvDel { key },
            Old::SetSetting { name, value } => Command::SetSetting { name, value },
            Old::SetFence { node, fence } => Command::SetFence { node, fence },
            Old::PkgApply { def, at_ms } => Command::PkgApply { def: Arc::new((*def).into()), at_ms },
            Old::PkgRemove { name, at_ms } => Command::PkgRemove { name, at_ms },
            Old::PkgRun { name, node, at_ms } => Command::PkgRun { name, node, at_ms },
            Old::PkgStop { name, at_ms } => Command::PkgStop { name, at_ms },
            Old::PkgMove { name, to, at_ms } => Command::PkgMove { name, to, at_ms },
            Old::PkgFreeze { name, frozen, at_ms } => Command::PkgFreeze { name, frozen, at_ms },
            Old::PkgCleanup { name, at_ms } => Command::PkgCleanup { name, at_ms },
            Old::NodeStandby { name, standby, at_ms } => Command::NodeStandby { name, standby, at_ms },
            Old::NodeHello { name, watchdog, at_ms } => Command::NodeHello { name, watchdog, at_ms },
            Old::Assign { package, expected_epoch, owner, phase, reason, at_ms } => {
                Command::Assign { package, expected_epoch, owner, phase, reason, at_ms }
            }
            Old::Report { package, node, epoch, report, at_ms } => {
                Command::Report { package, node, epoch, report: report.into(), at_ms }
            }
            Old::NodeFenced { node, owned, at_ms } => Command::NodeFenced { node, owned, at_ms },
            Old::NodeLeave { name, at_ms } => Command::NodeLeave { name, at_ms },
            Old::NodeWatchdog { name, watchdog, reason, at_ms } => {
                Command::NodeWatchdog { name, watchdog, reason, at_ms }
            }
        }
    }
}

/// `command` as v0.1.0 encodes it, or what in it v0.1.0 cannot carry.
pub fn command_to_v0_1(command: &Command) -> Result<v0_1::Command, NeedsVersion> {
    use v0_1::Command as Old;
    let needs = command.version_need();
    if needs.needs > ClusterVersion::V0_1 {
        return Err(needs);
    }
    let needs = needs.needs;
    Ok(match command.clone() {
        Command::KvSet { key, value } => Old::KvSet { key, value },
        Command::KvCas { key, expected, new } => Old::KvCas { key, expected, new },
        Command::KvDel { key } => Old::KvDel { key },
        Command::SetSetting { name, value } => Old::SetSetting { name, value },
        Command::SetFence { node, fence } => Old::SetFence { node, fence },
        Command::PkgApply { def, at_ms } => Old::PkgApply { def: Box::new(def_to_v0_1(&def)?), at_ms },
        Command::PkgRemove { name, at_ms } => Old::PkgRemove { name, at_ms },
        Command::PkgRun { name, node, at_ms } => Old::PkgRun { name, node, at_ms },
        Command::PkgStop { name, at_ms } => Old::PkgStop { name, at_ms },
        Command::PkgMove { name, to, at_ms } => Old::PkgMove { name, to, at_ms },
        Command::PkgFreeze { name, frozen, at_ms } => Old::PkgFreeze { name, frozen, at_ms },
        Command::PkgCleanup { name, at_ms } => Old::PkgCleanup { name, at_ms },
        Command::NodeStandby { name, standby, at_ms } => Old::NodeStandby { name, standby, at_ms },
        Command::NodeHello { name, watchdog, at_ms } => Old::NodeHello { name, watchdog, at_ms },
        Command::Assign { package, expected_epoch, owner, phase, reason, at_ms } => {
            Old::Assign { package, expected_epoch, owner, phase, reason, at_ms }
        }
        Command::Report { package, node, epoch, report, at_ms } => {
            Old::Report { package, node, epoch, report: report_to_v0_1(&report)?, at_ms }
        }
        Command::NodeFenced { node, owned, at_ms } => Old::NodeFenced { node, owned, at_ms },
        Command::NodeLeave { name, at_ms } => Old::NodeLeave { name, at_ms },
        Command::NodeWatchdog { name, watchdog, reason, at_ms } => Old::NodeWatchdog { name, watchdog, reason, at_ms },
        other => unreachable!("command {} requires version {needs} but has no v0.1.0 form", other.name()),
    })
}

impl From<v0_1::CommandOutcome> for crate::CommandOutcome {
    fn from(outcome: v0_1::CommandOutcome) -> crate::CommandOutcome {
        match outcome {
            v0_1::CommandOutcome::Applied => crate::CommandOutcome::Applied,
            v0_1::CommandOutcome::Deleted { existed } => crate::CommandOutcome::Deleted { existed },
            v0_1::CommandOutcome::CasMismatch { current } => crate::CommandOutcome::CasMismatch { current },
            v0_1::CommandOutcome::Rejected { reason } => crate::CommandOutcome::Rejected { reason },
        }
    }
}

/// The outcome as v0.1.0 reads it (every outcome of a v0.1.0 command has a v0.1.0 form).
pub fn outcome_to_v0_1(outcome: &crate::CommandOutcome) -> v0_1::CommandOutcome {
    match outcome.clone() {
        crate::CommandOutcome::Applied => v0_1::CommandOutcome::Applied,
        crate::CommandOutcome::Deleted { existed } => v0_1::CommandOutcome::Deleted { existed },
        crate::CommandOutcome::CasMismatch { current } => v0_1::CommandOutcome::CasMismatch { current },
        crate::CommandOutcome::Rejected { reason } => v0_1::CommandOutcome::Rejected { reason },
        // Only a batch has a batch outcome, and no v0.1.0 node proposes one (the proposer answers
        // each command of a batch with its own outcome).
        crate::CommandOutcome::Batch(_) => {
            v0_1::CommandOutcome::Rejected { reason: "a batch outcome has no form in clusterd 0.1.0".into() }
        }
    }
}

impl From<v0_1::Report> for crate::Report {
    fn from(report: v0_1::Report) -> crate::Report {
        match report {
            v0_1::Report::Running { resources } => crate::Report::Running { resources },
            v0_1::Report::Stopped => crate::Report::Stopped,
            v0_1::Report::StopFailed { reason } => crate::Report::StopFailed { reason },
            v0_1::Report::ResourceFailed { resource, reason } => crate::Report::ResourceFailed { resource, reason },
            v0_1::Report::Restarting { reason } => crate::Report::Restarting { reason },
        }
    }
}

/// A report as v0.1.0 reads it, or the version its promotion reports need.
pub fn report_to_v0_1(report: &crate::Report) -> Result<v0_1::Report, NeedsVersion> {
    Ok(match report.clone() {
        crate::Report::Running { resources } => v0_1::Report::Running { resources },
        crate::Report::Stopped => v0_1::Report::Stopped,
        crate::Report::StopFailed { reason } => v0_1::Report::StopFailed { reason },
        crate::Report::ResourceFailed { resource, reason } => v0_1::Report::ResourceFailed { resource, reason },
        crate::Report::Restarting { reason } => v0_1::Report::Restarting { reason },
        crate::Report::Promoted | crate::Report::Demoted { .. } | crate::Report::Score { .. } => {
            return Err(NeedsVersion::new("a promotion report", ClusterVersion::V0_2))
        }
    })
}

/// The relation of `def` that v0.1.0 lacks, if it uses one (`depends`, `instances`, `promotable`,
/// `needs`).
pub fn relation_in_use(def: &cluster_package::PackageDef) -> Option<&'static str> {
    if !def.depends.is_empty() {
        Some("depends")
    } else if def.instances != cluster_package::Instances::Count(1) {
        Some("instances")
    } else if def.promotable.is_some() {
        Some("promotable")
    } else if !def.needs.is_empty() {
        Some("needs")
    } else {
        None
    }
}

/// A package definition as v0.1.0 reads it, or the relation it uses that needs a newer version.
pub fn def_to_v0_1(def: &cluster_package::PackageDef) -> Result<v0_1::PackageDef, NeedsVersion> {
    match relation_in_use(def) {
        Some(field) => {
            Err(NeedsVersion::new(format!("package `{}` uses `{field}`, which", def.name), ClusterVersion::V0_2))
        }
        None => Ok(def.into()),
    }
}

/// A package's state as v0.1.0 stores it, or what in it needs a newer version.
pub fn package_to_v0_1(package: &crate::PackageState) -> Result<v0_1::PackageState, NeedsVersion> {
    def_to_v0_1(&package.def)?;
    let name = &package.def.name;
    if package.role != crate::Role::Replica || package.score.is_some() || package.retired || package.instance.is_some()
    {
        return Err(NeedsVersion::new(format!("package `{name}`'s instance, role or score"), ClusterVersion::V0_2));
    }
    Ok(package.into())
}

impl From<v0_1::Settings> for crate::Settings {
    fn from(old: v0_1::Settings) -> crate::Settings {
        crate::Settings {
            snapshot_period: old.snapshot_period,
            heartbeat_ms: old.heartbeat_ms,
            lease_ms: old.lease_ms,
            clock_drift_ppm: old.clock_drift_ppm,
            lease_margin_ms: old.lease_margin_ms,
            stop_budget_ms: old.stop_budget_ms,
            fencing: old.fencing,
            grantor_wait_ceiling_us: None,
        }
    }
}

impl From<v0_1::ClusterState> for ClusterState {
    /// A v0.1.0 state is at cluster version 1, with nothing v0.1.0 did not have.
    fn from(old: v0_1::ClusterState) -> ClusterState {
        ClusterState {
            settings: old.settings.into(),
            kv: old.kv,
            packages: old.packages.into_iter().map(|(name, package)| (name, package.into())).collect(),
            nodes: old.nodes.into_iter().map(|(name, record)| (name, record.into())).collect(),
            events: old.events,
            next_event: old.next_event,
            cluster_version: ClusterVersion::V0_1,
            ..ClusterState::genesis()
        }
    }
}

/// `state` as v0.1.0 stores it, or what in it v0.1.0 cannot hold. At cluster version 1 nothing
/// newer can be in the state (the commands that put it there are refused), so this succeeds.
pub fn state_to_v0_1(state: &ClusterState) -> Result<v0_1::ClusterState, NeedsVersion> {
    let needs = |what: &str| Err(NeedsVersion::new(what, ClusterVersion::V0_2));
    if state.cluster_version > ClusterVersion::V0_1 {
        return Err(NeedsVersion::new(
            format!("a state at cluster version {}", state.cluster_version),
            state.cluster_version,
        ));
    }
    if state.settings.grantor_wait_ceiling_us.is_some() {
        return needs("a lease ceiling");
    }
    if state.alerts != crate::alerts::AlertState::default() {
        return needs("alert hooks");
    }
    if !state.witnesses.is_empty() {
        return needs("witnesses");
    }
    if state.join != crate::join::JoinState::default() {
        return needs("join tokens and certificates");
    }
    if state.nodes.values().any(|record| !record.capacity.is_empty()) {
        return needs("node capacities");
    }
    let packages = state
        .packages
        .iter()
        .map(|(name, package)| package_to_v0_1(package).map(|old| (name.clone(), old)))
        .collect::<Result<_, _>>()?;
    let settings = &state.settings;
    Ok(v0_1::ClusterState {
        settings: v0_1::Settings {
            snapshot_period: settings.snapshot_period,
            heartbeat_ms: settings.heartbeat_ms,
            lease_ms: settings.lease_ms,
            clock_drift_ppm: settings.clock_drift_ppm,
            lease_margin_ms: settings.lease_margin_ms,
            stop_budget_ms: settings.stop_budget_ms,
            fencing: settings.fencing.clone(),
        },
        kv: state.kv.clone(),
        packages,
        nodes: state.nodes.iter().map(|(name, record)| (name.clone(), record.into())).collect(),
        events: state.events.clone(),
        next_event: state.next_event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommandOutcome, Report, Role};

    fn def(extra: &str) -> cluster_package::PackageDef {
        let text = format!(
            "name = \"app\"\n{extra}\n[[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"192.0.2.1/24\"\n\
             interface = \"eth0\"\n"
        );
        cluster_package::parse_package("app.toml", &text).expect("valid package")
    }

    /// What package relations (issue 13) add cannot reach a v0.1.0 member: a definition using one
    /// and a promotion report need 0.2.0, are refused before the log at cluster version 1 and
    /// rejected if applied there; a plain definition travels in v0.1.0's shape and back unchanged.
    #[test]
    fn relations_and_promotion_reports_need_version_0_2_and_plain_packages_travel_unchanged() {
        for (extra, field) in [
            ("depends = [{ package = \"db\", where = \"same-node\" }]", "depends"),
            ("instances = 2", "instances"),
            ("needs = { slots = 1 }", "needs"),
        ] {
            let command = Command::PkgApply { def: Arc::new(def(extra)), at_ms: 1 };
            assert_eq!(command.required_version(), ClusterVersion::V0_2, "{field}");
            let err = command_to_v0_1(&command).unwrap_err().to_string();
            assert_eq!(err, format!("package `app` uses `{field}`, which needs cluster version 0.2.0"));
            let mut state = ClusterState::genesis();
            let CommandOutcome::Rejected { reason } = state.apply(&command) else { panic!("{field} applied") };
            assert_eq!(
                reason,
                format!(
                    "package `app` uses `{field}`, which needs cluster version 0.2.0, and the cluster runs at 0.1.0"
                )
            );
            assert!(state.packages.is_empty());
        }
        let plain = Command::PkgApply { def: Arc::new(def("")), at_ms: 1 };
        assert_eq!(plain.required_version(), ClusterVersion::V0_1);
        let old = command_to_v0_1(&plain).unwrap();
        assert_eq!(
            Command::from(postcard::from_bytes::<v0_1::Command>(&postcard::to_allocvec(&old).unwrap()).unwrap()),
            plain
        );

        let report = |report| Command::Report { package: "app".into(), node: "n1".into(), epoch: 1, report, at_ms: 2 };
        for promotion in [Report::Promoted, Report::Demoted { reason: "x".into() }, Report::Score { score: Some(1) }] {
            let command = report(promotion);
            assert_eq!(
                command_to_v0_1(&command).unwrap_err().to_string(),
                "a promotion report needs cluster version 0.2.0"
            );
        }
        let stopped = report(Report::Stopped);
        assert_eq!(Command::from(command_to_v0_1(&stopped).unwrap()), stopped);
        for new in [
            Command::SetRole {
                package: "app".into(),
                expected_epoch: 1,
                role: Role::Promoting,
                reason: "r".into(),
                at_ms: 3,
            },
            Command::NodeCapacity { name: "n1".into(), capacity: [("slots".into(), 1)].into(), at_ms: 3 },
            Command::Batch(vec![Command::KvDel { key: "k".into() }]),
        ] {
            let err = command_to_v0_1(&new).unwrap_err().to_string();
            assert_eq!(err, format!("command `{}` needs cluster version 0.2.0", new.name()));
        }
    }

    /// A state at cluster version 1 is stored in v0.1.0's shape and read back equal; what v0.1.0
    /// cannot hold (a node's capacity, an instance's role) is named instead of being dropped.
    #[test]
    fn a_v0_1_state_round_trips_and_what_it_cannot_hold_is_named() {
        let mut state = ClusterState::genesis();
        state.apply(&Command::NodeHello { name: "n1".into(), watchdog: None, at_ms: 0 });
        state.apply(&Command::PkgApply { def: Arc::new(def("")), at_ms: 1 });
        let old = state_to_v0_1(&state).unwrap();
        assert_eq!(ClusterState::from(old), state);
        let mut with_capacity = state.clone();
        with_capacity.nodes.get_mut("n1").unwrap().capacity.insert("slots".into(), 1);
        assert_eq!(
            state_to_v0_1(&with_capacity).unwrap_err().to_string(),
            "node capacities needs cluster version 0.2.0"
        );
        let mut promoted = state.clone();
        promoted.packages.get_mut("app").unwrap().role = Role::Primary;
        assert_eq!(
            state_to_v0_1(&promoted).unwrap_err().to_string(),
            "package `app`'s instance, role or score needs cluster version 0.2.0"
        );
    }
}
