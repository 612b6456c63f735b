//! Supervised processes (a "unit" per resource: its whole process tree) and one-shot commands.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Signals the agents send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGTERM.
    Term,
    /// SIGINT.
    Int,
    /// SIGQUIT.
    Quit,
    /// SIGHUP.
    Hup,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
    /// SIGWINCH.
    Winch,
    /// SIGKILL.
    Kill,
}

impl Signal {
    /// From a name like `SIGTERM` or `TERM`.
    pub fn from_name(name: &str) -> Option<Signal> {
        Some(match name.strip_prefix("SIG").unwrap_or(name) {
            "TERM" => Signal::Term,
            "INT" => Signal::Int,
            "QUIT" => Signal::Quit,
            "HUP" => Signal::Hup,
            "USR1" => Signal::Usr1,
            "USR2" => Signal::Usr2,
            "WINCH" => Signal::Winch,
            "KILL" => Signal::Kill,
            _ => return None,
        })
    }

    /// The signal number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
            Signal::Quit => libc::SIGQUIT,
            Signal::Hup => libc::SIGHUP,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
            Signal::Winch => libc::SIGWINCH,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
            Signal::Quit => "SIGQUIT",
            Signal::Hup => "SIGHUP",
            Signal::Usr1 => "SIGUSR1",
            Signal::Usr2 => "SIGUSR2",
            Signal::Winch => "SIGWINCH",
            Signal::Kill => "SIGKILL",
        };
        f.write_str(name)
    }
}

/// Where a service's stdout and stderr go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceOutput {
    /// The daemon's own stderr (the journal under systemd).
    Inherit,
    /// Appended to this file.
    File(PathBuf),
}

/// A long-running program to supervise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Unique name of the unit (e.g. `web.server`); it names the cgroup and is exported as `CLUSTERD_UNIT`.
    pub unit: String,
    /// argv.
    pub argv: Vec<String>,
    /// Extra environment.
    pub environment: BTreeMap<String, String>,
    /// User name or id.
    pub user: Option<String>,
    /// Group name or id.
    pub group: Option<String>,
    /// Working directory.
    pub working_directory: Option<PathBuf>,
    /// Output.
    pub output: ServiceOutput,
}

/// How a unit's process tree is tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMode {
    /// A cgroup v2 per unit: nothing escapes, `cgroup.kill` kills everything.
    Cgroup,
    /// A process group (session) per unit, plus any process carrying `CLUSTERD_UNIT=<unit>` in its
    /// environment (catches children that called `setsid`).
    ProcessGroup,
}

/// A one-shot command (an OCF action, a readiness check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// argv.
    pub argv: Vec<String>,
    /// Extra environment.
    pub environment: BTreeMap<String, String>,
    /// Killed (with its process group) after this long, or when the caller drops the run.
    pub timeout: Duration,
}

/// How a one-shot command ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandOutput {
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// It was killed because it ran past its timeout.
    pub timed_out: bool,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

/// A process operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// The program does not exist or is not executable.
    #[error("failed to start {program}: not found or not executable")]
    NotFound {
        /// argv[0].
        program: String,
    },
    /// A user or group that does not exist.
    #[error("unknown {kind} {name}")]
    UnknownIdentity {
        /// `user` or `group`.
        kind: String,
        /// The name.
        name: String,
    },
    /// Not allowed.
    #[error("failed to {action}: permission denied")]
    PermissionDenied {
        /// What was being done.
        action: String,
    },
    /// Any other failure.
    #[error("failed to {action}: {message}")]
    Failed {
        /// What was being done.
        action: String,
        /// Why.
        message: String,
    },
}

/// Supervised units and one-shot commands.
#[async_trait::async_trait]
pub trait Processes: Send + Sync {
    /// How process trees are tracked on this host.
    fn kill_mode(&self) -> KillMode;
    /// Start a service as the first process of its unit. Returns its pid.
    async fn spawn(&self, spec: &ServiceSpec) -> Result<u32, ProcessError>;
    /// Live processes of the unit (empty: not running).
    async fn pids(&self, unit: &str) -> Result<Vec<u32>, ProcessError>;
    /// Send `signal` to every process of the unit.
    async fn signal(&self, unit: &str, signal: Signal) -> Result<(), ProcessError>;
    /// SIGKILL every process of the unit.
    async fn kill(&self, unit: &str) -> Result<(), ProcessError>;
    /// Forget an empty unit (remove its cgroup or pid file).
    async fn release(&self, unit: &str) -> Result<(), ProcessError>;
    /// Whether a TCP connection to `address` is accepted within `timeout`.
    async fn tcp_accepts(&self, address: SocketAddr, timeout: Duration) -> bool;
    /// Run a command to completion (or its timeout), capturing its output. The command leads a
    /// process group of its own, killed as a whole at the timeout and when this future is dropped
    /// (an abandoned action); a command that exits by itself leaves its group alone.
    async fn run(&self, command: &CommandSpec) -> Result<CommandOutput, ProcessError>;
}
