//! Listeners: TCP with mutual TLS (peers and remote clients) and the local Unix socket.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cluster_api::wire::{decode_request, encode_response};
use cluster_api::{framed, ApiError, ClientRequest, ErrorKind, Request, Response, PROTOCOL_V0_1};
use cluster_tls::rustls::ServerConfig;
use cluster_tls::TlsAcceptor;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::dispatch::Dispatcher;
use crate::metrics::{request_name, RequestMeter};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the TLS listener; failure names the address.
pub(crate) async fn bind_tcp(address: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))
}

/// Binds the Unix socket with mode 0600, replacing a stale socket file but never another file.
pub(crate) fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create socket directory {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))?
        }
        Ok(_) => anyhow::bail!("{} exists and is not a socket: refusing to replace it", path.display()),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to mode 0600", path.display()))?;
    Ok(listener)
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// The local socket (root only).
    Local,
    /// A certificate of the cluster CA: its fingerprint and common name, checked against the
    /// revocation list again on every request.
    Certified { fingerprint: String, common_name: Option<String> },
    /// No client certificate: a node redeeming a join token, which is all it may ask.
    Anonymous,
}

impl Caller {
    fn of_tls<T>(stream: &cluster_tls::ServerTlsStream<T>) -> Caller {
        match stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()) {
            Some(der) => match cluster_tls::cert_info(der) {
                Ok(info) => Caller::Certified { fingerprint: info.fingerprint, common_name: info.common_name },
                Err(_) => Caller::Certified { fingerprint: cluster_tls::fingerprint(der), common_name: None },
            },
            None => Caller::Anonymous,
        }
    }

    /// Why this caller may not send `request`, if it may not.
    fn refusal(&self, request: &Request, revocations: &cluster_tls::Revocations) -> Option<String> {
        match self {
            Caller::Local => None,
            Caller::Certified { fingerprint, common_name } => {
                if let Some(refused) = revocations.refuses(fingerprint, common_name.as_deref()) {
                    return Some(refused);
                }
                match request {
                    // Only a node renews its own certificate.
                    Request::Client { request: ClientRequest::CertSign { node, .. }, .. }
                        if common_name.as_deref() != Some(node.as_str()) =>
                    {
                        Some(format!(
                            "a certificate for node `{node}` is renewed only at the request of `{node}` itself, not \
                             of {}",
                            common_name.as_deref().map_or("a certificate without a name".to_owned(), |name| format!(
                                "`{name}`"
                            ))
                        ))
                    }
                    _ => None,
                }
            }
            Caller::Anonymous => match request {
                Request::Client { request: ClientRequest::Join { .. }, forwarded: false } => None,
                _ => Some(
                    "a connection without a client certificate of the cluster CA may only redeem a join token                      (`clusterctl join`)"
                        .to_owned(),
                ),
            },
        }
    }
}

/// Accepts TLS connections forever; a failed handshake (a certificate not from the cluster CA, or
/// a revoked one) closes that connection only.
pub(crate) async fn serve_tcp(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    dispatcher: Arc<Dispatcher>,
    meter: RequestMeter,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tcp.set_nodelay(true).ok();
        let acceptor = acceptor.clone();
        let dispatcher = dispatcher.clone();
        let meter = meter.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let caller = Caller::of_tls(&stream);
                    serve_connection(stream, &peer.to_string(), caller, dispatcher, meter).await
                }
                Ok(Err(err)) => tracing::warn!(%peer, error = %err, "refused tls connection"),
                Err(_) => tracing::warn!(%peer, "tls handshake timed out"),
            }
        });
    }
}

/// Accepts local connections forever.
pub(crate) async fn serve_unix(
    listener: UnixListener,
    path: PathBuf,
    dispatcher: Arc<Dispatcher>,
    meter: RequestMeter,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let dispatcher = dispatcher.clone();
                let name = path.display().to_string();
                let meter = meter.clone();
                tokio::spawn(async move { serve_connection(stream, &name, Caller::Local, dispatcher, meter).await });
            }
            Err(err) => {
                tracing::warn!(error = %err, "accept on {} failed", path.display());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Answers requests on one connection in order. A malformed frame gets an error reply and closes
/// the connection; nothing else is affected.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: &str,
    caller: Caller,
    dispatcher: Arc<Dispatcher>,
    meter: RequestMeter,
) {
    let mut stream = framed(stream);
    while let Some(frame) = stream.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Err(err) => {
                tracing::warn!(%peer, error = %err, "closing connection: unreadable frame");
                return;
            }
        };
        let received = frame.len();
        // Answered in the protocol it came in (v0.1.0's nodes and clients speak 3); a frame this
        // release cannot read is answered in 3, which every release reads.
        let (protocol, decoded) = match decode_request(&frame) {
            Ok((protocol, request)) => (protocol, Ok(request)),
            Err(err) => (PROTOCOL_V0_1, Err(err)),
        };
        let refused = decoded.as_ref().ok().and_then(|request| caller.refusal(request, &dispatcher.revocations));
        let (response, fatal) = match decoded {
            Ok(_) if refused.is_some() => {
                let why = refused.expect("checked");
                tracing::warn!(%peer, "closing connection: {why}");
                (Response::Client(Err(ApiError::new(ErrorKind::Invalid, why))), true)
            }
            Ok(request) => {
                // Client requests are counted and timed (metrics); peer RPCs are not.
                let client = match &request {
                    Request::Client { request, .. } => Some((request_name(request), std::time::Instant::now())),
                    Request::Peer(_) => None,
                };
                // Boxed: the handling of a request is a large future, and inline it would be part
                // of every idle connection's task (a leader holds one per peer).
                let response = Box::pin(dispatcher.handle(request)).await;
                if let Some((name, began)) = client {
                    meter.record(name, &response, began.elapsed());
                }
                (response, false)
            }
            Err(err) => {
                tracing::warn!(%peer, error = %err, "closing connection: malformed request");
                (Response::Client(Err(ApiError::new(ErrorKind::Invalid, format!("malformed request: {err}")))), true)
            }
        };
        let bytes = match encode_response(response, protocol) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::error!(%peer, error = %err, "cannot encode a response");
                return;
            }
        };
        let sent = bytes.len();
        if stream.send(bytes).await.is_err() || fatal {
            return;
        }
        cluster_api::release_buffers(&mut stream, sent, received);
    }
}
