//! Peer transport: Raft RPCs and our own election RPCs over TCP with mutual TLS.
//!
//! Each replication stream keeps one connection to its target and reconnects after a failure.
//! Short calls (pre-vote, hold, campaign, forwarded client requests) borrow a connection from a
//! small per-address pool. Every successful exchange records the time of last contact, which
//! `status` shows.
//!
//! A replication stream's exchange runs in its own task: when its caller stops waiting (openraft
//! gives an append one heartbeat, 50 ms), the exchange still completes, up to
//! [`LATE_ANSWER_LIMIT`], and the stream keeps its connection; the stream's next call waits for it
//! (within its own deadline) rather than opening another. Tearing the connection down at the
//! deadline instead meant a TLS handshake on both sides for the next heartbeat, which on a loaded
//! host misses the 50 ms in turn. The price: a heartbeat waits behind a late answer on the same
//! connection (docs/benchmarks-scale.md, "head-of-line blocking").
//!
//! The stream's connection belongs to [`Peers`], by target and address, not to the stream:
//! openraft 0.9 rebuilds every replication stream at each membership change, and the new stream
//! goes on with the old one's connection (joining 45 learners one by one otherwise cost about
//! 1,000 TLS handshakes on the leader). Only appends use it (openraft's leadership confirmations
//! are appends too, sent on a client of their own each time); snapshot chunks and votes borrow
//! from the pool as before, so neither waits behind the other. A connection to a node that left
//! stays idle until the daemon restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_api::{decode, encode, Client, ClientError, PeerRequest, PeerRpc, Request, Response};
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

use crate::leader_clock::LeaderClock;
use crate::types::TypeConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const POOL_PER_ADDRESS: usize = 8;
/// How long a replication stream's exchange whose caller gave up may still run, so that the
/// stream keeps its connection (see the module's documentation).
const LATE_ANSWER_LIMIT: Duration = Duration::from_secs(2);

/// Connections to peers and when each peer last answered.
pub(crate) struct Peers {
    tls: Arc<ClientConfig>,
    /// Which voters accepted this node's appends as leader, by send time.
    pub(crate) leader_clock: LeaderClock,
    idle: Mutex<HashMap<String, Vec<Client>>>,
    /// The connection of the replication stream to each target (see the module's documentation).
    streams: Mutex<HashMap<(u64, String), OwnConnection>>,
    contact: Mutex<HashMap<u64, Instant>>,
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
    pub(crate) fn new(tls: Arc<ClientConfig>) -> Arc<Peers> {
        Arc::new(Peers {
            tls,
            leader_clock: LeaderClock::default(),
            idle: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            contact: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn record_contact(&self, node: u64) {
        self.contact.lock().expect("contact lock").insert(node, Instant::now());
    }

    pub(crate) fn last_contact(&self, node: u64) -> Option<Duration> {
        self.contact.lock().expect("contact lock").get(&node).map(Instant::elapsed)
    }

    /// A connection to `address`: an idle one from the pool (`true`: reused), else a new one.
    async fn connect(&self, address: &str) -> Result<(Client, bool), ClientError> {
        let pooled = self.idle.lock().expect("pool lock").get_mut(address).and_then(Vec::pop);
        match pooled {
            Some(client) => Ok((client, true)),
            None => Ok((Client::connect_with(address, self.tls.clone(), CONNECT_TIMEOUT).await?, false)),
        }
    }

    fn give_back(&self, address: &str, client: Client) {
        let mut idle = self.idle.lock().expect("pool lock");
        let slot = idle.entry(address.to_owned()).or_default();
        if slot.len() < POOL_PER_ADDRESS {
            slot.push(client);
        }
    }

    /// Drops the idle connections to `address`: one of them failed, so the peer behind them has
    /// probably restarted (or lost its link), and every other one would fail the same way.
    fn forget(&self, address: &str) {
        self.idle.lock().expect("pool lock").remove(address);
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
        let lost = |_| CallError::Lost(format!("{address} did not answer within {timeout:?}"));
        let response = match tokio::time::timeout_at(deadline, client.round_trip(request)).await.map_err(lost)? {
            Ok(response) => response,
            Err(stale) if reused => {
                self.forget(address);
                let fresh = async {
                    let mut client = Client::connect_with(address, self.tls.clone(), CONNECT_TIMEOUT).await?;
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
        self.give_back(address, client);
        Ok(response)
    }

    /// A typed peer RPC: encodes the body, sends it, decodes the answer.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: u64,
        address: &str,
        rpc: PeerRpc,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let payload = encode(body).map_err(|err| CallError::Remote(err.to_string()))?.to_vec();
        match self.request(address, &Request::Peer(PeerRequest { rpc, payload }), timeout, true).await? {
            Response::Peer(Ok(bytes)) => {
                self.record_contact(target);
                decode(&bytes).map_err(|err| CallError::Remote(format!("bad answer from {address}: {err}")))
            }
            Response::Peer(Err(message)) => Err(CallError::Remote(message)),
            Response::Client(_) => Err(CallError::Remote(format!("{address} answered a peer rpc as a client request"))),
        }
    }
}

/// The replication connection to one target: `None` before the first exchange and after a
/// failure. An exchange holds the lock from sending to its answer, so a late one delays the next
/// (also the first exchange of the stream that replaced the one that sent it).
type OwnConnection = Arc<tokio::sync::Mutex<Option<Client>>>;

impl Peers {
    /// The replication connection to `target` at `address`, shared by the streams openraft builds
    /// for it one after the other.
    fn stream_connection(&self, target: u64, address: &str) -> OwnConnection {
        let mut streams = self.streams.lock().expect("streams lock");
        streams.entry((target, address.to_owned())).or_default().clone()
    }

    /// A typed peer RPC on the stream's own connection (see the module's documentation). A call
    /// that finds the connection still busy with a late answer waits for it until `timeout`; a call
    /// whose caller is gone by the time the connection is free is not sent.
    async fn call_on<Req: Serialize, Resp: DeserializeOwned>(
        self: &Arc<Self>,
        connection: &OwnConnection,
        target: u64,
        address: &str,
        rpc: PeerRpc,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let payload = encode(body).map_err(|err| CallError::Remote(err.to_string()))?.to_vec();
        let request = Request::Peer(PeerRequest { rpc, payload });
        let deadline = tokio::time::Instant::now() + timeout;
        let limit = deadline.max(tokio::time::Instant::now() + LATE_ANSWER_LIMIT);
        // Whether the exchange was connecting when the caller stopped waiting (then nothing was sent).
        let connecting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let exchange = tokio::spawn({
            let (tls, connection, owned_address, connecting) =
                (self.tls.clone(), connection.clone(), address.to_owned(), connecting.clone());
            async move {
                let address = owned_address;
                let mut slot = tokio::time::timeout_at(deadline, connection.lock_owned())
                    .await
                    .map_err(|_| CallError::Lost(format!("{address}: the previous call has not returned")))?;
                if slot.is_none() {
                    connecting.store(true, std::sync::atomic::Ordering::Release);
                    let client = tokio::time::timeout_at(limit, Client::connect_with(&address, tls, CONNECT_TIMEOUT))
                        .await
                        .map_err(|_| CallError::Unreachable(format!("cannot connect to {address}")))?
                        .map_err(|err| CallError::Unreachable(err.to_string()))?;
                    *slot = Some(client);
                }
                if tokio::time::Instant::now() >= deadline {
                    // The caller is gone: the connection is kept for the next call, nothing is sent.
                    return Err(CallError::Unreachable(format!("{address}: connected too late to send")));
                }
                connecting.store(false, std::sync::atomic::Ordering::Release);
                let client = slot.as_mut().expect("connected above");
                match tokio::time::timeout_at(limit, client.round_trip(&request)).await {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(err)) => {
                        *slot = None;
                        Err(CallError::Lost(err.to_string()))
                    }
                    Err(_) => {
                        *slot = None;
                        Err(CallError::Lost(format!("{address} did not answer within {LATE_ANSWER_LIMIT:?}")))
                    }
                }
            }
        });
        let response = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(result)) => result?,
            Ok(Err(join)) => return Err(CallError::Lost(format!("call to {address} failed: {join}"))),
            Err(_) if connecting.load(std::sync::atomic::Ordering::Acquire) => {
                return Err(CallError::Unreachable(format!("cannot connect to {address} within {timeout:?}")))
            }
            Err(_) => return Err(CallError::Lost(format!("{address} did not answer within {timeout:?}"))),
        };
        match response {
            Response::Peer(Ok(bytes)) => {
                self.record_contact(target);
                decode(&bytes).map_err(|err| CallError::Remote(format!("bad answer from {address}: {err}")))
            }
            Response::Peer(Err(message)) => Err(CallError::Remote(message)),
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
    address: String,
    stats: AppendStats,
    connection: OwnConnection,
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
            address: node.address.clone(),
            stats: AppendStats::default(),
            connection: self.peers.stream_connection(target, &node.address),
        }
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
        // Appends use the target's connection, anything else the pool (see the module's documentation).
        let answer: Result<Result<Resp, RaftError<u64, E>>, CallError> = if rpc == PeerRpc::AppendEntries {
            self.peers.call_on(&self.connection, self.target, &self.address, rpc, body, option.hard_ttl()).await
        } else {
            self.peers.call(self.target, &self.address, rpc, body, option.hard_ttl()).await
        };
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
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        let sent = Instant::now();
        let term = rpc.vote.leader_id().get_term();
        let leading = rpc.vote.is_committed();
        let entries = rpc.entries.len();
        let result = self.raft_call(PeerRpc::AppendEntries, &rpc, &option).await;
        self.stats.record(self.target, entries, sent);
        if leading && matches!(result, Ok(ref response) if !matches!(response, AppendEntriesResponse::HigherVote(_))) {
            self.peers.leader_clock.accepted(term, self.target, sent);
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

    use cluster_api::framed;
    use cluster_tls::{TlsAcceptor, TlsFiles};
    use futures::{SinkExt, StreamExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A stand-in peer on `address`: answers every peer RPC with its payload; `serving` counts the
    /// requests answered. Aborting the task closes the listener and every connection it accepted.
    fn echo_peer(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        serving: Arc<AtomicUsize>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, serving) = (acceptor.clone(), serving.clone());
                connections.spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let mut stream = framed(stream);
                    while let Some(Ok(frame)) = stream.next().await {
                        let Ok(Request::Peer(peer)) = decode::<Request>(&frame) else { return };
                        serving.fetch_add(1, Ordering::SeqCst);
                        let answer = encode(&Response::Peer(Ok(peer.payload))).unwrap();
                        if stream.send(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    }

    /// A peer that restarted behind pooled connections (a new process on the same address): the
    /// first call after the restart meets a dead pooled connection, drops the pool and goes through
    /// on a fresh one. Before, each stale connection failed one call, and a renewal or a keep sent
    /// on one could make a live node stop its packages (leader-loss lab test).
    #[tokio::test]
    async fn a_call_after_the_peer_restarted_goes_through_on_a_fresh_connection() {
        let dir = tempfile::tempdir().unwrap();
        let tls_dir = dir.path().join("tls");
        cluster_tls::init_ca(&tls_dir).unwrap();
        let ip = ["127.0.0.1".parse().unwrap()];
        let (cert, key) = cluster_tls::issue_certificate(&tls_dir, "n2", &ip, &[]).unwrap();
        let files = TlsFiles { ca: cluster_tls::ca_paths(&tls_dir).0, cert, key };
        let acceptor = TlsAcceptor::from(cluster_tls::server_config(&files).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let served = Arc::new(AtomicUsize::new(0));
        let first = echo_peer(listener, acceptor.clone(), served.clone());
        let peers = Peers::new(cluster_tls::client_config(&files).unwrap());
        let call = |value: u64| {
            let (peers, address) = (peers.clone(), address.clone());
            async move { peers.call::<u64, u64>(2, &address, PeerRpc::Keep, &value, Duration::from_secs(2)).await }
        };
        // Three calls at once leave three idle connections in the pool.
        let answers = futures::future::join_all((0..3).map(call)).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert_eq!(peers.idle.lock().unwrap()[&address].len(), 3);
        // The peer's process dies (its connections with it) and a new one listens on the address.
        first.abort();
        let _ = first.await;
        let listener = TcpListener::bind(&address).await.unwrap();
        let second = echo_peer(listener, acceptor, served.clone());
        for value in [7, 8] {
            let answer = call(value).await;
            assert_eq!(answer.as_ref().ok(), Some(&value), "call {value} after the restart: {answer:?}");
        }
        assert_eq!(served.load(Ordering::SeqCst), 5, "each call answered once by a live peer");
        assert_eq!(peers.idle.lock().unwrap()[&address].len(), 1, "the stale connections were dropped");
        second.abort();
    }
}
