//! Epochs handed to starts never go backwards on a node: an owner never acts on an assignment
//! older than one it has acted on (DESIGN §5, fencing tokens). Kept by the simulator across the
//! node's crashes and restarts, since the applied log is durable.

use std::collections::BTreeMap;

/// The last epoch each node started each package at.
#[derive(Debug, Default)]
pub(crate) struct StartEpochs {
    last: BTreeMap<(String, String), u64>,
}

impl StartEpochs {
    pub(crate) fn on_start(&mut self, node: &str, package: &str, epoch: u64) -> Result<(), String> {
        let slot = self.last.entry((node.to_owned(), package.to_owned())).or_insert(epoch);
        if epoch < *slot {
            return Err(format!("{node} starts {package} at epoch {epoch} after starting it at epoch {}", *slot));
        }
        *slot = epoch;
        Ok(())
    }
}
