//! A 3-member etcd cluster on loopback, and a client speaking etcd's gRPC API over plain HTTP/2.
//!
//! ```text
//!  EtcdConnection ──h2c (prior knowledge), one TCP connection──> etcd member (client URL :2379)
//!     POST /etcdserverpb.KV/Put          PutRequest    -> PutResponse    (+ grpc-status trailer)
//!     POST /etcdserverpb.KV/Range        RangeRequest  -> RangeResponse  (linearizable)
//!     POST /etcdserverpb.Maintenance/Status  {}        -> StatusResponse (leader discovery)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::grpc::{self, MemberStatus};
use crate::processes::Processes;

const PUT: &str = "/etcdserverpb.KV/Put";
const RANGE: &str = "/etcdserverpb.KV/Range";
const STATUS: &str = "/etcdserverpb.Maintenance/Status";

/// Why one etcd call failed, and whether the connection is still usable.
#[derive(Debug)]
pub(crate) struct CallError {
    pub(crate) message: String,
    /// The HTTP/2 connection failed: reconnect before the next call.
    pub(crate) broken: bool,
}

impl CallError {
    fn broken(message: impl Into<String>) -> CallError {
        CallError { message: message.into(), broken: true }
    }

    fn refused(message: impl Into<String>) -> CallError {
        CallError { message: message.into(), broken: false }
    }
}

/// One HTTP/2 connection to one etcd member; calls on it are sequential.
pub(crate) struct EtcdConnection {
    address: SocketAddr,
    sender: h2::client::SendRequest<Bytes>,
    driver: JoinHandle<()>,
}

impl Drop for EtcdConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl EtcdConnection {
    /// Opens a plain-text HTTP/2 connection (no upgrade, prior knowledge) to a client URL.
    pub(crate) async fn connect(address: SocketAddr) -> anyhow::Result<EtcdConnection> {
        let tcp = TcpStream::connect(address)
            .await
            .with_context(|| format!("failed to connect to etcd member at {address}"))?;
        tcp.set_nodelay(true).ok();
        let (sender, connection) = h2::client::handshake(tcp)
            .await
            .with_context(|| format!("http/2 handshake with etcd member at {address} failed"))?;
        let driver = tokio::spawn(async move {
            // Errors surface on the calls; nothing to add here.
            let _ = connection.await;
        });
        Ok(EtcdConnection { address, sender, driver })
    }

    /// One unary gRPC call: sends `message`, returns the reply message.
    async fn unary(&mut self, path: &str, message: &[u8]) -> Result<Bytes, CallError> {
        let address = self.address;
        let h2_error = |what: &str, err: h2::Error| CallError::broken(format!("{what} {path} on {address}: {err}"));
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://{address}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|err| CallError::refused(format!("bad request {path}: {err}")))?;
        let mut sender = self.sender.clone().ready().await.map_err(|err| h2_error("cannot send", err))?;
        let (response, mut stream) = sender.send_request(request, false).map_err(|err| h2_error("cannot send", err))?;
        stream
            .send_data(Bytes::from(grpc::frame(message)), true)
            .map_err(|err| h2_error("cannot send body of", err))?;
        let response = response.await.map_err(|err| h2_error("no response to", err))?;
        let (head, mut body) = response.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(CallError::refused(format!("{path} on {address}: http status {}", head.status)));
        }
        // A "trailers-only" reply (errors) carries grpc-status in the headers.
        check_grpc_status(path, address, &head.headers)?;
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|err| h2_error("broken reply to", err))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(|err| h2_error("no trailers in reply to", err))?;
        match trailers {
            Some(trailers) => check_grpc_status(path, address, &trailers)?,
            None if head.headers.contains_key("grpc-status") => {}
            None => return Err(CallError::refused(format!("{path} on {address}: reply without grpc-status"))),
        }
        let message = grpc::unframe(&data).map_err(|err| CallError::refused(format!("{path} on {address}: {err}")))?;
        Ok(Bytes::copy_from_slice(message))
    }

    /// `KV/Put`.
    pub(crate) async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), CallError> {
        self.unary(PUT, &grpc::put_request(key, value)).await.map(drop)
    }

    /// `KV/Range` of one key (linearizable): its value, `None` if absent.
    pub(crate) async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, CallError> {
        let reply = self.unary(RANGE, &grpc::range_request(key)).await?;
        let values = grpc::range_values(&reply)
            .map_err(|err| CallError::refused(format!("range reply from {}: {err}", self.address)))?;
        Ok(values.into_iter().next())
    }

    /// `Maintenance/Status` of the member this connection goes to.
    pub(crate) async fn status(&mut self) -> Result<MemberStatus, CallError> {
        let reply = self.unary(STATUS, &[]).await?;
        grpc::status_response(&reply)
            .map_err(|err| CallError::refused(format!("status reply from {}: {err}", self.address)))
    }
}

fn check_grpc_status(path: &str, address: SocketAddr, headers: &http::HeaderMap) -> Result<(), CallError> {
    match headers.get("grpc-status").map(|value| value.to_str()) {
        None | Some(Ok("0")) => Ok(()),
        Some(status) => {
            let message = headers.get("grpc-message").and_then(|value| value.to_str().ok()).unwrap_or("");
            Err(CallError::refused(format!(
                "{path} on {address}: grpc-status {} {message}",
                status.unwrap_or("(not text)")
            )))
        }
    }
}

/// One etcd member.
pub(crate) struct EtcdMember {
    pub(crate) name: String,
    pub(crate) client_address: SocketAddr,
    pub(crate) pid: u32,
}

/// A running 3-member etcd cluster.
pub(crate) struct EtcdCluster {
    pub(crate) members: Vec<EtcdMember>,
    /// Index in `members` of the leader.
    pub(crate) leader: usize,
}

/// `etcd --version`'s first line.
pub(crate) fn version(etcd: &Path) -> anyhow::Result<String> {
    let output = Command::new(etcd)
        .arg("--version")
        .output()
        .with_context(|| format!("failed to run {} --version", etcd.display()))?;
    Ok(String::from_utf8_lossy(&output.stdout).lines().next().unwrap_or("unknown").to_owned())
}

/// Starts members `e1..e3` on `IP_PREFIX.21..23` (client port 2379, peer port 2380) with their data
/// in the scratch directory, and waits until they agree on a leader.
pub(crate) async fn start(
    processes: &mut Processes,
    etcd: &Path,
    ip_prefix: &str,
    timeout: Duration,
) -> anyhow::Result<EtcdCluster> {
    let base = processes.scratch().join("etcd");
    std::fs::create_dir_all(&base).with_context(|| format!("failed to create {}", base.display()))?;
    let names: Vec<String> = (1..=3).map(|index| format!("e{index}")).collect();
    let ip = |index: usize| format!("{ip_prefix}.{}", 21 + index);
    let initial_cluster = names
        .iter()
        .enumerate()
        .map(|(index, name)| format!("{name}=http://{}:2380", ip(index)))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let data_dir: PathBuf = base.join(name);
        let client_url = format!("http://{}:2379", ip(index));
        let peer_url = format!("http://{}:2380", ip(index));
        let mut command = Command::new(etcd);
        command
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", "clusterbench"])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        let log = base.join(format!("{name}.log"));
        let pid = processes.spawn(&format!("etcd member {name}"), command, &log)?;
        let client_address: SocketAddr = format!("{}:2379", ip(index))
            .parse()
            .with_context(|| format!("bad address for etcd member {name} from prefix {ip_prefix}"))?;
        members.push(EtcdMember { name: name.clone(), client_address, pid });
    }
    let leader = wait_for_leader(processes, &members, timeout).await?;
    Ok(EtcdCluster { members, leader })
}

/// Polls every member's status until all name the same leader; returns its index.
async fn wait_for_leader(
    processes: &mut Processes,
    members: &[EtcdMember],
    timeout: Duration,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut last_problem;
    loop {
        processes.check_alive()?;
        match statuses(members).await {
            Ok(statuses) => {
                let leader = statuses[0].leader;
                if leader != 0 && statuses.iter().all(|status| status.leader == leader) {
                    if let Some(index) = statuses.iter().position(|status| status.member_id == leader) {
                        return Ok(index);
                    }
                    last_problem = format!("leader {leader:x} is not one of the members");
                } else {
                    last_problem = format!("members disagree on the leader: {statuses:?}");
                }
            }
            Err(err) => last_problem = format!("{err:#}"),
        }
        if Instant::now() > deadline {
            bail!("etcd cluster has no leader after {timeout:?}: {last_problem}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn statuses(members: &[EtcdMember]) -> anyhow::Result<Vec<MemberStatus>> {
    let mut found = Vec::new();
    for member in members {
        let mut connection = EtcdConnection::connect(member.client_address).await?;
        let status = connection
            .status()
            .await
            .map_err(|err| anyhow::anyhow!("{}", err.message))
            .with_context(|| format!("status of etcd member {}", member.name))?;
        found.push(status);
    }
    Ok(found)
}

impl EtcdCluster {
    /// Fails if the leader changed since the cluster formed.
    pub(crate) async fn check_leader(&self) -> anyhow::Result<()> {
        let leader = &self.members[self.leader];
        let mut connection = EtcdConnection::connect(leader.client_address).await?;
        let status = connection
            .status()
            .await
            .map_err(|err| anyhow::anyhow!("{}", err.message))
            .with_context(|| format!("status of etcd member {}", leader.name))?;
        if status.member_id == 0 || status.leader != status.member_id {
            bail!("etcd leader moved away from {} during the benchmark (now {:x})", leader.name, status.leader);
        }
        Ok(())
    }
}
