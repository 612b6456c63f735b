//! Serves requests: peer RPCs go to Raft, client requests run here or are forwarded to the leader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_api::{decode, encode, ApiError, ClientReply, ClientRequest, ErrorKind, PeerRpc, Request, Response};
use cluster_model::controller::{explain, protection, Liveness, Protection};
use cluster_model::{validate_key, validate_value, Command, CommandOutcome, FenceConfig, Phase};
use cluster_raft::{ConsensusError, ConsensusNode, ForwardError};

use crate::engine::{wall_ms, Engine, ExpiryCheck, KeepRequest, LeaseRequest};

/// The request handler shared by every listener.
pub(crate) struct Dispatcher {
    pub(crate) node: Arc<ConsensusNode>,
    pub(crate) engine: Arc<Engine>,
}

/// Runs a peer RPC served by the engine: decode, serve, encode the result.
async fn serve_engine_rpc<Req, Resp, F, Fut>(payload: &[u8], serve: F) -> Result<Vec<u8>, String>
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, String>>,
{
    let request: Req = decode(payload).map_err(|err| format!("malformed engine rpc: {err}"))?;
    let answer = serve(request).await;
    encode(&answer).map(|bytes| bytes.to_vec()).map_err(|err| err.to_string())
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
                Response::Peer(
                    serve_engine_rpc(
                        &peer.payload,
                        |request: LeaseRequest| async move { engine.grant(&request).await },
                    )
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
                Response::Peer(
                    serve_engine_rpc(
                        &peer.payload,
                        |command: Command| async move { engine.serve_propose(command).await },
                    )
                    .await,
                )
            }
            Request::Peer(peer) => Response::Peer(self.node.handle_peer(peer).await),
            Request::Client { request, forwarded } => Response::Client(self.client(request, forwarded).await),
        }
    }

    /// Runs a client request here if this node can, else forwards it to the leader; while there is
    /// no leader it waits (up to the request timeout) for one to be elected.
    async fn client(&self, request: ClientRequest, forwarded: bool) -> Result<ClientReply, ApiError> {
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
                return Err(ApiError::new(
                    ErrorKind::NoLeader,
                    format!("no leader reachable from node {me} within {:?}", self.node.timing().request_timeout),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn execute(&self, request: &ClientRequest, forwarded: bool) -> Result<ClientReply, Failure> {
        let node = &self.node;
        let invalid = |err: cluster_model::InvalidInput| ConsensusError::Invalid(err.to_string());
        match request {
            ClientRequest::ClusterInit => {
                node.initialize().await?;
                Ok(ClientReply::Done { message: format!("cluster initialized with node {}", node.me().name) })
            }
            ClientRequest::NodeAdd { name, address, learner } => {
                node.add_node(name, address, *learner).await?;
                let role = if *learner { "learner" } else { "voter" };
                Ok(ClientReply::Done { message: format!("node {name} added as a {role}") })
            }
            ClientRequest::NodeRemove { name } => {
                node.remove_node(name).await?;
                Ok(ClientReply::Done { message: format!("node {name} removed") })
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
                let mut trial = node.read_local(|state| state.settings.clone());
                trial.set(name, value).map_err(|err| ConsensusError::Invalid(err.to_string()))?;
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
                let mut lines = Vec::new();
                for def in packages {
                    // Writes run on the leader (others forward the request), whose state is current.
                    let what = node.read_local(|state| apply_effect(state.packages.get(&def.name), def));
                    self.write(Command::PkgApply { def: Box::new(def.clone()), at_ms: wall_ms() }, String::new())
                        .await?;
                    lines.push(format!("package {}: {what}", def.name));
                    let members: Vec<String> = node.members().into_iter().map(|member| member.name).collect();
                    if let Some(warning) = node.read_local(|state| slow_stop_warning(state, &members, def)) {
                        lines.push(format!("package {}: warning: {warning}", def.name));
                    }
                }
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
                let packages = node
                    .read(|state| {
                        state
                            .packages
                            .iter()
                            .filter(|(package, _)| name.as_ref().is_none_or(|wanted| wanted == *package))
                            .map(|(_, package)| package.clone())
                            .collect::<Vec<_>>()
                    })
                    .await?;
                if let (Some(name), true) = (name, packages.is_empty()) {
                    return Err(Failure::Api(ApiError::new(
                        ErrorKind::NotFound,
                        format!("package `{name}` does not exist"),
                    )));
                }
                Ok(ClientReply::Packages { packages })
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
        }
    }

    /// Proposes an operator command; a refusal at apply time is the operator's error.
    async fn write(&self, command: Command, done: String) -> Result<ClientReply, Failure> {
        match self.node.write(command).await? {
            CommandOutcome::Rejected { reason } => Err(ConsensusError::Invalid(reason).into()),
            _ => Ok(ClientReply::Done { message: done }),
        }
    }

    /// Raft status plus packages, protections, leases and warnings (the leader's view when leader).
    async fn status(&self) -> cluster_api::StatusReport {
        let mut report = self.node.status().await;
        let view = (self.node.leadership().is_some()).then(|| self.engine.view());
        // Only what the report shows is copied out of the state (not the key-value map or the events).
        let (nodes, packages) = self.node.read_local(|state| {
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
            (nodes, state.packages.values().cloned().collect::<Vec<_>>())
        });
        for (node, (standby, leaving, protection)) in report.nodes.iter_mut().zip(nodes) {
            node.standby = standby;
            node.leaving = leaving;
            node.protection = protection.as_str().to_owned();
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
            if protection == Protection::LeaseOnly {
                report.warnings.push(format!(
                    "node {} runs in lease-only mode (no watchdog, no fencing): safe against crashes and \
                     partitions, not against pauses of its clusterd",
                    node.name
                ));
            }
        }
        for package in &packages {
            let name = &package.def.name;
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
    let candidates = if package.nodes.is_empty() { members } else { &package.nodes[..] };
    let lease_only: Vec<&str> =
        candidates.iter().filter(|node| protection(state, node) == Protection::LeaseOnly).map(String::as_str).collect();
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

fn apply_effect(current: Option<&cluster_model::PackageState>, new: &cluster_package::PackageDef) -> String {
    cluster_model::Redefinition::of(current, new).describe()
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

    #[test]
    fn pkg_apply_says_what_it_restarts() {
        let old = def("\"n1\"", &["/bin/a", "/bin/b"]);
        let mut running = PackageState::new(old.clone(), 0);
        running.owner = Some("n1".into());
        running.phase = Phase::Running;
        assert_eq!(apply_effect(None, &old), "applied");
        assert_eq!(apply_effect(Some(&running), &old), "unchanged");
        assert_eq!(
            apply_effect(Some(&running), &def("\"n2\"", &["/bin/a", "/bin/b"])),
            "definition replaced (placement or policy only: nothing restarts)"
        );
        assert_eq!(
            apply_effect(Some(&running), &def("\"n1\"", &["/bin/a", "/bin/c"])),
            "resources redefined: resource r1 and every later one restart on n1"
        );
        assert_eq!(
            apply_effect(Some(&running), &def("\"n1\"", &["/bin/a"])),
            "resources redefined: the removed resources stop on n1"
        );
        let stopped = PackageState::new(old, 0);
        assert_eq!(
            apply_effect(Some(&stopped), &def("\"n1\"", &["/bin/c"])),
            "definition replaced (resources redefined: takes effect at its next start)"
        );
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
}
