//! The HTTP listener of the node file's `metrics = "IP:PORT"`: Prometheus metrics at `/metrics`
//! and, with `status_page = true`, a read-only status page (`/`, `/app.js`, `/style.css`,
//! `/api/status`).
//!
//! hyper 1 (HTTP/1.1 server only), over plain TCP or, with `metrics_tls = true`, over TLS with a
//! client certificate of the cluster CA (the same verifier as the peer listener). GET and HEAD
//! only; nothing here changes the cluster. The page polls `/api/status` once a second.
//!
//! ```text
//!   GET /metrics     ──> Metrics::render (gauges built now, counters and histograms kept), as
//!                        OpenMetrics when asked for (Prometheus does), else the classic text format
//!   GET /            ──> page.html + app.js + style.css (no framework; textContent only; CSP 'self')
//!   GET /api/status  ──> `clusterctl status` (the leader's view when reachable) + the last events
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cluster_api::{ClientReply, ClientRequest, Request, Response as ApiResponse};
use cluster_raft::ConsensusNode;
use cluster_tls::rustls::ServerConfig;
use cluster_tls::TlsAcceptor;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::dispatch::Dispatcher;
use crate::engine::Engine;
use crate::metrics::{to_classic_text, Metrics};

const PAGE: &str = include_str!("web/page.html");
const SCRIPT: &str = include_str!("web/app.js");
const STYLE: &str = include_str!("web/style.css");
/// Connections served at once; more are closed at once (a scraper and a few browsers need few).
const MAX_CONNECTIONS: usize = 32;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Events the page shows.
const PAGE_EVENTS: usize = 50;

/// What the listener serves from.
pub(crate) struct Web {
    pub(crate) node: Arc<ConsensusNode>,
    pub(crate) engine: Arc<Engine>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) status_page: bool,
    /// Scrapes run one at a time (a slow `status` must not pile up renders).
    pub(crate) render: tokio::sync::Mutex<()>,
}

/// Binds the listener; failure names the address and the key.
pub(crate) async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address} (key `metrics`)"))
}

/// Accepts connections forever.
pub(crate) async fn serve(listener: TcpListener, tls: Option<Arc<ServerConfig>>, web: Arc<Web>) {
    let acceptor = tls.map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics listener: too many connections, closing");
            continue;
        };
        let web = web.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(tcp, web).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_connection(stream, web).await,
                    Ok(Err(err)) => tracing::debug!(%peer, error = %err, "metrics listener: refused tls connection"),
                    Err(_) => tracing::debug!(%peer, "metrics listener: tls handshake timed out"),
                },
            }
            drop(slot);
        });
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, web: Arc<Web>) {
    let service = hyper::service::service_fn(move |request| {
        let web = web.clone();
        async move { Ok::<_, Infallible>(route(&web, request).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = served {
        tracing::debug!(error = %err, "metrics listener: connection ended");
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

async fn route<B>(web: &Web, request: HttpRequest<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET and HEAD\n");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = match (request.uri().path(), web.status_page) {
        ("/metrics", _) => {
            // Prometheus asks for OpenMetrics; anything else gets the classic text format.
            let openmetrics = request
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .any(|accept| accept.to_str().is_ok_and(|accept| accept.contains("application/openmetrics-text")));
            let _one_at_a_time = web.render.lock().await;
            let text = web.metrics.render(&web.node, &web.engine).await;
            if openmetrics {
                respond(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text)
            } else {
                respond(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", to_classic_text(&text))
            }
        }
        ("/", true) => {
            let mut response = respond(StatusCode::OK, "text/html; charset=utf-8", PAGE);
            let policy = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
            response.headers_mut().insert("content-security-policy", HeaderValue::from_static(policy));
            response
        }
        ("/app.js", true) => respond(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT),
        ("/style.css", true) => respond(StatusCode::OK, "text/css; charset=utf-8", STYLE),
        ("/api/status", true) => respond(StatusCode::OK, "application/json", status_json(web).await.to_string()),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    if request.method() == Method::HEAD {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

/// What the page shows: the status as `clusterctl status` has it (the leader's view when one is
/// reachable), reduced to what the page needs (no package definitions: no parameters leave the
/// node this way), and the last events of the local replicated history.
async fn status_json(web: &Web) -> serde_json::Value {
    let request = Request::Client { request: ClientRequest::Status, forwarded: false };
    let status = match web.dispatcher.handle(request).await {
        ApiResponse::Client(Ok(ClientReply::Status(report))) => Ok(report),
        ApiResponse::Client(Err(err)) => Err(err.message),
        other => Err(format!("unexpected reply {other:?}")),
    };
    let events: Vec<cluster_model::Event> = web.node.read_local(|state| {
        state.events.iter().rev().take(PAGE_EVENTS).cloned().collect::<Vec<_>>().into_iter().rev().collect()
    });
    let served_by = web.node.me().name.clone();
    let now_ms = crate::engine::wall_ms();
    match status {
        Ok(report) => {
            let packages: Vec<serde_json::Value> = report
                .packages
                .iter()
                .map(|package| {
                    // An instance of a promotable package shows its role with the phase.
                    let phase = match (&package.def.promotable, &package.owner) {
                        (Some(_), Some(_)) => format!("{} ({})", package.phase.as_str(), package.role.as_str()),
                        _ => package.phase.as_str().to_owned(),
                    };
                    json!({
                        "name": package.key(),
                        "phase": phase,
                        "owner": package.owner,
                        "epoch": package.epoch,
                        "since_ms": package.since_ms,
                        "desired": package.desired,
                        "frozen": package.frozen,
                        "restarts": package.restarts,
                        "last_failure": package.last_failure.as_ref().map(|f| format!("{} on {}", f.reason, f.node)),
                    })
                })
                .collect();
            let nodes: Vec<serde_json::Value> = report
                .nodes
                .iter()
                .map(|node| {
                    json!({
                        "name": node.name,
                        "address": node.address,
                        "role": node.role,
                        "leader": report.leader.as_deref() == Some(node.name.as_str()),
                        "lease": node.lease,
                        "protection": node.protection,
                        "standby": node.standby,
                        "leaving": node.leaving,
                        "last_contact_ms": node.last_contact_ms,
                        "matched_index": node.matched_index,
                    })
                })
                .collect();
            json!({
                "served_by": served_by,
                "now_ms": now_ms,
                "reporter": report.reporter,
                "leader": report.leader,
                "term": report.term,
                "quorum": report.quorum,
                "commit_index": report.commit_index,
                "nodes": nodes,
                "packages": packages,
                "warnings": report.warnings,
                "events": events,
            })
        }
        Err(error) => json!({ "served_by": served_by, "now_ms": now_ms, "error": error, "events": events }),
    }
}
