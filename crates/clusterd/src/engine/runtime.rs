//! What a daemon leaves in its runtime folder for the next daemon of the same boot: the refusals it
//! promised as a voter, the stop failures it reported (never started again at that epoch), and its
//! lease (issue 14, item 2: a crashed clusterd restarted by systemd adopts its packages instead of
//! having the watchdog reset the node).
//!
//! The runtime folder is the control socket's folder: `/run/clusterd` (tmpfs) in production, a
//! folder per node in the lab. tmpfs never stalls, outlives a restart of the daemon, and is empty
//! after a reboot — exactly when the lease clock (`CLOCK_BOOTTIME`) starts again. Files are
//! replaced atomically (write, rename); the lease, written at every renewal, is overwritten in
//! place once its file exists (see [`LeaseRecord`]).
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

/// The packages whose failed stop a daemon of this boot reported, with the epoch: never started
/// again at that epoch (docs/safety.md, rule 8), also by a restarted daemon.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StopFailuresFile {
    pub(super) packages: std::collections::BTreeMap<String, u64>,
}

pub(super) const STOP_FAILURES_FILE: &str = "stop-failures.json";
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

/// The largest lease file overwritten in place: a write of at most one page at offset 0 is whole
/// or absent when its process is killed (the kernel copies a page at a time and stops between
/// pages only). A larger one is replaced by a rename.
const IN_PLACE_BYTES: usize = 4096;

/// The lease file as last written, kept open. A new file and a rename at every renewal (ten a
/// second) were a quarter of an idle node's CPU (`perf`: `openat` and `rename`, the new inode);
/// the file is now overwritten in place, padded with spaces to the longest content it held
/// (JSON allows trailing whitespace), so that no shorter write leaves a longer one's tail.
#[derive(Default)]
pub(super) struct LeaseRecord {
    last: Option<LeaseFile>,
    file: Option<std::fs::File>,
    /// Bytes in the file.
    length: usize,
}

impl LeaseRecord {
    /// Writes `lease` to `LEASE_FILE` in `dir` when it differs from what was last written.
    pub(super) fn record(&mut self, dir: &Path, lease: LeaseFile) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.last.as_ref() == Some(&lease) {
            return Ok(());
        }
        let mut bytes = serde_json::to_vec(&lease).map_err(std::io::Error::other)?;
        let written = match &self.file {
            Some(file) if bytes.len().max(self.length) <= IN_PLACE_BYTES => {
                bytes.resize(bytes.len().max(self.length), b' ');
                file.write_all_at(&bytes, 0)
            }
            _ => replace(dir, LEASE_FILE, &bytes).and_then(|()| {
                self.file = Some(std::fs::OpenOptions::new().write(true).open(dir.join(LEASE_FILE))?);
                Ok(())
            }),
        };
        match written {
            Ok(()) => {
                self.length = bytes.len();
                self.last = Some(lease);
                Ok(())
            }
            Err(err) => {
                // Start again from a new file next time.
                *self = LeaseRecord::default();
                Err(err)
            }
        }
    }
}

/// Replaces `name` in `dir` with `value` (write a temporary file, rename it over).
pub(super) fn write<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    replace(dir, name, &bytes)
}

/// Replaces `name` in `dir` with `bytes` (write a temporary file, rename it over).
fn replace(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temporary: PathBuf = dir.join(format!("{name}.tmp"));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_overwritten_in_place_and_a_shorter_one_reads_back_whole() {
        use std::os::unix::fs::MetadataExt;
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join(LEASE_FILE);
        // A predecessor's longer file is replaced, not overwritten.
        std::fs::write(&path, format!("{{\"end\": null, \"junk\": \"{}\"}}", "x".repeat(300))).unwrap();
        let lease = |end_ms: u64, active: &[&str]| LeaseFile {
            end: Some(Duration::from_millis(end_ms)),
            stop_budget: Duration::from_millis(500),
            watchdog_armed: true,
            active: active.iter().map(|name| (*name).to_owned()).collect(),
        };
        let mut record = LeaseRecord::default();
        let long = lease(1_000, &["web", "database", "queue"]);
        record.record(folder.path(), long.clone()).unwrap();
        assert_eq!(read::<LeaseFile>(folder.path(), LEASE_FILE), Ok(Some(long.clone())));
        let inode = std::fs::metadata(&path).unwrap().ino();
        let length = std::fs::metadata(&path).unwrap().len();
        for (end, active) in [(1_100, &["web"][..]), (1_200, &[][..]), (1_300, &["web", "database", "queue"][..])] {
            let next = lease(end, active);
            record.record(folder.path(), next.clone()).unwrap();
            assert_eq!(read::<LeaseFile>(folder.path(), LEASE_FILE), Ok(Some(next)), "end {end}");
            assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode, "overwritten in place");
            assert!(std::fs::metadata(&path).unwrap().len() >= length, "end {end}: padded, never shorter");
        }
        // Content beyond a page goes through a new file again.
        let many: Vec<String> = (0..400).map(|i| format!("package-{i}")).collect();
        let large = lease(1_400, &many.iter().map(String::as_str).collect::<Vec<_>>());
        record.record(folder.path(), large.clone()).unwrap();
        assert_eq!(read::<LeaseFile>(folder.path(), LEASE_FILE), Ok(Some(large)));
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), inode);
        // An unchanged lease writes nothing.
        std::fs::remove_file(&path).unwrap();
        let again = lease(1_500, &[]);
        record.record(folder.path(), again.clone()).unwrap();
        record.record(folder.path(), again).unwrap();
    }

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
