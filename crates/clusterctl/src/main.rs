//! `clusterctl`: the operator CLI. Talks to the local `clusterd` over its Unix socket or to a
//! remote one over mutual TLS; never links the Raft, host or agent code.

mod join;
mod output;
mod report;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use cluster_api::{Client, ClientError, ClientReply, ClientRequest, Endpoint, ErrorKind};
use cluster_tls::TlsFiles;

use crate::output::Output;

/// Operate a clusterd cluster.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Operate a clusterd failover cluster",
    long_about = "clusterctl operates a clusterd cluster: certificates, membership, cluster settings, packages \
and the replicated key-value store. It talks to the clusterd of this host over its Unix socket (root only), or \
to any node over TCP with mutual TLS (--endpoint, --ca, --cert, --key); any node answers any command. Every \
command has --output json.",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct Connection {
    /// Local clusterd socket.
    #[arg(long, global = true, env = "CLUSTERCTL_SOCKET", default_value = "/run/clusterd/clusterd.sock")]
    socket: PathBuf,
    /// Remote clusterd HOST:PORT (mutual TLS; needs --ca, --cert and --key).
    #[arg(long, global = true, env = "CLUSTERCTL_ENDPOINT", requires_all = ["tls_ca", "tls_cert", "tls_key"])]
    endpoint: Option<String>,
    /// Cluster CA certificate (remote only).
    #[arg(id = "tls_ca", long = "ca", value_name = "FILE", global = true, env = "CLUSTERCTL_CA")]
    ca: Option<PathBuf>,
    /// Client certificate issued by the cluster CA (remote only).
    #[arg(id = "tls_cert", long = "cert", value_name = "FILE", global = true, env = "CLUSTERCTL_CERT")]
    cert: Option<PathBuf>,
    /// Client key (remote only).
    #[arg(id = "tls_key", long = "key", value_name = "FILE", global = true, env = "CLUSTERCTL_KEY")]
    key: Option<PathBuf>,
    /// Seconds to wait for a connection.
    #[arg(long, global = true, default_value_t = 5)]
    connect_timeout: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Cluster CA and certificates (offline, no daemon needed; `renew` asks the daemon).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Cluster-wide operations.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Membership.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Nodes, roles, leader, term, commit and applied index, last contact.
    Status,
    /// The replicated key-value store.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Packages.
    #[command(subcommand)]
    Pkg(PkgCommand),
    /// The event history (every transition with its reason).
    Events {
        /// Keep printing new events.
        #[arg(long)]
        follow: bool,
    },
    /// Join this machine to a cluster with a token from `clusterctl cluster token`: receives a
    /// certificate for exactly --node and the IP of --listen, writes the node file and keys (0600).
    Join(join::JoinArgs),
    /// Write a bug-report archive (OUTPUT.tar.gz): status, settings, events and package
    /// definitions as JSON, and from every node its node file, log and Raft view; secrets left out.
    Report {
        /// Only events and logs of this last period (e.g. `2h`, `30min`); everything when omitted.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// The archive to create (refused if it exists).
        #[arg(value_name = "OUTPUT.tar.gz")]
        archive: PathBuf,
    },
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (clusterctl.1 and clusterctl-COMMAND.1 for every command) into DIR.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PkgCommand {
    /// Check package files (or directories of *.toml) without a cluster; exit 1 on any error.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Validate, then load package definitions into the cluster (alias: init).
    #[command(alias = "init")]
    Apply {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Desired running (optionally on NODE, a one-shot intent).
    Run {
        name: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Desired stopped everywhere.
    Stop { name: String },
    /// Planned switchover to NODE (a one-shot intent that leaves no constraint behind).
    Move {
        name: String,
        #[arg(long)]
        to: String,
    },
    /// Maintenance: nothing is started, stopped or monitored.
    Freeze { name: String },
    /// End maintenance.
    Unfreeze { name: String },
    /// Forget failures, bans and a blocked state.
    Cleanup { name: String },
    /// Forget a stopped package.
    Remove { name: String },
    /// Every package with its owner and phase.
    List,
    /// Owner, phase, epoch, since, resources, restarts, last failure.
    Status { name: Option<String> },
    /// Where the package would go and why, in words.
    Plan { name: String },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create the cluster CA: DIR/ca.crt and DIR/ca.key.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue DIR/NAME.crt and DIR/NAME.key for a node or an admin client.
    Issue {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        /// IP address to put in the certificate (repeatable); peers dial nodes by these.
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// DNS name to put in the certificate (repeatable).
        #[arg(long = "dns")]
        dns: Vec<String>,
    },
    /// Renew the certificate of member NAME now (through the daemon: NAME makes a new key and a
    /// member holding the CA key signs it; nodes also renew by themselves before expiry).
    Renew { name: String },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Bootstrap a one-node cluster on the node this command talks to.
    Init,
    /// Hand leadership to NAME.
    TransferLeader { name: String },
    /// Change a cluster-wide setting.
    Set { name: String, value: String },
    /// Show the cluster-wide settings.
    Settings,
    /// Fence devices (fence-agents convention).
    #[command(subcommand)]
    Fence(FenceCommand),
    /// Alert hooks: programs the leader runs for events (docs/monitoring.md).
    #[command(subcommand)]
    Alert(AlertCommand),
    /// Print a single-use join token for `clusterctl join` (the CA's fingerprint and a secret; the
    /// cluster stores only the secret's hash), or revoke an unused one.
    Token {
        /// How long the token may be redeemed (at most 7 days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Revoke this unused token instead.
        #[arg(long, value_name = "TOKEN")]
        revoke: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AlertCommand {
    /// Run PATH (present on every node) for events of the given kinds; replaces PATH's settings.
    Add {
        /// Absolute path of the executable.
        path: String,
        /// Comma-separated kinds: failover, fence, blocked, failed, node-lost, package, node.
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// Kill the hook (its process group) after this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Handed to the hook as CLUSTER_ALERT_RECIPIENT (an address, a channel).
        #[arg(long)]
        recipient: Option<String>,
    },
    /// Stop running PATH.
    Remove { path: String },
    /// The configured hooks.
    List,
}

#[derive(Debug, Subcommand)]
enum FenceCommand {
    /// Set the fence device of NODE: an agent (e.g. fence_ipmilan) and its KEY=VALUE parameters.
    Set {
        node: String,
        agent: String,
        #[arg(value_parser = parse_key_value)]
        params: Vec<(String, String)>,
    },
    /// Remove the fence device of NODE.
    Remove { node: String },
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Add a node (learner first, then voter unless --learner).
    Add {
        name: String,
        /// HOST:PORT the node listens on.
        address: String,
        #[arg(long, conflicts_with = "witness")]
        learner: bool,
        /// A witness: a voter that never hosts packages (the third vote of a two-node site).
        #[arg(long)]
        witness: bool,
    },
    /// Remove a node (the leader hands over leadership first).
    Remove { name: String },
    /// Make a learner a voter.
    Promote { name: String },
    /// Drain a node: its packages move away and none is placed on it.
    Standby { name: String },
    /// Bring a node back from standby.
    Online { name: String },
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Store VALUE under KEY.
    Set { key: String, value: String },
    /// Print the value of KEY (exit 3 if absent).
    Get { key: String },
    /// Set KEY to NEW only if its value is EXPECTED (or absent with --absent); exit 4 otherwise.
    Cas {
        key: String,
        /// EXPECTED NEW, or NEW alone with --absent.
        #[arg(num_args = 1..=2, required = true)]
        values: Vec<String>,
        /// Create KEY only if it does not exist.
        #[arg(long)]
        absent: bool,
    },
    /// Delete KEY (exit 3 if absent).
    Del { key: String },
    /// List keys and values, optionally under PREFIX.
    List { prefix: Option<String> },
}

/// Documented exit codes (docs/cli.md).
pub(crate) mod exit {
    pub(crate) const ERROR: u8 = 1;
    pub(crate) const USAGE: u8 = 2;
    pub(crate) const NOT_FOUND: u8 = 3;
    pub(crate) const CAS_MISMATCH: u8 = 4;
    pub(crate) const NO_LEADER: u8 = 5;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output::new(cli.output == Format::Json);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return out.failure(exit::ERROR, &format!("cannot start the async runtime: {err}"), None),
    };
    runtime.block_on(run(cli, out))
}

async fn run(cli: Cli, mut out: Output) -> ExitCode {
    let request = match cli.command {
        Command::Ca(CaCommand::Renew { name }) => ClientRequest::CertRenew { node: name },
        Command::Ca(command) => {
            return match ca(command) {
                Ok(message) => out.done(&message),
                Err(err) => out.failure(exit::ERROR, &format!("{err:#}"), None),
            }
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "clusterctl", &mut script);
            return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => out.failure(exit::ERROR, &format!("cannot write the completion script: {err}"), None),
            };
        }
        Command::Man { dir } => {
            return match write_man_pages(&dir) {
                Ok(count) => out.done(&format!("wrote {count} man pages into {}", dir.display())),
                Err(err) => out.failure(exit::ERROR, &format!("{err:#}"), None),
            }
        }
        Command::Pkg(PkgCommand::Validate { paths }) => return validate_packages(&paths, &out),
        Command::Pkg(PkgCommand::Apply { paths }) => {
            let reports = cluster_package::validate_paths(&paths);
            if !cluster_package::all_valid(&reports) {
                return validate_packages(&paths, &out);
            }
            let packages = reports
                .into_iter()
                .filter_map(|report| match report.result {
                    cluster_package::FileResult::Valid(package) => Some(*package),
                    _ => None,
                })
                .collect();
            ClientRequest::PkgApply { packages }
        }
        Command::Pkg(PkgCommand::Run { name, node }) => ClientRequest::PkgRun { name, node },
        Command::Pkg(PkgCommand::Stop { name }) => ClientRequest::PkgStop { name },
        Command::Pkg(PkgCommand::Move { name, to }) => ClientRequest::PkgMove { name, to },
        Command::Pkg(PkgCommand::Freeze { name }) => ClientRequest::PkgFreeze { name, frozen: true },
        Command::Pkg(PkgCommand::Unfreeze { name }) => ClientRequest::PkgFreeze { name, frozen: false },
        Command::Pkg(PkgCommand::Cleanup { name }) => ClientRequest::PkgCleanup { name },
        Command::Pkg(PkgCommand::Remove { name }) => ClientRequest::PkgRemove { name },
        Command::Pkg(PkgCommand::List) => ClientRequest::PkgStatus { name: None },
        Command::Pkg(PkgCommand::Status { name }) => {
            out.set_detail(name.is_some());
            ClientRequest::PkgStatus { name }
        }
        Command::Pkg(PkgCommand::Plan { name }) => ClientRequest::PkgPlan { name },
        Command::Node(NodeCommand::Standby { name }) => ClientRequest::NodeStandby { name, standby: true },
        Command::Node(NodeCommand::Online { name }) => ClientRequest::NodeStandby { name, standby: false },
        Command::Cluster(ClusterCommand::Fence(FenceCommand::Set { node, agent, params })) => {
            ClientRequest::FenceSet { node, agent, params }
        }
        Command::Cluster(ClusterCommand::Fence(FenceCommand::Remove { node })) => ClientRequest::FenceRemove { node },
        Command::Cluster(ClusterCommand::Alert(AlertCommand::Add { path, events, timeout, recipient })) => {
            let hook = cluster_model::alerts::AlertHook { events, timeout_ms: timeout.as_millis() as u64, recipient };
            if let Err(err) = cluster_model::alerts::validate_hook(&path, &hook) {
                return out.failure(exit::USAGE, &err, None);
            }
            ClientRequest::AlertSet { path, hook: Some(hook) }
        }
        Command::Cluster(ClusterCommand::Alert(AlertCommand::Remove { path })) => {
            ClientRequest::AlertSet { path, hook: None }
        }
        Command::Cluster(ClusterCommand::Alert(AlertCommand::List)) => ClientRequest::AlertList,
        Command::Join(args) => {
            return match join::join(args, Duration::from_secs(cli.connection.connect_timeout)).await {
                Ok(message) => out.done(&message),
                Err(err) => out.failure(exit::ERROR, &format!("{err:#}"), None),
            }
        }
        Command::Cluster(ClusterCommand::Token { revoke: Some(token), .. }) => ClientRequest::TokenRevoke { token },
        Command::Cluster(ClusterCommand::Token { ttl, revoke: None }) => {
            ClientRequest::TokenCreate { ttl_ms: ttl.as_millis() as u64 }
        }
        Command::Report { since, archive } => {
            return match connect(&cli.connection).await {
                Ok(mut client) => report::write(&mut client, since, &archive, &out).await,
                Err(err) => out.failure(exit::ERROR, &err.to_string(), None),
            }
        }
        Command::Events { follow } => {
            return match connect(&cli.connection).await {
                Ok(mut client) => events(&mut client, follow, &out).await,
                Err(err) => out.failure(exit::ERROR, &err.to_string(), None),
            }
        }
        Command::Cluster(ClusterCommand::Init) => ClientRequest::ClusterInit,
        Command::Cluster(ClusterCommand::TransferLeader { name }) => ClientRequest::TransferLeader { name },
        Command::Cluster(ClusterCommand::Set { name, value }) => ClientRequest::SettingsSet { name, value },
        Command::Cluster(ClusterCommand::Settings) => ClientRequest::SettingsGet,
        Command::Node(NodeCommand::Add { name, address, learner, witness }) => {
            ClientRequest::NodeAdd { name, address, learner, witness }
        }
        Command::Node(NodeCommand::Remove { name }) => ClientRequest::NodeRemove { name },
        Command::Node(NodeCommand::Promote { name }) => ClientRequest::NodePromote { name },
        Command::Status => ClientRequest::Status,
        Command::Kv(KvCommand::Set { key, value }) => ClientRequest::KvSet { key, value },
        Command::Kv(KvCommand::Get { key }) => ClientRequest::KvGet { key },
        Command::Kv(KvCommand::Cas { key, mut values, absent }) => match (absent, values.len()) {
            (true, 1) => ClientRequest::KvCas { key, expected: None, new: values.remove(0) },
            (false, 2) => {
                let new = values.remove(1);
                ClientRequest::KvCas { key, expected: Some(values.remove(0)), new }
            }
            (true, _) => return out.failure(exit::USAGE, "kv cas --absent takes KEY NEW", None),
            (false, _) => return out.failure(exit::USAGE, "kv cas takes KEY EXPECTED NEW (or KEY --absent NEW)", None),
        },
        Command::Kv(KvCommand::Del { key }) => ClientRequest::KvDel { key },
        Command::Kv(KvCommand::List { prefix }) => ClientRequest::KvList { prefix: prefix.unwrap_or_default() },
    };
    let mut client = match connect(&cli.connection).await {
        Ok(client) => client,
        Err(err) => return out.failure(exit::ERROR, &err.to_string(), None),
    };
    match client.call(request).await {
        Ok(reply) => out.reply(&reply),
        Err(err) => failure(&out, err),
    }
}

fn failure(out: &Output, err: ClientError) -> ExitCode {
    match err {
        ClientError::Api(err) => {
            let code = match err.kind {
                ErrorKind::NotFound => exit::NOT_FOUND,
                ErrorKind::CasMismatch => exit::CAS_MISMATCH,
                ErrorKind::NoLeader | ErrorKind::NotLeader => exit::NO_LEADER,
                ErrorKind::Failed | ErrorKind::Invalid => exit::ERROR,
            };
            out.api_failure(code, &err)
        }
        err => out.failure(exit::ERROR, &err.to_string(), None),
    }
}

async fn connect(connection: &Connection) -> Result<Client, ClientError> {
    let endpoint = match (&connection.endpoint, &connection.ca, &connection.cert, &connection.key) {
        (Some(address), Some(ca), Some(cert), Some(key)) => Endpoint::Tls {
            address: address.clone(),
            files: TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() },
        },
        _ => Endpoint::Unix(connection.socket.clone()),
    };
    Client::connect(&endpoint, Duration::from_secs(connection.connect_timeout)).await
}

/// `events [--follow]`: the retained history, then (with --follow) new events as they come.
async fn events(client: &mut Client, follow: bool, out: &Output) -> ExitCode {
    let mut after = None;
    loop {
        match client.call(ClientRequest::Events { after }).await {
            Ok(ClientReply::Events { events }) => {
                for event in &events {
                    out.event(event);
                }
                after = events.last().map(|event| event.seq).or(after);
            }
            Ok(other) => return out.failure(exit::ERROR, &format!("unexpected reply {other:?}"), None),
            Err(err) => return failure(out, err),
        }
        if !follow {
            return ExitCode::SUCCESS;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `pkg validate`: every file's result, all errors of every file, then what the valid files get
/// wrong together (dependencies on packages no file defines, cycles, contradictions); exit 0 only
/// if all is valid.
fn validate_packages(paths: &[PathBuf], out: &Output) -> ExitCode {
    let reports = cluster_package::validate_paths(paths);
    let set_errors: Vec<String> = cluster_package::set_errors(&reports).iter().map(ToString::to_string).collect();
    let valid = cluster_package::all_valid(&reports) && set_errors.is_empty();
    if out.is_json() {
        let files: Vec<serde_json::Value> = reports
            .iter()
            .map(|report| match &report.result {
                cluster_package::FileResult::Valid(package) => serde_json::json!({
                    "path": report.path, "valid": true, "package": package.name
                }),
                _ => serde_json::json!({ "path": report.path, "valid": false, "errors": report.lines() }),
            })
            .collect();
        println!("{}", serde_json::json!({ "valid": valid, "files": files, "set_errors": set_errors }));
    } else {
        for report in &reports {
            for line in report.lines() {
                if matches!(report.result, cluster_package::FileResult::Valid(_)) {
                    println!("{line}");
                } else {
                    eprintln!("{line}");
                }
            }
        }
        for error in &set_errors {
            eprintln!("packages together: {error}");
        }
    }
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::ERROR)
    }
}

fn ca(command: CaCommand) -> anyhow::Result<String> {
    match command {
        CaCommand::Init { dir } => {
            let (cert, key) = cluster_tls::init_ca(&dir).context("cannot create the cluster CA")?;
            Ok(format!("created {} and {}", cert.display(), key.display()))
        }
        CaCommand::Issue { name, dir, ips, dns } => {
            cluster_model::validate_node_name(&name).map_err(anyhow::Error::msg)?;
            let (cert, key) = cluster_tls::issue_certificate(&dir, &name, &ips, &dns)
                .with_context(|| format!("cannot issue a certificate for {name}"))?;
            Ok(format!("created {} and {}", cert.display(), key.display()))
        }
        CaCommand::Renew { .. } => unreachable!("sent to the daemon"),
    }
}

/// The sections of clusterctl.1 that the parser does not know (the exit codes of the `exit` module).
const MAN_PAGE_END: &str = r#".SH EXIT STATUS
.TP
0
success
.TP
1
error (the message names the object: node, key, file, setting)
.TP
2
usage error (unknown command, missing or malformed argument)
.TP
3
key or package not found
.TP
4
compare\-and\-set mismatch (kv cas); the current value is printed on stdout
.TP
5
no leader or no quorum within the timeout; for a write the outcome is unknown
.SH FILES
.TP
/run/clusterd/clusterd.sock
The local clusterd's control socket (root only).
.SH SEE ALSO
clusterd(8), /usr/share/doc/clusterd/cli.md
"#;

/// Writes clusterctl.1 and one page per command (`clusterctl-pkg-apply.1`), generated from the parser
/// itself so that they never drift from it. Returns how many pages were written.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create man page directory {}", dir.display()))?;
    let mut command = Cli::command();
    command.build();
    let mut written = 0;
    write_man_page(dir, &command, &mut written)?;
    Ok(written)
}

fn write_man_page(dir: &std::path::Path, command: &clap::Command, written: &mut usize) -> anyhow::Result<()> {
    if command.is_hide_set() || command.get_name() == "help" {
        return Ok(());
    }
    let name = command.get_display_name().unwrap_or_else(|| command.get_name()).to_string();
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .title(name.to_uppercase())
        .section("1")
        .source(format!("clusterd {}", env!("CARGO_PKG_VERSION")))
        .manual("clusterd")
        .render(&mut page)
        .with_context(|| format!("cannot render man page {}", path.display()))?;
    if command.get_name() == "clusterctl" {
        page.extend_from_slice(MAN_PAGE_END.as_bytes());
    }
    std::fs::write(&path, page).with_context(|| format!("cannot write man page {}", path.display()))?;
    *written += 1;
    for subcommand in command.get_subcommands() {
        write_man_page(dir, subcommand, written)?;
    }
    Ok(())
}
