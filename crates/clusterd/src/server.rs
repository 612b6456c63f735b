//! Listeners: TCP with mutual TLS (peers and remote clients) and the local Unix socket.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cluster_api::{decode, encode, framed, ApiError, ErrorKind, Request, Response};
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

/// Accepts TLS connections forever; a failed handshake (no certificate from the cluster CA)
/// closes that connection only.
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
                Ok(Ok(stream)) => serve_connection(stream, &peer.to_string(), dispatcher, meter).await,
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
                tokio::spawn(async move { serve_connection(stream, &name, dispatcher, meter).await });
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
        let (response, fatal) = match decode::<Request>(&frame) {
            Ok(request) => {
                // Client requests are counted and timed (metrics); peer RPCs are not.
                let client = match &request {
                    Request::Client { request, .. } => Some((request_name(request), std::time::Instant::now())),
                    Request::Peer(_) => None,
                };
                let response = dispatcher.handle(request).await;
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
        let bytes = match encode(&response) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::error!(%peer, error = %err, "cannot encode a response");
                return;
            }
        };
        if stream.send(bytes).await.is_err() || fatal {
            return;
        }
    }
}
