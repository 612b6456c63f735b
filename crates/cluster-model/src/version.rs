//! Cluster versions: which formats every member reads, hence what the leader may emit.
//!
//! Every release reads the formats of the releases it can be upgraded from, but writes (to its log,
//! its snapshots and its peers) only what the oldest member can read. The cluster version is that
//! oldest release, committed in the log: it starts at [`ClusterVersion::V0_1`] for a log replayed
//! from its beginning, and the leader raises it with `Command::ActivateVersion` once every member
//! runs a newer release. Until then, a command that needs a newer version is refused before it
//! reaches the log, and applying one is rejected. docs/upgrades.md has the whole procedure.
//!
//! ```text
//!   cluster version   wire protocol   log record   snapshot data   written by
//!   1 (0.1.0)         3               1            2               v0.1.0, and newer releases while a 0.1.0 member may exist
//!   2 (0.2.0)         4               2            5               0.2.0 once every member runs it
//! ```

use serde::{Deserialize, Serialize};

/// A cluster version: the oldest release whose formats the cluster uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterVersion(pub u32);

impl ClusterVersion {
    /// v0.1.0, the first release: no version on its wire or in its state.
    pub const V0_1: ClusterVersion = ClusterVersion(1);
    /// 0.2.0: alert hooks, lease ceilings, witnesses, join tokens, certificate revocation.
    pub const V0_2: ClusterVersion = ClusterVersion(2);
    /// The version this binary writes once every member runs it.
    pub const CURRENT: ClusterVersion = ClusterVersion::V0_2;
    /// The oldest version this binary can join and read.
    pub const OLDEST: ClusterVersion = ClusterVersion::V0_1;

    /// The release that introduced this version, as operators read it.
    pub fn release(self) -> &'static str {
        match self.0 {
            1 => "0.1.0",
            2 => "0.2.0",
            _ => "a release newer than this clusterd",
        }
    }

    /// Whether this binary can run in a cluster at this version.
    pub fn supported(self) -> bool {
        (ClusterVersion::OLDEST..=ClusterVersion::CURRENT).contains(&self)
    }
}

impl std::fmt::Display for ClusterVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.release())
    }
}

/// Something a cluster at an older version cannot carry: names it and the version it needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} needs cluster version {needs}")]
pub struct NeedsVersion {
    /// What was asked for (a command, a field in use).
    pub what: String,
    /// The version that introduced it.
    pub needs: ClusterVersion,
}

impl NeedsVersion {
    pub fn new(what: impl Into<String>, needs: ClusterVersion) -> NeedsVersion {
        NeedsVersion { what: what.into(), needs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_ordered_and_named() {
        assert!(ClusterVersion::V0_1 < ClusterVersion::V0_2);
        assert_eq!(ClusterVersion::CURRENT.to_string(), "0.2.0");
        assert_eq!(ClusterVersion::V0_1.to_string(), "0.1.0");
        assert!(ClusterVersion::V0_1.supported() && ClusterVersion::CURRENT.supported());
        assert!(!ClusterVersion(3).supported() && !ClusterVersion(0).supported());
        let needs = NeedsVersion::new("command `SetAlert`", ClusterVersion::V0_2);
        assert_eq!(needs.to_string(), "command `SetAlert` needs cluster version 0.2.0");
    }
}
