//! v0.1.0's client and peer envelope (protocol 3), frozen, and its conversions to and from today's
//! messages. Unchanged types are re-exported; `compat/v0.1.0/fixtures.json` pins every encoding.
//!
//! Reading is total (everything v0.1.0 sends has a meaning today). Writing can fail: a request
//! v0.1.0 does not know is refused with the version it needs; a reply it cannot decode becomes an
//! error reply naming both releases, and new fields of a reply it knows are left out.

use serde::{Deserialize, Serialize};

use cluster_model::compat::v0_1::{Event, PackageDef, PackageState};
use cluster_model::{ClusterVersion, NeedsVersion};

pub use crate::messages::{ApiError, ErrorKind, NodeRole};

/// v0.1.0's `Request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Client { request: ClientRequest, forwarded: bool },
    Peer(PeerRequest),
}

/// v0.1.0's `Response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Client(Result<ClientReply, ApiError>),
    Peer(Result<Vec<u8>, String>),
}

/// v0.1.0's `PeerRpc`: its 9 kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    PreVote,
    HoldElections,
    Campaign,
    Lease,
    Propose,
    LastAck,
}

/// v0.1.0's `PeerRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRequest {
    pub rpc: PeerRpc,
    pub payload: Vec<u8>,
}

/// v0.1.0's `ClientRequest`: its 26 operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    ClusterInit,
    NodeAdd { name: String, address: String, learner: bool },
    NodeRemove { name: String },
    NodePromote { name: String },
    TransferLeader { name: String },
    Status,
    SettingsSet { name: String, value: String },
    SettingsGet,
    KvSet { key: String, value: String },
    KvGet { key: String },
    KvCas { key: String, expected: Option<String>, new: String },
    KvDel { key: String },
    KvList { prefix: String },
    FenceSet { node: String, agent: String, params: Vec<(String, String)> },
    FenceRemove { node: String },
    PkgApply { packages: Vec<PackageDef> },
    PkgRun { name: String, node: Option<String> },
    PkgStop { name: String },
    PkgMove { name: String, to: String },
    PkgFreeze { name: String, frozen: bool },
    PkgCleanup { name: String },
    PkgRemove { name: String },
    PkgStatus { name: Option<String> },
    PkgPlan { name: String },
    NodeStandby { name: String, standby: bool },
    Events { after: Option<u64> },
}

/// v0.1.0's `ClientReply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    Done { message: String },
    Value { key: String, value: String },
    List { entries: Vec<(String, String)> },
    Deleted { key: String, existed: bool },
    Settings { entries: Vec<(String, String)> },
    Status(StatusReport),
    Packages { packages: Vec<PackageState> },
    Plan { lines: Vec<String> },
    Events { events: Vec<Event> },
}

/// v0.1.0's `NodeStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub address: String,
    pub role: NodeRole,
    pub matched_index: Option<u64>,
    pub last_contact_ms: Option<u64>,
    pub standby: bool,
    pub leaving: bool,
    pub protection: String,
    pub lease: Option<String>,
}

/// v0.1.0's `StatusReport`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub reporter: String,
    pub reporter_state: String,
    pub leader: Option<String>,
    pub term: u64,
    pub quorum: bool,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub nodes: Vec<NodeStatus>,
    pub packages: Vec<PackageState>,
    pub warnings: Vec<String>,
}

fn needs(what: &str) -> NeedsVersion {
    NeedsVersion::new(what, ClusterVersion::V0_2)
}

impl From<PeerRpc> for crate::PeerRpc {
    fn from(rpc: PeerRpc) -> crate::PeerRpc {
        match rpc {
            PeerRpc::AppendEntries => crate::PeerRpc::AppendEntries,
            PeerRpc::Vote => crate::PeerRpc::Vote,
            PeerRpc::InstallSnapshot => crate::PeerRpc::InstallSnapshot,
            PeerRpc::PreVote => crate::PeerRpc::PreVote,
            PeerRpc::HoldElections => crate::PeerRpc::HoldElections,
            PeerRpc::Campaign => crate::PeerRpc::Campaign,
            PeerRpc::Lease => crate::PeerRpc::Lease,
            PeerRpc::Propose => crate::PeerRpc::Propose,
            PeerRpc::LastAck => crate::PeerRpc::LastAck,
        }
    }
}

/// The kind as v0.1.0 names it, or the version it needs.
pub fn peer_rpc_to_v0_1(rpc: crate::PeerRpc) -> Result<PeerRpc, NeedsVersion> {
    Ok(match rpc {
        crate::PeerRpc::AppendEntries => PeerRpc::AppendEntries,
        crate::PeerRpc::Vote => PeerRpc::Vote,
        crate::PeerRpc::InstallSnapshot => PeerRpc::InstallSnapshot,
        crate::PeerRpc::PreVote => PeerRpc::PreVote,
        crate::PeerRpc::HoldElections => PeerRpc::HoldElections,
        crate::PeerRpc::Campaign => PeerRpc::Campaign,
        crate::PeerRpc::Lease => PeerRpc::Lease,
        crate::PeerRpc::Propose => PeerRpc::Propose,
        crate::PeerRpc::LastAck => PeerRpc::LastAck,
        #[allow(unreachable_patterns)]
        other => return Err(needs(&format!("peer rpc {other:?}"))),
    })
}

impl From<ClientRequest> for crate::ClientRequest {
    fn from(request: ClientRequest) -> crate::ClientRequest {
        use crate::ClientRequest as New;
        match request {
            ClientRequest::ClusterInit => New::ClusterInit,
            ClientRequest::NodeAdd { name, address, learner } => {
                New::NodeAdd { name, address, learner, witness: false }
            }
            ClientRequest::NodeRemove { name } => New::NodeRemove { name },
            ClientRequest::NodePromote { name } => New::NodePromote { name },
            ClientRequest::TransferLeader { name } => New::TransferLeader { name },
            ClientRequest::Status => New::Status,
            ClientRequest::SettingsSet { name, value } => New::SettingsSet { name, value },
            ClientRequest::SettingsGet => New::SettingsGet,
            ClientRequest::KvSet { key, value } => New::KvSet { key, value },
            ClientRequest::KvGet { key } => New::KvGet { key },
            ClientRequest::KvCas { key, expected, new } => New::KvCas { key, expected, new },
            ClientRequest::KvDel { key } => New::KvDel { key },
            ClientRequest::KvList { prefix } => New::KvList { prefix },
            ClientRequest::FenceSet { node, agent, params } => New::FenceSet { node, agent, params },
            ClientRequest::FenceRemove { node } => New::FenceRemove { node },
            ClientRequest::PkgApply { packages } => {
                New::PkgApply { packages: packages.into_iter().map(Into::into).collect() }
            }
            ClientRequest::PkgRun { name, node } => New::PkgRun { name, node },
            ClientRequest::PkgStop { name } => New::PkgStop { name },
            ClientRequest::PkgMove { name, to } => New::PkgMove { name, to },
            ClientRequest::PkgFreeze { name, frozen } => New::PkgFreeze { name, frozen },
            ClientRequest::PkgCleanup { name } => New::PkgCleanup { name },
            ClientRequest::PkgRemove { name } => New::PkgRemove { name },
            ClientRequest::PkgStatus { name } => New::PkgStatus { name },
            ClientRequest::PkgPlan { name } => New::PkgPlan { name },
            ClientRequest::NodeStandby { name, standby } => New::NodeStandby { name, standby },
            ClientRequest::Events { after } => New::Events { after },
        }
    }
}

/// The request as v0.1.0 reads it, or the version it needs.
pub fn client_request_to_v0_1(request: &crate::ClientRequest) -> Result<ClientRequest, NeedsVersion> {
    use crate::ClientRequest as New;
    Ok(match request.clone() {
        New::ClusterInit => ClientRequest::ClusterInit,
        New::NodeAdd { witness: true, .. } => return Err(needs("`node add --witness`")),
        New::NodeAdd { name, address, learner, witness: false } => ClientRequest::NodeAdd { name, address, learner },
        New::NodeRemove { name } => ClientRequest::NodeRemove { name },
        New::NodePromote { name } => ClientRequest::NodePromote { name },
        New::TransferLeader { name } => ClientRequest::TransferLeader { name },
        New::Status => ClientRequest::Status,
        New::SettingsSet { name, value } => ClientRequest::SettingsSet { name, value },
        New::SettingsGet => ClientRequest::SettingsGet,
        New::KvSet { key, value } => ClientRequest::KvSet { key, value },
        New::KvGet { key } => ClientRequest::KvGet { key },
        New::KvCas { key, expected, new } => ClientRequest::KvCas { key, expected, new },
        New::KvDel { key } => ClientRequest::KvDel { key },
        New::KvList { prefix } => ClientRequest::KvList { prefix },
        New::FenceSet { node, agent, params } => ClientRequest::FenceSet { node, agent, params },
        New::FenceRemove { node } => ClientRequest::FenceRemove { node },
        New::PkgApply { packages } => ClientRequest::PkgApply {
            packages: packages.iter().map(cluster_model::compat::def_to_v0_1).collect::<Result<_, _>>()?,
        },
        New::PkgRun { name, node } => ClientRequest::PkgRun { name, node },
        New::PkgStop { name } => ClientRequest::PkgStop { name },
        New::PkgMove { name, to } => ClientRequest::PkgMove { name, to },
        New::PkgFreeze { name, frozen } => ClientRequest::PkgFreeze { name, frozen },
        New::PkgCleanup { name } => ClientRequest::PkgCleanup { name },
        New::PkgRemove { name } => ClientRequest::PkgRemove { name },
        New::PkgStatus { name } => ClientRequest::PkgStatus { name },
        New::PkgPlan { name } => ClientRequest::PkgPlan { name },
        New::NodeStandby { name, standby } => ClientRequest::NodeStandby { name, standby },
        New::Events { after } => ClientRequest::Events { after },
        other => return Err(needs(&format!("request `{}`", other.name()))),
    })
}

impl From<Request> for crate::Request {
    fn from(request: Request) -> crate::Request {
        match request {
            Request::Client { request, forwarded } => crate::Request::Client { request: request.into(), forwarded },
            Request::Peer(PeerRequest { rpc, payload }) => {
                crate::Request::Peer(crate::PeerRequest { rpc: rpc.into(), payload })
            }
        }
    }
}

/// The request as v0.1.0 reads it (a peer payload must already be in protocol 3).
pub fn request_to_v0_1(request: &crate::Request) -> Result<Request, NeedsVersion> {
    Ok(match request {
        crate::Request::Client { request, forwarded } => {
            Request::Client { request: client_request_to_v0_1(request)?, forwarded: *forwarded }
        }
        crate::Request::Peer(peer) => {
            Request::Peer(PeerRequest { rpc: peer_rpc_to_v0_1(peer.rpc)?, payload: peer.payload.clone() })
        }
    })
}

impl From<NodeStatus> for crate::NodeStatus {
    fn from(node: NodeStatus) -> crate::NodeStatus {
        crate::NodeStatus {
            name: node.name,
            address: node.address,
            role: node.role,
            matched_index: node.matched_index,
            last_contact_ms: node.last_contact_ms,
            standby: node.standby,
            leaving: node.leaving,
            protection: node.protection,
            lease: node.lease,
            version: None,
            witness: false,
        }
    }
}

impl From<StatusReport> for crate::StatusReport {
    fn from(report: StatusReport) -> crate::StatusReport {
        crate::StatusReport {
            reporter: report.reporter,
            reporter_state: report.reporter_state,
            leader: report.leader,
            term: report.term,
            quorum: report.quorum,
            commit_index: report.commit_index,
            applied_index: report.applied_index,
            last_log_index: report.last_log_index,
            snapshot_index: report.snapshot_index,
            nodes: report.nodes.into_iter().map(Into::into).collect(),
            packages: report.packages.into_iter().map(Into::into).collect(),
            warnings: report.warnings,
            cluster_version: cluster_model::ClusterVersion::V0_1.to_string(),
        }
    }
}

/// The report as v0.1.0 reads it: what v0.1.0 has no field for is left out (a witness shows as a
/// voter, which it is).
pub fn status_to_v0_1(report: crate::StatusReport) -> StatusReport {
    StatusReport {
        reporter: report.reporter,
        reporter_state: report.reporter_state,
        leader: report.leader,
        term: report.term,
        quorum: report.quorum,
        commit_index: report.commit_index,
        applied_index: report.applied_index,
        last_log_index: report.last_log_index,
        snapshot_index: report.snapshot_index,
        nodes: report
            .nodes
            .into_iter()
            .map(|node| NodeStatus {
                name: node.name,
                address: node.address,
                role: node.role,
                matched_index: node.matched_index,
                last_contact_ms: node.last_contact_ms,
                standby: node.standby,
                leaving: node.leaving,
                protection: node.protection,
                lease: node.lease,
            })
            .collect(),
        packages: report.packages.iter().map(Into::into).collect(),
        warnings: report.warnings,
    }
}

impl From<ClientReply> for crate::ClientReply {
    fn from(reply: ClientReply) -> crate::ClientReply {
        use crate::ClientReply as New;
        match reply {
            ClientReply::Done { message } => New::Done { message },
            ClientReply::Value { key, value } => New::Value { key, value },
            ClientReply::List { entries } => New::List { entries },
            ClientReply::Deleted { key, existed } => New::Deleted { key, existed },
            ClientReply::Settings { entries } => New::Settings { entries },
            ClientReply::Status(report) => New::Status(report.into()),
            ClientReply::Packages { packages } => {
                New::Packages { packages: packages.into_iter().map(Into::into).collect() }
            }
            ClientReply::Plan { lines } => New::Plan { lines },
            ClientReply::Events { events } => New::Events { events },
        }
    }
}

/// The reply as v0.1.0 reads it, or the version it needs.
pub fn client_reply_to_v0_1(reply: crate::ClientReply) -> Result<ClientReply, NeedsVersion> {
    use crate::ClientReply as New;
    Ok(match reply {
        New::Done { message } => ClientReply::Done { message },
        New::Value { key, value } => ClientReply::Value { key, value },
        New::List { entries } => ClientReply::List { entries },
        New::Deleted { key, existed } => ClientReply::Deleted { key, existed },
        New::Settings { entries } => ClientReply::Settings { entries },
        New::Status(report) => ClientReply::Status(status_to_v0_1(report)),
        New::Packages { packages } => ClientReply::Packages { packages: packages.iter().map(Into::into).collect() },
        // v0.1.0's `pkg status` reads the packages; why some wait is left out.
        New::PackageStatus { packages, .. } => {
            ClientReply::Packages { packages: packages.iter().map(Into::into).collect() }
        }
        New::Plan { lines } => ClientReply::Plan { lines },
        New::Events { events } => ClientReply::Events { events },
        New::Alerts { .. } => return Err(needs("the alert hook list")),
        New::Diagnostics(_) => return Err(needs("a diagnostics report")),
        New::Token { .. } => return Err(needs("a join token")),
        New::Joined { .. } => return Err(needs("a join certificate")),
    })
}

impl From<Response> for crate::Response {
    fn from(response: Response) -> crate::Response {
        match response {
            Response::Client(result) => crate::Response::Client(result.map(Into::into)),
            Response::Peer(result) => crate::Response::Peer(result),
        }
    }
}

/// The response as v0.1.0 reads it: a reply it cannot decode becomes an error naming both releases.
pub fn response_to_v0_1(response: crate::Response) -> Response {
    match response {
        crate::Response::Client(Ok(reply)) => Response::Client(client_reply_to_v0_1(reply).map_err(|needs| {
            ApiError::new(
                ErrorKind::Failed,
                format!(
                    "{needs}, and the request came in protocol {} (clusterd/clusterctl {}): upgrade the client",
                    crate::PROTOCOL_V0_1,
                    ClusterVersion::V0_1
                ),
            )
        })),
        crate::Response::Client(Err(err)) => Response::Client(Err(err)),
        crate::Response::Peer(result) => Response::Peer(result),
    }
}
