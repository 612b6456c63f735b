//! A 3-node clusterd cluster on loopback, formed with `clusterctl` as an operator would.
//!
//! ```text
//!  clusterctl ca init / ca issue nI --ip / ca issue bench
//!  clusterd --config nI.toml            (x3, data and sockets in the scratch directory)
//!  clusterctl --socket S1 cluster init; node add n2 ADDR; node add n3 ADDR
//!  ClientRequest::Status until 3 voters and a leader with quorum
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cluster_api::{Client, ClientReply, ClientRequest, Endpoint, NodeRole, StatusReport};
use cluster_tls::TlsFiles;

use crate::processes::{log_tail, Processes};

/// The port every node listens on (each node has its own loopback address).
const PORT: u16 = 7400;

/// How benchmark clients reach the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Transport {
    /// TCP with mutual TLS, as a remote client.
    Tls,
    /// The leader's local Unix socket.
    Unix,
}

/// One clusterd node.
pub(crate) struct ClusterdNode {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) socket: PathBuf,
    pub(crate) pid: u32,
    log: PathBuf,
}

/// A running 3-node clusterd cluster.
pub(crate) struct ClusterdCluster {
    pub(crate) nodes: Vec<ClusterdNode>,
    /// Index in `nodes` of the leader.
    pub(crate) leader: usize,
    bench_files: TlsFiles,
}

impl ClusterdCluster {
    /// Where a benchmark client connects: the leader, over `transport`.
    pub(crate) fn leader_endpoint(&self, transport: Transport) -> Endpoint {
        let leader = &self.nodes[self.leader];
        match transport {
            Transport::Tls => Endpoint::Tls { address: leader.address.clone(), files: self.bench_files.clone() },
            Transport::Unix => Endpoint::Unix(leader.socket.clone()),
        }
    }

    /// Fails if the leader changed since the cluster formed (a benchmark on a follower would
    /// measure forwarding).
    pub(crate) async fn check_leader(&self) -> anyhow::Result<()> {
        let report = status(&Endpoint::Unix(self.nodes[self.leader].socket.clone())).await?;
        let expected = &self.nodes[self.leader].name;
        if report.leader.as_deref() != Some(expected.as_str()) {
            bail!("clusterd leader moved from {expected} to {:?} during the benchmark", report.leader);
        }
        Ok(())
    }

    /// The end of every node's log (for a failure report).
    pub(crate) fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("--- {} ---\n{}", node.log.display(), log_tail(&node.log, 10)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `clusterd --version`.
pub(crate) fn version(clusterd: &Path) -> anyhow::Result<String> {
    let output = Command::new(clusterd)
        .arg("--version")
        .output()
        .with_context(|| format!("failed to run {} --version", clusterd.display()))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Runs `clusterctl ARGS`, failing with its stderr.
async fn clusterctl(clusterctl: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(clusterctl)
        .args(args)
        .output()
        .await
        .with_context(|| format!("failed to run {} {}", clusterctl.display(), args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "clusterctl {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One `Status` request.
async fn status(endpoint: &Endpoint) -> anyhow::Result<StatusReport> {
    let mut client = Client::connect(endpoint, Duration::from_secs(2))
        .await
        .with_context(|| format!("failed to connect to clusterd at {endpoint}"))?;
    match client
        .call(ClientRequest::Status)
        .await
        .with_context(|| format!("status request to clusterd at {endpoint} failed"))?
    {
        ClientReply::Status(report) => Ok(report),
        other => bail!("unexpected reply to status from clusterd at {endpoint}: {other:?}"),
    }
}

/// Creates the CA and certificates, starts nodes `n1..n3` on `IP_PREFIX.11..13:7400`, forms the
/// cluster and waits until it has three voters and a leader.
pub(crate) async fn start(
    processes: &mut Processes,
    clusterd: &Path,
    clusterctl_path: &Path,
    ip_prefix: &str,
    timeout: Duration,
) -> anyhow::Result<ClusterdCluster> {
    let base = processes.scratch().join("clusterd");
    let ca_dir = base.join("ca");
    std::fs::create_dir_all(&ca_dir).with_context(|| format!("failed to create {}", ca_dir.display()))?;
    let ca = ca_dir.to_str().context("scratch path is not utf-8")?.to_owned();
    clusterctl(clusterctl_path, &["ca", "init", "--dir", &ca]).await?;
    let names: Vec<String> = (1..=3).map(|index| format!("n{index}")).collect();
    let ip = |index: usize| format!("{ip_prefix}.{}", 11 + index);
    let mut nodes = Vec::new();
    for (index, name) in names.iter().enumerate() {
        clusterctl(clusterctl_path, &["ca", "issue", name, "--dir", &ca, "--ip", &ip(index)]).await?;
        let node_dir = base.join(name);
        let data_dir = node_dir.join("data");
        std::fs::create_dir_all(&data_dir).with_context(|| format!("failed to create {}", data_dir.display()))?;
        let socket = node_dir.join("clusterd.sock");
        let address = format!("{}:{PORT}", ip(index));
        let config = format!(
            "node = \"{name}\"\nlisten = \"{address}\"\ndata_dir = \"{}\"\nsocket = \"{}\"\n\n[tls]\nca = \"{ca}/ca.crt\"\ncert = \"{ca}/{name}.crt\"\nkey = \"{ca}/{name}.key\"\n",
            data_dir.display(),
            socket.display(),
        );
        let config_path = node_dir.join("clusterd.toml");
        std::fs::write(&config_path, config).with_context(|| format!("failed to write {}", config_path.display()))?;
        let mut command = Command::new(clusterd);
        command.arg("--config").arg(&config_path);
        let log = node_dir.join("clusterd.log");
        let pid = processes.spawn(&format!("clusterd node {name}"), command, &log)?;
        nodes.push(ClusterdNode { name: name.clone(), address, socket, pid, log });
    }
    clusterctl(clusterctl_path, &["ca", "issue", "bench", "--dir", &ca]).await?;
    let deadline = Instant::now() + timeout;
    for node in &nodes {
        wait_for_socket(processes, node, deadline).await?;
    }
    let first_socket = nodes[0].socket.to_str().context("scratch path is not utf-8")?.to_owned();
    clusterctl(clusterctl_path, &["--socket", &first_socket, "cluster", "init"]).await?;
    for node in &nodes[1..] {
        clusterctl(clusterctl_path, &["--socket", &first_socket, "node", "add", &node.name, &node.address]).await?;
    }
    let leader_name = wait_for_voters(processes, &nodes, deadline).await?;
    let leader = nodes
        .iter()
        .position(|node| node.name == leader_name)
        .with_context(|| format!("clusterd leader {leader_name} is not one of the nodes"))?;
    Ok(ClusterdCluster {
        nodes,
        leader,
        bench_files: TlsFiles {
            ca: ca_dir.join("ca.crt"),
            cert: ca_dir.join("bench.crt"),
            key: ca_dir.join("bench.key"),
        },
    })
}

async fn wait_for_socket(processes: &mut Processes, node: &ClusterdNode, deadline: Instant) -> anyhow::Result<()> {
    loop {
        processes.check_alive()?;
        let problem = match status(&Endpoint::Unix(node.socket.clone())).await {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        if Instant::now() > deadline {
            return Err(problem).with_context(|| format!("clusterd node {} never served its socket", node.name));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the leader (as named by node `n1`) reports three voters and a quorum; returns
/// the leader's name.
async fn wait_for_voters(
    processes: &mut Processes,
    nodes: &[ClusterdNode],
    deadline: Instant,
) -> anyhow::Result<String> {
    loop {
        processes.check_alive()?;
        let problem = match leader_view(nodes).await {
            Ok(report) => {
                let voters = report.nodes.iter().filter(|node| node.role == NodeRole::Voter).count();
                match &report.leader {
                    Some(leader) if voters == nodes.len() && report.quorum => return Ok(leader.clone()),
                    _ => format!("{voters} voters, leader {:?}, quorum {}", report.leader, report.quorum),
                }
            }
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() > deadline {
            bail!("clusterd cluster did not form: {problem}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status report of the leader that node `n1` knows of (n1's own if it knows none).
async fn leader_view(nodes: &[ClusterdNode]) -> anyhow::Result<StatusReport> {
    let report = status(&Endpoint::Unix(nodes[0].socket.clone())).await?;
    let leader = report.leader.as_ref().and_then(|leader| nodes.iter().find(|node| &node.name == leader));
    match leader {
        Some(leader) if leader.name != report.reporter => status(&Endpoint::Unix(leader.socket.clone())).await,
        _ => Ok(report),
    }
}
