//! Concurrent writes on one node: they share Raft entries, and every caller still gets the
//! outcome of its own command, applied in order.

use std::sync::Arc;
use std::time::Duration;

use cluster_model::{ClusterVersion, Command, CommandOutcome};
use cluster_raft::{ConsensusNode, NodeOptions, Timing};
use cluster_tls::TlsFiles;

/// A new one-node cluster at this release's cluster version (as `clusterctl cluster init` makes it).
async fn single_node(dir: &std::path::Path) -> Arc<ConsensusNode> {
    let node = single_node_at_v0_1(dir).await;
    let activate = Command::ActivateVersion { version: ClusterVersion::CURRENT, at_ms: 0 };
    assert_eq!(node.write(activate).await.unwrap(), CommandOutcome::Applied);
    node
}

/// A new one-node cluster left at cluster version 1 (as while v0.1.0 members may exist).
async fn single_node_at_v0_1(dir: &std::path::Path) -> Arc<ConsensusNode> {
    let tls_dir = dir.join("tls");
    cluster_tls::init_ca(&tls_dir).unwrap();
    let (cert, key) = cluster_tls::issue_certificate(&tls_dir, "n1", &[], &[]).unwrap();
    let files = TlsFiles { ca: cluster_tls::ca_paths(&tls_dir).0, cert, key };
    let node = ConsensusNode::start(NodeOptions {
        name: "n1".into(),
        address: "127.0.0.1:1".into(),
        data_dir: dir.join("data"),
        tls: cluster_tls::client_config(&files).unwrap(),
        timing: Timing::default(),
    })
    .await
    .unwrap();
    node.initialize().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.leadership().is_none() {
        assert!(std::time::Instant::now() < deadline, "n1 did not become leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The leader's first (blank) entry is applied.
    node.write(Command::KvSet { key: "warm".into(), value: "up".into() }).await.unwrap();
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_each_gets_its_own_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path()).await;
    let index_before = node.last_log_index();

    // 200 writers race to create the same key; each also sets a key of its own.
    let writers = 200;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let cas = node
                .write(Command::KvCas { key: "race".into(), expected: None, new: format!("w{writer}") })
                .await
                .unwrap();
            let set = node.write(Command::KvSet { key: format!("own/{writer}"), value: format!("v{writer}") }).await;
            (writer, cas, set.unwrap())
        }));
    }
    let mut winners = Vec::new();
    let mut mismatches = Vec::new();
    for task in tasks {
        let (writer, cas, set) = task.await.unwrap();
        assert_eq!(set, CommandOutcome::Applied);
        match cas {
            CommandOutcome::Applied => winners.push(writer),
            CommandOutcome::CasMismatch { current } => mismatches.push(current),
            other => panic!("writer {writer}: unexpected outcome {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer creates the key");
    let winner_value = format!("w{}", winners[0]);
    assert_eq!(mismatches.len(), writers - 1);
    assert!(mismatches.iter().all(|current| current.as_deref() == Some(winner_value.as_str())), "{mismatches:?}");

    let state = node
        .read(|state| {
            (
                state.get("race").cloned(),
                (0..writers).map(|w| state.get(&format!("own/{w}")).cloned()).collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap();
    assert_eq!(state.0.as_deref(), Some(winner_value.as_str()));
    for (writer, value) in state.1.into_iter().enumerate() {
        assert_eq!(value, Some(format!("v{writer}")));
    }
    // 400 writes in far fewer entries: the first append's fsync holds openraft's core while the
    // others queue up.
    let entries = node.last_log_index() - index_before;
    assert!(entries < 2 * writers as u64 / 2, "{entries} entries for {} writes: not batched", 2 * writers);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_write_is_its_own_entry() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path()).await;
    for round in 0..5 {
        let before = node.last_log_index();
        let outcome = node.write(Command::KvDel { key: format!("absent/{round}") }).await.unwrap();
        assert_eq!(outcome, CommandOutcome::Deleted { existed: false });
        assert_eq!(node.last_log_index(), before + 1);
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_period_counts_the_commands_of_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path()).await;
    let period = 500u64;
    node.write(Command::SetSetting { name: "snapshot_period".into(), value: period.to_string() }).await.unwrap();
    let index_before = node.last_log_index();
    let writes: Vec<_> = (0..period)
        .map(|writer| {
            let node = node.clone();
            tokio::spawn(
                async move { node.write(Command::KvSet { key: format!("k{writer}"), value: "v".into() }).await },
            )
        })
        .collect();
    for write in writes {
        write.await.unwrap().unwrap();
    }
    let entries = node.last_log_index() - index_before;
    assert!(entries < period, "{entries} entries: the entry count alone would trigger the snapshot");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.status().await.snapshot_index.is_none_or(|index| index <= index_before) {
        assert!(std::time::Instant::now() < deadline, "no snapshot after {period} commands in {entries} entries");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.shutdown().await;
}

/// While the cluster runs at version 1 a v0.1.0 member may exist, and it cannot decode
/// `Command::Batch`: concurrent writes are then each their own entry (and still all applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_cluster_version_1_concurrent_writes_are_never_batched() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node_at_v0_1(dir.path()).await;
    assert_eq!(node.cluster_version(), ClusterVersion::V0_1);
    let index_before = node.last_log_index();
    let writers = 100u64;
    let writes: Vec<_> = (0..writers)
        .map(|writer| {
            let node = node.clone();
            tokio::spawn(
                async move { node.write(Command::KvSet { key: format!("k{writer}"), value: "v".into() }).await },
            )
        })
        .collect();
    for write in writes {
        assert_eq!(write.await.unwrap().unwrap(), CommandOutcome::Applied);
    }
    assert_eq!(node.last_log_index() - index_before, writers, "one entry per write: no batch at version 1");
    node.shutdown().await;
}

/// A command of the newer version, written while the cluster still runs at version 1, makes the
/// leader ask the members first: every member (here: itself) runs this release, so the version
/// rises and the command is applied instead of refused. (With a v0.1.0 member the refusal stands:
/// crates/clusterd/tests/upgrade.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_command_raises_the_version_when_every_member_runs_this_release() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node_at_v0_1(dir.path()).await;
    assert_eq!(node.cluster_version(), ClusterVersion::V0_1);
    let batch = Command::Batch(vec![Command::KvDel { key: "warm".into() }]);
    assert_eq!(
        node.write(batch).await.unwrap(),
        CommandOutcome::Batch(vec![CommandOutcome::Deleted { existed: true }])
    );
    assert_eq!(node.cluster_version(), ClusterVersion::CURRENT);
    node.shutdown().await;
}

/// A leader knows when it has applied its whole log: an entry of its own term is applied (the
/// controller plans only then). A term it does not lead is never reported applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_has_applied_an_entry_of_its_term_and_none_of_a_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path()).await;
    let term = node.leadership().expect("n1 leads");
    assert!(node.wait_applied_in_term(term, Duration::from_secs(5)).await);
    let started = std::time::Instant::now();
    assert!(!node.wait_applied_in_term(term + 1, Duration::from_millis(200)).await);
    assert!(started.elapsed() < Duration::from_secs(2), "returns once the term differs or the limit passed");
}
