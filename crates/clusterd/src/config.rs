//! The node configuration file (`clusterd --config FILE`); every key is in docs/configuration.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// Default path of the local, root-only control socket.
pub(crate) const DEFAULT_SOCKET: &str = "/run/clusterd/clusterd.sock";

/// One node's configuration. Cluster-wide settings are not here: they live in the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeConfig {
    /// This node's name, unique in the cluster.
    pub(crate) node: String,
    /// Address for peer RPC and remote clients (mutual TLS), `IP:PORT`.
    pub(crate) listen: SocketAddr,
    /// Address other nodes dial to reach this one; defaults to `listen`.
    #[serde(default)]
    pub(crate) advertise: Option<String>,
    /// Directory for the Raft log, vote and snapshots.
    pub(crate) data_dir: PathBuf,
    /// Local control socket (root only, mode 0600).
    #[serde(default = "default_socket")]
    pub(crate) socket: PathBuf,
    pub(crate) tls: TlsSection,
    /// Optional watchdog device, armed while this node runs packages.
    #[serde(default)]
    pub(crate) watchdog: Option<WatchdogSection>,
    /// HTTP listener for Prometheus metrics (`/metrics`) and, with `status_page`, the status page.
    #[serde(default)]
    pub(crate) metrics: Option<SocketAddr>,
    /// Serve the metrics listener over TLS and require a client certificate of the cluster CA.
    #[serde(default)]
    pub(crate) metrics_tls: bool,
    /// Serve the read-only status page on the metrics listener.
    #[serde(default)]
    pub(crate) status_page: bool,
    /// Also append the log to this file (for hosts without the journal; `clusterctl report` reads it).
    #[serde(default)]
    pub(crate) log_file: Option<PathBuf>,
    /// `node` (the default): may host packages; `witness`: a voter that never hosts packages (the
    /// third vote of a two-node site).
    #[serde(default)]
    pub(crate) role: Role,
    /// A member (`HOST:PORT`) this node asks, with its own certificate, to add it (learner, then
    /// voter) while it is not a member yet (written by `clusterctl join`).
    #[serde(default)]
    pub(crate) join: Option<String>,
    /// What this node offers to packages' `needs` (`capacity = { slots = 10, memory = "32G" }`),
    /// announced to the cluster (`NodeCapacity`); see [`NodeConfig::capacity`].
    #[serde(default, rename = "capacity")]
    capacity_table: std::collections::BTreeMap<String, Quantity>,
    /// Raft's timing on this node (`[raft]`); see [`NodeConfig::raft_timing`].
    #[serde(default)]
    pub(crate) raft: RaftSection,
}

/// The `[raft]` table: the leader's heartbeat to the voters, and how long a voter waits for one
/// before it asks for an election (each round draws anew between that and twice that). Every node
/// of a cluster should say the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RaftSection {
    #[serde(default)]
    heartbeat: Option<String>,
    #[serde(default)]
    election_timeout: Option<String>,
}

/// What a node is for (`role` in the node file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    #[default]
    Node,
    Witness,
}

/// A quantity in the node file: a number or a size like `"32G"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Quantity {
    Number(u64),
    Text(String),
}

/// The `[watchdog]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchdogSection {
    /// `/dev/watchdog` (or `/dev/watchdogN`), or `lab:/path/to/watchdog.sock` in the lab.
    pub(crate) device: String,
}

/// The `[tls]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// The CA's private key, on the members that sign the certificates of nodes joining with a
    /// token (`clusterctl join`); it never leaves them.
    #[serde(default)]
    pub(crate) ca_key: Option<PathBuf>,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

impl NodeConfig {
    /// Parses a configuration file's text; `path` names it in errors.
    pub(crate) fn parse(path: &Path, text: &str) -> anyhow::Result<NodeConfig> {
        let config: NodeConfig =
            toml::from_str(text).with_context(|| format!("invalid configuration file {}", path.display()))?;
        if let Err(err) = cluster_model::validate_node_name(&config.node) {
            bail!("invalid configuration file {}: key `node`: {err}", path.display());
        }
        if config.listen.port() == 0 {
            bail!("invalid configuration file {}: key `listen`: expected a fixed port, not 0", path.display());
        }
        if !config.data_dir.is_absolute() {
            bail!(
                "invalid configuration file {}: key `data_dir`: expected an absolute path, got `{}`",
                path.display(),
                config.data_dir.display()
            );
        }
        if let Some(log_file) = config.log_file.as_ref().filter(|path| !path.is_absolute()) {
            bail!(
                "invalid configuration file {}: key `log_file`: expected an absolute path, got `{}`",
                path.display(),
                log_file.display()
            );
        }
        if let Err(err) = config.raft_timing() {
            bail!("invalid configuration file {}: {err}", path.display());
        }
        if let Err(err) = config.capacity() {
            bail!("invalid configuration file {}: key `capacity`: {err}", path.display());
        }
        match config.metrics {
            Some(metrics) if metrics.port() == 0 => {
                bail!("invalid configuration file {}: key `metrics`: expected a fixed port, not 0", path.display())
            }
            Some(metrics) if metrics == config.listen => bail!(
                "invalid configuration file {}: key `metrics`: expected another address than `listen` ({metrics})",
                path.display()
            ),
            Some(metrics) if config.status_page && !config.metrics_tls && !metrics.ip().is_loopback() => bail!(
                "invalid configuration file {}: key `status_page`: the status page is served only on a loopback \
                 address or with `metrics_tls = true` (client certificates of the cluster CA), and `metrics` is \
                 {metrics}",
                path.display()
            ),
            None if config.status_page || config.metrics_tls => bail!(
                "invalid configuration file {}: key `{}`: expected `metrics = \"IP:PORT\"` too (the listener it uses)",
                path.display(),
                if config.status_page { "status_page" } else { "metrics_tls" }
            ),
            _ => {}
        }
        Ok(config)
    }

    /// Raft's timing from `[raft]`, the defaults for what it leaves out: heartbeat 50 ms, election
    /// timeout 150 ms (drawn between it and twice it). A heartbeat of 10 ms to 1 s; an election
    /// timeout of at least three heartbeats (a voter must not start one between two heartbeats that
    /// arrive), at most 10 s. An error names the key.
    pub(crate) fn raft_timing(&self) -> Result<cluster_raft::Timing, String> {
        let defaults = cluster_raft::Timing::default();
        let duration = |key: &str, value: &Option<String>, default: std::time::Duration| match value {
            None => Ok(default),
            Some(text) => humantime::parse_duration(text)
                .map_err(|_| format!("key `[raft] {key}`: expected a duration like `50ms` or `1s`, got `{text}`")),
        };
        let heartbeat = duration("heartbeat", &self.raft.heartbeat, defaults.heartbeat)?;
        let election = duration("election_timeout", &self.raft.election_timeout, defaults.election_timeout_min)?;
        let ms = std::time::Duration::from_millis;
        if !(ms(10)..=ms(1_000)).contains(&heartbeat) {
            return Err(format!("key `[raft] heartbeat`: expected 10ms to 1s, got {heartbeat:?}"));
        }
        if election < heartbeat * 3 || election > ms(10_000) {
            return Err(format!(
                "key `[raft] election_timeout`: expected at least three heartbeats ({:?}) and at most 10s, got \
                 {election:?}",
                heartbeat * 3
            ));
        }
        Ok(cluster_raft::Timing {
            heartbeat,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            ..defaults
        })
    }

    /// The node's capacities, by name (`capacity` in the node file; checked by `parse`).
    pub(crate) fn capacity(&self) -> Result<std::collections::BTreeMap<String, u64>, String> {
        self.capacity_table
            .iter()
            .map(|(name, quantity)| {
                cluster_package::check_capacity_name(name)?;
                let value = match quantity {
                    Quantity::Number(number) => *number,
                    Quantity::Text(text) => cluster_package::parse_quantity(text)?,
                };
                Ok((name.clone(), value))
            })
            .collect()
    }

    /// Reads and parses `path`.
    pub(crate) fn load(path: &Path) -> anyhow::Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        NodeConfig::parse(path, &text)
    }

    /// The address peers dial.
    pub(crate) fn advertised_address(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node = "n1"
listen = "127.0.0.1:7400"
data_dir = "/var/lib/clusterd"
[tls]
ca = "/etc/clusterd/ca.crt"
cert = "/etc/clusterd/n1.crt"
key = "/etc/clusterd/n1.key"
"#;

    fn parse(text: &str) -> anyhow::Result<NodeConfig> {
        NodeConfig::parse(Path::new("/etc/clusterd/clusterd.toml"), text)
    }

    #[test]
    fn minimal_config_gets_the_default_socket() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(config.advertised_address(), "127.0.0.1:7400");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = format!("{:#}", parse(&format!("lisen = \"x\"\n{GOOD}")).unwrap_err());
        assert!(err.contains("clusterd.toml"), "{err}");
        assert!(err.contains("unknown field `lisen`"), "{err}");
    }

    #[test]
    fn bad_listen_address_is_named() {
        let err = format!("{:#}", parse(&GOOD.replace("127.0.0.1:7400", "localhost")).unwrap_err());
        assert!(err.contains("listen"), "{err}");
        assert!(err.contains("invalid socket address"), "{err}");
    }

    #[test]
    fn relative_data_dir_and_bad_name_are_refused() {
        let err = parse(&GOOD.replace("/var/lib/clusterd", "data")).unwrap_err().to_string();
        assert!(err.contains("key `data_dir`: expected an absolute path"), "{err}");
        let err = parse(&GOOD.replace("\"n1\"", "\"bad name\"")).unwrap_err().to_string();
        assert!(err.contains("key `node`"), "{err}");
    }

    /// The shipped example (`/etc/clusterd/clusterd.toml.example`) parses as it is, and again with its
    /// optional keys (`#key = …` lines) switched on, and shows every key of the node file.
    #[test]
    fn the_shipped_example_parses_and_shows_every_key() {
        let example = include_str!("../../../packaging/clusterd.toml.example");
        let config = parse(example).unwrap_or_else(|err| panic!("{err:#}"));
        assert_eq!(config.watchdog, None);
        let switched_on: String = example
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let full = parse(&switched_on).unwrap_or_else(|err| panic!("{err:#}"));
        let NodeConfig {
            node,
            listen,
            advertise,
            data_dir,
            socket,
            tls,
            watchdog,
            metrics,
            metrics_tls,
            status_page,
            log_file,
            capacity_table,
            role,
            join,
            raft,
        } = full;
        assert!(raft.heartbeat.is_some() && raft.election_timeout.is_some(), "the optional `[raft]` keys are missing");
        let TlsSection { ca, cert, key, ca_key } = tls;
        assert_eq!(role, Role::Witness, "the optional key `role` is missing from the example");
        assert!(join.is_some() && ca_key.is_some(), "the optional keys `join` and `[tls] ca_key` are missing");
        assert_eq!(node, "node1");
        assert!(advertise.is_some() && watchdog.is_some(), "an optional key is missing from the example");
        assert!(metrics.is_some() && metrics_tls && status_page && log_file.is_some(), "an optional key is missing");
        assert!(!capacity_table.is_empty(), "the optional key `capacity` is missing from the example");
        assert_eq!(socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(listen.port() != 0 && data_dir.is_absolute());
        assert!([ca, cert, key].iter().all(|path| path.starts_with("/etc/clusterd")));
    }

    #[test]
    fn the_status_page_needs_loopback_or_client_certificates() {
        let with = |extra: &str| parse(&format!("{extra}\n{GOOD}"));
        let config = with("metrics = \"127.0.0.1:9464\"\nstatus_page = true").unwrap();
        assert_eq!(config.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(config.status_page && !config.metrics_tls);
        assert!(with("metrics = \"0.0.0.0:9464\"").is_ok(), "metrics alone may listen everywhere");
        let err = with("metrics = \"0.0.0.0:9464\"\nstatus_page = true").unwrap_err().to_string();
        assert!(err.contains("key `status_page`: the status page is served only on a loopback address"), "{err}");
        assert!(with("metrics = \"0.0.0.0:9464\"\nstatus_page = true\nmetrics_tls = true").is_ok());
        let err = with("status_page = true").unwrap_err().to_string();
        assert!(err.contains("key `status_page`: expected `metrics = \"IP:PORT\"` too"), "{err}");
        let err = with("metrics = \"127.0.0.1:7400\"").unwrap_err().to_string();
        assert!(err.contains("key `metrics`: expected another address than `listen`"), "{err}");
        let err = with("log_file = \"clusterd.log\"").unwrap_err().to_string();
        assert!(err.contains("key `log_file`: expected an absolute path"), "{err}");
        let config = parse(GOOD).unwrap();
        assert!(config.metrics.is_none() && !config.status_page && config.log_file.is_none(), "all off by default");
    }

    #[test]
    fn a_witness_says_so_and_other_roles_are_refused() {
        assert_eq!(parse(GOOD).unwrap().role, Role::Node);
        assert_eq!(parse(&format!("role = \"witness\"\n{GOOD}")).unwrap().role, Role::Witness);
        let err = format!("{:#}", parse(&format!("role = \"arbiter\"\n{GOOD}")).unwrap_err());
        assert!(err.contains("unknown variant `arbiter`, expected `node` or `witness`"), "{err}");
    }

    #[test]
    fn capacities_are_numbers_or_sizes() {
        let config = parse(&format!("capacity = {{ slots = 10, memory = \"32G\" }}\n{GOOD}")).unwrap();
        let capacity = config.capacity().unwrap();
        assert_eq!(capacity, [("memory".to_owned(), 32 << 30), ("slots".to_owned(), 10)].into());
        assert!(parse(GOOD).unwrap().capacity().unwrap().is_empty());
        let err = parse(&format!("capacity = {{ memory = \"lots\" }}\n{GOOD}")).unwrap_err().to_string();
        assert!(err.contains("key `capacity`: expected a quantity like 2 or \"4G\""), "{err}");
        let err = parse(&format!("capacity = {{ Slots = 1 }}\n{GOOD}")).unwrap_err().to_string();
        assert!(err.contains("key `capacity`: expected a capacity name"), "{err}");
    }

    #[test]
    fn raft_timings_default_and_are_checked() {
        let base = "node = \"n1\"\nlisten = \"192.0.2.11:7400\"\ndata_dir = \"/var/lib/clusterd\"\n[tls]\nca = \"/c\"\ncert = \"/c\"\nkey = \"/k\"\n";
        let timing = parse(base).unwrap().raft_timing().unwrap();
        assert_eq!(timing, cluster_raft::Timing::default());
        let set = parse(&format!("{base}[raft]\nheartbeat = \"150ms\"\nelection_timeout = \"600ms\"\n")).unwrap();
        let timing = set.raft_timing().unwrap();
        assert_eq!(timing.heartbeat, std::time::Duration::from_millis(150));
        assert_eq!(timing.election_timeout_min, std::time::Duration::from_millis(600));
        assert_eq!(timing.election_timeout_max, std::time::Duration::from_millis(1200));
        for (table, expected) in [
            ("heartbeat = \"5ms\"", "key `[raft] heartbeat`: expected 10ms to 1s"),
            ("heartbeat = \"soon\"", "key `[raft] heartbeat`: expected a duration"),
            ("heartbeat = \"200ms\"", "key `[raft] election_timeout`: expected at least three heartbeats (600ms)"),
            ("election_timeout = \"20s\"", "at most 10s"),
            ("timeout = \"1s\"", "unknown field `timeout`"),
        ] {
            let err = format!("{:#}", parse(&format!("{base}[raft]\n{table}\n")).unwrap_err());
            assert!(err.contains(expected), "{table}: {err}");
        }
    }

    #[test]
    fn missing_tls_table_is_named() {
        let text = GOOD.split("[tls]").next().unwrap();
        let err = format!("{:#}", parse(text).unwrap_err());
        assert!(err.contains("missing field `tls`"), "{err}");
    }
}
