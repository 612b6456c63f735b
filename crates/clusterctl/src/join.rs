//! `clusterctl join`: a new machine redeems a join token for its node certificate and writes its
//! node file, without any key copied by hand.
//!
//! ```text
//!  token ──> CA fingerprint + secret
//!  new key + CSR(NAME, IP of --listen) ──TLS to --server, trusted only if it presents that CA──> Join
//!  <── certificate (checked: NAME, this key, that CA) ──> DIR/ca.crt, DIR/NAME.crt, DIR/NAME.key (0600),
//!      DIR/clusterd.toml (0600, `join = SERVER`: the daemon asks to be added once started)
//! ```
//!
//! Nothing is written before the cluster answered, and existing files are never replaced.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use cluster_api::{Client, ClientReply, ClientRequest};
use cluster_tls::join::{join_client_config, node_request, JoinTokenText};

/// What `clusterctl join` was asked.
#[derive(Debug, clap::Args)]
pub(crate) struct JoinArgs {
    /// The token printed by `clusterctl cluster token` on a member.
    #[arg(long)]
    token: String,
    /// HOST:PORT of a member holding the CA key (`ca_key` in its node file).
    #[arg(long)]
    server: String,
    /// This node's name.
    #[arg(long)]
    node: String,
    /// IP:PORT this node listens on (and other nodes dial): its certificate names this IP.
    #[arg(long)]
    listen: SocketAddr,
    /// Where to write ca.crt, NODE.crt, NODE.key and clusterd.toml.
    #[arg(long, default_value = "/etc/clusterd")]
    dir: PathBuf,
    /// `data_dir` of the node file.
    #[arg(long, default_value = "/var/lib/clusterd")]
    data_dir: PathBuf,
    /// `socket` of the node file (the default socket when omitted).
    #[arg(long)]
    daemon_socket: Option<PathBuf>,
    /// Join as a witness (a voter that never hosts packages).
    #[arg(long)]
    witness: bool,
}

/// Redeems the token and writes the files; returns what was done.
pub(crate) async fn join(args: JoinArgs, timeout: Duration) -> anyhow::Result<String> {
    let token = JoinTokenText::parse(&args.token).map_err(anyhow::Error::msg)?;
    cluster_model::validate_node_name(&args.node).map_err(|err| anyhow::anyhow!("--node: {err}"))?;
    if args.listen.ip().is_unspecified() || args.listen.port() == 0 {
        bail!("--listen {}: expected the address other nodes dial (a concrete IP and a fixed port)", args.listen);
    }
    if !args.data_dir.is_absolute() {
        bail!("--data-dir {}: expected an absolute path", args.data_dir.display());
    }
    let dir = std::path::absolute(&args.dir).with_context(|| format!("--dir {}", args.dir.display()))?;
    let ca = dir.join("ca.crt");
    let cert = dir.join(format!("{}.crt", args.node));
    let key = dir.join(format!("{}.key", args.node));
    let config = dir.join("clusterd.toml");
    for path in [&ca, &cert, &key, &config] {
        if path.exists() {
            bail!("{} exists: refusing to replace it (move it away or choose another --dir)", path.display());
        }
    }

    let request = node_request(&args.node, args.listen.ip())
        .with_context(|| format!("cannot make a key for node {}", args.node))?;
    let tls = join_client_config(&token.ca_fingerprint).context("tls setup")?;
    let mut client = Client::connect_with(&args.server, tls, timeout)
        .await
        .with_context(|| format!("cannot join through {}", args.server))?;
    let reply = client
        .call(ClientRequest::Join {
            token: args.token.trim().to_owned(),
            node: args.node.clone(),
            address: args.listen.to_string(),
            csr_pem: request.csr_pem.clone(),
        })
        .await
        .with_context(|| format!("{} refused to admit node {}", args.server, args.node))?;
    let ClientReply::Joined { cert_pem, ca_pem, members } = reply else {
        bail!("{} sent an unexpected reply to a join request: {reply:?}", args.server);
    };
    check_issued(&token, &args.node, &request.key_pem, &cert_pem, &ca_pem)
        .with_context(|| format!("the certificate sent by {} is not usable", args.server))?;

    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |path: &Path, contents: &str, mode: u32| {
        cluster_tls::create_file(path, contents.as_bytes(), mode)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write(&ca, &ca_pem, 0o644)?;
    write(&cert, &cert_pem, 0o644)?;
    write(&key, &request.key_pem, 0o600)?;
    write(&config, &node_file(&args, &ca, &cert, &key), 0o600)?;
    let members: Vec<String> = members.iter().map(|(name, address)| format!("{name} ({address})")).collect();
    Ok(format!(
        "node {} certified by the cluster of {}; wrote {}, {}, {} and {}; start clusterd with it: it asks to be \
         added (learner, then voter) by itself",
        args.node,
        members.join(", "),
        ca.display(),
        cert.display(),
        key.display(),
        config.display()
    ))
}

/// The certificate names this node, carries its key, and the CA is the token's.
fn check_issued(token: &JoinTokenText, node: &str, key_pem: &str, cert_pem: &str, ca_pem: &str) -> anyhow::Result<()> {
    let ca = cluster_tls::pem_cert_info(ca_pem, "the CA certificate").map_err(anyhow::Error::msg)?;
    if ca.fingerprint != token.ca_fingerprint {
        bail!("the CA certificate's fingerprint is {}, the token's {}", ca.fingerprint, token.ca_fingerprint);
    }
    let cert = cluster_tls::pem_cert_info(cert_pem, "the node certificate").map_err(anyhow::Error::msg)?;
    if cert.common_name.as_deref() != Some(node) {
        bail!("it is for {:?}, not for node {node}", cert.common_name);
    }
    if cluster_tls::key_public_sha256(key_pem).map_err(anyhow::Error::msg)? != cert.public_key_sha256 {
        bail!("it does not carry the key this command made");
    }
    Ok(())
}

/// A TOML basic string (JSON's escapes are TOML's).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

fn node_file(args: &JoinArgs, ca: &Path, cert: &Path, key: &Path) -> String {
    let path = |path: &Path| quoted(&path.display().to_string());
    let mut text = format!(
        "# Written by `clusterctl join`; every key is in docs/configuration.md.\nnode = {}\nlisten = {}\ndata_dir = \
         {}\n# The member this node asks to add it while it is not a member yet.\njoin = {}\n",
        quoted(&args.node),
        quoted(&args.listen.to_string()),
        path(&args.data_dir),
        quoted(&args.server),
    );
    if let Some(socket) = &args.daemon_socket {
        text.push_str(&format!("socket = {}\n", path(socket)));
    }
    if args.witness {
        text.push_str("role = \"witness\"\n");
    }
    text.push_str(&format!("\n[tls]\nca = {}\ncert = {}\nkey = {}\n", path(ca), path(cert), path(key)));
    text
}
