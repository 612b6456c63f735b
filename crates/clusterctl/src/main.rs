//! `clusterctl`: the operator CLI. Talks to the local `clusterd` over its Unix socket or to a
//! remote one over mutual TLS; never links the Raft, host or agent code.

mod output;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use cluster_api::{Client, ClientError, ClientRequest, Endpoint, ErrorKind};
use cluster_tls::TlsFiles;

use crate::output::Output;

/// Operate a clusterd cluster.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
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
    #[arg(
        long,
        global = true,
        env = "CLUSTERCTL_SOCKET",
        default_value = "/run/clusterd/clusterd.sock"
    )]
    socket: PathBuf,
    /// Remote clusterd HOST:PORT (mutual TLS; needs --ca, --cert and --key).
    #[arg(long, global = true, env = "CLUSTERCTL_ENDPOINT", requires_all = ["tls_ca", "tls_cert", "tls_key"])]
    endpoint: Option<String>,
    /// Cluster CA certificate (remote only).
    #[arg(id = "tls_ca", long = "ca", global = true, env = "CLUSTERCTL_CA")]
    ca: Option<PathBuf>,
    /// Client certificate issued by the cluster CA (remote only).
    #[arg(id = "tls_cert", long = "cert", global = true, env = "CLUSTERCTL_CERT")]
    cert: Option<PathBuf>,
    /// Client key (remote only).
    #[arg(id = "tls_key", long = "key", global = true, env = "CLUSTERCTL_KEY")]
    key: Option<PathBuf>,
    /// Seconds to wait for a connection.
    #[arg(long, global = true, default_value_t = 5)]
    connect_timeout: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Cluster CA and certificates (offline, no daemon needed).
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
}

#[derive(Debug, Subcommand)]
enum PkgCommand {
    /// Check package files (or directories of *.toml) without a cluster; exit 1 on any error.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
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
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Add a node (learner first, then voter unless --learner).
    Add {
        name: String,
        /// HOST:PORT the node listens on.
        address: String,
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node (the leader hands over leadership first).
    Remove { name: String },
    /// Make a learner a voter.
    Promote { name: String },
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
mod exit {
    pub(crate) const ERROR: u8 = 1;
    pub(crate) const USAGE: u8 = 2;
    pub(crate) const NOT_FOUND: u8 = 3;
    pub(crate) const CAS_MISMATCH: u8 = 4;
    pub(crate) const NO_LEADER: u8 = 5;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output::new(cli.output == Format::Json);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return out.failure(
                exit::ERROR,
                &format!("cannot start the async runtime: {err}"),
                None,
            )
        }
    };
    runtime.block_on(run(cli, out))
}

async fn run(cli: Cli, out: Output) -> ExitCode {
    let request = match cli.command {
        Command::Ca(command) => {
            return match ca(command) {
                Ok(message) => out.done(&message),
                Err(err) => out.failure(exit::ERROR, &format!("{err:#}"), None),
            }
        }
        Command::Pkg(PkgCommand::Validate { paths }) => return validate_packages(&paths, &out),
        Command::Cluster(ClusterCommand::Init) => ClientRequest::ClusterInit,
        Command::Cluster(ClusterCommand::TransferLeader { name }) => {
            ClientRequest::TransferLeader { name }
        }
        Command::Cluster(ClusterCommand::Set { name, value }) => {
            ClientRequest::SettingsSet { name, value }
        }
        Command::Cluster(ClusterCommand::Settings) => ClientRequest::SettingsGet,
        Command::Node(NodeCommand::Add {
            name,
            address,
            learner,
        }) => ClientRequest::NodeAdd {
            name,
            address,
            learner,
        },
        Command::Node(NodeCommand::Remove { name }) => ClientRequest::NodeRemove { name },
        Command::Node(NodeCommand::Promote { name }) => ClientRequest::NodePromote { name },
        Command::Status => ClientRequest::Status,
        Command::Kv(KvCommand::Set { key, value }) => ClientRequest::KvSet { key, value },
        Command::Kv(KvCommand::Get { key }) => ClientRequest::KvGet { key },
        Command::Kv(KvCommand::Cas {
            key,
            mut values,
            absent,
        }) => match (absent, values.len()) {
            (true, 1) => ClientRequest::KvCas {
                key,
                expected: None,
                new: values.remove(0),
            },
            (false, 2) => {
                let new = values.remove(1);
                ClientRequest::KvCas {
                    key,
                    expected: Some(values.remove(0)),
                    new,
                }
            }
            (true, _) => return out.failure(exit::USAGE, "kv cas --absent takes KEY NEW", None),
            (false, _) => {
                return out.failure(
                    exit::USAGE,
                    "kv cas takes KEY EXPECTED NEW (or KEY --absent NEW)",
                    None,
                )
            }
        },
        Command::Kv(KvCommand::Del { key }) => ClientRequest::KvDel { key },
        Command::Kv(KvCommand::List { prefix }) => ClientRequest::KvList {
            prefix: prefix.unwrap_or_default(),
        },
    };
    let endpoint = match (
        &cli.connection.endpoint,
        &cli.connection.ca,
        &cli.connection.cert,
        &cli.connection.key,
    ) {
        (Some(address), Some(ca), Some(cert), Some(key)) => Endpoint::Tls {
            address: address.clone(),
            files: TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            },
        },
        _ => Endpoint::Unix(cli.connection.socket.clone()),
    };
    let timeout = Duration::from_secs(cli.connection.connect_timeout);
    let mut client = match Client::connect(&endpoint, timeout).await {
        Ok(client) => client,
        Err(err) => return out.failure(exit::ERROR, &err.to_string(), None),
    };
    match client.call(request).await {
        Ok(reply) => out.reply(&reply),
        Err(ClientError::Api(err)) => {
            let code = match err.kind {
                ErrorKind::NotFound => exit::NOT_FOUND,
                ErrorKind::CasMismatch => exit::CAS_MISMATCH,
                ErrorKind::NoLeader | ErrorKind::NotLeader => exit::NO_LEADER,
                ErrorKind::Failed | ErrorKind::Invalid => exit::ERROR,
            };
            out.api_failure(code, &err)
        }
        Err(err) => out.failure(exit::ERROR, &err.to_string(), None),
    }
}

/// `pkg validate`: every file's result, all errors of every file, exit 0 only if all are valid.
fn validate_packages(paths: &[PathBuf], out: &Output) -> ExitCode {
    let reports = cluster_package::validate_paths(paths);
    let valid = cluster_package::all_valid(&reports);
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
        println!("{}", serde_json::json!({ "valid": valid, "files": files }));
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
        CaCommand::Issue {
            name,
            dir,
            ips,
            dns,
        } => {
            cluster_model::validate_node_name(&name).map_err(anyhow::Error::msg)?;
            let (cert, key) = cluster_tls::issue_certificate(&dir, &name, &ips, &dns)
                .with_context(|| format!("cannot issue a certificate for {name}"))?;
            Ok(format!("created {} and {}", cert.display(), key.display()))
        }
    }
}
