//! Root test with real `clusterd` nodes: a short nemesis run (kill, pause, partition, disk stall) on the key-value store
//! must find no lost acknowledged write and no stale read (the history is linearizable).
//!
//! Binaries: `CLUSTERD_BIN` / `CLUSTERCTL_BIN`, else `clusterd`/`clusterctl` next to this test's target folder,
//! built with `cargo build -p clusterd -p clusterctl` into the same target folder when missing.
//! Length: `CLUSTERLAB_NEMESIS_SECS` (default 75 s of faults); seed: `CLUSTERLAB_SEED` (default 3).

mod common;

use std::time::Duration;

use cluster_lab::lab::{Daemon, Lab, LabGuard, LabSpec};
use cluster_lab::nemesis::{self, FaultKind, NemesisOptions};
use common::{lab_name, require_root};

#[test]
fn nemesis_with_kill_pause_partition_and_disk_stall_loses_no_acknowledged_write() {
    if !require_root("nemesis_with_kill_pause_partition_and_disk_stall_loses_no_acknowledged_write") {
        return;
    }
    let (clusterd, clusterctl) = common::clusterd_binaries();
    let name = lab_name("nem");
    let _guard = LabGuard::new(&name);
    let mut lab = Lab::up(&LabSpec {
        daemon: Daemon::Clusterd { clusterd, clusterctl, watchdog: false },
        ..LabSpec::bare(&name, 3)
    })
    .unwrap_or_else(|error| panic!("lab with clusterd: {error}"));

    // The store answers from the client namespace before any fault.
    let set = lab
        .remote_clusterctl("192.0.2.12".parse().unwrap(), &["kv", "set", "hello", "world"])
        .unwrap()
        .output()
        .unwrap();
    assert!(set.status.success(), "kv set: {}", String::from_utf8_lossy(&set.stderr));
    let get = lab.remote_clusterctl("192.0.2.13".parse().unwrap(), &["kv", "get", "hello"]).unwrap().output().unwrap();
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim_end(), "world");

    let seconds: f64 = std::env::var("CLUSTERLAB_NEMESIS_SECS").ok().and_then(|text| text.parse().ok()).unwrap_or(75.0);
    let seed: u64 = std::env::var("CLUSTERLAB_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or(3);
    let options = NemesisOptions {
        seed,
        duration: Duration::from_secs_f64(seconds),
        faults: vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Partition, FaultKind::Disk],
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
    let report = nemesis::run_kv_nemesis(&mut lab, &options, &mut |line| eprintln!("{line}")).unwrap();
    eprintln!(
        "seed {seed}: {} operations, {} acknowledged, {} unknown, {} keys",
        report.operations, report.acknowledged, report.unknown, report.keys
    );
    let errors: Vec<&(u64, String, Option<String>)> =
        report.steps.iter().filter(|(_, _, error)| error.is_some()).collect();
    assert!(errors.is_empty(), "faults that could not be injected: {errors:?}");
    assert!(report.acknowledged >= 50, "too few acknowledged operations to judge: {}", report.acknowledged);
    let writes = report
        .history
        .iter()
        .filter(|operation| {
            operation.outcome == cluster_lab::linearizability::Outcome::Ok
                && matches!(operation.call, cluster_lab::linearizability::Call::Set(_))
        })
        .count();
    assert!(writes > 0, "no acknowledged write at all");
    assert!(report.passed(), "seed {seed}: not linearizable: {:?}", report.failures);
}
