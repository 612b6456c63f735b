//! Serves requests: peer RPCs go to Raft, client requests run here or are forwarded to the leader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_api::{ApiError, ClientReply, ClientRequest, ErrorKind, Request, Response};
use cluster_model::{validate_key, validate_value, Command, CommandOutcome};
use cluster_raft::{ConsensusError, ConsensusNode, ForwardError};

/// The request handler shared by every listener.
pub(crate) struct Dispatcher {
    pub(crate) node: Arc<ConsensusNode>,
}

fn api_error(err: ConsensusError) -> ApiError {
    let kind = match &err {
        ConsensusError::NotLeader { .. } => ErrorKind::NotLeader,
        ConsensusError::NoQuorum(_) => ErrorKind::NoLeader,
        ConsensusError::Invalid(_) => ErrorKind::Invalid,
        ConsensusError::Failed(_) | ConsensusError::Fatal(_) => ErrorKind::Failed,
    };
    ApiError::new(kind, err.to_string())
}

/// Whether repeating the request cannot change its effect (reads).
fn is_read(request: &ClientRequest) -> bool {
    matches!(
        request,
        ClientRequest::Status
            | ClientRequest::KvGet { .. }
            | ClientRequest::KvList { .. }
            | ClientRequest::SettingsGet
    )
}

impl Dispatcher {
    pub(crate) async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Peer(peer) => Response::Peer(self.node.handle_peer(peer).await),
            Request::Client { request, forwarded } => {
                Response::Client(self.client(request, forwarded).await)
            }
        }
    }

    /// Runs a client request here if this node can, else forwards it to the leader; while there is
    /// no leader it waits (up to the request timeout) for one to be elected.
    async fn client(
        &self,
        request: ClientRequest,
        forwarded: bool,
    ) -> Result<ClientReply, ApiError> {
        let deadline = Instant::now() + self.node.timing().request_timeout;
        loop {
            let leader = match self.execute(&request, forwarded).await {
                Err(Failure::Consensus(ConsensusError::NotLeader { leader, .. })) => leader,
                other => return other.map_err(ApiError::from),
            };
            let me = &self.node.me().name;
            if forwarded {
                return Err(ApiError::new(
                    ErrorKind::NotLeader,
                    format!("node {me} is not the leader"),
                ));
            }
            if let Some(leader) = leader.filter(|leader| &leader.name != me) {
                let forward = Request::Client {
                    request: request.clone(),
                    forwarded: true,
                };
                match self.node.forward(&leader.address, &forward).await {
                    Ok(Response::Client(Err(err))) if err.kind == ErrorKind::NotLeader => {}
                    Ok(Response::Client(result)) => return result,
                    Ok(Response::Peer(_)) => {
                        return Err(ApiError::new(ErrorKind::Failed, format!("leader {} sent a malformed reply", leader.name)))
                    }
                    Err(ForwardError::NotSent(_)) => {}
                    Err(ForwardError::Unknown(detail)) if !is_read(&request) => {
                        return Err(ApiError::new(
                            ErrorKind::Failed,
                            format!("lost the answer of leader {} ({detail}): the outcome of the request is unknown", leader.name),
                        ))
                    }
                    Err(ForwardError::Unknown(_)) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(ApiError::new(
                    ErrorKind::NoLeader,
                    format!(
                        "no leader reachable from node {me} within {:?}",
                        self.node.timing().request_timeout
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn execute(
        &self,
        request: &ClientRequest,
        forwarded: bool,
    ) -> Result<ClientReply, Failure> {
        let node = &self.node;
        let invalid = |err: cluster_model::InvalidInput| ConsensusError::Invalid(err.to_string());
        match request {
            ClientRequest::ClusterInit => {
                node.initialize().await?;
                Ok(ClientReply::Done {
                    message: format!("cluster initialized with node {}", node.me().name),
                })
            }
            ClientRequest::NodeAdd {
                name,
                address,
                learner,
            } => {
                node.add_node(name, address, *learner).await?;
                let role = if *learner { "learner" } else { "voter" };
                Ok(ClientReply::Done {
                    message: format!("node {name} added as a {role}"),
                })
            }
            ClientRequest::NodeRemove { name } => {
                node.remove_node(name).await?;
                Ok(ClientReply::Done {
                    message: format!("node {name} removed"),
                })
            }
            ClientRequest::NodePromote { name } => {
                node.promote(name).await?;
                Ok(ClientReply::Done {
                    message: format!("node {name} promoted to voter"),
                })
            }
            ClientRequest::TransferLeader { name } => {
                node.transfer_leader(name).await?;
                Ok(ClientReply::Done {
                    message: format!("node {name} is now the leader"),
                })
            }
            ClientRequest::Status => {
                let leader = node.leader().filter(|leader| leader.name != node.me().name);
                if let (Some(leader), false) = (leader, forwarded) {
                    let forward = Request::Client {
                        request: ClientRequest::Status,
                        forwarded: true,
                    };
                    if let Ok(Response::Client(Ok(reply))) =
                        node.forward(&leader.address, &forward).await
                    {
                        return Ok(reply);
                    }
                }
                Ok(ClientReply::Status(node.status().await))
            }
            ClientRequest::SettingsSet { name, value } => {
                // Check first so a typo is reported without touching the log.
                let mut trial = node.read_local(|state| state.settings.clone());
                trial
                    .set(name, value)
                    .map_err(|err| ConsensusError::Invalid(err.to_string()))?;
                match node
                    .write(Command::SetSetting {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .await?
                {
                    CommandOutcome::Rejected { reason } => {
                        Err(ConsensusError::Invalid(reason).into())
                    }
                    _ => Ok(ClientReply::Done {
                        message: format!("{name} = {value}"),
                    }),
                }
            }
            ClientRequest::SettingsGet => Ok(ClientReply::Settings {
                entries: node.read(|state| state.settings.list()).await?,
            }),
            ClientRequest::KvSet { key, value } => {
                validate_key(key).map_err(invalid)?;
                validate_value(key, value).map_err(invalid)?;
                node.write(Command::KvSet {
                    key: key.clone(),
                    value: value.clone(),
                })
                .await?;
                Ok(ClientReply::Done {
                    message: String::new(),
                })
            }
            ClientRequest::KvGet { key } => {
                validate_key(key).map_err(invalid)?;
                match node.read(|state| state.get(key).cloned()).await? {
                    Some(value) => Ok(ClientReply::Value {
                        key: key.clone(),
                        value,
                    }),
                    None => Err(not_found(key)),
                }
            }
            ClientRequest::KvCas { key, expected, new } => {
                validate_key(key).map_err(invalid)?;
                validate_value(key, new).map_err(invalid)?;
                let command = Command::KvCas {
                    key: key.clone(),
                    expected: expected.clone(),
                    new: new.clone(),
                };
                match node.write(command).await? {
                    CommandOutcome::CasMismatch { current } => Err(cas_mismatch(key, current)),
                    _ => Ok(ClientReply::Done {
                        message: String::new(),
                    }),
                }
            }
            ClientRequest::KvDel { key } => {
                validate_key(key).map_err(invalid)?;
                match node.write(Command::KvDel { key: key.clone() }).await? {
                    CommandOutcome::Deleted { existed: false } => Err(not_found(key)),
                    _ => Ok(ClientReply::Deleted {
                        key: key.clone(),
                        existed: true,
                    }),
                }
            }
            ClientRequest::KvList { prefix } => Ok(ClientReply::List {
                entries: node.read(|state| state.list(prefix)).await?,
            }),
        }
    }
}

fn not_found(key: &str) -> Failure {
    Failure::Api(ApiError::new(
        ErrorKind::NotFound,
        format!("key `{key}` not found"),
    ))
}

fn cas_mismatch(key: &str, current: Option<String>) -> Failure {
    let message = match &current {
        Some(value) => format!("compare-and-set of key `{key}` failed: its value is `{value}`"),
        None => format!("compare-and-set of key `{key}` failed: the key is absent"),
    };
    Failure::Api(ApiError {
        kind: ErrorKind::CasMismatch,
        message,
        current,
    })
}

/// Why `execute` did not produce a reply: a consensus failure (possibly "not the leader", which
/// leads to forwarding) or a definite answer for the client.
enum Failure {
    Consensus(ConsensusError),
    Api(ApiError),
}

impl From<ConsensusError> for Failure {
    fn from(err: ConsensusError) -> Self {
        Failure::Consensus(err)
    }
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Consensus(err) => api_error(err),
            Failure::Api(err) => err,
        }
    }
}
