//! Commands carried by the Raft log, and what applying one produced.

use std::collections::BTreeMap;
use std::sync::Arc;

use cluster_package::PackageDef;
use serde::{Deserialize, Serialize};

use crate::package::{Phase, ResourceStatus, Role};
use crate::settings::FenceConfig;
use crate::version::{ClusterVersion, NeedsVersion};

/// A state change, proposed by the leader and applied by every node in log order. Commands that
/// need a time carry the proposer's wall clock (`at_ms`, ms since the Unix epoch), used only for
/// events and failure windows, so that every node applies them identically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Store `value` under `key`, replacing any previous value.
    KvSet { key: String, value: String },
    /// Store `new` under `key` only if the current value is `expected` (`None`: the key is absent).
    KvCas { key: String, expected: Option<String>, new: String },
    /// Remove `key`.
    KvDel { key: String },
    /// Change one cluster setting.
    SetSetting { name: String, value: String },
    /// Set or remove the fence device of a node.
    SetFence { node: String, fence: Option<FenceConfig> },

    /// Load or replace a package definition.
    PkgApply { def: Arc<PackageDef>, at_ms: u64 },
    /// Forget a stopped package.
    PkgRemove { name: String, at_ms: u64 },
    /// Desired running, optionally on a given node (a one-shot intent).
    PkgRun { name: String, node: Option<String>, at_ms: u64 },
    /// Desired stopped everywhere.
    PkgStop { name: String, at_ms: u64 },
    /// Planned switchover to `to` (a one-shot intent).
    PkgMove { name: String, to: String, at_ms: u64 },
    /// Maintenance mode on or off.
    PkgFreeze { name: String, frozen: bool, at_ms: u64 },
    /// Forget failures, bans and a blocked state (the operator vouches the old owner is stopped).
    PkgCleanup { name: String, at_ms: u64 },
    /// Drain a node (or bring it back).
    NodeStandby { name: String, standby: bool, at_ms: u64 },
    /// A node announces itself at start, with its armed watchdog device if any.
    NodeHello { name: String, watchdog: Option<String>, at_ms: u64 },

    /// Controller decision: owner and phase of a package, valid only at `expected_epoch`.
    Assign { package: String, expected_epoch: u64, owner: Option<String>, phase: Phase, reason: String, at_ms: u64 },
    /// What an owner did with its package, valid only from the owner at the current epoch.
    Report { package: String, node: String, epoch: u64, report: Report, at_ms: u64 },
    /// A fence agent confirmed that `node` is off: the packages it owned when the fence was decided
    /// (name → epoch) are stopped.
    NodeFenced { node: String, owned: BTreeMap<String, u64>, at_ms: u64 },
    /// `clusterd` on `name` is stopping (`systemctl stop`): its packages move away, and nothing is
    /// placed there until it announces itself again (`NodeHello`).
    NodeLeave { name: String, at_ms: u64 },
    /// The node's watchdog became usable (`Some(device)`) or unusable (`None`: the node protects
    /// itself by its lease only, and `status` says so); `reason` says why.
    NodeWatchdog { name: String, watchdog: Option<String>, reason: String, at_ms: u64 },
    /// The leader saw every lease granted with the longer wait `ceiling_us` end (after the lease was
    /// shortened): leaders may judge unheard nodes with the current wait again.
    LeasesSettled { ceiling_us: u64 },
    /// Add, replace or remove (`None`) the alert hook at `path` (`clusterctl cluster alert`).
    SetAlert { path: String, hook: Option<crate::alerts::AlertHook> },
    /// The leader ran the alert hooks for every event before sequence number `next`.
    AlertsDelivered { next: u64 },
    /// Controller decision on an instance of a promotable package: promote it (`Promoting`, refused
    /// once `primaries` instances may be promoted) or demote it (`Demoting`), valid only at
    /// `expected_epoch`.
    SetRole { package: String, expected_epoch: u64, role: Role, reason: String, at_ms: u64 },
    /// A node announces what it offers to packages' `needs` (its node file's `capacity`).
    NodeCapacity { name: String, capacity: BTreeMap<String, u64>, at_ms: u64 },
    /// Several commands proposed together (one Raft entry, one log append): applied in order, as
    /// if each were its own entry; the outcome is [`CommandOutcome::Batch`], one per command.
    Batch(Vec<Command>),
    /// Every member runs a release that reads `version`'s formats: the cluster uses them from now
    /// on (proposed by the leader, never lowered; see `crate::version`).
    ActivateVersion { version: ClusterVersion, at_ms: u64 },
    /// `name` becomes a witness (a voter that never hosts packages), or a node that may host them
    /// again (`clusterctl node add --witness`, node file `role = "witness"`).
    NodeRole { name: String, witness: bool, at_ms: u64 },
    /// A join token whose secret hashes (SHA-256, hex) to `hash`, valid until `expires_ms`
    /// (`clusterctl cluster token`; `crate::join`).
    TokenCreate { hash: String, expires_ms: u64, at_ms: u64 },
    /// The token `hash` may no longer be redeemed (`clusterctl cluster token --revoke`).
    TokenRevoke { hash: String, at_ms: u64 },
    /// The token `hash` was redeemed by node `node` at `address`, which got the certificate
    /// `fingerprint` (`clusterctl join`); rejected if the token is used, revoked, expired at
    /// `at_ms`, or the name is taken.
    TokenRedeem { hash: String, node: String, address: String, fingerprint: String, at_ms: u64 },
    /// `node` was removed: every certificate issued to it, and certificates bearing its name, are
    /// refused from now on (`clusterctl node remove`).
    NodeRevoke { name: String, at_ms: u64 },
    /// A removed `name` is added again (`clusterctl node add`): certificates bearing it are
    /// accepted again, except those revoked by fingerprint.
    NodeAdmit { name: String, at_ms: u64 },
    /// Member `node` renewed its certificate: the new one has `fingerprint` (revoked with the
    /// others if the node is removed); rejected for a removed node.
    CertRenewed { node: String, fingerprint: String, at_ms: u64 },
}

impl Command {
    /// The variant's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::KvSet { .. } => "KvSet",
            Command::KvCas { .. } => "KvCas",
            Command::KvDel { .. } => "KvDel",
            Command::SetSetting { .. } => "SetSetting",
            Command::SetFence { .. } => "SetFence",
            Command::PkgApply { .. } => "PkgApply",
            Command::PkgRemove { .. } => "PkgRemove",
            Command::PkgRun { .. } => "PkgRun",
            Command::PkgStop { .. } => "PkgStop",
            Command::PkgMove { .. } => "PkgMove",
            Command::PkgFreeze { .. } => "PkgFreeze",
            Command::PkgCleanup { .. } => "PkgCleanup",
            Command::NodeStandby { .. } => "NodeStandby",
            Command::NodeHello { .. } => "NodeHello",
            Command::Assign { .. } => "Assign",
            Command::Report { .. } => "Report",
            Command::NodeFenced { .. } => "NodeFenced",
            Command::NodeLeave { .. } => "NodeLeave",
            Command::NodeWatchdog { .. } => "NodeWatchdog",
            Command::LeasesSettled { .. } => "LeasesSettled",
            Command::SetAlert { .. } => "SetAlert",
            Command::AlertsDelivered { .. } => "AlertsDelivered",
            Command::ActivateVersion { .. } => "ActivateVersion",
            Command::NodeRole { .. } => "NodeRole",
            Command::TokenCreate { .. } => "TokenCreate",
            Command::TokenRevoke { .. } => "TokenRevoke",
            Command::TokenRedeem { .. } => "TokenRedeem",
            Command::NodeRevoke { .. } => "NodeRevoke",
            Command::NodeAdmit { .. } => "NodeAdmit",
            Command::CertRenewed { .. } => "CertRenewed",
            Command::SetRole { .. } => "SetRole",
            Command::NodeCapacity { .. } => "NodeCapacity",
            Command::Batch(_) => "Batch",
        }
    }

    /// The oldest cluster version whose members can decode and apply this command: the leader
    /// proposes it only at that version or later (`crate::version`).
    pub fn required_version(&self) -> ClusterVersion {
        self.version_need().needs
    }

    /// What in this command needs the newest version, and that version: a package definition that
    /// uses relations, a promotion report, or the command itself.
    pub fn version_need(&self) -> NeedsVersion {
        match self {
            Command::PkgApply { def, .. } => {
                if let Some(field) = crate::compat::relation_in_use(def) {
                    return NeedsVersion::new(
                        format!("package `{}` uses `{field}`, which", def.name),
                        ClusterVersion::V0_2,
                    );
                }
            }
            Command::Report { report, .. } if crate::compat::report_to_v0_1(report).is_err() => {
                return NeedsVersion::new("a promotion report", ClusterVersion::V0_2);
            }
            _ => {}
        }
        NeedsVersion::new(format!("command `{}`", self.name()), self.variant_version())
    }

    /// The oldest cluster version that knows this variant.
    fn variant_version(&self) -> ClusterVersion {
        match self {
            Command::KvSet { .. }
            | Command::KvCas { .. }
            | Command::KvDel { .. }
            | Command::SetSetting { .. }
            | Command::SetFence { .. }
            | Command::PkgApply { .. }
            | Command::PkgRemove { .. }
            | Command::PkgRun { .. }
            | Command::PkgStop { .. }
            | Command::PkgMove { .. }
            | Command::PkgFreeze { .. }
            | Command::PkgCleanup { .. }
            | Command::NodeStandby { .. }
            | Command::NodeHello { .. }
            | Command::Assign { .. }
            | Command::Report { .. }
            | Command::NodeFenced { .. }
            | Command::NodeLeave { .. }
            | Command::NodeWatchdog { .. } => ClusterVersion::V0_1,
            Command::LeasesSettled { .. }
            | Command::SetAlert { .. }
            | Command::AlertsDelivered { .. }
            | Command::ActivateVersion { .. }
            | Command::NodeRole { .. }
            | Command::TokenCreate { .. }
            | Command::TokenRevoke { .. }
            | Command::TokenRedeem { .. }
            | Command::NodeRevoke { .. }
            | Command::NodeAdmit { .. }
            | Command::CertRenewed { .. }
            | Command::SetRole { .. }
            | Command::NodeCapacity { .. }
            | Command::Batch(_) => ClusterVersion::V0_2,
        }
    }
}

/// An owner's report about its package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    /// Every resource started (or was found running and adopted).
    Running { resources: Vec<ResourceStatus> },
    /// Every resource stopped.
    Stopped,
    /// A stop failed: resources may still be active.
    StopFailed { reason: String },
    /// A resource failed to start or its monitor failed.
    ResourceFailed { resource: String, reason: String },
    /// The owner stopped a running package for a reason that is not a failure of the package (its
    /// lease reached the stop budget, then came back) and starts it again: `running -> starting`,
    /// not counted against the restart budget.
    Restarting { reason: String },
    /// The instance is promoted (after `SetRole(Promoting)`): its primary-only resources run.
    Promoted,
    /// The instance is no longer promoted here: demoted (after `SetRole(Demoting)`, or a failed
    /// promotion undone).
    Demoted { reason: String },
    /// The promotion score the agents set on this instance (`None`: removed).
    Score { score: Option<i64> },
}

/// The result of applying one [`Command`]; identical on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// The command changed the state as asked.
    Applied,
    /// `kv del`: whether the key existed.
    Deleted { existed: bool },
    /// `kv cas`: the current value did not match; nothing changed.
    CasMismatch { current: Option<String> },
    /// The command was refused at apply time; nothing changed.
    Rejected { reason: String },
    /// The outcomes of a [`Command::Batch`], in order.
    Batch(Vec<CommandOutcome>),
}
