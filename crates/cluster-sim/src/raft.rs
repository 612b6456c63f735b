//! Raft as an abstract linearizable log: one global sequence of committed commands, an
//! effective leader chosen by the simulator, and per-node applied prefixes.
//!
//! ```text
//!  proposer ──Propose──> leader: commits iff it is the effective leader AND reaches a majority now
//!                          │ log.push(cmd); applies at once
//!                          └──Append{term, commit}──> every node (lossy, delayed): applies log[..commit]
//!  leader crashed / paused / cut from the majority ──150–600 ms──> election among the majority side;
//!  the winner calls LeaseTable::elected(now) on its own clock, and applies the rest of the log
//!  0–150 ms later (its applied index lags its log meanwhile, as openraft's does).
//!  A deposed leader keeps believing it leads until it reaches a majority (then it learns the new
//!  term and steps down) or hears an Append of a newer term; it never commits nor confirms.
//! ```

use std::time::Duration;

use cluster_model::Command;
use rand::Rng;

use crate::net::Msg;
use crate::node::{Busy, Power};
use crate::sim::{ms, Event, Sim, Timer};

/// Leader tick: controller run and replication heartbeat.
pub(crate) const LEADER_TICK_MS: u64 = 50;
/// clusterd's request timeout: how long a proposal is waited for.
pub(crate) const REQUEST_TIMEOUT_MS: u64 = 5_000;

impl Sim {
    /// Whether `n` is up, unpaused and reaches a strict majority of up, unpaused nodes (itself included).
    pub(crate) fn reaches_majority(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        if !node.runs() {
            return false;
        }
        let reachable = (0..self.nodes.len()).filter(|m| self.nodes[*m].runs() && self.net.reachable(n, *m)).count();
        reachable * 2 > self.nodes.len()
    }

    fn is_effective(&self, n: usize) -> bool {
        self.leader == Some(n) && self.nodes[n].leader_of == Some(self.term)
    }

    /// A node that believes it leads confirms it with a quorum, now. A deposed leader that reaches
    /// a quorum learns the newer term and steps down instead.
    pub(crate) fn confirm(&mut self, n: usize) -> bool {
        if self.nodes[n].leader_of.is_none() || !self.reaches_majority(n) {
            return false;
        }
        if self.is_effective(n) {
            // Every running node it reaches acknowledges this round now.
            for m in 0..self.nodes.len() {
                if self.nodes[m].runs() && self.net.reachable(n, m) {
                    self.nodes[m].last_ack = self.local(m);
                }
            }
            return true;
        }
        self.step_down(n);
        false
    }

    fn step_down(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.leader_of = None;
        node.known_term = node.known_term.max(self.term);
        node.leader_hint = self.leader;
        node.fencing.clear();
        self.trace(|| format!("n{} learns it was deposed", n + 1));
    }

    /// After anything that can change the leader's health: start an election timer if needed.
    pub(crate) fn check_leader(&mut self) {
        let healthy = self.leader.is_some_and(|l| self.is_effective(l) && self.reaches_majority(l));
        if !healthy && !self.election_pending {
            self.election_pending = true;
            let delay = self.rng.random_range(ms(150)..=ms(600));
            self.after(delay, Event::Election);
        }
    }

    /// The leader `l` hands leadership over to the first other node that reaches a majority
    /// (clusterd's `transfer_leader`, modelled as immediate).
    pub(crate) fn hand_over(&mut self, l: usize) {
        let Some(successor) = (0..self.nodes.len()).find(|m| *m != l && self.reaches_majority(*m)) else { return };
        self.trace(|| format!("n{} hands leadership over to n{}", l + 1, successor + 1));
        self.step_down(l);
        self.elect(successor);
    }

    pub(crate) fn on_election(&mut self) {
        self.election_pending = false;
        let healthy = self.leader.is_some_and(|l| self.is_effective(l) && self.reaches_majority(l));
        if healthy {
            return;
        }
        let candidates: Vec<usize> = (0..self.nodes.len()).filter(|n| self.reaches_majority(*n)).collect();
        if candidates.is_empty() {
            self.check_leader();
            return;
        }
        let winner = candidates[self.rng.random_range(0..candidates.len())];
        self.elect(winner);
    }

    pub(crate) fn elect(&mut self, n: usize) {
        self.term += 1;
        self.leader = Some(n);
        self.stats.elections += 1;
        let term = self.term;
        let now = self.local(n);
        // Like openraft, the new leader applies the entries of older terms only once an entry of
        // its own term is committed (a round trip later, longer on a slow disk): until then its
        // applied index may lag its log.
        let lag = self.rng.random_range(0..=ms(150));
        self.timer_at(n, now + Duration::from_micros(lag), Timer::LeaderCatchUp { term });
        let node = &mut self.nodes[n];
        node.leader_of = Some(term);
        node.known_term = term;
        node.leader_hint = Some(n);
        node.fencing.clear();
        node.table.elected(now);
        self.bound_older_leases(n);
        self.trace(|| format!("n{} elected, term {term}", n + 1));
        self.broadcast_append(n);
        self.timer_at(n, now + std::time::Duration::from_millis(LEADER_TICK_MS), Timer::LeaderTick { term });
    }

    /// The new leader `n` asks every voter when it last acknowledged an older leader (as the
    /// daemon's `older_leaders_quiet_since`): each running voter it reaches answers the elapsed
    /// time on its own clock, in whole ms; the leader counts it back from its own now, shortened by
    /// the drift bound, and takes the latest, once a majority answered.
    fn bound_older_leases(&mut self, n: usize) {
        let drift_ppm = self.nodes[n].state.settings.clock_drift_ppm;
        let leader_now = self.local(n);
        let mut answers = 0;
        let mut latest = Duration::ZERO;
        for m in 0..self.nodes.len() {
            if !(self.nodes[m].runs() && self.net.reachable(n, m)) {
                continue;
            }
            let elapsed = self.local(m).saturating_sub(self.nodes[m].last_ack);
            let elapsed_ms = elapsed.as_millis() as u64;
            let shortened = Duration::from_micros(elapsed_ms * (1_000_000 - drift_ppm) / 1_000);
            let at = if m == n { self.nodes[n].last_ack } else { leader_now.saturating_sub(shortened) };
            latest = latest.max(at);
            answers += 1;
        }
        if answers * 2 > self.nodes.len() {
            let latest = latest.saturating_sub(self.config.older_leases_bound_early);
            self.nodes[n].table.older_leases_began_before(latest);
            self.trace(|| format!("n{} older leases began before {} ms ago", n + 1, (leader_now - latest).as_millis()));
        }
    }

    /// The new leader of `term` applies the whole log (an entry of its term was committed).
    pub(crate) fn on_leader_catch_up(&mut self, n: usize, term: u64) {
        if self.nodes[n].leader_of == Some(term) {
            self.catch_up(n, self.log.len());
            self.evaluate(n);
        }
    }

    /// Appends `command` to the log; the leader `l` applies it at once and replicates.
    pub(crate) fn commit(&mut self, l: usize, command: Command) {
        let index = self.log.len() + 1;
        self.count(&command, l);
        self.trace(|| format!("n{} commits #{index} {command:?}", l + 1));
        self.log.push(command);
        self.catch_up(l, self.log.len());
        self.broadcast_append(l);
    }

    /// Counts what the summary reports about a committed command (as the leader `l` saw it).
    fn count(&mut self, command: &Command, l: usize) {
        let state = &self.nodes[l].state;
        match command {
            Command::SetSetting { name, value } => {
                let mut settings = state.settings.clone();
                if settings.set(name, value).is_ok() && settings != state.settings {
                    self.stats.settings_changes += 1;
                }
            }
            Command::LeasesSettled { .. } => self.stats.leases_settled += 1,
            Command::PkgFreeze { name, frozen: true, .. }
                if state.packages.get(name).is_some_and(|p| !p.frozen && p.owner.is_some()) =>
            {
                self.stats.freezes += 1
            }
            _ => {}
        }
    }

    /// Node `n` applies the log up to `commit`.
    pub(crate) fn catch_up(&mut self, n: usize, commit: usize) {
        let commit = commit.min(self.log.len());
        let node = &mut self.nodes[n];
        while node.applied < commit {
            let command = &self.log[node.applied];
            node.state.apply(command);
            node.applied += 1;
        }
    }

    pub(crate) fn broadcast_append(&mut self, l: usize) {
        let term = self.nodes[l].leader_of.unwrap_or(self.nodes[l].known_term);
        let commit = self.nodes[l].applied;
        for m in 0..self.nodes.len() {
            if m != l {
                self.send(l, m, Msg::Append { term, commit });
            }
        }
    }

    pub(crate) fn on_append(&mut self, n: usize, from: usize, term: u64, commit: usize) {
        if term < self.nodes[n].known_term {
            return;
        }
        if self.nodes[n].leader_of.is_some_and(|mine| mine < term) {
            self.step_down(n);
        }
        let node = &mut self.nodes[n];
        node.known_term = term;
        if node.leader_of.is_none() {
            node.leader_hint = Some(from);
        }
        self.catch_up(n, commit);
        self.evaluate(n);
    }

    /// Node `n` asks its leader to commit `command` (and does not wait for the answer).
    pub(crate) fn propose(&mut self, n: usize, command: Command) {
        if let Some(l) = self.nodes[n].leader_hint {
            self.send(n, l, Msg::Propose { command, reply: None });
        }
    }

    /// Node `n` asks its leader to commit `command`, and its worker for `package` waits for the
    /// answer, as clusterd's `Engine::propose` does: until the leader committed it and said so, or
    /// for the request timeout (5 s). `false` when no leader is known (clusterd fails at once).
    pub(crate) fn propose_and_wait(&mut self, n: usize, package: &str, command: Command) -> bool {
        let Some(l) = self.nodes[n].leader_hint else { return false };
        let op = self.next_op();
        // A leader whose machine is off refuses the connection: the wait ends quickly (the peer
        // pool's connect timeout, 50 ms); otherwise the request timeout.
        let wait = if self.nodes[l].power == Power::Off { ms(50) } else { ms(REQUEST_TIMEOUT_MS) };
        let until = self.now + wait;
        let seen = self.nodes[n].state.packages.get(package).cloned();
        self.nodes[n].busy.insert(package.to_owned(), Busy { op, why: "waits for its report to commit", seen });
        let incarnation = self.nodes[n].incarnation;
        self.schedule(until, Event::BusyEnd { node: n, incarnation, package: package.to_owned(), op });
        self.send(n, l, Msg::Propose { command, reply: Some(op) });
        true
    }

    pub(crate) fn on_propose(&mut self, l: usize, from: usize, command: Command, reply: Option<u64>) {
        if self.confirm(l) {
            self.commit(l, command);
            if let Some(op) = reply {
                self.send(l, from, Msg::Proposed { op });
            }
        }
    }

    /// An operator command (clusterctl) reaches the effective leader, if it can commit.
    pub(crate) fn operator(&mut self, command: Command) -> bool {
        let Some(l) = self.leader else { return false };
        if self.nodes[l].power != Power::Up || !self.confirm(l) {
            return false;
        }
        self.stats.operator_commands += 1;
        self.commit(l, command);
        true
    }
}
