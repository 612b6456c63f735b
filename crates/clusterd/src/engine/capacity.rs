//! Announces what this node offers to packages' `needs` (the node file's `capacity`): once it holds
//! a lease, whenever the replicated record differs (first start, a changed node file, a record lost
//! with a removal and re-addition).

use std::sync::Arc;
use std::time::Duration;

use cluster_model::Command;

use super::{wall_ms, Engine};

/// How often the replicated capacity is compared with the node file's.
const CHECK: Duration = Duration::from_secs(1);

pub(crate) async fn announce_loop(engine: Arc<Engine>) {
    let mut told = false;
    loop {
        tokio::time::sleep(CHECK).await;
        if engine.lease_remaining().is_none() || engine.stopping() || engine.lease_given_up() {
            continue;
        }
        let version = engine.node.cluster_version();
        if version < cluster_model::ClusterVersion::V0_2 {
            // v0.1.0 members cannot decode `NodeCapacity`: announced once the upgrade is over.
            if !engine.capacity.is_empty() && !told {
                tracing::info!(cluster_version = %version, "capacity announced once every node runs 0.2.0");
                told = true;
            }
            continue;
        }
        let differs = engine.node.read_local(|state| {
            let announced = state.nodes.get(&engine.me).map(|record| &record.capacity);
            announced.map_or(!engine.capacity.is_empty(), |announced| *announced != engine.capacity)
        });
        if !differs {
            continue;
        }
        let command =
            Command::NodeCapacity { name: engine.me.clone(), capacity: engine.capacity.clone(), at_ms: wall_ms() };
        match engine.propose(command).await {
            Ok(_) => tracing::info!(capacity = ?engine.capacity, "capacity announced"),
            Err(err) => tracing::warn!(error = %err, "capacity not announced, will retry"),
        }
    }
}
