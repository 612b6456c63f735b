//! Root lab tests of issue 14, items 1 and 2, watched from outside by the observer: the death of the
//! Raft leader stops no package on a live node (keep renewals, docs/safety.md "Leases that survive a
//! leader's loss"), and a crash of clusterd restarted as systemd does adopts what runs, with the
//! watchdog armed at the default settings (the restored lease).
//!
//! `CLUSTERLAB_LEADER_LOSS_TRIALS=N` sets the leader deaths per timing (default 3; the issue's
//! acceptance run is `CLUSTERLAB_LEADER_LOSS_TRIALS=20 cargo nextest run -p cluster-lab --test
//! leader_loss`, docs/benchmarks-failover.md).

mod common;

use std::time::{Duration, Instant};

use cluster_lab::history::{Kind, Record};
use common::package_lab::*;
use common::require_root;
use serde_json::Value;

/// The node the package runs on and every query goes through: never faulted here.
const OWNER: &str = "n1";

fn trials() -> usize {
    std::env::var("CLUSTERLAB_LEADER_LOSS_TRIALS").ok().and_then(|value| value.parse().ok()).unwrap_or(3)
}

fn status(fixture: &Fixture) -> Option<Value> {
    let text = fixture.lab.clusterctl(OWNER, &["status", "--output", "json"]).ok()?;
    serde_json::from_str(&text).ok()
}

fn leader(fixture: &Fixture) -> Option<String> {
    status(fixture)?["leader"].as_str().map(str::to_owned)
}

/// (owner, phase, epoch) of the package, asked through the owner.
fn package_on_owner(fixture: &Fixture) -> Option<(String, String, u64)> {
    let text = fixture.lab.clusterctl(OWNER, &["pkg", "status", PACKAGE, "--output", "json"]).ok()?;
    let package: Value = serde_json::from_str(&text).ok()?;
    Some((package["owner"].as_str()?.to_owned(), package["phase"].as_str()?.to_owned(), package["epoch"].as_u64()?))
}

/// Samples where `node` did not hold the VIP after `after_ns`, by the observer.
fn vip_gaps(records: &[Record], node: &str, after_ns: u64) -> usize {
    records
        .iter()
        .filter(|record| record.kind == Kind::Vip && record.node == node && !record.active && record.t_ns > after_ns)
        .count()
}

/// Waits until a leader other than `dead` leads, every node but `dead` listed; returns it.
fn wait_new_leader(fixture: &Fixture, dead: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(leader) = leader(fixture).filter(|leader| leader != dead) {
            return leader;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fixture.dump();
    panic!("[{}] no new leader after the death of {dead}", fixture.name)
}

/// Kills the Raft leader `trials` times (never the package's owner) and checks after each death that
/// the package kept its process, its epoch and its owner; finally that the observer never saw the VIP
/// leave the owner.
fn leader_deaths_leave_the_package_alone(tag: &str, timings: Option<(&str, &str)>) {
    let mut fixture = Fixture::new(tag, false, PackageOptions::default());
    let lease = match timings {
        Some((_, lease)) => Duration::from_millis(lease.trim_end_matches("ms").parse().expect("lease in ms")),
        None => Duration::from_secs(1),
    };
    if let Some((heartbeat, lease)) = timings {
        fixture.ctl(VIA, &["cluster", "set", "heartbeat", heartbeat]);
        fixture.ctl(VIA, &["cluster", "set", "lease", lease]);
    }
    let before = fixture.run_on_n1();
    let epoch = before["epoch"].as_u64().unwrap();
    let pids = fixture.process_pids(OWNER);
    assert_eq!(pids.len(), 1, "one server process on {OWNER}: {pids:?}");
    let first_fault_ns = now_ns();
    for trial in 1..=trials() {
        let mut leader = leader(&fixture).expect("a leader");
        if leader == OWNER {
            fixture.lead_from("n2");
            leader = "n2".to_owned();
        }
        let killed_at = Instant::now();
        fixture.lab.kill(&leader).unwrap();
        let new_leader = wait_new_leader(&fixture, &leader);
        let elected_after = killed_at.elapsed();
        // Past the lease (and the stop budget) of every lease the dead leader granted.
        std::thread::sleep(Duration::from_secs(2));
        let now = package_on_owner(&fixture);
        let now_pids = fixture.process_pids(OWNER);
        eprintln!(
            "[{}] trial {trial}: {leader} killed, {new_leader} leads after {elected_after:?}; package {now:?}, pids {now_pids:?}",
            fixture.name
        );
        if now != Some((OWNER.to_owned(), "running".to_owned(), epoch)) || now_pids != pids {
            fixture.dump();
        }
        assert_eq!(now, Some((OWNER.to_owned(), "running".to_owned(), epoch)), "trial {trial}: owner, phase, epoch");
        assert_eq!(now_pids, pids, "trial {trial}: the package's process was restarted");
        fixture.lab.start(&leader).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while status(&fixture).is_none_or(|status| {
            status["nodes"].as_array().is_none_or(|nodes| nodes.iter().any(|node| node["lease"] != "alive"))
        }) {
            assert!(Instant::now() < deadline, "[{}] {leader} did not come back", fixture.name);
            std::thread::sleep(Duration::from_millis(100));
        }
        // A voter powered on again has lost its runtime folder (tmpfs), so it refuses every keep for
        // one wait (it may have promised refusals it no longer knows: docs/safety.md). Killing the
        // next leader inside that wait would be two faults at once: let it pass first.
        std::thread::sleep(lease * 3 / 2);
    }
    let records = fixture.finish_without_split_brain();
    assert_eq!(vip_gaps(&records, OWNER, first_fault_ns), 0, "the observer saw the VIP leave {OWNER}");
}

#[test]
fn leader_deaths_stop_no_package_on_a_live_node_at_default_timings() {
    if !require_root("leader_deaths_stop_no_package_on_a_live_node_at_default_timings") {
        return;
    }
    leader_deaths_leave_the_package_alone("llossd", None);
}

#[test]
fn leader_deaths_stop_no_package_on_a_live_node_at_50ms_300ms() {
    if !require_root("leader_deaths_stop_no_package_on_a_live_node_at_50ms_300ms") {
        return;
    }
    leader_deaths_leave_the_package_alone("lloss50", Some(("50ms", "300ms")));
}

/// SIGKILL of clusterd on the owner (also the Raft leader in the second round), then clusterd
/// started again 100 ms later (the unit's `RestartSec=100ms`), with the watchdog armed at the
/// default settings (stop budget 500 ms): no reset, the same process, the same epoch.
#[test]
fn a_crashed_daemon_restarted_by_systemd_adopts_its_package_without_a_watchdog_reset() {
    if !require_root("a_crashed_daemon_restarted_by_systemd_adopts_its_package_without_a_watchdog_reset") {
        return;
    }
    let mut fixture = Fixture::new("lladopt", true, PackageOptions::default());
    let before = fixture.run_on_n1();
    let epoch = before["epoch"].as_u64().unwrap();
    let pids = fixture.process_pids(OWNER);
    let first_fault_ns = now_ns();
    for (round, leading) in [(1, false), (2, true)] {
        if leading {
            fixture.lead_from(OWNER);
            // A transfer stalls grants until the new leader confirms its own term (the old one
            // holds its heartbeats so that the target can win); a crash within that moment leaves
            // the restarted daemon less than its stop budget and a restart, and the watchdog resets
            // the node (the safe outcome, CI saw it once). Here the crash hits a settled leader.
            std::thread::sleep(Duration::from_secs(1));
        }
        let crashed_ns = now_ns();
        fixture.lab.kill_daemon(OWNER).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        if let Err(err) = fixture.lab.start_daemon(OWNER) {
            fixture.dump();
            panic!("[{}] round {round}: clusterd did not start again on {OWNER}: {err}", fixture.name);
        }
        std::thread::sleep(Duration::from_secs(3));
        let now = fixture.package(VIA).map(|package| {
            (
                package["owner"].as_str().map(str::to_owned),
                package["phase"].as_str().map(str::to_owned),
                package["epoch"].as_u64(),
            )
        });
        eprintln!("[{}] round {round} (leader: {leading}): package {now:?}", fixture.name);
        let reset = fault_recorded(&fixture.lab, "watchdog-reset", OWNER, crashed_ns);
        if reset || fixture.process_pids(OWNER) != pids {
            fixture.dump();
        }
        assert!(!reset, "round {round}: {OWNER} was reset by its watchdog");
        assert_eq!(fixture.process_pids(OWNER), pids, "round {round}: the package's process was restarted");
        assert_eq!(now, Some((Some(OWNER.into()), Some("running".into()), Some(epoch))), "round {round}");
    }
    let records = fixture.finish_without_split_brain();
    assert_eq!(vip_gaps(&records, OWNER, first_fault_ns), 0, "the observer saw the VIP leave {OWNER}");
}
