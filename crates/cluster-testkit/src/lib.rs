//! Test harness shared by the end-to-end tests: real `clusterd` processes on loopback addresses,
//! driven through the client API. Not shipped; a dev-dependency only.

mod previous_release;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use previous_release::{previous_release, PreviousRelease, PREVIOUS_COMMIT, PREVIOUS_TAG};

use cluster_api::{Client, ClientReply, ClientRequest, Endpoint, Request, Response, StatusReport};
use cluster_tls::TlsFiles;

/// One node of a [`TestCluster`].
pub struct TestNode {
    pub name: String,
    pub address: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// Runs this binary instead of the cluster's (an older release, in the upgrade tests).
    pub binary: Option<PathBuf>,
}

/// Nodes `n1..nN` listening on `127.0.<subnet>.(10+i):7400`; every process is killed on drop.
pub struct TestCluster {
    pub clusterd: PathBuf,
    pub dir: tempfile::TempDir,
    pub pki: PathBuf,
    pub nodes: Vec<TestNode>,
}

impl TestCluster {
    /// Writes certificates and configs for `count` nodes; starts none.
    pub fn new(clusterd: impl Into<PathBuf>, subnet: u8, count: usize) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = dir.path().join("pki");
        cluster_tls::init_ca(&pki).expect("ca");
        cluster_tls::issue_certificate(&pki, "admin", &[], &[]).expect("admin cert");
        let mut cluster = TestCluster { clusterd: clusterd.into(), dir, pki, nodes: Vec::new() };
        for _ in 0..count {
            cluster.define_node(subnet);
        }
        cluster
    }

    /// Adds the configuration of one more node (not started, not a member).
    pub fn define_node(&mut self, subnet: u8) -> usize {
        let index = self.nodes.len() + 1;
        let name = format!("n{index}");
        let ip = format!("127.0.{subnet}.{}", 10 + index);
        cluster_tls::issue_certificate(&self.pki, &name, &[ip.parse().unwrap()], &[]).expect("node cert");
        let node_dir = self.dir.path().join(&name);
        std::fs::create_dir_all(&node_dir).unwrap();
        let config = node_dir.join("clusterd.toml");
        let socket = node_dir.join("clusterd.sock");
        let data_dir = node_dir.join("data");
        let address = format!("{ip}:7400");
        std::fs::write(
            &config,
            format!(
                "node = \"{name}\"\nlisten = \"{address}\"\ndata_dir = \"{}\"\nsocket = \"{}\"\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                data_dir.display(),
                socket.display(),
                self.pki.join("ca.crt").display(),
                self.pki.join(format!("{name}.crt")).display(),
                self.pki.join(format!("{name}.key")).display(),
            ),
        )
        .unwrap();
        let log = node_dir.join("clusterd.log");
        self.nodes.push(TestNode { name, address, config, socket, data_dir, log, child: None, binary: None });
        self.nodes.len() - 1
    }

    /// Adds `line` at the top of a node's configuration file (before its `[tls]` table).
    pub fn configure(&mut self, index: usize, line: &str) {
        let path = &self.nodes[index].config;
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, format!("{line}\n{text}")).unwrap();
    }

    pub fn start(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
        let child = Command::new(node.binary.as_ref().unwrap_or(&self.clusterd))
            .arg("--config")
            .arg(&node.config)
            .env("CLUSTERD_LOG", std::env::var("TEST_CLUSTERD_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn clusterd");
        node.child = Some(child);
    }

    pub fn start_all(&mut self) {
        for index in 0..self.nodes.len() {
            self.start(index);
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait, as `systemctl stop`.
    pub fn stop(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            signal(&child, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Forms the cluster: init on n1, then adds every other node as a voter.
    pub async fn form(&mut self) {
        self.start_all();
        for node in &self.nodes {
            wait_for_socket(&node.socket).await;
        }
        call(&self.nodes[0].socket, ClientRequest::ClusterInit).await.expect("cluster init");
        for node in self.nodes.iter().skip(1) {
            let request = ClientRequest::NodeAdd {
                name: node.name.clone(),
                address: node.address.clone(),
                learner: false,
                witness: false,
            };
            call(&self.nodes[0].socket, request).await.unwrap_or_else(|err| panic!("add {}: {err}", node.name));
        }
    }

    /// Waits until some running node reports a leader with a quorum; returns its name.
    pub async fn wait_leader(&self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                if let Ok(report) = local_status(&node.socket).await {
                    if let (Some(leader), true) = (&report.leader, report.quorum) {
                        if report.reporter == *leader {
                            return leader.clone();
                        }
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {limit:?}; logs:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, std::fs::read_to_string(&n.log).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn admin_files(&self) -> TlsFiles {
        TlsFiles { ca: self.pki.join("ca.crt"), cert: self.pki.join("admin.crt"), key: self.pki.join("admin.key") }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}

/// Sends `signal` to a child we own (by PID).
pub fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
}

pub async fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Client::connect(&Endpoint::Unix(path.to_owned()), Duration::from_secs(1)).await.is_err() {
        assert!(Instant::now() < deadline, "{} never came up", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request on a fresh connection to a node's socket.
pub async fn call(socket: &Path, request: ClientRequest) -> Result<ClientReply, cluster_api::ClientError> {
    let mut client = Client::connect(&Endpoint::Unix(socket.to_owned()), Duration::from_secs(2)).await?;
    client.call(request).await
}

/// The node's own view (the request is marked as forwarded, so it is not passed to the leader).
pub async fn local_status(socket: &Path) -> Result<StatusReport, String> {
    let mut client =
        Client::connect(&Endpoint::Unix(socket.to_owned()), Duration::from_secs(1)).await.map_err(|e| e.to_string())?;
    match client.round_trip(&Request::Client { request: ClientRequest::Status, forwarded: true }).await {
        Ok(Response::Client(Ok(ClientReply::Status(report)))) => Ok(report),
        other => Err(format!("{other:?}")),
    }
}

pub async fn kv_set(socket: &Path, key: &str, value: &str) {
    call(socket, ClientRequest::KvSet { key: key.into(), value: value.into() })
        .await
        .unwrap_or_else(|err| panic!("kv set {key}: {err}"));
}

pub async fn kv_get(socket: &Path, key: &str) -> Option<String> {
    match call(socket, ClientRequest::KvGet { key: key.into() }).await {
        Ok(ClientReply::Value { value, .. }) => Some(value),
        Err(cluster_api::ClientError::Api(err)) if err.kind == cluster_api::ErrorKind::NotFound => None,
        other => panic!("kv get {key}: {other:?}"),
    }
}
