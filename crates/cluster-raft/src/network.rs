//! Peer transport: Raft RPCs and our own election RPCs over TCP with mutual TLS.
//!
//! Each replication stream keeps one connection to its target and reconnects after a failure.
//! Short calls (pre-vote, hold, campaign, forwarded client requests) borrow a connection from a
//! small per-address pool. Every successful exchange records the time of last contact, which
//! `status` shows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_api::{
    decode_body, encode_as, frame_version, Client, ClientError, PeerRequest, PeerRpc, Request, Response, PROTOCOL_V0_1,
    PROTOCOL_VERSION,
};
use cluster_model::NodeInfo;
use cluster_tls::rustls::ClientConfig;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::compat::{append_to_v0_1, SharedVersion};
use crate::leader_clock::LeaderClock;
use crate::types::TypeConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const POOL_PER_ADDRESS: usize = 8;
/// How often a learner gets a heartbeat that carries nothing new (see [`QuietLearner`]).
const LEARNER_HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a replication stream waits after a peer was unreachable before it tries again, for
/// the first [`FAST_RETRIES`] tries; then [`SLOW_RETRY`] (openraft's default) until one succeeds.
/// A daemon that crashed is back within a few hundred milliseconds (`RestartSec=100ms`), and it
/// starts nothing and keeps what runs only until its predecessor's lease ends: it needs a grant,
/// so it must hear from the leader soon. With openraft's 500 ms for every try, a new leader whose
/// first append found the daemon down reached it only half a second later (test-systemd: the
/// leader's daemon was killed, the restarted one got its first grant 100 ms after its lease's stop
/// budget and restarted the package it had adopted).
const FAST_RETRY: Duration = Duration::from_millis(100);
const FAST_RETRIES: usize = 20;
const SLOW_RETRY: Duration = Duration::from_millis(500);

/// The retry intervals of a replication stream to an unreachable peer (see [`FAST_RETRY`]).
fn unreachable_backoff() -> impl Iterator<Item = Duration> + Send + 'static {
    std::iter::repeat_n(FAST_RETRY, FAST_RETRIES).chain(std::iter::repeat(SLOW_RETRY))
}

/// The Raft metrics of this node (membership included), readable by the replication streams.
type Metrics = tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, NodeInfo>>;

/// Connections to peers and when each peer last answered.
pub(crate) struct Peers {
    tls: Arc<ClientConfig>,
    /// Which voters accepted this node's appends as leader, by send time.
    pub(crate) leader_clock: LeaderClock,
    idle: Arc<Pool>,
    contact: Mutex<HashMap<u64, Instant>>,
    /// The cluster version of this node's applied state: the protocol it speaks.
    version: SharedVersion,
    /// When each peer was last reported as unable to follow (rate limit of that error).
    refused: Mutex<HashMap<u64, Instant>>,
    /// This node's Raft metrics, set once Raft runs: which targets are learners.
    metrics: std::sync::OnceLock<Metrics>,
}

/// An idle connection beyond the most recently used one to its address is closed once it has not
/// been used for this long. Calls that overlap (a renewal sent while the previous one waits for
/// its confirmation, a burst of forwarded requests) open extra connections, and each one costs
/// both sides its TLS state and buffers for as long as it stays open: a leader of 50 nodes held two
/// to four connections per peer, most of its memory above a follower's.
const POOL_IDLE: Duration = Duration::from_secs(10);

/// Idle connections to peers, by address, each with the time it was given back; the most
/// recently given back last (taken first).
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<String, Vec<(Client, Instant)>>>,
}

impl Pool {
    fn take(&self, address: &str) -> Option<Client> {
        self.idle.lock().expect("pool lock").get_mut(address).and_then(Vec::pop).map(|(client, _)| client)
    }

    /// Keeps `client` for the next call to `address`, and closes the connections to it that were
    /// not used for [`POOL_IDLE`] (all but the most recent: a call that needs one pays no
    /// handshake).
    fn give_back(&self, address: &str, client: Client) {
        let mut idle = self.idle.lock().expect("pool lock");
        let slot = idle.entry(address.to_owned()).or_default();
        let now = Instant::now();
        slot.retain(|(_, since)| now.duration_since(*since) < POOL_IDLE);
        if slot.len() < POOL_PER_ADDRESS {
            slot.push((client, now));
        }
    }

    fn forget(&self, address: &str) {
        self.idle.lock().expect("pool lock").remove(address);
    }
}

/// How long an exchange that missed its caller's deadline may still finish.
const LATE_ANSWER: Duration = Duration::from_secs(5);

/// An exchange that missed its caller's deadline finishes in a task of its own, and its connection
/// goes back to the pool if the answer comes within [`LATE_ANSWER`] (the answer itself is dropped:
/// the caller was told the outcome is unknown). Dropping the exchange instead would close the
/// connection, and on a loaded host (50 nodes on two cores) appends that missed openraft's 50 ms
/// deadline then cost a TLS handshake each, which loaded the host further until the leader lost
/// its heartbeats.
fn late_answer<F>(pool: Arc<Pool>, address: String, exchange: F)
where
    F: std::future::Future<Output = (Client, Result<Response, ClientError>)> + Send + 'static,
{
    tokio::spawn(async move {
        if let Ok((client, Ok(_))) = tokio::time::timeout(LATE_ANSWER, exchange).await {
            pool.give_back(&address, client);
        }
    });
}

/// Why a peer call failed: the peer could not be reached, or it answered with an error.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Nothing was sent: the request certainly had no effect.
    Unreachable(String),
    /// The request may have been received; its outcome is unknown.
    Lost(String),
    Remote(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(detail) => write!(f, "unreachable: {detail}"),
            CallError::Lost(detail) => write!(f, "no answer: {detail}"),
            CallError::Remote(detail) => write!(f, "{detail}"),
        }
    }
}

impl Peers {
    pub(crate) fn new(tls: Arc<ClientConfig>, version: SharedVersion) -> Arc<Peers> {
        Arc::new(Peers {
            tls,
            leader_clock: LeaderClock::default(),
            idle: Arc::new(Pool::default()),
            contact: Mutex::new(HashMap::new()),
            version,
            refused: Mutex::new(HashMap::new()),
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Gives the replication streams this node's Raft metrics (once, after `Raft::new`).
    pub(crate) fn set_metrics(&self, metrics: Metrics) {
        let _ = self.metrics.set(metrics);
    }

    /// Whether `target` is a learner (a member in no voter set, joint configurations included) in
    /// this node's current membership. Unknown counts as a voter.
    fn is_learner(&self, target: u64) -> bool {
        let Some(metrics) = self.metrics.get() else { return false };
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let learner = membership.get_node(&target).is_some() && !membership.voter_ids().any(|voter| voter == target);
        learner
    }

    /// The protocol this node speaks now (that of its cluster version).
    pub(crate) fn protocol(&self) -> u8 {
        self.version.protocol()
    }

    /// Says, at most once a minute per peer, that `target` cannot follow because it runs an older
    /// release than the cluster version (it refuses this node's protocol).
    fn note_refusal(&self, target: u64, address: &str, detail: &str) {
        if !(detail.contains("protocol version") && detail.contains("is not supported")) {
            return;
        }
        let mut refused = self.refused.lock().expect("refused lock");
        if refused.get(&target).is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return;
        }
        refused.insert(target, Instant::now());
        tracing::error!(
            peer = address,
            "the node at {address} refuses protocol {} (the cluster runs at version {}): it runs an older clusterd \
             and cannot follow until it is upgraded ({detail})",
            self.protocol(),
            self.version.get()
        );
    }

    pub(crate) fn record_contact(&self, node: u64) {
        self.contact.lock().expect("contact lock").insert(node, Instant::now());
    }

    pub(crate) fn last_contact(&self, node: u64) -> Option<Duration> {
        self.contact.lock().expect("contact lock").get(&node).map(Instant::elapsed)
    }

    /// A connection to `address`: an idle one from the pool (`true`: reused), else a new one.
    async fn connect(&self, address: &str) -> Result<(Client, bool), ClientError> {
        let pooled = self.idle.take(address);
        match pooled {
            Some(client) => Ok((client, true)),
            None => Ok((Client::connect_with(address, self.tls.clone(), CONNECT_TIMEOUT).await?, false)),
        }
    }

    /// Drops the idle connections to `address`: one of them failed, so the peer behind them has
    /// probably restarted (or lost its link), and every other one would fail the same way.
    fn forget(&self, address: &str) {
        self.idle.forget(address);
    }

    /// Sends any request to `address` within `timeout`. With `pooled`, an idle connection may be
    /// reused; a reused connection that fails (the peer restarted since: a powered-off machine
    /// sends no FIN, so the first use of each stale connection meets a reset) is dropped with the
    /// other idle ones, and the request is sent once more on a fresh connection within the same
    /// deadline. Only idempotent requests are pooled (peer RPCs); requests whose outcome matters
    /// (forwarded writes) use a fresh connection and are never resent.
    pub(crate) async fn request(
        &self,
        address: &str,
        request: &Request,
        timeout: Duration,
        pooled: bool,
    ) -> Result<Response, CallError> {
        self.request_in(address, request, timeout, pooled, self.protocol()).await
    }

    /// [`Peers::request`] in a given protocol (the version probe always asks in this release's).
    pub(crate) async fn request_in(
        &self,
        address: &str,
        request: &Request,
        timeout: Duration,
        pooled: bool,
        protocol: u8,
    ) -> Result<Response, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let connect = async {
            if pooled {
                self.connect(address).await
            } else {
                Ok((Client::connect_with(address, self.tls.clone(), CONNECT_TIMEOUT).await?, false))
            }
        };
        let (mut client, reused) = tokio::time::timeout_at(deadline, connect)
            .await
            .map_err(|_| CallError::Unreachable(format!("cannot connect to {address} within {timeout:?}")))?
            .map_err(|err| CallError::Unreachable(err.to_string()))?;
        client.set_protocol(protocol);
        let lost = |_| CallError::Lost(format!("{address} did not answer within {timeout:?}"));
        // The exchange owns its connection, so that one that outlives the deadline can finish on
        // its own and give the connection back (see `late_answer`).
        let owned = request.clone();
        let mut exchange = Box::pin(async move {
            let response = client.round_trip(&owned).await;
            (client, response)
        });
        let (mut client, answer) = match tokio::time::timeout_at(deadline, &mut exchange).await {
            Ok(done) => done,
            Err(elapsed) => {
                late_answer(self.idle.clone(), address.to_owned(), exchange);
                return Err(lost(elapsed));
            }
        };
        let response = match answer {
            Ok(response) => response,
            Err(stale) if reused => {
                self.forget(address);
                let fresh = async {
                    let mut client = Client::connect_with(address, self.tls.clone(), CONNECT_TIMEOUT).await?;
                    client.set_protocol(protocol);
                    let response = client.round_trip(request).await?;
                    Ok::<_, ClientError>((client, response))
                };
                let (fresh_client, response) = tokio::time::timeout_at(deadline, fresh)
                    .await
                    .map_err(lost)?
                    .map_err(|err| CallError::Lost(format!("{err} (after a reused connection failed: {stale})")))?;
                client = fresh_client;
                response
            }
            Err(err) => return Err(CallError::Lost(err.to_string())),
        };
        self.idle.give_back(address, client);
        Ok(response)
    }

    /// A typed peer RPC whose body and answer have the same shape in every protocol: encodes the
    /// body in this node's protocol, sends it, decodes the answer (in the same protocol).
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: u64,
        address: &str,
        rpc: PeerRpc,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let payload = encode_as(body, self.protocol()).map_err(|err| CallError::Remote(err.to_string()))?.to_vec();
        let answer = self.call_raw(target, address, rpc, payload, timeout).await?;
        decode_body(&answer).map_err(|err| CallError::Remote(format!("bad answer from {address}: {err}")))
    }

    /// A typed peer RPC that v0.1.0 lacks, in this release's protocol whatever the cluster version;
    /// `Ok(None)` when the node runs v0.1.0 (it refused the protocol: that is its answer). While
    /// the cluster runs at version 1 the connection is not pooled (v0.1.0 closes it).
    pub(crate) async fn call_newest<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: u64,
        address: &str,
        rpc: PeerRpc,
        body: &Req,
        timeout: Duration,
    ) -> Result<Option<Resp>, CallError> {
        let payload = encode_as(body, PROTOCOL_VERSION).map_err(|err| CallError::Remote(err.to_string()))?.to_vec();
        let request = Request::Peer(PeerRequest { rpc, payload });
        let pooled = self.protocol() == PROTOCOL_VERSION;
        match self.request_in(address, &request, timeout, pooled, PROTOCOL_VERSION).await? {
            Response::Peer(Ok(bytes)) => {
                self.record_contact(target);
                decode_body(&bytes)
                    .map(Some)
                    .map_err(|err| CallError::Remote(format!("bad answer from {address}: {err}")))
            }
            Response::Peer(Err(message)) => {
                self.note_refusal(target, address, &message);
                Err(CallError::Remote(message))
            }
            refused @ Response::Client(Err(_)) if cluster_api::wire::refused_protocol(PROTOCOL_V0_1, &refused) => {
                Ok(None)
            }
            Response::Client(Err(err)) => Err(CallError::Remote(err.message)),
            Response::Client(_) => Err(CallError::Remote(format!("{address} answered a peer rpc as a client request"))),
        }
    }

    /// A peer RPC with an encoded payload (its version byte chosen by the caller); returns the
    /// encoded answer, whose version byte is checked to be one this release reads.
    pub(crate) async fn call_raw(
        &self,
        target: u64,
        address: &str,
        rpc: PeerRpc,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let response = self.request(address, &Request::Peer(PeerRequest { rpc, payload }), timeout, true).await?;
        self.peer_answer(target, address, response)
    }

    /// The encoded answer of a peer RPC, its version byte checked to be one this release reads.
    fn peer_answer(&self, target: u64, address: &str, response: Response) -> Result<Vec<u8>, CallError> {
        match response {
            Response::Peer(Ok(bytes)) => {
                self.record_contact(target);
                frame_version(&bytes).map_err(|err| CallError::Remote(format!("bad answer from {address}: {err}")))?;
                Ok(bytes)
            }
            Response::Peer(Err(message)) => {
                self.note_refusal(target, address, &message);
                Err(CallError::Remote(message))
            }
            Response::Client(Err(err)) => {
                // A node that cannot decode the whole frame answers as to a client.
                self.note_refusal(target, address, &err.message);
                Err(CallError::Remote(err.message))
            }
            Response::Client(_) => Err(CallError::Remote(format!("{address} answered a peer rpc as a client request"))),
        }
    }
}

/// openraft's network factory: one [`PeerConnection`] per replication target.
#[derive(Clone)]
pub(crate) struct PeerNetwork {
    pub(crate) peers: Arc<Peers>,
}

/// A replication stream's connection to one peer.
pub(crate) struct PeerConnection {
    peers: Arc<Peers>,
    target: u64,
    name: String,
    address: String,
    stats: AppendStats,
    quiet: QuietLearner,
    reachability: Reachability,
}

/// Whether the peer of a replication stream answers, logged when it changes (and every
/// [`Reachability::REMINDER`] while it does not answer) rather than at every attempt, which
/// openraft would do several lines at a time every [`FAST_RETRY`] (the daemon leaves those lines
/// out: clusterd's `logging.rs`).
#[derive(Debug, Default)]
struct Reachability {
    /// When the first failed attempt of the current outage was, and the last report of it.
    down: Option<(Instant, Instant)>,
    /// Failed attempts of the current outage.
    attempts: u64,
}

/// What to log about a peer after an attempt.
#[derive(Debug, PartialEq)]
enum ReachabilityReport {
    /// The first failed attempt after answers (or since this stream began).
    Down,
    /// Still no answer, `attempts` failed in `since`.
    StillDown { since: Duration, attempts: u64 },
    /// An answer after `attempts` failed ones in `since`.
    Back { since: Duration, attempts: u64 },
}

impl Reachability {
    const REMINDER: Duration = Duration::from_secs(60);

    fn failed(&mut self, now: Instant) -> Option<ReachabilityReport> {
        self.attempts += 1;
        match &mut self.down {
            None => {
                self.down = Some((now, now));
                Some(ReachabilityReport::Down)
            }
            Some((first, reported)) if now.saturating_duration_since(*reported) >= Self::REMINDER => {
                *reported = now;
                Some(ReachabilityReport::StillDown {
                    since: now.saturating_duration_since(*first),
                    attempts: self.attempts,
                })
            }
            Some(_) => None,
        }
    }

    fn answered(&mut self, now: Instant) -> Option<ReachabilityReport> {
        let (first, _) = self.down.take()?;
        let attempts = std::mem::take(&mut self.attempts);
        Some(ReachabilityReport::Back { since: now.saturating_duration_since(first), attempts })
    }
}

/// Append requests of one replication stream, logged at debug level every [`AppendStats::PERIOD`]:
/// how many, how many entries each carried, and their round trip (the follower's fsync included).
#[derive(Default)]
struct AppendStats {
    since: Option<Instant>,
    requests: u64,
    entries: u64,
    round_trip: Duration,
    round_trip_max: Duration,
}

impl AppendStats {
    const PERIOD: Duration = Duration::from_secs(5);

    fn record(&mut self, target: u64, entries: usize, sent: Instant) {
        let now = Instant::now();
        let took = now.saturating_duration_since(sent);
        self.requests += 1;
        self.entries += entries as u64;
        self.round_trip += took;
        self.round_trip_max = self.round_trip_max.max(took);
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) >= Self::PERIOD {
            tracing::debug!(
                target_node = target,
                secs = now.duration_since(since).as_secs_f64(),
                requests = self.requests,
                entries_per_request = self.entries as f64 / self.requests.max(1) as f64,
                round_trip_mean_us = self.round_trip.as_micros() as u64 / self.requests.max(1),
                round_trip_max_us = self.round_trip_max.as_micros() as u64,
                "raft append requests"
            );
            *self = AppendStats { since: Some(now), ..AppendStats::default() };
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> PeerConnection {
        PeerConnection {
            peers: self.peers.clone(),
            target,
            name: node.name.clone(),
            address: node.address.clone(),
            stats: AppendStats::default(),
            quiet: QuietLearner::default(),
            reachability: Reachability::default(),
        }
    }
}

/// Heartbeats to a learner that carry nothing new are answered here, at most for
/// [`LEARNER_HEARTBEAT`] after the learner's last answer.
///
/// A learner never votes and is never counted in a quorum, so Raft's heartbeats (every 50 ms, to
/// keep voters from starting elections) do nothing for it unless they carry entries or a new
/// commit index: openraft sends those as soon as they exist, not on the heartbeat timer. At 45
/// learners the leader sent 900 such empty appends a second, most of its idle CPU. A heartbeat
/// is answered here only if the last real append to the learner succeeded, in the same term, and
/// this one has the same previous entry and commit index (so the learner has all of it already);
/// anything else goes out, and a real heartbeat still goes out every [`LEARNER_HEARTBEAT`]. An
/// answer made here never counts as an acknowledgement in the leader clock (learners never do
/// anyway: only voters confirm leadership).
#[derive(Debug, Default)]
struct QuietLearner {
    acked: Option<Acked>,
}

/// What a learner acknowledged last.
#[derive(Debug)]
struct Acked {
    /// The leader's vote the append carried.
    vote: openraft::Vote<u64>,
    /// The last entry the learner has.
    last: Option<openraft::LogId<u64>>,
    /// The commit index it was told.
    committed: Option<openraft::LogId<u64>>,
    /// When it answered.
    at: Instant,
}

impl QuietLearner {
    /// Whether `rpc` to a learner can be answered without sending it.
    fn answers(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        rpc.entries.is_empty()
            && self.acked.as_ref().is_some_and(|acked| {
                acked.vote == rpc.vote
                    && acked.last == rpc.prev_log_id
                    && acked.committed == rpc.leader_commit
                    && acked.at.elapsed() < LEARNER_HEARTBEAT
            })
    }

    /// Records the outcome of an append that was sent.
    fn sent(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        answer: &Result<AppendEntriesResponse<u64>, impl Sized>,
    ) {
        self.acked = match answer {
            Ok(AppendEntriesResponse::Success) => {
                let last = rpc.entries.last().map(|entry| entry.log_id).or(rpc.prev_log_id);
                Some(Acked { vote: rpc.vote, last, committed: rpc.leader_commit, at: Instant::now() })
            }
            _ => None,
        };
    }
}

impl PeerConnection {
    async fn raft_call<Req, Resp, E>(
        &mut self,
        rpc: PeerRpc,
        body: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, NodeInfo, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.raft_call_in(rpc, body, option, self.peers.protocol()).await
    }

    async fn raft_call_in<Req, Resp, E>(
        &mut self,
        rpc: PeerRpc,
        body: &Req,
        option: &RPCOption,
        protocol: u8,
    ) -> Result<Resp, RPCError<u64, NodeInfo, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = encode_as(body, protocol).map_err(|err| {
            RPCError::Network(NetworkError::new(&std::io::Error::other(format!("cannot encode {rpc:?}: {err}"))))
        })?;
        let answer: Result<Result<Resp, RaftError<u64, E>>, CallError> =
            match self.peers.call_raw(self.target, &self.address, rpc, payload.to_vec(), option.hard_ttl()).await {
                Ok(bytes) => decode_body(&bytes)
                    .map_err(|err| CallError::Remote(format!("bad answer from {}: {err}", self.address))),
                Err(err) => Err(err),
            };
        let (peer, address) = (&self.name, &self.address);
        match &answer {
            Err(CallError::Unreachable(error)) => match self.reachability.failed(Instant::now()) {
                Some(ReachabilityReport::Down) => tracing::warn!(
                    %peer,
                    %address,
                    %error,
                    "peer does not answer; trying again every {FAST_RETRY:?} for {:?}, then every {SLOW_RETRY:?}",
                    FAST_RETRY * FAST_RETRIES as u32
                ),
                Some(ReachabilityReport::StillDown { since, attempts }) => {
                    tracing::warn!(%peer, %address, %error, secs = since.as_secs(), attempts, "peer still does not answer")
                }
                _ => {}
            },
            // Reached, but the call was cut or timed out: neither way.
            Err(CallError::Lost(_)) => {}
            Ok(_) | Err(CallError::Remote(_)) => {
                if let Some(ReachabilityReport::Back { since, attempts }) = self.reachability.answered(Instant::now()) {
                    let secs = format!("{:.1}", since.as_secs_f64());
                    tracing::info!(%peer, %address, secs, failed_attempts = attempts, "peer answers again");
                }
            }
        }
        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(CallError::Unreachable(detail)) => {
                Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(detail))))
            }
            Err(CallError::Lost(detail) | CallError::Remote(detail)) => {
                Err(RPCError::Network(NetworkError::new(&std::io::Error::other(detail))))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(unreachable_backoff())
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        let learner = self.peers.is_learner(self.target);
        if learner && self.quiet.answers(&rpc) {
            return Ok(AppendEntriesResponse::Success);
        }
        let sent = Instant::now();
        let term = rpc.vote.leader_id().get_term();
        let leading = rpc.vote.is_committed();
        let entries = rpc.entries.len();
        let result = if self.peers.protocol() == cluster_api::PROTOCOL_V0_1 {
            // At cluster version 1 every entry has a v0.1.0 form (newer commands are refused),
            // except the `ActivateVersion` that ends it, proposed once every member was seen to run
            // a newer release: entries v0.1.0 lacks travel in this release's protocol.
            match append_to_v0_1(&rpc) {
                Ok(old) => self.raft_call(PeerRpc::AppendEntries, &old, &option).await,
                Err(needs) => {
                    tracing::debug!(%needs, peer = %self.address, "entries v0.1.0 cannot read: sent in protocol 4");
                    self.raft_call_in(PeerRpc::AppendEntries, &rpc, &option, cluster_api::PROTOCOL_VERSION).await
                }
            }
        } else {
            self.raft_call(PeerRpc::AppendEntries, &rpc, &option).await
        };
        self.stats.record(self.target, entries, sent);
        if learner {
            self.quiet.sent(&rpc, &result);
        }
        if leading && matches!(result, Ok(ref response) if !matches!(response, AppendEntriesResponse::HigherVote(_))) {
            self.peers.leader_clock.accepted(term, self.target, sent, !learner);
        }
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64, InstallSnapshotError>>> {
        self.raft_call(PeerRpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        self.raft_call(PeerRpc::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use cluster_api::{decode, encode, framed};
    use cluster_tls::{TlsAcceptor, TlsFiles};
    use futures::{SinkExt, StreamExt};
    use tokio::net::TcpListener;

    use super::*;

    /// What a stand-in peer counts: the requests it answered, and its connections open now.
    #[derive(Clone, Default)]
    struct Counters {
        served: Arc<AtomicUsize>,
        open: Arc<AtomicUsize>,
    }

    /// A stand-in peer on `listener`: answers every peer RPC with its payload, counting into
    /// `counters`. Aborting the task closes the listener and every connection it accepted.
    fn echo_peer(listener: TcpListener, acceptor: TlsAcceptor, counters: Counters) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counters) = (acceptor.clone(), counters.clone());
                connections.spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    counters.open.fetch_add(1, Ordering::SeqCst);
                    let mut stream = framed(stream);
                    while let Some(Ok(frame)) = stream.next().await {
                        let Ok(Request::Peer(peer)) = decode::<Request>(&frame) else { break };
                        counters.served.fetch_add(1, Ordering::SeqCst);
                        let answer = encode(&Response::Peer(Ok(peer.payload))).unwrap();
                        if stream.send(answer).await.is_err() {
                            break;
                        }
                    }
                    counters.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        })
    }

    /// A peer's TLS acceptor and listener on loopback, and this node's `Peers` trusting the same CA.
    struct Fixture {
        _dir: tempfile::TempDir,
        acceptor: TlsAcceptor,
        listener: TcpListener,
        address: String,
        peers: Arc<Peers>,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tls_dir = dir.path().join("tls");
        cluster_tls::init_ca(&tls_dir).unwrap();
        let ip = ["127.0.0.1".parse().unwrap()];
        let (cert, key) = cluster_tls::issue_certificate(&tls_dir, "n2", &ip, &[]).unwrap();
        let files = TlsFiles { ca: cluster_tls::ca_paths(&tls_dir).0, cert, key };
        let acceptor = TlsAcceptor::from(cluster_tls::server_config(&files).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let version = SharedVersion::new(cluster_model::ClusterVersion::CURRENT);
        let peers = Peers::new(cluster_tls::client_config(&files).unwrap(), version);
        Fixture { _dir: dir, acceptor, listener, address, peers }
    }

    /// A peer that restarted behind pooled connections (a new process on the same address): the
    /// first call after the restart meets a dead pooled connection, drops the pool and goes through
    /// on a fresh one. Before, each stale connection failed one call, and a renewal or a keep sent
    /// on one could make a live node stop its packages (leader-loss lab test).
    #[tokio::test]
    async fn a_call_after_the_peer_restarted_goes_through_on_a_fresh_connection() {
        let Fixture { _dir, acceptor, listener, address, peers } = fixture().await;
        let counters = Counters::default();
        let first = echo_peer(listener, acceptor.clone(), counters.clone());
        let call = |value: u64| {
            let (peers, address) = (peers.clone(), address.clone());
            async move { peers.call::<u64, u64>(2, &address, PeerRpc::Keep, &value, Duration::from_secs(2)).await }
        };
        // Three calls at once leave three idle connections in the pool.
        let answers = futures::future::join_all((0..3).map(call)).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert_eq!(peers.idle.idle.lock().unwrap()[&address].len(), 3);
        // The peer's process dies (its connections with it) and a new one listens on the address.
        first.abort();
        let _ = first.await;
        let listener = TcpListener::bind(&address).await.unwrap();
        let second = echo_peer(listener, acceptor, counters.clone());
        for value in [7, 8] {
            let answer = call(value).await;
            assert_eq!(answer.as_ref().ok(), Some(&value), "call {value} after the restart: {answer:?}");
        }
        assert_eq!(counters.served.load(Ordering::SeqCst), 5, "each call answered once by a live peer");
        assert_eq!(peers.idle.idle.lock().unwrap()[&address].len(), 1, "the stale connections were dropped");
        second.abort();
    }

    /// Overlapping calls open extra connections; once they have not been used for `POOL_IDLE`,
    /// the next call closes them (the peer sees them end) and keeps only the one it used.
    #[tokio::test]
    async fn connections_unused_for_a_while_are_closed_but_the_last_one_stays() {
        let Fixture { _dir, acceptor, listener, address, peers } = fixture().await;
        let counters = Counters::default();
        let (served, open) = (counters.served.clone(), counters.open.clone());
        let peer = echo_peer(listener, acceptor, counters);
        let call = |value: u64| {
            let (peers, address) = (peers.clone(), address.clone());
            async move { peers.call::<u64, u64>(2, &address, PeerRpc::Keep, &value, Duration::from_secs(2)).await }
        };
        let answers = futures::future::join_all((0..4).map(call)).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert_eq!(peers.idle.idle.lock().unwrap()[&address].len(), 4);
        assert_eq!(open.load(Ordering::SeqCst), 4);
        // A call within `POOL_IDLE` closes nothing.
        assert_eq!(call(5).await.ok(), Some(5));
        assert_eq!(peers.idle.idle.lock().unwrap()[&address].len(), 4);
        // The pool's connections were last used longer ago than `POOL_IDLE`.
        for (_, since) in peers.idle.idle.lock().unwrap().get_mut(&address).unwrap() {
            *since -= POOL_IDLE + Duration::from_secs(1);
        }
        assert_eq!(call(6).await.ok(), Some(6));
        assert_eq!(peers.idle.idle.lock().unwrap()[&address].len(), 1, "only the connection just used stays");
        let deadline = Instant::now() + Duration::from_secs(5);
        while open.load(Ordering::SeqCst) != 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(open.load(Ordering::SeqCst), 1, "the peer saw the three unused connections end");
        assert_eq!(served.load(Ordering::SeqCst), 6);
        peer.abort();
    }

    fn log_id(term: u64, index: u64) -> openraft::LogId<u64> {
        openraft::LogId::new(openraft::CommittedLeaderId::new(term, 1), index)
    }

    fn append(term: u64, prev: u64, entries: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(term, 1),
            prev_log_id: Some(log_id(term, prev)),
            entries: (prev + 1..=prev + entries)
                .map(|index| crate::types::Entry {
                    log_id: log_id(term, index),
                    payload: openraft::EntryPayload::Blank,
                })
                .collect(),
            leader_commit: Some(log_id(term, commit)),
        }
    }

    #[test]
    fn a_peer_that_stops_answering_is_reported_once_then_every_minute_then_when_it_answers() {
        let start = Instant::now();
        let mut peer = Reachability::default();
        assert_eq!(peer.answered(start), None, "a peer that always answered is not reported");
        assert_eq!(peer.failed(start), Some(ReachabilityReport::Down));
        // Retries every 100 ms for a minute: nothing more until the minute is up.
        let mut reports = Vec::new();
        for tenth in 1..=600u32 {
            reports.extend(peer.failed(start + Duration::from_millis(100) * tenth));
        }
        assert_eq!(reports, [ReachabilityReport::StillDown { since: Duration::from_secs(60), attempts: 601 }]);
        assert_eq!(
            peer.answered(start + Duration::from_secs(61)),
            Some(ReachabilityReport::Back { since: Duration::from_secs(61), attempts: 601 })
        );
        assert_eq!(peer.answered(start + Duration::from_secs(62)), None);
        // The next outage is reported afresh.
        assert_eq!(peer.failed(start + Duration::from_secs(70)), Some(ReachabilityReport::Down));
        assert_eq!(
            peer.answered(start + Duration::from_secs(71)),
            Some(ReachabilityReport::Back { since: Duration::from_secs(1), attempts: 1 })
        );
    }

    #[test]
    fn an_unreachable_peer_is_tried_again_soon_for_two_seconds_then_less_often() {
        let retries: Vec<Duration> = unreachable_backoff().take(FAST_RETRIES + 2).collect();
        let fast: Duration = retries[..FAST_RETRIES].iter().sum();
        assert!(retries[..FAST_RETRIES].iter().all(|retry| *retry == FAST_RETRY));
        assert_eq!(fast, Duration::from_secs(2), "covers a daemon restarted by systemd");
        assert_eq!(&retries[FAST_RETRIES..], &[SLOW_RETRY, SLOW_RETRY]);
    }

    #[test]
    fn a_learner_heartbeat_is_answered_here_only_when_it_carries_nothing_new() {
        let mut quiet = QuietLearner::default();
        let ok: Result<AppendEntriesResponse<u64>, ()> = Ok(AppendEntriesResponse::Success);
        assert!(!quiet.answers(&append(2, 5, 0, 5)), "nothing acknowledged yet: sent");
        // The learner acknowledged entries 6..=7 with commit 5.
        quiet.sent(&append(2, 5, 2, 5), &ok);
        assert!(quiet.answers(&append(2, 7, 0, 5)), "a heartbeat with nothing new");
        assert!(!quiet.answers(&append(2, 7, 0, 7)), "a new commit index goes out");
        assert!(!quiet.answers(&append(2, 7, 1, 5)), "entries go out");
        assert!(!quiet.answers(&append(2, 6, 0, 5)), "another previous entry goes out");
        assert!(!quiet.answers(&append(3, 7, 0, 5)), "another leader's heartbeat goes out");
        // A failed or refused append: the next heartbeat goes out.
        quiet.sent(&append(2, 7, 0, 7), &Err::<AppendEntriesResponse<u64>, ()>(()));
        assert!(!quiet.answers(&append(2, 7, 0, 7)));
        quiet.sent(&append(2, 7, 0, 7), &Ok::<_, ()>(AppendEntriesResponse::Conflict));
        assert!(!quiet.answers(&append(2, 7, 0, 7)));
        // After a success, a real heartbeat still goes out once LEARNER_HEARTBEAT passed.
        quiet.sent(&append(2, 7, 0, 7), &ok);
        assert!(quiet.answers(&append(2, 7, 0, 7)));
        if let Some(acked) = quiet.acked.as_mut() {
            acked.at = Instant::now() - LEARNER_HEARTBEAT;
        }
        assert!(!quiet.answers(&append(2, 7, 0, 7)), "the periodic real heartbeat");
    }
}
