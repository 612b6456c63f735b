//! One node's part of `clusterctl report`: its node file (secrets redacted), its log since a time
//! (the journal under systemd, else the configured `log_file`), its Raft view and a few facts
//! about the host. A request naming another member is forwarded to it.
//!
//! ```text
//!   clusterctl ── Diagnostics { node: n2 } ──> n1 ── forwarded ──> n2 collects ──> NodeDiagnostics
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use cluster_api::redact::{is_secret_name, REDACTED};
use cluster_api::{ApiError, ClientReply, ClientRequest, ErrorKind, NodeDiagnostics, Request, Response};
use cluster_raft::ConsensusNode;

use crate::dispatch::Failure;
use crate::engine::wall_ms;

/// At most this much log per node (a frame holds 16 MiB).
const LOG_LIMIT: usize = 8 << 20;
/// At most this many journal lines.
const JOURNAL_LINES: &str = "200000";

/// What the daemon was started with, set once by `main`.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) config_path: PathBuf,
    pub(crate) log_file: Option<PathBuf>,
}

static CONTEXT: OnceLock<Context> = OnceLock::new();

/// Records the node file and log file for later reports.
pub(crate) fn init(context: Context) {
    let _ = CONTEXT.set(context);
}

/// Serves `Diagnostics`: here, or forwarded to the named member.
pub(crate) async fn serve(
    node: &ConsensusNode,
    request: &ClientRequest,
    forwarded: bool,
) -> Result<ClientReply, Failure> {
    let ClientRequest::Diagnostics { node: target, since_ms } = request else {
        return Err(Failure::Api(ApiError::new(ErrorKind::Invalid, format!("not a diagnostics request: {request:?}"))));
    };
    let me = node.me().name.clone();
    match target.as_deref().filter(|name| *name != me) {
        None => Ok(ClientReply::Diagnostics(collect(node, *since_ms).await)),
        Some(name) if forwarded => Err(Failure::Api(ApiError::new(
            ErrorKind::Invalid,
            format!("diagnostics of node {name} asked of node {me}: a forwarded request is not forwarded again"),
        ))),
        Some(name) => {
            let Some(member) = node.members().into_iter().find(|member| member.name == name) else {
                return Err(Failure::Api(ApiError::new(
                    ErrorKind::NotFound,
                    format!("node `{name}` is not a member of the cluster"),
                )));
            };
            let forward = Request::Client { request: request.clone(), forwarded: true };
            match node.forward(&member.address, &forward).await {
                Ok(Response::Client(result)) => result.map_err(Failure::Api),
                Ok(Response::Peer(_)) => {
                    Err(Failure::Api(ApiError::new(ErrorKind::Failed, format!("node {name} sent a malformed reply"))))
                }
                Err(err) => Err(Failure::Api(ApiError::new(
                    ErrorKind::Failed,
                    format!("cannot reach node {name} at {}: {err}", member.address),
                ))),
            }
        }
    }
}

async fn collect(node: &ConsensusNode, since_ms: Option<u64>) -> NodeDiagnostics {
    let mut files = Vec::new();
    let mut notes = Vec::new();
    let status = node.status().await;
    files.push((
        "raft.json".to_owned(),
        serde_json::to_string_pretty(&status).unwrap_or_else(|err| format!("cannot encode: {err}")),
    ));
    let context = CONTEXT.get();
    let config_path = context.map(|c| c.config_path.clone());
    let log_file = context.and_then(|c| c.log_file.clone());
    let collected = tokio::task::spawn_blocking(move || {
        let mut files = Vec::new();
        let mut notes = Vec::new();
        if let Some(path) = &config_path {
            match std::fs::read_to_string(path) {
                Ok(text) => files.push(("clusterd.toml".to_owned(), redact_toml(&text))),
                Err(err) => notes.push(format!("node file {}: cannot read it: {err}", path.display())),
            }
        }
        files.push(("system.txt".to_owned(), system_facts()));
        match logs(log_file.as_deref(), since_ms) {
            Ok((text, note)) => {
                files.push(("clusterd.log".to_owned(), text));
                notes.push(note);
            }
            Err(note) => notes.push(note),
        }
        (files, notes)
    })
    .await;
    match collected {
        Ok((more_files, more_notes)) => {
            files.extend(more_files);
            notes.extend(more_notes);
        }
        Err(err) => notes.push(format!("collecting files failed: {err}")),
    }
    NodeDiagnostics {
        node: node.me().name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        collected_at_ms: wall_ms(),
        files,
        notes,
    }
}

/// The node file with the value of every secret-looking key replaced.
pub(crate) fn redact_toml(text: &str) -> String {
    text.lines()
        .map(|line| match line.split_once('=') {
            Some((key, _)) if !line.trim_start().starts_with('#') && is_secret_name(key.trim().trim_matches('"')) => {
                format!("{}= \"{REDACTED}\"", key)
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The daemon's log since `since_ms`, and where it came from; or why there is none.
fn logs(log_file: Option<&Path>, since_ms: Option<u64>) -> Result<(String, String), String> {
    if std::env::var_os("INVOCATION_ID").is_some() {
        let unit = systemd_unit().unwrap_or_else(|| "clusterd.service".to_owned());
        let mut command = std::process::Command::new("journalctl");
        command.args(["--unit", &unit, "--no-pager", "--output", "short-iso-precise", "--lines", JOURNAL_LINES]);
        if let Some(since_ms) = since_ms {
            command.arg(format!("--since=@{}", since_ms / 1_000));
        }
        return match command.output() {
            Ok(output) if output.status.success() => {
                let (text, cut) = last_bytes(&String::from_utf8_lossy(&output.stdout), LOG_LIMIT);
                Ok((text, format!("log: the journal of unit {unit}{cut}")))
            }
            Ok(output) => Err(format!(
                "log: journalctl --unit {unit} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(err) => Err(format!("log: cannot run journalctl: {err}")),
        };
    }
    let Some(path) = log_file else {
        return Err("log: not collected: clusterd does not run under systemd (no journal) and the node file sets \
                    no `log_file`"
            .to_owned());
    };
    let text = read_tail(path, LOG_LIMIT * 4).map_err(|err| format!("log: cannot read {}: {err}", path.display()))?;
    let text = match since_ms {
        Some(since_ms) => lines_since(&text, since_ms),
        None => text,
    };
    let (text, cut) = last_bytes(&text, LOG_LIMIT);
    Ok((text, format!("log: the file {}{cut}", path.display())))
}

/// The last `limit` bytes of a file (from the start of a line).
fn read_tail(path: &Path, limit: usize) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let start = length.saturating_sub(limit as u64);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(match (start > 0, text.find('\n')) {
        (true, Some(newline)) => text[newline + 1..].to_owned(),
        _ => text,
    })
}

/// Keeps `text` whole if it fits, else its last `limit` bytes from a line start, and says so.
fn last_bytes(text: &str, limit: usize) -> (String, String) {
    if text.len() <= limit {
        return (text.to_owned(), String::new());
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let start = text[start..].find('\n').map_or(start, |newline| start + newline + 1);
    (text[start..].to_owned(), format!(" (cut to its last {} MiB)", limit >> 20))
}

/// Lines logged at or after `since_ms`: a line starting with an RFC 3339 time (the log format of
/// clusterd) decides for itself and for the lines after it that have none.
pub(crate) fn lines_since(text: &str, since_ms: u64) -> String {
    let since = std::time::UNIX_EPOCH + Duration::from_millis(since_ms);
    let mut keep = false;
    let mut kept = String::new();
    for line in text.lines() {
        if let Some(stamp) = line.split_whitespace().next() {
            if let Ok(at) = humantime::parse_rfc3339_weak(stamp) {
                keep = at >= since;
            }
        }
        if keep {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

/// The systemd unit this process runs in, from its cgroup.
fn systemd_unit() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup.lines().filter_map(|line| line.rsplit('/').next()).find(|part| part.ends_with(".service")).map(str::to_owned)
}

fn system_facts() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default().trim().to_owned();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map(|name| name.trim_matches('"').to_owned())
        .unwrap_or_default();
    let status = read("/proc/self/status");
    let field = |name: &str| {
        status.lines().find_map(|line| line.strip_prefix(name)).map(|value| value.trim().to_owned()).unwrap_or_default()
    };
    format!(
        "hostname: {}\nos: {os}\nkernel: {}\nuptime (s): {}\nclusterd version: {}\nclusterd pid: {}\n\
         clusterd resident memory: {}\nclusterd threads: {}\nunder systemd: {}\ncollected at (ms since epoch): {}\n",
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/osrelease"),
        read("/proc/uptime").split_whitespace().next().unwrap_or(""),
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        field("VmRSS:"),
        field("Threads:"),
        std::env::var_os("INVOCATION_ID").is_some(),
        wall_ms(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_of_the_node_file_are_redacted() {
        let text = "node = \"n1\"\n[tls]\nkey = \"/etc/clusterd/pki/n1.key\"\n# password = x\napi_token=\"abc\"\n";
        let redacted = redact_toml(text);
        assert!(redacted.contains("node = \"n1\""), "{redacted}");
        assert!(redacted.contains("key = \"<redacted>\""), "{redacted}");
        assert!(redacted.contains("api_token= \"<redacted>\""), "{redacted}");
        assert!(!redacted.contains("abc"), "{redacted}");
        assert!(redacted.contains("# password = x"), "comments are kept: {redacted}");
    }

    #[test]
    fn log_lines_are_kept_from_the_first_one_at_or_after_since() {
        let text = "2024-05-01T10:00:00.100000Z  INFO old\n  continued old\n\
                    2024-05-01T10:00:05.000000Z  WARN new\n  continued new\n2024-05-01T10:00:06.000000Z  INFO newer\n";
        let since = 1_714_557_602_000; // 2024-05-01T10:00:02Z
        assert_eq!(
            lines_since(text, since),
            "2024-05-01T10:00:05.000000Z  WARN new\n  continued new\n2024-05-01T10:00:06.000000Z  INFO newer\n"
        );
    }

    #[test]
    fn a_long_log_keeps_its_end_from_a_line_start() {
        let (text, note) = last_bytes("aaaa\nbbbb\ncccc\n", 8);
        assert_eq!(text, "cccc\n");
        assert!(note.contains("cut to its last"));
        assert_eq!(last_bytes("short\n", 100).0, "short\n");
    }
}
