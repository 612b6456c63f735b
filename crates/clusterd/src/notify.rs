//! systemd integration: `READY=1` once serving, `WATCHDOG=1` only while the node is healthy.

use std::sync::Arc;
use std::time::Duration;

use cluster_raft::ConsensusNode;

/// Tells systemd (if it started us with `NOTIFY_SOCKET`) that the daemon serves requests.
pub(crate) fn ready(status: &str) {
    let states = [sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)];
    if let Err(err) = sd_notify::notify(&states) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

/// Tells systemd we are stopping.
pub(crate) fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Pets systemd's watchdog at half its interval, from the runtime that serves requests, and only
/// while Raft is running: a stuck runtime or a dead consensus core stops the pets and systemd
/// restarts the daemon.
pub(crate) async fn watchdog_loop(node: Arc<ConsensusNode>) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(10));
    tracing::info!(?interval, "systemd watchdog enabled");
    loop {
        tokio::time::sleep(period).await;
        if node.healthy() {
            if let Err(err) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                tracing::warn!(error = %err, "cannot pet the systemd watchdog");
            }
        } else {
            tracing::error!("raft core stopped: no longer petting the systemd watchdog");
        }
    }
}
