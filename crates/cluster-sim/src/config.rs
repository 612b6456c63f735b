//! What one simulation run looks like: the seed, the cluster size, how nodes protect themselves
//! against their own pauses, and which faults the nemesis may inject.

use std::fmt;
use std::time::Duration;

/// How the simulated nodes protect the cluster against their own pauses (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Every node arms a watchdog. Faults: crashes, daemon crashes, pauses, partitions, loss,
    /// failed stops, operator commands. S1 must hold.
    Watchdog,
    /// Every node has a fence device and no watchdog. Same faults as [`Scenario::Watchdog`].
    /// S1 must hold.
    Fencing,
    /// Neither watchdog nor fence (declared lease-only). Faults: power crashes, partitions, loss,
    /// operator commands; no pauses, no daemon crashes, no failed stops. S1 must hold.
    LeaseOnly,
    /// Lease-only nodes that also pause: the documented limitation, S1 is NOT guaranteed.
    LeaseOnlyWithPauses,
    /// Watchdog nodes; the only fault is the death of the Raft leader (power crash), on a network
    /// without loss. S1 must hold, and no live node may stop a package at its stop budget.
    LeaderLoss,
    /// Watchdog nodes; the only fault is a crash of `clusterd` that systemd restarts 100–250 ms later
    /// (leader or not). S1 must hold, no node may be reset by its watchdog, and no running package
    /// may stop.
    DaemonRestart,
}

impl Scenario {
    /// Every scenario, for parsing and listing.
    pub const ALL: [Scenario; 6] = [
        Scenario::Watchdog,
        Scenario::Fencing,
        Scenario::LeaseOnly,
        Scenario::LeaseOnlyWithPauses,
        Scenario::LeaderLoss,
        Scenario::DaemonRestart,
    ];

    /// The name used by `SIM_SCENARIO`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Watchdog => "watchdog",
            Scenario::Fencing => "fencing",
            Scenario::LeaseOnly => "lease-only",
            Scenario::LeaseOnlyWithPauses => "lease-only-pauses",
            Scenario::LeaderLoss => "leader-loss",
            Scenario::DaemonRestart => "daemon-restart",
        }
    }

    /// The scenario called `name`, if any.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    pub(crate) fn watchdog(self) -> bool {
        matches!(self, Scenario::Watchdog | Scenario::LeaderLoss | Scenario::DaemonRestart)
    }

    /// Only one kind of fault, on a LAN without loss or long delays: the checks of what must not
    /// happen then (stops of running packages, resets) apply.
    pub(crate) fn single_fault(self) -> bool {
        matches!(self, Scenario::LeaderLoss | Scenario::DaemonRestart)
    }

    pub(crate) fn fencing(self) -> bool {
        self == Scenario::Fencing
    }

    /// Process pauses (SIGSTOP, VM freeze).
    pub(crate) fn pauses(self) -> bool {
        matches!(self, Scenario::Watchdog | Scenario::Fencing | Scenario::LeaseOnlyWithPauses)
    }

    /// `clusterd` dies but the node and its resources stay up (for a lease-only node this is a
    /// pause of unbounded length, so only protected nodes get it).
    pub(crate) fn daemon_crashes(self) -> bool {
        matches!(self, Scenario::Watchdog | Scenario::Fencing)
    }

    /// Stops that fail and leave resources active (the watchdog or a fence must escalate), and
    /// starts that block for seconds (a mount on a stalled device), whose undoing can outlast the
    /// stop budget: a lease-only node is not safe against either.
    pub(crate) fn stop_failures(self) -> bool {
        matches!(self, Scenario::Watchdog | Scenario::Fencing)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One simulation run. Everything random is drawn from `seed`.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub seed: u64,
    /// Cluster size (3 or 5 in the tests).
    pub nodes: usize,
    pub scenario: Scenario,
    /// Faults are injected during this much simulated time.
    pub fault_phase: Duration,
    /// Then no faults for this long; at its end every package must have settled (liveness bound).
    pub heal_phase: Duration,
    /// Probability that a message is lost during the fault phase.
    pub loss: f64,
    /// Usual network delay bound; 1% of messages are delayed up to 16× this during the fault phase.
    pub max_delay: Duration,
    /// Longest process pause.
    pub max_pause: Duration,
    /// Probability that a stop fails (scenarios with failed stops only).
    pub stop_failure: f64,
    /// Check liveness at the end of the heal phase (S1 and start epochs are always checked).
    pub check_liveness: bool,
    /// Resource failures reported with `Report::ResourceFailed`: monitor failures injected by the
    /// nemesis, and a package found not running where the state says `Running` (as clusterd's
    /// executor reports it). On by default since `Report::ResourceFailed` no longer turns
    /// `Stopping` back into `Starting` (see the `resource_failed_while_stopping_*` regression test).
    pub resource_failures: bool,
    /// Package files loaded at bootstrap (`pkg apply`).
    pub packages: Vec<String>,
    /// Nodes recorded as witnesses at bootstrap (`Command::NodeRole`): voters that must never
    /// host a package (checked after every event).
    pub witnesses: Vec<String>,
    /// Bootstrap variant: the witnesses are checked but never recorded in the state, as if the
    /// controller ignored the role; kept to show that the invariant catches a package on a witness
    /// (`a_witness_the_controller_ignored_would_host_packages`).
    pub witness_not_recorded: bool,
    /// What every node offers to packages' `needs` (`NodeCapacity` at bootstrap; empty: nothing announced).
    pub node_capacity: std::collections::BTreeMap<String, u64>,
    /// Executor variant: after a stop, report `Stopped` whenever the node still owns the package
    /// at that epoch, in any phase (not only `Stopping`). Unsafe; kept to document why
    /// (see the `stopped_report_outside_stopping_*` regression test).
    pub report_stopped_in_any_phase: bool,
    /// Controller variant: a new leader takes the moment after which older leases began this much
    /// earlier than its voters' answers allow. Unsafe above the margins; kept to show that the
    /// simulation catches a wrong bound (see `a_too_early_bound_on_older_leases_breaks_s1`).
    pub older_leases_bound_early: Duration,
    /// Controller variant: a new leader plans before it applied the entries of older terms, as
    /// clusterd did before this was found: with a lease lengthened by a committed entry it has not
    /// applied yet, it judges older leases by the old length
    /// (`a_new_leader_that_plans_before_applying_its_log_breaks_s1`).
    pub plan_before_catch_up: bool,
    /// Daemon variant: `systemctl stop clusterd` exits at once and leaves the packages running,
    /// as clusterd did before it handed them over. Unsafe for lease-only nodes; kept to show why
    /// (see `a_daemon_that_stops_without_handing_over_breaks_s1_in_lease_only_mode`).
    pub leave_without_handing_over: bool,
    /// Executor variant: a worker that waits for its report's answer (up to 5 s) or a monitor (up
    /// to its timeout) acts on nothing meanwhile, not even its lease reaching the stop budget, as
    /// clusterd did before issue 11 (finding 3). Unsafe for lease-only nodes; kept to show why
    /// (`a_worker_that_sits_out_its_waits_breaks_s1_in_lease_only_mode`).
    pub waits_ignore_lease: bool,
    /// Controller variant: fences start as soon as a plan asks for them, without confirming the
    /// leadership with a quorum first, as clusterd did before issue 11 (trap A): a deposed leader
    /// that still believes it leads fences the nodes that follow the new one (kept to show why,
    /// `a_deposed_leader_that_fences_without_confirming_is_caught`).
    pub fence_without_confirming: bool,
    /// Membership variant: `node remove` removes a node that owns packages, and the controller
    /// leaves owners that are not members out of its view, as clusterd did before issue 11 (trap
    /// B): their packages stay there for ever (`removing_an_owner_used_to_strand_its_packages`).
    pub remove_undrained: bool,
    /// Host variant: a start abandoned at the stop budget keeps going unseen (a `mount(2)` in a
    /// blocking thread); the stop that follows finds nothing and the start lands later, untracked,
    /// as before issue 11 (finding 2). Unsafe; kept to show why
    /// (`an_abandoned_start_that_lands_later_breaks_s1`).
    pub abandoned_starts_land: bool,
    /// Executor variant: a frozen package is left running when the lease reaches its stop budget,
    /// as before issue 11 (finding 4); unsafe for lease-only nodes
    /// (`a_frozen_package_kept_past_the_lease_breaks_s1_in_lease_only_mode`).
    pub frozen_ignores_lease: bool,
    /// Leader variant: a grant carries the leader's applied index instead of the end of its log,
    /// as before issue 11 (finding 5): a new leader that has not applied older entries yet lets a
    /// stale owner act on a state that misses a reassignment (`a_grant_at_the_applied_index_breaks_s1`).
    pub grant_applied_index: bool,
    /// Watchdog variant: a `nowayout` device that cannot be disarmed is no longer petted once
    /// nothing is active, as before issue 11 (trap C): it resets a healthy node
    /// (`an_idle_nowayout_watchdog_left_unpetted_resets_healthy_nodes`).
    pub nowayout_left_unpetted: bool,
    /// Lease variant: no keep renewals (a node renews only with a leader), as before issue 14: a
    /// leader's death stops the packages of live nodes whose lease runs out before a new leader
    /// renews it (`without_keep_renewals_a_leader_loss_stops_bystanders`).
    pub no_keep_renewals: bool,
    /// Lease variant: keeps asked for only in the last one and a half heartbeats before the stop
    /// budget, as at first, instead of at half time (`cluster_model::keep_due`). When
    /// keeps are asked for is liveness only; the control of a new leader's catch-up finds its
    /// violation with this timing (`a_new_leader_that_plans_before_applying_its_log_breaks_s1`).
    pub late_keeps: bool,
    /// Daemon variant: a restarted daemon starts without its predecessor's lease, as before issue 14
    /// (item 2): its watchdog, still counting, resets the node unless a grant comes first.
    pub no_lease_restore: bool,
    /// Lease variant of clusterd's learners: every node renews through a relay, the node
    /// `cluster_model::relay_voter` picks among the others (the believed leader excepted), while
    /// its lease is fresh (`cluster_model::renew_through_relay`), else with the leader directly.
    /// The relay hands the renewal to the leader it believes in and the grant back (issue 14, item 4).
    pub relay_renewals: bool,
    /// Executor variant: a daemon whose failed stop it reported may start the package again at that
    /// epoch from a state older than its report, as before seed 1973 of 5-node fencing with relayed
    /// renewals showed the race with an operator's cleanup
    /// (`a_start_after_a_reported_stop_failure_races_the_cleanup`).
    pub start_after_reported_stop_failure: bool,
    /// `heartbeat` and `lease` (ms) set at bootstrap; `None`: the defaults (100 ms, 1 s).
    pub timings: Option<(u64, u64)>,
    /// Executor variant: a replica of a promotable package promotes itself when it cannot reach the
    /// node of the primary, as a keepalived-style takeover does, instead of waiting for the
    /// replicated role (`a_replica_that_promotes_itself_when_the_primary_is_unreachable_is_caught`).
    pub promote_when_primary_unreachable: bool,
    /// Executor variant: a dependent starts as soon as its state says so, without checking that
    /// what it depends on runs on this node (after a lease lapse both restart at once:
    /// `a_dependent_that_does_not_wait_locally_is_caught`).
    pub no_local_dependency_guard: bool,
    /// Keep a trace of every event (for reproducing a failure; slower).
    pub trace: bool,
    /// How many trace lines a violation keeps (`None`: the last 200).
    pub trace_tail: Option<usize>,
}

impl SimConfig {
    /// The default run: 10 s of faults, 10 s to heal.
    pub fn new(seed: u64, nodes: usize, scenario: Scenario) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            scenario,
            fault_phase: Duration::from_secs(10),
            heal_phase: Duration::from_secs(10),
            loss: if scenario.single_fault() { 0.0 } else { 0.05 },
            // A LAN where only the leader dies; the other scenarios' delays are deliberately long.
            max_delay: Duration::from_millis(if scenario.single_fault() { 5 } else { 50 }),
            max_pause: Duration::from_secs(3),
            stop_failure: 0.02,
            check_liveness: true,
            resource_failures: true,
            packages: crate::bootstrap::default_packages(),
            witnesses: Vec::new(),
            witness_not_recorded: false,
            node_capacity: Default::default(),
            report_stopped_in_any_phase: false,
            older_leases_bound_early: Duration::ZERO,
            plan_before_catch_up: false,
            leave_without_handing_over: false,
            waits_ignore_lease: false,
            fence_without_confirming: false,
            remove_undrained: false,
            abandoned_starts_land: false,
            no_keep_renewals: false,
            late_keeps: false,
            no_lease_restore: false,
            relay_renewals: false,
            start_after_reported_stop_failure: false,
            timings: None,
            frozen_ignores_lease: false,
            grant_applied_index: false,
            nowayout_left_unpetted: false,
            promote_when_primary_unreachable: false,
            no_local_dependency_guard: false,
            trace: false,
            trace_tail: None,
        }
    }

    /// The default run with the packages of [`crate::relation_packages`] and nodes that offer 4 slots.
    /// The heal phase is longer (15 s): instances bound to a node wait for that node, and a chain of
    /// dependencies settles one link per start.
    pub fn with_relations(seed: u64, nodes: usize, scenario: Scenario) -> SimConfig {
        SimConfig {
            packages: crate::bootstrap::relation_packages(),
            node_capacity: [("slots".to_owned(), 4)].into(),
            heal_phase: Duration::from_secs(15),
            ..SimConfig::new(seed, nodes, scenario)
        }
    }

    /// The command that replays this run alone, with its trace.
    pub fn reproduce_command(&self) -> String {
        let witness = self.witnesses.first().map(|name| format!(" SIM_WITNESS={name}")).unwrap_or_default();
        let relay = if self.relay_renewals { " SIM_RELAY=1" } else { "" };
        format!(
            "SIM_SEED={} SIM_NODES={} SIM_SCENARIO={}{}{witness}{relay} cargo run -p cluster-sim --example simulate",
            self.seed,
            self.nodes,
            self.scenario.name(),
            if self.packages == crate::bootstrap::relation_packages() { " SIM_PACKAGES=relations" } else { "" }
        )
    }
}
