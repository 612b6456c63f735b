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

    /// clusterd's expiry check: before it acts on nodes whose lease ended by its table, the leader
    /// asks every voter it reaches when it last kept their lease (each voter then refuses their keeps
    /// for one longest wait); with a majority of answers, a node none of them kept recently is
    /// confirmed expired, one a voter kept is waited for until that keep ends (issue 14, item 1).
    fn confirm_expiries(&mut self, l: usize, now: Duration) {
        let settings = self.nodes[l].state.settings.clone();
        let pending = self.nodes[l].table.awaiting_confirmation(self.names.iter().map(String::as_str), now, &settings);
        if pending.is_empty() {
            return;
        }
        self.stats.expiry_checks += 1;
        let drift_ppm = settings.clock_drift_ppm;
        let mut answers = 0;
        let mut kept: std::collections::BTreeMap<String, Duration> = Default::default();
        for v in 0..self.nodes.len() {
            if !(self.nodes[v].runs() && self.net.reachable(l, v)) {
                continue;
            }
            answers += 1;
            let voter_now = self.local(v);
            let voter = &mut self.nodes[v];
            let checked: Vec<Option<Duration>> =
                pending.iter().map(|node| voter.ledger.check(node, voter_now, &voter.state.settings)).collect();
            let wait = voter.ledger.answer_wait(voter_now, &voter.state.settings).max(settings.longest_grantor_wait());
            for (node, elapsed) in pending.iter().zip(checked) {
                if let Some(elapsed) = elapsed {
                    // Counted back from the leader's now, shortened by the drift bound (in whole ms,
                    // rounded down, as on the wire): the keep is placed late, never early.
                    let elapsed_ms = elapsed.as_millis() as u64;
                    let shortened = Duration::from_micros(elapsed_ms * (1_000_000 - drift_ppm) / 1_000);
                    let until = now.saturating_sub(shortened) + wait;
                    let slot = kept.entry(node.clone()).or_insert(until);
                    *slot = (*slot).max(until);
                }
            }
        }
        if answers * 2 <= self.nodes.len() {
            return;
        }
        for node in pending {
            match kept.get(&node) {
                Some(until) => {
                    self.stats.kept_by_voters += 1;
                    self.nodes[l].table.kept(&node, *until);
                }
                None => self.nodes[l].table.confirm_expired(&node),
            }
        }
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
        // A new leader plans only once it applied its whole log (an entry of its own term): the
        // settings in force, the lease length above all, are those of every committed entry. One
        // that planned on a lagging state judged an older leader's 3 s leases by the 1 s of its
        // state before the change and reassigned too early (found with seed 309 of
        // `relations_hold_with_3_watchdog_nodes`: `a_new_leader_that_plans_before_applying_its_log_breaks_s1`).
        if self.nodes[l].applied < self.log.len() && !self.config.plan_before_catch_up {
            return;
        }
        if quorum {
            self.confirm_expiries(l, now);
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
            // Nothing more once it handed leadership over.
            if self.nodes[l].leader_of.is_none() {
                break;
            }
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
                // A leader never fences itself: it hands leadership over, the next leader fences it.
                Action::Fence { node, .. } if node == self.names[l] => self.hand_over(l),
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
