//! Rolling upgrades on the leader: learns which release every member runs, and raises the cluster
//! version once every member reads the newer formats (docs/upgrades.md).
//!
//! ```text
//!   every PROBE (1 s while the cluster is below this release's version, 10 s after):
//!     leader ── Version rpc (protocol 4) ──> each member: its release | refused (v0.1.0) | no answer
//!     every member answered with a release that reads CURRENT ──> propose ActivateVersion(CURRENT)
//!   `status` shows each member's release and says why the cluster is still at an older version
//! ```
//!
//! Raising the version is the point of no return: from then on the log, the snapshots and the peer
//! protocol use this release's formats, which v0.1.0 cannot read. It needs an answer from every
//! member, so a member that is down holds the cluster at the older version.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_model::ClusterVersion;
use cluster_raft::{ConsensusNode, MemberVersion};

/// Interval of the probe while the cluster runs below this release's version.
const PROBE_UPGRADING: Duration = Duration::from_secs(1);
/// Interval once it runs at it (for `status` only).
const PROBE_CURRENT: Duration = Duration::from_secs(10);
/// How long `cluster init` waits for the new cluster to run at this release's version.
const NEW_CLUSTER_WAIT: Duration = Duration::from_secs(10);

/// What the leader last learned of the members' releases.
#[derive(Debug, Default)]
pub(crate) struct Versions {
    last: Mutex<Option<Vec<(String, MemberVersion)>>>,
}

impl Versions {
    /// The release of `node` as last heard (`None`: not asked yet, or no answer).
    pub(crate) fn release_of(&self, node: &str) -> Option<String> {
        let last = self.last.lock().expect("versions lock");
        let members = last.as_ref()?;
        members.iter().find(|(name, _)| name == node).and_then(|(_, version)| version.release().map(str::to_owned))
    }

    pub(crate) fn record(&self, mut members: Vec<(String, MemberVersion)>) {
        members.sort_by(|a, b| a.0.cmp(&b.0));
        *self.last.lock().expect("versions lock") = Some(members);
    }

    /// What `status` must say while the cluster runs below this release's version: which members
    /// hold it there, and what that means.
    pub(crate) fn warning(&self, cluster: ClusterVersion) -> Option<String> {
        if cluster >= ClusterVersion::CURRENT {
            return None;
        }
        let last = self.last.lock().expect("versions lock");
        let features = format!(
            "features of {} (alert hooks, witnesses, join tokens, certificate revocation) are refused until every node \
             runs it, and the cluster version rises by itself then (docs/upgrades.md)",
            ClusterVersion::CURRENT
        );
        let Some(members) = last.as_ref() else {
            return Some(format!(
                "the cluster runs at version {cluster} (the leader has not asked the nodes for their release yet); \
                 {features}"
            ));
        };
        let holding: Vec<String> = members
            .iter()
            .filter(|(_, version)| version.newest().is_none_or(|newest| newest < ClusterVersion::CURRENT))
            .map(|(name, version)| match version {
                MemberVersion::Unknown(why) => format!("{name} (release unknown: {why})"),
                other => format!("{name} ({})", other.release().unwrap_or("?")),
            })
            .collect();
        let verb = if holding.len() == 1 { "does" } else { "do" };
        Some(format!(
            "the cluster runs at version {cluster}: {} {verb} not run clusterd {} yet; {features}",
            holding.join(", "),
            ClusterVersion::CURRENT,
        ))
    }
}

/// Runs for the daemon's lifetime; acts only while this node leads. A write that needs the newer
/// version also asks at once (`ConsensusNode::write`), so nobody waits for this probe.
pub(crate) async fn run(node: Arc<ConsensusNode>, versions: Arc<Versions>) {
    loop {
        let interval = if node.cluster_version() < ClusterVersion::CURRENT { PROBE_UPGRADING } else { PROBE_CURRENT };
        tokio::time::sleep(interval).await;
        if node.leadership().is_none() {
            continue;
        }
        versions.record(node.raise_version(Duration::from_secs(1)).await);
    }
}

/// After `cluster init`: a cluster of this one node runs at this release's version at once (its
/// first leadership may take a while on a loaded host, so this waits for it).
pub(crate) async fn activate_new_cluster(node: &ConsensusNode) {
    let deadline = Instant::now() + NEW_CLUSTER_WAIT;
    while node.cluster_version() < ClusterVersion::CURRENT && Instant::now() < deadline {
        if node.leadership().is_some() {
            node.raise_version(Duration::from_secs(1)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    if node.cluster_version() < ClusterVersion::CURRENT {
        tracing::warn!(
            version = %node.cluster_version(),
            "the new cluster still runs at an older version; the leader raises it within a second once it can"
        );
    }
}
