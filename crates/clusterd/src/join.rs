//! Join tokens on the daemon side: creating and revoking them, redeeming one for a new node
//! (signing its CSR with the CA key this node holds), keeping the listener's revocation list equal
//! to the applied state's, and a new node asking to be added once it runs.
//!
//! ```text
//!  clusterctl cluster token ──> leader: random secret, TokenCreate(sha256(secret), expiry) ──> token line
//!  clusterctl join ──TLS, no client cert (server checked against the token's CA fingerprint)──> member M
//!     M: token parses, is for this CA, name/address free, token open (applied state)
//!     M: signs the CSR for exactly NAME and IP with its CA key (no key: refused)
//!     M: TokenRedeem(hash, NAME, ADDRESS, fingerprint) through the leader; rejected ──> refused, nothing kept
//!     M ──> certificate, CA, members
//!  new clusterd (node file `join = "M"`), while not a member ──> NodeAdd(NAME, ADDRESS) to M, every 2 s
//!  every applied state ──> Revocations (fingerprints of removed nodes' certificates, their names)
//! ```

use std::sync::Arc;
use std::time::Duration;

use cluster_api::{ApiError, Client, ClientReply, ClientRequest, ErrorKind};
use cluster_model::{Command, CommandOutcome};
use cluster_raft::{ConsensusError, ConsensusNode};
use cluster_tls::join::{sign_node_request, JoinTokenText, NODE_CERTIFICATE_LIFETIME};

use crate::dispatch::{Dispatcher, Failure};
use crate::engine::wall_ms;

/// The longest lifetime of a join token.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a new node asks to be added, and how often the revocation list is refreshed.
const JOIN_RETRY: Duration = Duration::from_secs(2);
const REVOCATION_REFRESH: Duration = Duration::from_millis(200);
/// How often a node checks whether its certificate is due for renewal.
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);

fn invalid(message: impl Into<String>) -> Failure {
    Failure::Api(ApiError::new(ErrorKind::Invalid, message.into()))
}

fn failed(message: impl Into<String>) -> Failure {
    Failure::Api(ApiError::new(ErrorKind::Failed, message.into()))
}

/// Serves `cluster token`, `cluster token --revoke`, `join` and a member's renewal request.
pub(crate) async fn serve(dispatcher: &Dispatcher, request: &ClientRequest) -> Result<ClientReply, Failure> {
    match request {
        ClientRequest::TokenCreate { ttl_ms } => create(dispatcher, *ttl_ms).await,
        ClientRequest::TokenRevoke { token } => {
            let token = JoinTokenText::parse(token).map_err(invalid)?;
            let command = Command::TokenRevoke { hash: token.secret_hash(), at_ms: wall_ms() };
            dispatcher.write(command, "join token revoked".to_owned()).await
        }
        ClientRequest::Join { token, node, address, csr_pem } => {
            redeem(dispatcher, token, node, address, csr_pem).await
        }
        ClientRequest::CertSign { node, csr_pem } => {
            let issued = sign_renewal(dispatcher, node, csr_pem).await?;
            let ca_pem = std::fs::read_to_string(&dispatcher.tls.ca)
                .map_err(|err| failed(format!("cannot read the cluster CA {}: {err}", dispatcher.tls.ca.display())))?;
            let members = dispatcher.node.members().into_iter().map(|member| (member.name, member.address)).collect();
            Ok(ClientReply::Joined { cert_pem: issued.cert_pem, ca_pem, members })
        }
        other => unreachable!("join::serve called for {}", other.name()),
    }
}

async fn create(dispatcher: &Dispatcher, ttl_ms: u64) -> Result<ClientReply, Failure> {
    if ttl_ms == 0 || ttl_ms > MAX_TOKEN_TTL.as_millis() as u64 {
        return Err(invalid(format!(
            "join token lifetime {:?} out of range: expected more than 0 and at most {MAX_TOKEN_TTL:?}",
            Duration::from_millis(ttl_ms)
        )));
    }
    // Only the leader writes: elsewhere the request is forwarded before a secret is made.
    if dispatcher.node.leadership().is_none() {
        let node = &dispatcher.node;
        return Err(ConsensusError::NotLeader { me: node.me().name.clone(), leader: node.leader() }.into());
    }
    let fingerprint = cluster_tls::file_fingerprint(&dispatcher.tls.ca)
        .map_err(|err| failed(format!("cannot read the cluster CA: {err}")))?;
    let token = JoinTokenText::generate(&fingerprint).map_err(|err| failed(err.to_string()))?;
    let at_ms = wall_ms();
    let expires_ms = at_ms + ttl_ms;
    let command = Command::TokenCreate { hash: token.secret_hash(), expires_ms, at_ms };
    dispatcher.write(command, String::new()).await?;
    Ok(ClientReply::Token { token: token.to_string(), expires_ms })
}

async fn redeem(
    dispatcher: &Dispatcher,
    token: &str,
    name: &str,
    address: &str,
    csr_pem: &str,
) -> Result<ClientReply, Failure> {
    let node = &dispatcher.node;
    let token = JoinTokenText::parse(token).map_err(invalid)?;
    let ca_pem = std::fs::read_to_string(&dispatcher.tls.ca)
        .map_err(|err| failed(format!("cannot read the cluster CA {}: {err}", dispatcher.tls.ca.display())))?;
    let ours = cluster_tls::file_fingerprint(&dispatcher.tls.ca)
        .map_err(|err| failed(format!("cannot read the cluster CA: {err}")))?;
    if token.ca_fingerprint != ours {
        return Err(invalid(format!(
            "the join token is for another cluster: its CA fingerprint is {}, this cluster's is {ours}",
            token.ca_fingerprint
        )));
    }
    cluster_model::validate_node_name(name).map_err(|err| invalid(format!("node name: {err}")))?;
    let socket: std::net::SocketAddr =
        address.parse().map_err(|err| invalid(format!("node address `{address}`: expected IP:PORT ({err})")))?;
    if socket.ip().is_unspecified() || socket.port() == 0 {
        return Err(invalid(format!(
            "node address `{address}`: expected the address other nodes dial (not {}, not port 0)",
            socket.ip()
        )));
    }
    for member in node.members() {
        if member.name == name {
            return Err(invalid(format!("node name `{name}` is already in the cluster: choose another name")));
        }
        if member.address == address {
            return Err(invalid(format!("address {address} is already used by node `{}`", member.name)));
        }
    }
    let hash = token.secret_hash();
    let now = wall_ms();
    let refusal = node.read_local(|state| state.join.redeem_refusal(&hash, name, state.nodes.contains_key(name), now));
    if let Some(refusal) = refusal {
        return Err(invalid(refusal));
    }
    let Some(ca_key) = &dispatcher.ca_key else {
        return Err(invalid(format!(
            "node {} does not hold the CA key (`ca_key` in its [tls] table): redeem the token at a member that does",
            node.me().name
        )));
    };
    let issued = sign_node_request(
        &dispatcher.tls.ca,
        ca_key,
        csr_pem,
        name,
        socket.ip(),
        NODE_CERTIFICATE_LIFETIME,
        (now / 1000) as i64,
    )
    .map_err(|err| match err {
        cluster_tls::TlsError::Refused(why) => invalid(why),
        other => failed(format!("cannot sign the certificate of node `{name}`: {other}")),
    })?;
    // The token is spent (and the certificate recorded) before the certificate leaves this node:
    // a second redemption, here or elsewhere, is rejected when applied.
    let command = Command::TokenRedeem {
        hash,
        node: name.to_owned(),
        address: address.to_owned(),
        fingerprint: issued.info.fingerprint.clone(),
        at_ms: now,
    };
    match dispatcher.engine.propose(command).await {
        Ok(CommandOutcome::Rejected { reason }) => return Err(invalid(reason)),
        Ok(_) => {}
        Err(err) => return Err(failed(format!("cannot record the redemption of the join token: {err}"))),
    }
    tracing::info!(node = %name, %address, fingerprint = %issued.info.fingerprint, "join token redeemed");
    let members = node.members().into_iter().map(|member| (member.name, member.address)).collect();
    Ok(ClientReply::Joined { cert_pem: issued.cert_pem, ca_pem, members })
}

/// `clusterctl ca renew NODE`: served by NODE itself (forwarded there by any other member).
pub(crate) async fn serve_renew(
    dispatcher: &Dispatcher,
    target: &str,
    forwarded: bool,
) -> Result<ClientReply, Failure> {
    let node = &dispatcher.node;
    if target == node.me().name {
        return renew_own(dispatcher).await.map(|message| ClientReply::Done { message }).map_err(failed);
    }
    let Some(member) = node.members().into_iter().find(|member| member.name == target) else {
        return Err(invalid(format!("node `{target}` is not a member of the cluster")));
    };
    if forwarded {
        return Err(failed(format!("node {} is not `{target}`", node.me().name)));
    }
    let request =
        cluster_api::Request::Client { request: ClientRequest::CertRenew { node: target.to_owned() }, forwarded: true };
    match node.forward(&member.address, &request).await {
        Ok(cluster_api::Response::Client(result)) => result.map_err(Failure::Api),
        Ok(cluster_api::Response::Peer(_)) => Err(failed(format!("node {target} sent a malformed reply"))),
        Err(err) => Err(failed(format!("cannot reach node {target} at {}: {err:?}", member.address))),
    }
}

/// Signs a renewal for member `name` (its name and the IP of its address in the membership),
/// and records the new certificate.
async fn sign_renewal(
    dispatcher: &Dispatcher,
    name: &str,
    csr_pem: &str,
) -> Result<cluster_tls::join::Issued, Failure> {
    let node = &dispatcher.node;
    let Some(member) = node.members().into_iter().find(|member| member.name == name) else {
        return Err(invalid(format!("node `{name}` is not a member of the cluster: its certificate is not renewed")));
    };
    let ip = member.address.parse::<std::net::SocketAddr>().map(|address| address.ip()).map_err(|_| {
        invalid(format!("node `{name}` is dialled at {}, not IP:PORT: renew its certificate by hand", member.address))
    })?;
    let Some(ca_key) = &dispatcher.ca_key else {
        return Err(invalid(format!("node {} does not hold the CA key (`ca_key` in its [tls] table)", node.me().name)));
    };
    let now = wall_ms();
    let issued = sign_node_request(
        &dispatcher.tls.ca,
        ca_key,
        csr_pem,
        name,
        ip,
        NODE_CERTIFICATE_LIFETIME,
        (now / 1000) as i64,
    )
    .map_err(|err| match err {
        cluster_tls::TlsError::Refused(why) => invalid(why),
        other => failed(format!("cannot sign the certificate of node `{name}`: {other}")),
    })?;
    let command =
        Command::CertRenewed { node: name.to_owned(), fingerprint: issued.info.fingerprint.clone(), at_ms: now };
    match dispatcher.engine.propose(command).await {
        Ok(CommandOutcome::Rejected { reason }) => Err(invalid(reason)),
        Ok(_) => Ok(issued),
        Err(err) => Err(failed(format!("cannot record the renewed certificate of node `{name}`: {err}"))),
    }
}

/// Renews this node's certificate: a new key and CSR, signed here if this node holds the CA key,
/// else by the first member that does; the files are replaced and presented from the next
/// handshake on. The previous certificate stays valid until it expires.
pub(crate) async fn renew_own(dispatcher: &Dispatcher) -> Result<String, String> {
    let _one = dispatcher.renewing.lock().await;
    let node = &dispatcher.node;
    let me = node.me().clone();
    let ip = me.address.parse::<std::net::SocketAddr>().map(|address| address.ip()).map_err(|_| {
        format!("node {} is dialled at {}, not IP:PORT: renew its certificate by hand", me.name, me.address)
    })?;
    let request = cluster_tls::join::node_request(&me.name, ip).map_err(|err| err.to_string())?;
    let cert_pem =
        if dispatcher.ca_key.is_some() {
            sign_renewal(dispatcher, &me.name, &request.csr_pem)
                .await
                .map_err(|failure| ApiError::from(failure).message)?
                .cert_pem
        } else {
            let mut refusals = Vec::new();
            let mut signed = None;
            for member in node.members().into_iter().filter(|member| member.name != me.name) {
                let ask = ClientRequest::CertSign { node: me.name.clone(), csr_pem: request.csr_pem.clone() };
                let answer =
                    match Client::connect_with(&member.address, dispatcher.client_tls.clone(), Duration::from_secs(5))
                        .await
                    {
                        Ok(mut client) => client.call(ask).await.map_err(|err| err.to_string()),
                        Err(err) => Err(err.to_string()),
                    };
                match answer {
                    Ok(ClientReply::Joined { cert_pem, .. }) => {
                        signed = Some(cert_pem);
                        break;
                    }
                    Ok(other) => refusals.push(format!("{}: unexpected reply {other:?}", member.name)),
                    Err(err) => refusals.push(format!("{}: {err}", member.name)),
                }
            }
            signed
                .ok_or_else(|| format!("no member signed the renewal of node {}: {}", me.name, refusals.join("; ")))?
        };
    let info = cluster_tls::pem_cert_info(&cert_pem, "the renewed certificate")?;
    if info.common_name.as_deref() != Some(me.name.as_str())
        || cluster_tls::key_public_sha256(&request.key_pem)? != info.public_key_sha256
    {
        return Err(format!("the renewed certificate does not name node {} with its new key", me.name));
    }
    let files = &dispatcher.tls;
    cluster_tls::replace_file(&files.key, request.key_pem.as_bytes(), 0o600).map_err(|err| err.to_string())?;
    cluster_tls::replace_file(&files.cert, cert_pem.as_bytes(), 0o644).map_err(|err| err.to_string())?;
    dispatcher.identity.reload(files).map_err(|err| err.to_string())?;
    tracing::info!(fingerprint = %info.fingerprint, not_after = info.not_after_unix, "certificate renewed");
    Ok(format!(
        "certificate of node {} renewed: {} (valid until {} s after the Unix epoch), written to {}",
        me.name,
        info.fingerprint,
        info.not_after_unix,
        files.cert.display()
    ))
}

/// Whether a certificate valid from `not_before` to `not_after` (seconds) is renewed at `now`:
/// once less than a third of its validity is left.
pub(crate) fn renewal_due(not_before: i64, not_after: i64, now: i64) -> bool {
    let lifetime = not_after.saturating_sub(not_before).max(0);
    not_after.saturating_sub(now) < lifetime / 3
}

/// Renews this node's certificate automatically before it expires (checked hourly, from cluster
/// version 0.2.0 on).
pub(crate) async fn renew_before_expiry(dispatcher: Arc<Dispatcher>) {
    loop {
        tokio::time::sleep(RENEWAL_CHECK).await;
        if dispatcher.node.cluster_version() < cluster_model::ClusterVersion::V0_2 {
            continue;
        }
        let Ok(info) = cluster_tls::read_cert_info(&dispatcher.tls.cert) else { continue };
        let now = (wall_ms() / 1000) as i64;
        if renewal_due(info.not_before_unix, info.not_after_unix, now) {
            match renew_own(&dispatcher).await {
                Ok(message) => tracing::info!("{message}"),
                Err(err) => tracing::warn!(error = %err, "certificate renewal failed; retrying in an hour"),
            }
        }
    }
}

/// Keeps `revocations` equal to the applied state's list, for ever.
pub(crate) async fn follow_revocations(node: Arc<ConsensusNode>, revocations: Arc<cluster_tls::Revocations>) {
    let mut current = Default::default();
    loop {
        let applied = node.read_local(|state| (state.join.revoked.clone(), state.join.removed.clone()));
        if applied != current {
            current = applied;
            tracing::info!(
                certificates = current.0.len(),
                nodes = ?current.1,
                "certificate revocation list updated"
            );
            revocations.set(current.0.clone(), current.1.clone());
        }
        tokio::time::sleep(REVOCATION_REFRESH).await;
    }
}

/// A node that joined with a token: until it is a member, asks `server` to add it (learner, then
/// voter; a witness if its node file says so), with its own certificate.
pub(crate) async fn ask_to_be_added(
    node: Arc<ConsensusNode>,
    server: String,
    tls: Arc<cluster_tls::rustls::ClientConfig>,
    witness: bool,
) {
    let me = node.me().clone();
    let voter = |report: cluster_api::StatusReport| {
        report.nodes.iter().any(|member| member.name == me.name && member.role == cluster_api::NodeRole::Voter)
    };
    loop {
        if voter(node.status().await) {
            return;
        }
        let request =
            ClientRequest::NodeAdd { name: me.name.clone(), address: me.address.clone(), learner: false, witness };
        let timeout = Duration::from_secs(5);
        let answer = match Client::connect_with(&server, tls.clone(), timeout).await {
            Ok(mut client) => client.call(request).await.map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match answer {
            Ok(reply) => {
                tracing::info!(%server, ?reply, "added to the cluster");
                return;
            }
            Err(err) if err.contains("already exists") => return,
            Err(err) => tracing::warn!(%server, error = %err, "asking to be added to the cluster; retrying"),
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_renewed_once_a_third_of_its_validity_is_left() {
        let year = 365 * 24 * 3600;
        assert!(!renewal_due(0, year, 0));
        assert!(!renewal_due(0, year, year * 2 / 3 - 10));
        assert!(renewal_due(0, year, year * 2 / 3 + 10));
        assert!(renewal_due(0, year, year + 1), "an expired one too");
    }
}
