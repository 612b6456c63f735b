//! Package model types: what a package file says, after validation.
//!
//! These types are stored in the Raft-replicated state, so they derive `Serialize`/`Deserialize`.
//! They carry no defaults of their own: the parser fills every field (see `docs/packages.md`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::name::NodeName;

/// One package: a named, ordered list of resources plus placement and restart policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageDef {
    /// Package name, unique in the cluster.
    pub name: String,
    /// Nodes allowed to run the package, in preference order. Empty means every node.
    pub nodes: Vec<NodeName>,
    /// How a new owner is chosen.
    pub failover: Failover,
    /// Whether the package returns to a more preferred node when it comes back.
    pub failback: Failback,
    /// Run as soon as applied / as soon as the cluster forms.
    pub auto_run: bool,
    /// Local restarts before the package relocates.
    pub restart: Restart,
    /// Resources in start order (stop order is the reverse).
    pub resources: Vec<ResourceDef>,
    /// Packages this one needs running, and where (`depends`).
    pub depends: Vec<Dependency>,
    /// How many instances run (`instances`): one by default.
    pub instances: Instances,
    /// Instances run as replicas, some of them promoted (`promotable`).
    pub promotable: Option<Promotable>,
    /// What one instance takes of a node's capacity (`needs`), by capacity name.
    pub needs: BTreeMap<String, u64>,
}

impl PackageDef {
    /// The position of the first resource that `new` defines differently (changed, renamed, moved,
    /// added or removed), or `None` when both have the same resources. Resources before it are left
    /// running when the package is redefined; it and every later one are restarted, as in an
    /// ordered group.
    pub fn first_redefined_resource(&self, new: &PackageDef) -> Option<usize> {
        let common = self.resources.iter().zip(&new.resources).take_while(|(old, new)| old == new).count();
        (common < self.resources.len().max(new.resources.len())).then_some(common)
    }
}

impl PackageDef {
    /// Whether the package runs as several instances (one replicated state each, `NAME:INSTANCE`).
    pub fn multi_instance(&self) -> bool {
        self.instances != Instances::Count(1)
    }

    /// Whether a resource is started only on a promoted instance (`promotable.primary_only`).
    pub fn primary_only(&self, resource: &str) -> bool {
        self.promotable.as_ref().is_some_and(|promotable| promotable.primary_only.iter().any(|name| name == resource))
    }

    /// Whether a resource is promoted and demoted with its instance (`promotable.promote`).
    pub fn promoted_with_instance(&self, resource: &str) -> bool {
        self.promotable.as_ref().is_some_and(|promotable| promotable.promote.iter().any(|name| name == resource))
    }

    /// The dependency on `package`, if this package declares one.
    pub fn dependency_on(&self, package: &str) -> Option<&Dependency> {
        self.depends.iter().find(|dependency| dependency.package == package)
    }
}

/// A package this one needs (`depends = [{ package = "db", where = "same-node" }]`): it starts only
/// once that package runs where `location` says, stops before it, and moves with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The package depended on.
    pub package: String,
    /// Where it must run, relative to this package's node.
    pub location: Location,
}

/// Where a package depended on must run (Serviceguard's dependency locations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Location {
    /// On the same node (colocation).
    SameNode,
    /// On another node; the two are never active on one node (anti-affinity).
    DifferentNode,
    /// Anywhere in the cluster.
    AnyNode,
}

impl Location {
    /// The word used in package files.
    pub fn as_str(self) -> &'static str {
        match self {
            Location::SameNode => "same-node",
            Location::DifferentNode => "different-node",
            Location::AnyNode => "any-node",
        }
    }
}

/// How many instances of a package run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Instances {
    /// This many, each on its own node (1: an ordinary package).
    Count(u32),
    /// One per node of `nodes` (every node when `nodes` is omitted), each bound to its node.
    All,
}

/// A promotable package: every instance runs as a replica and `primaries` of them are promoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotable {
    /// How many instances are promoted at most (and at least, when enough replicas run).
    pub primaries: u32,
    /// OCF resources called with `promote` and `demote` (default: every `ocf` resource not in `primary_only`).
    pub promote: Vec<String>,
    /// Resources started only on a promoted instance, after the promotion, and stopped before a demotion
    /// (a VIP that follows the primary).
    pub primary_only: Vec<String>,
}

/// Placement policy on failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failover {
    /// First reachable node in `nodes` order.
    Ordered,
    /// The allowed node running the fewest packages.
    LeastLoaded,
}

/// What happens when a more preferred node comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failback {
    /// Stay where the package is until an operator moves it.
    Manual,
    /// Move back to the more preferred node.
    Auto,
}

/// Restart budget: at most `max` local restarts within the sliding window `within`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    /// Local restarts allowed before relocating (0: relocate on the first failure).
    pub max: u32,
    /// Window over which restarts are counted.
    pub within: Duration,
}

/// One resource of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDef {
    /// Resource name, unique in its package.
    pub name: String,
    /// Timeout of the start action.
    pub start_timeout: Duration,
    /// Timeout of the stop action.
    pub stop_timeout: Duration,
    /// Monitor schedule.
    pub monitor: Monitor,
    /// What the resource is, with its type-specific parameters.
    pub kind: ResourceKind,
}

/// Monitor schedule of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Monitor {
    /// Time between two monitor actions.
    pub interval: Duration,
    /// Timeout of one monitor action.
    pub timeout: Duration,
    /// OCF check level: 0 (cheap) or 10 (deeper, e.g. a read/write check of a filesystem).
    pub depth: u32,
}

/// The type of a resource and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceKind {
    /// A virtual IP address (`type = "ip"`).
    Ip(IpResource),
    /// A block device mounted at a mountpoint (`type = "filesystem"`).
    Filesystem(FilesystemResource),
    /// A supervised program (`type = "process"`).
    Process(ProcessResource),
    /// An external OCF resource agent (`type = "ocf"`).
    Ocf(OcfResource),
}

impl ResourceKind {
    /// The `type` string of this kind, as written in package files.
    pub fn type_name(&self) -> &'static str {
        match self {
            ResourceKind::Ip(_) => "ip",
            ResourceKind::Filesystem(_) => "filesystem",
            ResourceKind::Process(_) => "process",
            ResourceKind::Ocf(_) => "ocf",
        }
    }
}

/// A virtual IP address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpResource {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The interface it is added to.
    pub interface: String,
    /// Probe the segment for another holder of the address before adding it.
    pub check_duplicate: bool,
    /// How long to wait for an answer to the duplicate probe (IPv4; IPv6 uses kernel DAD).
    pub probe_timeout: Duration,
    /// Gratuitous ARP / unsolicited neighbour advertisements sent after adding.
    pub announce_count: u32,
    /// Interval between two announcements.
    pub announce_interval: Duration,
}

/// How a block device is named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    /// A path such as `/dev/sdb1` or `/dev/disk/by-id/...`.
    Path(PathBuf),
    /// `UUID=...`: the filesystem UUID.
    Uuid(String),
    /// `LABEL=...`: the filesystem label.
    Label(String),
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Path(path) => write!(f, "{}", path.display()),
            DeviceSpec::Uuid(uuid) => write!(f, "UUID={uuid}"),
            DeviceSpec::Label(label) => write!(f, "LABEL={label}"),
        }
    }
}

/// A filesystem on a shared LUN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesystemResource {
    /// The block device.
    pub device: DeviceSpec,
    /// Where it is mounted (created if missing).
    pub mountpoint: PathBuf,
    /// Filesystem type, e.g. `ext4`, `xfs`.
    pub fstype: String,
    /// Mount options as given to mount(8), e.g. `["noatime", "ro"]`.
    pub options: Vec<String>,
    /// Run `fsck -a` before mounting.
    pub fsck: bool,
    /// How long to wait for the device to appear.
    pub device_timeout: Duration,
    /// On stop, signal then kill processes holding files under the mountpoint.
    pub kill_holders: bool,
    /// Unmount attempts before stop fails.
    pub unmount_retries: u32,
}

/// Where a supervised process writes its stdout and stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessOutput {
    /// Inherit `clusterd`'s stderr, which systemd sends to the journal.
    Journal,
    /// Append to a file.
    File(PathBuf),
}

/// When a started process counts as up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Readiness {
    /// Still alive after this long.
    AliveFor(Duration),
    /// A TCP connection to this address is accepted.
    TcpPort(SocketAddr),
    /// This command exits 0 (retried until the start timeout).
    Command(Vec<String>),
}

/// A supervised program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessResource {
    /// argv; the first element is an absolute path or a name looked up in `PATH`.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub environment: BTreeMap<String, String>,
    /// User to run as (name or numeric id).
    pub user: Option<String>,
    /// Group to run as (name or numeric id).
    pub group: Option<String>,
    /// Working directory.
    pub working_directory: Option<PathBuf>,
    /// Where stdout and stderr go.
    pub output: ProcessOutput,
    /// Readiness check.
    pub ready: Readiness,
    /// Signal sent first on stop, e.g. `SIGTERM`.
    pub stop_signal: String,
    /// After this long without exiting, the whole process tree is killed with SIGKILL.
    pub kill_after: Duration,
}

/// Which OCF agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OcfAgentRef {
    /// `provider:type`, found under `$OCF_ROOT/resource.d/provider/type`.
    Provider {
        /// e.g. `heartbeat`.
        provider: String,
        /// e.g. `Dummy`.
        agent_type: String,
    },
    /// An absolute path to an agent script.
    Path(PathBuf),
}

impl std::fmt::Display for OcfAgentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OcfAgentRef::Provider { provider, agent_type } => write!(f, "ocf:{provider}:{agent_type}"),
            OcfAgentRef::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// An external OCF resource agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OcfResource {
    /// The agent.
    pub agent: OcfAgentRef,
    /// Parameters, handed over as `OCF_RESKEY_<name>`.
    pub params: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    fn package(resources: &[(&str, &str)]) -> super::PackageDef {
        let mut text = String::from("name = \"web\"\n");
        for (name, command) in resources {
            text.push_str(&format!(
                "\n[[resource]]\nname = \"{name}\"\ntype = \"process\"\ncommand = [\"{command}\"]\n"
            ));
        }
        crate::parse_package("web.toml", &text).expect("valid package")
    }

    #[test]
    fn the_first_redefined_resource_is_where_the_lists_part() {
        let old = package(&[("a", "/bin/a"), ("b", "/bin/b"), ("c", "/bin/c")]);
        assert_eq!(old.first_redefined_resource(&old.clone()), None);
        assert_eq!(
            old.first_redefined_resource(&package(&[("a", "/bin/a"), ("b", "/bin/B"), ("c", "/bin/c")])),
            Some(1)
        );
        assert_eq!(old.first_redefined_resource(&package(&[("a", "/bin/a"), ("b", "/bin/b")])), Some(2), "removed");
        let added = package(&[("a", "/bin/a"), ("b", "/bin/b"), ("c", "/bin/c"), ("d", "/bin/d")]);
        assert_eq!(old.first_redefined_resource(&added), Some(3), "added");
        assert_eq!(old.first_redefined_resource(&package(&[("b", "/bin/b"), ("a", "/bin/a")])), Some(0), "reordered");
        // Placement and policy are not resources.
        let mut placed = old.clone();
        placed.nodes = vec!["n2".into()];
        placed.auto_run = !placed.auto_run;
        assert_eq!(old.first_redefined_resource(&placed), None);
    }
}
