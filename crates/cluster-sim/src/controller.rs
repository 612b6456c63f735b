//! The controller on the leader: every tick, the real `cluster_model::controller::plan` over the
//! leader's applied state and its `LeaseTable` view; proposals are committed, fences started.
//! Like the daemon's controller, which sleeps until `LeaseTable::next_change`, it also runs at the
//! instant a lease runs out when that falls between two ticks.
//!
//! ```text
//!  LeaderTick (every 50 ms, leader's clock)       ControllerWake (at LeaseTable::next_change)
//!    └─ believes it leads: View{ liveness of every node from LeaseTable at now, fences in flight }
//!         plan(state, view, now) ──> Propose(cmd): commits only with a quorum (Raft)
//!                                    Fence{node}: fence agent (100–600 ms), only once a quorum
//!                                    confirmed the leadership after the view (a deposed leader
//!                                    that still believes it leads fences nobody)
//!         the nodes a quorum round reached answered its appends: LeaseTable::acknowledged (grace)
//!    └─ next_change before the next tick? ──> ControllerWake then (ticks only: one per tick)
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
        let next_tick = now + Duration::from_millis(LEADER_TICK_MS);
        self.timer_at(l, next_tick, Timer::LeaderTick { term });
        self.run_controller(l, now);
        let settings = &self.nodes[l].state.settings;
        if let Some(change) = self.nodes[l].table.next_change(now, settings).filter(|at| *at < next_tick) {
            self.timer_at(l, change, Timer::ControllerWake { term });
        }
        if self.nodes[l].leader_of == Some(term) {
            self.broadcast_append(l);
        }
        self.evaluate(l);
    }

    /// A lease in the leader's table runs out now (scheduled by the tick before).
    pub(crate) fn on_controller_wake(&mut self, l: usize, term: u64) {
        if self.nodes[l].leader_of != Some(term) {
            return;
        }
        let now = self.local(l);
        self.run_controller(l, now);
        self.evaluate(l);
    }

    fn run_controller(&mut self, l: usize, now: Duration) {
        // Like the daemon, a node plans whenever it believes it leads. Its appends this tick reach
        // a quorum or not (a deposed leader that reaches one learns the newer term and steps down);
        // its proposals commit only with a quorum (Raft); its fences start only once a quorum
        // confirmed its leadership after the view was taken (issue 11, trap A).
        let quorum = self.confirm(l);
        if self.nodes[l].leader_of.is_none() {
            return;
        }
        if quorum {
            // The nodes that acknowledged this round answer the leader's appends: they get its
            // grace to renew (as the daemon feeds its replication acknowledgements).
            for m in 0..self.nodes.len() {
                if m != l && self.nodes[m].runs() && self.net.reachable(l, m) {
                    let name = self.names[m].clone();
                    self.nodes[l].table.acknowledged(&name);
                }
            }
        }
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
        let members = |i: &usize| !self.removed.contains(i);
        let nodes = (0..self.names.len()).filter(members).map(|i| (self.names[i].clone(), liveness(&self.names[i])));
        // Owners that were removed are judged by their lease (the old controller left them out).
        let departed = (0..self.names.len())
            .filter(|i| !members(i) && !self.config.remove_undrained)
            .filter(|i| node.state.packages.values().any(|p| p.owner.as_deref() == Some(self.names[*i].as_str())))
            .map(|i| (self.names[i].clone(), liveness(&self.names[i])));
        let view = View { nodes: nodes.collect(), departed: departed.collect(), fencing: node.fencing.clone() };
        let mut actions = plan(&node.state, &view, now.as_millis() as u64);
        if let Some(ceiling_us) = node.table.leases_settled(now, settings) {
            actions.push(Action::Propose(Command::LeasesSettled { ceiling_us }));
        }
        for action in actions {
            match action {
                Action::Propose(command) if quorum => {
                    if let Command::Assign { package, reason, .. } = &command {
                        if reason.contains("lost its lease") {
                            self.stats.expiry_reassignments += 1;
                        }
                        self.trace(|| format!("n{} controller: {package}: {reason}", l + 1));
                    }
                    self.commit(l, command);
                }
                Action::Propose(_) => {}
                Action::Fence { node, .. } if quorum || self.config.fence_without_confirming => {
                    self.start_fence(l, node)
                }
                Action::Fence { node, .. } => {
                    self.trace(|| format!("n{} controller: not fencing {node}: leadership not confirmed", l + 1))
                }
            }
        }
    }
}
