//! Serves requests: peer RPCs go to Raft, client requests run here or are forwarded to the leader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_api::{ApiError, ClientReply, ClientRequest, ErrorKind, PeerRpc, Request, Response};
use cluster_model::controller::{explain, protection, Liveness, Protection};
use cluster_model::{validate_key, validate_value, Command, CommandOutcome, FenceConfig, Phase};
use cluster_raft::{ConsensusError, ConsensusNode, ForwardError};

use crate::engine::{wall_ms, Engine, ExpiryCheck, KeepRequest, LeaseRequest};

/// The request handler shared by every listener.
pub(crate) struct Dispatcher {
    pub(crate) node: Arc<ConsensusNode>,
    pub(crate) engine: Arc<Engine>,
    /// The members' releases, as the leader last learned them (rolling upgrades).
    pub(crate) versions: Arc<crate::upgrade::Versions>,
    /// This node's TLS files, and the CA key if it holds it (it then signs joining nodes).
    pub(crate) tls: cluster_tls::TlsFiles,
    pub(crate) ca_key: Option<std::path::PathBuf>,
    /// Certificates refused by the listener (kept equal to the applied state's by `crate::join`).
    pub(crate) revocations: Arc<cluster_tls::Revocations>,
    /// What this node presents (replaced by a renewal) and its TLS client towards peers.
    pub(crate) identity: Arc<cluster_tls::Identity>,
    pub(crate) client_tls: Arc<cluster_tls::rustls::ClientConfig>,
    /// One renewal of this node's certificate at a time.
    pub(crate) renewing: tokio::sync::Mutex<()>,
}

/// Runs a peer RPC served by the engine (keeps, expiry checks: since 0.2.0): decode, serve, encode
/// the result in the caller's protocol.
async fn serve_engine_rpc<Req, Resp, F, Fut>(payload: &[u8], serve: F) -> Result<Vec<u8>, String>
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, String>>,
{
    let malformed = |err: cluster_api::FrameError| format!("malformed engine rpc: {err}");
    let protocol = cluster_api::frame_version(payload).map_err(malformed)?;
    let request: Req = cluster_api::decode_body(payload).map_err(malformed)?;
    let answer = serve(request).await;
    cluster_api::encode_as(&answer, protocol).map(|bytes| bytes.to_vec()).map_err(|err| err.to_string())
}

fn api_error(err: ConsensusError) -> ApiError {
    let kind = match &err {
        ConsensusError::NotLeader { .. } => ErrorKind::NotLeader,
        ConsensusError::NoQuorum(_) => ErrorKind::NoLeader,
        ConsensusError::Invalid(_) => ErrorKind::Invalid,
        ConsensusError::Failed(_) | ConsensusError::Fatal(_) => ErrorKind::Failed,
    };
    ApiError::new(kind, err.to_string())
}

/// Package definitions `pkg apply` writes in one Raft entry.
const APPLY_PER_ENTRY: usize = 16;

/// How long a request that needs a newer cluster version waits for the members' releases.
const VERSION_QUESTION: Duration = Duration::from_millis(500);

/// Whether repeating the request cannot change its effect (reads).
fn is_read(request: &ClientRequest) -> bool {
    matches!(
        request,
        ClientRequest::Status
            | ClientRequest::KvGet { .. }
            | ClientRequest::KvList { .. }
            | ClientRequest::SettingsGet
            | ClientRequest::PkgStatus { .. }
            | ClientRequest::PkgPlan { .. }
            | ClientRequest::Events { .. }
            | ClientRequest::AlertList
            | ClientRequest::Diagnostics { .. }
    )
}

impl Dispatcher {
    pub(crate) async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Peer(peer) if peer.rpc == PeerRpc::Lease => {
                let engine = &self.engine;
                let grant = |request: LeaseRequest| async move { engine.grant(&request).await };
                Response::Peer(crate::compat::serve_lease(&peer.payload, grant).await)
            }
            Request::Peer(peer) if peer.rpc == PeerRpc::LeaseRelay => {
                let engine = &self.engine;
                Response::Peer(
                    serve_engine_rpc(&peer.payload, |request: LeaseRequest| async move {
                        engine.serve_relay(request).await
                    })
                    .await,
                )
            }
            Request::Peer(peer) if peer.rpc == PeerRpc::LeaseBatch => {
                let engine = &self.engine;
                Response::Peer(
                    serve_engine_rpc(&peer.payload, |requests: Vec<LeaseRequest>| async move {
                        Ok::<_, String>(engine.grant_all(&requests).await)
                    })
                    .await,
                )
            }
            Request::Peer(peer) if peer.rpc == PeerRpc::Keep => {
                let engine = &self.engine;
                Response::Peer(
                    serve_engine_rpc(&peer.payload, |request: KeepRequest| async move { engine.serve_keep(&request) })
                        .await,
                )
            }
            Request::Peer(peer) if peer.rpc == PeerRpc::ExpiryCheck => {
                let engine = &self.engine;
                Response::Peer(
                    serve_engine_rpc(&peer.payload, |check: ExpiryCheck| async move {
                        engine.serve_expiry_check(&check).await
                    })
                    .await,
                )
            }
            Request::Peer(peer) if peer.rpc == PeerRpc::Propose => {
                let engine = &self.engine;
                let propose = |command: Command| async move { engine.serve_propose(command).await };
                Response::Peer(crate::compat::serve_propose(&peer.payload, propose).await)
            }
            Request::Peer(peer) => Response::Peer(self.node.handle_peer(peer).await),
            Request::Client { request, forwarded } => Response::Client(self.client(request, forwarded).await),
        }
    }

    /// Runs a client request here if this node can, else forwards it to the leader; while there is
    /// no leader it waits (up to the request timeout) for one to be elected.
    async fn client(&self, request: ClientRequest, forwarded: bool) -> Result<ClientReply, ApiError> {
        let mut version = self.node.cluster_version();
        if version < cluster_model::ClusterVersion::CURRENT {
            // What v0.1.0 does not know is refused on every node alike, whoever leads: while the
            // cluster runs at its version, a v0.1.0 node may lead or be asked next.
            if cluster_api::v0_1::client_request_to_v0_1(&request).is_err() {
                // A node that knows no leader (added a moment ago, before the leader's first
                // append; an election) has not seen the cluster's version yet: it waits for a
                // leader, as every request does, and the leader decides.
                if !forwarded && self.node.leader().is_none() {
                    let deadline = Instant::now() + self.node.timing().request_timeout;
                    while self.node.leader().is_none()
                        && self.node.cluster_version() < cluster_model::ClusterVersion::CURRENT
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    version = self.node.cluster_version();
                }
                // A node holding entries it has not applied yet (just added, catching up) applies
                // them first: the version may have risen in them.
                let last = self.node.last_log_index();
                if self.node.applied_index() < last {
                    self.node.wait_applied_after(last.saturating_sub(1), Duration::from_secs(2)).await;
                    version = self.node.cluster_version();
                }
                // The leader may not have asked the members yet (a cluster formed a moment ago,
                // the last node upgraded a moment ago): it asks now, and raises the version if
                // every member runs this release.
                if version < cluster_model::ClusterVersion::CURRENT && self.node.leadership().is_some() {
                    self.versions.record(self.node.raise_version(VERSION_QUESTION).await);
                    version = self.node.cluster_version();
                }
            }
        }
        if version < cluster_model::ClusterVersion::CURRENT {
            if let Err(needs) = cluster_api::v0_1::client_request_to_v0_1(&request) {
                let refusal = ApiError::new(
                    ErrorKind::Invalid,
                    format!(
                        "{needs}, and the cluster runs at version {version} until every node runs clusterd {} or \
                         later (`clusterctl status` lists the release of each node; docs/upgrades.md)",
                        needs.needs
                    ),
                );
                return self.refused_here_or_by_the_leader(request, forwarded, refusal).await;
            }
        }
        let deadline = Instant::now() + self.node.timing().request_timeout;
        loop {
            let leader = match self.execute(&request, forwarded).await {
                Err(Failure::Consensus(ConsensusError::NotLeader { leader, .. })) => leader,
                other => return other.map_err(ApiError::from),
            };
            let me = &self.node.me().name;
            if forwarded {
                return Err(ApiError::new(ErrorKind::NotLeader, format!("node {me} is not the leader")));
            }
            if let Some(leader) = leader.filter(|leader| &leader.name != me) {
                let forward = Request::Client { request: request.clone(), forwarded: true };
                match self.node.forward(&leader.address, &forward).await {
                    Ok(Response::Client(Err(err))) if err.kind == ErrorKind::NotLeader => {}
                    Ok(Response::Client(result)) => return result,
                    Ok(Response::Peer(_)) => {
                        return Err(ApiError::new(
                            ErrorKind::Failed,
                            format!("leader {} sent a malformed reply", leader.name),
                        ))
                    }
                    Err(ForwardError::NotSent(_)) => {}
                    Err(ForwardError::Unknown(detail)) if !is_read(&request) => {
                        return Err(ApiError::new(
                            ErrorKind::Failed,
                            format!(
                                "lost the answer of leader {} ({detail}): the outcome of the request is unknown",
                                leader.name
                            ),
                        ))
                    }
                    Err(ForwardError::Unknown(_)) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(self.no_leader());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// No leader answered within the request timeout.
    fn no_leader(&self) -> ApiError {
        ApiError::new(
            ErrorKind::NoLeader,
            format!(
                "no leader reachable from node {} within {:?}",
                self.node.me().name,
                self.node.timing().request_timeout
            ),
        )
    }

    /// A request this node's applied cluster version refuses. A follower may lag behind the
    /// leader's version (a node just added, catching up): the leader decides, unless it runs
    /// v0.1.0 (it refuses this release's protocol) or cannot be reached; then the refusal stands.
    async fn refused_here_or_by_the_leader(
        &self,
        request: ClientRequest,
        forwarded: bool,
        refusal: ApiError,
    ) -> Result<ClientReply, ApiError> {
        let me = &self.node.me().name;
        let leader = self.node.leader().filter(|leader| &leader.name != me);
        if leader.is_none() && !forwarded && self.node.last_log_index() == 0 {
            // Nothing replicated here yet: this node has not joined a cluster (or not heard
            // from it), so no cluster's version refused the request.
            return Err(self.no_leader());
        }
        let (Some(leader), false) = (leader, forwarded) else { return Err(refusal) };
        let forward = Request::Client { request: request.clone(), forwarded: true };
        let answer = self.node.forward_newest(&leader.address, &forward).await;
        tracing::debug!(leader = %leader.name, ?answer, "asked the leader about a request this node's version refuses");
        match answer {
            Ok(refused)
                if cluster_api::wire::refused_protocol(cluster_api::PROTOCOL_V0_1, &refused)
                    || !matches!(refused, Response::Client(_)) =>
            {
                Err(refusal)
            }
            Ok(Response::Client(result)) => result,
            Ok(Response::Peer(_)) => Err(refusal),
            Err(ForwardError::Unknown(detail)) if !is_read(&request) => Err(ApiError::new(
                ErrorKind::Failed,
                format!("lost the answer of leader {} ({detail}): the outcome of the request is unknown", leader.name),
            )),
            Err(_) => Err(refusal),
        }
    }

    async fn execute(&self, request: &ClientRequest, forwarded: bool) -> Result<ClientReply, Failure> {
        let node = &self.node;
        let invalid = |err: cluster_model::InvalidInput| ConsensusError::Invalid(err.to_string());
        match request {
            ClientRequest::ClusterInit => {
                node.initialize().await?;
                // A new cluster of this one node uses this release's formats from its first entries.
                crate::upgrade::activate_new_cluster(node).await;
                Ok(ClientReply::Done { message: format!("cluster initialized with node {}", node.me().name) })
            }
            ClientRequest::NodeAdd { name, address, learner, witness } => {
                if *learner && *witness {
                    return Err(ConsensusError::Invalid(format!(
                        "node `{name}`: a witness is a voter, not a learner (drop --learner or --witness)"
                    ))
                    .into());
                }
                if node.read_local(|state| state.join.removed.contains(name)) {
                    // Removed before: its name is accepted again (revoked certificates stay refused).
                    self.write(Command::NodeAdmit { name: name.clone(), at_ms: wall_ms() }, String::new()).await?;
                }
                node.add_node(name, address, *learner).await?;
                // The role is recorded (or a former witness's cleared) once the node is a member.
                if *witness || node.read_local(|state| state.witnesses.contains(name)) {
                    let command = Command::NodeRole { name: name.clone(), witness: *witness, at_ms: wall_ms() };
                    self.write(command, String::new()).await?;
                }
                let role = if *witness {
                    "witness (a voter that never hosts packages)"
                } else if *learner {
                    "learner"
                } else {
                    "voter"
                };
                Ok(ClientReply::Done { message: format!("node {name} added as a {role}") })
            }
            ClientRequest::NodeRemove { name } => {
                node.remove_node(name).await?;
                let mut message = format!("node {name} removed");
                if node.cluster_version() >= cluster_model::ClusterVersion::V0_2 {
                    let command = Command::NodeRevoke { name: name.clone(), at_ms: wall_ms() };
                    self.write(command, String::new()).await?;
                    message.push_str(": its certificates are refused from now on");
                }
                Ok(ClientReply::Done { message })
            }
            ClientRequest::NodePromote { name } => {
                node.promote(name).await?;
                Ok(ClientReply::Done { message: format!("node {name} promoted to voter") })
            }
            ClientRequest::TransferLeader { name } => {
                node.transfer_leader(name).await?;
                Ok(ClientReply::Done { message: format!("node {name} is now the leader") })
            }
            ClientRequest::Status => {
                let leader = node.leader().filter(|leader| leader.name != node.me().name);
                if let (Some(leader), false) = (leader, forwarded) {
                    let forward = Request::Client { request: ClientRequest::Status, forwarded: true };
                    if let Ok(Response::Client(Ok(reply))) = node.forward(&leader.address, &forward).await {
                        return Ok(reply);
                    }
                }
                Ok(ClientReply::Status(self.status().await))
            }
            ClientRequest::SettingsSet { name, value } => {
                // Check first so a typo is reported without touching the log.
                let current = node.read_local(|state| state.settings.clone());
                let mut trial = current.clone();
                trial.set(name, value).map_err(|err| ConsensusError::Invalid(err.to_string()))?;
                let version = node.cluster_version();
                if version < cluster_model::ClusterVersion::V0_2
                    && trial.lease_for_grantor() < current.lease_for_grantor()
                {
                    // v0.1.0 members would judge leases granted before the change with the new,
                    // shorter wait (they know no lease ceiling): issue 11, finding 1.
                    return Err(ConsensusError::Invalid(format!(
                        "refusing to shorten the lease wait ({name} = {value}) while the cluster runs at version \
                         {version}: nodes of 0.1.0 would judge leases granted before the change by the shorter \
                         wait; finish the upgrade first (`clusterctl status`)"
                    ))
                    .into());
                }
                match node.write(Command::SetSetting { name: name.clone(), value: value.clone() }).await? {
                    CommandOutcome::Rejected { reason } => Err(ConsensusError::Invalid(reason).into()),
                    _ => Ok(ClientReply::Done { message: format!("{name} = {value}") }),
                }
            }
            ClientRequest::SettingsGet => {
                Ok(ClientReply::Settings { entries: node.read(|state| state.settings.list()).await? })
            }
            ClientRequest::KvSet { key, value } => {
                validate_key(key).map_err(invalid)?;
                validate_value(key, value).map_err(invalid)?;
                node.write(Command::KvSet { key: key.clone(), value: value.clone() }).await?;
                Ok(ClientReply::Done { message: String::new() })
            }
            ClientRequest::KvGet { key } => {
                validate_key(key).map_err(invalid)?;
                match node.read(|state| state.get(key).cloned()).await? {
                    Some(value) => Ok(ClientReply::Value { key: key.clone(), value }),
                    None => Err(not_found(key)),
                }
            }
            ClientRequest::KvCas { key, expected, new } => {
                validate_key(key).map_err(invalid)?;
                validate_value(key, new).map_err(invalid)?;
                let command = Command::KvCas { key: key.clone(), expected: expected.clone(), new: new.clone() };
                match node.write(command).await? {
                    CommandOutcome::CasMismatch { current } => Err(cas_mismatch(key, current)),
                    _ => Ok(ClientReply::Done { message: String::new() }),
                }
            }
            ClientRequest::KvDel { key } => {
                validate_key(key).map_err(invalid)?;
                match node.write(Command::KvDel { key: key.clone() }).await? {
                    CommandOutcome::Deleted { existed: false } => Err(not_found(key)),
                    _ => Ok(ClientReply::Deleted { key: key.clone(), existed: true }),
                }
            }
            ClientRequest::KvList { prefix } => {
                Ok(ClientReply::List { entries: node.read(|state| state.list(prefix)).await? })
            }
            ClientRequest::FenceSet { node: target, agent, params } => {
                let fence = FenceConfig { agent: agent.clone(), params: params.iter().cloned().collect() };
                self.write(
                    Command::SetFence { node: target.clone(), fence: Some(fence) },
                    format!("fence device of {target} set"),
                )
                .await
            }
            ClientRequest::FenceRemove { node: target } => {
                self.write(
                    Command::SetFence { node: target.clone(), fence: None },
                    format!("fence device of {target} removed"),
                )
                .await
            }
            ClientRequest::PkgApply { packages } => {
                // The definitions must hold together with the cluster's other packages (every
                // dependency defined, no cycle, no contradiction): checked here for the whole set
                // before anything is written, and by the state machine for each as it applies.
                let refused = node.read_local(|state| apply_set_errors(state, packages));
                if !refused.is_empty() {
                    return Err(ConsensusError::Invalid(format!("pkg apply refused: {}", refused.join("; "))).into());
                }
                let mut lines = Vec::new();
                let ordered: Vec<&cluster_package::PackageDef> = packages.iter().collect();
                let ordered = cluster_package::start_order(&ordered);
                // Several definitions share one Raft entry (one commit, one fsync per node): applied
                // one by one, 100 packages on 50 nodes took 11 s. In start order, within an entry too.
                let per_entry =
                    if node.cluster_version() >= cluster_model::ClusterVersion::V0_2 { APPLY_PER_ENTRY } else { 1 };
                for chunk in ordered.chunks(per_entry) {
                    // Writes run on the leader (others forward the request), whose state is current.
                    let effects: Vec<String> =
                        node.read_local(|state| chunk.iter().map(|def| apply_effect(state, def)).collect());
                    let applies: Vec<Command> = chunk
                        .iter()
                        .map(|def| Command::PkgApply { def: Arc::new((*def).clone()), at_ms: wall_ms() })
                        .collect();
                    self.write_all(applies).await?;
                    for (def, what) in chunk.iter().zip(effects) {
                        lines.push(format!("package {}: {what}", def.name));
                    }
                }
                let members: Vec<String> = node.members().into_iter().map(|member| member.name).collect();
                let mut warnings = Vec::new();
                for def in ordered {
                    if let Some(warning) = node.read_local(|state| slow_stop_warning(state, &members, def)) {
                        warnings.push((def.name.as_str(), warning));
                    }
                    let listed: Vec<&str> = node.read_local(|state| {
                        def.nodes.iter().map(|n| n.as_str()).filter(|n| state.witnesses.contains(*n)).collect()
                    });
                    if !listed.is_empty() {
                        let verb = if listed.len() == 1 { "is" } else { "are" };
                        warnings.push((
                            def.name.as_str(),
                            format!("{} {verb} a witness, which never hosts packages", listed.join(", ")),
                        ));
                    }
                }
                lines.extend(grouped_warnings(&warnings));
                Ok(ClientReply::Done { message: lines.join("\n") })
            }
            ClientRequest::PkgRun { name, node: target } => {
                let command = Command::PkgRun { name: name.clone(), node: target.clone(), at_ms: wall_ms() };
                self.write(command, format!("package {name}: desired running")).await
            }
            ClientRequest::PkgStop { name } => {
                let command = Command::PkgStop { name: name.clone(), at_ms: wall_ms() };
                self.write(command, format!("package {name}: desired stopped")).await
            }
            ClientRequest::PkgMove { name, to } => {
                let command = Command::PkgMove { name: name.clone(), to: to.clone(), at_ms: wall_ms() };
                self.write(command, format!("package {name}: moving to {to}")).await
            }
            ClientRequest::PkgFreeze { name, frozen } => {
                let command = Command::PkgFreeze { name: name.clone(), frozen: *frozen, at_ms: wall_ms() };
                let what = if *frozen { "frozen" } else { "unfrozen" };
                self.write(command, format!("package {name} {what}")).await
            }
            ClientRequest::PkgCleanup { name } => {
                let command = Command::PkgCleanup { name: name.clone(), at_ms: wall_ms() };
                self.write(command, format!("package {name}: failures forgotten")).await
            }
            ClientRequest::PkgRemove { name } => {
                let command = Command::PkgRemove { name: name.clone(), at_ms: wall_ms() };
                self.write(command, format!("package {name} removed")).await
            }
            ClientRequest::NodeStandby { name, standby } => {
                if !node.members().iter().any(|member| &member.name == name) {
                    return Err(ConsensusError::Invalid(format!("node `{name}` is not a member of the cluster")).into());
                }
                let command = Command::NodeStandby { name: name.clone(), standby: *standby, at_ms: wall_ms() };
                let what = if *standby { "in standby: its packages move away" } else { "online" };
                self.write(command, format!("node {name} {what}")).await
            }
            ClientRequest::PkgStatus { name } => {
                let state = node.read(|state| state.clone()).await?;
                let packages: Vec<cluster_model::PackageState> = state
                    .packages
                    .iter()
                    .filter(|(key, package)| {
                        name.as_ref().is_none_or(|wanted| wanted == *key || *wanted == package.def.name)
                    })
                    .map(|(_, package)| package.clone())
                    .collect();
                if let (Some(name), true) = (name, packages.is_empty()) {
                    return Err(Failure::Api(ApiError::new(
                        ErrorKind::NotFound,
                        format!("package `{name}` does not exist"),
                    )));
                }
                // Why what should run does not (leader only: it needs the leases).
                let view = node.leadership().is_some().then(|| self.engine.view());
                let waiting = match view {
                    Some(view) => cluster_model::controller::waiting_reasons(&state, &view, wall_ms())
                        .into_iter()
                        .filter(|(key, _)| {
                            name.as_ref().is_none_or(|wanted| wanted == key || wanted == package_of(key))
                        })
                        .collect(),
                    None => Vec::new(),
                };
                Ok(ClientReply::PackageStatus { packages, waiting })
            }
            ClientRequest::PkgPlan { name } => {
                if node.leadership().is_none() {
                    return Err(ConsensusError::NotLeader { me: node.me().name.clone(), leader: node.leader() }.into());
                }
                let state = node.read(|state| state.clone()).await?;
                match explain(&state, &self.engine.view(), name, wall_ms()) {
                    Some(lines) => Ok(ClientReply::Plan { lines }),
                    None => Err(Failure::Api(ApiError::new(
                        ErrorKind::NotFound,
                        format!("package `{name}` does not exist"),
                    ))),
                }
            }
            ClientRequest::Events { after } => {
                let events = node
                    .read(|state| {
                        state.events.iter().filter(|event| after.is_none_or(|seq| event.seq > seq)).cloned().collect()
                    })
                    .await?;
                Ok(ClientReply::Events { events })
            }
            ClientRequest::AlertSet { .. } | ClientRequest::AlertList => crate::alerts::serve(node, request).await,
            ClientRequest::Diagnostics { .. } => crate::diagnostics::serve(node, request, forwarded).await,
            ClientRequest::TokenCreate { .. }
            | ClientRequest::TokenRevoke { .. }
            | ClientRequest::Join { .. }
            | ClientRequest::CertSign { .. } => crate::join::serve(self, request).await,
            ClientRequest::CertRenew { node: target } => crate::join::serve_renew(self, target, forwarded).await,
        }
    }

    /// Proposes an operator command; a refusal at apply time is the operator's error.
    /// Writes `commands` in one Raft entry (one command alone is written as itself), applied in
    /// order; the first refusal is the error (the others of the entry apply if they can).
    async fn write_all(&self, mut commands: Vec<Command>) -> Result<(), Failure> {
        let outcomes = if commands.len() == 1 {
            vec![self.node.write(commands.remove(0)).await?]
        } else {
            match self.node.write(Command::Batch(commands)).await? {
                CommandOutcome::Batch(outcomes) => outcomes,
                other => vec![other],
            }
        };
        match outcomes.into_iter().find_map(|outcome| match outcome {
            CommandOutcome::Rejected { reason } => Some(reason),
            _ => None,
        }) {
            Some(reason) => Err(ConsensusError::Invalid(reason).into()),
            None => Ok(()),
        }
    }

    pub(crate) async fn write(&self, command: Command, done: String) -> Result<ClientReply, Failure> {
        self.write_all(vec![command]).await?;
        Ok(ClientReply::Done { message: done })
    }

    /// Raft status plus packages, protections, leases and warnings (the leader's view when leader).
    async fn status(&self) -> cluster_api::StatusReport {
        let mut report = self.node.status().await;
        let view = (self.node.leadership().is_some()).then(|| self.engine.view());
        // Only what the report shows is copied out of the state (not the key-value map or the events).
        let (nodes, packages, witnesses, waiting) = self.node.read_local(|state| {
            let nodes: Vec<(bool, bool, Protection)> = report
                .nodes
                .iter()
                .map(|node| {
                    let record = state.nodes.get(&node.name);
                    let standby = record.is_some_and(|record| record.standby);
                    let leaving = record.is_some_and(|record| record.leaving);
                    (standby, leaving, protection(state, &node.name))
                })
                .collect();
            // Packages that should run and fit nowhere (or wait for a dependency): leader only.
            let waiting = match &view {
                Some(view) => cluster_model::controller::waiting_reasons(state, view, wall_ms()),
                None => Vec::new(),
            };
            (nodes, state.packages.values().cloned().collect::<Vec<_>>(), state.witnesses.clone(), waiting)
        });
        for node in report.nodes.iter_mut() {
            node.witness = witnesses.contains(&node.name);
        }
        report.warnings.extend(topology_warning(&report.nodes));
        let leading = self.node.leadership().is_some();
        for (node, (standby, leaving, protection)) in report.nodes.iter_mut().zip(nodes) {
            node.standby = standby;
            node.leaving = leaving;
            node.protection = protection.as_str().to_owned();
            if leading {
                node.version = self.versions.release_of(&node.name);
            }
            if let Some(view) = &view {
                node.lease = view.nodes.get(&node.name).map(|liveness| {
                    match liveness {
                        Liveness::Alive => "alive",
                        Liveness::Unknown => "unknown",
                        Liveness::Expired => "expired",
                    }
                    .to_owned()
                });
            }
            if protection == Protection::LeaseOnly && !node.witness {
                report.warnings.push(format!(
                    "node {} runs in lease-only mode (no watchdog, no fencing): safe against crashes and \
                     partitions, not against pauses of its clusterd",
                    node.name
                ));
            }
        }
        if leading {
            report.warnings.extend(self.versions.warning(self.node.cluster_version()));
        }
        for (key, why) in waiting {
            report.warnings.push(format!("package {key} does not run: {why}"));
        }
        for package in &packages {
            let name = &package.key();
            if package.phase == Phase::Blocked {
                report.warnings.push(format!(
                    "package {name} is BLOCKED: {}",
                    package.blocked_reason.as_deref().unwrap_or("a stop failed")
                ));
            }
            if let Some(failure) = &package.last_failure {
                if package.phase == Phase::Failed {
                    report.warnings.push(format!(
                        "package {name} failed on {}: {} (clusterctl pkg cleanup {name})",
                        failure.node, failure.reason
                    ));
                }
            }
        }
        report.packages = packages;
        report
    }
}

/// What a cluster of this shape must know about its quorum (DESIGN §4, issue 12): two voters
/// cannot lose either one, and a witness is what fixes it.
fn topology_warning(nodes: &[cluster_api::NodeStatus]) -> Option<String> {
    let voters: Vec<&cluster_api::NodeStatus> =
        nodes.iter().filter(|node| node.role == cluster_api::NodeRole::Voter).collect();
    let hosts = nodes.iter().filter(|node| !node.witness).count();
    match voters.len() {
        2 => Some(format!(
            "the cluster has two voters ({}) and no third: losing either node, or the link between them, loses \
             the quorum, and every package stops once its lease runs out; add a third voter, for instance a \
             witness on a third machine (`clusterctl node add NAME ADDRESS --witness`, docs/topologies.md)",
            voters.iter().map(|node| node.name.as_str()).collect::<Vec<_>>().join(", ")
        )),
        _ if hosts == 1 && nodes.len() > 1 => {
            Some("only one node may host packages (the others are witnesses): nothing can fail over".to_owned())
        }
        _ => None,
    }
}

/// The warnings of a `pkg apply`, one line per distinct warning, naming the packages it concerns
/// (a few by name, then how many more): 1,000 identical packages once gave 1,000 identical lines.
fn grouped_warnings(warnings: &[(&str, String)]) -> Vec<String> {
    const NAMED: usize = 3;
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (package, warning) in warnings {
        match groups.iter_mut().find(|(text, _)| text == warning) {
            Some((_, packages)) => packages.push(package),
            None => groups.push((warning, vec![package])),
        }
    }
    groups
        .into_iter()
        .map(|(warning, packages)| match packages.as_slice() {
            [one] => format!("package {one}: warning: {warning}"),
            many if many.len() <= NAMED => format!("packages {}: warning: {warning}", many.join(", ")),
            many => {
                format!("packages {} and {} more: warning: {warning}", many[..NAMED].join(", "), many.len() - NAMED)
            }
        })
        .collect()
}

/// What `pkg apply` of `new` does to the package as it is (the model's rule, in words).
/// When `package` may take longer to stop than the stop budget: what that means on the nodes it
/// may run on (issue 11: with the defaults a process's `kill_after` of 10 s is 20 times the stop
/// budget, and nothing said so). `None` when its stop fits.
fn slow_stop_warning(
    state: &cluster_model::ClusterState,
    members: &[String],
    package: &cluster_package::PackageDef,
) -> Option<String> {
    let budget = state.settings.stop_budget();
    let (longest, slow) = cluster_agents::longest_package_stop(package);
    if longest <= budget {
        return None;
    }
    let candidates: Vec<&str> = if package.nodes.is_empty() {
        members.iter().map(String::as_str).collect()
    } else {
        package.nodes.iter().map(|node| node.as_str()).collect()
    };
    let lease_only: Vec<&str> =
        candidates.into_iter().filter(|node| protection(state, node) == Protection::LeaseOnly).collect();
    let causes: Vec<String> =
        slow.iter().map(|stop| format!("{} up to {:?}: {}", stop.resource, stop.up_to, stop.why)).collect();
    let risk = if lease_only.is_empty() {
        "a node whose lease lapses while it stops the package is reset by its watchdog (or fenced) instead of \
         stopping it cleanly"
            .to_owned()
    } else {
        format!(
            "on {} (no watchdog, no fencing: lease-only) a lease lapse can leave it running while another node \
             starts it",
            lease_only.join(", ")
        )
    };
    Some(format!(
        "its stop may take up to {longest:?} ({}), longer than the stop budget of {budget:?}: {risk}; shorten \
         those stops (kill_after, stop_timeout) or raise the stop budget (`clusterctl cluster set stop_budget`, \
         with a longer lease)",
        causes.join("; ")
    ))
}

/// What `pkg apply` of `new` does, in words: for a package with one instance, its
/// [`cluster_model::Redefinition`]; for several, each instance's, and those added or retired.
fn apply_effect(state: &cluster_model::ClusterState, new: &cluster_package::PackageDef) -> String {
    let instances: Vec<(&String, &cluster_model::PackageState)> = state.instances(&new.name).collect();
    if !new.multi_instance() && instances.len() <= 1 {
        return cluster_model::Redefinition::of(instances.first().map(|(_, package)| *package), new).describe();
    }
    if instances.is_empty() {
        return "applied".into();
    }
    let effects: Vec<String> = instances
        .iter()
        .map(|(key, package)| format!("{key}: {}", cluster_model::Redefinition::of(Some(package), new).describe()))
        .collect();
    effects.join("; ")
}

/// The problems of `packages` taken with the cluster's other packages (the new definitions replace
/// the applied ones of the same name), naming the packages.
fn apply_set_errors(state: &cluster_model::ClusterState, packages: &[cluster_package::PackageDef]) -> Vec<String> {
    let mut set: std::collections::BTreeMap<&str, &cluster_package::PackageDef> = std::collections::BTreeMap::new();
    for package in state.packages.values() {
        set.entry(package.def.name.as_str()).or_insert(&package.def);
    }
    for def in packages {
        set.insert(def.name.as_str(), def);
    }
    let new: std::collections::BTreeSet<&str> = packages.iter().map(|def| def.name.as_str()).collect();
    cluster_package::validate_set(set.into_values())
        .into_iter()
        .filter(|error| match error {
            cluster_package::SetError::UnknownPackage { package, .. } => new.contains(package.as_str()),
            cluster_package::SetError::Cycle { cycle } => cycle.iter().any(|step| new.contains(step.as_str())),
            cluster_package::SetError::Contradiction { packages, .. } => {
                packages.iter().any(|package| new.contains(package.as_str()))
            }
        })
        .map(|error| error.to_string())
        .collect()
}

fn package_of(key: &str) -> &str {
    cluster_model::relations::package_of(key)
}

fn not_found(key: &str) -> Failure {
    Failure::Api(ApiError::new(ErrorKind::NotFound, format!("key `{key}` not found")))
}

fn cas_mismatch(key: &str, current: Option<String>) -> Failure {
    let message = match &current {
        Some(value) => format!("compare-and-set of key `{key}` failed: its value is `{value}`"),
        None => format!("compare-and-set of key `{key}` failed: the key is absent"),
    };
    Failure::Api(ApiError { kind: ErrorKind::CasMismatch, message, current })
}

/// Why `execute` did not produce a reply: a consensus failure (possibly "not the leader", which
/// leads to forwarding) or a definite answer for the client.
pub(crate) enum Failure {
    Consensus(ConsensusError),
    Api(ApiError),
}

impl From<ConsensusError> for Failure {
    fn from(err: ConsensusError) -> Self {
        Failure::Consensus(err)
    }
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Consensus(err) => api_error(err),
            Failure::Api(err) => err,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_model::PackageState;

    fn def(nodes: &str, commands: &[&str]) -> cluster_package::PackageDef {
        let mut text = format!("name = \"web\"\nnodes = [{nodes}]\n");
        for (index, command) in commands.iter().enumerate() {
            text.push_str(&format!(
                "\n[[resource]]\nname = \"r{index}\"\ntype = \"process\"\ncommand = [\"{command}\"]\n"
            ));
        }
        cluster_package::parse_package("web.toml", &text).expect("valid package")
    }

    fn state_with(package: Option<PackageState>) -> cluster_model::ClusterState {
        let mut state = cluster_model::ClusterState::default();
        if let Some(package) = package {
            state.packages.insert(package.def.name.clone(), package);
        }
        state
    }

    #[test]
    fn pkg_apply_says_what_it_restarts() {
        let old = def("\"n1\"", &["/bin/a", "/bin/b"]);
        let mut running = PackageState::new(old.clone(), 0);
        running.owner = Some("n1".into());
        running.phase = Phase::Running;
        let running = state_with(Some(running));
        assert_eq!(apply_effect(&state_with(None), &old), "applied");
        assert_eq!(apply_effect(&running, &old), "unchanged");
        assert_eq!(
            apply_effect(&running, &def("\"n2\"", &["/bin/a", "/bin/b"])),
            "definition replaced (placement or policy only: nothing restarts)"
        );
        assert_eq!(
            apply_effect(&running, &def("\"n1\"", &["/bin/a", "/bin/c"])),
            "resources redefined: resource r1 and every later one restart on n1"
        );
        assert_eq!(
            apply_effect(&running, &def("\"n1\"", &["/bin/a"])),
            "resources redefined: the removed resources stop on n1"
        );
        let stopped = state_with(Some(PackageState::new(old, 0)));
        assert_eq!(
            apply_effect(&stopped, &def("\"n1\"", &["/bin/c"])),
            "definition replaced (resources redefined: takes effect at its next start)"
        );
    }

    #[test]
    fn pkg_apply_checks_the_new_packages_with_the_others_and_speaks_of_every_instance() {
        let mut state = cluster_model::ClusterState::default();
        let db = |extra: &str| {
            let text = format!(
                "name = \"db\"\n{extra}\n[[resource]]\nname = \"r\"\ntype = \"process\"\ncommand = [\"/bin/db\"]\n"
            );
            cluster_package::parse_package("db.toml", &text).expect("valid package")
        };
        let app_text = "name = \"app\"\ndepends = [{ package = \"db\", where = \"same-node\" }]\n[[resource]]\nname = \"r\"\ntype = \"process\"\ncommand = [\"/bin/app\"]\n";
        let app = cluster_package::parse_package("app.toml", app_text).expect("valid package");
        assert_eq!(
            apply_set_errors(&state, std::slice::from_ref(&app)),
            ["package `app` depends on `db`, which is not defined"]
        );
        assert!(apply_set_errors(&state, &[app.clone(), db("")]).is_empty(), "applied together");
        state.apply(&Command::PkgApply { def: Arc::new(db("instances = 2")), at_ms: 0 });
        assert!(apply_set_errors(&state, &[app]).is_empty(), "db is in the cluster");
        assert_eq!(
            apply_effect(&state, &db("instances = 2\nfailback = \"auto\"")),
            "db:0: definition replaced (placement or policy only: nothing restarts); db:1: definition replaced \
             (placement or policy only: nothing restarts)"
        );
        assert_eq!(apply_effect(&cluster_model::ClusterState::default(), &db("instances = 2")), "applied");
    }

    /// Regression (issue 11): nothing warned that a package's stop can outlast the stop budget.
    #[test]
    fn a_stop_longer_than_the_budget_is_pointed_out_with_the_lease_only_nodes_at_risk() {
        let mut state = cluster_model::ClusterState::default();
        for (node, watchdog) in [("n1", true), ("n2", false), ("n3", false)] {
            let watchdog = watchdog.then(|| "/dev/watchdog".to_owned());
            state.apply(&Command::NodeHello { name: node.into(), watchdog, at_ms: 0 });
        }
        let members: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let slow = def("\"n1\", \"n2\"", &["/bin/sleep"]);
        let warning = slow_stop_warning(&state, &members, &slow).expect("default kill_after is 10 s");
        assert!(warning.starts_with("its stop may take up to 10.1s (r0 up to 10.1s: SIGTERM then 10s"), "{warning}");
        assert!(warning.contains("longer than the stop budget of 500ms: on n2 (no watchdog"), "{warning}");
        // Only watchdog nodes: reset rather than overlap.
        let guarded = def("\"n1\"", &["/bin/sleep"]);
        assert!(slow_stop_warning(&state, &members, &guarded).unwrap().contains("reset by its watchdog"));
        // A stop that fits says nothing.
        state.apply(&Command::SetSetting { name: "lease".into(), value: "30s".into() });
        assert_eq!(slow_stop_warning(&state, &members, &slow), None);
    }

    /// `pkg apply` of 1,000 alike packages printed the same warning 1,000 times.
    #[test]
    fn a_warning_shared_by_packages_is_printed_once_naming_a_few_of_them() {
        let slow = "its stop may take up to 10.1s".to_owned();
        let witness = "n3 is a witness, which never hosts packages".to_owned();
        let names: Vec<String> = (1..=1000).map(|i| format!("s{i:04}")).collect();
        let mut warnings: Vec<(&str, String)> = names.iter().map(|name| (name.as_str(), slow.clone())).collect();
        warnings.insert(1, ("web", witness.clone()));
        assert_eq!(
            grouped_warnings(&warnings),
            vec![
                format!("packages s0001, s0002, s0003 and 997 more: warning: {slow}"),
                format!("package web: warning: {witness}"),
            ]
        );
        let two = [("a", slow.clone()), ("b", slow.clone())];
        assert_eq!(grouped_warnings(&two), vec![format!("packages a, b: warning: {slow}")]);
        assert!(grouped_warnings(&[]).is_empty());
    }
}
