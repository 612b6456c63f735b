//! Lease renewals on the wire, around the real `LeaseHolder` (node side) and `LeaseTable`
//! (leader side) of `cluster-model`.
//!
//! ```text
//!  node N, every heartbeat (own clock):  s = now ──Renewal{s}──> believed leader L
//!  L at r = its now: confirm leadership with a quorum (else nothing); h = table.renewed(N, r, settings)
//!  L ──Grant{s, term, last log index, h}──> N: holder.granted(s, grant); wake N at lease_end − stop_budget
//! ```

use std::time::Duration;

use cluster_model::{Command, Grant};

use crate::net::Msg;
use crate::sim::{Sim, Timer};

impl Sim {
    pub(crate) fn on_heartbeat(&mut self, n: usize) {
        let now = self.local(n);
        let heartbeat = self.nodes[n].state.settings.heartbeat();
        self.timer_at(n, now + heartbeat, Timer::Heartbeat);
        if self.nodes[n].lease_given_up() {
            self.evaluate(n);
            self.tend_watchdog(n);
            return;
        }
        if let Some(leader) = self.nodes[n].leader_hint {
            let incarnation = self.nodes[n].incarnation;
            self.send(n, leader, Msg::Renewal { incarnation, sent_at: now });
            // clusterd proposes its hello until it is committed: resent while this node's applied
            // state does not show it back (after a graceful stop it is still marked leaving).
            let node = &self.nodes[n];
            let unannounced =
                node.leave.is_none() && node.state.nodes.get(&node.name).is_none_or(|record| record.leaving);
            if node.hello_pending || unannounced {
                self.nodes[n].hello_pending = false;
                let hello = Command::NodeHello {
                    name: self.nodes[n].name.clone(),
                    watchdog: self.nodes[n].has_watchdog.then(|| "/dev/watchdog".into()),
                    at_ms: self.local_ms(n),
                };
                self.propose(n, hello);
            }
        }
        self.evaluate(n);
        self.tend_watchdog(n);
    }

    pub(crate) fn on_renewal(&mut self, l: usize, from: usize, incarnation: u64, sent_at: Duration) {
        // A removed node gets no lease (clusterd's grant refuses non-members).
        if self.removed.contains(&from) && !self.config.remove_undrained {
            return;
        }
        if !self.confirm(l) {
            return;
        }
        let received = self.local(l);
        let name = self.names[from].clone();
        let leader = &mut self.nodes[l];
        let lease = leader.table.renewed(&name, received, &leader.state.settings);
        self.stats.grants += 1;
        // The leader's last log index, not its applied index: a new leader applies the entries of
        // older terms only after it committed one of its own, and the holder must not act on a
        // state that misses a reassignment the previous leader committed (issue 11, finding 5).
        let commit_index = if self.config.grant_applied_index { self.nodes[l].applied } else { self.log.len() } as u64;
        let term = self.nodes[l].leader_of.unwrap_or(0);
        let grant = Grant { term, commit_index, lease: Some(lease) };
        self.send(l, from, Msg::Grant { incarnation, sent_at, grant });
    }

    pub(crate) fn on_grant(&mut self, n: usize, incarnation: u64, sent_at: Duration, grant: Grant) {
        if incarnation != self.nodes[n].incarnation || self.nodes[n].lease_given_up() {
            return;
        }
        let now = self.local(n);
        let node = &mut self.nodes[n];
        let settings = &node.state.settings;
        node.holder.granted(sent_at, grant, settings);
        // Wake up exactly when the lease leaves `Valid`, to stop in time.
        if let Some(remaining) = node.holder.remaining(now) {
            let must_stop = (now + remaining).saturating_sub(settings.stop_budget());
            if node.lease_check_at.is_none_or(|at| must_stop > at) {
                node.lease_check_at = Some(must_stop);
                self.timer_at(n, must_stop, Timer::LeaseCheck);
            }
        }
        self.evaluate(n);
    }
}
