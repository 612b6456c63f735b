//! End-to-end tests of the replicated store: real clusterd processes on loopback.

use std::time::{Duration, Instant};

use cluster_api::{ClientError, ClientReply, ClientRequest, ErrorKind, NodeRole};
use cluster_testkit::{call, kv_get, kv_set, local_status, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_then_add_two_serves_writes_and_reads_on_every_node() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 101, 3);
    cluster.form().await;
    for (i, node) in cluster.nodes.iter().enumerate() {
        kv_set(&node.socket, &format!("from/{}", node.name), &i.to_string()).await;
    }
    for node in &cluster.nodes {
        for (i, writer) in cluster.nodes.iter().enumerate() {
            assert_eq!(kv_get(&node.socket, &format!("from/{}", writer.name)).await, Some(i.to_string()));
        }
    }
    let Ok(ClientReply::Status(report)) = call(&cluster.nodes[2].socket, ClientRequest::Status).await else {
        panic!("status failed")
    };
    assert_eq!(report.nodes.len(), 3);
    assert!(report.nodes.iter().all(|n| n.role == NodeRole::Voter));
    assert!(report.quorum);
    assert_eq!(report.leader.as_deref(), Some("n1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_keeps_every_acknowledged_write_and_a_full_restart_keeps_state() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 102, 3);
    cluster.form().await;
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        let socket = &cluster.nodes[i % 3].socket;
        kv_set(socket, &format!("k{i}"), &format!("v{i}")).await;
        acknowledged.push(i);
    }
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let leader_index = cluster.index_of(&leader);
    cluster.kill(leader_index);
    let new_leader = cluster.wait_leader(Duration::from_secs(5)).await;
    assert_ne!(new_leader, leader);
    let survivor = &cluster.nodes[(leader_index + 1) % 3].socket;
    for i in &acknowledged {
        assert_eq!(kv_get(survivor, &format!("k{i}")).await, Some(format!("v{i}")), "lost k{i}");
    }
    kv_set(survivor, "after-failover", "yes").await;

    // Restart every node: the state comes back from the log and snapshots.
    cluster.start(leader_index);
    for index in 0..3 {
        cluster.stop(index);
    }
    cluster.start_all();
    for node in &cluster.nodes {
        cluster_testkit::wait_for_socket(&node.socket).await;
    }
    cluster.wait_leader(Duration::from_secs(10)).await;
    for node in &cluster.nodes {
        assert_eq!(kv_get(&node.socket, "after-failover").await.as_deref(), Some("yes"));
        assert_eq!(kv_get(&node.socket, "k49").await.as_deref(), Some("v49"));
    }
}

/// A leader killed and the election after it (see [`kill_the_leader`]).
struct Election {
    /// Index of the killed leader.
    index: usize,
    old: String,
    new: String,
    /// From the kill to a new leader being seen.
    took: Duration,
}

/// Kills the current leader and waits (at most `limit`) for the next one.
async fn kill_the_leader(cluster: &mut TestCluster, limit: Duration) -> Election {
    let old = cluster.wait_leader(Duration::from_secs(5)).await;
    let index = cluster.index_of(&old);
    cluster.kill(index);
    let started = Instant::now();
    let new = cluster.wait_leader(limit).await;
    Election { index, old, new, took: started.elapsed() }
}

/// Starts node `index` again and waits (at most `limit`) until it knows the leader.
async fn restart_until_it_follows(cluster: &mut TestCluster, index: usize, limit: Duration) {
    cluster.start(index);
    cluster_testkit::wait_for_socket(&cluster.nodes[index].socket).await;
    let deadline = Instant::now() + limit;
    while local_status(&cluster.nodes[index].socket).await.map(|r| r.leader.is_some()) != Ok(true) {
        assert!(Instant::now() < deadline, "restarted node never found the leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node file's `[raft]` timings are the ones used: with an election timeout of 600 ms the
/// survivors of a killed leader elect a new one no sooner than 500 ms after the kill (they last heard
/// it at most one 100 ms heartbeat before); at the default (150 ms) they elect within about 300 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_files_raft_timings_set_the_election_timeout() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 109, 3);
    for index in 0..3 {
        cluster.configure(index, "raft = { heartbeat = \"100ms\", election_timeout = \"600ms\" }");
    }
    cluster.form().await;
    for trial in 0..2 {
        let Election { index, old, new, took } = kill_the_leader(&mut cluster, Duration::from_secs(10)).await;
        assert_ne!(new, old, "trial {trial}");
        assert!(took >= Duration::from_millis(500), "trial {trial}: a new leader after {took:?}, before the timeout");
        restart_until_it_follows(&mut cluster, index, Duration::from_secs(10)).await;
    }
}

/// openraft 0.9 draws one election timeout per process, so two survivors can split their votes
/// forever; our driver redraws it every round. Two survivors must elect a leader every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_survivors_elect_a_leader_every_time() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 103, 3);
    cluster.form().await;
    let mut elections = Vec::new();
    for trial in 0..8 {
        let Election { index, old, new, took } = kill_the_leader(&mut cluster, Duration::from_secs(5)).await;
        elections.push(took);
        // Regression: when openraft's follower lease outlived our election timeout, every vote
        // was refused and the survivors re-campaigned for up to 12 s (term 1 → 20).
        assert!(took < Duration::from_secs(3), "trial {trial}: election storm, {took:?}");
        assert_ne!(new, old, "trial {trial}");
        kv_set(&cluster.nodes[cluster.index_of(&new)].socket, "trial", &trial.to_string()).await;
        // Let the restarted node catch up before the next kill.
        restart_until_it_follows(&mut cluster, index, Duration::from_secs(5)).await;
    }
    eprintln!("elections after killing the leader: {elections:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_added_after_compaction_catches_up_by_snapshot() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 104, 3);
    cluster.start(0);
    cluster.start(1);
    cluster_testkit::wait_for_socket(&cluster.nodes[0].socket).await;
    cluster_testkit::wait_for_socket(&cluster.nodes[1].socket).await;
    let first = cluster.nodes[0].socket.clone();
    call(&first, ClientRequest::ClusterInit).await.unwrap();
    let addresses: Vec<String> = cluster.nodes.iter().map(|n| n.address.clone()).collect();
    let add = |n: usize, learner: bool| ClientRequest::NodeAdd {
        name: format!("n{n}"),
        address: addresses[n - 1].clone(),
        learner,
        witness: false,
    };
    call(&first, add(2, false)).await.unwrap();
    call(&first, ClientRequest::SettingsSet { name: "snapshot_period".into(), value: "20".into() }).await.unwrap();
    for i in 0..300 {
        kv_set(&first, &format!("k{i}"), &format!("v{i}")).await;
    }
    // Wait for a snapshot that covers more than the retained tail (100 entries) of the log.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = local_status(&first).await.unwrap();
        if report.snapshot_index.unwrap_or(0) > 150 {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot: {report:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.start(2);
    cluster_testkit::wait_for_socket(&cluster.nodes[2].socket).await;
    call(&first, add(3, true)).await.unwrap();
    let learner = cluster.nodes[2].socket.clone();
    kv_set(&first, "last", "x").await;
    // Wait until the learner's own state machine has applied everything the leader has.
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader_applied = local_status(&first).await.unwrap().applied_index;
    let report = loop {
        let report = local_status(&learner).await.unwrap();
        if report.applied_index >= leader_applied {
            break report;
        }
        assert!(Instant::now() < deadline, "learner never caught up: {report:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Entries up to the snapshot were purged from the leader's log: only a snapshot can have
    // brought them, and the learner's own snapshot index says it installed one.
    assert!(report.snapshot_index.unwrap_or(0) > 100, "the learner did not install a snapshot: {report:?}");
    let me = report.nodes.iter().find(|n| n.name == "n3").unwrap();
    assert_eq!(me.role, NodeRole::Learner);
    assert_eq!(kv_get(&learner, "k0").await.as_deref(), Some("v0"));
    // A learner's empty heartbeats are answered by the leader itself for up to a second
    // (network.rs, `QuietLearner`): new entries and commit indexes still reach it at once.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        kv_set(&first, &format!("quiet{i}"), "x").await;
        let written = Instant::now();
        let leader_applied = local_status(&first).await.unwrap().applied_index;
        loop {
            let report = local_status(&learner).await.unwrap();
            if report.applied_index >= leader_applied {
                break;
            }
            assert!(written.elapsed() < Duration::from_millis(400), "write {i} not applied on the learner: {report:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Promote the learner to voter.
    call(&first, ClientRequest::NodePromote { name: "n3".into() }).await.unwrap();
    let Ok(ClientReply::Status(report)) = call(&first, ClientRequest::Status).await else { panic!() };
    assert!(report.nodes.iter().all(|n| n.role == NodeRole::Voter), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_a_voter_then_the_leader_but_never_the_last_voter() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 105, 3);
    cluster.form().await;
    let first = cluster.nodes[0].socket.clone();
    kv_set(&first, "before", "1").await;
    call(&first, ClientRequest::NodeRemove { name: "n3".into() }).await.unwrap();
    let Ok(ClientReply::Status(report)) = call(&first, ClientRequest::Status).await else { panic!() };
    assert_eq!(report.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["n1", "n2"]);

    // n1 is the leader: removing it hands leadership to n2 first.
    assert_eq!(cluster.wait_leader(Duration::from_secs(5)).await, "n1");
    call(&first, ClientRequest::NodeRemove { name: "n1".into() }).await.unwrap();
    let second = cluster.nodes[1].socket.clone();
    assert_eq!(cluster.wait_leader(Duration::from_secs(5)).await, "n2");
    let Ok(ClientReply::Status(report)) = call(&second, ClientRequest::Status).await else { panic!() };
    assert_eq!(report.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["n2"]);
    assert_eq!(kv_get(&second, "before").await.as_deref(), Some("1"));
    kv_set(&second, "after", "2").await;

    let err = call(&second, ClientRequest::NodeRemove { name: "n2".into() }).await.unwrap_err();
    let ClientError::Api(err) = err else { panic!("{err}") };
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert!(err.message.contains("refusing to remove node `n2`: it is the last voter"), "{}", err.message);
    let err = call(&second, ClientRequest::NodeRemove { name: "n9".into() }).await.unwrap_err();
    assert!(err.to_string().contains("node `n9` is not a member"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_named_node() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 106, 3);
    cluster.form().await;
    let first = cluster.nodes[0].socket.clone();
    for (round, target) in ["n2", "n3", "n1", "n3", "n2"].iter().enumerate() {
        let started = Instant::now();
        call(&first, ClientRequest::TransferLeader { name: (*target).into() })
            .await
            .unwrap_or_else(|err| panic!("round {round}: transfer to {target}: {err}\n{}", cluster.logs()));
        eprintln!("transfer to {target} took {:?}", started.elapsed());
        assert_eq!(cluster.wait_leader(Duration::from_secs(5)).await, *target);
        kv_set(&first, "round", &round.to_string()).await;
    }
    let err = call(&first, ClientRequest::TransferLeader { name: "n7".into() }).await.unwrap_err();
    assert!(err.to_string().contains("node `n7` is not a member"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_malformed_node_adds_are_refused_with_the_name() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 107, 2);
    cluster.form().await;
    let first = cluster.nodes[0].socket.clone();
    let add = |name: &str, address: &str| ClientRequest::NodeAdd {
        name: name.into(),
        address: address.into(),
        learner: false,
        witness: false,
    };
    let err = call(&first, add("n2", "127.0.107.99:7400")).await.unwrap_err().to_string();
    assert!(err.contains("node `n2` already exists"), "{err}");
    let err = call(&first, add("n5", "127.0.107.12:7400")).await.unwrap_err().to_string();
    assert!(err.contains("address 127.0.107.12:7400 is already used by node `n2`"), "{err}");
    let err = call(&first, add("n5", "nowhere")).await.unwrap_err().to_string();
    assert!(err.contains("invalid node address `nowhere`: expected HOST:PORT"), "{err}");
    let err = call(&first, add("bad name", "127.0.107.50:7400")).await.unwrap_err().to_string();
    assert!(err.contains("invalid node name `bad name`"), "{err}");
    let err = call(&first, ClientRequest::ClusterInit).await.unwrap_err().to_string();
    assert!(err.contains("already part of a cluster"), "{err}");
    // Nothing was lost on the way.
    kv_set(&first, "still", "fine").await;
}

/// `pkg apply` of many packages writes them a few to a Raft entry (one commit each, not one per
/// package), in start order: a dependency listed after its dependent in the request is applied
/// first, in the same entry or an earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_many_packages_shares_raft_entries_and_keeps_the_start_order() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 108, 3);
    cluster.form().await;
    let n1 = cluster.nodes[0].socket.clone();
    let package = |name: &str, depends: &str| {
        let text = format!(
            "name = \"{name}\"\nnodes = [\"n1\", \"n2\"]\nauto_run = false\n{depends}[[resource]]\nname = \"main\"\n\
             type = \"process\"\ncommand = [\"/bin/sleep\", \"1000\"]\n"
        );
        cluster_package::parse_package(&format!("{name}.toml"), &text).unwrap()
    };
    let mut packages = vec![package("app", "depends = [{ package = \"db\", where = \"any-node\" }]\n")];
    packages.extend((0..39).map(|i| package(&format!("p{i:02}"), "")));
    packages.push(package("db", ""));
    let before = local_status(&n1).await.unwrap().last_log_index.unwrap_or(0);
    let reply = call(&n1, ClientRequest::PkgApply { packages }).await.unwrap();
    let ClientReply::Done { message } = reply else { panic!("{reply:?}") };
    assert_eq!(message.lines().filter(|line| line.ends_with(": applied")).count(), 41, "{message}");
    let at = |name: &str| message.lines().position(|line| line == format!("package {name}: applied"));
    assert!(at("db") < at("app"), "the dependency first: {message}");
    let after = local_status(&n1).await.unwrap().last_log_index.unwrap_or(0);
    assert!(
        after - before <= 8,
        "41 packages took {} entries (16 to an entry: 3, plus any other writes)",
        after - before
    );
    let Ok(ClientReply::PackageStatus { packages, .. }) = call(&n1, ClientRequest::PkgStatus { name: None }).await
    else {
        panic!("pkg status")
    };
    assert_eq!(packages.len(), 41);
}

/// A request of this release sent to a node before it is added (or before the leader's first
/// append reaches it) waits for the leader, as every request does, instead of being refused at the
/// oldest cluster version, which is all such a node has seen (found by CI: `clusterctl` on a node
/// a moment after `Lab::up`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_request_on_a_node_not_yet_added_waits_for_the_leader_instead_of_a_version_refusal() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 110, 3);
    // n4 is never added: it answers that it found no leader, not that a cluster refused.
    let outsider = cluster.define_node(110);
    cluster.start_all();
    for node in &cluster.nodes {
        cluster_testkit::wait_for_socket(&node.socket).await;
    }
    let socket = cluster.nodes[outsider].socket.clone();
    let lone = tokio::spawn(async move { call(&socket, ClientRequest::AlertList).await });
    call(&cluster.nodes[0].socket, ClientRequest::ClusterInit).await.expect("cluster init");
    let add = |index: usize| ClientRequest::NodeAdd {
        name: cluster.nodes[index].name.clone(),
        address: cluster.nodes[index].address.clone(),
        learner: false,
        witness: false,
    };
    call(&cluster.nodes[0].socket, add(1)).await.expect("add n2");
    let socket = cluster.nodes[2].socket.clone();
    let early = tokio::spawn(async move {
        let sent = Instant::now();
        (call(&socket, ClientRequest::AlertList).await, sent.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!early.is_finished(), "n3 answered before it was added: {:?}", early.await);
    call(&cluster.nodes[0].socket, add(2)).await.expect("add n3");
    let (answer, waited) = early.await.unwrap();
    assert!(
        matches!(answer, Ok(ClientReply::Alerts { .. })),
        "alert list on n3 sent before it was added: {answer:?}\n{}",
        cluster.logs()
    );
    assert!(waited < Duration::from_secs(5), "answered only after {waited:?}");
    match lone.await.unwrap() {
        Err(ClientError::Api(err)) => {
            assert_eq!(err.kind, ErrorKind::NoLeader, "{err}");
            assert!(err.message.starts_with("no leader reachable from node n4"), "{err}");
        }
        other => panic!("alert list on n4, never added: {other:?}"),
    }
}
