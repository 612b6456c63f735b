//! Unit tests of every agent and of the runner against the host fakes (no privileges, paused time).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_host::fake::FakeHost;
use cluster_host::{CommandOutput, NetError};
use cluster_package::*;

use crate::conformance::{check_lifecycle, check_rejects_bad_parameters};
use crate::{build_agent, Action, ActionContext, Agent, AgentError, MonitorState, OcfStatus, PackageRunner, RunError};

fn context() -> ActionContext {
    ActionContext::new("web", 7, Duration::from_secs(20))
}

fn resource(name: &str, kind: ResourceKind) -> ResourceDef {
    ResourceDef {
        name: name.to_string(),
        start_timeout: Duration::from_secs(20),
        stop_timeout: Duration::from_secs(20),
        monitor: Monitor { interval: Duration::from_secs(10), timeout: Duration::from_secs(20), depth: 0 },
        kind,
    }
}

fn ip(address: &str, prefix_len: u8) -> IpResource {
    IpResource {
        address: address.parse().expect("address"),
        prefix_len,
        interface: "eth0".to_string(),
        check_duplicate: true,
        probe_timeout: Duration::from_millis(500),
        announce_count: 3,
        announce_interval: Duration::from_millis(200),
    }
}

fn filesystem(device: DeviceSpec) -> FilesystemResource {
    FilesystemResource {
        device,
        mountpoint: PathBuf::from("/srv/data"),
        fstype: "ext4".to_string(),
        options: vec!["noatime".to_string()],
        fsck: false,
        device_timeout: Duration::from_secs(2),
        kill_holders: true,
        unmount_retries: 3,
    }
}

fn process(command: &[&str]) -> ProcessResource {
    ProcessResource {
        command: command.iter().map(ToString::to_string).collect(),
        environment: BTreeMap::from([("MODE".to_string(), "ha".to_string())]),
        user: None,
        group: None,
        working_directory: None,
        output: ProcessOutput::Journal,
        ready: Readiness::AliveFor(Duration::from_millis(500)),
        stop_signal: "SIGTERM".to_string(),
        kill_after: Duration::from_secs(5),
    }
}

fn ocf(params: &[(&str, &str)]) -> OcfResource {
    OcfResource {
        agent: OcfAgentRef::Path(PathBuf::from("/bin/true")),
        params: params.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
    }
}

fn output(code: i32) -> Result<CommandOutput, cluster_host::ProcessError> {
    Ok(CommandOutput { exit_code: Some(code), ..CommandOutput::default() })
}

/// A fake OCF agent: a state flag driven by start/stop, answering monitor with 0 or 7.
fn fake_ocf_agent(host: &FakeHost) -> Arc<Mutex<Vec<BTreeMap<String, String>>>> {
    let running = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_handler = seen.clone();
    host.processes.on_run(move |command| {
        seen_by_handler.lock().expect("lock").push(command.environment.clone());
        match command.argv[1].as_str() {
            "start" => {
                running.store(true, Ordering::SeqCst);
                output(0)
            }
            "stop" => {
                running.store(false, Ordering::SeqCst);
                output(0)
            }
            "monitor" => output(if running.load(Ordering::SeqCst) { 0 } else { 7 }),
            "meta-data" => Ok(CommandOutput {
                exit_code: Some(0),
                stdout: "<resource-agent name=\"fake\"><parameters></parameters></resource-agent>".to_string(),
                ..CommandOutput::default()
            }),
            "validate-all" => output(0),
            _ => output(3),
        }
    });
    seen
}

// ------------------------------------------------------------------ conformance

#[tokio::test(start_paused = true)]
async fn every_agent_passes_the_conformance_suite_against_fakes() {
    let host = FakeHost::new();
    host.network.add_link("eth0");
    host.mounts.add_device("/dev/sdb1", Some("0a1b"), Some("data"));
    fake_ocf_agent(&host);
    let resources = [
        resource("vip4", ResourceKind::Ip(ip("192.0.2.10", 24))),
        resource("vip6", ResourceKind::Ip(ip("2001:db8::10", 64))),
        resource("data", ResourceKind::Filesystem(filesystem(DeviceSpec::Label("data".to_string())))),
        resource("server", ResourceKind::Process(process(&["/usr/sbin/server"]))),
        resource("cache", ResourceKind::Ocf(ocf(&[("state", "/run/x")]))),
    ];
    for definition in &resources {
        let agent = build_agent(definition, &host.host());
        assert_eq!(agent.kind(), definition.kind.type_name());
        if let Err(failures) = check_lifecycle(agent.as_ref(), &context()).await {
            panic!("{} failed conformance: {failures:#?}", definition.name);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_agent_rejects_bad_parameters() {
    let host = FakeHost::new();
    let mut bad_fs = filesystem(DeviceSpec::Path(PathBuf::from("/dev/sdb1")));
    bad_fs.mountpoint = PathBuf::from("relative");
    let bad = [
        resource("vip", ResourceKind::Ip(ip("192.0.2.10", 40))),
        resource("vip", ResourceKind::Ip(ip("224.0.0.5", 24))),
        resource("data", ResourceKind::Filesystem(bad_fs)),
        resource("server", ResourceKind::Process(process(&[]))),
        resource("cache", ResourceKind::Ocf(ocf(&[("bad-name", "x")]))),
    ];
    for definition in &bad {
        let agent = build_agent(definition, &host.host());
        if let Err(message) = check_rejects_bad_parameters(agent.as_ref()).await {
            panic!("{message}");
        }
    }
}

// ------------------------------------------------------------------ ip

#[tokio::test(start_paused = true)]
async fn ip_start_refuses_an_address_another_host_answers_for() {
    let host = FakeHost::new();
    host.network.add_link("eth0");
    host.network.add_other_host("192.0.2.10".parse().expect("ip"), [0x02, 0xaa, 0, 0, 0, 1]);
    let agent = build_agent(&resource("vip", ResourceKind::Ip(ip("192.0.2.10", 24))), &host.host());
    let error = agent.start(&context()).await.expect_err("duplicate must fail");
    assert_eq!(error.status, OcfStatus::ErrGeneric);
    assert_eq!(error.message, "duplicate address 192.0.2.10 on eth0: answered by 02:aa:00:00:00:01");
    assert!(host.log.calls_starting_with("net add").is_empty(), "{:?}", host.log.calls());
}

#[tokio::test(start_paused = true)]
async fn ip_v6_start_fails_and_cleans_up_when_dad_fails() {
    let host = FakeHost::new();
    host.network.add_link("eth0");
    host.network.add_other_host("2001:db8::10".parse().expect("ip"), [2, 0, 0, 0, 0, 9]);
    let agent = build_agent(&resource("vip", ResourceKind::Ip(ip("2001:db8::10", 64))), &host.host());
    let error = agent.start(&context()).await.expect_err("dad failure must fail");
    assert_eq!(error.status, OcfStatus::ErrGeneric);
    assert!(error.message.starts_with("duplicate address 2001:db8::10 on eth0"), "{error}");
    assert!(host.network.addresses_of("eth0").is_empty());
}

#[tokio::test(start_paused = true)]
async fn ip_announces_the_configured_number_of_times() {
    let host = FakeHost::new();
    host.network.add_link("eth0");
    let agent = build_agent(&resource("vip", ResourceKind::Ip(ip("192.0.2.10", 24))), &host.host());
    agent.start(&context()).await.expect("start");
    assert_eq!(host.log.calls_starting_with("net announce").len(), 1, "first announcement before start returns");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(host.log.calls_starting_with("net announce"), vec!["net announce 192.0.2.10 eth0"; 3]);
    assert_eq!(host.log.calls_starting_with("net add"), vec!["net add 192.0.2.10/24 eth0 skip_dad=false"]);
}

#[tokio::test(start_paused = true)]
async fn ip_stop_removes_only_its_own_address() {
    let host = FakeHost::new();
    host.network.add_link("eth0");
    let other: IpAddr = "192.0.2.1".parse().expect("ip");
    host.network.preset_address("eth0", other, 24);
    let agent = build_agent(&resource("vip", ResourceKind::Ip(ip("192.0.2.10", 24))), &host.host());
    agent.start(&context()).await.expect("start");
    agent.stop(&context()).await.expect("stop");
    assert_eq!(host.network.addresses_of("eth0"), vec![(other, 24)]);
}

#[tokio::test(start_paused = true)]
async fn ip_errors_have_their_ocf_class() {
    let host = FakeHost::new();
    let agent = build_agent(&resource("vip", ResourceKind::Ip(ip("192.0.2.10", 24))), &host.host());
    let missing = agent.start(&context()).await.expect_err("no interface");
    assert_eq!((missing.status, missing.message.as_str()), (OcfStatus::ErrInstalled, "interface eth0 not found"));
    assert_eq!(agent.monitor(&context()).await, Ok(MonitorState::NotRunning));

    host.network.add_link("eth0");
    host.network.fail_next_add(NetError::PermissionDenied { action: "add 192.0.2.10/24 to eth0".to_string() });
    let denied = agent.start(&context()).await.expect_err("denied");
    assert_eq!(
        (denied.status, denied.message.as_str()),
        (OcfStatus::ErrPerm, "failed to add 192.0.2.10/24 to eth0: permission denied")
    );

    agent.start(&context()).await.expect("start");
    host.network.set_link_up("eth0", false);
    let down = agent.monitor(&context()).await.expect_err("link down");
    assert_eq!(down.message, "192.0.2.10/24 is on eth0 but the link is down");

    host.network.preset_address("eth0", "198.51.100.7".parse().expect("ip"), 16);
    let clash = build_agent(&resource("vip2", ResourceKind::Ip(ip("198.51.100.7", 24))), &host.host());
    host.network.set_link_up("eth0", true);
    let error = clash.start(&context()).await.expect_err("prefix clash");
    assert_eq!(error.status, OcfStatus::ErrConfigured);
}

// ------------------------------------------------------------------ filesystem

#[tokio::test(start_paused = true)]
async fn filesystem_stop_kills_holders_that_ignore_sigterm() {
    let host = FakeHost::new();
    host.mounts.add_device("/dev/sdb1", None, None);
    let agent = build_agent(
        &resource("data", ResourceKind::Filesystem(filesystem(DeviceSpec::Path("/dev/sdb1".into())))),
        &host.host(),
    );
    agent.start(&context()).await.expect("start");
    host.mounts.add_holder(4242, "/srv/data/log/app.log", true);
    host.mounts.add_holder(4343, "/srv/data", false);
    agent.stop(&context()).await.expect("stop");
    let signals = host.log.calls_starting_with("mount signal");
    assert_eq!(
        signals,
        vec![
            format!("mount signal 4242 {}", libc::SIGTERM),
            format!("mount signal 4343 {}", libc::SIGTERM),
            format!("mount signal 4242 {}", libc::SIGKILL),
        ]
    );
    assert!(host.mounts.mounted_targets().is_empty());
}

#[tokio::test(start_paused = true)]
async fn filesystem_stop_reports_busy_when_holders_may_not_be_killed() {
    let host = FakeHost::new();
    host.mounts.add_device("/dev/sdb1", None, None);
    let mut params = filesystem(DeviceSpec::Path("/dev/sdb1".into()));
    params.kill_holders = false;
    let agent = build_agent(&resource("data", ResourceKind::Filesystem(params)), &host.host());
    agent.start(&context()).await.expect("start");
    host.mounts.add_holder(4242, "/srv/data/file", false);
    let error = agent.stop(&context()).await.expect_err("busy");
    assert_eq!(error.status, OcfStatus::ErrGeneric);
    assert_eq!(error.message, "failed to unmount /srv/data after 3 attempts: target is busy (held by pids 4242)");
    assert_eq!(host.log.calls_starting_with("mount unmount").len(), 3);
}

#[tokio::test(start_paused = true)]
async fn filesystem_waits_for_the_device_then_gives_up() {
    let host = FakeHost::new();
    let agent = build_agent(
        &resource("data", ResourceKind::Filesystem(filesystem(DeviceSpec::Uuid("0a1b".into())))),
        &host.host(),
    );
    let error = agent.start(&context()).await.expect_err("no device");
    assert_eq!(error.status, OcfStatus::ErrInstalled);
    assert_eq!(error.message, "device UUID=0a1b for resource data did not appear within 2s");
}

#[tokio::test(start_paused = true)]
async fn filesystem_fsck_and_deep_monitor() {
    let host = FakeHost::new();
    host.mounts.add_device("/dev/sdb1", None, Some("data"));
    let mut params = filesystem(DeviceSpec::Label("data".into()));
    params.fsck = true;
    let agent = build_agent(&resource("data", ResourceKind::Filesystem(params)), &host.host());
    host.mounts.fail_fsck(true);
    let error = agent.start(&context()).await.expect_err("fsck fails");
    assert_eq!(error.message, "fsck of /dev/sdb1 failed: exit code 4: errors left uncorrected");
    host.mounts.fail_fsck(false);
    agent.start(&context()).await.expect("start");
    assert_eq!(
        host.log.calls_starting_with("mount /dev"),
        vec!["mount /dev/sdb1 /srv/data ext4 [noatime]".to_string()]
    );
    let mut deep = context();
    deep.depth = 10;
    assert_eq!(agent.monitor(&deep).await, Ok(MonitorState::Running));
    host.mounts.fail_read_write(true);
    assert_eq!(agent.monitor(&context()).await, Ok(MonitorState::Running), "depth 0 does not check");
    let error = agent.monitor(&deep).await.expect_err("rw check fails");
    assert_eq!(error.message, "failed to read/write check of /srv/data: read-only file system");
}

#[tokio::test(start_paused = true)]
async fn filesystem_refuses_a_mountpoint_used_by_another_device() {
    let host = FakeHost::new();
    host.mounts.add_device("/dev/sdb1", None, None);
    host.mounts.preset_mount("/dev/sdc1", "/srv/data", "ext4");
    let agent = build_agent(
        &resource("data", ResourceKind::Filesystem(filesystem(DeviceSpec::Path("/dev/sdb1".into())))),
        &host.host(),
    );
    let error = agent.start(&context()).await.expect_err("occupied");
    assert_eq!(error.status, OcfStatus::ErrConfigured);
}

/// A runner over one filesystem resource on `/dev/sdb1` with short timeouts (start 2 s, stop 2 s,
/// monitor 1 s), against `host`.
fn stallable_filesystem(host: &FakeHost) -> PackageRunner {
    host.mounts.add_device("/dev/sdb1", None, None);
    let mut data = resource("data", ResourceKind::Filesystem(filesystem(DeviceSpec::Path("/dev/sdb1".into()))));
    data.start_timeout = Duration::from_secs(2);
    data.stop_timeout = Duration::from_secs(2);
    data.monitor.timeout = Duration::from_secs(1);
    let text = "name = \"web\"\n[[resource]]\nname = \"x\"\ntype = \"process\"\ncommand = [\"/bin/true\"]\n";
    let mut package = parse_package("web.toml", text).expect("valid");
    package.resources = vec![data];
    PackageRunner::new(&package, &host.host(), &crate::AgentOptions::default())
}

#[tokio::test(start_paused = true)]
async fn filesystem_start_abandoned_at_its_timeout_is_not_called_stopped_and_is_undone_when_it_lands() {
    let host = FakeHost::new();
    let runner = stallable_filesystem(&host);
    host.mounts.stall_mounts();
    let error = runner.start(7).await.expect_err("the mount blocks");
    // The rollback stop waited 1.8 s (90 % of its timeout) for the mount, then refused to call it stopped.
    assert_eq!(
        error.to_string(),
        "package web: start of resource data: start of resource data timed out after 2s [OCF_ERR_GENERIC (1)]; \
         rollback also failed: \
         stop of resource data: mount of /dev/sdb1 at /srv/data still in flight after 3.8s: cannot tell whether it \
         will be mounted [OCF_ERR_GENERIC (1)]"
    );
    assert!(error.leaves_resources_active(), "the engine must not start it elsewhere");
    let probe = runner.probe(7).await.remove(0).state.expect_err("neither running nor stopped");
    assert_eq!(
        probe.message,
        "mount of /dev/sdb1 at /srv/data still in flight after 4.7s: cannot tell whether it will be mounted"
    );
    assert!(runner.stop(7).await.is_err());
    assert!(host.log.calls_starting_with("mount unmount").is_empty(), "nothing was unmounted meanwhile");

    // The device answers: the abandoned mount lands and is undone at once; the stop now succeeds.
    host.mounts.resume_mounts();
    runner.stop(7).await.expect("stop once the mount was undone");
    assert!(host.mounts.mounted_targets().is_empty());
    assert_eq!(host.log.calls_starting_with("mount undo"), vec!["mount undo /srv/data".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn filesystem_stop_after_a_dropped_start_waits_for_the_mount_and_finds_it_undone() {
    let host = FakeHost::new();
    let runner = stallable_filesystem(&host);
    host.mounts.stall_mounts();
    // As the executor's select! at the lease's stop budget.
    tokio::select! {
        outcome = runner.start(7) => panic!("start returned: {outcome:?}"),
        () = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    let resume = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        host.mounts.resume_mounts();
    };
    let began = tokio::time::Instant::now();
    let (stopped, ()) = tokio::join!(runner.stop(7), resume);
    stopped.expect("stopped once the mount landed and was undone");
    assert_eq!(began.elapsed(), Duration::from_secs(1), "the stop waited for the mount");
    assert!(host.mounts.mounted_targets().is_empty());
    assert_eq!(host.log.calls_starting_with("mount undo"), vec!["mount undo /srv/data".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn filesystem_start_waits_for_an_abandoned_mount_before_mounting_again() {
    let host = FakeHost::new();
    let runner = stallable_filesystem(&host);
    host.mounts.stall_mounts();
    tokio::select! {
        outcome = runner.start(7) => panic!("start returned: {outcome:?}"),
        () = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    let resume = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        host.mounts.resume_mounts();
    };
    let (started, ()) = tokio::join!(runner.start(8), resume);
    started.expect("started after the abandoned mount was undone");
    assert_eq!(host.mounts.mounted_targets(), vec![PathBuf::from("/srv/data")]);
    assert_eq!(
        host.log.calls_starting_with("mount "),
        vec![
            "mount mkdir /srv/data",
            "mount /dev/sdb1 /srv/data ext4 [noatime]",
            "mount undo /srv/data",
            "mount mkdir /srv/data",
            "mount /dev/sdb1 /srv/data ext4 [noatime]",
        ]
    );
}

// ------------------------------------------------------------------ process

#[tokio::test(start_paused = true)]
async fn process_stop_after_a_dropped_start_waits_for_the_process_on_its_way_and_stops_it() {
    let host = FakeHost::new();
    let agent = build_agent(&resource("server", ResourceKind::Process(process(&["/usr/sbin/server"]))), &host.host());
    host.processes.stall_spawns();
    let context = context();
    tokio::select! {
        outcome = agent.start(&context) => panic!("start returned: {outcome:?}"),
        () = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    // Neither running nor stopped while the fork may still land.
    let mut short = context.clone();
    short.timeout = Duration::from_secs(1);
    let error = agent.monitor(&short).await.expect_err("in flight");
    assert_eq!(
        error.message,
        "start of the first process of unit web.server still in flight after 900ms: cannot tell whether it will run"
    );
    let resume = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        host.processes.resume_spawns();
    };
    let (stopped, ()) = tokio::join!(agent.stop(&context), resume);
    stopped.expect("stopped once the process appeared");
    assert!(!host.processes.is_running("web.server"), "the process of the abandoned start was stopped");
    assert_eq!(host.log.calls_starting_with("process signal"), vec!["process signal web.server SIGTERM".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn process_ignoring_sigterm_is_killed_after_kill_after() {
    let host = FakeHost::new();
    host.processes.ignore_term("web.server");
    let agent =
        build_agent(&resource("server", ResourceKind::Process(process(&["/usr/sbin/server", "-f"]))), &host.host());
    agent.start(&context()).await.expect("start");
    let spec = host.processes.spec_of("web.server").expect("spawned");
    assert_eq!(spec.environment.get("CLUSTER_EPOCH").map(String::as_str), Some("7"));
    assert_eq!(spec.environment.get("MODE").map(String::as_str), Some("ha"));
    let began = tokio::time::Instant::now();
    agent.stop(&context()).await.expect("stop");
    assert!(began.elapsed() >= Duration::from_secs(5), "killed only after kill_after");
    assert_eq!(
        host.log.calls_starting_with("process "),
        vec![
            "process spawn web.server /usr/sbin/server -f",
            "process signal web.server SIGTERM",
            "process kill web.server",
            "process release web.server",
        ]
    );
    assert!(!host.processes.is_running("web.server"));
}

#[tokio::test(start_paused = true)]
async fn process_readiness_by_tcp_port_waits_for_the_port() {
    let host = FakeHost::new();
    let address: SocketAddr = "127.0.0.1:8080".parse().expect("address");
    let mut params = process(&["/usr/sbin/server"]);
    params.ready = Readiness::TcpPort(address);
    let agent: Arc<dyn Agent> =
        Arc::from(build_agent(&resource("server", ResourceKind::Process(params)), &host.host()));
    let starting = tokio::spawn({
        let agent = agent.clone();
        async move { agent.start(&context()).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!starting.is_finished(), "start must wait for the port");
    host.processes.open_port(address);
    starting.await.expect("join").expect("start after the port opens");
}

#[tokio::test(start_paused = true)]
async fn process_start_failures_have_their_class() {
    let host = FakeHost::new();
    host.processes.missing_program("/usr/sbin/nope");
    let agent = build_agent(&resource("server", ResourceKind::Process(process(&["/usr/sbin/nope"]))), &host.host());
    let error = agent.start(&context()).await.expect_err("missing");
    assert_eq!(error.status, OcfStatus::ErrInstalled);
    assert_eq!(error.message, "failed to start /usr/sbin/nope: not found or not executable");

    host.processes.crash_on_start("web.crasher");
    let agent = build_agent(&resource("crasher", ResourceKind::Process(process(&["/usr/sbin/crasher"]))), &host.host());
    let error = agent.start(&context()).await.expect_err("crash");
    assert_eq!(error.status, OcfStatus::ErrGeneric);
    assert_eq!(error.message, "process of resource crasher exited within 500ms of starting");
}

// ------------------------------------------------------------------ ocf

#[tokio::test(start_paused = true)]
async fn ocf_agent_gets_the_ocf_environment_and_epoch() {
    let host = FakeHost::new();
    let seen = fake_ocf_agent(&host);
    let agent = build_agent(&resource("cache", ResourceKind::Ocf(ocf(&[("state", "/run/cache")]))), &host.host());
    let mut monitor_context = context();
    monitor_context.interval = Duration::from_secs(10);
    agent.start(&context()).await.expect("start");
    assert_eq!(agent.monitor(&monitor_context).await, Ok(MonitorState::Running));
    let environments = seen.lock().expect("lock").clone();
    let start = &environments[0];
    for (key, value) in [
        ("OCF_ROOT", "/usr/lib/ocf"),
        ("OCF_RESOURCE_INSTANCE", "cache"),
        ("OCF_RESKEY_state", "/run/cache"),
        ("OCF_RESKEY_CRM_meta_timeout", "20000"),
        ("OCF_RESKEY_CRM_meta_interval", "0"),
        ("OCF_RESKEY_CRM_meta_epoch", "7"),
        ("CLUSTER_EPOCH", "7"),
        ("__OCF_ACTION", "start"),
    ] {
        assert_eq!(start.get(key).map(String::as_str), Some(value), "{key}");
    }
    assert_eq!(environments[1].get("OCF_RESKEY_CRM_meta_interval").map(String::as_str), Some("10000"));
}

#[tokio::test(start_paused = true)]
async fn ocf_exit_codes_map_to_results() {
    let host = FakeHost::new();
    let code = Arc::new(Mutex::new(0));
    let code_for_handler = code.clone();
    host.processes.on_run(move |_| {
        let value = *code_for_handler.lock().expect("lock");
        if value < 0 {
            return Ok(CommandOutput { timed_out: true, ..CommandOutput::default() });
        }
        Ok(CommandOutput {
            exit_code: Some(value),
            stderr: "ERROR: Something Broke\n".to_string(),
            ..CommandOutput::default()
        })
    });
    let agent = build_agent(&resource("cache", ResourceKind::Ocf(ocf(&[]))), &host.host());
    let set = |value: i32| *code.lock().expect("lock") = value;

    set(7);
    assert_eq!(agent.monitor(&context()).await, Ok(MonitorState::NotRunning));
    assert_eq!(agent.stop(&context()).await, Ok(()), "stop of a stopped resource succeeds");
    set(1);
    let error = agent.monitor(&context()).await.expect_err("failed");
    assert_eq!(error.status, OcfStatus::ErrGeneric);
    assert_eq!(error.message, "monitor of resource cache (/bin/true) failed: error: something broke");
    for (exit, status) in [
        (2, OcfStatus::ErrArgs),
        (4, OcfStatus::ErrPerm),
        (5, OcfStatus::ErrInstalled),
        (6, OcfStatus::ErrConfigured),
        (7, OcfStatus::NotRunning),
    ] {
        set(exit);
        assert_eq!(agent.start(&context()).await.expect_err("start fails").status, status, "exit {exit}");
    }
    set(3);
    assert_eq!(agent.validate().await, Ok(()), "validate-all unimplemented is accepted");
    set(-1);
    let error = agent.start(&context()).await.expect_err("timeout");
    assert_eq!(error.message, "start of resource cache (/bin/true) timed out after 20s");
}

#[tokio::test(start_paused = true)]
async fn ocf_missing_agent_is_not_installed() {
    let host = FakeHost::new();
    let mut params = ocf(&[]);
    params.agent = OcfAgentRef::Provider { provider: "nobody".to_string(), agent_type: "Nothing".to_string() };
    let agent = build_agent(&resource("cache", ResourceKind::Ocf(params)), &host.host());
    let error = agent.start(&context()).await.expect_err("missing");
    assert_eq!(error.status, OcfStatus::ErrInstalled);
    assert_eq!(
        error.message,
        "ocf agent ocf:nobody:Nothing of resource cache not found at /usr/lib/ocf/resource.d/nobody/Nothing"
    );
}

// ------------------------------------------------------------------ runner

/// A scripted agent recording its actions in a shared log.
struct ScriptedAgent {
    name: String,
    log: Arc<Mutex<Vec<String>>>,
    fail_start: bool,
    fail_stop: bool,
    hang_start: bool,
}

fn scripted(name: &str, log: &Arc<Mutex<Vec<String>>>) -> ScriptedAgent {
    ScriptedAgent { name: name.to_string(), log: log.clone(), fail_start: false, fail_stop: false, hang_start: false }
}

#[async_trait::async_trait]
impl Agent for ScriptedAgent {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "scripted"
    }
    async fn validate(&self) -> Result<(), AgentError> {
        Ok(())
    }
    async fn start(&self, context: &ActionContext) -> Result<(), AgentError> {
        self.log.lock().expect("lock").push(format!("start {} epoch={}", self.name, context.epoch));
        if self.hang_start {
            std::future::pending::<()>().await;
        }
        if self.fail_start {
            return Err(AgentError::generic(format!("{} broke", self.name)));
        }
        Ok(())
    }
    async fn stop(&self, _context: &ActionContext) -> Result<(), AgentError> {
        self.log.lock().expect("lock").push(format!("stop {}", self.name));
        if self.fail_stop {
            return Err(AgentError::generic(format!("{} stuck", self.name)));
        }
        Ok(())
    }
    async fn monitor(&self, _context: &ActionContext) -> Result<MonitorState, AgentError> {
        Ok(MonitorState::NotRunning)
    }
    async fn meta_data(&self) -> Result<String, AgentError> {
        Ok(String::new())
    }
}

#[tokio::test(start_paused = true)]
async fn runner_starts_in_order_and_stops_in_reverse() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let runner = PackageRunner::from_agents(
        "web",
        vec![Box::new(scripted("a", &log)), Box::new(scripted("b", &log)), Box::new(scripted("c", &log))],
    );
    let started = runner.start(3).await.expect("start");
    assert_eq!(started.iter().map(|outcome| outcome.resource.as_str()).collect::<Vec<_>>(), vec!["a", "b", "c"]);
    runner.stop(3).await.expect("stop");
    assert_eq!(
        *log.lock().expect("lock"),
        vec!["start a epoch=3", "start b epoch=3", "start c epoch=3", "stop c", "stop b", "stop a"]
    );
}

#[tokio::test(start_paused = true)]
async fn runner_stops_from_a_resource_on_and_leaves_the_ones_before() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let runner = PackageRunner::from_agents(
        "web",
        vec![Box::new(scripted("a", &log)), Box::new(scripted("b", &log)), Box::new(scripted("c", &log))],
    );
    runner.start(3).await.expect("start");
    let stopped = runner.stop_from(1, 3).await.expect("stop from b");
    assert_eq!(stopped.iter().map(|outcome| outcome.resource.as_str()).collect::<Vec<_>>(), vec!["c", "b"]);
    assert!(runner.stop_from(3, 3).await.expect("past the end").is_empty());
    assert_eq!(log.lock().expect("lock")[3..], ["stop c", "stop b"]);
}

#[tokio::test(start_paused = true)]
async fn runner_rolls_back_a_failed_start_and_collects_every_error() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut a = scripted("a", &log);
    a.fail_stop = true;
    let mut c = scripted("c", &log);
    c.fail_start = true;
    let runner = PackageRunner::from_agents(
        "web",
        vec![Box::new(a), Box::new(scripted("b", &log)), Box::new(c), Box::new(scripted("d", &log))],
    );
    let error = runner.start(1).await.expect_err("c fails");
    assert_eq!(
        *log.lock().expect("lock"),
        vec!["start a epoch=1", "start b epoch=1", "start c epoch=1", "stop c", "stop b", "stop a"]
    );
    let RunError::StartFailed { failure, rollback_failures, .. } = &error else { panic!("{error:?}") };
    assert_eq!((failure.resource.as_str(), failure.action), ("c", Action::Start));
    assert_eq!(rollback_failures.len(), 1);
    assert_eq!(rollback_failures[0].resource, "a");
    assert!(error.leaves_resources_active());
    assert_eq!(
        error.to_string(),
        "package web: start of resource c: c broke [OCF_ERR_GENERIC (1)]; rollback also failed: stop of resource a: a stuck [OCF_ERR_GENERIC (1)]"
    );
}

#[tokio::test(start_paused = true)]
async fn runner_stop_tries_every_resource_and_returns_every_error() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut a = scripted("a", &log);
    a.fail_stop = true;
    let mut c = scripted("c", &log);
    c.fail_stop = true;
    let runner = PackageRunner::from_agents("web", vec![Box::new(a), Box::new(scripted("b", &log)), Box::new(c)]);
    let error = runner.stop(1).await.expect_err("two stops fail");
    assert_eq!(*log.lock().expect("lock"), vec!["stop c", "stop b", "stop a"]);
    let RunError::StopFailed { failures, .. } = &error else { panic!("{error:?}") };
    assert_eq!(failures.iter().map(|failure| failure.resource.as_str()).collect::<Vec<_>>(), vec!["c", "a"]);
}

#[tokio::test(start_paused = true)]
async fn runner_refuses_a_stale_epoch_but_always_stops() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let runner = PackageRunner::from_agents("web", vec![Box::new(scripted("a", &log))]);
    runner.start(5).await.expect("start");
    let error = runner.start(4).await.expect_err("stale");
    assert_eq!(error.to_string(), "refusing to start package web at epoch 4: epoch 5 was already seen");
    runner.stop(4).await.expect("stop is always allowed");
}

/// What a dropped runner saw is handed to the next one (clusterd drops the runner of a package
/// that is not active on the node): the next one refuses the older epoch too.
#[tokio::test(start_paused = true)]
async fn a_runner_told_of_an_epoch_refuses_older_ones() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let first = PackageRunner::from_agents("web", vec![Box::new(scripted("a", &log))]);
    assert_eq!(first.epoch_seen(), 0);
    first.start(5).await.expect("start");
    first.stop(5).await.expect("stop");
    assert_eq!(first.epoch_seen(), 5);
    let next = PackageRunner::from_agents("web", vec![Box::new(scripted("a", &log))]);
    next.see_epoch(first.epoch_seen());
    let error = next.start(4).await.expect_err("stale");
    assert_eq!(error.to_string(), "refusing to start package web at epoch 4: epoch 5 was already seen");
    next.start(6).await.expect("a newer epoch starts");
}

#[tokio::test(start_paused = true)]
async fn runner_enforces_action_timeouts_from_the_package() {
    let host = FakeHost::new();
    let text = "name = \"web\"\n[[resource]]\nname = \"server\"\ntype = \"process\"\ncommand = [\"/usr/sbin/server\"]\nready = { tcp = \"127.0.0.1:9\" }\nstart_timeout = \"3s\"\n";
    let package = parse_package("web.toml", text).expect("valid");
    let runner = PackageRunner::new(&package, &host.host(), &crate::AgentOptions::default());
    let began = tokio::time::Instant::now();
    let error = runner.start(1).await.expect_err("never ready");
    assert!(began.elapsed() >= Duration::from_secs(3) && began.elapsed() < Duration::from_secs(4));
    let RunError::StartFailed { failure, rollback_failures, .. } = &error else { panic!("{error:?}") };
    assert_eq!(failure.error.message, "start of resource server timed out after 3s");
    assert!(rollback_failures.is_empty());
    assert!(!host.processes.is_running("web.server"), "the half-started process was stopped");

    let log = Arc::new(Mutex::new(Vec::new()));
    let mut hanging = scripted("hang", &log);
    hanging.hang_start = true;
    let runner = PackageRunner::from_agents("web", vec![Box::new(hanging)]);
    let error = runner.start(1).await.expect_err("hangs");
    assert!(error.to_string().contains("start of resource hang timed out after 20s"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn runner_probe_and_monitor_report_each_resource() {
    let host = FakeHost::new();
    host.network.add_link("eth0");
    let text = "name = \"web\"\n[[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"192.0.2.10/24\"\ninterface = \"eth0\"\n[[resource]]\nname = \"server\"\ntype = \"process\"\ncommand = [\"/usr/sbin/server\"]\n";
    let package = parse_package("web.toml", text).expect("valid");
    let runner = PackageRunner::new(&package, &host.host(), &crate::AgentOptions::default());
    assert_eq!(runner.resource_names(), vec!["vip", "server"]);
    let probe = runner.probe(1).await;
    assert!(probe.iter().all(|result| result.state == Ok(MonitorState::NotRunning)), "{probe:?}");
    runner.start(1).await.expect("start");
    assert_eq!(runner.monitor("server", 1).await, Ok(MonitorState::Running));
    host.processes.crash("web.server");
    assert_eq!(runner.monitor("server", 1).await, Ok(MonitorState::NotRunning));
    assert_eq!(runner.monitor("nothing", 1).await.expect_err("unknown").status, OcfStatus::ErrArgs);
    assert!(runner.validate().await.is_ok());
}
