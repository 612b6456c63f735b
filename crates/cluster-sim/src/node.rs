//! One simulated node: its clock, its process state, its applied prefix of the log, its lease
//! (both sides), its executor's records and its watchdog. The records double as the simulator's
//! ground truth: a package has a record on a node exactly while its resources may be active there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cluster_model::{ClusterState, KeepLedger, LeaseHolder, LeaseTable, PackageState};

use crate::clock::Clock;
use crate::sim::Event;

/// Whether the machine and `clusterd` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Power {
    /// Machine and daemon up (the daemon may still be paused).
    Up,
    /// `clusterd` died; the machine, its resources and its watchdog timer keep going.
    DaemonDown,
    /// Powered off or rebooting: nothing is active.
    Off,
}

/// What the executor is doing with one package. Present = resources may be active (ground truth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activity {
    /// Start in progress: resources are counted active from the first instant of the start.
    Starting,
    Active,
    /// Stop in progress: resources are active until it ends.
    Stopping,
    /// A stop failed: resources stay active until the node is reset or an operator cleans up.
    Stuck,
}

/// The executor's record of one package on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) activity: Activity,
    /// The epoch the package was started at.
    pub(crate) epoch: u64,
    /// Identifies the operation in flight; completions of other operations are ignored.
    pub(crate) op: u64,
    /// Whether the stop in flight will fail.
    pub(crate) stop_fails: bool,
    /// Global time the resources became (possibly) active.
    pub(crate) since_us: u64,
    /// Global time of the last report sent about this record.
    pub(crate) reported_us: Option<u64>,
    /// Global time at which the operation in flight ends.
    pub(crate) op_end_us: u64,
    /// Promotable packages: the instance may be promoted here (ground truth: from the first instant
    /// of a promotion to the end of the demotion or stop that undoes it).
    pub(crate) promoted: bool,
    /// A promotion or demotion in flight (its operation id), while the record is `Active`.
    pub(crate) role_op: Option<(RoleOp, u64)>,
}

/// A change of role the executor is making.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoleOp {
    Promote,
    Demote,
}

/// A package's worker is waiting for something (a proposal's answer, a monitor): clusterd's worker
/// runs one await at a time, so meanwhile it acts on nothing else of that package (except what the
/// lease watch interrupts, see `Sim::evaluate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Busy {
    /// The operation waited for; its end (or answer) carries the same id.
    pub(crate) op: u64,
    pub(crate) why: &'static str,
    /// The package as the worker saw it when the wait began: a change ends the wait.
    pub(crate) seen: Option<PackageState>,
}

/// A keep renewal waiting for a majority of voters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeepRound {
    pub(crate) sent_at: Duration,
    pub(crate) acked: BTreeSet<usize>,
    pub(crate) lease: Option<Duration>,
}

/// `systemctl stop clusterd` in progress (clusterd's `Engine::leave`), times on the node's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leave {
    /// Until then the daemon waits for the controller to move its packages away.
    pub(crate) hand_over_until: Duration,
    /// Then it exits whatever is still active.
    pub(crate) exit_by: Duration,
    /// It gave its lease up (no answer, or not handed over in time): everything stops here.
    pub(crate) lease_given_up: bool,
}

/// A watchdog device (hardware timer on the node's own clock). It keeps the timeout it was armed
/// with: a later change of the stop budget does not reach it unless the daemon re-arms it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Watchdog {
    pub(crate) armed: bool,
    pub(crate) last_pet: Duration,
    pub(crate) timeout: Duration,
    pub(crate) check_scheduled: bool,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) clock: Clock,
    /// The node's wall clock is the true time plus this (NTP keeps nodes within milliseconds of
    /// each other; some runs give a node one far off): renewals go out at its multiples of the
    /// heartbeat (`cluster_model::until_next_renewal`).
    pub(crate) wall_offset_us: u64,
    pub(crate) has_watchdog: bool,
    /// The watchdog driver has `nowayout`: once armed, only a reset stops it (the magic close
    /// does not; with the sysfs attribute present clusterd does not even write it).
    pub(crate) nowayout: bool,
    pub(crate) power: Power,
    pub(crate) paused: Option<u64>,
    /// Events that reached the paused process, handled in order when it resumes.
    pub(crate) deferred: Vec<Event>,
    /// Bumped on every crash and restart: timers and grants of older incarnations are ignored.
    pub(crate) incarnation: u64,

    /// The state machine after applying `applied` entries of the global log (durable).
    pub(crate) state: ClusterState,
    pub(crate) applied: usize,
    /// Highest Raft term seen (durable).
    pub(crate) known_term: u64,
    pub(crate) leader_hint: Option<usize>,
    /// `Some(term)` while this node believes it is the leader of `term` (maybe deposed already).
    pub(crate) leader_of: Option<u64>,
    pub(crate) table: LeaseTable,
    /// On this node's clock: when it last acknowledged a leader's quorum round (kept across a
    /// daemon restart: it acknowledges nothing while down).
    pub(crate) last_ack: Duration,
    pub(crate) fencing: BTreeSet<String>,

    pub(crate) holder: LeaseHolder,
    /// The keep renewal in flight: its send time, the voters that acknowledged it, the shortest
    /// lease they named.
    pub(crate) keep_round: Option<KeepRound>,
    /// This node as a voter: the keep renewals it acknowledged, the refusals it promised (volatile).
    pub(crate) ledger: KeepLedger,
    /// The latest instant (own clock) a lease check is scheduled for.
    pub(crate) lease_check_at: Option<Duration>,
    pub(crate) hello_pending: bool,
    pub(crate) records: BTreeMap<String, Record>,
    /// Resources active that no record tracks (ground truth): an abandoned start that completed
    /// after the executor stopped looking (`SimConfig::abandoned_starts_land`). Gone at power off.
    pub(crate) ghosts: BTreeMap<String, u64>,
    /// Power cycles: an abandoned start lands only on the boot it began in.
    pub(crate) boots: u64,
    /// Global time the machine last powered on.
    pub(crate) up_since: u64,
    /// The lease end the daemon last left in its runtime folder (read by the next daemon).
    pub(crate) persisted_lease_end: Option<Duration>,
    /// Workers waiting for something, by package (volatile: a restarted daemon waits for nothing).
    pub(crate) busy: BTreeMap<String, Busy>,
    /// The restarted daemon probed its packages (it does so once it holds a lease on a recent
    /// enough state; before that it starts and stops nothing).
    pub(crate) probed: bool,
    /// Last `Stopped` report for a package this node owns in phase `Stopping` and does not run.
    pub(crate) stopped_reported_us: BTreeMap<String, u64>,
    /// Packages this node stopped at this epoch because its lease left `Valid` while it owned them.
    pub(crate) stopped_for_lease: BTreeMap<String, u64>,
    /// The epoch of each package whose failed stop a daemon of this boot reported: it never starts
    /// that package again at that epoch (clusterd's worker, `stop_failed_at`, kept in the runtime
    /// folder for a restarted daemon; a boot empties it).
    pub(crate) stop_failed_reported: BTreeMap<String, u64>,
    pub(crate) leave: Option<Leave>,
    pub(crate) watchdog: Watchdog,
    /// The last instant (own clock) the executor saw its lease not `Valid`.
    pub(crate) last_lease_lapse: Option<Duration>,
}

impl Node {
    pub(crate) fn new(name: String, clock: Clock, has_watchdog: bool, nowayout: bool) -> Node {
        // The daemons of a run's first nodes have run for a while: nothing they forgot matters.
        let started = clock.local(0).saturating_sub(Duration::from_secs(60));
        Node {
            name,
            clock,
            wall_offset_us: 0,
            has_watchdog,
            nowayout,
            power: Power::Up,
            paused: None,
            deferred: Vec::new(),
            incarnation: 0,
            state: ClusterState::default(),
            applied: 0,
            known_term: 0,
            leader_hint: None,
            leader_of: None,
            table: LeaseTable::default(),
            last_ack: Duration::ZERO,
            fencing: BTreeSet::new(),
            holder: LeaseHolder::default(),
            keep_round: None,
            ledger: KeepLedger::new(started),
            lease_check_at: None,
            hello_pending: false,
            records: BTreeMap::new(),
            ghosts: BTreeMap::new(),
            boots: 0,
            up_since: 0,
            persisted_lease_end: None,
            busy: BTreeMap::new(),
            probed: true,
            stopped_reported_us: BTreeMap::new(),
            stopped_for_lease: BTreeMap::new(),
            stop_failed_reported: BTreeMap::new(),
            leave: None,
            watchdog: Watchdog::default(),
            last_lease_lapse: None,
        }
    }

    /// `clusterd` executes code right now (up and not paused).
    pub(crate) fn runs(&self) -> bool {
        self.power == Power::Up && self.paused.is_none()
    }

    /// The daemon is gone (crash, power off): its volatile state is lost.
    pub(crate) fn lose_daemon_state(&mut self) {
        self.incarnation += 1;
        self.paused = None;
        self.deferred.clear();
        self.leader_hint = None;
        self.leader_of = None;
        self.table = LeaseTable::default();
        self.fencing.clear();
        self.holder = LeaseHolder::default();
        self.keep_round = None;
        self.lease_check_at = None;
        self.stopped_reported_us.clear();
        self.stopped_for_lease.clear();
        self.leave = None;
        self.last_lease_lapse = None;
        self.busy.clear();
        self.probed = false;
    }

    /// The daemon is stopping and gave its lease up: it renews nothing and ignores grants.
    pub(crate) fn lease_given_up(&self) -> bool {
        self.leave.is_some_and(|leave| leave.lease_given_up)
    }
}
