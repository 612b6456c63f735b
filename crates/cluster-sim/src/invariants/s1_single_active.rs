//! S1 (DESIGN §5): at no instant are a package's resources active on two nodes, as seen by the
//! omniscient simulator. Ground truth only changes at events, so checking after every event
//! checks every instant. A start counts as active from its first instant, a stop until its end.

use crate::invariants::secs;
use crate::node::{Activity, Node};

fn describe(activity: Activity) -> &'static str {
    match activity {
        Activity::Starting => "starting",
        Activity::Active => "active",
        Activity::Stopping => "stopping",
        Activity::Stuck => "stuck after a failed stop",
    }
}

/// What is active on `node`: the executor's records and any untracked resources.
fn active(node: &Node) -> impl Iterator<Item = (&String, u64, &'static str)> {
    let tracked = node.records.iter().map(|(package, r)| (package, r.since_us, describe(r.activity)));
    let ghosts = node.ghosts.iter().map(|(package, since)| (package, *since, "left by an abandoned start"));
    tracked.chain(ghosts)
}

/// Fails with the package, both nodes, since when each was active, and the time.
pub(crate) fn check(nodes: &[Node], now: u64) -> Result<(), String> {
    for (i, first) in nodes.iter().enumerate() {
        for (package, a_since, a_what) in active(first) {
            for second in &nodes[i + 1..] {
                if let Some((_, b_since, b_what)) = active(second).find(|(other, _, _)| *other == package) {
                    return Err(format!(
                        "package {package} active on {} (since {}, {a_what}) and on {} (since {}, {b_what}) at {}",
                        first.name,
                        secs(a_since),
                        second.name,
                        secs(b_since),
                        secs(now)
                    ));
                }
            }
        }
    }
    Ok(())
}
