//! Root tests of the lab itself: up/down leaves nothing behind (also after a panic or a crashed run),
//! partitions block exactly the chosen traffic, the observer sees changes within one sampling period, the fence
//! agent and the emulated watchdog power nodes off and on.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use cluster_lab::history::Kind;
use cluster_lab::lab::{Lab, LabGuard, LabSpec};
use cluster_lab::observer::{Observer, ObserverSpec};
use common::{in_netns, lab_name, lab_pids, leftovers, require_root};

#[test]
fn up_and_down_leave_nothing_behind() {
    if !require_root("up_and_down_leave_nothing_behind") {
        return;
    }
    let name = lab_name("updown");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::bare(&name, 3);
    spec.lun_mib = 16;
    let lab = Lab::up(&spec).unwrap();
    assert!(lab.lun().is_some());
    let status = lab.status();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    let pids = lab_pids(&name);
    assert!(pids.len() >= 3, "every node has its holder process: {pids:?}");
    assert!(matches!(Lab::up(&spec), Err(cluster_lab::lab::LabError::Exists(_))));
    Lab::down(&name).unwrap();
    assert_eq!(leftovers(&name, &pids), Vec::<String>::new());
    Lab::down(&name).expect("down is safe twice");
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    if !require_root("a_panicking_test_leaves_nothing_behind") {
        return;
    }
    let name = lab_name("panic");
    let inner = name.clone();
    let result = std::panic::catch_unwind(move || {
        let _guard = LabGuard::new(&inner);
        let mut spec = LabSpec::bare(&inner, 2);
        spec.lun_mib = 8;
        Lab::up(&spec).unwrap();
        let pids = lab_pids(&inner);
        std::fs::write("/tmp/clusterlab-panic-pids", format!("{pids:?}")).unwrap();
        panic!("a test failing while its lab is up");
    });
    assert!(result.is_err());
    assert_eq!(leftovers(&name, &[]), Vec::<String>::new());
}

#[test]
fn down_cleans_a_crashed_run_without_its_state() {
    if !require_root("down_cleans_a_crashed_run_without_its_state") {
        return;
    }
    let name = lab_name("crash");
    let _guard = LabGuard::new(&name);
    let status = Command::new(common::clusterlab())
        .args(["--name", &name, "up", "--nodes", "2", "--daemon", "none", "--lun-mib", "8"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pids = lab_pids(&name);
    // A crashed run: its state file is gone or torn.
    let paths = cluster_lab::lab::LabPaths::new(&name).unwrap();
    std::fs::remove_file(paths.run_dir().join("state.json")).unwrap();
    let status = Command::new(common::clusterlab()).args(["--name", &name, "down"]).status().unwrap();
    assert!(status.success());
    assert_eq!(leftovers(&name, &pids), Vec::<String>::new());
}

fn udp_delivered(name: &str, from: &str, to: &str, to_address: Ipv4Addr) -> bool {
    let port = 9999;
    let receiver = in_netns(name, to, move || {
        let socket = UdpSocket::bind(SocketAddr::from((to_address, port))).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let mut buffer = [0u8; 16];
        socket.recv(&mut buffer).is_ok()
    });
    std::thread::sleep(Duration::from_millis(100));
    let sender = in_netns(name, from, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..10 {
            let _ = socket.send_to(b"hello", SocketAddr::from((to_address, port)));
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    sender.join().unwrap();
    receiver.join().unwrap()
}

#[test]
fn partition_blocks_the_chosen_sides_and_nothing_else() {
    if !require_root("partition_blocks_the_chosen_sides_and_nothing_else") {
        return;
    }
    let name = lab_name("part");
    let _guard = LabGuard::new(&name);
    let mut lab = Lab::up(&LabSpec::bare(&name, 3)).unwrap();
    let n1 = Ipv4Addr::new(192, 0, 2, 11);
    let n2 = Ipv4Addr::new(192, 0, 2, 12);
    let n3 = Ipv4Addr::new(192, 0, 2, 13);
    assert!(udp_delivered(&name, "n1", "n2", n2), "before any partition");

    lab.partition(&"n1 / n2".parse().unwrap()).unwrap();
    assert!(!udp_delivered(&name, "n1", "n2", n2), "n1 -> n2 blocked");
    assert!(!udp_delivered(&name, "n2", "n1", n1), "n2 -> n1 blocked");
    assert!(udp_delivered(&name, "n1", "n3", n3), "n1 -> n3 open");
    assert!(udp_delivered(&name, "n3", "n2", n2), "n3 -> n2 open");
    assert!(udp_delivered(&name, "client", "n1", n1), "client -> n1 open");

    lab.partition(&"n1 -> n2".parse().unwrap()).unwrap();
    assert!(!udp_delivered(&name, "n1", "n2", n2), "one way: n1 -> n2 blocked");
    assert!(udp_delivered(&name, "n2", "n1", n1), "one way: n2 -> n1 open");

    lab.heal().unwrap();
    assert!(udp_delivered(&name, "n1", "n2", n2), "healed");
}

#[test]
fn observer_sees_an_address_mount_and_process_within_one_sampling_period() {
    if !require_root("observer_sees_an_address_mount_and_process_within_one_sampling_period") {
        return;
    }
    let name = lab_name("obs");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::bare(&name, 2);
    spec.lun_mib = 16;
    let lab = Lab::up(&spec).unwrap();
    let interval = Duration::from_millis(10);
    let mountpoint = lab.paths().node_run_dir("n1").join("lun");
    std::fs::create_dir_all(&mountpoint).unwrap();
    let observer = Observer::start(
        &lab,
        ObserverSpec {
            vips: vec!["192.0.2.150".parse().unwrap()],
            mounts: vec![mountpoint.clone()],
            processes: vec!["tail".into()],
            probes: vec!["192.0.2.150:80".parse().unwrap()],
            interval,
            files: Vec::new(),
        },
        None,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(observer.holders(Kind::Vip, "192.0.2.150").is_empty());
    assert!(observer.holders(Kind::Process, "tail").is_empty());
    let tail: Vec<String> = ["tail", "-f", "/dev/null"].iter().map(|arg| arg.to_string()).collect();
    let mut tail = lab.node_command("n1", &tail).unwrap().spawn().unwrap();
    assert!(observer.wait_for(Duration::from_secs(2), |observer| { observer.holders(Kind::Process, "tail") == ["n1"] }));
    tail.kill().unwrap();
    tail.wait().unwrap();
    assert!(
        observer.wait_for(Duration::from_secs(2), |observer| { observer.holders(Kind::Process, "tail").is_empty() })
    );

    let run = |node: &str, argv: &[&str]| {
        let argv: Vec<String> = argv.iter().map(|arg| arg.to_string()).collect();
        let status = lab.node_command(node, &argv).unwrap().status().unwrap();
        assert!(status.success(), "{argv:?} in {node}");
        cluster_lab::sys::now_ns()
    };
    let added_ns = run("n2", &["ip", "addr", "add", "192.0.2.150/24", "dev", "eth0"]);
    // Allowance for the scheduler of a loaded 2-core machine on top of one period.
    let bound = interval + Duration::from_millis(10);
    assert!(
        observer.wait_for(Duration::from_secs(2), |observer| { observer.holders(Kind::Vip, "192.0.2.150") == ["n2"] })
    );
    let seen = observer
        .records()
        .into_iter()
        .find(|record| record.kind == Kind::Vip && record.active && record.node == "n2")
        .unwrap();
    let delay = Duration::from_nanos(seen.t_ns.saturating_sub(added_ns));
    assert!(delay <= bound, "address seen after {delay:?}, more than {bound:?}");
    assert!(observer
        .wait_for(Duration::from_secs(2), |observer| { !observer.holders(Kind::Client, "192.0.2.150:80").is_empty() }));

    // The shared LUN, mounted in n1's mount namespace only.
    let device = lab.lun().unwrap().to_string();
    let mounted_ns = run("n1", &["mount", &device, &mountpoint.display().to_string()]);
    let mount_text = mountpoint.display().to_string();
    assert!(
        observer.wait_for(Duration::from_secs(2), |observer| { observer.holders(Kind::Mount, &mount_text) == ["n1"] })
    );
    let seen = observer.records().into_iter().find(|record| record.kind == Kind::Mount && record.active).unwrap();
    assert!(Duration::from_nanos(seen.t_ns.saturating_sub(mounted_ns)) <= bound);
    assert!(
        !cluster_lab::lab::mounts_under(&mountpoint).contains(&mountpoint),
        "a node's mount does not leak into the host"
    );
    run("n1", &["umount", &mount_text]);
    run("n2", &["ip", "addr", "del", "192.0.2.150/24", "dev", "eth0"]);
    assert!(observer.wait_for(Duration::from_secs(2), |observer| {
        observer.holders(Kind::Vip, "192.0.2.150").is_empty() && observer.holders(Kind::Mount, &mount_text).is_empty()
    }));
    let (records, end_ns) = observer.stop();
    let report = cluster_lab::history::check_split_brain(&records, end_ns);
    assert!(report.passed(), "{report:?}");
}

#[test]
fn kill_takes_every_process_and_address_and_start_brings_the_node_back() {
    if !require_root("kill_takes_every_process_and_address_and_start_brings_the_node_back") {
        return;
    }
    let name = lab_name("kill");
    let _guard = LabGuard::new(&name);
    let mut lab = Lab::up(&LabSpec::bare(&name, 2)).unwrap();
    let argv: Vec<String> = ["sleep", "300"].iter().map(|arg| arg.to_string()).collect();
    let child = lab.node_command("n1", &argv).unwrap().spawn().unwrap();
    let vip: Vec<String> =
        ["ip", "addr", "add", "192.0.2.151/24", "dev", "eth0"].iter().map(|arg| arg.to_string()).collect();
    assert!(lab.node_command("n1", &vip).unwrap().status().unwrap().success());
    lab.kill("n1").unwrap();
    let cgroup = lab.paths().cgroup().join("n1");
    assert_eq!(std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap(), "");
    let mut child = child;
    assert!(child.wait().is_ok());
    let addresses = Command::new("ip")
        .args(["-n", &lab.paths().netns("n1"), "-br", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&addresses.stdout);
    assert!(text.contains("DOWN") && !text.contains("192.0.2."), "{text}");
    lab.start("n1").unwrap();
    assert!(udp_delivered(&name, "n2", "n1", Ipv4Addr::new(192, 0, 2, 11)));
}

#[test]
fn fence_agent_powers_a_node_off_and_on() {
    if !require_root("fence_agent_powers_a_node_off_and_on") {
        return;
    }
    let name = lab_name("fence");
    let _guard = LabGuard::new(&name);
    Lab::up(&LabSpec::bare(&name, 2)).unwrap();
    let agent = |input: &str| {
        let mut child = Command::new(common::clusterlab())
            .arg("fence-agent")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(format!("lab={name}\n{input}").as_bytes()).unwrap();
        child.wait_with_output().unwrap().status.code()
    };
    assert_eq!(agent("action=status\nplug=n2\n"), Some(0));
    assert_eq!(agent("action=off\nplug=n2\n"), Some(0));
    assert_eq!(agent("action=status\nplug=n2\n"), Some(2));
    assert!(lab_pids(&name).len() == 1, "only n1's holder is left");
    assert_eq!(agent("action=on\nport=n2\n"), Some(0));
    assert_eq!(agent("action=status\nplug=n2\n"), Some(0));
    assert_eq!(agent("action=off\nplug=n9\n"), Some(1));
}

#[test]
fn emulated_watchdog_resets_a_node_that_stops_petting() {
    if !require_root("emulated_watchdog_resets_a_node_that_stops_petting") {
        return;
    }
    let name = lab_name("wdog");
    let _guard = LabGuard::new(&name);
    let mut spec = LabSpec::bare(&name, 2);
    spec.watchdog = true;
    spec.tool = Some(common::clusterlab());
    spec.reboot_delay = Duration::from_millis(500);
    let lab = Lab::up(&spec).unwrap();
    let holder_before = lab.node("n1").unwrap().holder_pid.unwrap();
    let socket = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let path = lab.paths().watchdog_socket("n1");
    socket.send_to(b"arm 300", &path).unwrap();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        socket.send_to(b"pet", &path).unwrap();
    }
    let mut reloaded = Lab::open(&name).unwrap();
    assert!(reloaded.node("n1").unwrap().powered, "petted: no reset");
    assert_eq!(reloaded.node("n1").unwrap().holder_pid, Some(holder_before));
    // Stop petting: reset within the timeout plus a tick, then powered on after the reboot delay.
    let stopped = std::time::Instant::now();
    let reset = cluster_lab::sys::now_ns();
    assert!(common_wait(Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{holder_before}")).exists()
    }));
    let reset_after = stopped.elapsed();
    assert!(reset_after < Duration::from_millis(900), "reset after {reset_after:?}");
    assert!(common_wait(Duration::from_secs(10), || {
        reloaded.reload().is_ok()
            && reloaded.node("n1").unwrap().powered
            && reloaded.node("n1").unwrap().holder_pid != Some(holder_before)
    }));
    let faults = std::fs::read_to_string(lab.paths().fault_log()).unwrap();
    let records = cluster_lab::history::parse_jsonl(&faults);
    assert!(records
        .iter()
        .any(|record| record.resource == "watchdog-reset" && record.node == "n1" && record.t_ns >= reset));
    // Disarm stops it for good.
    socket.send_to(b"arm 200", &path).unwrap();
    socket.send_to(b"disarm", &path).unwrap();
    let holder = reloaded.node("n1").unwrap().holder_pid.unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(std::path::Path::new(&format!("/proc/{holder}")).exists());
}

fn common_wait(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
