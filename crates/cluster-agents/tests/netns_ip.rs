//! Root test: the `ip` agent on a real kernel, in a private network namespace, seen from a neighbour
//! namespace through a veth pair. Addresses from 192.0.2.0/24 and 2001:db8::/32 only.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cluster_agents::{build_agent, ActionContext, MonitorState, OcfStatus};
use cluster_host::fake::FakeHost;
use cluster_host::netns::run_in_netns;
use cluster_host::{Host, LinuxNetwork};
use cluster_package::{IpResource, Monitor, ResourceDef, ResourceKind};
use common::{require_root, Segment};

fn vip(address: &str, prefix_len: u8) -> ResourceDef {
    ResourceDef {
        name: "vip".to_string(),
        start_timeout: Duration::from_secs(20),
        stop_timeout: Duration::from_secs(20),
        monitor: Monitor { interval: Duration::from_secs(10), timeout: Duration::from_secs(20), depth: 0 },
        kind: ResourceKind::Ip(IpResource {
            address: address.parse().expect("address"),
            prefix_len,
            interface: "eth0".to_string(),
            check_duplicate: true,
            probe_timeout: Duration::from_millis(500),
            announce_count: 3,
            announce_interval: Duration::from_millis(100),
        }),
    }
}

/// Real network, fakes for the rest (this test touches only the network).
fn host() -> Host {
    let mut host = FakeHost::new().host();
    host.network = Arc::new(LinuxNetwork::new());
    host
}

fn context() -> ActionContext {
    ActionContext::new("web", 1, Duration::from_secs(20))
}

fn neighbour_entry(segment: &Segment, address: &str) -> String {
    segment.neighbour.exec(&["ip", "neigh", "show", address, "dev", "eth0"])
}

#[test]
fn ipv4_vip_answers_after_start_and_not_after_stop_and_updates_the_neighbours_arp_cache() {
    if !require_root("ipv4 vip in a network namespace") {
        return;
    }
    let segment = Arc::new(Segment::new());
    let node_mac = segment.mac_of_node();
    // The neighbour has a stale entry for the VIP pointing at a former owner.
    segment.neighbour.exec(&[
        "ip",
        "neigh",
        "replace",
        "192.0.2.100",
        "lladdr",
        "02:00:00:00:99:99",
        "dev",
        "eth0",
        "nud",
        "stale",
    ]);
    let inside = segment.clone();
    run_in_netns(&segment.node.path(), move || async move {
        let segment = inside;
        let agent = build_agent(&vip("192.0.2.100", 24), &host());
        assert_eq!(agent.monitor(&context()).await, Ok(MonitorState::NotRunning));
        agent.start(&context()).await.expect("start");
        // The first gratuitous ARP is sent before start returns.
        let entry = neighbour_entry(&segment, "192.0.2.100");
        assert!(
            entry.contains(&node_mac),
            "neighbour cache not updated by gratuitous arp: {entry:?}, node mac {node_mac}"
        );
        assert!(
            segment.neighbour.try_exec(&["ping", "-c", "1", "-W", "2", "192.0.2.100"]),
            "vip does not answer after start"
        );
        assert_eq!(agent.monitor(&context()).await, Ok(MonitorState::Running));
        agent.start(&context()).await.expect("second start is a no-op");

        agent.stop(&context()).await.expect("stop");
        assert_eq!(agent.monitor(&context()).await, Ok(MonitorState::NotRunning));
        let addresses = segment.node.exec(&["ip", "-4", "addr", "show", "dev", "eth0"]);
        assert!(!addresses.contains("192.0.2.100"), "{addresses}");
        assert!(addresses.contains("192.0.2.1/24"), "stop removed only the vip: {addresses}");
        segment.neighbour.exec(&["ip", "neigh", "flush", "dev", "eth0"]);
        assert!(
            !segment.neighbour.try_exec(&["ping", "-c", "1", "-W", "1", "192.0.2.100"]),
            "vip still answers after stop"
        );
        agent.stop(&context()).await.expect("second stop is a no-op");
    })
    .expect("run in namespace");
}

#[test]
fn ipv4_duplicate_on_the_segment_makes_start_fail() {
    if !require_root("ipv4 duplicate detection") {
        return;
    }
    let segment = Arc::new(Segment::new());
    segment.neighbour.exec(&["ip", "addr", "add", "192.0.2.100/24", "dev", "eth0"]);
    let neighbour_mac = segment.neighbour.exec(&["cat", "/sys/class/net/eth0/address"]).trim().to_string();
    let inside = segment.clone();
    run_in_netns(&segment.node.path(), move || async move {
        let segment = inside;
        let agent = build_agent(&vip("192.0.2.100", 24), &host());
        let error = agent.start(&context()).await.expect_err("duplicate must fail");
        assert_eq!(error.status, OcfStatus::ErrGeneric);
        assert_eq!(error.message, format!("duplicate address 192.0.2.100 on eth0: answered by {neighbour_mac}"));
        let addresses = segment.node.exec(&["ip", "-4", "addr", "show", "dev", "eth0"]);
        assert!(!addresses.contains("192.0.2.100"), "{addresses}");
        assert_eq!(agent.monitor(&context()).await, Ok(MonitorState::NotRunning));
    })
    .expect("run in namespace");
}

#[test]
fn ipv6_vip_passes_dad_answers_and_announces_then_a_duplicate_fails_dad() {
    if !require_root("ipv6 vip in a network namespace") {
        return;
    }
    let segment = Arc::new(Segment::new());
    let node_mac = segment.mac_of_node();
    segment.neighbour.exec(&[
        "ip",
        "neigh",
        "replace",
        "2001:db8::100",
        "lladdr",
        "02:00:00:00:99:98",
        "dev",
        "eth0",
        "nud",
        "stale",
    ]);
    segment.neighbour.exec(&["ip", "addr", "add", "2001:db8::200/64", "dev", "eth0", "nodad"]);
    let inside = segment.clone();
    run_in_netns(&segment.node.path(), move || async move {
        let segment = inside;
        let agent = build_agent(&vip("2001:db8::100", 64), &host());
        agent.start(&context()).await.expect("start");
        let entry = neighbour_entry(&segment, "2001:db8::100");
        assert!(
            entry.contains(&node_mac),
            "neighbour cache not updated by unsolicited na: {entry:?}, node mac {node_mac}"
        );
        assert!(
            segment.neighbour.try_exec(&["ping", "-6", "-c", "1", "-W", "2", "2001:db8::100"]),
            "ipv6 vip does not answer"
        );
        assert_eq!(agent.monitor(&context()).await, Ok(MonitorState::Running));
        agent.stop(&context()).await.expect("stop");
        assert_eq!(agent.monitor(&context()).await, Ok(MonitorState::NotRunning));

        // Without the duplicate check the address is added with IFA_F_NODAD: usable at once.
        let mut no_dad = vip("2001:db8::300", 64);
        if let ResourceKind::Ip(params) = &mut no_dad.kind {
            params.check_duplicate = false;
        }
        let no_dad = build_agent(&no_dad, &host());
        no_dad.start(&context()).await.expect("start without dad");
        let addresses = segment.node.exec(&["ip", "-6", "addr", "show", "dev", "eth0"]);
        let line = addresses.lines().find(|line| line.contains("2001:db8::300/64")).unwrap_or_default();
        assert!(line.contains("nodad") && !line.contains("tentative"), "{addresses}");
        assert!(segment.neighbour.try_exec(&["ping", "-6", "-c", "1", "-W", "2", "2001:db8::300"]));
        no_dad.stop(&context()).await.expect("stop");

        let duplicate = build_agent(&vip("2001:db8::200", 64), &host());
        let error = duplicate.start(&context()).await.expect_err("dad must fail");
        assert_eq!(error.status, OcfStatus::ErrGeneric);
        assert!(error.message.starts_with("duplicate address 2001:db8::200 on eth0"), "{error}");
        let addresses = segment.node.exec(&["ip", "-6", "addr", "show", "dev", "eth0"]);
        assert!(!addresses.contains("2001:db8::200"), "failed address left behind: {addresses}");
    })
    .expect("run in namespace");
}
