//! What a daemon leaves in its runtime folder for the next daemon of the same boot: the refusals it
//! promised as a voter, and its lease (issue 14, item 2: a crashed clusterd restarted by systemd
//! adopts its packages instead of having the watchdog reset the node).
//!
//! The runtime folder is the control socket's folder: `/run/clusterd` (tmpfs) in production, a
//! folder per node in the lab. tmpfs never stalls, outlives a restart of the daemon, and is empty
//! after a reboot — exactly when the lease clock (`CLOCK_BOOTTIME`) starts again. Files are
//! replaced atomically (write, rename).
//!
//! ```text
//!  every heartbeat: LeaseFile { end, stop_budget, watchdog armed, packages possibly active } ──> lease.json
//!  restart: lease.json with now + stop_budget < end ──> re-arm the watchdog at once (it still runs),
//!           LeaseHolder::restored(end) (keep what runs, start nothing), those packages count as
//!           active until probed
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The refusals a voter promised: (node, until) on the lease clock.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct RefusalsFile {
    pub(super) refusals: Vec<(String, Duration)>,
}

/// The node's lease as its daemon last knew it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LeaseFile {
    /// End of the lease (granted or kept) on the lease clock; `None`: no lease.
    pub(super) end: Option<Duration>,
    /// The stop budget in force (the watchdog's timeout).
    pub(super) stop_budget: Duration,
    /// The watchdog was armed.
    pub(super) watchdog_armed: bool,
    /// Packages whose resources may be active here.
    pub(super) active: Vec<String>,
}

pub(super) const REFUSALS_FILE: &str = "keep-refusals.json";
pub(super) const LEASE_FILE: &str = "lease.json";

/// Reads `name` from `dir`: `None` when absent; an error names the file.
pub(super) fn read<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>, String> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|err| format!("{}: {err}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(format!("{}: {err}", path.display())),
    }
}

/// Replaces `name` in `dir` with `value` (write a temporary file, rename it over).
pub(super) fn write<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let temporary: PathBuf = dir.join(format!("{name}.tmp"));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_absent_files_are_none() {
        let folder = tempfile::tempdir().unwrap();
        assert_eq!(read::<LeaseFile>(folder.path(), LEASE_FILE), Ok(None));
        let lease = LeaseFile {
            end: Some(Duration::from_millis(12_345)),
            stop_budget: Duration::from_millis(500),
            watchdog_armed: true,
            active: vec!["web".into()],
        };
        write(folder.path(), LEASE_FILE, &lease).unwrap();
        assert_eq!(read::<LeaseFile>(folder.path(), LEASE_FILE), Ok(Some(lease)));
        std::fs::write(folder.path().join(REFUSALS_FILE), b"not json").unwrap();
        let err = read::<RefusalsFile>(folder.path(), REFUSALS_FILE).unwrap_err();
        assert!(err.contains("keep-refusals.json"), "{err}");
    }
}
