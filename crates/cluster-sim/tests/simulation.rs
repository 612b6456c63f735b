//! Deterministic simulation of the package ownership protocol: S1 over thousands of seeds,
//! liveness after heal, the documented lease-only limitation, and regressions of the bugs the
//! simulation found.
//!
//! `SIM_SEEDS=N` scales the seeds of the property tests (default 1000: 1000 seeds of 3 watchdog
//! nodes, 600 of 5, 250 fenced, 250 lease-only; about 30 s of CPU in debug). A failure prints the
//! command that replays its seed: `SIM_SEED=S … cargo run -p cluster-sim --example simulate`
//! (the example also explores variants with `SIM_EXPLORE=N`).

use std::time::Instant;

use cluster_sim::{run, Scenario, SimConfig, Summary};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|value| value.parse().unwrap_or_else(|_| panic!("{name} must be an integer, got `{value}`")))
}

fn seeds(default: u64) -> u64 {
    env_u64("SIM_SEEDS").unwrap_or(default)
}

/// Runs seeds `0..count`; panics on the first violation with its replay command.
fn property(nodes: usize, scenario: Scenario, count: u64) -> Summary {
    let started = Instant::now();
    let mut total = Summary::default();
    for seed in 0..count {
        match run(&SimConfig::new(seed, nodes, scenario)) {
            Ok(summary) => total.add(&summary),
            Err(violation) => panic!("{violation}"),
        }
    }
    eprintln!("{count} seeds, {nodes} nodes, {scenario}: {:.1?}; totals {total:?}", started.elapsed());
    total
}

/// Guards against a simulation that passes because nothing happens.
fn assert_exercised(total: &Summary) {
    assert!(total.elections > 0, "no election: {total:?}");
    assert!(total.expiry_reassignments > 0, "no failover after a lease expiry: {total:?}");
    assert!(total.starts > 0 && total.stops > 0, "{total:?}");
    assert!(total.partitions > 0 && total.crashes > 0 && total.operator_commands > 0, "{total:?}");
    // Graceful stops (`systemctl stop`), both handed over and, without an answer in time, by
    // giving the lease up.
    assert!(total.leaves > total.leaves_given_up && total.leaves_given_up > 0, "{total:?}");
    // Issue 11: timings changed at runtime (and the lease ceiling settled after a shortening),
    // freezes, waits cut short by a change or the lease, node removals allowed and refused.
    assert!(total.settings_changes > 0 && total.leases_settled > 0, "{total:?}");
    assert!(total.freezes > 0 && total.interrupted_waits > 0, "{total:?}");
    assert!(total.removals > 0 && total.removals_refused > 0, "{total:?}");
    // Issue 14: leases kept by voters while no leader grants, and the leader's expiry checks.
    assert!(total.keeps > 0 && total.expiry_checks > 0, "{total:?}");
}

/// The first violation in seeds `0..limit` of the variant `config(seed)`, if any.
fn first_violation(limit: u64, config: impl Fn(u64) -> SimConfig) -> Option<Box<cluster_sim::Violation>> {
    (0..limit).find_map(|seed| run(&config(seed)).err())
}

#[test]
fn s1_and_liveness_hold_with_3_watchdog_nodes() {
    let total = property(3, Scenario::Watchdog, seeds(1000));
    assert_exercised(&total);
    assert!(total.pauses > 0 && total.watchdog_resets > 0 && total.failed_stops > 0, "{total:?}");
    assert!(total.abandoned_starts > 0, "{total:?}");
}

/// Issue 12: two package nodes and a witness (n3), under every fault of the scenario: the
/// witness votes and may lead, never hosts a package (checked after every event), and every
/// package settles on a package node after the heal.
#[test]
fn s1_and_liveness_hold_with_two_package_nodes_and_a_witness() {
    let packages = cluster_sim::witness_packages();
    for (scenario, count) in [(Scenario::Watchdog, seeds(1_000) / 4), (Scenario::LeaseOnly, seeds(1_000) / 4)] {
        let started = Instant::now();
        let mut total = Summary::default();
        for seed in 0..count {
            let config = SimConfig {
                witnesses: vec!["n3".into()],
                packages: packages.clone(),
                ..SimConfig::new(seed, 3, scenario)
            };
            match run(&config) {
                Ok(summary) => total.add(&summary),
                Err(violation) => panic!("{violation}"),
            }
        }
        eprintln!(
            "{count} seeds, 2 package nodes and a witness, {scenario}: {:.1?}; totals {total:?}",
            started.elapsed()
        );
        assert!(total.expiry_reassignments > 0 && total.elections > 0, "{total:?}");
    }
}

/// Regression (found by the witness test, seed 19, lease-only): a daemon that gave its lease up
/// while leaving exited before the stop of a frozen package (stopped because the lease outranks the
/// freeze) ended, leaving it running unknown to the cluster, which started it elsewhere after an
/// unfreeze.
#[test]
fn a_daemon_that_gave_its_lease_up_waits_for_the_stop_of_its_frozen_packages() {
    let config = SimConfig {
        witnesses: vec!["n3".into()],
        packages: cluster_sim::witness_packages(),
        ..SimConfig::new(19, 3, Scenario::LeaseOnly)
    };
    if let Err(violation) = run(&config) {
        panic!("{violation}");
    }
}

/// Negative control of the witness invariant: a witness the state does not know about is placed on.
#[test]
fn a_witness_the_controller_ignored_would_host_packages() {
    let config = |seed| SimConfig {
        witnesses: vec!["n1".into()],
        witness_not_recorded: true,
        ..SimConfig::new(seed, 3, Scenario::Watchdog)
    };
    let violation = first_violation(10, config).expect("caught within 10 seeds");
    assert_eq!(violation.invariant, "witness", "{violation}");
}

#[test]
fn s1_and_liveness_hold_with_5_watchdog_nodes() {
    let total = property(5, Scenario::Watchdog, seeds(1000) * 3 / 5);
    assert_exercised(&total);
    assert!(total.pauses > 0 && total.watchdog_resets > 0, "{total:?}");
}

#[test]
fn s1_and_liveness_hold_with_fenced_nodes() {
    let started = Instant::now();
    let count = seeds(1000) / 4;
    let mut total = Summary::default();
    for seed in 0..count {
        let config = SimConfig::new(seed, 3, Scenario::Fencing);
        match run(&config) {
            Ok(summary) => total.add(&summary),
            Err(violation) => panic!("{violation}"),
        }
    }
    eprintln!("{count} seeds, 3 nodes, fencing: {:.1?}; {total:?}", started.elapsed());
    assert!(total.fences > 0 && total.pauses > 0 && total.failed_stops > 0, "{total:?}");
}

#[test]
fn s1_and_liveness_hold_for_lease_only_nodes_without_pauses() {
    let total = property(3, Scenario::LeaseOnly, seeds(1000) / 4);
    assert_exercised(&total);
}

/// The documented limitation (DESIGN §5, docs/safety.md (d)): a lease-only node that pauses
/// keeps its resources while the controller, rightly by its rules, reassigns the package.
/// `SIM_EXPLORE=300 SIM_SCENARIO=lease-only-pauses` shows how often (about a third of the seeds).
#[test]
fn lease_only_nodes_can_overlap_under_a_pause() {
    let violation = first_violation(100, |seed| SimConfig::new(seed, 3, Scenario::LeaseOnlyWithPauses))
        .expect("a paused lease-only owner overlaps with its successor");
    assert_eq!(violation.invariant, "S1", "{violation}");
    assert!(violation.trace.iter().any(|line| line.contains("paused")), "the overlap comes from a pause:\n{violation}");
}

/// Negative control of the new leader's bound on older leases (docs/safety.md): the same bound
/// taken 200 ms earlier than the voters' answers allow lets a new leader reassign a package while
/// its old owner still holds a lease, and the simulation sees the overlap (8 of 1000 seeds, 4 of
/// these 400; 100 ms early: 1 of 1000).
#[test]
fn a_too_early_bound_on_older_leases_breaks_s1() {
    let violations = (0..400)
        .filter_map(|seed| {
            let config = SimConfig {
                older_leases_bound_early: std::time::Duration::from_millis(200),
                check_liveness: false,
                ..SimConfig::new(seed, 3, Scenario::Watchdog)
            };
            run(&config).err()
        })
        .collect::<Vec<_>>();
    assert!(!violations.is_empty(), "a bound 200 ms too early must be caught within 400 seeds");
    assert!(violations.iter().all(|v| v.invariant == "S1"), "{}", violations[0]);
}

/// Negative control of the graceful stop: a daemon that exits on SIGTERM leaving its packages
/// running (clusterd before `Engine::leave`) lets a lease-only node's packages run twice once its
/// lease expires at the leader. Handing them over first (the default) keeps S1 in every scenario.
#[test]
fn a_daemon_that_stops_without_handing_over_breaks_s1_in_lease_only_mode() {
    let violations = (0..100)
        .filter_map(|seed| {
            let config = SimConfig {
                leave_without_handing_over: true,
                check_liveness: false,
                ..SimConfig::new(seed, 3, Scenario::LeaseOnly)
            };
            run(&config).err()
        })
        .collect::<Vec<_>>();
    assert!(!violations.is_empty(), "exiting with packages running must be caught within 100 seeds");
    assert!(violations.iter().all(|v| v.invariant == "S1"), "{}", violations[0]);
}

/// Regression (seed 111, 5 nodes): a `ResourceFailed` report with restart budget left used to
/// turn `Stopping` back into `Starting`; the owner restarted while its `Stopped` was in flight and
/// the package ran on two nodes. `ClusterState::report` now keeps `Stopping`.
#[test]
fn resource_failed_while_stopping_no_longer_breaks_s1() {
    let config = SimConfig { resource_failures: true, ..SimConfig::new(111, 5, Scenario::Watchdog) };
    if let Err(violation) = run(&config) {
        panic!("{violation}");
    }
}

/// Regression (seed 1, lease-only): an executor that reports `Stopped` after a lease-lapse stop in
/// phase `Running` could restart at the same epoch while that report was in flight, and the late
/// report freed the package for another node. `ClusterState::report` now accepts `Stopped` only in
/// `Stopping`, so even that (unsafe) executor variant keeps S1.
#[test]
fn stopped_outside_stopping_is_refused_so_a_restarted_owner_keeps_its_package() {
    let config = SimConfig { report_stopped_in_any_phase: true, ..SimConfig::new(1, 3, Scenario::LeaseOnly) };
    if let Err(violation) = run(&config) {
        panic!("{violation}");
    }
}

/// Regression (seed 47): `least-loaded` with `failback = "auto"` flapped forever between the first
/// node of the list and the least-loaded one. Failback now moves only to the node placement would
/// choose, when it is more preferred than the owner.
#[test]
fn least_loaded_with_auto_failback_settles() {
    let mut config = SimConfig::new(47, 3, Scenario::Watchdog);
    config.packages[1] = cluster_sim::package_text("db", &[], "least-loaded", "auto");
    if let Err(violation) = run(&config) {
        panic!("{violation}");
    }
}

/// Regression (seed 111, fencing-only nodes): a node just fenced still counted as alive in the
/// leader's lease table, got packages while off, and was fenced again in a loop. The table now
/// marks a fenced node expired until it renews after the fence.
#[test]
fn a_fenced_node_is_not_given_packages_while_off() {
    let config = SimConfig::new(111, 3, Scenario::Fencing);
    if let Err(violation) = run(&config) {
        panic!("{violation}");
    }
}

#[test]
fn a_seed_replays_identically() {
    for seed in [1, 42] {
        let config = SimConfig::new(seed, 5, Scenario::Watchdog);
        assert_eq!(run(&config).unwrap(), run(&config).unwrap(), "seed {seed}");
    }
    let one = run(&SimConfig::new(1, 5, Scenario::Watchdog)).unwrap();
    let two = run(&SimConfig::new(2, 5, Scenario::Watchdog)).unwrap();
    assert_ne!(one.log_digest, two.log_digest, "different seeds, same run");
}

/// Regression (seed 322, fencing-only nodes): a newly elected leader that had not renewed its own
/// lease yet judged itself expired and fenced itself, powering off the only node running the
/// package. The leader now counts itself alive in the view it plans with.
#[test]
fn a_new_leader_never_fences_itself() {
    let config = SimConfig::new(322, 3, Scenario::Fencing);
    if let Err(violation) = run(&config) {
        panic!("{violation}");
    }
}

/// Negative control of issue 11, finding 3: a worker that waits for its report's answer (up to
/// 5 s) or a monitor (up to its timeout) without watching its lease keeps a lease-only node's
/// package running after the lease lapsed, and the observer-less simulation sees the overlap
/// (29 of the first 200 seeds when it was fixed). Waits now end at a package change or the lease.
#[test]
fn a_worker_that_sits_out_its_waits_breaks_s1_in_lease_only_mode() {
    let config = |seed| SimConfig {
        waits_ignore_lease: true,
        check_liveness: false,
        ..SimConfig::new(seed, 3, Scenario::LeaseOnly)
    };
    let violation = first_violation(300, config).expect("caught within 300 seeds");
    assert_eq!(violation.invariant, "S1", "{violation}");
}

/// Negative control of issue 11, finding 4: a frozen package left running when its owner's lease
/// lapses (a partitioned lease-only owner) overlaps once the majority unfreezes and reassigns it.
/// The lease now outranks the freeze. Rare: 1 seed in the first 1,000 (seed 203 when fixed).
#[test]
fn a_frozen_package_kept_past_the_lease_breaks_s1_in_lease_only_mode() {
    let config = |seed| SimConfig {
        frozen_ignores_lease: true,
        check_liveness: false,
        ..SimConfig::new(seed, 3, Scenario::LeaseOnly)
    };
    let violation = first_violation(3_000, config).expect("caught within 3,000 seeds");
    assert_eq!(violation.invariant, "S1", "{violation}");
    assert!(violation.trace.iter().any(|line| line.contains("PkgFreeze")), "a freeze is involved:\n{violation}");
}

/// Negative control of issue 11, finding 5: a grant that carries the leader's applied index lets a
/// stale owner act, under a new leader that has not applied the previous leader's entries yet, on
/// a state that misses the reassignment of its package (4 of the first 1,000 watchdog seeds when
/// fixed). Grants now carry the end of the leader's log.
#[test]
fn a_grant_at_the_applied_index_breaks_s1() {
    let config = |seed| SimConfig {
        grant_applied_index: true,
        check_liveness: false,
        ..SimConfig::new(seed, 3, Scenario::Watchdog)
    };
    let violation = first_violation(3_000, config).expect("caught within 3,000 seeds");
    assert_eq!(violation.invariant, "S1", "{violation}");
}

/// Negative control of issue 11, trap A: a leader cut off from the quorum still believes it leads
/// (openraft 0.9 does not step down) and fences the nodes that follow the new leader. Fences now
/// wait for a quorum's confirmation made after the plan's view.
#[test]
fn a_deposed_leader_that_fences_without_confirming_is_caught() {
    let config = |seed| SimConfig {
        fence_without_confirming: true,
        check_liveness: false,
        ..SimConfig::new(seed, 3, Scenario::Fencing)
    };
    let violation = first_violation(100, config).expect("caught within 100 seeds");
    assert_eq!(violation.invariant, "fence-by-deposed-leader", "{violation}");
}

/// Negative control of issue 11, trap B: `node remove` of an owner, with a controller that leaves
/// owners that are not members out of its view, strands its packages for ever. Removal is now
/// refused while the node owns packages, and departed owners are judged by their lease.
#[test]
fn removing_an_owner_used_to_strand_its_packages() {
    let config = |seed| SimConfig { remove_undrained: true, ..SimConfig::new(seed, 3, Scenario::Watchdog) };
    let violation = first_violation(1_000, config).expect("caught within 1,000 seeds");
    assert_eq!(violation.invariant, "liveness", "{violation}");
}

/// Negative control of issue 11, finding 2: a start abandoned at the stop budget that keeps going
/// unseen (a `mount(2)` in a blocking thread) lands after the stop found nothing, untracked, while
/// the package runs elsewhere. Abandoned actions are now tracked to completion and undone.
#[test]
fn an_abandoned_start_that_lands_later_breaks_s1() {
    let config = |seed| SimConfig {
        abandoned_starts_land: true,
        check_liveness: false,
        ..SimConfig::new(seed, 3, Scenario::Watchdog)
    };
    let violation = first_violation(1_000, config).expect("caught within 1,000 seeds");
    assert_eq!(violation.invariant, "S1", "{violation}");
    assert!(violation.detail.contains("left by an abandoned start"), "{violation}");
}

/// Negative control of issue 11, trap C: a `nowayout` watchdog cannot be disarmed when the last
/// package leaves; left unpetted it resets a healthy node. It is now petted while nothing is active.
#[test]
fn an_idle_nowayout_watchdog_left_unpetted_resets_healthy_nodes() {
    let config = |seed| SimConfig { nowayout_left_unpetted: true, ..SimConfig::new(seed, 3, Scenario::Watchdog) };
    let violation = first_violation(100, config).expect("caught within 100 seeds");
    assert_eq!(violation.invariant, "healthy-reset", "{violation}");
}

/// Runs `count` seeds of `scenario` with `timings`; panics on the first violation.
fn property_with(scenario: Scenario, timings: Option<(u64, u64)>, count: u64) -> Summary {
    let mut total = Summary::default();
    for seed in 0..count {
        match run(&SimConfig { timings, ..SimConfig::new(seed, 3, scenario) }) {
            Ok(summary) => total.add(&summary),
            Err(violation) => panic!("{violation}"),
        }
    }
    total
}

/// Issue 14, item 1: the death of the Raft leader stops no package on a live node (invariant
/// `bystander-stop`), at the default timings, at heartbeat 50 ms / lease 300 ms and at 25 ms /
/// 150 ms: the other nodes keep their leases through a majority of voters until a new leader
/// renews them.
#[test]
fn a_leader_loss_stops_no_package_on_a_live_node() {
    for timings in [None, Some((50, 300)), Some((25, 150))] {
        let total = property_with(Scenario::LeaderLoss, timings, seeds(1000) / 4);
        assert!(total.crashes > 0 && total.elections > total.crashes / 2, "{timings:?}: {total:?}");
        assert!(total.keeps > 0 && total.lapse_stops == 0, "{timings:?}: {total:?}");
        assert!(total.expiry_reassignments > 0, "the dead leader's own packages move: {timings:?}: {total:?}");
    }
}

/// Negative control of issue 14, item 1: without keep renewals, a leader's death stops the
/// packages of live nodes whose lease runs out before a new leader renews it.
#[test]
fn without_keep_renewals_a_leader_loss_stops_bystanders() {
    let config = |seed| SimConfig { no_keep_renewals: true, ..SimConfig::new(seed, 3, Scenario::LeaderLoss) };
    let violation = first_violation(50, config).expect("caught within 50 seeds");
    assert_eq!(violation.invariant, "bystander-stop", "{violation}");
}

/// Issue 14, item 4: renewals carried by a relay (as clusterd's learners renew through a voter)
/// keep S1 and liveness under every fault of the fencing and watchdog runs, and a leader's death
/// still stops no package on a live node: a relay only delays a renewal, and a holder whose lease
/// is no longer fresh renews with the leader directly.
#[test]
fn relayed_renewals_keep_s1_liveness_and_bystanders() {
    for (scenario, count) in [(Scenario::Fencing, seeds(1000) / 4), (Scenario::Watchdog, seeds(1000) / 4)] {
        let mut total = Summary::default();
        for seed in 0..count {
            match run(&SimConfig { relay_renewals: true, ..SimConfig::new(seed, 5, scenario) }) {
                Ok(summary) => total.add(&summary),
                Err(violation) => panic!("{violation}"),
            }
        }
        if scenario == Scenario::Watchdog {
            assert_exercised(&total);
        } else {
            assert!(total.fences > 0 && total.pauses > 0 && total.partitions > 0, "{total:?}");
        }
        assert!(total.relayed_renewals > total.grants / 4, "{scenario}: few renewals relayed: {total:?}");
    }
    for timings in [None, Some((50, 300))] {
        let mut total = Summary::default();
        for seed in 0..seeds(1000) / 4 {
            let config = SimConfig { relay_renewals: true, timings, ..SimConfig::new(seed, 5, Scenario::LeaderLoss) };
            match run(&config) {
                Ok(summary) => total.add(&summary),
                Err(violation) => panic!("{violation}"),
            }
        }
        assert!(total.crashes > 0 && total.relayed_renewals > 0, "{timings:?}: {total:?}");
        assert!(total.keeps > 0 && total.lapse_stops == 0, "{timings:?}: {total:?}");
    }
}

/// Found while adding relayed renewals: an owner whose failed stop it reported (the package
/// `blocked` once committed) started the package again at that epoch from a state older than its
/// report, after the operator had stopped the resources by hand and run `pkg cleanup`; the leader
/// placed it elsewhere meanwhile. A daemon now never starts a package at the epoch of a stop
/// failure it reported. Seed 1973 of 5-node fencing with relays is the run that found it.
#[test]
fn a_start_after_a_reported_stop_failure_races_the_cleanup() {
    let config = |unsafe_start| SimConfig {
        relay_renewals: true,
        start_after_reported_stop_failure: unsafe_start,
        ..SimConfig::new(1973, 5, Scenario::Fencing)
    };
    let violation = run(&config(true)).expect_err("the old executor starts again at the blocked epoch");
    assert_eq!(violation.invariant, "S1", "{violation}");
    run(&config(false)).unwrap_or_else(|violation| panic!("{violation}"));
}

/// Issue 14, item 2: a crash of clusterd restarted by systemd (100–250 ms) adopts what runs with
/// its predecessor's lease: no watchdog reset, no running package stopped, at the default timings.
#[test]
fn a_restarted_daemon_adopts_its_packages_without_a_reset() {
    let total = property_with(Scenario::DaemonRestart, None, seeds(1000) / 4);
    assert!(total.daemon_crashes > 0 && total.adoptions > 0, "{total:?}");
    assert_eq!((total.watchdog_resets, total.lapse_stops), (0, 0), "{total:?}");
}

/// Negative control of issue 14, item 2: a restarted daemon that starts without its predecessor's
/// lease lets the watchdog, still counting, reset the node.
#[test]
fn without_its_predecessors_lease_a_restarted_daemon_is_reset() {
    let config = |seed| SimConfig { no_lease_restore: true, ..SimConfig::new(seed, 3, Scenario::DaemonRestart) };
    let violation = first_violation(50, config).expect("caught within 50 seeds");
    assert_eq!(violation.invariant, "reset-after-restart", "{violation}");
}

// ---- package relations (issue 13): dependencies, instances, a promotable database, capacity ----

/// Runs seeds `0..count` of the relation packages; panics on the first violation.
fn relations_property(nodes: usize, scenario: Scenario, count: u64) -> Summary {
    let started = Instant::now();
    let mut total = Summary::default();
    for seed in 0..count {
        match run(&SimConfig::with_relations(seed, nodes, scenario)) {
            Ok(summary) => total.add(&summary),
            Err(violation) => panic!("{violation}"),
        }
    }
    eprintln!("{count} seeds, {nodes} nodes, {scenario}, relations: {:.1?}; totals {total:?}", started.elapsed());
    total
}

/// Guards against relations that pass because nothing happens to them.
fn assert_relations_exercised(total: &Summary) {
    assert!(total.expiry_reassignments > 0 && total.crashes > 0 && total.partitions > 0, "{total:?}");
    assert!(total.promotions > 0 && total.demotions > 0, "{total:?}");
    assert!(total.dependents_held > 0, "no dependent ever waited for its dependency: {total:?}");
}

/// S1, anti-affinity, at most `primaries` primaries and dependency order at every step, and
/// liveness after heal (every instance that can run runs, one primary), with the relation packages.
#[test]
fn relations_hold_with_3_watchdog_nodes() {
    let total = relations_property(3, Scenario::Watchdog, seeds(1000) / 2);
    assert_relations_exercised(&total);
    assert!(total.pauses > 0 && total.watchdog_resets > 0 && total.failed_stops > 0, "{total:?}");
}

#[test]
fn relations_hold_with_5_watchdog_nodes() {
    let total = relations_property(5, Scenario::Watchdog, seeds(1000) / 5);
    assert_relations_exercised(&total);
}

/// Fenced nodes. Seeds 376 and 1,396 (beyond the default 250) missed liveness in a fence storm on
/// the relations branch: a leader that fences two nodes at once loses its quorum, cannot record the
/// fences, and fences them again when they come back. They pass since the fix of issue 14, item 5.
#[test]
fn relations_hold_with_fenced_nodes() {
    let total = relations_property(3, Scenario::Fencing, seeds(1000) / 4);
    assert!(total.fences > 0 && total.promotions > 0, "{total:?}");
}

#[test]
fn relations_hold_for_lease_only_nodes_without_pauses() {
    let total = relations_property(3, Scenario::LeaseOnly, seeds(1000) / 4);
    assert_relations_exercised(&total);
}

/// Negative control of "never two primaries": a replica that promotes itself when it cannot reach
/// the primary's node (a keepalived-style takeover) overlaps with the primary it cannot see, which
/// still holds its lease (61 of the first 100 seeds when written). The role moves only through the
/// replicated state, under the lease rules.
#[test]
fn a_replica_that_promotes_itself_when_the_primary_is_unreachable_is_caught() {
    let config = |seed| SimConfig {
        promote_when_primary_unreachable: true,
        check_liveness: false,
        ..SimConfig::with_relations(seed, 3, Scenario::Watchdog)
    };
    let violation = first_violation(100, config).expect("caught within 100 seeds");
    assert_eq!(violation.invariant, "primaries", "{violation}");
}

/// Negative control of dependency order: a dependent that starts as soon as its state says so,
/// without checking that what it depends on runs on its node, starts before it after a lease lapse
/// or a daemon restart, when both restart at once (222 of the first 300 seeds when written).
#[test]
fn a_dependent_that_does_not_wait_locally_is_caught() {
    let config = |seed| SimConfig {
        no_local_dependency_guard: true,
        check_liveness: false,
        ..SimConfig::with_relations(seed, 3, Scenario::Watchdog)
    };
    let violation = first_violation(100, config).expect("caught within 100 seeds");
    assert_eq!(violation.invariant, "dependency-order", "{violation}");
}

/// Negative control of a new leader's catch-up: one that plans before it applied the entries of
/// older terms judges older leases by the lease length of its lagging state. After `lease = "3s"`
/// was committed, such a leader took an older leader's 3 s leases for 1 s ones and reassigned their
/// packages while their owner, paused, still ran them (found by seed 309 of the relations run
/// once renewals went out at the wall clock's multiples of the heartbeat). Keeps asked for earlier
/// make it much rarer (asked after two missed grants, the first seed that showed it was 24,257);
/// with the keeps of that time (in the last 1.5 heartbeats, `late_keeps`: when keeps are asked for
/// is liveness only, and safety may not depend on it) seed 2813 does, which keeps this control
/// short.
#[test]
fn a_new_leader_that_plans_before_applying_its_log_breaks_s1() {
    let config = |seed| SimConfig {
        plan_before_catch_up: true,
        late_keeps: true,
        check_liveness: false,
        ..SimConfig::with_relations(seed, 3, Scenario::Watchdog)
    };
    let violation = first_violation(3000, config).expect("caught within 3000 seeds");
    assert_eq!(violation.invariant, "S1", "{violation}");
    eprintln!("{violation}");
}
