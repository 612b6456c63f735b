//! Root test with real `clusterd` nodes and the emulated watchdog: a short nemesis run (every fault kind: kill,
//! kill-daemon, pause, partition, flap, disk stall) over a package (VIP + HTTP server) and the key-value store must find no split brain
//! of the package's VIP or process and a linearizable key-value history.
//!
//! Binaries: `CLUSTERD_BIN` / `CLUSTERCTL_BIN`, else `clusterd`/`clusterctl` next to this test's target folder,
//! built with `cargo build -p clusterd -p clusterctl` into the same target folder when missing.
//! Length: `CLUSTERLAB_NEMESIS_SECS` (default 60 s of faults); seed: `CLUSTERLAB_SEED` (default 5).

mod common;

use std::time::Duration;

use cluster_lab::failover_bench::{self, ClusterdVip};
use cluster_lab::lab::{Daemon, Lab, LabGuard, LabSpec};
use cluster_lab::nemesis::{self, FaultKind, NemesisOptions};
use common::{lab_name, require_root};

#[test]
fn nemesis_over_a_package_finds_no_split_brain_and_no_lost_write() {
    if !require_root("nemesis_over_a_package_finds_no_split_brain_and_no_lost_write") {
        return;
    }
    let (clusterd, clusterctl) = common::clusterd_binaries();
    let name = lab_name("nemp");
    let _guard = LabGuard::new(&name);
    let mut lab = Lab::up(&LabSpec {
        daemon: Daemon::Clusterd { clusterd: clusterd.clone(), clusterctl: clusterctl.clone(), watchdog: true },
        watchdog: true,
        // The watchdog supervisor is `clusterlab supervise`, not this test binary.
        tool: Some(common::clusterlab()),
        ..LabSpec::bare(&name, 3)
    })
    .unwrap_or_else(|error| panic!("lab with clusterd and watchdogs: {error}"));
    let package =
        ClusterdVip { clusterd, clusterctl, heartbeat: None, lease: None, vip: "192.0.2.100".parse().unwrap() };
    let seconds: f64 = std::env::var("CLUSTERLAB_NEMESIS_SECS").ok().and_then(|text| text.parse().ok()).unwrap_or(60.0);
    let seed: u64 = std::env::var("CLUSTERLAB_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or(5);
    let options = NemesisOptions {
        seed,
        duration: Duration::from_secs_f64(seconds),
        faults: FaultKind::ALL.to_vec(),
        clients: 3,
        operation_timeout: Duration::from_secs(5),
    };
    let steps = nemesis::schedule(seed, options.duration.as_millis() as u64, &options.faults, &lab.node_names());
    for wanted in &options.faults {
        let prefix = format!("{} ", wanted.action_prefix());
        assert!(
            steps
                .iter()
                .any(|step| step.action.to_string().starts_with(&prefix)
                    && step.at_ms < options.duration.as_millis() as u64),
            "seed {seed} must schedule a {wanted:?}"
        );
    }
    let report = failover_bench::run_package_nemesis(&mut lab, &package, &options, &mut |line| eprintln!("{line}"))
        .unwrap_or_else(|error| panic!("seed {seed}: nemesis run failed: {error}"));
    eprintln!(
        "seed {seed}: {} operations, {} acknowledged, {} unknown, {} keys; package split brain {}, uncertain {}",
        report.kv.operations,
        report.kv.acknowledged,
        report.kv.unknown,
        report.kv.keys,
        report.split_brain.len(),
        report.uncertain.len()
    );
    assert!(report.split_brain.is_empty(), "seed {seed}: split brain of the package: {:?}", report.split_brain);
    assert!(report.kv.passed(), "seed {seed}: not linearizable: {:?}", report.kv.failures);
    assert!(report.running_at_end, "seed {seed}: the package does not run and serve on one node after the heal");
}
