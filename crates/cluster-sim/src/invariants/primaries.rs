//! At most `primaries` primaries: at no instant are more instances of a promotable package promoted
//! (from the first instant of a promotion to the end of the demotion or stop that undoes it) than
//! its `primaries`, as seen by the omniscient simulator. The primary role changes hands under the
//! same rules as ownership (docs/safety.md, "Promotable packages").

use std::collections::BTreeMap;

use cluster_model::relations::package_of;

use crate::invariants::{secs, Relations};
use crate::node::Node;

/// Fails with the package, where its instances are promoted, and the time.
pub(crate) fn check(relations: &Relations, nodes: &[Node], now: u64) -> Result<(), String> {
    if relations.primaries.is_empty() {
        return Ok(());
    }
    let mut promoted: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for node in nodes {
        for (key, record) in &node.records {
            if record.promoted {
                promoted.entry(package_of(key)).or_default().push(format!("{key} on {}", node.name));
            }
        }
    }
    for (name, instances) in promoted {
        let allowed = relations.primaries.get(name).copied().unwrap_or(0);
        if instances.len() > allowed {
            return Err(format!(
                "{} primaries of {name} at {} (at most {allowed}): {}",
                instances.len(),
                secs(now),
                instances.join(", ")
            ));
        }
    }
    Ok(())
}
