//! [`ConsensusNode`]: the only consensus interface the daemon sees (propose, read barrier,
//! membership, leadership transfer, status, peer RPCs).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_api::{
    decode_body, encode_as, frame_version, NodeRole, NodeStatus, NodeVersion, PeerRequest, PeerRpc, Request, Response,
    StatusReport, PROTOCOL_V0_1, PROTOCOL_VERSION,
};
use cluster_model::{node_id, validate_node_name, ClusterState, ClusterVersion, Command, CommandOutcome, NodeInfo};
use cluster_tls::rustls::ClientConfig;
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use rand::Rng;

use crate::ack_clock::{AckClock, AckQuorum};
use crate::compat::{append_from_v0_1, SharedVersion, TypeConfigV01};
use crate::election::{
    decide_pre_vote, round_is_stale, ElectionClock, PreVoteRequest, PreVoteResponse, PreVoteTally, VoterView,
};
use crate::log_store::{LogStore, RecoveryReport};
use crate::network::{CallError, PeerNetwork, Peers};
use crate::proposer::Proposer;
use crate::snapshot_policy::{snapshot_due, SnapshotProgress, SnapshotTrigger};
use crate::state_machine::{StateMachineStore, StateView};
use crate::types::{Raft, TypeConfig};

/// Raft timing of a node (the node file's `[raft]`); every node of a cluster should run the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How long a client request may wait for a leader or a quorum.
    pub request_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Everything needed to start a node.
pub struct NodeOptions {
    pub name: String,
    pub address: String,
    pub data_dir: PathBuf,
    pub tls: Arc<ClientConfig>,
    pub timing: Timing,
}

/// Failures of consensus operations, classified so callers can map them to exit codes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsensusError {
    /// This node is not the leader; `leader` is where to send the request, if known.
    #[error("node {me} is not the leader{}", leader.as_ref().map(|l| format!(" (the leader is {})", l.name)).unwrap_or_default())]
    NotLeader { me: String, leader: Option<NodeInfo> },
    /// No leader or no quorum answered in time.
    #[error("{0}")]
    NoQuorum(String),
    /// The request itself is wrong (unknown node, last voter …).
    #[error("{0}")]
    Invalid(String),
    /// Anything else; the message names the operation.
    #[error("{0}")]
    Failed(String),
    /// Storage could not be opened or consensus stopped: the node cannot go on.
    #[error("{0}")]
    Fatal(String),
}

/// A forwarded request failed: either it was never sent, or its outcome is unknown.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{0}")]
    NotSent(String),
    #[error("{0}")]
    Unknown(String),
}

type Result<T, E = ConsensusError> = std::result::Result<T, E>;

/// A leader confirmed it still led after some instant (see [`ConsensusNode::confirm_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// The term it leads.
    pub term: u64,
    /// The end of its log at that point: at least every entry committed until then.
    pub index: u64,
}

/// A running Raft member: storage, transport, election driver and snapshot trigger.
pub struct ConsensusNode {
    raft: Raft,
    me: NodeInfo,
    id: u64,
    view: StateView,
    log: LogStore,
    peers: Arc<Peers>,
    election: Arc<ElectionClock>,
    /// When this voter last acknowledged a leader of each term.
    acks: AckClock,
    timing: Timing,
    recovery: RecoveryReport,
    /// The start and result of the last leadership confirmation (see `confirm_leadership`).
    read_barrier: tokio::sync::Mutex<Option<(Instant, Result<u64>)>>,
    /// The cluster version of the applied state (the formats this node writes).
    version: SharedVersion,
    /// The index of the last applied entry, as the state machine publishes it.
    applied_index: tokio::sync::watch::Receiver<u64>,
    /// Batches concurrent writes into one entry (see proposer.rs).
    proposer: Proposer,
}

/// What a member said when asked which release it runs (see [`ConsensusNode::member_versions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberVersion {
    /// It answered: its release and the newest cluster version it can run at.
    Known { release: String, newest: ClusterVersion },
    /// It refused the question's protocol: it runs v0.1.0.
    V0_1,
    /// No answer (down, unreachable): unknown.
    Unknown(String),
}

impl MemberVersion {
    /// The newest cluster version the member can run at, if known.
    pub fn newest(&self) -> Option<ClusterVersion> {
        match self {
            MemberVersion::Known { newest, .. } => Some(*newest),
            MemberVersion::V0_1 => Some(ClusterVersion::V0_1),
            MemberVersion::Unknown(_) => None,
        }
    }

    /// The release, as `status` shows it.
    pub fn release(&self) -> Option<&str> {
        match self {
            MemberVersion::Known { release, .. } => Some(release),
            MemberVersion::V0_1 => Some("0.1.0"),
            MemberVersion::Unknown(_) => None,
        }
    }
}

impl ConsensusNode {
    /// Opens storage under `data_dir/raft` and starts Raft with its background tasks.
    pub async fn start(options: NodeOptions) -> Result<Arc<ConsensusNode>> {
        validate_node_name(&options.name).map_err(ConsensusError::Invalid)?;
        let raft_dir = options.data_dir.join("raft");
        let (log, recovery) = LogStore::open(&raft_dir).map_err(|err| ConsensusError::Fatal(err.to_string()))?;
        let state_machine = StateMachineStore::open(&raft_dir).map_err(|err| ConsensusError::Fatal(err.to_string()))?;
        let view = state_machine.view();
        let version = state_machine.shared_version();
        let applied_index = state_machine.applied_index();
        let timing = options.timing;
        let config = Config {
            cluster_name: "clusterd".into(),
            heartbeat_interval: timing.heartbeat.as_millis() as u64,
            // openraft's own election timer is off; what remains of these two values is the
            // follower's "leader lease" (= election_timeout_max), during which it refuses votes.
            // It must end before our driver's shortest timeout, or every candidate is refused by
            // its peer and the two survivors of a dead leader re-campaign in a loop (seen in the
            // lab: term 1 → 20, up to 12 s without a leader).
            election_timeout_min: openraft_lease(timing).as_millis() as u64 - 1,
            election_timeout_max: openraft_lease(timing).as_millis() as u64,
            // Elections are driven by election.rs (pre-vote, fresh random timeouts).
            enable_elect: false,
            // Snapshots are triggered by the snapshot_period setting of the replicated state.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 100,
            install_snapshot_timeout: 2_000,
            ..Config::default()
        };
        let config = Arc::new(config.validate().map_err(|err| ConsensusError::Fatal(format!("raft config: {err}")))?);
        let peers = Peers::new(options.tls, version.clone());
        let id = node_id(&options.name);
        let raft = Raft::new(id, config, PeerNetwork { peers: peers.clone() }, log.clone(), state_machine)
            .await
            .map_err(|err| ConsensusError::Fatal(format!("failed to start raft: {err}")))?;
        peers.set_metrics(raft.metrics());
        let proposer = Proposer::start(raft.clone(), log.append_progress(), timing.heartbeat, version.clone());
        let node = Arc::new(ConsensusNode {
            raft,
            me: NodeInfo { name: options.name, address: options.address },
            id,
            view,
            log,
            peers,
            election: Arc::new(ElectionClock::new()),
            acks: AckClock::new(Instant::now()),
            timing,
            recovery,
            read_barrier: tokio::sync::Mutex::new(None),
            version,
            applied_index,
            proposer,
        });
        tokio::spawn(driver(Arc::downgrade(&node)));
        Ok(node)
    }

    /// What opening the log found (a torn tail that was cut off, entries loaded).
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// This node's name and address.
    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// Timing this node runs with.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The cluster version of the applied state: what this node writes and speaks.
    pub fn cluster_version(&self) -> ClusterVersion {
        self.version.get()
    }

    /// The protocol this node speaks to its peers now.
    pub fn protocol(&self) -> u8 {
        self.version.protocol()
    }

    /// Asks every other member which release it runs (this node answers for itself). A v0.1.0
    /// member refuses the question's protocol, which is its answer; a member that does not answer
    /// within `timeout` is unknown.
    pub async fn member_versions(&self, timeout: Duration) -> Vec<(String, MemberVersion)> {
        let asks = self.members().into_iter().map(|member| async move {
            let version = if member.name == self.me.name {
                MemberVersion::Known { release: env!("CARGO_PKG_VERSION").to_owned(), newest: ClusterVersion::CURRENT }
            } else {
                self.version_of(&member.address, timeout).await
            };
            (member.name, version)
        });
        futures::future::join_all(asks).await
    }

    /// Asks every member which release it runs and, when all of them read this release's formats
    /// and the cluster runs below it, commits `ActivateVersion(CURRENT)`. Leader only (a follower's
    /// write is refused as not the leader). Returns what each member answered.
    pub async fn raise_version(&self, timeout: Duration) -> Vec<(String, MemberVersion)> {
        let members = self.member_versions(timeout).await;
        let all_current = members.iter().all(|(_, version)| version.newest() >= Some(ClusterVersion::CURRENT));
        if all_current && self.cluster_version() < ClusterVersion::CURRENT {
            let from = self.cluster_version();
            let command = Command::ActivateVersion { version: ClusterVersion::CURRENT, at_ms: wall_ms() };
            match self.propose_within(command).await {
                Ok(CommandOutcome::Applied) => tracing::info!(
                    from = %from,
                    to = %ClusterVersion::CURRENT,
                    "cluster version raised: every member runs {}",
                    ClusterVersion::CURRENT
                ),
                Ok(other) => tracing::debug!(?other, "cluster version not raised"),
                Err(err) => tracing::warn!(error = %err, "cannot raise the cluster version yet"),
            }
        }
        members
    }

    /// Asks the node at `address` which release it runs.
    pub async fn version_of(&self, address: &str, timeout: Duration) -> MemberVersion {
        let payload = match encode_as(&(), PROTOCOL_VERSION) {
            Ok(payload) => payload.to_vec(),
            Err(err) => return MemberVersion::Unknown(err.to_string()),
        };
        let request = Request::Peer(PeerRequest { rpc: PeerRpc::Version, payload });
        match self.peers.request_in(address, &request, timeout, true, PROTOCOL_VERSION).await {
            Ok(Response::Peer(Ok(bytes))) => match decode_body::<NodeVersion>(&bytes) {
                Ok(answer) => MemberVersion::Known { release: answer.release, newest: answer.newest },
                Err(err) => MemberVersion::Unknown(format!("bad answer: {err}")),
            },
            Ok(Response::Client(Err(err)))
                if cluster_api::wire::refused_protocol(PROTOCOL_V0_1, &Response::Client(Err(err.clone()))) =>
            {
                MemberVersion::V0_1
            }
            Ok(other) => MemberVersion::Unknown(format!("unexpected answer: {other:?}")),
            Err(err) => MemberVersion::Unknown(err.to_string()),
        }
    }

    /// Whether Raft's core is still running (for the systemd watchdog).
    pub fn healthy(&self) -> bool {
        self.raft.metrics().borrow().running_state.is_ok()
    }

    /// The leader this node currently follows, if any.
    pub fn leader(&self) -> Option<NodeInfo> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        metrics.membership_config.membership().get_node(&leader).cloned()
    }

    fn not_leader(&self) -> ConsensusError {
        ConsensusError::NotLeader { me: self.me.name.clone(), leader: self.leader() }
    }

    async fn within<T>(
        &self,
        what: &str,
        limit: Duration,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| ConsensusError::NoQuorum(format!("{what}: no leader or quorum within {limit:?}")))?
    }

    /// Bootstraps a one-node cluster made of this node.
    pub async fn initialize(&self) -> Result<()> {
        if self.raft.is_initialized().await.map_err(|err| ConsensusError::Fatal(err.to_string()))? {
            return Err(ConsensusError::Invalid(format!(
                "node {} is already part of a cluster: `cluster init` runs once, on the first node",
                self.me.name
            )));
        }
        let members = std::collections::BTreeMap::from([(self.id, self.me.clone())]);
        self.raft.initialize(members).await.map_err(|err| ConsensusError::Failed(format!("cluster init: {err}")))?;
        self.election.leader_contact();
        Ok(())
    }

    /// Proposes a command and waits until it is committed and applied. Concurrent writes share
    /// one Raft entry (see proposer.rs), from cluster version 0.2.0 on (v0.1.0 has no batches).
    ///
    /// A command that needs a later cluster version than the cluster runs at is refused here,
    /// before the log: a member of the older release could not decode it.
    pub async fn write(&self, command: Command) -> Result<CommandOutcome> {
        let need = command.version_need();
        let is_activation = matches!(command, Command::ActivateVersion { .. });
        if need.needs > self.cluster_version() && !is_activation && self.leadership().is_some() {
            // The cluster may be below only because nobody has asked the members yet (a cluster
            // formed a moment ago, the last node upgraded a moment ago): ask now, once.
            self.raise_version(VERSION_QUESTION).await;
        }
        let version = self.cluster_version();
        if need.needs > version && !is_activation {
            return Err(ConsensusError::Invalid(format!(
                "{need}, and the cluster runs at {version} until every node runs {} or later (`clusterctl status` \
                 lists the release of each node)",
                need.needs
            )));
        }
        self.propose_within(command).await
    }

    /// Proposes a command (no version check) and waits for its outcome, within the request timeout.
    async fn propose_within(&self, command: Command) -> Result<CommandOutcome> {
        self.within("write", self.timing.request_timeout, async {
            self.proposer.propose(command).await.map_err(|err| self.map_write_error("write", err))
        })
        .await
    }

    /// A linearizable read: confirms leadership with a quorum, waits until that point is applied,
    /// then reads the state.
    pub async fn read<T>(&self, read: impl FnOnce(&ClusterState) -> T) -> Result<T> {
        self.confirm_leadership().await?;
        Ok(read(&self.view.read().expect("state lock poisoned").state))
    }

    /// Reads the local applied state without a quorum round (may be stale on a follower).
    pub fn read_local<T>(&self, read: impl FnOnce(&ClusterState) -> T) -> T {
        read(&self.view.read().expect("state lock poisoned").state)
    }

    fn map_write_error(&self, what: &str, err: RaftError<u64, ClientWriteError<u64, NodeInfo>>) -> ConsensusError {
        match err {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                ConsensusError::NotLeader { me: self.me.name.clone(), leader: forward.leader_node }
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(change)) => match change {
                ChangeMembershipError::InProgress(_) => {
                    ConsensusError::Failed(format!("{what}: another membership change is in progress, retry"))
                }
                other => ConsensusError::Invalid(format!("{what}: {other}")),
            },
            RaftError::Fatal(err) => ConsensusError::Fatal(format!("{what}: {err}")),
        }
    }

    fn membership(&self) -> openraft::Membership<u64, NodeInfo> {
        self.raft.metrics().borrow().membership_config.membership().clone()
    }

    fn lookup(&self, name: &str) -> Result<(u64, bool)> {
        let membership = self.membership();
        let id = node_id(name);
        match membership.get_node(&id) {
            Some(node) if node.name == name => Ok((id, membership.voter_ids().any(|v| v == id))),
            _ => Err(ConsensusError::Invalid(format!("node `{name}` is not a member of the cluster"))),
        }
    }

    fn require_leader(&self) -> Result<()> {
        if self.raft.metrics().borrow().state == ServerState::Leader {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    /// Adds a node as a learner, waits until it has caught up, then makes it a voter unless
    /// `learner` is set.
    pub async fn add_node(&self, name: &str, address: &str, learner: bool) -> Result<()> {
        validate_node_name(name).map_err(ConsensusError::Invalid)?;
        validate_address(address)?;
        self.require_leader()?;
        let membership = self.membership();
        let id = node_id(name);
        let is_voter = membership.voter_ids().any(|voter| voter == id);
        // A node left as a learner by an interrupted `node add` (lost answer, timeout) is
        // promoted by repeating the same command; anything else that exists is refused.
        let resume_promotion = match membership.get_node(&id) {
            Some(existing) if existing.name == name && existing.address == address && !learner && !is_voter => true,
            Some(existing) if existing.name == name => {
                return Err(ConsensusError::Invalid(format!(
                    "node `{name}` already exists (address {}, {})",
                    existing.address,
                    if is_voter { "voter" } else { "learner" }
                )))
            }
            Some(existing) => {
                return Err(ConsensusError::Invalid(format!(
                    "node name `{name}` collides with the id of node `{}`: choose another name",
                    existing.name
                )))
            }
            None => false,
        };
        if !resume_promotion {
            if let Some((_, other)) = membership.nodes().find(|(_, node)| node.address == address) {
                return Err(ConsensusError::Invalid(format!(
                    "address {address} is already used by node `{}`",
                    other.name
                )));
            }
        }
        let cluster_version = self.cluster_version();
        if let MemberVersion::V0_1 = self.version_of(address, self.timing.request_timeout).await {
            if cluster_version > ClusterVersion::V0_1 {
                return Err(ConsensusError::Invalid(format!(
                    "node `{name}` at {address} runs clusterd 0.1.0 (protocol {PROTOCOL_V0_1}), older than this \
                     cluster's version {cluster_version}: it could not read the log; install clusterd \
                     {cluster_version} or later on it first"
                )));
            }
        }
        let info = NodeInfo { name: name.to_owned(), address: address.to_owned() };
        self.within("node add", Duration::from_secs(60), async {
            if !resume_promotion {
                self.raft
                    .add_learner(id, info, true)
                    .await
                    .map_err(|err| self.map_write_error(&format!("add node `{name}`"), err))?;
            }
            if !learner {
                self.change_membership(
                    ChangeMembers::AddVoterIds(BTreeSet::from([id])),
                    &format!("promote node `{name}`"),
                )
                .await?;
            }
            Ok(())
        })
        .await
    }

    /// Proposes a membership change, retrying while the previous change is still in flight.
    async fn change_membership(&self, change: ChangeMembers<u64, NodeInfo>, what: &str) -> Result<()> {
        let mut attempts = 0;
        loop {
            match self.raft.change_membership(change.clone(), false).await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => return Err(self.map_write_error(what, err)),
            }
        }
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, name: &str) -> Result<()> {
        self.require_leader()?;
        let (id, voter) = self.lookup(name)?;
        if voter {
            return Err(ConsensusError::Invalid(format!("node `{name}` is already a voter")));
        }
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        self.within(
            "node promote",
            Duration::from_secs(30),
            self.change_membership(change, &format!("promote node `{name}`")),
        )
        .await
    }

    /// Removes a node. Removing the leader first hands leadership to another voter and returns
    /// [`ConsensusError::NotLeader`] naming it, so the caller forwards the removal there.
    pub async fn remove_node(&self, name: &str) -> Result<()> {
        self.require_leader()?;
        let (id, voter) = self.lookup(name)?;
        let voters: Vec<u64> = self.membership().voter_ids().collect();
        if voter && voters.len() == 1 {
            return Err(ConsensusError::Invalid(format!(
                "refusing to remove node `{name}`: it is the last voter and the cluster would lose its state"
            )));
        }
        if let Some(refused) = self.read_local(|state| state.removal_refused(name)) {
            return Err(ConsensusError::Invalid(refused));
        }
        if id == self.id {
            let successor = self.best_successor()?;
            self.transfer_leader(&successor.name).await?;
            return Err(ConsensusError::NotLeader { me: self.me.name.clone(), leader: Some(successor) });
        }
        let change = if voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.within(
            "node remove",
            Duration::from_secs(30),
            self.change_membership(change, &format!("remove node `{name}`")),
        )
        .await
    }

    /// When this node leads and another voter exists, hands leadership to the most caught-up other
    /// voter (a node about to stop) and returns its name; `None` when this node does not lead.
    pub async fn hand_over_leadership(&self) -> Result<Option<String>> {
        if self.leadership().is_none() {
            return Ok(None);
        }
        let successor = self.best_successor()?;
        self.transfer_leader(&successor.name).await?;
        Ok(Some(successor.name))
    }

    /// The most caught-up other voter.
    fn best_successor(&self) -> Result<NodeInfo> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let matched = |id: &u64| {
            metrics.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|log_id| log_id.index)
        };
        membership
            .voter_ids()
            .filter(|id| *id != self.id)
            .max_by_key(matched)
            .and_then(|id| membership.get_node(&id).cloned())
            .ok_or_else(|| ConsensusError::Invalid("no other voter to hand leadership to".into()))
    }

    /// Hands leadership to `name` (see ARCHITECTURE.md, "Leadership transfer").
    ///
    /// openraft 0.9 has no transfer API. The leader waits until the target holds its whole log,
    /// asks every other voter to hold its elections, stops its own heartbeats for one maximum
    /// election timeout so the followers' leader leases lapse, then tells the target to campaign.
    /// The target wins because its log is complete and nobody else is allowed to run. Heartbeats
    /// and elections are re-enabled whatever happens; the whole sequence is retried up to 3 times.
    pub async fn transfer_leader(&self, name: &str) -> Result<()> {
        self.require_leader()?;
        let (target, voter) = self.lookup(name)?;
        if !voter {
            return Err(ConsensusError::Invalid(format!("node `{name}` is a learner: only a voter can lead")));
        }
        if target == self.id {
            return Ok(());
        }
        let membership = self.membership();
        let address_of = |id: u64| membership.get_node(&id).map(|node| node.address.clone()).unwrap_or_default();
        let others: Vec<u64> = membership.voter_ids().filter(|id| *id != self.id && *id != target).collect();
        let hold = self.timing.election_timeout_max * 6;
        let rpc_timeout = self.timing.election_timeout_max;
        let mut last_failure = String::new();
        for attempt in 1..=3 {
            if let Err(err) = self.wait_caught_up(target, Duration::from_secs(5)).await {
                last_failure = err.to_string();
                continue;
            }
            self.election.hold(hold);
            for other in &others {
                let _: Result<(), CallError> = self
                    .peers
                    .call(*other, &address_of(*other), PeerRpc::HoldElections, &(hold.as_millis() as u64), rpc_timeout)
                    .await;
            }
            self.raft.runtime_config().heartbeat(false);
            tokio::time::sleep(self.timing.election_timeout_max + self.timing.heartbeat).await;
            let campaign: Result<(), CallError> =
                self.peers.call(target, &address_of(target), PeerRpc::Campaign, &(), rpc_timeout).await;
            let won = match campaign {
                Ok(()) => self.wait_for_leader(target, self.timing.election_timeout_max * 4).await,
                Err(err) => {
                    last_failure = format!("node `{name}` did not start its campaign: {err}");
                    false
                }
            };
            self.raft.runtime_config().heartbeat(true);
            self.election.hold(Duration::ZERO);
            for other in &others {
                let _: Result<(), CallError> =
                    self.peers.call(*other, &address_of(*other), PeerRpc::HoldElections, &0u64, rpc_timeout).await;
            }
            if won {
                tracing::info!(target = name, attempt, "leadership transferred");
                return Ok(());
            }
            if last_failure.is_empty() {
                last_failure = format!("node `{name}` did not win its election");
            }
            if self.raft.metrics().borrow().state != ServerState::Leader {
                break;
            }
        }
        Err(ConsensusError::Failed(format!("leadership transfer to `{name}` failed: {last_failure}")))
    }

    async fn wait_caught_up(&self, target: u64, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let metrics = self.raft.metrics().borrow().clone();
            let matched =
                metrics.replication.as_ref().and_then(|r| r.get(&target).cloned().flatten()).map(|id| id.index);
            if matched.is_some() && matched >= metrics.last_log_index {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ConsensusError::Failed(format!(
                    "target has log index {matched:?}, leader has {:?}: not caught up within {limit:?}",
                    metrics.last_log_index
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_for_leader(&self, target: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.raft.metrics().borrow().current_leader == Some(target) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// The cluster as this node sees it.
    pub async fn status(&self) -> StatusReport {
        let metrics = self.raft.metrics().borrow().clone();
        let committed = self.raft.with_raft_state(|state| state.committed.map(|id| id.index)).await.ok().flatten();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let is_leader = metrics.state == ServerState::Leader;
        let since_quorum = metrics.millis_since_quorum_ack;
        let quorum = if is_leader {
            since_quorum.is_some_and(|ms| ms <= self.timing.election_timeout_max.as_millis() as u64)
        } else {
            metrics.current_leader.is_some() && self.election.since_leader_contact() <= self.timing.election_timeout_max
        };
        let nodes = membership
            .nodes()
            .map(|(id, info)| {
                let matched = metrics.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index);
                let last_contact = if *id == self.id {
                    Some(0)
                } else if Some(*id) == metrics.current_leader && !is_leader {
                    Some(self.election.since_leader_contact().as_millis() as u64)
                } else {
                    self.peers.last_contact(*id).map(|d| d.as_millis() as u64)
                };
                NodeStatus {
                    name: info.name.clone(),
                    address: info.address.clone(),
                    role: if voters.contains(id) { NodeRole::Voter } else { NodeRole::Learner },
                    matched_index: if *id == self.id { metrics.last_log_index } else { matched },
                    last_contact_ms: last_contact,
                    standby: false,
                    leaving: false,
                    protection: String::new(),
                    lease: None,
                    version: None,
                    witness: false,
                }
            })
            .collect();
        let leader = metrics.current_leader.and_then(|id| membership.get_node(&id)).map(|node| node.name.clone());
        StatusReport {
            reporter: self.me.name.clone(),
            reporter_state: format!("{:?}", metrics.state).to_lowercase(),
            leader,
            term: metrics.current_term,
            quorum,
            commit_index: committed,
            applied_index: metrics.last_applied.map(|id| id.index),
            last_log_index: metrics.last_log_index,
            snapshot_index: metrics.snapshot.map(|id| id.index),
            nodes,
            packages: Vec::new(),
            warnings: Vec::new(),
            cluster_version: self.cluster_version().to_string(),
        }
    }

    /// Confirms leadership with a quorum round; returns the log index every read (and every lease
    /// grant) is linearized after, once it is applied here.
    ///
    /// Concurrent callers share rounds: a caller reuses the outcome of a round that *started* after
    /// it arrived (so it is still linearizable), and at most one round is in flight. openraft gives a
    /// round only one heartbeat interval to hear a quorum; a round that misses it on a busy host is
    /// retried until the request timeout instead of failing a read on a healthy cluster.
    ///
    /// A failed round is shared too: on a leader cut off from the quorum every round fails only at
    /// the request timeout, and callers that each ran their own, one after the other, piled up
    /// without bound (a renewal every heartbeat) and held a fence decision back for minutes.
    pub async fn confirm_leadership(&self) -> Result<u64> {
        let arrived = Instant::now();
        let mut last_round = self.read_barrier.lock().await;
        if let Some((started, outcome)) = last_round.as_ref() {
            if *started >= arrived {
                return outcome.clone();
            }
        }
        let started = Instant::now();
        let outcome = self
            .within("linearizable read", self.timing.request_timeout, async {
                loop {
                    match self.raft.ensure_linearizable().await {
                        Ok(read) => return Ok(read.map_or(0, |log_id| log_id.index)),
                        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                            return Err(self.not_leader())
                        }
                        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(err))) => {
                            tracing::debug!(error = %err, "quorum round of a read missed its deadline, retrying");
                            tokio::time::sleep(self.timing.heartbeat / 5).await;
                        }
                        Err(RaftError::Fatal(err)) => return Err(ConsensusError::Fatal(err.to_string())),
                    }
                }
            })
            .await;
        *last_round = Some((started, outcome.clone()));
        outcome
    }

    /// Confirms that this node still led after `since` (a lease renewal's arrival): a majority of
    /// voters accepted an append of this term sent at or after it. Returns the index of the last
    /// entry in this leader's log at that point: it covers every entry committed so far, by this
    /// leader or an earlier one (Raft's leader completeness). Not the applied index: a new leader
    /// applies the entries of older terms only once it committed one of its own, so its applied
    /// index can miss a reassignment the previous leader committed (issue 11, finding 5).
    ///
    /// The leader's regular heartbeats (every 50 ms) normally provide the proof, so a renewal
    /// costs no round of its own; if they do not within two heartbeats (heartbeats are paused
    /// during a leadership transfer, or a voter is slow), an explicit round is run instead.
    pub async fn confirm_after(&self, since: Instant) -> Result<Confirmed> {
        let term = self.leadership().ok_or_else(|| self.not_leader())?;
        // The leader accepts its own appends: a confirmation of term `term` counts as this voter's
        // acknowledgement of that term (a later leader asks for it, see ack_clock.rs), recorded
        // as in flight now and as done when it succeeds.
        let in_flight = AckInFlight::begin(&self.acks, term);
        let index = self.confirm_leader_after(since, term).await?;
        in_flight.end(true);
        Ok(Confirmed { term, index })
    }

    /// Sends a heartbeat to every follower now, so that a [`ConsensusNode::confirm_after`] that
    /// waits for the next heartbeats is answered within a round trip. Not while a leadership
    /// transfer holds the heartbeats (the followers must stop hearing from this leader).
    pub async fn heartbeat_now(&self) {
        if self.leadership().is_some() && !self.election.held() {
            if let Err(err) = self.raft.trigger().heartbeat().await {
                tracing::debug!(error = %err, "heartbeat not sent");
            }
        }
    }

    async fn confirm_leader_after(&self, since: Instant, term: u64) -> Result<u64> {
        let wait_for_heartbeats = Instant::now() + self.timing.heartbeat * 2;
        loop {
            let changed = self.peers.leader_clock.changed().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (confirmed, last_log_index) = {
                let metrics = self.raft.metrics();
                let metrics = metrics.borrow();
                if metrics.state != ServerState::Leader || metrics.current_term != term {
                    return Err(self.not_leader());
                }
                let configs = metrics.membership_config.membership().get_joint_config();
                let confirmed = self.peers.leader_clock.confirmed(metrics.current_term, self.id, configs, since);
                (confirmed, metrics.last_log_index.unwrap_or(0))
            };
            if confirmed {
                return Ok(last_log_index);
            }
            let deadline = tokio::time::Instant::from_std(wait_for_heartbeats);
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                // A quorum round: its read index is at least the commit index (openraft's
                // `ensure_linearizable`), and the log's end was read before it.
                let index = self.confirm_leadership().await?;
                if self.leadership() != Some(term) {
                    return Err(self.not_leader());
                }
                return Ok(last_log_index.max(index));
            }
        }
    }

    /// Members (voters and learners) that accepted an append of this leader's current term: they
    /// are alive and talk to this leader at the Raft level. Empty when this node does not lead.
    pub fn acknowledged_this_term(&self) -> Vec<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.state != ServerState::Leader {
            return Vec::new();
        }
        let membership = metrics.membership_config.membership();
        self.peers
            .leader_clock
            .accepted_in(metrics.current_term)
            .into_iter()
            .filter_map(|id| membership.get_node(&id).map(|node| node.name.clone()))
            .collect()
    }

    /// Resolves whenever this node's Raft role, term, leader or membership may have changed.
    pub fn leadership_changes(&self) -> LeadershipChanges {
        LeadershipChanges { server: self.raft.server_metrics(), metrics: self.raft.metrics() }
    }

    /// The highest term this node has seen.
    pub fn current_term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Whether this node is the leader now, and in which term.
    pub fn leadership(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        (metrics.state == ServerState::Leader).then_some(metrics.current_term)
    }

    /// Waits (at most `limit`) until this node applied an entry of `term`, or its term moved on;
    /// whether it applied one. As the leader of `term` it has then applied every entry committed
    /// before its election: openraft applies them only once the first entry of its own term
    /// commits, so until then its state may miss committed settings.
    pub async fn wait_applied_in_term(&self, term: u64, limit: Duration) -> bool {
        let applied = move |metrics: &openraft::RaftMetrics<u64, NodeInfo>| {
            metrics.last_applied.is_some_and(|id| id.leader_id.term >= term)
        };
        let _ = self
            .raft
            .wait(Some(limit))
            .metrics(move |metrics| applied(metrics) || metrics.current_term != term, "an entry of this term applied")
            .await;
        applied(&self.raft.metrics().borrow())
    }

    /// Index of the last entry applied to the local state machine (the state read by
    /// [`ConsensusNode::read_local`] holds it).
    pub fn applied_index(&self) -> u64 {
        *self.applied_index.borrow()
    }

    /// Index of the last entry in the local log (appended, not necessarily committed).
    pub fn last_log_index(&self) -> u64 {
        self.raft.metrics().borrow().last_log_index.unwrap_or(0)
    }

    /// Waits (at most `limit`) until an entry after `index` is applied; returns the applied index.
    ///
    /// It wakes only when an entry is applied (openraft's own wait looks again at every change of
    /// its metrics, which on a leader is every answer to a heartbeat).
    pub async fn wait_applied_after(&self, index: u64, limit: Duration) -> u64 {
        let mut applied = self.applied_index.clone();
        let _ = tokio::time::timeout(limit, applied.wait_for(|applied| *applied > index)).await;
        self.applied_index()
    }

    /// The voters of the current membership (the first config of a joint one, and the second).
    pub fn voters(&self) -> Vec<NodeInfo> {
        let membership = self.membership();
        membership.voter_ids().filter_map(|id| membership.get_node(&id).cloned()).collect()
    }

    /// Every member (voters and learners).
    pub fn members(&self) -> Vec<NodeInfo> {
        self.membership().nodes().map(|(_, node)| node.clone()).collect()
    }

    /// Whether `name` is a member (voter or learner), without copying the membership.
    pub fn is_member(&self, name: &str) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let found = metrics.membership_config.membership().nodes().any(|(_, node)| node.name == name);
        found
    }

    /// A typed peer RPC to `address` (the engine's lease renewals and reports).
    pub async fn call_peer<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        address: &str,
        rpc: PeerRpc,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, String> {
        self.peers.call(node_id(name), address, rpc, body, timeout).await.map_err(|err| err.to_string())
    }

    /// A peer RPC that v0.1.0 lacks (the engine's keeps and expiry checks): sent in this release's
    /// protocol even while the cluster runs at version 1; `Ok(None)` when the node runs v0.1.0.
    pub async fn call_peer_newest<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        address: &str,
        rpc: PeerRpc,
        body: &Req,
        timeout: Duration,
    ) -> Result<Option<Resp>, String> {
        self.peers.call_newest(node_id(name), address, rpc, body, timeout).await.map_err(|err| err.to_string())
    }

    /// A peer RPC whose payload the caller encoded (its version byte chosen for the protocol of
    /// [`ConsensusNode::protocol`]); returns the encoded answer (the engine's leases and proposals,
    /// whose shapes differ between protocols).
    pub async fn call_peer_raw(
        &self,
        name: &str,
        address: &str,
        rpc: PeerRpc,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        self.peers.call_raw(node_id(name), address, rpc, payload, timeout).await.map_err(|err| err.to_string())
    }

    /// Sends a request to another node (forwarding to the leader).
    pub async fn forward(&self, address: &str, request: &Request) -> Result<Response, ForwardError> {
        let limit = self.timing.request_timeout + Duration::from_secs(1);
        self.peers.request(address, request, limit, false).await.map_err(|err| match err {
            CallError::Unreachable(detail) => ForwardError::NotSent(detail),
            CallError::Lost(detail) | CallError::Remote(detail) => ForwardError::Unknown(detail),
        })
    }

    /// [`ConsensusNode::forward`] in this release's protocol whatever the cluster version (a
    /// request v0.1.0 lacks, to a leader that may run this release; a v0.1.0 leader refuses it).
    pub async fn forward_newest(&self, address: &str, request: &Request) -> Result<Response, ForwardError> {
        let limit = self.timing.request_timeout + Duration::from_secs(1);
        self.peers.request_in(address, request, limit, false, PROTOCOL_VERSION).await.map_err(|err| match err {
            CallError::Unreachable(detail) => ForwardError::NotSent(detail),
            CallError::Lost(detail) | CallError::Remote(detail) => ForwardError::Unknown(detail),
        })
    }

    /// Serves a peer RPC; the answer is the encoded result, or a message naming what failed.
    ///
    /// The payload's version byte says which protocol the caller speaks (3: v0.1.0, whose entries
    /// are converted; 4: this release); the answer is written in the same protocol.
    pub async fn handle_peer(&self, request: PeerRequest) -> Result<Vec<u8>, String> {
        let bad = |err: cluster_api::FrameError| format!("malformed {:?} rpc: {err}", request.rpc);
        let protocol = frame_version(&request.payload).map_err(bad)?;
        let encoded = |value: &dyn erased::Encode| value.encode_as(protocol);
        match request.rpc {
            PeerRpc::AppendEntries => {
                let rpc: AppendEntriesRequest<TypeConfig> = if protocol == PROTOCOL_V0_1 {
                    append_from_v0_1(decode_body::<AppendEntriesRequest<TypeConfigV01>>(&request.payload).map_err(bad)?)
                } else {
                    decode_body(&request.payload).map_err(bad)?
                };
                let term = rpc.vote.leader_id().get_term();
                // A leader of the current term is alive even when this node cannot answer yet (its
                // disk stalls and the append waits for it): refuse pre-votes meanwhile, or a stalled
                // follower's grant lets another follower depose a healthy leader (lab disk-stall
                // test). Pre-votes are liveness only; leases rely on acknowledgements (below).
                if rpc.vote.is_committed() && term >= self.raft.metrics().borrow().current_term {
                    self.election.leader_contact();
                }
                let in_flight = AckInFlight::begin(&self.acks, term);
                let result = self.raft.append_entries(rpc).await;
                let acknowledged = matches!(
                    result,
                    Ok(AppendEntriesResponse::Success
                        | AppendEntriesResponse::PartialSuccess(_)
                        | AppendEntriesResponse::Conflict)
                );
                if acknowledged {
                    self.election.leader_contact();
                }
                in_flight.end(acknowledged);
                encoded(&result)
            }
            PeerRpc::Vote => {
                let rpc: VoteRequest<u64> = decode_body(&request.payload).map_err(bad)?;
                let result = self.raft.vote(rpc).await;
                if matches!(&result, Ok(response) if response.vote_granted) {
                    // Granting a vote restarts our own wait, so we do not compete with the candidate.
                    self.election.leader_contact();
                }
                encoded(&result)
            }
            PeerRpc::InstallSnapshot => {
                let rpc: InstallSnapshotRequest<TypeConfig> = decode_body(&request.payload).map_err(bad)?;
                let in_flight = AckInFlight::begin(&self.acks, rpc.vote.leader_id().get_term());
                let result = self.raft.install_snapshot(rpc).await;
                if result.is_ok() {
                    self.election.leader_contact();
                }
                in_flight.end(result.is_ok());
                encoded(&result)
            }
            PeerRpc::PreVote => {
                let rpc: PreVoteRequest = decode_body(&request.payload).map_err(bad)?;
                encoded(&self.answer_pre_vote(&rpc))
            }
            PeerRpc::HoldElections => {
                let millis: u64 = decode_body(&request.payload).map_err(bad)?;
                self.election.hold(Duration::from_millis(millis.min(10_000)));
                encoded(&())
            }
            PeerRpc::Lease
            | PeerRpc::LeaseRelay
            | PeerRpc::LeaseBatch
            | PeerRpc::Propose
            | PeerRpc::Keep
            | PeerRpc::ExpiryCheck => Err(format!("{:?} is served by the daemon, not by raft", request.rpc)),
            PeerRpc::Version => {
                decode_body::<()>(&request.payload).map_err(bad)?;
                let answer =
                    NodeVersion { release: env!("CARGO_PKG_VERSION").to_owned(), newest: ClusterVersion::CURRENT };
                encoded(&answer)
            }
            PeerRpc::LastAck => {
                let term: u64 = decode_body(&request.payload).map_err(bad)?;
                encoded(&self.answer_last_ack(term))
            }
            PeerRpc::Campaign => {
                decode_body::<()>(&request.payload).map_err(bad)?;
                self.election.hold(Duration::ZERO);
                self.raft.trigger().elect().await.map_err(|err| err.to_string())?;
                encoded(&())
            }
        }
    }

    /// How long ago (ms, rounded down) this voter last acknowledged a leader of a term below
    /// `term`; `None` while this voter has not seen `term` yet (it could still acknowledge an older
    /// leader) or cannot tell.
    fn answer_last_ack(&self, term: u64) -> Option<u64> {
        if self.raft.metrics().borrow().current_term < term {
            return None;
        }
        let now = Instant::now();
        self.acks.last_ack_before(term, now).map(|at| now.saturating_duration_since(at).as_millis() as u64)
    }

    /// For a leader of `term`: a moment (on this node's clock) after which no leader of an older
    /// term can have completed a quorum round, hence granted a lease; `None` if a majority of the
    /// voters did not answer within one election timeout, or the membership is changing.
    ///
    /// A remote voter's elapsed time is shortened by `drift_ppm` and counted back from when its
    /// answer arrived, so the bound can only be later than the truth. See docs/safety.md.
    pub async fn older_leaders_quiet_since(&self, term: u64, drift_ppm: u64) -> Option<Instant> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader || metrics.current_term != term {
            return None;
        }
        let stored = &metrics.membership_config;
        let applied = metrics.last_applied.map_or(0, |id| id.index);
        let committed = stored.log_id().as_ref().is_none_or(|id| id.index <= applied);
        let membership = stored.membership();
        if !committed || membership.get_joint_config().len() != 1 {
            return None;
        }
        let voters: Vec<(u64, String)> = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|node| (id, node.address.clone())))
            .collect();
        let mut quorum = AckQuorum::new(voters.len());
        if voters.iter().any(|(id, _)| *id == self.id) {
            quorum.record(self.acks.last_ack_before(term, Instant::now())?);
        }
        let timeout = self.timing.election_timeout_max;
        let mut asks: futures::stream::FuturesUnordered<_> = voters
            .iter()
            .filter(|(id, _)| *id != self.id)
            .map(|(id, address)| async move {
                let answer: Result<Option<u64>, CallError> =
                    self.peers.call(*id, address, PeerRpc::LastAck, &term, timeout).await;
                let arrived = Instant::now();
                let elapsed_ms = answer.ok().flatten()?;
                let shortened = Duration::from_micros(elapsed_ms * 1_000_000u64.saturating_sub(drift_ppm) / 1_000);
                arrived.checked_sub(shortened)
            })
            .collect();
        while quorum.bound().is_none() {
            match futures::StreamExt::next(&mut asks).await {
                Some(Some(last_ack)) => quorum.record(last_ack),
                Some(None) => {}
                None => break,
            }
        }
        quorum.bound()
    }

    fn answer_pre_vote(&self, request: &PreVoteRequest) -> PreVoteResponse {
        let leader_with_quorum = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics.state == ServerState::Leader
                && metrics
                    .millis_since_quorum_ack
                    .is_some_and(|ms| ms < self.timing.election_timeout_min.as_millis() as u64)
        };
        let view = VoterView {
            last_log_id: self.log.last_log_id(),
            since_leader_contact: self.election.since_leader_contact(),
            leader_with_quorum,
        };
        let answer = decide_pre_vote(view, request, self.timing.election_timeout_min);
        tracing::debug!(candidate = request.candidate, granted = answer.granted, reason = %answer.reason, "pre-vote");
        answer
    }

    /// One round of the election driver: pre-vote, then a real election if a majority agrees.
    ///
    /// The round ends as soon as its outcome is known (a dead voter does not hold it up for the
    /// RPC timeout), and its result is thrown away if a leader showed up meanwhile: a grant given
    /// before a new leader was elected must not depose that leader.
    async fn campaign_if_allowed(&self) {
        let membership = self.membership();
        let voters: Vec<(u64, String)> = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|node| (id, node.address.clone())))
            .collect();
        if !voters.iter().any(|(id, _)| *id == self.id) {
            return;
        }
        let started = Instant::now();
        let term_before = self.raft.metrics().borrow().current_term;
        let request = PreVoteRequest { candidate: self.id, last_log_id: self.log.last_log_id() };
        let mut asks: futures::stream::FuturesUnordered<_> = voters
            .iter()
            .filter(|(id, _)| *id != self.id)
            .map(|(id, address)| {
                let request = request.clone();
                async move {
                    let answer: Result<PreVoteResponse, CallError> = self
                        .peers
                        .call(*id, address, PeerRpc::PreVote, &request, self.timing.election_timeout_min)
                        .await;
                    answer.map(|a| a.granted).unwrap_or(false)
                }
            })
            .collect();
        let mut tally = PreVoteTally::new(voters.len());
        while tally.outcome().is_none() {
            match futures::StreamExt::next(&mut asks).await {
                Some(granted) => tally.record(granted),
                None => break,
            }
        }
        if tally.outcome() != Some(true) {
            tracing::debug!(granted = tally.granted, voters = voters.len(), "pre-vote lost");
            return;
        }
        let metrics = self.raft.metrics().borrow().clone();
        let since_contact = self.election.since_leader_contact();
        if round_is_stale(started.elapsed(), since_contact, term_before, metrics.current_term)
            || metrics.state == ServerState::Leader
        {
            tracing::debug!(
                term_before,
                term_now = metrics.current_term,
                contact_ms = since_contact.as_millis() as u64,
                "pre-vote won, but a leader showed up during the round: not campaigning"
            );
            return;
        }
        tracing::info!(granted = tally.granted, voters = voters.len(), "pre-vote won, starting an election");
        if let Err(err) = self.raft.trigger().elect().await {
            tracing::error!(error = %err, "failed to start an election");
        }
    }

    /// Builds a snapshot when one is due (see snapshot_policy.rs).
    async fn snapshot_if_due(&self, last_triggered: &mut SnapshotTrigger) {
        let (applied, snapshot) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.last_applied.map_or(0, |id| id.index), metrics.snapshot.map_or(0, |id| id.index))
        };
        let (period, commands, snapshot_bytes) = {
            let view = self.view.read().expect("state lock poisoned");
            (view.state.settings.snapshot_period, view.commands_applied, view.snapshot_bytes)
        };
        let now =
            SnapshotProgress { applied, snapshot, commands, log_bytes: self.log.appended_bytes(), snapshot_bytes };
        if snapshot_due(now, *last_triggered, period) {
            *last_triggered = SnapshotTrigger { index: applied, commands, log_bytes: now.log_bytes };
            if let Err(err) = self.raft.trigger().snapshot().await {
                tracing::error!(error = %err, "failed to trigger a snapshot");
            }
        }
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(error = %err, "raft shutdown");
        }
    }
}

/// The follower leader lease we give openraft: shorter than our shortest election timeout, and
/// longer than two heartbeats.
fn openraft_lease(timing: Timing) -> Duration {
    (timing.election_timeout_min * 9 / 10).max(timing.heartbeat * 2 + Duration::from_millis(2))
}

/// Encoding of a peer RPC answer in the protocol of its request, for any serializable answer.
mod erased {
    pub(super) trait Encode {
        fn encode_as(&self, protocol: u8) -> Result<Vec<u8>, String>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn encode_as(&self, protocol: u8) -> Result<Vec<u8>, String> {
            cluster_api::encode_as(self, protocol).map(|bytes| bytes.to_vec()).map_err(|err| err.to_string())
        }
    }
}

fn validate_address(address: &str) -> Result<()> {
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if valid {
        Ok(())
    } else {
        Err(ConsensusError::Invalid(format!("invalid node address `{address}`: expected HOST:PORT")))
    }
}

/// How long a write that needs a newer cluster version waits for the members' releases.
const VERSION_QUESTION: Duration = Duration::from_millis(500);

/// Wall-clock milliseconds since the Unix epoch (event times in commands).
fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// Longest sleep of the driver: bounds how late a snapshot is triggered (an election timeout is
/// slept to exactly: the time since the leader's last contact only grows by the time slept, so
/// no timeout can come due before the computed one). Every wakeup of an idle node costs CPU.
const IDLE_PAUSE: Duration = Duration::from_millis(200);

/// Sleep of the driver while elections are held off.
const HELD_PAUSE: Duration = Duration::from_millis(50);

/// Background work of every node: the election driver and the snapshot trigger.
async fn driver(node: std::sync::Weak<ConsensusNode>) {
    let mut deadline: Option<Duration> = None;
    let mut last_triggered = SnapshotTrigger::default();
    let mut last_attempt = Instant::now();
    // Idle wakeups cost CPU on every node: sleep as long as nothing can be due.
    let mut pause = Duration::from_millis(10);
    loop {
        tokio::time::sleep(pause).await;
        pause = IDLE_PAUSE;
        let Some(node) = node.upgrade() else { return };
        if node.raft.metrics().borrow().running_state.is_err() {
            return;
        }
        node.snapshot_if_due(&mut last_triggered).await;
        let version = node.version.get();
        if version > node.log.format() {
            // The cluster version is committed: v0.1.0 can no longer read what follows.
            match node.log.raise_format(version).await {
                Ok(()) => tracing::info!(%version, "raft log: writing the records of cluster version {version}"),
                Err(err) => tracing::error!(error = %err, "raft log: cannot raise its format"),
            }
        }
        let state = node.raft.metrics().borrow().state;
        if state == ServerState::Leader {
            deadline = None;
            continue;
        }
        if node.election.held() {
            // Held for a while (a transfer of leadership): looked at again soon after it ends.
            pause = HELD_PAUSE;
            deadline = None;
            continue;
        }
        let timing = node.timing;
        let timeout = *deadline.get_or_insert_with(|| {
            let min = timing.election_timeout_min.as_millis() as u64;
            let max = timing.election_timeout_max.as_millis() as u64;
            Duration::from_millis(rand::rng().random_range(min..=max))
        });
        let waited = node.election.since_leader_contact().min(last_attempt.elapsed());
        if waited < timeout {
            pause = (timeout - waited).clamp(Duration::from_millis(5), IDLE_PAUSE);
            continue;
        }
        last_attempt = Instant::now();
        deadline = None;
        node.campaign_if_allowed().await;
    }
}

/// Changes of a node's Raft role, term, leader or membership (see
/// [`ConsensusNode::leadership_changes`]).
pub struct LeadershipChanges {
    /// Sent only when the role, vote, leader or membership changed.
    server: tokio::sync::watch::Receiver<openraft::metrics::RaftServerMetrics<u64, NodeInfo>>,
    /// Sent at every turn of openraft's loop, right after `server`; what [`ConsensusNode`] reads.
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, NodeInfo>>,
}

impl LeadershipChanges {
    /// Resolves at the next change, once [`ConsensusNode::leadership`] reflects it; never, once
    /// Raft has stopped.
    pub async fn changed(&mut self) {
        if self.server.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let (state, vote) = {
            let server = self.server.borrow_and_update();
            (server.state, server.vote)
        };
        // openraft publishes the full metrics right after the server metrics, in the same call.
        let caught_up = self.metrics.wait_for(|metrics| metrics.state == state && metrics.vote == vote);
        let _ = tokio::time::timeout(Duration::from_millis(50), caught_up).await;
    }
}

/// Marks an append or snapshot as being processed until it is answered (also when cancelled).
struct AckInFlight<'a> {
    acks: &'a AckClock,
    term: u64,
    acknowledged: bool,
}

impl<'a> AckInFlight<'a> {
    fn begin(acks: &'a AckClock, term: u64) -> AckInFlight<'a> {
        acks.begin(term);
        AckInFlight { acks, term, acknowledged: false }
    }

    fn end(mut self, acknowledged: bool) {
        self.acknowledged = acknowledged;
    }
}

impl Drop for AckInFlight<'_> {
    fn drop(&mut self) {
        // A cancelled handler sent no answer: the leader cannot have counted it.
        self.acks.end(self.term, self.acknowledged.then(Instant::now));
    }
}
