//! Witnesses on loopback (issue 12): a node file's `role = "witness"` and `node add --witness`
//! record a voter that never hosts packages; `status` shows it and says what two voters mean.
//! Placement itself: the controller's golden tests, the simulation and the lab test.

use std::time::{Duration, Instant};

use cluster_api::{ClientError, ClientReply, ClientRequest, StatusReport};
use cluster_testkit::{call, TestCluster};

async fn status(socket: &std::path::Path) -> StatusReport {
    match call(socket, ClientRequest::Status).await {
        Ok(ClientReply::Status(report)) => report,
        other => panic!("status: {other:?}"),
    }
}

fn package(nodes: &str) -> cluster_package::PackageDef {
    let text = format!(
        "name = \"web\"\nnodes = [{nodes}]\nauto_run = false\n[[resource]]\nname = \"server\"\ntype = \"process\"\n\
         command = [\"/bin/sleep\", \"1000\"]\n"
    );
    cluster_package::parse_package("web.toml", &text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_is_recorded_from_its_node_file_or_node_add_and_never_takes_a_package() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 133, 3);
    cluster.configure(2, "role = \"witness\"");
    cluster.form().await;
    let n1 = cluster.nodes[0].socket.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = status(&n1).await;
        if report.nodes.iter().any(|node| node.name == "n3" && node.witness) {
            assert!(report.nodes.iter().filter(|node| node.name != "n3").all(|node| !node.witness), "{report:?}");
            assert!(!report.warnings.iter().any(|w| w.contains("two voters")), "{report:?}");
            break;
        }
        assert!(Instant::now() < deadline, "n3 never recorded itself as a witness:\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A package may name the witness, and is told it never runs there; nor can it be sent there.
    let reply = call(&n1, ClientRequest::PkgApply { packages: vec![package("\"n3\", \"n1\"")] }).await.unwrap();
    let ClientReply::Done { message } = reply else { panic!("{reply:?}") };
    assert!(message.contains("warning: n3 is a witness, which never hosts packages"), "{message}");
    let refused = call(&n1, ClientRequest::PkgRun { name: "web".into(), node: Some("n3".into()) }).await;
    let Err(ClientError::Api(err)) = refused else { panic!("{refused:?}") };
    assert_eq!(err.message, "node `n3` is a witness: it never hosts packages");

    // `node add --witness`, and a witness is a voter, not a learner.
    let added = cluster.define_node(133);
    cluster.start(added);
    cluster_testkit::wait_for_socket(&cluster.nodes[added].socket).await;
    let (name, address) = (cluster.nodes[added].name.clone(), cluster.nodes[added].address.clone());
    let both = ClientRequest::NodeAdd { name: name.clone(), address: address.clone(), learner: true, witness: true };
    let Err(ClientError::Api(err)) = call(&n1, both).await else { panic!("a learner witness was accepted") };
    assert!(err.message.contains("a witness is a voter, not a learner"), "{}", err.message);
    let add = ClientRequest::NodeAdd { name: name.clone(), address, learner: false, witness: true };
    let Ok(ClientReply::Done { message }) = call(&n1, add).await else { panic!("node add --witness failed") };
    assert_eq!(message, "node n4 added as a witness (a voter that never hosts packages)");
    let report = status(&n1).await;
    assert!(report.nodes.iter().any(|node| node.name == "n4" && node.witness), "{report:?}");

    // Two voters left: status says what losing either means.
    for gone in ["n4", "n3"] {
        call(&n1, ClientRequest::NodeRemove { name: gone.into() }).await.unwrap();
    }
    let report = status(&n1).await;
    let warning = report.warnings.iter().find(|w| w.contains("two voters")).unwrap_or_else(|| panic!("{report:?}"));
    assert!(warning.contains("losing either node, or the link between them, loses the quorum"), "{warning}");
    assert!(warning.contains("--witness"), "{warning}");
}
