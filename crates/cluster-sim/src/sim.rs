//! The event loop: one global time, one queue of events ordered by (time, sequence), one seeded
//! random generator, and the invariants checked after every event.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::time::Duration;

use cluster_model::Command;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::clock::Clock;
use crate::config::SimConfig;
use crate::invariants;
use crate::net::{Msg, Network};
use crate::node::{Node, Power};

/// Something that happens at a global instant.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Deliver {
        from: usize,
        to: usize,
        msg: Msg,
    },
    Timer {
        node: usize,
        incarnation: u64,
        timer: Timer,
    },
    /// A start or stop operation ends (the agent runs even while `clusterd` is paused).
    OpDone {
        node: usize,
        package: String,
        op: u64,
    },
    /// The executor's reaction to an operation that ended while it was paused.
    OpReaction {
        node: usize,
        incarnation: u64,
        package: String,
        epoch: u64,
        outcome: OpOutcome,
    },
    WatchdogCheck {
        node: usize,
    },
    /// A promotion or demotion ends (the agent runs even while `clusterd` is paused).
    RoleOpDone {
        node: usize,
        package: String,
        op: u64,
    },
    /// An abandoned start completes on a node that no longer tracks it.
    GhostLands {
        node: usize,
        boot: u64,
        package: String,
    },
    /// A worker's wait ends by itself (a proposal's request timeout, a monitor that ran its time).
    BusyEnd {
        node: usize,
        incarnation: u64,
        package: String,
        op: u64,
    },
    /// A slow monitor of an active package ends, failing or not.
    MonitorDone {
        node: usize,
        incarnation: u64,
        package: String,
        op: u64,
        fails: bool,
    },
    Restart {
        node: usize,
        incarnation: u64,
    },
    Resume {
        node: usize,
        pause: u64,
    },
    Election,
    Fault,
    HealPartition {
        generation: u64,
    },
    FenceDone {
        by: usize,
        term: u64,
        target: usize,
    },
    Heal,
    HealOperator,
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    Heartbeat,
    LeaseCheck,
    LeaderTick {
        term: u64,
    },
    ControllerWake {
        term: u64,
    },
    /// A stopping daemon looks whether it may exit (`Leave`).
    LeaveCheck,
    /// A new leader applies the entries of older terms.
    LeaderCatchUp {
        term: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpOutcome {
    Started,
    Stopped,
    StopFailed,
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap and we want the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Which part of the run we are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Faults,
    Heal,
}

/// What a run did, for coverage checks and determinism.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events handled.
    pub steps: u64,
    /// Entries in the global log.
    pub commits: u64,
    pub elections: u64,
    pub grants: u64,
    pub starts: u64,
    pub stops: u64,
    pub failed_stops: u64,
    /// Reassignments of a package away from a node whose lease had expired.
    pub expiry_reassignments: u64,
    pub watchdog_resets: u64,
    pub fences: u64,
    pub crashes: u64,
    pub daemon_crashes: u64,
    /// `systemctl stop clusterd` (graceful leaves), and those that had to give the lease up.
    pub leaves: u64,
    pub leaves_given_up: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub operator_commands: u64,
    /// Timing changes applied (`lease`, `stop_budget`), and lease ceilings settled after them.
    pub settings_changes: u64,
    pub leases_settled: u64,
    /// Packages frozen while running somewhere.
    pub freezes: u64,
    /// Workers' waits (report answers, monitors) cut short by a package change or the lease.
    pub interrupted_waits: u64,
    /// Starts abandoned at the stop budget.
    pub abandoned_starts: u64,
    /// Keep renewals acknowledged by a majority of voters; expiry checks of the leader, and nodes a
    /// check found kept by a voter.
    pub keeps: u64,
    /// Renewals handed to a relay voter (`SimConfig::relay_renewals`).
    pub relayed_renewals: u64,
    pub expiry_checks: u64,
    pub kept_by_voters: u64,
    /// Packages stopped at the stop budget by a node that was running (not crashed nor paused).
    pub lapse_stops: u64,
    /// Daemons restarted with their predecessor's lease (adopting what runs).
    pub adoptions: u64,
    /// Nodes removed from the cluster (`node remove`), and removals refused because they owned packages.
    pub removals: u64,
    pub removals_refused: u64,
    /// Promotions and demotions done by executors; starts a dependent waited for locally.
    pub promotions: u64,
    pub demotions: u64,
    pub dependents_held: u64,
    pub messages_sent: u64,
    pub messages_lost: u64,
    /// FNV-1a of the committed log, to compare runs.
    pub log_digest: u64,
}

impl Summary {
    /// Adds the counters of `other` (digest excluded).
    pub fn add(&mut self, other: &Summary) {
        self.steps += other.steps;
        self.commits += other.commits;
        self.elections += other.elections;
        self.grants += other.grants;
        self.starts += other.starts;
        self.stops += other.stops;
        self.failed_stops += other.failed_stops;
        self.expiry_reassignments += other.expiry_reassignments;
        self.watchdog_resets += other.watchdog_resets;
        self.fences += other.fences;
        self.crashes += other.crashes;
        self.daemon_crashes += other.daemon_crashes;
        self.leaves += other.leaves;
        self.leaves_given_up += other.leaves_given_up;
        self.pauses += other.pauses;
        self.partitions += other.partitions;
        self.operator_commands += other.operator_commands;
        self.settings_changes += other.settings_changes;
        self.leases_settled += other.leases_settled;
        self.freezes += other.freezes;
        self.interrupted_waits += other.interrupted_waits;
        self.abandoned_starts += other.abandoned_starts;
        self.keeps += other.keeps;
        self.relayed_renewals += other.relayed_renewals;
        self.expiry_checks += other.expiry_checks;
        self.kept_by_voters += other.kept_by_voters;
        self.lapse_stops += other.lapse_stops;
        self.adoptions += other.adoptions;
        self.removals += other.removals;
        self.removals_refused += other.removals_refused;
        self.promotions += other.promotions;
        self.demotions += other.demotions;
        self.dependents_held += other.dependents_held;
        self.messages_sent += other.messages_sent;
        self.messages_lost += other.messages_lost;
    }
}

/// An invariant that did not hold, with everything needed to replay it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub config: SimConfig,
    /// The invariant's name (`S1`, `start-epochs`, `liveness`).
    pub invariant: &'static str,
    /// Index of the event after which it was found.
    pub step: u64,
    /// Global simulated time.
    pub at: Duration,
    pub detail: String,
    /// The last events before the failure (from a traced replay).
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invariant {} violated: seed {} ({} nodes, {}), step {}, t={:.6}s: {}",
            self.invariant,
            self.config.seed,
            self.config.nodes,
            self.config.scenario,
            self.step,
            self.at.as_secs_f64(),
            self.detail
        )?;
        writeln!(f, "reproduce: {}", self.config.reproduce_command())?;
        if !self.trace.is_empty() {
            writeln!(f, "last events:")?;
            for line in &self.trace {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

/// How many trace lines a violation keeps.
const TRACE_TAIL: usize = 200;

pub(crate) struct Sim {
    pub(crate) config: SimConfig,
    pub(crate) rng: StdRng,
    pub(crate) now: u64,
    step: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) names: Vec<String>,
    pub(crate) packages: Vec<String>,
    /// The one global Raft log (committed entries only).
    pub(crate) log: Vec<Command>,
    pub(crate) term: u64,
    /// The effective leader (the one a quorum follows), if any.
    pub(crate) leader: Option<usize>,
    /// Nodes removed from the cluster (`node remove`) and not added back. The simulation keeps
    /// them in the Raft quorum's arithmetic (a change of the voter set is openraft's business); it
    /// models what removal means for packages: no lease, no placement.
    pub(crate) removed: std::collections::BTreeSet<usize>,
    pub(crate) election_pending: bool,
    pub(crate) net: Network,
    pub(crate) stage: Stage,
    pub(crate) next_pause: u64,
    pub(crate) seq_op: u64,
    pub(crate) stats: Summary,
    pub(crate) epochs: invariants::start_epochs::StartEpochs,
    /// The relations between the packages of this run (empty when they have none).
    pub(crate) relations: invariants::Relations,
    trace: Option<Vec<String>>,
    violation: Option<Violation>,
    finished: bool,
}

pub(crate) fn ms(value: u64) -> u64 {
    value * 1_000
}

/// Runs one simulation. On a violation the run is replayed with a trace, attached to the result.
pub fn run(config: &SimConfig) -> Result<Summary, Box<Violation>> {
    match Sim::new(config.clone()).run() {
        Ok(summary) => Ok(summary),
        Err(violation) if config.trace => Err(violation),
        Err(violation) => {
            let traced = SimConfig { trace: true, ..config.clone() };
            match Sim::new(traced).run() {
                Err(replayed) => Err(Box::new(Violation { config: config.clone(), ..*replayed })),
                Ok(_) => Err(Box::new(Violation {
                    trace: vec!["(the traced replay did not fail: nondeterminism bug)".into()],
                    ..*violation
                })),
            }
        }
    }
}

impl Sim {
    fn new(config: SimConfig) -> Sim {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let names: Vec<String> = (1..=config.nodes).map(|i| format!("n{i}")).collect();
        let drift = crate::bootstrap::drift_ppm();
        let nodes = names
            .iter()
            .map(|name| {
                // Rates anywhere in 1 ± ρ, with the extremes often, where the lease margins are thinnest.
                let rate = match rng.random_range(0..4) {
                    0 => 1_000_000 - drift,
                    1 => 1_000_000 + drift,
                    _ => rng.random_range(1_000_000 - drift..=1_000_000 + drift),
                };
                let origin = rng.random_range(0..ms(1_000_000));
                let nowayout = config.scenario.watchdog() && rng.random_bool(0.5);
                Node::new(name.clone(), Clock::new(origin, rate), config.scenario.watchdog(), nowayout)
            })
            .collect::<Vec<_>>();
        // Wall clocks: within 5 ms of each other, and one node in ten up to 200 ms off (its
        // renewals reach the leader apart from the others').
        let wall = rng.random_range(0..ms(1_000_000));
        let nodes = nodes
            .into_iter()
            .map(|mut node| {
                let error =
                    if rng.random_bool(0.1) { rng.random_range(0..ms(200)) } else { rng.random_range(0..ms(5)) };
                node.wall_offset_us = wall + error;
                node
            })
            .collect();
        let mut net = Network::new(config.nodes, config.loss, config.max_delay);
        // No loss and no long delays where only leaders die.
        net.faulty = !config.scenario.single_fault();
        Sim {
            trace: config.trace.then(Vec::new),
            config,
            rng,
            now: 0,
            step: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            names,
            packages: Vec::new(),
            log: Vec::new(),
            term: 0,
            leader: None,
            removed: Default::default(),
            election_pending: false,
            net,
            stage: Stage::Faults,
            next_pause: 0,
            seq_op: 0,
            stats: Summary::default(),
            epochs: Default::default(),
            relations: Default::default(),
            violation: None,
            finished: false,
        }
    }

    fn run(mut self) -> Result<Summary, Box<Violation>> {
        self.bootstrap();
        while let Some(Scheduled { at, event, .. }) = self.queue.pop() {
            debug_assert!(at >= self.now, "time goes forward");
            self.now = at;
            self.step += 1;
            self.handle(event);
            if self.violation.is_none() {
                if let Err(detail) = invariants::s1_single_active::check(&self.nodes, self.now) {
                    self.fail("S1", detail);
                } else if let Err(detail) =
                    invariants::witness_hosts_nothing::check(&self.nodes, &self.config.witnesses, self.now)
                {
                    self.fail("witness", detail);
                }
            }
            if self.violation.is_none() && !self.relations.is_empty() {
                if let Err(detail) = invariants::anti_affinity::check(&self.relations, &self.nodes, self.now) {
                    self.fail("anti-affinity", detail);
                } else if let Err(detail) = invariants::primaries::check(&self.relations, &self.nodes, self.now) {
                    self.fail("primaries", detail);
                }
            }
            if let Some(violation) = self.violation.take() {
                return Err(Box::new(violation));
            }
            if self.finished {
                break;
            }
        }
        self.stats.steps = self.step;
        self.stats.commits = self.log.len() as u64;
        self.stats.log_digest = fnv(format!("{:?}", self.log).as_bytes());
        Ok(self.stats)
    }

    pub(crate) fn fail(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_some() {
            return;
        }
        let trace = self
            .trace
            .as_ref()
            .map(|lines| lines[lines.len().saturating_sub(self.config.trace_tail.unwrap_or(TRACE_TAIL))..].to_vec())
            .unwrap_or_default();
        self.violation = Some(Violation {
            config: self.config.clone(),
            invariant,
            step: self.step,
            at: Duration::from_micros(self.now),
            detail,
            trace,
        });
    }

    /// Records a line in the trace (only built when tracing).
    pub(crate) fn trace(&mut self, line: impl FnOnce() -> String) {
        if let Some(lines) = &mut self.trace {
            lines.push(format!("{:>7} {:>10.6}s {}", self.step, self.now as f64 / 1e6, line()));
        }
    }

    pub(crate) fn schedule(&mut self, at: u64, event: Event) {
        let at = at.max(self.now);
        self.seq += 1;
        self.queue.push(Scheduled { at, seq: self.seq, event });
    }

    pub(crate) fn after(&mut self, delay_us: u64, event: Event) {
        self.schedule(self.now + delay_us, event);
    }

    /// Node `n`'s clock now.
    pub(crate) fn local(&self, n: usize) -> Duration {
        self.nodes[n].clock.local(self.now)
    }

    /// Node `n`'s clock now, in ms, for the `at_ms` of commands.
    pub(crate) fn local_ms(&self, n: usize) -> u64 {
        self.local(n).as_millis() as u64
    }

    /// Schedules a timer of node `n` at `local` on its own clock.
    pub(crate) fn timer_at(&mut self, n: usize, local: Duration, timer: Timer) {
        let at = self.nodes[n].clock.global_at(local);
        let incarnation = self.nodes[n].incarnation;
        self.schedule(at, Event::Timer { node: n, incarnation, timer });
    }

    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, msg } => {
                if self.nodes[to].power != Power::Up || !self.net.reachable(from, to) {
                    self.trace(|| format!("n{} -> n{}: dropped at delivery {msg:?}", from + 1, to + 1));
                    return;
                }
                if self.nodes[to].paused.is_some() {
                    self.nodes[to].deferred.push(Event::Deliver { from, to, msg });
                    return;
                }
                self.on_message(from, to, msg);
            }
            Event::Timer { node, incarnation, timer } => {
                let target = &self.nodes[node];
                if target.incarnation != incarnation || target.power != Power::Up {
                    return;
                }
                if target.paused.is_some() {
                    self.nodes[node].deferred.push(Event::Timer { node, incarnation, timer });
                    return;
                }
                self.on_timer(node, timer);
            }
            Event::OpDone { node, package, op } => self.on_op_done(node, package, op),
            Event::OpReaction { node, incarnation, package, epoch, outcome } => {
                if self.nodes[node].incarnation == incarnation && self.nodes[node].runs() {
                    self.react(node, &package, epoch, outcome);
                }
            }
            Event::WatchdogCheck { node } => self.on_watchdog_check(node),
            Event::RoleOpDone { node, package, op } => self.on_role_op_done(node, package, op),
            Event::GhostLands { node, boot, package } => {
                if self.nodes[node].boots == boot && self.nodes[node].power != Power::Off {
                    self.trace(|| format!("n{} {package}: the abandoned start completes, untracked", node + 1));
                    let now = self.now;
                    self.nodes[node].ghosts.entry(package).or_insert(now);
                }
            }
            Event::BusyEnd { node, incarnation, package, op } => {
                if self.nodes[node].incarnation == incarnation {
                    if self.nodes[node].paused.is_some() {
                        self.nodes[node].deferred.push(Event::BusyEnd { node, incarnation, package, op });
                    } else {
                        self.end_busy(node, &package, op);
                    }
                }
            }
            Event::MonitorDone { node, incarnation, package, op, fails } => {
                if self.nodes[node].incarnation == incarnation {
                    if self.nodes[node].paused.is_some() {
                        let event = Event::MonitorDone { node, incarnation, package, op, fails };
                        self.nodes[node].deferred.push(event);
                    } else {
                        self.on_monitor_done(node, package, op, fails);
                    }
                }
            }
            Event::Restart { node, incarnation } => {
                if self.nodes[node].incarnation == incarnation && self.nodes[node].power != Power::Up {
                    self.restart(node);
                }
            }
            Event::Resume { node, pause } => {
                if self.nodes[node].paused == Some(pause) {
                    self.resume(node);
                }
            }
            Event::Election => self.on_election(),
            Event::Fault => self.on_fault(),
            Event::HealPartition { generation } => {
                if self.net.generation == generation {
                    self.net.heal();
                    self.trace(|| "partition healed".into());
                    self.check_leader();
                }
            }
            Event::FenceDone { by, term, target } => self.on_fence_done(by, term, target),
            Event::Heal => self.on_heal(),
            Event::HealOperator => self.on_heal_operator(),
            Event::End => {
                if self.config.check_liveness {
                    if let Err(detail) = invariants::liveness_after_heal::check(self) {
                        self.fail("liveness", detail);
                    }
                }
                self.finish();
            }
        }
    }

    fn on_timer(&mut self, n: usize, timer: Timer) {
        match timer {
            Timer::Heartbeat => self.on_heartbeat(n),
            Timer::LeaseCheck => self.evaluate(n),
            Timer::LeaderTick { term } => self.on_leader_tick(n, term),
            Timer::ControllerWake { term } => self.on_controller_wake(n, term),
            Timer::LeaveCheck => self.on_leave_check(n),
            Timer::LeaderCatchUp { term } => self.on_leader_catch_up(n, term),
        }
    }

    fn on_message(&mut self, from: usize, to: usize, msg: Msg) {
        self.trace(|| format!("n{} -> n{}: {msg:?}", from + 1, to + 1));
        match msg {
            Msg::Renewal { incarnation, sent_at } => self.on_renewal(to, from, incarnation, sent_at),
            Msg::RelayRenewal { incarnation, sent_at } => self.on_relay_renewal(to, from, incarnation, sent_at),
            Msg::Relayed { origin, incarnation, sent_at } => {
                if let Some(grant) = self.grant(to, origin) {
                    self.send(to, from, Msg::RelayedGrant { origin, incarnation, sent_at, grant });
                }
            }
            Msg::RelayedGrant { origin, incarnation, sent_at, grant } => {
                self.send(to, origin, Msg::Grant { incarnation, sent_at, grant })
            }
            Msg::Grant { incarnation, sent_at, grant } => self.on_grant(to, incarnation, sent_at, grant),
            Msg::Append { term, commit } => self.on_append(to, from, term, commit),
            Msg::Keep { incarnation, sent_at } => self.on_keep(to, from, incarnation, sent_at),
            Msg::KeepAck { incarnation, sent_at, lease } => self.on_keep_ack(to, from, incarnation, sent_at, lease),
            Msg::Propose { command, reply } => self.on_propose(to, from, command, reply),
            Msg::Proposed { op } => {
                if let Some(package) =
                    self.nodes[to].busy.iter().find(|(_, busy)| busy.op == op).map(|(p, _)| p.clone())
                {
                    self.end_busy(to, &package, op);
                }
            }
        }
    }

    /// Handles an event that reached a node while it was paused, now that it runs again.
    fn replay_deferred(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, msg } => self.on_message(from, to, msg),
            Event::Timer { node, incarnation, timer } => {
                if self.nodes[node].incarnation == incarnation {
                    self.on_timer(node, timer);
                }
            }
            other => self.handle(other),
        }
    }

    pub(crate) fn resume(&mut self, n: usize) {
        self.nodes[n].paused = None;
        self.trace(|| format!("n{} resumed", n + 1));
        let deferred = std::mem::take(&mut self.nodes[n].deferred);
        for event in deferred {
            if !self.nodes[n].runs() {
                break;
            }
            self.replay_deferred(event);
        }
        self.evaluate(n);
        self.check_leader();
    }
}

/// FNV-1a 64.
fn fnv(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
