//! A witness (issue 12) is a voter that never hosts packages: at no instant is anything of a
//! package starting, active, stopping or left behind on it.

use crate::invariants::secs;
use crate::node::Node;

/// Fails with the witness, the package and since when it was there.
pub(crate) fn check(nodes: &[Node], witnesses: &[String], now: u64) -> Result<(), String> {
    for node in nodes.iter().filter(|node| witnesses.contains(&node.name)) {
        let tracked = node.records.iter().map(|(package, record)| (package, record.since_us));
        let ghosts = node.ghosts.iter().map(|(package, since)| (package, *since));
        if let Some((package, since)) = tracked.chain(ghosts).next() {
            return Err(format!("package {package} on witness {} since {} at {}", node.name, secs(since), secs(now)));
        }
    }
    Ok(())
}
