//! `clusterd`: the node daemon. Composition root: reads the configuration, opens storage, starts
//! Raft, the listeners and the systemd integration.

mod alerts;
mod config;
mod diagnostics;
mod dispatch;
mod engine;
mod metrics;
mod notify;
mod server;
mod web;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use cluster_raft::{ConsensusNode, NodeOptions, Timing};
use cluster_tls::TlsFiles;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

use crate::config::NodeConfig;
use crate::dispatch::Dispatcher;

/// The clusterd node daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Node configuration file.
    #[arg(long, default_value = "/etc/clusterd/clusterd.toml")]
    config: PathBuf,
    /// Check the configuration and certificates, then exit.
    #[arg(long)]
    check: bool,
    /// Log level: error, warn, info, debug or trace (also CLUSTERD_LOG).
    #[arg(long, env = "CLUSTERD_LOG", default_value = "info")]
    log_level: LevelFilter,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // The node file is read before logging starts: its `log_file` is where the log also goes.
    let config = NodeConfig::load(&args.config);
    let log_file = match config.as_ref().ok().and_then(|config| config.log_file.as_ref()) {
        Some(path) => match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => Some(std::sync::Mutex::new(file)),
            Err(err) => {
                eprintln!("clusterd: cannot open log_file {}: {err}", path.display());
                return std::process::ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let filter = Targets::new().with_default(args.log_level).with_target("openraft", LevelFilter::WARN);
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false))
        .with(
            log_file.map(|file| tracing_subscriber::fmt::layer().with_writer(file).with_ansi(false).with_target(false)),
        )
        .with(filter)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("clusterd: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("clusterd: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// How long a stopping daemon waits for its packages to be handed over or stopped; the unit's
/// `TimeoutStopSec=` (120 s) is longer, so systemd does not kill it meanwhile.
const LEAVE_LIMIT: std::time::Duration = std::time::Duration::from_secs(100);

async fn run(args: Args, config: anyhow::Result<NodeConfig>) -> anyhow::Result<()> {
    let config = config?;
    let files = TlsFiles { ca: config.tls.ca.clone(), cert: config.tls.cert.clone(), key: config.tls.key.clone() };
    let server_tls = cluster_tls::server_config(&files).context("invalid [tls] section")?;
    let client_tls = cluster_tls::client_config(&files).context("invalid [tls] section")?;
    if args.check {
        println!("configuration {} is valid", args.config.display());
        return Ok(());
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;

    let node = ConsensusNode::start(NodeOptions {
        name: config.node.clone(),
        address: config.advertised_address(),
        data_dir: config.data_dir.clone(),
        tls: client_tls,
        timing: Timing::default(),
    })
    .await
    .with_context(|| format!("cannot start node {} with data_dir {}", config.node, config.data_dir.display()))?;
    if let Some((path, offset, removed)) = &node.recovery().truncated_tail {
        tracing::warn!("recovered the raft log: cut {removed} torn bytes at offset {offset} of {}", path.display());
    }

    // Listen only once storage is open and Raft runs: a connection that succeeds is served.
    let tcp = server::bind_tcp(config.listen).await?;
    let unix = server::bind_unix(&config.socket)?;
    let http = match config.metrics {
        Some(address) => Some(web::bind(address).await?),
        None => None,
    };
    // Alert hooks count into it whatever the listener; the hot paths (requests, agent actions, the
    // watchdog, fences, applied events) are measured only when someone can scrape them.
    let metrics = metrics::Metrics::new();
    let measured = http.is_some();
    let watchdog = match &config.watchdog {
        Some(section) => Some(
            cluster_host::open_watchdog(&section.device)
                .with_context(|| format!("cannot open the watchdog {}", section.device))?,
        ),
        None => None,
    };
    let watchdog = watchdog.map(|device| if measured { metrics.metered_watchdog(device) } else { device });
    let fencer: Arc<dyn cluster_host::Fencer> = Arc::new(cluster_host::AgentFencer);
    let fencer = if measured { metrics.metered_fencer(fencer) } else { fencer };
    // Promotion scores of OCF agents (`crm_master`) land beside the socket, on the runtime
    // filesystem: like Pacemaker's `-l reboot` attributes they end with a reboot.
    let promotion_dir = config.socket.parent().unwrap_or(std::path::Path::new("/run/clusterd")).join("promotion");
    cluster_agents::promotion::install(&promotion_dir)
        .with_context(|| format!("cannot install the crm_master stand-in in {}", promotion_dir.display()))?;
    let agents = cluster_agents::AgentOptions {
        observer: measured.then(|| metrics.clone() as Arc<dyn cluster_agents::ActionObserver>),
        node: Some(config.node.clone()),
        promotion_dir: Some(promotion_dir),
        ..cluster_agents::AgentOptions::default()
    };
    let host = cluster_host::Host::linux(cluster_host::ProcessConfig::default());
    let capacity = config.capacity().map_err(anyhow::Error::msg).context("invalid node file key `capacity`")?;
    let engine = engine::Engine::new(node.clone(), host, agents, watchdog, fencer, capacity);
    engine.start();
    diagnostics::init(diagnostics::Context {
        config_path: std::path::absolute(&args.config).unwrap_or_else(|_| args.config.clone()),
        log_file: config.log_file.clone(),
    });
    let dispatcher = Arc::new(Dispatcher { node: node.clone(), engine: engine.clone() });
    let meter = metrics::RequestMeter(measured.then(|| metrics.clone()));
    tokio::spawn(server::serve_tcp(tcp, server_tls.clone(), dispatcher.clone(), meter.clone()));
    tokio::spawn(server::serve_unix(unix, config.socket.clone(), dispatcher.clone(), meter));
    tokio::spawn(notify::watchdog_loop(node.clone()));
    tokio::spawn(alerts::run(node.clone(), engine.clone(), metrics.clone()));
    if let Some(listener) = http {
        tokio::spawn(metrics::follow_events(node.clone(), metrics.clone()));
        let tls = config.metrics_tls.then(|| server_tls.clone());
        let status_page = config.status_page;
        let web = Arc::new(web::Web {
            node: node.clone(),
            engine: engine.clone(),
            dispatcher,
            metrics,
            status_page,
            render: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(web::serve(listener, tls, web));
        tracing::info!(metrics = ?config.metrics, tls = config.metrics_tls, status_page, "metrics listener serving");
    }
    tracing::info!(node = %config.node, listen = %config.listen, socket = %config.socket.display(), "clusterd serving");
    notify::ready(&format!("serving as node {}", config.node));

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let mut health = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = health.tick() => {
                if !node.healthy() {
                    notify::stopping();
                    let _ = std::fs::remove_file(&config.socket);
                    anyhow::bail!("raft core of node {} stopped; exiting so that systemd restarts the daemon", config.node);
                }
            }
        }
    }
    tracing::info!("stopping: handing this node's packages over");
    notify::stopping();
    engine.leave(LEAVE_LIMIT).await;
    node.shutdown().await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}
