//! A one-shot command's process group, killed as a whole when the action that runs it is abandoned.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Kills a process group with SIGKILL when dropped, unless [`GroupKillOnDrop::disarm`]ed.
///
/// A command started with `process_group(0)` leads its own group; everything it forks stays in it
/// unless it calls `setsid`/`setpgid`. Arm this right after the spawn and disarm it once the command
/// exited normally: an action whose future is dropped instead (its timeout, or the engine giving up a
/// start at the lease's stop budget) then takes every process of the group with it, not only the
/// command (tokio's `kill_on_drop` kills the direct child alone; its background children and a
/// child it was waiting for would keep running, outside anything the agent tracks).
///
/// The group id stays reserved while any member lives (Linux does not reuse a pid that is still a
/// process group id), so the kill reaches only processes of this command's group.
#[derive(Debug)]
pub(crate) struct GroupKillOnDrop {
    group: Option<Pid>,
}

impl GroupKillOnDrop {
    /// Guard the group led by `leader` (the spawned command's pid; `None` if it already exited).
    pub(crate) fn new(leader: Option<u32>) -> Self {
        GroupKillOnDrop { group: leader.and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw) }
    }

    /// The command exited by itself: leave what it started in its group alone (an OCF start may
    /// legitimately leave a daemon behind).
    pub(crate) fn disarm(mut self) {
        self.group = None;
    }
}

impl Drop for GroupKillOnDrop {
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            match killpg(group, Signal::SIGKILL) {
                Ok(()) => tracing::debug!(group = group.as_raw(), "killed the process group of an abandoned command"),
                Err(nix::errno::Errno::ESRCH) => {}
                Err(errno) => {
                    tracing::warn!(group = group.as_raw(), %errno, "failed to kill the process group of an abandoned command")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
                .unwrap_or(true)
    }

    #[tokio::test]
    async fn a_dropped_guard_kills_the_whole_group_and_a_disarmed_one_kills_nothing() {
        for disarm in [false, true] {
            let mut child = tokio::process::Command::new("sh")
                .args(["-c", "sleep 30 & echo $!; wait"])
                .stdout(std::process::Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .expect("spawn sh");
            let guard = GroupKillOnDrop::new(child.id());
            let mut line = String::new();
            let stdout = child.stdout.take().expect("stdout");
            tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout), &mut line)
                .await
                .expect("read background pid");
            let background: i32 = line.trim().parse().expect("pid");
            if disarm {
                guard.disarm();
            } else {
                drop(guard);
            }
            let mut gone = false;
            for _ in 0..40 {
                if !alive(background) {
                    gone = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            assert_eq!(gone, !disarm, "background child of the group (disarmed: {disarm})");
            // Whatever the case, leave nothing behind.
            let _ = killpg(Pid::from_raw(child.id().expect("pid") as i32), Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
}
