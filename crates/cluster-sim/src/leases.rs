//! Lease renewals on the wire, around the real `LeaseHolder` (node side) and `LeaseTable`
//! (leader side) of `cluster-model`.
//!
//! ```text
//!  node N, every heartbeat (own clock):  s = now ──Renewal{s}──> believed leader L
//!  L at r = its now: confirm leadership with a quorum (else nothing); table.renewed(N, r)
//!  L ──Grant{s, commit index}──> N: holder.granted(s, commit, settings); wake N at lease_end − stop_budget
//! ```

use std::time::Duration;

use cluster_model::Command;

use crate::net::Msg;
use crate::sim::{Sim, Timer};

impl Sim {
    pub(crate) fn on_heartbeat(&mut self, n: usize) {
        let now = self.local(n);
        let heartbeat = self.nodes[n].state.settings.heartbeat();
        self.timer_at(n, now + heartbeat, Timer::Heartbeat);
        if self.nodes[n].lease_given_up() {
            self.evaluate(n);
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
    }

    pub(crate) fn on_renewal(&mut self, l: usize, from: usize, incarnation: u64, sent_at: Duration) {
        if !self.confirm(l) {
            return;
        }
        let received = self.local(l);
        let name = self.names[from].clone();
        self.nodes[l].table.renewed(&name, received);
        self.stats.grants += 1;
        let commit = self.nodes[l].applied as u64;
        self.send(l, from, Msg::Grant { incarnation, sent_at, commit });
    }

    pub(crate) fn on_grant(&mut self, n: usize, incarnation: u64, sent_at: Duration, commit: u64) {
        if incarnation != self.nodes[n].incarnation || self.nodes[n].lease_given_up() {
            return;
        }
        let now = self.local(n);
        let node = &mut self.nodes[n];
        let settings = &node.state.settings;
        node.holder.granted(sent_at, commit, settings);
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
