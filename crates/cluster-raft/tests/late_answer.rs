//! A replication stream keeps its connection when a peer answers after openraft's deadline (one
//! heartbeat): the late answer completes, no new TLS connection is opened, and replication goes
//! on. A peer that does not answer within the late-answer limit costs one new connection, and
//! replication recovers on it. The streams openraft rebuilds at a membership change go on with
//! the connections of the old ones.
//!
//! Two real nodes over TCP + mutual TLS on 127.0.0.1; the test serves their peer RPCs itself so
//! that it can count n1's connections to n2 and hold n2's answers to appends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_api::{decode, encode, framed, PeerRpc, Request, Response};
use cluster_model::Command;
use cluster_raft::{ConsensusNode, NodeOptions, Timing};
use cluster_tls::{TlsAcceptor, TlsFiles};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;

/// What n2's listener saw and how it answers appends.
#[derive(Default)]
struct Listener {
    /// Connections on which at least one AppendEntries arrived (n1's replication stream to n2).
    append_connections: AtomicUsize,
    /// Appends still to be answered late.
    slow_appends: AtomicUsize,
    /// How long a slow append's answer waits, ms.
    slow_ms: AtomicUsize,
    /// Late answers written back to the connection (the connection was still open).
    late_answers_sent: AtomicUsize,
}

/// Serves the peer RPCs of `node` on `listener` (as clusterd's server does, without the engine's
/// RPCs), holding answers to appends as `stats` says.
fn serve(listener: TcpListener, acceptor: TlsAcceptor, node: Arc<ConsensusNode>, stats: Arc<Listener>) {
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            tcp.set_nodelay(true).ok();
            let (acceptor, node, stats) = (acceptor.clone(), node.clone(), stats.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let mut stream = framed(stream);
                let mut counted = false;
                while let Some(Ok(frame)) = stream.next().await {
                    let Ok(Request::Peer(peer)) = decode::<Request>(&frame) else { return };
                    let mut late = false;
                    if peer.rpc == PeerRpc::AppendEntries {
                        if !counted {
                            counted = true;
                            stats.append_connections.fetch_add(1, Ordering::SeqCst);
                        }
                        late = stats
                            .slow_appends
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
                            .is_ok();
                    }
                    let response = Response::Peer(node.handle_peer(peer).await);
                    if late {
                        tokio::time::sleep(Duration::from_millis(stats.slow_ms.load(Ordering::SeqCst) as u64)).await;
                    }
                    let bytes = encode(&response).expect("encode a response");
                    if stream.send(bytes).await.is_err() {
                        return;
                    }
                    if late {
                        stats.late_answers_sent.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
}

struct Pair {
    dir: tempfile::TempDir,
    n1: Arc<ConsensusNode>,
    n2: Arc<ConsensusNode>,
    n2_listener: Arc<Listener>,
}

async fn start_node(
    dir: &std::path::Path,
    tls_dir: &std::path::Path,
    name: &str,
) -> (Arc<ConsensusNode>, TlsAcceptor, TcpListener) {
    let (cert, key) = cluster_tls::issue_certificate(tls_dir, name, &["127.0.0.1".parse().unwrap()], &[]).unwrap();
    let files = TlsFiles { ca: cluster_tls::ca_paths(tls_dir).0, cert, key };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let node = ConsensusNode::start(NodeOptions {
        name: name.into(),
        address,
        data_dir: dir.join(name),
        tls: cluster_tls::client_config(&files).unwrap(),
        timing: Timing::default(),
    })
    .await
    .unwrap();
    (node, TlsAcceptor::from(cluster_tls::server_config(&files).unwrap()), listener)
}

/// n1 (the only voter, leader) replicating to n2 (a learner), both caught up.
async fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    cluster_tls::init_ca(&tls_dir).unwrap();
    let (n1, acceptor1, listener1) = start_node(dir.path(), &tls_dir, "n1").await;
    let (n2, acceptor2, listener2) = start_node(dir.path(), &tls_dir, "n2").await;
    let n2_address = listener2.local_addr().unwrap().to_string();
    serve(listener1, acceptor1, n1.clone(), Arc::new(Listener::default()));
    let n2_listener = Arc::new(Listener::default());
    serve(listener2, acceptor2, n2.clone(), n2_listener.clone());
    n1.initialize().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while n1.leadership().is_none() {
        assert!(Instant::now() < deadline, "n1 did not become leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    n1.add_node("n2", &n2_address, true).await.unwrap();
    write(&n1, "warm").await;
    caught_up(&n1, &n2, Duration::from_secs(10)).await;
    Pair { dir, n1, n2, n2_listener }
}

async fn write(node: &ConsensusNode, key: &str) {
    node.write(Command::KvSet { key: key.into(), value: "v".into() }).await.unwrap();
}

/// Waits until n2 has applied everything n1 has written.
async fn caught_up(n1: &ConsensusNode, n2: &ConsensusNode, limit: Duration) {
    let target = n1.last_log_index();
    let deadline = Instant::now() + limit;
    while n2.applied_index() < target {
        assert!(
            Instant::now() < deadline,
            "n2 applied {} of n1's {target} entries within {limit:?}",
            n2.applied_index()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_after_the_heartbeat_deadline_keep_the_replication_connection() {
    let pair = pair().await;
    let stats = &pair.n2_listener;
    let before = stats.append_connections.load(Ordering::SeqCst);
    assert_eq!(before, 1, "n1 replicates to n2 on one connection");

    // Three answers 300 ms late: six heartbeats each (openraft gives an append 50 ms).
    stats.slow_ms.store(300, Ordering::SeqCst);
    stats.slow_appends.store(3, Ordering::SeqCst);
    for index in 0..5 {
        write(&pair.n1, &format!("during-{index}")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for("three late answers sent on the open connection", Duration::from_secs(10), || {
        stats.late_answers_sent.load(Ordering::SeqCst) == 3
    })
    .await;
    write(&pair.n1, "after").await;
    caught_up(&pair.n1, &pair.n2, Duration::from_secs(5)).await;
    assert_eq!(
        stats.append_connections.load(Ordering::SeqCst),
        before,
        "late answers made n1 open another replication connection to n2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_silent_beyond_the_late_answer_limit_costs_one_new_connection_and_replication_recovers() {
    let pair = pair().await;
    let stats = &pair.n2_listener;
    let before = stats.append_connections.load(Ordering::SeqCst);

    // One answer held for 3 s, beyond the 2 s a late exchange may run: n1 gives the connection up.
    stats.slow_ms.store(3_000, Ordering::SeqCst);
    stats.slow_appends.store(1, Ordering::SeqCst);
    write(&pair.n1, "during").await;
    wait_for("n1 opening another replication connection to n2", Duration::from_secs(10), || {
        stats.append_connections.load(Ordering::SeqCst) > before
    })
    .await;
    write(&pair.n1, "after").await;
    caught_up(&pair.n1, &pair.n2, Duration::from_secs(5)).await;
    assert_eq!(stats.append_connections.load(Ordering::SeqCst), before + 1, "one new connection, not a storm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_keeps_the_replication_connections() {
    let pair = pair().await;
    let stats = &pair.n2_listener;
    let before = stats.append_connections.load(Ordering::SeqCst);
    let tls_dir = pair.dir.path().join("tls");
    // Each learner added rebuilds every replication stream of n1 (openraft 0.9).
    let mut others = Vec::new();
    for name in ["n3", "n4", "n5"] {
        let (node, acceptor, listener) = start_node(pair.dir.path(), &tls_dir, name).await;
        let address = listener.local_addr().unwrap().to_string();
        serve(listener, acceptor, node.clone(), Arc::new(Listener::default()));
        pair.n1.add_node(name, &address, true).await.unwrap();
        others.push(node);
    }
    write(&pair.n1, "after").await;
    caught_up(&pair.n1, &pair.n2, Duration::from_secs(5)).await;
    for node in &others {
        caught_up(&pair.n1, node, Duration::from_secs(5)).await;
    }
    assert_eq!(
        stats.append_connections.load(Ordering::SeqCst),
        before,
        "n1 opened another replication connection to n2 when its streams were rebuilt"
    );
}
