//! Replays one simulation seed with its trace, or explores many seeds of a variant.
//!
//! `SIM_SEED=S [SIM_NODES=3|5] [SIM_SCENARIO=watchdog|fencing|lease-only|lease-only-pauses|leader-loss|daemon-restart]
//!  [SIM_PACKAGES=relations] [SIM_WITNESS=NODE] [SIM_TRACE_TAIL=LINES] cargo run -p cluster-sim --example
//! simulate` replays one run with its trace (`SIM_PACKAGES=relations`: the packages with dependencies,
//! instances, a promotable database and capacities, `cluster_sim::relation_packages`; `SIM_WITNESS`:
//! that node is a witness, with `cluster_sim::witness_packages`);
//! `SIM_EXPLORE=N` (with `SIM_RESOURCE_FAILURES=1`, `SIM_STOPPED_ANY_PHASE=1`,
//! `SIM_DB_FAILBACK_AUTO=1`, `SIM_NO_LIVENESS=1`, `SIM_WAITS_IGNORE_LEASE=1`,
//! `SIM_FENCE_WITHOUT_CONFIRMING=1`, `SIM_REMOVE_UNDRAINED=1`, `SIM_ABANDONED_STARTS_LAND=1`,
//! `SIM_FROZEN_IGNORES_LEASE=1`, `SIM_GRANT_APPLIED_INDEX=1`, `SIM_NOWAYOUT_LEFT_UNPETTED=1`,
//! `SIM_NO_KEEP_RENEWALS=1`, `SIM_NO_LEASE_RESTORE=1`, `SIM_TIMINGS=50/300`, `SIM_PROMOTE_WHEN_PRIMARY_UNREACHABLE=1`,
//! `SIM_NO_LOCAL_DEPENDENCY_GUARD=1`, `SIM_PLAN_BEFORE_CATCH_UP=1`, `SIM_LATE_KEEPS=1`, `SIM_RELAY=1`, `SIM_START_AFTER_STOP_FAILURE=1` (these four also with `SIM_SEED`); `SIM_PACKAGES=relations` runs the packages with relations) runs N seeds of a
//! variant and counts violations.

use cluster_sim::{run, Scenario, SimConfig};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|value| value.parse().unwrap_or_else(|_| panic!("{name} must be an integer, got `{value}`")))
}

fn scenario() -> Scenario {
    std::env::var("SIM_SCENARIO").map_or(Scenario::Watchdog, |name| {
        Scenario::parse(&name).unwrap_or_else(|| panic!("unknown SIM_SCENARIO `{name}`"))
    })
}

/// `SIM_TIMINGS=HEARTBEAT_MS/LEASE_MS`, e.g. `50/300`.
fn timings() -> Option<(u64, u64)> {
    let text = std::env::var("SIM_TIMINGS").ok()?;
    let (heartbeat, lease) = text.split_once('/').unwrap_or_else(|| panic!("SIM_TIMINGS is HEARTBEAT_MS/LEASE_MS"));
    Some((heartbeat.parse().expect("heartbeat ms"), lease.parse().expect("lease ms")))
}

/// The run of `seed`: the default packages, or those with relations (`SIM_PACKAGES=relations`).
fn config(seed: u64, nodes: usize) -> SimConfig {
    match std::env::var("SIM_PACKAGES").as_deref() {
        Ok("relations") => SimConfig::with_relations(seed, nodes, scenario()),
        Ok("default") | Err(_) => SimConfig::new(seed, nodes, scenario()),
        Ok(other) => panic!("unknown SIM_PACKAGES `{other}`: expected default or relations"),
    }
}

/// Whether the variable `name` is set to `1`.
fn on(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// `SIM_WITNESS=NODE`: that node is a witness, with the packages of the witness tests.
fn with_witness(mut config: SimConfig) -> SimConfig {
    if let Ok(name) = std::env::var("SIM_WITNESS") {
        config.witnesses = vec![name];
        config.packages = cluster_sim::witness_packages();
    }
    config
}

fn main() {
    let nodes = env_u64("SIM_NODES").unwrap_or(3) as usize;
    if let Some(count) = env_u64("SIM_EXPLORE") {
        let mut failed = 0;
        for seed in 0..count {
            let mut config = with_witness(config(seed, nodes));
            config.resource_failures = on("SIM_RESOURCE_FAILURES") || config.resource_failures;
            config.report_stopped_in_any_phase = on("SIM_STOPPED_ANY_PHASE");
            config.check_liveness = !on("SIM_NO_LIVENESS");
            config.waits_ignore_lease = on("SIM_WAITS_IGNORE_LEASE");
            config.fence_without_confirming = on("SIM_FENCE_WITHOUT_CONFIRMING");
            config.remove_undrained = on("SIM_REMOVE_UNDRAINED");
            config.abandoned_starts_land = on("SIM_ABANDONED_STARTS_LAND");
            config.frozen_ignores_lease = on("SIM_FROZEN_IGNORES_LEASE");
            config.grant_applied_index = on("SIM_GRANT_APPLIED_INDEX");
            config.nowayout_left_unpetted = on("SIM_NOWAYOUT_LEFT_UNPETTED");
            config.no_keep_renewals = on("SIM_NO_KEEP_RENEWALS");
            config.late_keeps = on("SIM_LATE_KEEPS");
            config.no_lease_restore = on("SIM_NO_LEASE_RESTORE");
            config.timings = timings();
            config.promote_when_primary_unreachable = on("SIM_PROMOTE_WHEN_PRIMARY_UNREACHABLE");
            config.no_local_dependency_guard = on("SIM_NO_LOCAL_DEPENDENCY_GUARD");
            config.plan_before_catch_up = on("SIM_PLAN_BEFORE_CATCH_UP");
            config.relay_renewals = on("SIM_RELAY");
            config.start_after_reported_stop_failure = on("SIM_START_AFTER_STOP_FAILURE");
            if on("SIM_DB_FAILBACK_AUTO") {
                config.packages[1] = cluster_sim::package_text("db", &[], "least-loaded", "auto");
            }
            if let Err(violation) = run(&config) {
                failed += 1;
                eprintln!("seed {seed}: {} {}", violation.invariant, violation.detail);
            }
        }
        println!("{failed} of {count} seeds violated an invariant");
        std::process::exit(i32::from(failed > 0));
    }
    let Some(seed) = env_u64("SIM_SEED") else {
        eprintln!("set SIM_SEED=S to replay one seed, or SIM_EXPLORE=N to explore N seeds");
        std::process::exit(2);
    };
    let trace_tail = env_u64("SIM_TRACE_TAIL").map(|lines| lines as usize);
    let config = with_witness(SimConfig {
        trace: true,
        trace_tail,
        timings: timings(),
        plan_before_catch_up: on("SIM_PLAN_BEFORE_CATCH_UP"),
        late_keeps: on("SIM_LATE_KEEPS"),
        relay_renewals: on("SIM_RELAY"),
        start_after_reported_stop_failure: on("SIM_START_AFTER_STOP_FAILURE"),
        ..config(seed, nodes)
    });
    match run(&config) {
        Ok(summary) => println!("seed {seed}: every invariant held: {summary:?}"),
        Err(violation) => {
            eprintln!("{violation}");
            std::process::exit(1);
        }
    }
}
