//! A client connection to one `clusterd`, over its Unix socket or over mutual TLS.

use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::frame::{framed, FramedStream, PROTOCOL_V0_1, PROTOCOL_VERSION};
use crate::wire::{decode_response, encode_request, refused_protocol};
use crate::{ApiError, ClientReply, ClientRequest, ErrorKind, Request, Response};

/// Where to reach `clusterd`.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The local Unix socket (root only, no certificate).
    Unix(PathBuf),
    /// A remote node over TCP with mutual TLS.
    Tls { address: String, files: cluster_tls::TlsFiles },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tls { address, .. } => write!(f, "{address}"),
        }
    }
}

/// Transport failures and refusals by the server.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to clusterd at {endpoint}: {source}")]
    Connect { endpoint: String, source: std::io::Error },
    #[error("tls setup for {endpoint}: {source}")]
    Tls { endpoint: String, source: cluster_tls::TlsError },
    #[error("connection to {endpoint} failed: {detail}")]
    Transport { endpoint: String, detail: String },
    #[error("{0}")]
    Api(#[from] ApiError),
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An open connection; requests are answered in order.
///
/// A client made by [`Client::connect`] speaks this release's protocol and, when the node refuses
/// it (a v0.1.0 node, mid-upgrade), reconnects once and speaks v0.1.0's from then on; a request
/// v0.1.0 does not know is then refused with a message naming both releases. Peers choose their
/// protocol themselves ([`Client::set_protocol`]).
pub struct Client {
    endpoint: String,
    stream: FramedStream<Box<dyn Stream>>,
    protocol: u8,
    /// Where to reconnect when the node speaks only protocol 3, and within what time.
    fallback: Option<Box<(Endpoint, Duration)>>,
}

impl Client {
    /// Connects (and completes the TLS handshake) within `timeout`.
    pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Client, ClientError> {
        let name = endpoint.to_string();
        let connect = async {
            let stream: Box<dyn Stream> = match endpoint {
                Endpoint::Unix(path) => Box::new(
                    UnixStream::connect(path)
                        .await
                        .map_err(|source| ClientError::Connect { endpoint: name.clone(), source })?,
                ),
                Endpoint::Tls { address, files } => {
                    let config = cluster_tls::client_config(files)
                        .map_err(|source| ClientError::Tls { endpoint: name.clone(), source })?;
                    return Client::connect_with(address, config, timeout).await;
                }
            };
            Ok::<_, ClientError>(Client {
                endpoint: name.clone(),
                stream: framed(stream),
                protocol: PROTOCOL_VERSION,
                fallback: None,
            })
        };
        let mut client = tokio::time::timeout(timeout, connect).await.map_err(|_| ClientError::Connect {
            endpoint: name.clone(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}")),
        })??;
        client.fallback = Some(Box::new((endpoint.clone(), timeout)));
        Ok(client)
    }

    /// The protocol this client writes.
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// Writes `protocol` from now on (3 or 4), without falling back.
    pub fn set_protocol(&mut self, protocol: u8) {
        self.protocol = protocol;
        self.fallback = None;
    }

    /// Connects to a peer with an already built TLS configuration (node-to-node traffic).
    pub async fn connect_with(
        address: &str,
        config: std::sync::Arc<cluster_tls::rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let connect = async {
            let server_name = cluster_tls::server_name_for(address)
                .map_err(|source| ClientError::Tls { endpoint: address.to_owned(), source })?;
            let tcp = TcpStream::connect(address)
                .await
                .map_err(|source| ClientError::Connect { endpoint: address.to_owned(), source })?;
            tcp.set_nodelay(true).ok();
            let stream = cluster_tls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await
                .map_err(|source| ClientError::Connect { endpoint: address.to_owned(), source })?;
            Ok::<_, ClientError>(stream)
        };
        let stream = tokio::time::timeout(timeout, connect).await.map_err(|_| ClientError::Connect {
            endpoint: address.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}")),
        })??;
        Ok(Client {
            endpoint: address.to_owned(),
            stream: framed(Box::new(stream)),
            protocol: PROTOCOL_VERSION,
            fallback: None,
        })
    }

    /// Sends one request and waits for its reply.
    pub async fn call(&mut self, request: ClientRequest) -> Result<ClientReply, ClientError> {
        match self.round_trip(&Request::Client { request, forwarded: false }).await? {
            Response::Client(Ok(reply)) => Ok(reply),
            Response::Client(Err(err)) => Err(ClientError::Api(err)),
            Response::Peer(_) => Err(self.transport("peer reply to a client request")),
        }
    }

    /// Sends any request and returns the raw response (used for forwarding between nodes).
    pub async fn round_trip(&mut self, request: &Request) -> Result<Response, ClientError> {
        let (protocol, response) = self.exchange(request).await?;
        if protocol == self.protocol || !refused_protocol(protocol, &response) {
            return Ok(response);
        }
        let Some((endpoint, timeout)) = self.fallback.as_deref().cloned() else { return Ok(response) };
        // A v0.1.0 node refused this protocol before reading the request (nothing was executed)
        // and closed the connection: reconnect and speak its protocol from now on.
        let mut older = Client::connect(&endpoint, timeout).await?;
        older.set_protocol(PROTOCOL_V0_1);
        *self = older;
        Ok(self.exchange(request).await?.1)
    }

    async fn exchange(&mut self, request: &Request) -> Result<(u8, Response), ClientError> {
        let frame = encode_request(request, self.protocol).map_err(|err| {
            ClientError::Api(ApiError::new(
                ErrorKind::Invalid,
                format!(
                    "clusterd at {} runs {} (protocol {}): {err}; upgrade it first",
                    self.endpoint,
                    crate::protocol_release(self.protocol),
                    self.protocol
                ),
            ))
        })?;
        let sent = frame.len();
        self.stream.send(frame).await.map_err(|err| self.transport(err))?;
        let reply = match self.stream.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Err(self.transport(err)),
            None => return Err(self.transport("closed by the server")),
        };
        crate::frame::release_buffers(&mut self.stream, sent, reply.len());
        decode_response(&reply).map_err(|err| self.transport(err))
    }

    fn transport(&self, detail: impl std::fmt::Display) -> ClientError {
        ClientError::Transport { endpoint: self.endpoint.clone(), detail: detail.to_string() }
    }
}
