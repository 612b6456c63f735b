//! Root lab tests of failover (issue 5): a 3-node `clusterd` lab runs a package of a VIP, a filesystem on the
//! shared LUN and a process, watched from outside by the observer and judged by the split-brain checker, under
//! kill, partition, pause, daemon crashes, a failing process, planned moves, standby, failback and failed stops.
//!
//! Binaries: `CLUSTERD_BIN` / `CLUSTERCTL_BIN`, else `clusterd`/`clusterctl` next to this test's target folder
//! (built with `cargo build -p clusterd -p clusterctl` into the same target folder when missing).
//! Every test has its own lab (tests run in parallel) and takes it down also when it fails (`LabGuard`).

mod common;

use std::time::{Duration, Instant};

use cluster_lab::history::{self, Kind, Record};
use cluster_lab::lab::Lab;
use common::package_lab::*;
use common::require_root;
use serde_json::Value;

#[test]
fn killed_owner_fails_over_to_the_next_node_and_the_client_reaches_the_vip() {
    if !require_root("killed_owner_fails_over_to_the_next_node_and_the_client_reaches_the_vip") {
        return;
    }
    let mut fixture = Fixture::new("fokill", false, PackageOptions::default());
    let before = fixture.run_on_n1();
    let fault_ns = now_ns();
    fixture.lab.kill("n1").unwrap();
    let after = fixture.wait_running_on("n2", Duration::from_secs(20));
    assert!(after["epoch"].as_u64() > before["epoch"].as_u64(), "a new owner means a new epoch: {after}");
    let records = fixture.finish_without_split_brain();
    let end_ns = records.last().map_or(now_ns(), |record| record.t_ns);
    fixture.print_timing(&records, end_ns, fault_ns, "kill n1");
}

/// The owner is also the Raft leader: one election, then the new leader waits one lease from the
/// old leader's last acknowledged round (not from its own election) and relocates the package.
#[test]
fn killed_owner_that_leads_raft_fails_over_after_a_new_election() {
    if !require_root("killed_owner_that_leads_raft_fails_over_after_a_new_election") {
        return;
    }
    let mut fixture = Fixture::new("folead", false, PackageOptions::default());
    let before = fixture.run_on_n1();
    fixture.lead_from_via("n1");
    let status = fixture.ctl_json(VIA, &["status"]);
    assert_eq!(status["leader"], "n1", "the test needs n1 to lead: {status}");
    let fault_ns = now_ns();
    fixture.lab.kill("n1").unwrap();
    let after = fixture.wait_running_on("n2", Duration::from_secs(20));
    assert!(after["epoch"].as_u64() > before["epoch"].as_u64(), "a new owner means a new epoch: {after}");
    let status = fixture.ctl_json(VIA, &["status"]);
    assert!(status["leader"] == "n2" || status["leader"] == "n3", "a survivor leads: {status}");
    let records = fixture.finish_without_split_brain();
    let end_ns = records.last().map_or(now_ns(), |record| record.t_ns);
    fixture.print_timing(&records, end_ns, fault_ns, "kill n1 (owner and Raft leader)");
}

#[test]
fn partitioned_owner_stops_its_package_before_the_majority_starts_it() {
    if !require_root("partitioned_owner_stops_its_package_before_the_majority_starts_it") {
        return;
    }
    let mut fixture = Fixture::new("fopart", false, PackageOptions::default());
    fixture.run_on_n1();
    let fault_ns = now_ns();
    fixture.lab.partition(&"n1 / n2,n3".parse().unwrap()).unwrap();
    fixture.wait_running_on("n2", Duration::from_secs(20));
    let records = fixture.finish_without_split_brain();
    // n1 stopped by itself (it is still powered and its clusterd runs): its VIP interval ended. Its last sample
    // that saw the VIP (`prev_t_ns` of the first sample without it) precedes n2's first sample with it.
    let n1_vip_end = records
        .iter()
        .filter(|record| record.kind == Kind::Vip && record.node == "n1" && !record.active && record.t_ns > fault_ns)
        .map(|record| record.prev_t_ns)
        .min()
        .expect("n1 removed the VIP after the partition");
    let n2_vip_start = records
        .iter()
        .filter(|record| record.kind == Kind::Vip && record.node == "n2" && record.active && record.t_ns > fault_ns)
        .map(|record| record.t_ns)
        .min()
        .expect("n2 added the VIP after the partition");
    assert!(n1_vip_end <= n2_vip_start, "n1 stopped at {n1_vip_end} ns, n2 started at {n2_vip_start} ns");
    eprintln!(
        "[{}] n1 stopped {:.0} ms after the partition, n2 started {:.0} ms after it",
        fixture.name,
        (n1_vip_end - fault_ns) as f64 / 1e6,
        (n2_vip_start - fault_ns) as f64 / 1e6
    );
    let end_ns = records.last().map_or(now_ns(), |record| record.t_ns);
    fixture.print_timing(&records, end_ns, fault_ns, "partition n1 / n2,n3");
}

#[test]
fn paused_owner_is_reset_by_its_watchdog_without_overlap() {
    if !require_root("paused_owner_is_reset_by_its_watchdog_without_overlap") {
        return;
    }
    let mut fixture = Fixture::new("fowdpa", true, PackageOptions::default());
    fixture.run_on_n1();
    let status = fixture.lab.cluster_status(VIA).unwrap();
    let n1 = status["nodes"].as_array().unwrap().iter().find(|node| node["name"] == "n1").cloned();
    assert_eq!(n1.as_ref().map(|node| node["protection"].clone()), Some(Value::from("watchdog")), "{status:#}");
    let fault_ns = now_ns();
    // Longer than the lease (1 s): the watchdog (armed with the stop budget) must fire long before the end.
    fixture.lab.pause("n1").unwrap();
    fixture.wait_running_on("n2", Duration::from_secs(20));
    assert!(
        wait_until(Duration::from_secs(3), || fault_recorded(&fixture.lab, "watchdog-reset", "n1", fault_ns)),
        "the watchdog of n1 reset it"
    );
    let records = fixture.finish_without_split_brain();
    let end_ns = records.last().map_or(now_ns(), |record| record.t_ns);
    fixture.print_timing(&records, end_ns, fault_ns, "pause of n1's clusterd (watchdog)");
}

#[test]
fn restarted_daemon_adopts_its_running_package_without_restarting_it() {
    if !require_root("restarted_daemon_adopts_its_running_package_without_restarting_it") {
        return;
    }
    let mut fixture = Fixture::new("foadopt", false, PackageOptions::default());
    // Lease-only: the package's resources stay up while clusterd is down, so the restart must be back before the
    // lease ends (otherwise this is the pause case). On a loaded 2-core machine a restart up to READY=1 takes
    // more than the default 1 s lease; 4 s keeps the test about adoption.
    fixture.ctl(VIA, &["cluster", "set", "lease", "4s"]);
    let before = fixture.run_on_n1();
    let pids_before = fixture.process_pids("n1");
    assert_eq!(pids_before.len(), 1, "one server process on n1: {pids_before:?}");
    let restarted_ns = now_ns();
    fixture.lab.kill_daemon("n1").unwrap();
    let restart = Instant::now();
    fixture.lab.start_daemon("n1").unwrap();
    eprintln!("[{}] clusterd on n1 restarted (READY=1) after {:?}", fixture.name, restart.elapsed());
    let log = fixture.lab.paths().node_run_dir("n1").join("clusterd.log");
    let adopted = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).map(|text| text.matches("adopted: every resource").count() >= 1).unwrap_or(false)
    });
    assert!(adopted, "the restarted clusterd adopted the package (see {})", log.display());
    // Let a few monitor rounds and controller ticks pass: nothing may restart or move it.
    std::thread::sleep(Duration::from_secs(3));
    let after = fixture.wait_running_on("n1", Duration::from_secs(5));
    let pids_after = fixture.process_pids("n1");
    if after["epoch"] != before["epoch"] || pids_after != pids_before {
        fixture.dump();
    }
    assert_eq!(after["epoch"], before["epoch"], "same epoch: {after:#}");
    assert_eq!(pids_after, pids_before, "the same server process");
    let records = fixture.finish_without_split_brain();
    let interrupted: Vec<&Record> = records
        .iter()
        .filter(|record| record.t_ns >= restarted_ns && record.kind != Kind::Fault && record.kind != Kind::Client)
        .filter(|record| !record.active)
        .collect();
    assert!(interrupted.is_empty(), "no resource went down during the daemon restart: {interrupted:#?}");
}

#[test]
fn killed_daemon_without_restart_is_reset_by_the_watchdog_then_fails_over() {
    if !require_root("killed_daemon_without_restart_is_reset_by_the_watchdog_then_fails_over") {
        return;
    }
    let mut fixture = Fixture::new("fowdkl", true, PackageOptions::default());
    fixture.run_on_n1();
    let fault_ns = now_ns();
    fixture.lab.kill_daemon("n1").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || fault_recorded(&fixture.lab, "watchdog-reset", "n1", fault_ns)),
        "the watchdog of n1 reset it"
    );
    let reset_ns = history::parse_jsonl(&std::fs::read_to_string(fixture.lab.paths().fault_log()).unwrap())
        .iter()
        .find(|record| record.resource == "watchdog-reset" && record.node == "n1" && record.t_ns >= fault_ns)
        .map(|record| record.t_ns)
        .unwrap();
    fixture.wait_running_on("n2", Duration::from_secs(20));
    let records = fixture.finish_without_split_brain();
    let n2_start = records
        .iter()
        .filter(|record| record.kind == Kind::Vip && record.node == "n2" && record.active)
        .map(|record| record.t_ns)
        .min()
        .unwrap();
    assert!(reset_ns < n2_start, "reset first ({reset_ns}), then n2 started ({n2_start})");
    eprintln!(
        "[{}] watchdog reset {:.0} ms after kill-daemon, n2 started {:.0} ms after it",
        fixture.name,
        (reset_ns - fault_ns) as f64 / 1e6,
        (n2_start - fault_ns) as f64 / 1e6
    );
}

#[test]
fn paused_owner_in_lease_only_mode_is_warned_about_and_overlaps() {
    if !require_root("paused_owner_in_lease_only_mode_is_warned_about_and_overlaps") {
        return;
    }
    let options = PackageOptions { check_duplicate: false, ..PackageOptions::default() };
    let mut fixture = Fixture::new("folopa", false, options);
    let status = fixture.lab.cluster_status(VIA).unwrap();
    let warnings: Vec<String> =
        status["warnings"].as_array().unwrap().iter().filter_map(|w| w.as_str().map(String::from)).collect();
    assert!(
        warnings.iter().any(|warning| warning.contains("n1") && warning.contains("lease-only")),
        "status warns about lease-only mode: {warnings:#?}"
    );
    let text = fixture.ctl(VIA, &["status"]);
    assert!(text.contains("lease-only"), "the text status warns too:\n{text}");
    fixture.run_on_n1();
    let fault_ns = now_ns();
    fixture.lab.pause("n1").unwrap();
    // The documented limitation: the paused n1 keeps everything while n2 takes the package over.
    fixture.wait_package("running on n2", Duration::from_secs(20), |package| {
        package["owner"] == "n2" && package["phase"] == "running"
    });
    assert!(fixture.observer().wait_for(Duration::from_secs(5), |observer| {
        let holders = observer.holders(Kind::Vip, VIP);
        holders.contains(&"n1".to_string()) && holders.contains(&"n2".to_string())
    }));
    std::thread::sleep(Duration::from_millis(500));
    fixture.lab.resume("n1").unwrap();
    // Once it runs again, n1 sees its lease is over and stops its copy.
    fixture.wait_running_on("n2", Duration::from_secs(20));
    let (records, end_ns, report) = fixture.finish();
    // FIXME(lease-only): S1 does not hold for a paused clusterd without watchdog or fencing (docs/safety.md (d)).
    // This asserts the limitation as it is, so that a change in it is noticed.
    assert!(!report.passed(), "the checker reports the overlap of a paused lease-only owner");
    let vip_overlap = report
        .violations
        .iter()
        .find(|overlap| overlap.kind == Kind::Vip)
        .expect("the VIP was active on two nodes at once");
    eprintln!(
        "[{}] lease-only pause: VIP active on {:?} at once for {:.0} ms (documented limitation)",
        fixture.name,
        vip_overlap.nodes,
        vip_overlap.millis()
    );
    fixture.print_timing(&records, end_ns, fault_ns, "pause of n1's clusterd (lease-only)");
}

#[test]
fn failing_process_restarts_locally_then_relocates() {
    if !require_root("failing_process_restarts_locally_then_relocates") {
        return;
    }
    let options = PackageOptions { restart_max: 2, ..PackageOptions::default() };
    let mut fixture = Fixture::new("foproc", false, options);
    fixture.run_on_n1();
    for round in 1..=3 {
        let pids = fixture.process_pids("n1");
        assert_eq!(pids.len(), 1, "round {round}: one server process on n1: {pids:?}");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
        if round < 3 {
            // Within the budget: restarted on n1, by a new process.
            let package = fixture.wait_package(&format!("local restart {round}"), Duration::from_secs(20), |package| {
                package["restarts"].as_u64() == Some(round) && package["phase"] == "running"
            });
            assert_eq!(package["owner"], "n1");
            fixture.wait_running_on("n1", Duration::from_secs(10));
            assert_ne!(fixture.process_pids("n1"), pids, "round {round}: a new process");
        }
    }
    let package = fixture.wait_running_on("n2", Duration::from_secs(20));
    let banned: Vec<&str> = package["banned"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(banned, ["n1"], "n1 is excluded until pkg cleanup: {package:#}");
    let events = fixture.events();
    assert!(events.contains("local restart 2") && events.contains("restart budget exhausted"), "{events}");
    fixture.finish_without_split_brain();
}

#[test]
fn move_stop_standby_and_manual_failback() {
    if !require_root("move_stop_standby_and_manual_failback") {
        return;
    }
    let mut fixture = Fixture::new("fomove", false, PackageOptions::default());
    fixture.run_on_n1();
    let moved = Instant::now();
    fixture.ctl(VIA, &["pkg", "move", PACKAGE, "--to", "n2"]);
    fixture.wait_running_on("n2", Duration::from_secs(20));
    eprintln!("[{}] pkg move to n2 done (seen from outside) after {:?}", fixture.name, moved.elapsed());

    fixture.ctl(VIA, &["pkg", "stop", PACKAGE]);
    fixture.wait_package("stopped", Duration::from_secs(20), |package| {
        package["phase"] == "stopped" && package["owner"].is_null()
    });
    fixture.wait_nothing_active(Duration::from_secs(5));

    // The move left no constraint behind: a new run goes to the preferred node.
    fixture.run_on_n1();
    fixture.ctl(VIA, &["node", "standby", "n1"]);
    fixture.wait_running_on("n2", Duration::from_secs(20));
    fixture.ctl(VIA, &["node", "online", "n1"]);
    // failback = "manual": it stays on n2.
    std::thread::sleep(Duration::from_secs(3));
    fixture.wait_running_on("n2", Duration::from_secs(2));
    fixture.finish_without_split_brain();
}

#[test]
fn auto_failback_returns_to_the_preferred_node() {
    if !require_root("auto_failback_returns_to_the_preferred_node") {
        return;
    }
    let options = PackageOptions { failback: "auto", ..PackageOptions::default() };
    let mut fixture = Fixture::new("foback", false, options);
    fixture.run_on_n1();
    fixture.ctl(VIA, &["node", "standby", "n1"]);
    fixture.wait_running_on("n2", Duration::from_secs(20));
    fixture.ctl(VIA, &["node", "online", "n1"]);
    fixture.wait_running_on("n1", Duration::from_secs(20));
    fixture.finish_without_split_brain();
}

/// Holds the package's filesystem busy on `node` (a process with its working directory there).
fn hold_filesystem(fixture: &Fixture, node: &str) -> std::process::Child {
    let script = format!("cd {} && exec sleep 600", fixture.mountpoint.display());
    let argv: Vec<String> = vec!["sh".into(), "-c".into(), script];
    let child = fixture.lab.node_command(node, &argv).unwrap().spawn().unwrap();
    let cwd_inside = wait_until(Duration::from_secs(5), || {
        std::fs::read_link(format!("/proc/{}/cwd", child.id())).is_ok_and(|cwd| cwd == fixture.mountpoint)
    });
    assert!(cwd_inside, "the holder runs inside the mount");
    child
}

#[test]
fn failed_stop_with_fencing_fences_the_node_then_relocates() {
    if !require_root("failed_stop_with_fencing_fences_the_node_then_relocates") {
        return;
    }
    let options = PackageOptions { kill_holders: false, ..PackageOptions::default() };
    let mut fixture = Fixture::new("fofence", false, options);
    let wrapper = fence_wrapper(&fixture).display().to_string();
    let lab_param = format!("lab={}", fixture.name);
    fixture.ctl(VIA, &["cluster", "fence", "set", "n1", &wrapper, &lab_param]);
    fixture.run_on_n1();
    let mut holder = hold_filesystem(&fixture, "n1");
    let fault_ns = now_ns();
    fixture.ctl(VIA, &["pkg", "move", PACKAGE, "--to", "n2"]);
    fixture.wait_running_on("n2", Duration::from_secs(30));
    let _ = holder.wait();
    let lab = Lab::open(&fixture.name).unwrap();
    assert!(!lab.node("n1").unwrap().powered, "n1 was powered off by the fence agent");
    let events = fixture.events();
    assert!(events.contains("fenced"), "the events record the fence:\n{events}");
    let records = fixture.finish_without_split_brain();
    let end_ns = records.last().map_or(now_ns(), |record| record.t_ns);
    fixture.print_timing(&records, end_ns, fault_ns, "move with a failing stop (fenced)");
}

#[test]
fn failed_stop_without_fencing_blocks_until_cleanup() {
    if !require_root("failed_stop_without_fencing_blocks_until_cleanup") {
        return;
    }
    let options = PackageOptions { kill_holders: false, ..PackageOptions::default() };
    let mut fixture = Fixture::new("foblock", false, options);
    fixture.run_on_n1();
    let mut holder = hold_filesystem(&fixture, "n1");
    fixture.ctl(VIA, &["pkg", "move", PACKAGE, "--to", "n2"]);
    let package = fixture.wait_package("blocked", Duration::from_secs(20), |package| package["phase"] == "blocked");
    assert_eq!(package["owner"], "n1");
    let reason = package["blocked_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("clusterctl pkg cleanup web"), "the reason says how to resolve it: {reason}");
    let status = fixture.ctl(VIA, &["status"]);
    assert!(
        status.contains("BLOCKED") && status.contains("clusterctl pkg cleanup web"),
        "status says it loudly:\n{status}"
    );
    // Never started elsewhere while blocked.
    std::thread::sleep(Duration::from_secs(2));
    let mount = fixture.mountpoint.display().to_string();
    assert_eq!(fixture.observer().holders(Kind::Mount, &mount), ["n1"]);
    assert_eq!(fixture.package(VIA).unwrap()["phase"], "blocked");
    // The operator stops what holds the mount and vouches that n1 runs nothing of the package.
    holder.kill().unwrap();
    let _ = holder.wait();
    fixture.wait_nothing_active(Duration::from_secs(10));
    fixture.ctl(VIA, &["pkg", "cleanup", PACKAGE]);
    fixture.wait_running_on("n2", Duration::from_secs(20));
    fixture.finish_without_split_brain();
}

/// The state of `node` in `clusterctl status --output json` through VIA (`STATE` column: online, standby, leaving,
/// stopped) and its `leaving` flag.
fn node_leaving(fixture: &Fixture, node: &str) -> Option<bool> {
    let status = fixture.lab.cluster_status(VIA).ok()?;
    status["nodes"].as_array()?.iter().find(|entry| entry["name"] == node).and_then(|entry| entry["leaving"].as_bool())
}

/// `systemctl stop clusterd` on the owner, in lease-only mode: before this, the daemon exited and left the package
/// running without a lease, and once that lease expired at the leader a second node started it (the simulation's
/// `a_daemon_that_stops_without_handing_over_breaks_s1_in_lease_only_mode`). Now the daemon hands the package over
/// through the controller and exits only once nothing runs on it.
#[test]
fn stopped_daemon_hands_its_package_over_before_exiting() {
    if !require_root("stopped_daemon_hands_its_package_over_before_exiting") {
        return;
    }
    let mut fixture = Fixture::new("fostop", false, PackageOptions::default());
    let before = fixture.run_on_n1();
    let fault_ns = now_ns();
    let stopping = Instant::now();
    fixture.lab.stop_daemon("n1", Duration::from_secs(60)).unwrap();
    let took = stopping.elapsed();
    // When the daemon has exited, the package already runs elsewhere, and nothing of it is left on n1.
    let package = fixture.package(VIA).expect("package state");
    assert_eq!(package["owner"], "n2", "handed over before the daemon exited: {package:#}");
    assert!(package["epoch"].as_u64() > before["epoch"].as_u64());
    assert!(package["last_failure"].is_null(), "a clean stop is not a failure: {package:#}");
    let mount = fixture.mountpoint.display().to_string();
    for kind in [Kind::Vip, Kind::Mount, Kind::Process] {
        let what = if kind == Kind::Mount {
            mount.as_str()
        } else if kind == Kind::Vip {
            VIP
        } else {
            PROCESS
        };
        assert!(!fixture.observer().holders(kind, what).contains(&"n1".to_string()), "{kind:?} left on n1");
    }
    fixture.wait_running_on("n2", Duration::from_secs(20));
    assert_eq!(node_leaving(&fixture, "n1"), Some(true), "status shows n1's clusterd stopped");
    // Longer than n1's lease: nothing changes when it expires at the leader (before, the package then started twice).
    std::thread::sleep(Duration::from_secs(3));
    fixture.wait_running_on("n2", Duration::from_secs(2));
    // Started again, n1 announces itself and takes packages again (failback manual: this one stays on n2).
    fixture.lab.start_daemon("n1").unwrap();
    assert!(wait_until(Duration::from_secs(10), || node_leaving(&fixture, "n1") == Some(false)), "n1 back online");
    fixture.wait_running_on("n2", Duration::from_secs(2));
    let records = fixture.finish_without_split_brain();
    eprintln!("[{}] clusterd on n1 handed the package over and exited after {took:?}", fixture.name);
    let end_ns = records.last().map_or(now_ns(), |record| record.t_ns);
    fixture.print_timing(&records, end_ns, fault_ns, "systemctl stop of n1's clusterd (lease-only)");
}

/// `systemctl stop clusterd` on an owner that is also the Raft leader and protects itself with a watchdog: the package
/// and the leadership are handed over, the watchdog is disarmed (no reset of the node), no overlap.
#[test]
fn stopped_leader_daemon_hands_over_package_and_leadership_without_a_watchdog_reset() {
    if !require_root("stopped_leader_daemon_hands_over_package_and_leadership_without_a_watchdog_reset") {
        return;
    }
    let mut fixture = Fixture::new("fostopl", true, PackageOptions::default());
    fixture.lead_from_via("n1");
    fixture.run_on_n1();
    assert_eq!(fixture.lab.leader().as_deref(), Some("n1"));
    let fault_ns = now_ns();
    fixture.lab.stop_daemon("n1", Duration::from_secs(60)).unwrap();
    let leader = fixture.lab.leader();
    assert!(leader.as_deref().is_some_and(|leader| leader != "n1"), "leadership handed over: {leader:?}");
    fixture.wait_running_on("n2", Duration::from_secs(20));
    // The watchdog would fire within the stop budget (500 ms) if it had been left armed.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!fault_recorded(&fixture.lab, "watchdog-reset", "n1", fault_ns), "n1 was not reset by its watchdog");
    assert!(Lab::open(&fixture.name).unwrap().node("n1").unwrap().powered, "n1 is still powered");
    fixture.finish_without_split_brain();
}

/// `pkg apply` of a changed definition on a running package: a change of placement only restarts nothing; a changed
/// resource restarts that resource and the ones after it, on the same node and epoch, without counting a failure,
/// and the resources before it (the VIP and the mount) stay up throughout.
#[test]
fn redefined_package_restarts_only_its_changed_resources_in_place() {
    if !require_root("redefined_package_restarts_only_its_changed_resources_in_place") {
        return;
    }
    let mut fixture = Fixture::new("foredef", false, PackageOptions::default());
    let before = fixture.run_on_n1();
    let pids = fixture.process_pids("n1");
    assert_eq!(pids.len(), 1, "{pids:?}");
    let package_file = fixture.lab.paths().run_dir().join("web.toml");
    let original = std::fs::read_to_string(&package_file).unwrap();

    // Placement only (failback): nothing restarts.
    std::fs::write(&package_file, original.replace("failback = \"manual\"", "failback = \"auto\"")).unwrap();
    fixture.ctl(VIA, &["pkg", "apply", &package_file.display().to_string()]);
    std::thread::sleep(Duration::from_secs(2));
    fixture.wait_running_on("n1", Duration::from_secs(5));
    assert_eq!(fixture.process_pids("n1"), pids, "a policy change restarts nothing");
    let events = fixture.events();
    assert!(events.contains("placement or policy only"), "the events record the new definition:\n{events}");

    // The server's monitor interval: the server restarts, the VIP and the mount do not.
    let changed_ns = now_ns();
    let redefined = original.replace("failback = \"manual\"", "failback = \"auto\"").replace(
        "monitor = { interval = \"200ms\", timeout = \"2s\" }",
        "monitor = { interval = \"300ms\", timeout = \"2s\" }",
    );
    assert_ne!(redefined, original.replace("failback = \"manual\"", "failback = \"auto\""));
    std::fs::write(&package_file, &redefined).unwrap();
    fixture.ctl(VIA, &["pkg", "apply", &package_file.display().to_string()]);
    let restarted = wait_until(Duration::from_secs(20), || {
        let now = fixture.process_pids("n1");
        now.len() == 1 && now != pids
    });
    assert!(restarted, "the server restarted with its new definition");
    let after = fixture.wait_running_on("n1", Duration::from_secs(20));
    assert_eq!(after["epoch"], before["epoch"], "same owner, same epoch: {after:#}");
    assert_eq!(after["restarts"], 0, "not a failure: {after:#}");
    assert!(after["last_failure"].is_null(), "not a failure: {after:#}");
    let events = fixture.events();
    assert!(events.contains("restarting resource server"), "the events say what restarts:\n{events}");
    let records = fixture.finish_without_split_brain();
    let mount = fixture.mountpoint.display().to_string();
    let interrupted: Vec<&Record> = records
        .iter()
        .filter(|record| record.t_ns >= changed_ns && !record.active)
        .filter(|record| {
            (record.kind == Kind::Vip && record.resource == VIP)
                || (record.kind == Kind::Mount && record.resource == mount)
        })
        .collect();
    assert!(interrupted.is_empty(), "the VIP and the mount stayed up: {interrupted:#?}");
}
