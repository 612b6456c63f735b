//! Bad input end to end: foreign certificates, garbage frames, a torn or corrupt log on restart.

use std::sync::Arc;
use std::time::Duration;

use cluster_api::{framed, Client, ClientRequest, Endpoint};
use cluster_testkit::{kv_get, kv_set, TestCluster};
use cluster_tls::rustls::{ClientConfig, RootCertStore};
use cluster_tls::TlsFiles;
use futures::{SinkExt, StreamExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_certificate_from_the_cluster_ca_are_refused() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 111, 1);
    cluster.form().await;
    let address = cluster.nodes[0].address.clone();

    // The cluster's own admin certificate works.
    let admin = Endpoint::Tls { address: address.clone(), files: cluster.admin_files() };
    let mut client = Client::connect(&admin, Duration::from_secs(2)).await.unwrap();
    client.call(ClientRequest::KvSet { key: "a".into(), value: "1".into() }).await.unwrap();

    // A certificate from another CA, even one that trusts the cluster CA, is refused.
    let foreign = tempfile::tempdir().unwrap();
    cluster_tls::init_ca(foreign.path()).unwrap();
    cluster_tls::issue_certificate(foreign.path(), "admin", &[], &[]).unwrap();
    let files = TlsFiles {
        ca: cluster.pki.join("ca.crt"),
        cert: foreign.path().join("admin.crt"),
        key: foreign.path().join("admin.key"),
    };
    let refused = async {
        let mut client =
            Client::connect(&Endpoint::Tls { address: address.clone(), files }, Duration::from_secs(2)).await?;
        client.call(ClientRequest::KvGet { key: "a".into() }).await
    };
    let err = refused.await.expect_err("a foreign certificate must be refused");
    eprintln!("foreign certificate: {err}");

    // No client certificate at all.
    let mut roots = RootCertStore::empty();
    let ca = std::fs::read(cluster.pki.join("ca.crt")).unwrap();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(cluster_tls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
    let name = cluster_tls::server_name_for(&address).unwrap();
    // It may connect (a new node redeems its join token so), but any other request is refused
    // and the connection closed.
    let outcome = async {
        let tls = cluster_tls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
        let mut stream = framed(tls);
        let request = cluster_api::Request::Client {
            request: ClientRequest::KvSet { key: "a".into(), value: "2".into() },
            forwarded: false,
        };
        stream.send(cluster_api::encode(&request).unwrap()).await?;
        let answer = match stream.next().await {
            Some(Ok(frame)) => cluster_api::wire::decode_response(&frame).map_err(std::io::Error::other)?.1,
            Some(Err(err)) => return Err(err),
            None => return Err(std::io::Error::other("closed")),
        };
        let closed = stream.next().await.is_none_or(|frame| frame.is_err());
        Ok::<_, std::io::Error>((answer, closed))
    };
    match outcome.await {
        Err(err) => eprintln!("no certificate: {err}"),
        Ok((cluster_api::Response::Client(Err(err)), closed)) => {
            assert!(err.message.contains("may only redeem a join token"), "{}", err.message);
            assert!(closed, "the connection stays open after the refusal");
        }
        Ok(other) => panic!("a client without a certificate was served: {other:?}"),
    }
    assert_eq!(kv_get(&cluster.nodes[0].socket, "a").await.as_deref(), Some("1"), "nothing executed");

    // The node still serves its own clients.
    assert_eq!(kv_get(&cluster.nodes[0].socket, "a").await.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_close_one_connection_and_nothing_else() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 112, 1);
    cluster.form().await;
    let socket = cluster.nodes[0].socket.clone();
    kv_set(&socket, "kept", "yes").await;
    for garbage in [vec![0u8; 0], vec![1, 2, 3, 4, 5], vec![9; 100], vec![1, 0xff, 0xff, 0xff, 0xff, 0x0f]] {
        let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let mut stream = framed(stream);
        stream.send(bytes::Bytes::from(garbage)).await.unwrap();
        // The daemon answers with an error (or closes); it must not crash.
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.next()).await;
    }
    // A length prefix beyond the frame limit.
    let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    drop(raw);
    assert_eq!(kv_get(&socket, "kept").await.as_deref(), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_is_cut_and_the_node_catches_up() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 113, 3);
    cluster.form().await;
    let first = cluster.nodes[0].socket.clone();
    for i in 0..20 {
        kv_set(&first, &format!("k{i}"), "v").await;
    }
    cluster.stop(2);
    // A crash in the middle of an append leaves a partial record that was never acknowledged:
    // a header announcing 120 bytes and only 10 of them.
    let segment = segment_of(&cluster.nodes[2].data_dir);
    let mut torn = 120u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xab; 14]);
    std::io::Write::write_all(&mut std::fs::OpenOptions::new().append(true).open(&segment).unwrap(), &torn).unwrap();
    cluster.start(2);
    cluster_testkit::wait_for_socket(&cluster.nodes[2].socket).await;
    for i in 20..25 {
        kv_set(&first, &format!("k{i}"), "v").await;
    }
    let log = std::fs::read_to_string(&cluster.nodes[2].log).unwrap();
    assert!(log.contains("cut off a torn tail of the raft log"), "{log}");
    for i in 0..25 {
        assert_eq!(kv_get(&cluster.nodes[2].socket, &format!("k{i}")).await.as_deref(), Some("v"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_is_refused_with_a_clear_error() {
    let mut cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 114, 1);
    cluster.form().await;
    for i in 0..20 {
        kv_set(&cluster.nodes[0].socket, &format!("k{i}"), "value").await;
    }
    cluster.stop(0);
    let segment = segment_of(&cluster.nodes[0].data_dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.iter().rposition(|b| *b != 0).unwrap() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&segment, &bytes).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_clusterd"))
        .arg("--config")
        .arg(&cluster.nodes[0].config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is corrupt at offset"), "{stderr}");
    assert!(stderr.contains("Refusing to start"), "{stderr}");
    // The evidence is left as it was.
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);
}

fn segment_of(data_dir: &std::path::Path) -> std::path::PathBuf {
    let mut segments: Vec<_> =
        std::fs::read_dir(data_dir.join("raft/log")).unwrap().map(|entry| entry.unwrap().path()).collect();
    segments.sort();
    segments.pop().expect("a log segment")
}
