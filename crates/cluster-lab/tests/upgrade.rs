//! Root lab test of a rolling upgrade (issue 12): a 3-node cluster of v0.1.0 (built from the
//! release's commit by `cluster_testkit::previous_release`) runs the package of the failover tests
//! (a VIP, a filesystem on the shared LUN, a process) and is upgraded one node at a time to this
//! release, the way docs/upgrades.md tells an operator to. The observer, outside the cluster, checks
//! that the package never stopped during the upgrade and never ran on two nodes; the key-value
//! data and the package's state survive; the cluster then runs at version 0.2.0 and fails over.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_lab::history::{self, Kind};
use cluster_lab::lab::OtherClusterd;
use common::package_lab::*;
use common::require_root;

/// Whether `node` held `resource` of `kind` without a gap from `from_ns` to `to_ns`.
fn held_throughout(
    records: &[history::Record],
    end_ns: u64,
    kind: Kind,
    resource: &str,
    node: &str,
    from_ns: u64,
    to_ns: u64,
) -> bool {
    history::intervals(records, end_ns).get(&(kind, resource.to_owned())).is_some_and(|list| {
        list.iter().any(|interval| interval.node == node && interval.start_ns <= from_ns && interval.end_ns >= to_ns)
    })
}

#[test]
fn a_v0_1_cluster_is_upgraded_one_node_at_a_time_while_its_package_keeps_running() {
    if !require_root("a_v0_1_cluster_is_upgraded_one_node_at_a_time_while_its_package_keeps_running") {
        return;
    }
    let previous = cluster_testkit::previous_release();
    let old = OtherClusterd { clusterd: previous.clusterd.clone(), release: "0.1.0".into() };
    let nodes: BTreeMap<String, OtherClusterd> =
        ["n1", "n2", "n3"].iter().map(|node| (node.to_string(), old.clone())).collect();
    let mut fixture = Fixture::with_spec("upgr", false, PackageOptions::default(), |spec| spec.other_clusterd = nodes);
    let status = fixture.ctl_json(VIA, &["status"]);
    assert_eq!(status["cluster_version"], "0.1.0", "{status}");
    for node in ["n1", "n2", "n3"] {
        assert_eq!(daemon_binary(&fixture, node), previous.clusterd.canonicalize().unwrap(), "{node} runs v0.1.0");
    }

    // Every restart of a leader moves the leadership, which pauses renewals for a few hundred
    // milliseconds; with the default 1 s lease a loaded machine can let the owner's lease lapse then
    // (and the package stop and move, as designed). This test is about the formats, not the timings.
    fixture.ctl(VIA, &["cluster", "set", "lease", "3s"]);
    // Data in v0.1.0's snapshots and log.
    fixture.ctl(VIA, &["cluster", "set", "snapshot_period", "10"]);
    for i in 0..30 {
        fixture.ctl(&format!("n{}", 1 + i % 3), &["kv", "set", &format!("k{i}"), &format!("v{i}")]);
    }
    let before = fixture.run_on_n1();
    let running_ns = now_ns();

    // The nodes that do not own the package: stop clusterd, install the new binary, start it.
    for node in ["n3", "n2"] {
        fixture.lab.stop_daemon(node, Duration::from_secs(30)).unwrap();
        fixture.lab.set_clusterd(node, None).unwrap();
        fixture.lab.start_daemon(node).unwrap();
        wait_for_quorum(&fixture, node);
        let status = fixture.ctl_json(node, &["status"]);
        assert_eq!(status["cluster_version"], "0.1.0", "n1 still runs v0.1.0: {status}");
        assert_eq!(fixture.ctl(node, &["kv", "get", "k29"]).trim(), "v29");
    }

    // The owner: freeze the package (it keeps running while clusterd restarts), upgrade, unfreeze.
    fixture.ctl(VIA, &["pkg", "freeze", PACKAGE]);
    fixture.lab.stop_daemon("n1", Duration::from_secs(30)).unwrap();
    fixture.lab.set_clusterd("n1", None).unwrap();
    fixture.lab.start_daemon("n1").unwrap();
    wait_for_quorum(&fixture, "n1");
    // Only once the node announced itself (`status` shows it online with a live lease): unfrozen
    // earlier, the package of a node whose clusterd the cluster still sees as stopped moves away.
    let online = wait_until(Duration::from_secs(20), || {
        fixture.lab.cluster_status(VIA).is_ok_and(|status| {
            status["nodes"].as_array().is_some_and(|nodes| {
                nodes.iter().any(|node| node["name"] == "n1" && node["leaving"] == false && node["lease"] == "alive")
            })
        })
    });
    assert!(online, "n1 never came back online");
    fixture.ctl(VIA, &["pkg", "unfreeze", PACKAGE]);
    let after = fixture.wait_running_on("n1", Duration::from_secs(20));
    if after["epoch"] != before["epoch"] {
        fixture.dump();
        panic!("the package was reassigned during the upgrade: epoch {} -> {}", before["epoch"], after["epoch"]);
    }
    let upgraded_ns = now_ns();

    // Every node runs 0.2.0: the cluster version rises by itself; nothing was lost.
    let raised = wait_until(Duration::from_secs(20), || {
        fixture.lab.cluster_status(VIA).is_ok_and(|status| status["cluster_version"] == "0.2.0")
    });
    if !raised {
        fixture.dump();
    }
    assert!(raised, "the cluster version did not rise to 0.2.0");
    for i in 0..30 {
        assert_eq!(fixture.ctl("n1", &["kv", "get", &format!("k{i}")]).trim(), format!("v{i}"));
    }
    let status = fixture.ctl_json(VIA, &["status"]);
    for node in ["n1", "n2", "n3"] {
        assert_ne!(daemon_binary(&fixture, node), previous.clusterd.canonicalize().unwrap(), "{node} was upgraded");
    }
    let releases: Vec<&str> =
        status["nodes"].as_array().unwrap().iter().filter_map(|node| node["version"].as_str()).collect();
    assert_eq!(releases, ["0.2.0"; 3], "{status}");

    // The upgraded cluster fails over.
    fixture.lab.kill("n1").unwrap();
    let moved = fixture.wait_running_on("n2", Duration::from_secs(20));
    assert!(moved["epoch"].as_u64() > after["epoch"].as_u64(), "{moved}");

    let records = fixture.finish_without_split_brain();
    let end_ns = records.last().map_or(now_ns(), |record| record.t_ns);
    let mount = fixture.mountpoint.display().to_string();
    for (kind, resource) in [(Kind::Vip, VIP), (Kind::Mount, mount.as_str()), (Kind::Process, PROCESS)] {
        assert!(
            held_throughout(&records, end_ns, kind, resource, "n1", running_ns, upgraded_ns),
            "{kind:?} {resource} was not active on n1 without a gap during the upgrade"
        );
    }
    eprintln!(
        "[{}] upgraded with the package running on n1 throughout ({:.1} s)",
        fixture.name,
        (upgraded_ns - running_ns) as f64 / 1e9
    );
}

/// The program `node`'s clusterd runs.
fn daemon_binary(fixture: &Fixture, node: &str) -> std::path::PathBuf {
    let pid = fixture.lab.node(node).unwrap().daemon_pid.expect("a running daemon");
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

/// Waits until `node` answers `status` with a leader and a quorum.
fn wait_for_quorum(fixture: &Fixture, node: &str) {
    let ok = wait_until(Duration::from_secs(20), || {
        fixture.lab.cluster_status(node).is_ok_and(|status| status["leader"].is_string() && status["quorum"] == true)
    });
    if !ok {
        fixture.dump();
    }
    assert!(ok, "[{}] no leader with a quorum seen from {node}", fixture.name);
}
