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

/// Fails with the package, both nodes, since when each was active, and the time.
pub(crate) fn check(nodes: &[Node], now: u64) -> Result<(), String> {
    for (i, first) in nodes.iter().enumerate() {
        for (package, a) in &first.records {
            for second in &nodes[i + 1..] {
                if let Some(b) = second.records.get(package) {
                    return Err(format!(
                        "package {package} active on {} (since {}, {}) and on {} (since {}, {}) at {}",
                        first.name,
                        secs(a.since_us),
                        describe(a.activity),
                        second.name,
                        secs(b.since_us),
                        describe(b.activity),
                        secs(now)
                    ));
                }
            }
        }
    }
    Ok(())
}
