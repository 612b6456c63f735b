//! Rolling upgrades from v0.1.0 on loopback: real v0.1.0 daemons, built from the release's commit
//! (`cluster_testkit::previous_release`, a few minutes the first time), mixed with this release's.
//! The lab test `crates/cluster-lab/tests/upgrade.rs` adds packages and the outside observer.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cluster_api::{ClientError, ClientReply, ClientRequest, StatusReport};
use cluster_testkit::{call, kv_get, kv_set, local_status, previous_release, TestCluster};

async fn status(socket: &Path) -> StatusReport {
    match call(socket, ClientRequest::Status).await {
        Ok(ClientReply::Status(report)) => report,
        other => panic!("status: {other:?}"),
    }
}

/// Waits until `check` holds, polling every 50 ms; panics with `what` and the logs after `limit`.
async fn wait_until<F, Fut>(cluster: &TestCluster, limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}; logs:\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hands leadership to `to` once it holds the whole committed log (a node just restarted may lag
/// while the leader's replication to it backs off, and a transfer to it would fail).
async fn transfer(cluster: &TestCluster, to: &str) {
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let (leader, target) =
        (cluster.nodes[cluster.index_of(&leader)].socket.clone(), cluster.nodes[cluster.index_of(to)].socket.clone());
    wait_until(cluster, Duration::from_secs(10), &format!("{to} catches up"), || {
        let (leader, target) = (leader.clone(), target.clone());
        async move {
            let (Ok(leader), Ok(target)) = (local_status(&leader).await, local_status(&target).await) else {
                return false;
            };
            target.applied_index >= leader.commit_index
        }
    })
    .await;
    let request = ClientRequest::TransferLeader { name: to.into() };
    call(&cluster.nodes[0].socket, request)
        .await
        .unwrap_or_else(|err| panic!("transfer to {to}: {err}\n{}", cluster.logs()));
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_eq!(leader, to);
}

/// Every file under `dir` and its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.insert(path.display().to_string(), std::fs::read(&path).unwrap());
            }
        }
    }
    found
}

/// A v0.1.0 cluster with snapshots (snapshot_period 10) and 40 keys, upgraded one node at a time:
/// every node reads the v0.1.0 snapshot and log it finds, the data survives, the mixed cluster
/// serves reads and writes, refuses what v0.1.0 cannot carry naming both versions, and moves to
/// cluster version 0.2.0 by itself once the last node runs it. Afterwards a node started again with
/// v0.1.0 refuses to start without touching its log, and a v0.1.0 node cannot join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v0_1_cluster_upgraded_one_node_at_a_time_keeps_its_data_and_raises_its_version() {
    let previous = previous_release();
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 121, 3);
    for node in &mut cluster.nodes {
        node.binary = Some(previous.clusterd.clone());
    }
    cluster.form().await;
    let n1 = cluster.nodes[0].socket.clone();
    call(&n1, ClientRequest::SettingsSet { name: "snapshot_period".into(), value: "10".into() }).await.unwrap();
    for i in 0..40 {
        kv_set(&cluster.nodes[i % 3].socket, &format!("k{i}"), &format!("v{i}")).await;
    }
    for index in 0..3 {
        let socket = cluster.nodes[index].socket.clone();
        wait_until(&cluster, Duration::from_secs(10), "a v0.1.0 snapshot on every node", || {
            let socket = socket.clone();
            async move { local_status(&socket).await.is_ok_and(|report| report.snapshot_index.unwrap_or(0) >= 30) }
        })
        .await;
    }
    assert_eq!(status(&n1).await.cluster_version, "0.1.0", "a v0.1.0 node's report, read by this clusterctl");

    for index in [2, 1, 0] {
        let name = cluster.nodes[index].name.clone();
        let socket = cluster.nodes[index].socket.clone();
        let before = local_status(&socket).await.unwrap();
        cluster.stop(index);
        cluster.nodes[index].binary = None;
        cluster.start(index);
        cluster_testkit::wait_for_socket(&socket).await;
        // It read the v0.1.0 snapshot and the log after it from its own disk.
        let after = local_status(&socket).await.unwrap();
        assert!(after.snapshot_index >= before.snapshot_index, "{name}: {after:?}");
        assert!(after.applied_index.unwrap_or(0) >= before.snapshot_index.unwrap_or(0), "{name}: {after:?}");
        cluster.wait_leader(Duration::from_secs(10)).await;
        assert_eq!(kv_get(&socket, "k39").await.as_deref(), Some("v39"), "{name}");
        kv_set(&socket, &format!("during/{name}"), "written while mixed").await;
        if index > 0 {
            // v0.1.0's n1 is still a member: nothing it could not decode reaches the log.
            let refused = call(&socket, ClientRequest::AlertList).await;
            let Err(ClientError::Api(err)) = refused else { panic!("{name}: alert list allowed: {refused:?}") };
            assert!(err.message.contains("0.2.0"), "{name}: {}", err.message);
            // Join tokens (and the revocation of a removed node's certificates) wait for 0.2.0 too.
            let refused = call(&socket, ClientRequest::TokenCreate { ttl_ms: 60_000 }).await;
            let Err(ClientError::Api(err)) = refused else { panic!("{name}: token allowed: {refused:?}") };
            assert!(
                err.message.contains("request `cluster token` needs cluster version 0.2.0")
                    && err.message.contains("the cluster runs at version 0.1.0"),
                "{name}: {}",
                err.message
            );
            // Package relations too (issue 13), naming the field and both versions.
            let text = "name = \"rel\"\nneeds = { slots = 1 }\n[[resource]]\nname = \"p\"\ntype = \"process\"\n\
                        command = [\"/bin/sleep\", \"1000\"]\n";
            let def = cluster_package::parse_package("rel.toml", text).unwrap();
            let refused = call(&socket, ClientRequest::PkgApply { packages: vec![def] }).await;
            let Err(ClientError::Api(err)) = refused else { panic!("{name}: relations allowed: {refused:?}") };
            assert!(
                err.message.starts_with(
                    "package `rel` uses `needs`, which needs cluster version 0.2.0, and the cluster runs at version \
                     0.1.0"
                ),
                "{name}: {}",
                err.message
            );
            let report = status(&socket).await;
            assert_eq!(report.cluster_version, "0.1.0", "{name}");
        }
        if index == 1 {
            // A leader of this release with a v0.1.0 follower (n1): concurrent writes are not
            // batched into one entry (`Command::Batch`, which v0.1.0 cannot decode), and n1
            // applies them all.
            transfer(&cluster, "n2").await;
            let writes: Vec<_> = (0..40)
                .map(|i| {
                    let socket = cluster.nodes[1].socket.clone();
                    tokio::spawn(async move { kv_set(&socket, &format!("concurrent/{i}"), "mixed").await })
                })
                .collect();
            for write in writes {
                write.await.unwrap();
            }
            let leader = local_status(&cluster.nodes[1].socket).await.unwrap();
            wait_until(&cluster, Duration::from_secs(10), "v0.1.0's n1 applies the concurrent writes", || {
                let n1 = n1.clone();
                async move { local_status(&n1).await.is_ok_and(|n1| n1.applied_index >= leader.commit_index) }
            })
            .await;
        }
    }

    // Every node runs 0.2.0: a request of 0.2.0 made at once is not refused: the leader asks the
    // members then (its periodic question may not have come yet) and raises the cluster version.
    let alerts = call(&n1, ClientRequest::AlertList).await;
    assert!(matches!(alerts, Ok(ClientReply::Alerts { .. })), "right after the last upgrade: {alerts:?}");
    // n1 applies the raised version a moment later (until then it speaks v0.1.0's protocol).
    wait_until(&cluster, Duration::from_secs(5), "cluster version 0.2.0 on n1", || {
        let socket = n1.clone();
        async move { status(&socket).await.cluster_version == "0.2.0" }
    })
    .await;
    let report = status(&n1).await;
    assert!(report.nodes.iter().all(|node| node.version.as_deref() == Some("0.2.0")), "{report:?}");
    assert!(!report.warnings.iter().any(|warning| warning.contains("cluster runs at version")), "{report:?}");
    for i in 0..40 {
        assert_eq!(kv_get(&n1, &format!("k{i}")).await, Some(format!("v{i}")));
    }
    for name in ["n1", "n2", "n3"] {
        assert_eq!(kv_get(&n1, &format!("during/{name}")).await.as_deref(), Some("written while mixed"));
    }
    assert!(matches!(call(&n1, ClientRequest::AlertList).await, Ok(ClientReply::Alerts { .. })));
    kv_set(&n1, "after", "0.2.0").await;

    // A node started again with v0.1.0 stops at its vote file, before it reads (and could cut) its log.
    let index = 1;
    let data_dir = cluster.nodes[index].data_dir.clone();
    cluster.stop(index);
    let before = files(&data_dir);
    let output = std::process::Command::new(&previous.clusterd)
        .arg("--config")
        .arg(&cluster.nodes[index].config)
        .output()
        .unwrap();
    assert!(!output.status.success(), "v0.1.0 started on an upgraded data directory");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("vote"), "{stderr}");
    assert_eq!(files(&data_dir), before, "v0.1.0 changed the data directory");
    cluster.start(index);
    cluster_testkit::wait_for_socket(&cluster.nodes[index].socket).await;
    assert_eq!(kv_get(&cluster.nodes[index].socket, "after").await.as_deref(), Some("0.2.0"));

    // A v0.1.0 node cannot join a cluster at 0.2.0.
    let added = cluster.define_node(121);
    cluster.nodes[added].binary = Some(previous.clusterd.clone());
    cluster.start(added);
    cluster_testkit::wait_for_socket(&cluster.nodes[added].socket).await;
    let node = &cluster.nodes[added];
    let request = ClientRequest::NodeAdd {
        name: node.name.clone(),
        address: node.address.clone(),
        learner: false,
        witness: false,
    };
    let Err(ClientError::Api(err)) = call(&n1, request).await else { panic!("a v0.1.0 node joined") };
    assert!(
        err.message.contains("runs clusterd 0.1.0 (protocol 3), older than this cluster's version 0.2.0"),
        "{}",
        err.message
    );
    assert_eq!(status(&n1).await.nodes.len(), 3);
}

/// While the cluster is mixed, either release leads: a v0.1.0 leader replicates to and installs
/// its snapshot on a lagging 0.2.0 follower, and a 0.2.0 leader does the same for a v0.1.0 one (in
/// v0.1.0's formats); requests forwarded between releases are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_versions_replicate_and_install_snapshots_both_ways() {
    let previous = previous_release();
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 122, 3);
    for node in &mut cluster.nodes {
        node.binary = Some(previous.clusterd.clone());
    }
    cluster.form().await;
    let (n1, n2, n3) =
        (cluster.nodes[0].socket.clone(), cluster.nodes[1].socket.clone(), cluster.nodes[2].socket.clone());
    call(&n2, ClientRequest::SettingsSet { name: "snapshot_period".into(), value: "10".into() }).await.unwrap();
    // n1 runs 0.2.0 from now on, n2 and n3 v0.1.0.
    cluster.stop(0);
    cluster.nodes[0].binary = None;
    cluster.start(0);
    cluster_testkit::wait_for_socket(&n1).await;
    cluster.wait_leader(Duration::from_secs(10)).await;
    assert_eq!(status(&n2).await.cluster_version, "0.1.0", "n2 and n3 run v0.1.0");

    // 0.2.0 leads; v0.1.0's n3 falls behind by more than the log kept after a snapshot (100).
    transfer(&cluster, "n1").await;
    cluster.stop(2);
    for i in 0..150 {
        kv_set(if i % 2 == 0 { &n1 } else { &n2 }, &format!("a{i}"), &i.to_string()).await;
    }
    cluster.start(2);
    cluster_testkit::wait_for_socket(&n3).await;
    wait_until(&cluster, Duration::from_secs(20), "v0.1.0's n3 installs the snapshot of 0.2.0's n1", || {
        let (n1, n3) = (n1.clone(), n3.clone());
        async move {
            let (Ok(leader), Ok(follower)) = (local_status(&n1).await, local_status(&n3).await) else { return false };
            follower.applied_index >= leader.commit_index && follower.snapshot_index.unwrap_or(0) > 100
        }
    })
    .await;
    transfer(&cluster, "n3").await;
    assert_eq!(kv_get(&n1, "a149").await.as_deref(), Some("149"), "read on v0.1.0's n3 as leader");

    // v0.1.0 leads; 0.2.0's n1 falls behind and installs the v0.1.0 leader's snapshot.
    cluster.stop(0);
    for i in 0..150 {
        kv_set(if i % 2 == 0 { &n2 } else { &n3 }, &format!("b{i}"), &i.to_string()).await;
    }
    cluster.start(0);
    cluster_testkit::wait_for_socket(&n1).await;
    wait_until(&cluster, Duration::from_secs(20), "0.2.0's n1 installs the snapshot of v0.1.0's n3", || {
        let (n1, n3) = (n1.clone(), n3.clone());
        async move {
            let (Ok(leader), Ok(follower)) = (local_status(&n3).await, local_status(&n1).await) else { return false };
            follower.applied_index >= leader.commit_index && follower.snapshot_index.unwrap_or(0) > 250
        }
    })
    .await;
    transfer(&cluster, "n1").await;
    for key in ["a0", "a149", "b0", "b149"] {
        assert!(kv_get(&n3, key).await.is_some(), "{key}, forwarded by v0.1.0's n3 to 0.2.0's n1");
    }
    assert_eq!(status(&n2).await.cluster_version, "0.1.0");
    let holding = "the cluster runs at version 0.1.0: n2 (0.1.0), n3 (0.1.0) do not run clusterd 0.2.0 yet";
    wait_until(&cluster, Duration::from_secs(5), "status names the v0.1.0 nodes", || {
        let n2 = n2.clone();
        async move { status(&n2).await.warnings.iter().any(|warning| warning.starts_with(holding)) }
    })
    .await;
}
