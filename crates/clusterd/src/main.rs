//! `clusterd`: the node daemon. Composition root: reads the configuration, opens storage, starts
//! Raft, the listeners and the systemd integration.

mod alerts;
mod compat;
mod config;
mod diagnostics;
mod dispatch;
mod engine;
mod join;
mod logging;
mod metrics;
mod notify;
mod server;
mod upgrade;
mod web;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use cluster_raft::{ConsensusNode, NodeOptions};
use cluster_tls::TlsFiles;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

use crate::config::NodeConfig;
use crate::dispatch::Dispatcher;

/// The clusterd node daemon.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "clusterd failover cluster manager: the node daemon",
    long_about = "clusterd runs on every node of a cluster. It holds a member of the Raft quorum that keeps the \
cluster's replicated state (settings, nodes, packages, their owner and epoch, events, a key-value map), serves \
peers and remote clusterctl clients over mutual TLS and local ones over a root-only Unix socket, renews this \
node's lease, and starts, monitors and stops the packages this node owns through their resource agents. It is \
run by systemd (clusterd.service: Type=notify, WatchdogSec=, Delegate=yes); on SIGTERM it hands its packages \
over to other nodes before it exits. Operate the cluster with clusterctl(1)."
)]
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
    /// Write the man page clusterd.8, generated from these options, into DIR and exit (packaging).
    #[arg(long, hide = true, value_name = "DIR")]
    man_dir: Option<PathBuf>,
}

/// The sections of clusterd.8 that the option parser does not know.
const MAN_PAGE_END: &str = r#".SH FILES
.TP
/etc/clusterd/clusterd.toml
The node file (an example: /etc/clusterd/clusterd.toml.example).
.TP
/var/lib/clusterd
The Raft log, vote and snapshots (data_dir).
.TP
/run/clusterd/clusterd.sock
The local control socket used by clusterctl.
.SH SEE ALSO
clusterctl(1), systemd.service(5), /usr/share/doc/clusterd/
"#;

/// Writes DIR/clusterd.8 from the option parser itself, so that it never drifts from it.
fn write_man_page(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create man page directory {}", dir.display()))?;
    let path = dir.join("clusterd.8");
    let mut page = Vec::new();
    clap_mangen::Man::new(Args::command())
        .section("8")
        .source(format!("clusterd {}", env!("CARGO_PKG_VERSION")))
        .manual("clusterd")
        .render(&mut page)
        .with_context(|| format!("cannot render man page {}", path.display()))?;
    page.extend_from_slice(MAN_PAGE_END.as_bytes());
    std::fs::write(&path, page).with_context(|| format!("cannot write man page {}", path.display()))?;
    Ok(path)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.man_dir {
        return match write_man_page(dir) {
            Ok(path) => {
                println!("wrote {}", path.display());
                std::process::ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("clusterd: {err:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
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
    // Under systemd stderr goes to the journal (JOURNAL_STREAM is set), which stamps every line
    // itself and shows colour codes as text: plain lines without a time there.
    let to_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let to_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(to_terminal);
    let layer = if to_journal { layer.without_time().boxed() } else { layer.boxed() };
    tracing_subscriber::registry()
        .with(layer)
        .with(
            log_file.map(|file| tracing_subscriber::fmt::layer().with_writer(file).with_ansi(false).with_target(false)),
        )
        .with(filter)
        .with(logging::QuietUnreachable)
        .init();
    // Before any thread: one malloc arena (cluster_host::memory says why).
    cluster_host::single_malloc_arena();
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
    // The peer listener also serves connections without a client certificate (a node redeeming a
    // join token, nothing else) and refuses revoked certificates; the metrics listener does neither.
    let revocations = Arc::new(cluster_tls::Revocations::default());
    let identity = cluster_tls::Identity::load(&files).context("invalid [tls] section")?;
    let peer_tls = cluster_tls::node_server_config(&files, identity.clone(), revocations.clone())
        .context("invalid [tls] section")?;
    let server_tls = cluster_tls::server_config(&files).context("invalid [tls] section")?;
    // Towards peers this node presents its identity, which a renewal replaces in place.
    let client_tls = cluster_tls::node_client_config(&files, identity.clone()).context("invalid [tls] section")?;
    if let Some(ca_key) = &config.tls.ca_key {
        std::fs::metadata(ca_key)
            .with_context(|| format!("invalid [tls] section: key `ca_key`: cannot read {}", ca_key.display()))?;
    }
    if args.check {
        println!("configuration {} is valid", args.config.display());
        return Ok(());
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // The watchdog first: after a crash of the previous daemon its timer still runs, and must be
    // petted again before anything slow (opening the log, electing) if that daemon's lease runs.
    let watchdog = match &config.watchdog {
        Some(section) => Some(
            cluster_host::open_watchdog(&section.device)
                .with_context(|| format!("cannot open the watchdog {}", section.device))?,
        ),
        None => None,
    };
    engine::rearm_after_restart(&engine::runtime_dir(&config.socket), watchdog.as_ref());

    let node = ConsensusNode::start(NodeOptions {
        name: config.node.clone(),
        address: config.advertised_address(),
        data_dir: config.data_dir.clone(),
        tls: client_tls.clone(),
        timing: config.raft_timing().map_err(anyhow::Error::msg)?,
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
    // Under systemd (Delegate=yes) leave the service's cgroup to the units: the daemon goes to `daemon`.
    match cluster_host::enter_daemon_cgroup() {
        Ok(Some(leaf)) => tracing::info!(cgroup = %leaf.display(), "moved into the daemon's cgroup"),
        Ok(None) => {}
        Err(err) => tracing::warn!("{err}; units may not be adopted after a restart"),
    }
    let host = cluster_host::Host::linux(cluster_host::ProcessConfig {
        node: Some(config.node.clone()),
        ..cluster_host::ProcessConfig::default()
    });
    let witness = config.role == config::Role::Witness;
    let capacity = config.capacity().map_err(anyhow::Error::msg).context("invalid node file key `capacity`")?;
    let engine = engine::Engine::new(
        node.clone(),
        host,
        agents,
        watchdog,
        fencer,
        engine::runtime_dir(&config.socket),
        capacity,
        witness,
    );
    engine.start();
    diagnostics::init(diagnostics::Context {
        config_path: std::path::absolute(&args.config).unwrap_or_else(|_| args.config.clone()),
        log_file: config.log_file.clone(),
    });
    let versions = Arc::new(upgrade::Versions::default());
    tokio::spawn(upgrade::run(node.clone(), versions.clone()));
    let dispatcher = Arc::new(Dispatcher {
        node: node.clone(),
        engine: engine.clone(),
        versions,
        tls: files.clone(),
        ca_key: config.tls.ca_key.clone(),
        revocations: revocations.clone(),
        identity,
        client_tls: client_tls.clone(),
        renewing: tokio::sync::Mutex::new(()),
    });
    tokio::spawn(join::renew_before_expiry(dispatcher.clone()));
    tokio::spawn(join::follow_revocations(node.clone(), revocations));
    if let Some(server) = &config.join {
        tokio::spawn(join::ask_to_be_added(node.clone(), server.clone(), client_tls.clone(), witness));
    }
    let meter = metrics::RequestMeter(measured.then(|| metrics.clone()));
    tokio::spawn(server::serve_tcp(tcp, peer_tls, dispatcher.clone(), meter.clone()));
    tokio::spawn(server::serve_unix(unix, config.socket.clone(), dispatcher.clone(), meter));
    tokio::spawn(notify::watchdog_loop(node.clone()));
    tokio::spawn(release_free_memory());
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
    // A stopped Raft core is noticed within a second (its node stops renewing anyway, so its
    // lease runs out whatever this check does); a shorter period only wakes an idle daemon more.
    let mut health = tokio::time::interval(std::time::Duration::from_secs(1));
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

/// Every 10 s, gives the heap's free pages back to the system (what a burst of work freed stays in
/// malloc's heap otherwise: 2 MB on a leader of 50 nodes). The call takes well under a millisecond
/// on a daemon's heap, on the blocking pool.
async fn release_free_memory() {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        let _ = tokio::task::spawn_blocking(cluster_host::release_free_memory).await;
    }
}
