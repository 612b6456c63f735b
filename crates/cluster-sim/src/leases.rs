//! Lease renewals on the wire, around the real `LeaseHolder` (node side) and `LeaseTable`
//! (leader side) of `cluster-model`.
//!
//! ```text
//!  node N, at each multiple of the heartbeat on its wall clock:  s = now (own clock) ──Renewal{s}──> believed leader L
//!  L at r = its now: confirm leadership with a quorum (else nothing); h = table.renewed(N, r, settings)
//!  L ──Grant{s, term, last log index, h}──> N: holder.granted(s, grant); wake N at lease_end − stop_budget
//!  (SimConfig::relay_renewals: N ──RelayRenewal{s}──> relay R ──Relayed──> L ──RelayedGrant──> R ──Grant──> N)
//! ```

use std::time::Duration;

use cluster_model::{Command, Grant};

use crate::net::Msg;
use crate::node::KeepRound;
use crate::sim::{Sim, Timer};

impl Sim {
    pub(crate) fn on_heartbeat(&mut self, n: usize) {
        let now = self.local(n);
        let heartbeat = self.nodes[n].state.settings.heartbeat();
        // At the multiples of the heartbeat on the node's wall clock, as clusterd.
        let wall = u128::from(self.now + self.nodes[n].wall_offset_us);
        self.timer_at(n, now + cluster_model::until_next_renewal(heartbeat, wall), Timer::Heartbeat);
        if self.nodes[n].lease_given_up() {
            self.evaluate(n);
            self.tend_watchdog(n);
            return;
        }
        self.keep_if_no_grant(n, now);
        if let Some(leader) = self.nodes[n].leader_hint {
            let incarnation = self.nodes[n].incarnation;
            match self.relay_for(n, leader, now) {
                Some(relay) => {
                    self.stats.relayed_renewals += 1;
                    self.send(n, relay, Msg::RelayRenewal { incarnation, sent_at: now });
                }
                None => self.send(n, leader, Msg::Renewal { incarnation, sent_at: now }),
            }
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

    /// clusterd's keep renewals: while its lease is valid but no leader granted lately (half of
    /// what a grant leaves passed, `cluster_model::keep_due`), a node asks every voter to keep its lease; a
    /// majority of acknowledgements extends a keep-only lease from the send time (issue 14, item
    /// 1). A new round replaces the one before (whose late answers are ignored), which is stricter
    /// than clusterd, where a round waits for its answers until the stop budget.
    fn keep_if_no_grant(&mut self, n: usize, now: Duration) {
        let node = &self.nodes[n];
        let settings = &node.state.settings;
        let valid = node.holder.status(now, settings) == cluster_model::LeaseStatus::Valid;
        let left = node.holder.left_before_stop_budget(now, settings);
        let due = if self.config.late_keeps {
            left < settings.heartbeat() * 3 / 2
        } else {
            cluster_model::keep_due(left, settings)
        };
        if !valid || !due || self.config.no_keep_renewals {
            return;
        }
        let incarnation = node.incarnation;
        self.nodes[n].keep_round = Some(KeepRound { sent_at: now, acked: Default::default(), lease: None });
        for m in 0..self.nodes.len() {
            if !self.removed.contains(&m) {
                self.send(n, m, Msg::Keep { incarnation, sent_at: now });
            }
        }
    }

    /// Voter `v` receives a keep renewal of `from`.
    pub(crate) fn on_keep(&mut self, v: usize, from: usize, incarnation: u64, sent_at: Duration) {
        let now = self.local(v);
        let name = self.names[from].clone();
        let voter = &mut self.nodes[v];
        if voter.ledger.keep(&name, now, &voter.state.settings) {
            let lease = voter.state.settings.lease_for_holder();
            self.send(v, from, Msg::KeepAck { incarnation, sent_at, lease });
        }
    }

    /// A voter acknowledged node `n`'s keep renewal: at a majority, the lease is kept.
    pub(crate) fn on_keep_ack(&mut self, n: usize, voter: usize, incarnation: u64, sent_at: Duration, lease: Duration) {
        let majority = self.nodes.len() / 2 + 1;
        let node = &mut self.nodes[n];
        if node.incarnation != incarnation || node.lease_given_up() {
            return;
        }
        let Some(round) = node.keep_round.as_mut().filter(|round| round.sent_at == sent_at) else { return };
        round.acked.insert(voter);
        round.lease = Some(round.lease.map_or(lease, |shortest| shortest.min(lease)));
        if round.acked.len() >= majority {
            let round = node.keep_round.take().expect("round");
            node.holder.kept(round.sent_at, round.lease, &node.state.settings);
            self.stats.keeps += 1;
            self.trace(|| format!("n{} lease kept by a majority of voters", n + 1));
            self.schedule_lease_check(n);
        }
    }

    /// The relay node `n` renews through (`SimConfig::relay_renewals`), while its lease is fresh.
    fn relay_for(&self, n: usize, leader: usize, now: Duration) -> Option<usize> {
        if !self.config.relay_renewals || leader == n {
            return None;
        }
        let node = &self.nodes[n];
        let settings = &node.state.settings;
        let left = node.holder.left_before_stop_budget(now, settings);
        if !cluster_model::renew_through_relay(left, settings) {
            return None;
        }
        // Every other member stands for a voter: the simulated nodes all vote.
        let others = (0..self.nodes.len()).filter(|m| *m != n && !self.removed.contains(m));
        let names: Vec<&str> = others.map(|m| self.names[m].as_str()).collect();
        let relay = cluster_model::relay_voter(&self.names[n], names, &self.names[leader])?;
        self.names.iter().position(|name| name == relay)
    }

    /// Relay `r` receives `from`'s renewal: carried to the leader it believes in (granted here if
    /// that is itself), without waiting for others (a batch only delays).
    pub(crate) fn on_relay_renewal(&mut self, r: usize, from: usize, incarnation: u64, sent_at: Duration) {
        match self.nodes[r].leader_hint {
            Some(leader) if leader == r => self.on_renewal(r, from, incarnation, sent_at),
            Some(leader) => self.send(r, leader, Msg::Relayed { origin: from, incarnation, sent_at }),
            None => {}
        }
    }

    pub(crate) fn on_renewal(&mut self, l: usize, from: usize, incarnation: u64, sent_at: Duration) {
        if let Some(grant) = self.grant(l, from) {
            self.send(l, from, Msg::Grant { incarnation, sent_at, grant });
        }
    }

    /// Leader `l` grants `from`'s renewal, received now (directly or through a relay), if it still
    /// leads.
    pub(crate) fn grant(&mut self, l: usize, from: usize) -> Option<Grant> {
        // A removed node gets no lease (clusterd's grant refuses non-members).
        if self.removed.contains(&from) && !self.config.remove_undrained {
            return None;
        }
        if !self.confirm(l) {
            return None;
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
        Some(Grant { term, commit_index, lease: Some(lease) })
    }

    pub(crate) fn on_grant(&mut self, n: usize, incarnation: u64, sent_at: Duration, grant: Grant) {
        if incarnation != self.nodes[n].incarnation || self.nodes[n].lease_given_up() {
            return;
        }

        let node = &mut self.nodes[n];
        let settings = &node.state.settings;
        node.holder.granted(sent_at, grant, settings);
        self.schedule_lease_check(n);
        self.evaluate(n);
    }

    /// Wake node `n` exactly when its lease leaves `Valid`, to stop in time.
    fn schedule_lease_check(&mut self, n: usize) {
        let now = self.local(n);
        let node = &mut self.nodes[n];
        let settings = &node.state.settings;
        if let Some(remaining) = node.holder.remaining(now) {
            let must_stop = (now + remaining).saturating_sub(settings.stop_budget());
            if node.lease_check_at.is_none_or(|at| must_stop > at) {
                node.lease_check_at = Some(must_stop);
                self.timer_at(n, must_stop, Timer::LeaseCheck);
            }
        }
    }
}
