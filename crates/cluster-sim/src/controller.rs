//! The controller on the leader: every tick, the real `cluster_model::controller::plan` over the
//! leader's applied state and its `LeaseTable` view; proposals are committed, fences started.
//!
//! ```text
//!  LeaderTick (every 50 ms, leader's clock)
//!    └─ confirm leadership with a quorum? ── no ──> nothing (a deposed leader never acts)
//!         yes: View{ liveness of every node from LeaseTable at now, fences in flight }
//!              plan(state, view, now) ──> Propose(cmd): commit   Fence{node}: fence agent (100–600 ms)
//!    └─ Append to every node (replication heartbeat)
//! ```

use std::time::Duration;

use cluster_model::controller::{plan, Action, Liveness, View};
use cluster_model::Command;

use crate::raft::LEADER_TICK_MS;
use crate::sim::{Sim, Timer};

impl Sim {
    pub(crate) fn on_leader_tick(&mut self, l: usize, term: u64) {
        if self.nodes[l].leader_of != Some(term) {
            return;
        }
        let now = self.local(l);
        self.timer_at(l, now + Duration::from_millis(LEADER_TICK_MS), Timer::LeaderTick { term });
        if self.confirm(l) {
            let node = &self.nodes[l];
            let settings = &node.state.settings;
            // The leader runs: it never judges (or fences) itself from its own lease table.
            let liveness = |name: &String| {
                if *name == node.name {
                    Liveness::Alive
                } else {
                    node.table.liveness(name, now, settings)
                }
            };
            let view = View {
                nodes: self.names.iter().map(|name| (name.clone(), liveness(name))).collect(),
                fencing: node.fencing.clone(),
            };
            let actions = plan(&node.state, &view, now.as_millis() as u64);
            for action in actions {
                match action {
                    Action::Propose(command) => {
                        if let Command::Assign { package, reason, .. } = &command {
                            if reason.contains("lost its lease") {
                                self.stats.expiry_reassignments += 1;
                            }
                            self.trace(|| format!("n{} controller: {package}: {reason}", l + 1));
                        }
                        self.commit(l, command);
                    }
                    Action::Fence { node, .. } => self.start_fence(l, node),
                }
            }
        }
        if self.nodes[l].leader_of == Some(term) {
            self.broadcast_append(l);
        }
        self.evaluate(l);
    }
}
