//! `clusterbench`: the key-value benchmark of a 3-node clusterd cluster against a 3-member etcd
//! cluster, both on loopback with fsync on, in the same run.
//!
//! ```text
//!  start clusterd n1..n3 and etcd e1..e3 ──> idle window (RSS, CPU) ──> preload get keys
//!    └─> for op in ops, for N in clients, for system in systems: N connections to the leader,
//!        closed loop, warm-up then measured window ──> table (markdown) and JSON ──> teardown
//! ```
//!
//! It builds nothing: it takes the paths of `clusterd`, `clusterctl` and `etcd`.

mod clusterd;
mod etcd;
mod grpc;
mod load;
mod processes;
mod procfs;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::Parser;

use crate::clusterd::{ClusterdCluster, Transport};
use crate::etcd::EtcdCluster;
use crate::load::{Op, Target};
use crate::processes::Processes;
use crate::procfs::CpuTimes;
use crate::stats::{Host, IdleRow, Machine, Report, Row, Settings, Version};

/// Key-value benchmark: clusterd against etcd, 3 nodes each on loopback.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// clusterd binary (default: next to clusterbench).
    #[arg(long, env = "CLUSTERD_BIN")]
    clusterd: Option<PathBuf>,
    /// clusterctl binary (default: next to clusterbench).
    #[arg(long, env = "CLUSTERCTL_BIN")]
    clusterctl: Option<PathBuf>,
    /// etcd binary (3.4).
    #[arg(long, env = "ETCD_BIN", default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Systems to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "clusterd,etcd")]
    systems: Vec<System>,
    /// Operations to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "set,get")]
    ops: Vec<Op>,
    /// Concurrent clients per point (one connection each), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Measured window per point [default: 10s; --quick: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Warm-up before each point's window, not measured [default: 2s; --quick: 200ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// Idle settling time, then idle measuring window, once the clusters formed [default: 10s;
    /// --quick: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    idle: Option<Duration>,
    /// Short points (CI): 1 s windows, 200 ms warm-up, 1 s idle.
    #[arg(long)]
    quick: bool,
    /// Bytes per value.
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    /// How benchmark clients reach the clusterd leader.
    #[arg(long, value_enum, default_value_t = Transport::Tls)]
    clusterd_transport: Transport,
    /// First three octets of the loopback addresses: clusterd on .11-.13, etcd on .21-.23.
    #[arg(long, default_value = "127.0.3")]
    ip_prefix: String,
    /// Where the scratch directory (data dirs, sockets, logs) goes [default: the temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Leave the scratch directory behind (its path is printed).
    #[arg(long)]
    keep: bool,
    /// Also write the report as JSON to this file (`-`: standard output, after the table).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Time allowed for each cluster to form.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    startup_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum System {
    Clusterd,
    Etcd,
}

impl Cli {
    fn duration(&self) -> Duration {
        self.duration.unwrap_or(if self.quick { Duration::from_secs(1) } else { Duration::from_secs(10) })
    }

    fn warmup(&self) -> Duration {
        self.warmup.unwrap_or(if self.quick { Duration::from_millis(200) } else { Duration::from_secs(2) })
    }

    fn idle(&self) -> Duration {
        self.idle.unwrap_or(if self.quick { Duration::from_secs(1) } else { Duration::from_secs(10) })
    }

    fn wants(&self, system: System) -> bool {
        self.systems.contains(&system)
    }

    /// Checks what clap cannot; returns the clusterd and clusterctl paths.
    fn validate(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        validate_ip_prefix(&self.ip_prefix)?;
        if self.clients.is_empty() || self.clients.contains(&0) {
            bail!("invalid --clients {:?}: expected positive counts", self.clients);
        }
        if self.systems.is_empty() || self.ops.is_empty() {
            bail!("nothing to measure: --systems and --ops must not be empty");
        }
        if self.value_size < 4 || self.value_size > 64 * 1024 {
            bail!("invalid --value-size {}: expected 4 to 65536 bytes", self.value_size);
        }
        let here = std::env::current_exe().context("failed to find the clusterbench executable")?;
        let clusterd = self.clusterd.clone().unwrap_or_else(|| here.with_file_name("clusterd"));
        let clusterctl = self.clusterctl.clone().unwrap_or_else(|| here.with_file_name("clusterctl"));
        if self.wants(System::Clusterd) {
            for binary in [&clusterd, &clusterctl] {
                if !binary.is_file() {
                    bail!(
                        "binary {} not found (cargo build --release -p clusterd -p clusterctl, or pass --clusterd/--clusterctl)",
                        binary.display()
                    );
                }
            }
        }
        if self.wants(System::Etcd) && !self.etcd.is_file() {
            bail!(
                "etcd binary {} not found (apt-get install etcd-server, or pass --etcd, or --systems clusterd)",
                self.etcd.display()
            );
        }
        Ok((clusterd, clusterctl))
    }
}

/// Accepts `127.A.B`: loopback only, so that no benchmark traffic leaves the machine.
fn validate_ip_prefix(prefix: &str) -> anyhow::Result<()> {
    let octets: Vec<&str> = prefix.split('.').collect();
    let valid = octets.len() == 3 && octets[0] == "127" && octets[1..].iter().all(|octet| octet.parse::<u8>().is_ok());
    if !valid {
        bail!("invalid --ip-prefix {prefix}: expected three octets of 127.0.0.0/8, like 127.0.3");
    }
    Ok(())
}

/// The clusters of one run.
#[derive(Default)]
struct Clusters {
    clusterd: Option<ClusterdCluster>,
    etcd: Option<EtcdCluster>,
}

impl Clusters {
    /// Every server process: (system, node, is leader, pid).
    fn servers(&self) -> Vec<(&'static str, String, bool, u32)> {
        let mut servers = Vec::new();
        if let Some(cluster) = &self.clusterd {
            for (index, node) in cluster.nodes.iter().enumerate() {
                servers.push(("clusterd", node.name.clone(), index == cluster.leader, node.pid));
            }
        }
        if let Some(cluster) = &self.etcd {
            for (index, member) in cluster.members.iter().enumerate() {
                servers.push(("etcd", member.name.clone(), index == cluster.leader, member.pid));
            }
        }
        servers
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("clusterbench: failed to start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The servers are spawned on this (main) thread: their parent-death signal is tied to it.
    match runtime.block_on(main_async(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("clusterbench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn main_async(cli: Cli) -> anyhow::Result<()> {
    let (clusterd_path, clusterctl_path) = cli.validate()?;
    let work_dir = cli.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut processes = Processes::new(&work_dir, cli.keep)?;
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let outcome = tokio::select! {
        outcome = run(&cli, &clusterd_path, &clusterctl_path, &mut processes) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (SIGINT)")),
        _ = terminate.recv() => Err(anyhow!("terminated (SIGTERM)")),
    };
    eprintln!("clusterbench: tearing down");
    let teardown = processes.teardown();
    let report = match (outcome, teardown) {
        (Ok(report), Ok(())) => report,
        (Ok(_), Err(teardown)) => return Err(teardown),
        (Err(err), Ok(())) => return Err(err),
        (Err(err), Err(teardown)) => return Err(err.context(format!("{teardown:#}"))),
    };
    print!("{}", report.markdown());
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report).context("failed to encode the report as json")?;
        if path == Path::new("-") {
            println!("{json}");
        } else {
            std::fs::write(path, json + "\n").with_context(|| format!("failed to write report {}", path.display()))?;
        }
    }
    Ok(())
}

async fn run(
    cli: &Cli,
    clusterd_path: &Path,
    clusterctl_path: &Path,
    processes: &mut Processes,
) -> anyhow::Result<Report> {
    let started_unix_secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_secs()).unwrap_or(0);
    let (cpu_model, cpus, kernel) = procfs::machine();
    let mut versions = Vec::new();
    let mut clusters = Clusters::default();
    if cli.wants(System::Clusterd) {
        versions.push(Version { system: "clusterd".to_owned(), version: clusterd::version(clusterd_path)? });
        eprintln!("clusterbench: starting clusterd on {}.11-13", cli.ip_prefix);
        let cluster = clusterd::start(processes, clusterd_path, clusterctl_path, &cli.ip_prefix, cli.startup_timeout)
            .await
            .context("failed to start the clusterd cluster")?;
        eprintln!("clusterbench: clusterd leader is {}", cluster.nodes[cluster.leader].name);
        clusters.clusterd = Some(cluster);
    }
    if cli.wants(System::Etcd) {
        versions.push(Version { system: "etcd".to_owned(), version: etcd::version(&cli.etcd)? });
        eprintln!("clusterbench: starting etcd on {}.21-23", cli.ip_prefix);
        let cluster = etcd::start(processes, &cli.etcd, &cli.ip_prefix, cli.startup_timeout)
            .await
            .context("failed to start the etcd cluster")?;
        eprintln!("clusterbench: etcd leader is {}", cluster.members[cluster.leader].name);
        clusters.etcd = Some(cluster);
    }

    let mut idle = measure_idle(&clusters, cli.idle()).await?;
    processes.check_alive()?;

    let value = "x".repeat(cli.value_size);
    let mut targets = Vec::new();
    if let Some(cluster) = &clusters.clusterd {
        targets.push(("clusterd", Target::Clusterd(cluster.leader_endpoint(cli.clusterd_transport))));
    }
    if let Some(cluster) = &clusters.etcd {
        let leader = &cluster.members[cluster.leader];
        targets.push(("etcd", Target::Etcd(leader.client_address)));
    }
    if cli.ops.contains(&Op::Get) {
        for (system, target) in &targets {
            load::preload(target, &value).await.with_context(|| format!("failed to preload {system}"))?;
        }
    }
    let mut rows = Vec::new();
    let mut aborted = None;
    'points: for &op in &cli.ops {
        for &clients in &cli.clients {
            for (system, target) in &targets {
                processes.check_alive()?;
                let load_average = procfs::load_average();
                let cpu_before = CpuTimes::now().ok();
                let measured = load::run_point(target, op, clients, cli.warmup(), cli.duration(), &value)
                    .await
                    .with_context(|| format!("{system} {} with {clients} clients failed", op.name()))?;
                let cpu_after = CpuTimes::now().ok();
                let (busy_percent, iowait_percent, steal_percent) = match (cpu_before, cpu_after) {
                    (Some(before), Some(after)) => {
                        let (busy, iowait, steal) = after.percent_since(&before);
                        (Some(busy), Some(iowait), Some(steal))
                    }
                    _ => (None, None, None),
                };
                let host = Host { load_average, busy_percent, iowait_percent, steal_percent };
                let row = Row::new(system, op.name(), clients, measured, host);
                eprintln!(
                    "clusterbench: {system} {} ×{clients}: {:.0} ops/s, p50 {:?} ms, p99 {:?} ms, {} errors",
                    op.name(),
                    row.ops_per_sec,
                    row.p50_ms,
                    row.p99_ms,
                    row.errors
                );
                rows.push(row);
                if let Err(err) = check_leaders(&clusters).await {
                    // Keep what was measured: a leader change under load is itself a result.
                    aborted = Some(format!("after {system} {} ×{clients}: {err:#}", op.name()));
                    break 'points;
                }
            }
        }
    }
    for (row, (_, _, _, pid)) in idle.iter_mut().zip(clusters.servers()) {
        row.rss_after_load_mib = Some(procfs::rss_kib(pid)? as f64 / 1024.0);
    }
    Ok(Report {
        started_unix_secs,
        machine: Machine { cpu_model, cpus, kernel },
        settings: Settings {
            duration_secs: cli.duration().as_secs_f64(),
            warmup_secs: cli.warmup().as_secs_f64(),
            clients: cli.clients.clone(),
            value_bytes: cli.value_size,
            clusterd_transport: match cli.clusterd_transport {
                Transport::Tls => "tcp + mutual tls".to_owned(),
                Transport::Unix => "the unix socket".to_owned(),
            },
        },
        versions,
        rows,
        idle,
        aborted,
    })
}

/// Fails if a leader changed; prints the end of clusterd's logs to stderr when it did.
async fn check_leaders(clusters: &Clusters) -> anyhow::Result<()> {
    if let Some(cluster) = &clusters.clusterd {
        if let Err(err) = cluster.check_leader().await {
            eprintln!("clusterbench: clusterd logs:\n{}", cluster.log_tails());
            return Err(err);
        }
    }
    if let Some(cluster) = &clusters.etcd {
        cluster.check_leader().await?;
    }
    Ok(())
}

/// Lets the clusters settle for `window`, then measures every server's CPU over another
/// `window` and its RSS at the end.
async fn measure_idle(clusters: &Clusters, window: Duration) -> anyhow::Result<Vec<IdleRow>> {
    eprintln!("clusterbench: idle for {window:?}, then measuring idle use for {window:?}");
    tokio::time::sleep(window).await;
    let servers = clusters.servers();
    let mut before = Vec::new();
    for (_, _, _, pid) in &servers {
        before.push(procfs::cpu_ticks(*pid)?);
    }
    let started = std::time::Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed().as_secs_f64();
    let ticks_per_second = procfs::clock_ticks_per_second() as f64;
    let mut rows = Vec::new();
    for ((system, node, leader, pid), before) in servers.into_iter().zip(before) {
        let used = procfs::cpu_ticks(pid)?.saturating_sub(before) as f64 / ticks_per_second;
        rows.push(IdleRow {
            system: system.to_owned(),
            node,
            pid,
            leader,
            idle_rss_mib: procfs::rss_kib(pid)? as f64 / 1024.0,
            idle_cpu_percent: 100.0 * used / elapsed,
            idle_window_secs: elapsed,
            rss_after_load_mib: None,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_prefix_must_be_loopback() {
        assert!(validate_ip_prefix("127.0.3").is_ok());
        assert!(validate_ip_prefix("127.255.0").is_ok());
        for bad in ["10.0.3", "127.0", "127.0.3.1", "127.0.300", "127.0.x"] {
            assert!(validate_ip_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quick_mode_shortens_every_window() {
        let cli = Cli::parse_from(["clusterbench", "--quick"]);
        assert_eq!(cli.duration(), Duration::from_secs(1));
        assert_eq!(cli.warmup(), Duration::from_millis(200));
        assert_eq!(cli.idle(), Duration::from_secs(1));
        let cli = Cli::parse_from(["clusterbench", "--quick", "--duration", "3s"]);
        assert_eq!(cli.duration(), Duration::from_secs(3));
        let cli = Cli::parse_from(["clusterbench", "--clients", "2,8", "--systems", "clusterd", "--ops", "get"]);
        assert_eq!(cli.clients, vec![2, 8]);
        assert_eq!(cli.systems, vec![System::Clusterd]);
        assert_eq!(cli.ops, vec![Op::Get]);
        assert_eq!(cli.duration(), Duration::from_secs(10));
    }
}
