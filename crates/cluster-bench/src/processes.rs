//! The server processes and the scratch directory of one run, and their teardown.
//!
//! Every server is started from the main thread with `PR_SET_PDEATHSIG = SIGKILL`, so that it
//! dies with `clusterbench` even if `clusterbench` itself is killed; normal teardown kills each
//! server by its PID, waits for it, then removes the scratch directory.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// One running server.
struct Server {
    name: String,
    log: PathBuf,
    child: Child,
}

/// The servers and the scratch directory of one run.
pub(crate) struct Processes {
    servers: Vec<Server>,
    scratch: Option<tempfile::TempDir>,
    keep: bool,
}

impl Processes {
    /// Creates a fresh scratch directory under `parent`; `keep` leaves it behind at teardown.
    pub(crate) fn new(parent: &Path, keep: bool) -> anyhow::Result<Processes> {
        let scratch = tempfile::Builder::new()
            .prefix("clusterbench-")
            .tempdir_in(parent)
            .with_context(|| format!("failed to create a scratch directory in {}", parent.display()))?;
        Ok(Processes { servers: Vec::new(), scratch: Some(scratch), keep })
    }

    /// The scratch directory (data dirs, sockets, certificates, logs).
    pub(crate) fn scratch(&self) -> &Path {
        self.scratch.as_ref().map(|dir| dir.path()).expect("scratch directory exists until teardown")
    }

    /// Starts `command` as server `name`, its stdout and stderr going to `log`. Call from the
    /// main thread only: the parent-death signal fires when the spawning *thread* exits.
    pub(crate) fn spawn(&mut self, name: &str, mut command: Command, log: &Path) -> anyhow::Result<u32> {
        let log_file =
            File::create(log).with_context(|| format!("failed to create log file {} for {name}", log.display()))?;
        let log_copy =
            log_file.try_clone().with_context(|| format!("failed to open log file {} for {name}", log.display()))?;
        command.stdin(Stdio::null()).stdout(Stdio::from(log_copy)).stderr(Stdio::from(log_file));
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2) with
        // integer arguments, which is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("failed to start {name} ({:?})", command.get_program()))?;
        let pid = child.id();
        self.servers.push(Server { name: name.to_owned(), log: log.to_owned(), child });
        Ok(pid)
    }

    /// Fails, with the end of its log, if any server has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        for server in &mut self.servers {
            let status = server.child.try_wait().with_context(|| format!("failed to check on {}", server.name))?;
            if let Some(status) = status {
                bail!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    server.name,
                    server.log.display(),
                    log_tail(&server.log, 15)
                );
            }
        }
        Ok(())
    }

    /// Kills every server by PID, waits for it, and removes the scratch directory. Tries every
    /// step and reports every failure.
    pub(crate) fn teardown(&mut self) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        for mut server in self.servers.drain(..) {
            let pid = server.child.id();
            if let Ok(None) = server.child.try_wait() {
                if let Err(err) = server.child.kill() {
                    failures.push(format!("failed to kill {} (pid {pid}): {err}", server.name));
                }
            }
            if let Err(err) = server.child.wait() {
                failures.push(format!("failed to reap {} (pid {pid}): {err}", server.name));
            }
        }
        if let Some(scratch) = self.scratch.take() {
            if self.keep {
                eprintln!("clusterbench: kept {}", scratch.keep().display());
            } else {
                let path = scratch.path().to_owned();
                if let Err(err) = scratch.close() {
                    failures.push(format!("failed to remove {}: {err}", path.display()));
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("teardown: {}", failures.join("; "))
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        if let Err(err) = self.teardown() {
            eprintln!("clusterbench: {err:#}");
        }
    }
}

/// The last `lines` lines of a log file, or why it cannot be read.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}
