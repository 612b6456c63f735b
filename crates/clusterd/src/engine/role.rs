//! A node whose file says `role = "witness"` records itself as a witness (a voter that never hosts
//! packages) once it holds a lease, as `NodeHello` announces the node itself.

use std::sync::Arc;
use std::time::Duration;

use cluster_model::Command;

use super::{wall_ms, Engine};

/// How often the role is checked against the replicated state.
const CHECK: Duration = Duration::from_secs(1);

/// Runs for the daemon's lifetime on a node whose file says `role = "witness"`.
pub(crate) async fn announce_witness(engine: Arc<Engine>) {
    let mut refused = None;
    loop {
        tokio::time::sleep(CHECK).await;
        if engine.lease_remaining().is_none() || engine.stopping() {
            continue;
        }
        if engine.node.read_local(|state| state.witnesses.contains(&engine.me)) {
            continue;
        }
        let command = Command::NodeRole { name: engine.me.clone(), witness: true, at_ms: wall_ms() };
        match engine.propose(command).await {
            Ok(_) => tracing::info!("recorded as a witness: this node never hosts packages"),
            Err(err) if refused.as_ref() != Some(&err) => {
                // At cluster version 0.1.0 (a member still runs it) no witness can be recorded.
                tracing::warn!(error = %err, "role = \"witness\": not recorded yet; this node may host packages until it is");
                refused = Some(err);
            }
            Err(_) => {}
        }
    }
}
