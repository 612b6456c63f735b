//! Anti-affinity, as seen by the omniscient simulator: two instances of one package, or two packages
//! tied by a `different-node` dependency, are never active on the same node at the same instant
//! (starting, running, stopping, stuck or left by an abandoned start all count). Like S1, it must
//! hold through failovers: the state machine refuses an assignment next to a package that may be
//! active there, and a package leaves a node's "may be active" only under S1's rules.

use cluster_model::relations::package_of;

use crate::invariants::{secs, Relations};
use crate::node::Node;

/// Fails with the node, both instances and the time.
pub(crate) fn check(relations: &Relations, nodes: &[Node], now: u64) -> Result<(), String> {
    for node in nodes {
        let active: Vec<&String> = node.records.keys().chain(node.ghosts.keys()).collect();
        for (i, first) in active.iter().enumerate() {
            for second in &active[i + 1..] {
                let (a, b) = (package_of(first), package_of(second));
                let siblings = a == b && first != second && relations.multi.contains(a);
                let conflict = relations.conflicts.contains(&(a.to_owned(), b.to_owned()));
                if siblings || conflict {
                    let why = if siblings { "two instances of one package" } else { "different-node" };
                    return Err(format!("{first} and {second} both active on {} at {} ({why})", node.name, secs(now)));
                }
            }
        }
    }
    Ok(())
}
