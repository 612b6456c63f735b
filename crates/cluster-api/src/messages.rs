//! Requests and replies of the client API and the envelope of peer RPCs.

use cluster_model::alerts::AlertHook;
use cluster_model::{Event, PackageState};
use cluster_package::PackageDef;
use serde::{Deserialize, Serialize};

/// Everything a connection to `clusterd` can carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// An operator or program request. `forwarded` is set by a follower that passed it to the
    /// leader; a forwarded request is never forwarded again.
    Client { request: ClientRequest, forwarded: bool },
    /// A node-to-node RPC (Raft and our election helpers), opaque to this crate.
    Peer(PeerRequest),
}

/// The answer to a [`Request`].
// A response is built once and moved into the encoder: the size of the status variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Client(Result<ClientReply, ApiError>),
    Peer(Result<Vec<u8>, String>),
}

/// Kinds of peer RPC; the payload encoding belongs to the Raft adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    /// Would you vote for me? Asked before a real election so that a node cut off from the
    /// cluster cannot inflate its term and depose a healthy leader when it returns.
    PreVote,
    /// Do not start elections for a while (leadership transfer).
    HoldElections,
    /// Start an election now (leadership transfer).
    Campaign,
    /// Renew this node's lease with the leader.
    Lease,
    /// Propose a command to the leader (executor reports).
    Propose,
    /// A new leader asks how long ago this voter last acknowledged a leader of an older term
    /// (bounds every lease an older leader could have granted; see docs/safety.md).
    LastAck,
    /// Keep this node's lease while no leader grants it (served by the daemon).
    Keep,
    /// A leader asks whether nodes whose lease ended may still hold a kept lease (served by the daemon).
    ExpiryCheck,
    /// Which release does this node run, and which cluster versions can it read? (Since 0.2.0: a
    /// v0.1.0 node refuses the frame, which is its answer.)
    Version,
    /// A learner asks a voter to carry its lease renewal to the leader (served by the daemon).
    LeaseRelay,
    /// A voter carries the renewals it relays to the leader in one message (served by the daemon).
    LeaseBatch,
}

/// The answer to a [`PeerRpc::Version`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeVersion {
    /// The release (`clusterd --version`).
    pub release: String,
    /// The newest cluster version it can run at.
    pub newest: cluster_model::ClusterVersion,
}

/// A peer RPC: its kind and its encoded body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRequest {
    pub rpc: PeerRpc,
    pub payload: Vec<u8>,
}

/// Operations offered by `clusterctl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    ClusterInit,
    NodeAdd {
        name: String,
        address: String,
        learner: bool,
        /// A witness: a voter that never hosts packages (since 0.2.0).
        witness: bool,
    },
    NodeRemove {
        name: String,
    },
    NodePromote {
        name: String,
    },
    TransferLeader {
        name: String,
    },
    Status,
    SettingsSet {
        name: String,
        value: String,
    },
    SettingsGet,
    KvSet {
        key: String,
        value: String,
    },
    KvGet {
        key: String,
    },
    KvCas {
        key: String,
        expected: Option<String>,
        new: String,
    },
    KvDel {
        key: String,
    },
    KvList {
        prefix: String,
    },
    FenceSet {
        node: String,
        agent: String,
        params: Vec<(String, String)>,
    },
    FenceRemove {
        node: String,
    },
    PkgApply {
        packages: Vec<PackageDef>,
    },
    PkgRun {
        name: String,
        node: Option<String>,
    },
    PkgStop {
        name: String,
    },
    PkgMove {
        name: String,
        to: String,
    },
    PkgFreeze {
        name: String,
        frozen: bool,
    },
    PkgCleanup {
        name: String,
    },
    PkgRemove {
        name: String,
    },
    PkgStatus {
        name: Option<String>,
    },
    PkgPlan {
        name: String,
    },
    NodeStandby {
        name: String,
        standby: bool,
    },
    /// Events with a sequence number above `after` (all retained ones when `None`).
    Events {
        after: Option<u64>,
    },
    /// Add or replace (`Some`) or remove (`None`) the alert hook at `path`.
    AlertSet {
        path: String,
        hook: Option<AlertHook>,
    },
    /// The alert hooks and their delivery mark.
    AlertList,
    /// What `clusterctl report` collects from one node: `node` (`None`: the node asked) serves it
    /// itself; logs from `since_ms` (ms since the Unix epoch) on.
    Diagnostics {
        node: Option<String>,
        since_ms: Option<u64>,
    },
    /// Create a join token valid for `ttl_ms` (`clusterctl cluster token`; since 0.2.0).
    TokenCreate {
        ttl_ms: u64,
    },
    /// Revoke an unused join token (`clusterctl cluster token --revoke TOKEN`).
    TokenRevoke {
        token: String,
    },
    /// A new node redeems a join token: the only request served on a connection without a client
    /// certificate. The node serving it signs `csr_pem` with the cluster CA for exactly `node` at
    /// `address` (`clusterctl join`).
    Join {
        token: String,
        node: String,
        address: String,
        csr_pem: String,
    },
    /// Renew the certificate of member `node` now (`clusterctl ca renew NODE`): served by `node`
    /// itself, which makes a new key and asks a member holding the CA key to sign it.
    CertRenew {
        node: String,
    },
    /// Member `node` asks for a renewed certificate (the caller's certificate must name `node`):
    /// served by a member holding the CA key, for `node`'s name and address in the membership.
    CertSign {
        node: String,
        csr_pem: String,
    },
}

impl ClientRequest {
    /// The operation's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            ClientRequest::ClusterInit => "cluster init",
            ClientRequest::NodeAdd { .. } => "node add",
            ClientRequest::NodeRemove { .. } => "node remove",
            ClientRequest::NodePromote { .. } => "node promote",
            ClientRequest::TransferLeader { .. } => "cluster transfer-leader",
            ClientRequest::Status => "status",
            ClientRequest::SettingsSet { .. } => "cluster set",
            ClientRequest::SettingsGet => "cluster settings",
            ClientRequest::KvSet { .. } => "kv set",
            ClientRequest::KvGet { .. } => "kv get",
            ClientRequest::KvCas { .. } => "kv cas",
            ClientRequest::KvDel { .. } => "kv del",
            ClientRequest::KvList { .. } => "kv list",
            ClientRequest::FenceSet { .. } => "cluster fence set",
            ClientRequest::FenceRemove { .. } => "cluster fence remove",
            ClientRequest::PkgApply { .. } => "pkg apply",
            ClientRequest::PkgRun { .. } => "pkg run",
            ClientRequest::PkgStop { .. } => "pkg stop",
            ClientRequest::PkgMove { .. } => "pkg move",
            ClientRequest::PkgFreeze { .. } => "pkg freeze",
            ClientRequest::PkgCleanup { .. } => "pkg cleanup",
            ClientRequest::PkgRemove { .. } => "pkg remove",
            ClientRequest::PkgStatus { .. } => "pkg status",
            ClientRequest::PkgPlan { .. } => "pkg plan",
            ClientRequest::NodeStandby { .. } => "node standby",
            ClientRequest::Events { .. } => "events",
            ClientRequest::AlertSet { .. } => "cluster alert",
            ClientRequest::AlertList => "cluster alert list",
            ClientRequest::Diagnostics { .. } => "report",
            ClientRequest::TokenCreate { .. } => "cluster token",
            ClientRequest::TokenRevoke { .. } => "cluster token --revoke",
            ClientRequest::Join { .. } => "join",
            ClientRequest::CertRenew { .. } => "ca renew",
            ClientRequest::CertSign { .. } => "certificate signing",
        }
    }

    /// Whether only the leader can serve this request (writes, membership, linearizable reads).
    pub fn needs_leader(&self) -> bool {
        !matches!(
            self,
            ClientRequest::ClusterInit
                | ClientRequest::Status
                | ClientRequest::PkgPlan { .. }
                | ClientRequest::Diagnostics { .. }
                | ClientRequest::Join { .. }
                | ClientRequest::CertRenew { .. }
                | ClientRequest::CertSign { .. }
        )
    }
}

/// Successful replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    Done {
        message: String,
    },
    Value {
        key: String,
        value: String,
    },
    List {
        entries: Vec<(String, String)>,
    },
    Deleted {
        key: String,
        existed: bool,
    },
    Settings {
        entries: Vec<(String, String)>,
    },
    Status(StatusReport),
    Packages {
        packages: Vec<PackageState>,
    },
    Plan {
        lines: Vec<String>,
    },
    Events {
        events: Vec<Event>,
    },
    Alerts {
        hooks: Vec<(String, AlertHook)>,
        next: u64,
    },
    Diagnostics(NodeDiagnostics),
    /// `pkg status`: the packages (every instance), and for those desired running that run nowhere
    /// and are not being placed, why (`(instance, reason)`: fits nowhere, waits for a dependency).
    PackageStatus {
        packages: Vec<PackageState>,
        waiting: Vec<(String, String)>,
    },
    /// A new join token (one line).
    Token {
        token: String,
        expires_ms: u64,
    },
    /// A redeemed join token: the node's certificate, the CA certificate, and the members to
    /// dial (name, address).
    Joined {
        cert_pem: String,
        ca_pem: String,
        members: Vec<(String, String)>,
    },
}

/// One node's part of a `clusterctl report`: named text files (its redacted node file, its log,
/// its Raft view) and notes on what could not be collected. Secrets are never in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDiagnostics {
    pub node: String,
    /// `clusterd` version.
    pub version: String,
    /// When it was collected, ms since the Unix epoch (the node's clock).
    pub collected_at_ms: u64,
    /// `(file name, contents)`.
    pub files: Vec<(String, String)>,
    /// What is missing and why (no journal, no log file, a log cut to its last bytes).
    pub notes: Vec<String>,
}

/// Categories of failure, each with its own `clusterctl` exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Any other failure (exit 1).
    Failed,
    /// Bad input: a name, key, value or setting of the wrong shape (exit 1).
    Invalid,
    /// The key does not exist (exit 3).
    NotFound,
    /// Compare-and-set found another value (exit 4).
    CasMismatch,
    /// No leader or no quorum within the timeout (exit 5).
    NoLeader,
    /// The node asked is not the leader; the request was not executed (exit 5).
    NotLeader,
}

/// A failed request: what went wrong, naming the object. For [`ErrorKind::CasMismatch`],
/// `current` holds the value found (`None`: the key is absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub current: Option<String>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { kind, message: message.into(), current: None }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// Voter or learner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Voter,
    Learner,
}

/// One member as seen by the node that answered `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub address: String,
    pub role: NodeRole,
    /// Highest log index known to be replicated on this node (known by the leader only).
    pub matched_index: Option<u64>,
    /// Milliseconds since the answering node last heard from this node (itself: 0).
    pub last_contact_ms: Option<u64>,
    /// Drained by `node standby`.
    pub standby: bool,
    /// Its clusterd is stopping or was stopped cleanly (`systemctl stop`); cleared when it starts.
    pub leaving: bool,
    /// watchdog, fencing or lease-only.
    pub protection: String,
    /// The leader's view of its lease: alive, unknown or expired (leader reports only).
    pub lease: Option<String>,
    /// The release its clusterd runs, as the leader last heard (leader reports only).
    pub version: Option<String>,
    /// A witness: a voter that never hosts packages.
    pub witness: bool,
}

/// The cluster as seen by one node (the leader when there is one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The node that produced this report.
    pub reporter: String,
    /// Its Raft state: leader, follower, candidate or learner.
    pub reporter_state: String,
    pub leader: Option<String>,
    pub term: u64,
    /// The leader heard from a quorum within the election timeout.
    pub quorum: bool,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub nodes: Vec<NodeStatus>,
    pub packages: Vec<PackageState>,
    /// Things the operator must know: lease-only nodes, blocked packages, failures.
    pub warnings: Vec<String>,
    /// The cluster version the reporter applied: the formats the cluster uses (`0.1.0` until
    /// every node runs a newer release).
    pub cluster_version: String,
}
