//! Fencing: powering a node off (or on, or checking it) through a fence agent, with the Pacemaker
//! fence-agents convention, so every existing `fence_*` agent works (DESIGN §5).
//!
//! ```text
//!   AgentFencer::fence(device, node, action, timeout)
//!     agent (absolute, or /usr/sbin/NAME, or NAME on PATH) spawned with NO arguments,
//!     in its own process group, cwd "/", stdin:
//!         action=off
//!         <every device parameter>=<value>      (sorted by name)
//!         nodename=NODE
//!         plug=NODE                              (only when the device has neither plug nor port)
//!     exit 0 within the timeout ──▶ Ok(())
//!     exit ≠ 0 / killed         ──▶ FenceError::Failed   (exit code, last lines of stderr and stdout)
//!     timeout                   ──▶ SIGKILL to the agent's whole process group, FenceError::TimedOut
//! ```
//!
//! [`FakeFencer`] records calls and returns configured outcomes, for unit tests of the daemon.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Where bare agent names are looked up first (fence-agents install there), before `PATH`.
const AGENT_DIRECTORY: &str = "/usr/sbin";
/// How much of the agent's stdout and stderr is kept (the end of it).
const OUTPUT_KEPT_BYTES: usize = 16 * 1024;
/// How many lines of stderr an error quotes.
const OUTPUT_QUOTED_LINES: usize = 5;
/// How many lines of stdout an error quotes.
const OUTPUT_QUOTED_STDOUT_LINES: usize = 2;
/// How long to wait for the agent's pipes to close once it exited or was killed.
const OUTPUT_DRAIN_TIME: Duration = Duration::from_millis(500);

/// A fence device as stored in the cluster settings: an agent and its parameters (fence-agents names,
/// e.g. `ip`, `username`, `password_script`, `plug`).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FenceDevice {
    /// An absolute path, or a bare name looked up in `/usr/sbin` then `PATH` (`fence_ipmilan`).
    pub agent: String,
    /// `name=value` parameters passed on the agent's stdin. `action`, `option` and `nodename` are
    /// reserved (set per call).
    pub params: BTreeMap<String, String>,
}

/// Redacts parameters that look like secrets (`password`, `passwd`…), so logs never show them.
impl std::fmt::Debug for FenceDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let params: BTreeMap<&str, &str> = self
            .params
            .iter()
            .map(|(name, value)| {
                let shown = if is_secret(name) { "<redacted>" } else { value };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("FenceDevice").field("agent", &self.agent).field("params", &params).finish()
    }
}

fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    (name.contains("passw") || name.contains("secret")) && !name.ends_with("_script")
}

const RESERVED_PARAMETERS: [&str; 3] = ["action", "option", "nodename"];

impl FenceDevice {
    /// Checks what would corrupt the stdin protocol or be ambiguous: the agent must be an absolute
    /// path or a bare name; parameter names `[A-Za-z0-9_-]+` and not reserved; values on one line.
    pub fn validate(&self) -> Result<(), FenceError> {
        let invalid = |reason: String| Err(FenceError::InvalidDevice { agent: self.agent.clone(), reason });
        if self.agent.is_empty() || self.agent.contains('\0') {
            return invalid("the agent is empty or contains a NUL byte".into());
        }
        if self.agent.contains('/') && !self.agent.starts_with('/') {
            return invalid("the agent must be an absolute path or a bare name".into());
        }
        for (name, value) in &self.params {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return invalid(format!("parameter name {name:?} must be letters, digits, '_' or '-'"));
            }
            if RESERVED_PARAMETERS.contains(&name.as_str()) {
                return invalid(format!("parameter {name} is reserved: clusterd sets it on every call"));
            }
            if value.contains(['\n', '\r', '\0']) {
                return invalid(format!("the value of parameter {name} must be one line"));
            }
        }
        Ok(())
    }
}

/// What to ask of the fence device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FenceAction {
    /// Power the node off; exit 0 only when verified off.
    Off,
    /// Power the node on.
    On,
    /// Off then on.
    Reboot,
    /// Is the node on? (fence-agents: exit 0 on, 2 off, 1 error.)
    Status,
    /// Is the fence device reachable and working?
    Monitor,
}

impl FenceAction {
    /// The fence-agents name: `off`, `on`, `reboot`, `status`, `monitor`.
    pub fn as_str(self) -> &'static str {
        match self {
            FenceAction::Off => "off",
            FenceAction::On => "on",
            FenceAction::Reboot => "reboot",
            FenceAction::Status => "status",
            FenceAction::Monitor => "monitor",
        }
    }
}

impl std::fmt::Display for FenceAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an agent ended when it did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentExit {
    /// It exited with this non-zero code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl std::fmt::Display for AgentExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentExit::Code(code) => write!(f, "exit {code}"),
            AgentExit::Signal(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

/// A fence that did not succeed. Every message names the node, the agent and the action.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The device cannot be used as configured (nothing was run).
    #[error("invalid fence device {agent}: {reason}")]
    InvalidDevice {
        /// The agent as configured.
        agent: String,
        /// Why.
        reason: String,
    },
    /// The agent program was not found.
    #[error("failed to fence node {node} with {agent} (action {action}): agent not found (an absolute path, or a name in /usr/sbin or PATH)")]
    AgentNotFound {
        /// The agent as configured.
        agent: String,
        /// The node to fence.
        node: String,
        /// The action.
        action: FenceAction,
    },
    /// The agent could not be started or waited for.
    #[error("failed to fence node {node} with {agent} (action {action}): {source}")]
    Spawn {
        /// The agent as configured.
        agent: String,
        /// The node to fence.
        node: String,
        /// The action.
        action: FenceAction,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The agent ended with a non-zero status: the action is not confirmed.
    #[error("failed to fence node {node} with {agent} (action {action}): {exit}: {output}")]
    Failed {
        /// The agent as configured.
        agent: String,
        /// The node to fence.
        node: String,
        /// The action.
        action: FenceAction,
        /// How it ended.
        exit: AgentExit,
        /// The last lines of its stderr, then of its stdout.
        output: String,
    },
    /// The agent did not finish in time; its whole process group was killed.
    #[error("failed to fence node {node} with {agent} (action {action}): timed out after {timeout:?}, agent killed: {output}")]
    TimedOut {
        /// The agent as configured.
        agent: String,
        /// The node to fence.
        node: String,
        /// The action.
        action: FenceAction,
        /// The timeout.
        timeout: Duration,
        /// The last lines of its stderr, then of its stdout.
        output: String,
    },
}

impl FenceError {
    /// The agent's exit code when it exited non-zero (for `status`, 2 means "off").
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            FenceError::Failed { exit: AgentExit::Code(code), .. } => Some(*code),
            _ => None,
        }
    }
}

/// Runs fence actions against nodes.
#[async_trait::async_trait]
pub trait Fencer: Send + Sync {
    /// Asks `device` to apply `action` to `node`; `Ok` only when the agent exited 0 within `timeout`.
    async fn fence(
        &self,
        device: &FenceDevice,
        node: &str,
        action: FenceAction,
        timeout: Duration,
    ) -> Result<(), FenceError>;
}

/// The real fencer: runs the device's agent with the fence-agents stdin convention.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentFencer;

/// The agent's stdin: `action=`, the device's parameters, `nodename=`, and `plug=` when the device
/// names neither `plug` nor `port`.
fn agent_input(device: &FenceDevice, node: &str, action: FenceAction) -> String {
    let mut input = format!("action={action}\n");
    for (name, value) in &device.params {
        input.push_str(&format!("{name}={value}\n"));
    }
    input.push_str(&format!("nodename={node}\n"));
    if !device.params.contains_key("plug") && !device.params.contains_key("port") {
        input.push_str(&format!("plug={node}\n"));
    }
    input
}

/// The program to run: an absolute path as is; a bare name in `/usr/sbin`, then in `path` (`PATH`).
fn resolve_agent(agent: &str, directories: &[PathBuf]) -> Option<PathBuf> {
    if agent.starts_with('/') {
        return Some(PathBuf::from(agent)).filter(|path| is_executable(path));
    }
    directories.iter().map(|directory| directory.join(agent)).find(|path| is_executable(path))
}

fn search_directories(path_variable: Option<&OsStr>) -> Vec<PathBuf> {
    let mut directories = vec![PathBuf::from(AGENT_DIRECTORY)];
    if let Some(path_variable) = path_variable {
        directories.extend(std::env::split_paths(path_variable).filter(|d| d.is_absolute()));
    }
    directories
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// Reads `reader` to its end into `kept`, keeping only the last [`OUTPUT_KEPT_BYTES`].
async fn read_tail<R: AsyncRead + Unpin>(mut reader: R, kept: Arc<Mutex<Vec<u8>>>) {
    let mut buffer = [0u8; 4096];
    while let Ok(length) = reader.read(&mut buffer).await {
        if length == 0 {
            break;
        }
        let mut kept = lock(&kept);
        kept.extend_from_slice(&buffer[..length]);
        if kept.len() > OUTPUT_KEPT_BYTES {
            let excess = kept.len() - OUTPUT_KEPT_BYTES;
            kept.drain(..excess);
        }
    }
}

/// The last non-empty lines of stderr, then of stdout, on one line: `e1 | e2 (stdout: o1 | o2)`.
/// Agents print warnings on stderr and their verdict (`Status: OFF`, `Failed: …`) on either.
fn quoted_output(stderr: &[u8], stdout: &[u8]) -> String {
    let last_lines = |bytes: &[u8], count: usize| -> String {
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
        lines[lines.len().saturating_sub(count)..].join(" | ")
    };
    let stderr = last_lines(stderr, OUTPUT_QUOTED_LINES);
    let stdout = last_lines(stdout, OUTPUT_QUOTED_STDOUT_LINES);
    match (stderr.is_empty(), stdout.is_empty()) {
        (true, true) => "no output".into(),
        (false, true) => stderr,
        (true, false) => stdout,
        (false, false) => format!("{stderr} (stdout: {stdout})"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait::async_trait]
impl Fencer for AgentFencer {
    async fn fence(
        &self,
        device: &FenceDevice,
        node: &str,
        action: FenceAction,
        timeout: Duration,
    ) -> Result<(), FenceError> {
        device.validate()?;
        if node.is_empty() || node.contains(['\n', '\r', '\0']) {
            return Err(FenceError::InvalidDevice {
                agent: device.agent.clone(),
                reason: format!("node name {node:?} cannot be passed to an agent"),
            });
        }
        let agent = device.agent.clone();
        let spawn_error = |source| FenceError::Spawn { agent: agent.clone(), node: node.to_string(), action, source };
        let directories = search_directories(std::env::var_os("PATH").as_deref());
        let Some(program) = resolve_agent(&device.agent, &directories) else {
            return Err(FenceError::AgentNotFound { agent, node: node.to_string(), action });
        };
        let input = agent_input(device, node, action);
        tracing::info!(%node, agent = %device.agent, %action, ?timeout, "running fence agent");

        let mut command = tokio::process::Command::new(&program);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir("/")
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(spawn_error)?;
        let group = child.id().and_then(|pid| i32::try_from(pid).ok()).map(nix::unistd::Pid::from_raw);
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(pipe) = child.stdout.take() {
            readers.push(tokio::spawn(read_tail(pipe, stdout.clone())));
        }
        if let Some(pipe) = child.stderr.take() {
            readers.push(tokio::spawn(read_tail(pipe, stderr.clone())));
        }
        let mut stdin = child.stdin.take();

        let run = async {
            if let Some(mut pipe) = stdin.take() {
                // An agent may exit without reading its input: a broken pipe is its business, its
                // exit status decides.
                match pipe.write_all(input.as_bytes()).await {
                    Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => return Err(error),
                    _ => {}
                }
                drop(pipe);
            }
            child.wait().await
        };
        let outcome = tokio::time::timeout(timeout, run).await;
        if outcome.is_err() {
            if let Some(group) = group {
                // The agent and everything it started (ssh, ipmitool…) share its process group.
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            // Reap it, so no zombie stays behind.
            let _ = tokio::time::timeout(OUTPUT_DRAIN_TIME, child.wait()).await;
        }
        // The pipes close when every holder is gone; a straggler outside the group is not waited for.
        let _ = tokio::time::timeout(OUTPUT_DRAIN_TIME, futures::future::join_all(readers)).await;
        let output = quoted_output(&lock(&stderr), &lock(&stdout));

        let status = match outcome {
            Err(_) => {
                tracing::warn!(%node, agent = %device.agent, %action, "fence agent timed out and was killed");
                return Err(FenceError::TimedOut { agent, node: node.to_string(), action, timeout, output });
            }
            Ok(Err(source)) => return Err(spawn_error(source)),
            Ok(Ok(status)) => status,
        };
        if status.success() {
            tracing::info!(%node, agent = %device.agent, %action, "fence agent succeeded");
            return Ok(());
        }
        use std::os::unix::process::ExitStatusExt;
        let exit = match (status.code(), status.signal()) {
            (Some(code), _) => AgentExit::Code(code),
            (None, Some(signal)) => AgentExit::Signal(signal),
            (None, None) => AgentExit::Code(-1),
        };
        Err(FenceError::Failed { agent, node: node.to_string(), action, exit, output })
    }
}

// ---------------------------------------------------------------- fake

/// What a [`FakeFencer`] call does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeFenceOutcome {
    /// Exit 0.
    Success,
    /// A non-zero exit with this output.
    Failure {
        /// The exit code.
        exit_code: i32,
        /// What the agent "printed".
        output: String,
    },
    /// Never answers: the call waits for its whole timeout (tokio time) and times out.
    Hang,
}

/// One recorded call of a [`FakeFencer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceCall {
    /// The device's agent.
    pub agent: String,
    /// The node.
    pub node: String,
    /// The action.
    pub action: FenceAction,
    /// The timeout given.
    pub timeout: Duration,
}

#[derive(Debug)]
struct FakeFencerState {
    calls: Vec<FenceCall>,
    default_outcome: FakeFenceOutcome,
    per_node: HashMap<String, FakeFenceOutcome>,
    delay: Duration,
}

/// A recording fake fencer with configurable outcomes (per node, else a default), for unit tests.
/// Every call is recorded, also those that fail validation.
#[derive(Debug, Clone)]
pub struct FakeFencer {
    state: Arc<Mutex<FakeFencerState>>,
}

impl Default for FakeFencer {
    fn default() -> Self {
        FakeFencer::new()
    }
}

impl FakeFencer {
    /// Every call succeeds at once.
    pub fn new() -> Self {
        FakeFencer {
            state: Arc::new(Mutex::new(FakeFencerState {
                calls: Vec::new(),
                default_outcome: FakeFenceOutcome::Success,
                per_node: HashMap::new(),
                delay: Duration::ZERO,
            })),
        }
    }

    /// The outcome of calls for nodes without their own.
    pub fn set_default_outcome(&self, outcome: FakeFenceOutcome) {
        lock(&self.state).default_outcome = outcome;
    }

    /// The outcome of calls for `node`.
    pub fn set_outcome(&self, node: &str, outcome: FakeFenceOutcome) {
        lock(&self.state).per_node.insert(node.to_string(), outcome);
    }

    /// Every call takes this long (tokio time) before its outcome; longer than its timeout: timed out.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state).delay = delay;
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<FenceCall> {
        lock(&self.state).calls.clone()
    }
}

#[async_trait::async_trait]
impl Fencer for FakeFencer {
    async fn fence(
        &self,
        device: &FenceDevice,
        node: &str,
        action: FenceAction,
        timeout: Duration,
    ) -> Result<(), FenceError> {
        let (outcome, delay) = {
            let mut state = lock(&self.state);
            state.calls.push(FenceCall { agent: device.agent.clone(), node: node.to_string(), action, timeout });
            let outcome = state.per_node.get(node).unwrap_or(&state.default_outcome).clone();
            (outcome, state.delay)
        };
        device.validate()?;
        let timed_out = || FenceError::TimedOut {
            agent: device.agent.clone(),
            node: node.to_string(),
            action,
            timeout,
            output: "no output".into(),
        };
        if outcome == FakeFenceOutcome::Hang || delay > timeout {
            tokio::time::sleep(timeout).await;
            return Err(timed_out());
        }
        tokio::time::sleep(delay).await;
        match outcome {
            FakeFenceOutcome::Success => Ok(()),
            FakeFenceOutcome::Failure { exit_code, output } => Err(FenceError::Failed {
                agent: device.agent.clone(),
                node: node.to_string(),
                action,
                exit: AgentExit::Code(exit_code),
                output,
            }),
            FakeFenceOutcome::Hang => Err(timed_out()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(params: &[(&str, &str)]) -> FenceDevice {
        FenceDevice {
            agent: "fence_ipmilan".into(),
            params: params.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
        }
    }

    #[test]
    fn input_has_action_params_nodename_and_plug() {
        let input = agent_input(&device(&[("ip", "10.0.0.5"), ("username", "admin")]), "n2", FenceAction::Off);
        assert_eq!(input, "action=off\nip=10.0.0.5\nusername=admin\nnodename=n2\nplug=n2\n");
    }

    #[test]
    fn plug_is_not_added_when_the_device_names_a_plug_or_port() {
        let with_port = agent_input(&device(&[("port", "vm-7")]), "n1", FenceAction::Reboot);
        assert_eq!(with_port, "action=reboot\nport=vm-7\nnodename=n1\n");
        let with_plug = agent_input(&device(&[("plug", "4")]), "n1", FenceAction::Status);
        assert_eq!(with_plug, "action=status\nplug=4\nnodename=n1\n");
    }

    #[test]
    fn validate_refuses_what_would_corrupt_the_protocol() {
        assert!(device(&[("ip", "10.0.0.5")]).validate().is_ok());
        for bad in [
            device(&[("action", "on")]),
            device(&[("option", "on")]),
            device(&[("nodename", "x")]),
            device(&[("ip", "10.0.0.5\naction=on")]),
            device(&[("bad name", "x")]),
            device(&[("", "x")]),
        ] {
            let error = bad.validate().unwrap_err();
            assert!(error.to_string().starts_with("invalid fence device fence_ipmilan: "), "{error}");
        }
        let relative = FenceDevice { agent: "bin/fence_x".into(), params: BTreeMap::new() };
        assert!(relative.validate().is_err());
    }

    #[test]
    fn debug_redacts_passwords() {
        let shown = format!("{:?}", device(&[("password", "hunter2"), ("password_script", "/etc/pw.sh")]));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("/etc/pw.sh"), "{shown}");
    }

    #[test]
    fn bare_names_are_found_in_usr_sbin_first_then_path() {
        let root = std::env::temp_dir().join(format!("fence-resolve-{}", std::process::id()));
        let first = root.join("a");
        let second = root.join("b");
        std::fs::create_dir_all(&first).unwrap();
        std::fs::create_dir_all(&second).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let write = |path: &Path, mode: u32| {
            std::fs::write(path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(&first.join("fence_x"), 0o644); // not executable: skipped
        write(&second.join("fence_x"), 0o755);
        let path_variable = std::env::join_paths([&first, &second]).unwrap();
        let directories = search_directories(Some(&path_variable));
        assert_eq!(directories[0], PathBuf::from("/usr/sbin"));
        assert_eq!(resolve_agent("fence_x", &directories), Some(second.join("fence_x")));
        assert_eq!(resolve_agent("fence_nonexistent_x", &directories), None);
        let absolute = second.join("fence_x");
        assert_eq!(resolve_agent(absolute.to_str().unwrap(), &[]), Some(absolute.clone()));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn quoted_output_has_the_last_lines_of_stderr_then_stdout() {
        let stderr = b"one\n\ntwo\nthree\nfour\nfive\nsix\n";
        assert_eq!(quoted_output(stderr, b""), "two | three | four | five | six");
        assert_eq!(quoted_output(b"WARNING: x\n", b"a\nb\nStatus: OFF\n"), "WARNING: x (stdout: b | Status: OFF)");
        assert_eq!(quoted_output(b"  \n", b"Failed: x\n"), "Failed: x");
        assert_eq!(quoted_output(b"", b""), "no output");
    }

    #[tokio::test(start_paused = true)]
    async fn fake_fencer_records_calls_and_returns_configured_outcomes() {
        let fencer = FakeFencer::new();
        fencer.set_outcome("n2", FakeFenceOutcome::Failure { exit_code: 1, output: "Failed: bmc unreachable".into() });
        fencer.set_outcome("n3", FakeFenceOutcome::Hang);
        let dev = device(&[("ip", "10.0.0.5")]);
        let timeout = Duration::from_secs(20);
        fencer.fence(&dev, "n1", FenceAction::Off, timeout).await.unwrap();
        let error = fencer.fence(&dev, "n2", FenceAction::Off, timeout).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "failed to fence node n2 with fence_ipmilan (action off): exit 1: Failed: bmc unreachable"
        );
        assert_eq!(error.exit_code(), Some(1));
        let started = tokio::time::Instant::now();
        let error = fencer.fence(&dev, "n3", FenceAction::Reboot, timeout).await.unwrap_err();
        assert!(matches!(error, FenceError::TimedOut { .. }), "{error}");
        assert_eq!(started.elapsed(), timeout);
        let nodes: Vec<(String, FenceAction)> =
            fencer.calls().into_iter().map(|call| (call.node, call.action)).collect();
        assert_eq!(
            nodes,
            vec![
                ("n1".to_string(), FenceAction::Off),
                ("n2".to_string(), FenceAction::Off),
                ("n3".to_string(), FenceAction::Reboot)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fake_fencer_delay_longer_than_the_timeout_times_out() {
        let fencer = FakeFencer::new();
        fencer.set_delay(Duration::from_secs(3));
        let dev = device(&[]);
        assert!(fencer.fence(&dev, "n1", FenceAction::Off, Duration::from_secs(5)).await.is_ok());
        let error = fencer.fence(&dev, "n1", FenceAction::Off, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(error, FenceError::TimedOut { .. }), "{error}");
    }
}
