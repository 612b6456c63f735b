//! Root lab tests of a two-node site with a witness (issue 12): n1 and n2 host the package of the
//! failover tests, n3's node file says `role = "witness"` (a voter that never hosts packages). The
//! observer checks from outside that the package never runs twice and never on the witness.

mod common;

use std::time::Duration;

use cluster_lab::history::Kind;
use cluster_lab::partition::Partition;
use common::package_lab::*;
use common::require_root;

fn witness_lab(tag: &str) -> Fixture {
    let fixture = Fixture::with_spec(tag, false, PackageOptions::default(), |spec| spec.witnesses = vec!["n3".into()]);
    let recorded = wait_until(Duration::from_secs(20), || {
        fixture.lab.cluster_status(VIA).is_ok_and(|status| {
            status["nodes"].as_array().is_some_and(|nodes| {
                nodes.iter().any(|node| node["name"] == "n3" && node["witness"] == true && node["role"] == "voter")
            })
        })
    });
    if !recorded {
        fixture.dump();
    }
    assert!(recorded, "[{}] n3 never recorded itself as a witness", fixture.name);
    fixture
}

/// Nothing of the package was ever seen on the witness.
fn assert_witness_held_nothing(records: &[cluster_lab::history::Record]) {
    let on_witness: Vec<_> =
        records.iter().filter(|record| record.node == "n3" && record.active && record.kind != Kind::Fault).collect();
    assert!(on_witness.is_empty(), "the witness held resources: {on_witness:?}");
}

#[test]
fn two_package_nodes_and_a_witness_fail_over_when_a_package_node_dies() {
    if !require_root("two_package_nodes_and_a_witness_fail_over_when_a_package_node_dies") {
        return;
    }
    let mut fixture = witness_lab("wikill");
    let status = fixture.ctl_json(VIA, &["status"]);
    let warnings = status["warnings"].to_string();
    assert!(!warnings.contains("two voters"), "three voters, one a witness: {warnings}");
    let before = fixture.run_on_n1();
    let fault_ns = now_ns();
    fixture.lab.kill("n1").unwrap();
    let after = fixture.wait_running_on("n2", Duration::from_secs(20));
    assert!(after["epoch"].as_u64() > before["epoch"].as_u64(), "{after}");
    // n1 is dead and the witness may not take it: with n2 gone too the package has nowhere to go.
    let refused = fixture.lab.clusterctl(VIA, &["pkg", "move", PACKAGE, "--to", "n3"]).unwrap_err().to_string();
    assert!(refused.contains("witness"), "{refused}");
    let records = fixture.finish_without_split_brain();
    assert_witness_held_nothing(&records);
    let end_ns = records.last().map_or(now_ns(), |record| record.t_ns);
    fixture.print_timing(&records, end_ns, fault_ns, "kill n1 (two package nodes and a witness)");
}

#[test]
fn a_partition_between_the_package_nodes_leaves_the_package_on_exactly_one_side() {
    if !require_root("a_partition_between_the_package_nodes_leaves_the_package_on_exactly_one_side") {
        return;
    }
    let mut fixture = witness_lab("wipart");
    fixture.run_on_n1();
    let split = Partition { sides: vec![vec!["n1".into()], vec!["n2".into()]], one_way: false };

    // n2 leads: cut off from the leader, the owner n1 loses its lease and stops; n2 takes over.
    // The witness sees both sides but follows n2, so it refuses n1's pre-votes: n1 cannot win.
    fixture.lead_from_via("n2");
    fixture.lab.partition(&split).unwrap();
    fixture.wait_running_on("n2", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let status = fixture.ctl_json(VIA, &["status"]);
    assert_eq!(status["leader"], "n2", "{status}");
    fixture.lab.heal().unwrap();
    fixture.wait_running_on("n2", Duration::from_secs(10));

    // The witness leads: it renews both sides' leases, so the owner n2 keeps its package and n1,
    // which cannot reach n2, does not start it.
    fixture.lead_from_via("n3");
    fixture.lab.partition(&split).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let package = fixture.wait_running_on("n2", Duration::from_secs(5));
    assert_eq!(package["owner"], "n2");
    fixture.lab.heal().unwrap();

    let records = fixture.finish_without_split_brain();
    assert_witness_held_nothing(&records);
}
