//! Root lab test of a node joining with a token (issue 12, item 3): the lab forms n1..n3 with the
//! package of the failover tests; n4 has a network namespace and a data disk but no certificate
//! and no node file. On a member `clusterctl cluster token`; inside n4 `clusterctl join` (over the
//! lab's network); n4's clusterd then adds itself as a voter, receives the data, and takes the
//! package by a planned move while the observer checks that it never runs twice. Removed again,
//! n4's certificate is refused by the others.

mod common;

use std::time::Duration;

use common::package_lab::*;
use common::require_root;

#[test]
fn a_node_joins_with_a_token_and_takes_the_package() {
    if !require_root("a_node_joins_with_a_token_and_takes_the_package") {
        return;
    }
    let mut fixture = Fixture::with_spec("join", false, PackageOptions::default(), |spec| {
        spec.voters = 4;
        spec.joining = vec!["n4".into()];
    });
    let status = fixture.ctl_json(VIA, &["status"]);
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(3), "n4 is not a member yet: {status}");
    assert!(!fixture.lab.paths().pki_dir().join("n4.key").exists(), "the lab made no key for n4");
    fixture.ctl(VIA, &["kv", "set", "before", "joined"]);
    fixture.run_on_n1();

    let token = fixture.ctl("n1", &["cluster", "token", "--ttl", "5m"]).trim().to_owned();
    let n4 = fixture.lab.node("n4").unwrap().address;
    let join_dir = fixture.lab.paths().join_dir("n4");
    let join_argv = |node: &str, listen: &str| -> Vec<String> {
        let paths = fixture.lab.paths();
        [
            "clusterctl",
            "join",
            "--token",
            &token,
            "--server",
            "192.0.2.12:7400",
            "--node",
            node,
            "--listen",
            listen,
            "--dir",
            &paths.join_dir(node).display().to_string(),
            "--data-dir",
            &paths.data_dir(node).display().to_string(),
            "--daemon-socket",
            &paths.clusterd_socket(node).display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    };
    let argv = join_argv("n4", &format!("{n4}:7400"));
    let output = fixture.lab.node_command("n4", &argv).unwrap().output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "clusterctl join in n4: {said}");
    assert!(join_dir.join("n4.key").exists() && join_dir.join("clusterd.toml").exists(), "{said}");

    // The same token again, from n4's namespace: used.
    let again = join_argv("n5", "192.0.2.99:7400");
    let output = fixture.lab.node_command("n4", &again).unwrap().output().unwrap();
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success() && said.contains("join token already used (by node `n4`)"), "{said}");

    fixture.lab.start_daemon("n4").unwrap();
    let voter = wait_until(Duration::from_secs(30), || {
        fixture.lab.cluster_status(VIA).is_ok_and(|status| {
            status["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.iter().any(|node| node["name"] == "n4" && node["role"] == "voter"))
        })
    });
    if !voter {
        fixture.dump();
        common::dump_logs(&fixture.lab, &fixture.name, "", &["n4"]);
    }
    assert!(voter, "[{}] n4 never became a voter", fixture.name);
    let value = wait_until(Duration::from_secs(10), || {
        fixture.lab.clusterctl("n4", &["kv", "get", "before"]).is_ok_and(|value| value.trim() == "joined")
    });
    assert!(value, "n4 never read the data written before it joined");

    // The package may run on n4 now: a planned move there, seen from outside.
    let package_file = fixture.lab.paths().run_dir().join("web.toml");
    let text = std::fs::read_to_string(&package_file).unwrap();
    std::fs::write(&package_file, text.replace(r#"nodes = ["n1", "n2", "n3"]"#, r#"nodes = ["n1", "n2", "n3", "n4"]"#))
        .unwrap();
    fixture.ctl(VIA, &["pkg", "apply", &package_file.display().to_string()]);
    fixture.ctl(VIA, &["pkg", "move", PACKAGE, "--to", "n4"]);
    fixture.wait_running_on("n4", Duration::from_secs(20));
    fixture.ctl(VIA, &["pkg", "move", PACKAGE, "--to", "n1"]);
    fixture.wait_running_on("n1", Duration::from_secs(20));

    // Removed, n4's certificate opens nothing any more.
    fixture.ctl(VIA, &["node", "remove", "n4"]);
    let refused = wait_until(Duration::from_secs(5), || {
        let remote: Vec<String> = [
            "clusterctl",
            "--endpoint",
            "192.0.2.11:7400",
            "--ca",
            &join_dir.join("ca.crt").display().to_string(),
            "--cert",
            &join_dir.join("n4.crt").display().to_string(),
            "--key",
            &join_dir.join("n4.key").display().to_string(),
            "status",
        ]
        .map(String::from)
        .to_vec();
        let output = fixture.lab.node_command("n4", &remote).unwrap().output().unwrap();
        !output.status.success() && String::from_utf8_lossy(&output.stderr).contains("received fatal alert")
    });
    assert!(refused, "n1 still accepts the removed n4's certificate");
    fixture.finish_without_split_brain();
}
