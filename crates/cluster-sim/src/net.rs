//! The network: messages between nodes, lost, delayed or cut by a partition, decided by the seed.
//!
//! A message is dropped when it is sent across a partition, when it is lost (fault phase only),
//! or when it arrives across a partition or at a node that is down. A message that reaches a
//! paused process waits in its socket and is handled, in order, when the process resumes.

use std::time::Duration;

use cluster_model::Command;
use rand::rngs::StdRng;
use rand::Rng;

use crate::sim::{Event, Sim};

/// What nodes tell each other.
#[derive(Debug, Clone)]
pub(crate) enum Msg {
    /// Lease renewal, sent at `sent_at` on the sender's clock.
    Renewal { incarnation: u64, sent_at: Duration },
    /// The leader confirmed its leadership with a quorum after receiving the renewal, and grants a
    /// lease of `lease` (its `lease·(1−ρ)` when it recorded the renewal).
    Grant { incarnation: u64, sent_at: Duration, grant: cluster_model::Grant },
    /// A renewal handed to a relay voter (`SimConfig::relay_renewals`), which carries it on.
    RelayRenewal { incarnation: u64, sent_at: Duration },
    /// A relay carries `origin`'s renewal to the leader.
    Relayed { origin: usize, incarnation: u64, sent_at: Duration },
    /// The leader's grant to `origin`, handed to the relay that carried its renewal.
    RelayedGrant { origin: usize, incarnation: u64, sent_at: Duration, grant: cluster_model::Grant },
    /// Raft replication and leader heartbeat: entries up to `commit` are committed.
    Append { term: u64, commit: usize },
    /// Keep my lease (sent to every voter while no leader grants it).
    Keep { incarnation: u64, sent_at: Duration },
    /// A voter acknowledged a keep renewal, with its `lease·(1−ρ)`.
    KeepAck { incarnation: u64, sent_at: Duration, lease: Duration },
    /// A command for the leader to commit; `reply`: the proposer waits for the answer (its
    /// worker's operation id), sent back once committed.
    Propose { command: Command, reply: Option<u64> },
    /// The leader committed the proposal the proposer waits for.
    Proposed { op: u64 },
}

/// Partitions, loss and delay.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    /// Nodes in the same group reach each other.
    groups: Vec<u8>,
    /// Bumped by every partition change, so that a stale heal does nothing.
    pub(crate) generation: u64,
    loss: f64,
    max_delay_us: u64,
    /// Loss and long delays only during the fault phase.
    pub(crate) faulty: bool,
}

impl Network {
    pub(crate) fn new(nodes: usize, loss: f64, max_delay: Duration) -> Network {
        Network {
            groups: vec![0; nodes],
            generation: 0,
            loss,
            max_delay_us: (max_delay.as_micros() as u64).max(1),
            faulty: true,
        }
    }

    pub(crate) fn reachable(&self, a: usize, b: usize) -> bool {
        self.groups[a] == self.groups[b]
    }

    pub(crate) fn partition(&mut self, groups: Vec<u8>) {
        self.groups = groups;
        self.generation += 1;
    }

    pub(crate) fn heal(&mut self) {
        self.groups.iter_mut().for_each(|g| *g = 0);
        self.generation += 1;
    }

    /// `None`: lost; else the delay in µs.
    fn transit(&self, rng: &mut StdRng) -> Option<u64> {
        if self.faulty && rng.random_bool(self.loss) {
            return None;
        }
        if self.faulty && rng.random_bool(0.01) {
            return Some(rng.random_range(self.max_delay_us..=16 * self.max_delay_us));
        }
        Some(rng.random_range(50..=self.max_delay_us))
    }
}

impl Sim {
    /// Sends `msg` from `from` to `to`; a node's messages to itself arrive at once.
    pub(crate) fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if from == to {
            self.schedule(self.now, Event::Deliver { from, to, msg });
            return;
        }
        self.stats.messages_sent += 1;
        if !self.net.reachable(from, to) {
            self.stats.messages_lost += 1;
            return;
        }
        match self.net.transit(&mut self.rng) {
            None => self.stats.messages_lost += 1,
            Some(delay) => self.after(delay, Event::Deliver { from, to, msg }),
        }
    }
}
