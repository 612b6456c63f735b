//! Root test: real OCF agents we did not write (Debian's `resource-agents`: `ocf:heartbeat:Dummy`,
//! `ocf:heartbeat:IPaddr2` inside a network namespace, `ocf:heartbeat:Stateful` promoted and demoted
//! with its promotion score) driven through the `ocf` agent, and `ocf-tester` on every agent in
//! `resource-agents/`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cluster_agents::conformance::check_lifecycle;
use cluster_agents::{build_agent, ActionContext, MonitorState, OcfStatus};
use cluster_host::fake::FakeHost;
use cluster_host::netns::run_in_netns;
use cluster_host::{Host, LinuxProcesses, ProcessConfig};
use cluster_package::{Monitor, OcfAgentRef, OcfResource, ResourceDef, ResourceKind};
use common::{must, require_root, run, unique, LoopDevice, Segment};

fn ocf_resource(name: &str, agent: OcfAgentRef, params: &[(&str, &str)]) -> ResourceDef {
    ResourceDef {
        name: name.to_string(),
        start_timeout: Duration::from_secs(20),
        stop_timeout: Duration::from_secs(20),
        monitor: Monitor { interval: Duration::from_secs(10), timeout: Duration::from_secs(20), depth: 0 },
        kind: ResourceKind::Ocf(OcfResource {
            agent,
            params: params.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect::<BTreeMap<_, _>>(),
        }),
    }
}

fn heartbeat(agent_type: &str) -> OcfAgentRef {
    OcfAgentRef::Provider { provider: "heartbeat".to_string(), agent_type: agent_type.to_string() }
}

/// Real command execution (process groups: no cgroup is created for one-shot commands), fakes for the rest.
fn host(state: &Path) -> Host {
    let mut host = FakeHost::new().host();
    host.processes = Arc::new(LinuxProcesses::new(ProcessConfig {
        cgroup_parent: None,
        node: None,
        force_process_groups: true,
        state_directory: state.to_path_buf(),
    }));
    host
}

fn context(epoch: u64) -> ActionContext {
    ActionContext::new("web", epoch, Duration::from_secs(20))
}

fn require_resource_agents() {
    assert!(
        Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").exists(),
        "Debian's resource-agents package is required (apt-get install resource-agents)"
    );
}

/// `ocf:heartbeat:Stateful` as the promoted resource of a promotable package: started as a replica
/// (score 5, set through the `crm_attribute` stand-in), promoted (monitor `OCF_RUNNING_PROMOTED`,
/// score 10), demoted, promoted again and stopped (demoted first: Stateful refuses to stop promoted;
/// its stop removes the score).
#[tokio::test]
async fn heartbeat_stateful_is_promoted_demoted_and_scored_through_the_ocf_agent() {
    if !require_root("ocf:heartbeat:Stateful") {
        return;
    }
    require_resource_agents();
    assert!(
        Path::new("/usr/lib/ocf/resource.d/heartbeat/Stateful").exists(),
        "ocf:heartbeat:Stateful (Debian's resource-agents) is required"
    );
    let directory = tempfile::tempdir().expect("tempdir");
    let state = directory.path().join("stateful.state");
    let promotion = directory.path().join("promotion");
    cluster_agents::promotion::install(&promotion).expect("install the crm_master stand-in");
    let text = format!(
        "name = \"db\"\ninstances = 2\npromotable = {{ primaries = 1 }}\n\
         [[resource]]\nname = \"data\"\ntype = \"ocf\"\nagent = \"heartbeat:Stateful\"\nparams = {{ state = \"{}\" }}\n",
        state.display()
    );
    let def = cluster_package::parse_package("db.toml", &text).expect("valid package");
    let host = host(directory.path());
    let options = cluster_agents::AgentOptions {
        node: Some("n1".into()),
        promotion_dir: Some(promotion.clone()),
        ..cluster_agents::AgentOptions::default()
    };
    let runner = cluster_agents::PackageRunner::for_instance(&def, "db:1", &host, &options);
    let monitor = || async { runner.monitor("data", 3).await };
    runner.start(3).await.unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(monitor().await, Ok(MonitorState::Running));
    assert_eq!(runner.promotion_score(), Some(5), "Stateful sets 5 at start");
    assert!(promotion.join("scores").join("db:1.data").exists());
    runner.promote(3).await.unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(monitor().await, Ok(MonitorState::RunningPromoted));
    assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "master");
    assert_eq!(runner.promotion_score(), Some(10));
    assert!(runner.promoted());
    runner.demote(3).await.unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(monitor().await, Ok(MonitorState::Running));
    assert_eq!(runner.promotion_score(), Some(5));
    runner.promote(3).await.unwrap_or_else(|error| panic!("{error}"));
    // A probe after a daemon restart sees the promotion.
    let again = cluster_agents::PackageRunner::for_instance(&def, "db:1", &host, &options);
    let found = again.probe(3).await;
    assert_eq!(found[0].state, Ok(MonitorState::RunningPromoted));
    assert!(again.promoted());
    again.stop(3).await.unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(monitor().await, Ok(MonitorState::NotRunning));
    assert_eq!(runner.promotion_score(), None, "Stateful removes its score when it stops");
    assert!(!state.exists());
}

#[tokio::test]
async fn heartbeat_dummy_through_the_ocf_agent() {
    if !require_root("ocf:heartbeat:Dummy") {
        return;
    }
    require_resource_agents();
    let directory = tempfile::tempdir().expect("tempdir");
    let state = directory.path().join("dummy.state");
    let host = host(directory.path());
    let agent =
        build_agent(&ocf_resource("dummy", heartbeat("Dummy"), &[("state", state.to_str().expect("utf-8"))]), &host);
    check_lifecycle(agent.as_ref(), &context(2)).await.unwrap_or_else(|failures| panic!("{failures:#?}"));

    agent.start(&context(2)).await.expect("start");
    assert!(state.exists(), "Dummy keeps its state file while running");
    assert_eq!(agent.monitor(&context(2)).await, Ok(MonitorState::Running));
    // Someone removes the state behind the agent's back: monitor reports OCF_NOT_RUNNING (7).
    std::fs::remove_file(&state).expect("remove state");
    assert_eq!(agent.monitor(&context(2)).await, Ok(MonitorState::NotRunning));
    agent.stop(&context(2)).await.expect("stop");
    let xml = agent.meta_data().await.expect("meta-data");
    assert!(xml.contains("<resource-agent name=\"Dummy\""), "{xml}");

    let missing = build_agent(&ocf_resource("nothing", heartbeat("NoSuchAgent"), &[]), &host);
    assert_eq!(missing.start(&context(2)).await.expect_err("missing").status, OcfStatus::ErrInstalled);
}

#[test]
fn heartbeat_ipaddr2_inside_a_network_namespace() {
    if !require_root("ocf:heartbeat:IPaddr2") {
        return;
    }
    require_resource_agents();
    let segment = Arc::new(Segment::new());
    let inside = segment.clone();
    run_in_netns(&segment.node.path(), move || async move {
        let segment = inside;
        let directory = tempfile::tempdir().expect("tempdir");
        let host = host(directory.path());
        let params = [("ip", "192.0.2.60"), ("cidr_netmask", "24"), ("nic", "eth0")];
        let agent = build_agent(&ocf_resource("vip", heartbeat("IPaddr2"), &params), &host);
        assert_eq!(
            agent.monitor(&context(1)).await,
            Ok(MonitorState::NotRunning),
            "probe before start: OCF_NOT_RUNNING"
        );
        agent.start(&context(1)).await.expect("IPaddr2 start");
        assert_eq!(agent.monitor(&context(1)).await, Ok(MonitorState::Running));
        let addresses = segment.node.exec(&["ip", "-4", "addr", "show", "dev", "eth0"]);
        assert!(addresses.contains("192.0.2.60/24"), "{addresses}");
        assert!(
            segment.neighbour.try_exec(&["ping", "-c", "1", "-W", "2", "192.0.2.60"]),
            "vip from IPaddr2 does not answer"
        );
        agent.stop(&context(1)).await.expect("IPaddr2 stop");
        assert_eq!(agent.monitor(&context(1)).await, Ok(MonitorState::NotRunning));
        let addresses = segment.node.exec(&["ip", "-4", "addr", "show", "dev", "eth0"]);
        assert!(!addresses.contains("192.0.2.60"), "{addresses}");

        // A missing interface: IPaddr2 refuses to start (OCF_ERR_CONFIGURED / OCF_ERR_GENERIC class errors).
        let wrong = build_agent(
            &ocf_resource(
                "bad",
                heartbeat("IPaddr2"),
                &[("ip", "192.0.2.61"), ("cidr_netmask", "24"), ("nic", "nosuchnic0")],
            ),
            &host,
        );
        let error = wrong.start(&context(1)).await.expect_err("missing nic");
        assert!(error.status != OcfStatus::Success && error.status != OcfStatus::NotRunning, "{error}");
    })
    .expect("run in namespace");
}

/// A volume group on a loop device, removed on drop (no LVs: this kernel has no device-mapper).
struct VolumeGroup {
    name: String,
    device: LoopDevice,
}

impl VolumeGroup {
    fn new() -> VolumeGroup {
        let device = LoopDevice::new(16);
        let name = unique("clvg").replace('-', "_");
        must(&["pvcreate", "-ff", "-y", "-q", &device.device]);
        must(&["vgcreate", "-q", &name, &device.device]);
        VolumeGroup { name, device }
    }
}

impl Drop for VolumeGroup {
    fn drop(&mut self) {
        let _ = run(&["vgchange", "-q", "-a", "n", &self.name]);
        let _ = run(&["vgremove", "-f", "-q", &self.name]);
        let _ = run(&["pvremove", "-q", &self.device.device]);
    }
}

fn shipped_agents() -> Vec<PathBuf> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resource-agents");
    let mut agents: Vec<PathBuf> = std::fs::read_dir(&folder)
        .expect("resource-agents folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.is_file() && path.extension().is_none())
        .collect();
    agents.sort();
    agents
}

#[test]
fn ocf_tester_passes_on_every_shipped_agent() {
    if !require_root("ocf-tester") {
        return;
    }
    require_resource_agents();
    let agents = shipped_agents();
    assert!(!agents.is_empty(), "no agent in resource-agents/");
    for agent in agents {
        let name = agent.file_name().expect("name").to_string_lossy().to_string();
        // Each shipped agent needs a fixture giving it something real to manage.
        let (_fixture, params): (Box<dyn std::any::Any>, Vec<String>) = match name.as_str() {
            "lvm-vg" => {
                let group = VolumeGroup::new();
                let params = vec![format!("volgrpname={}", group.name), "CRM_meta_epoch=3".to_string()];
                (Box::new(group), params)
            }
            other => {
                panic!("no ocf-tester fixture for resource-agents/{other}: add one to this test")
            }
        };
        let mut argv = vec!["ocf-tester".to_string(), "-n".to_string(), format!("test-{name}")];
        for param in &params {
            argv.push("-o".to_string());
            argv.push(param.clone());
        }
        // ocf-tester runs meta-data as `nobody`: test a copy in a world-traversable directory, so the
        // result does not depend on where the repository was cloned.
        let copy_directory = tempfile::Builder::new().prefix("clusterd-ocf-tester").tempdir().expect("tempdir");
        std::fs::set_permissions(copy_directory.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let copy = copy_directory.path().join(&name);
        std::fs::copy(&agent, &copy).expect("copy agent");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod agent");
        argv.push(copy.display().to_string());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let output = run(&argv);
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success() && text.contains("passed all tests"), "ocf-tester failed on {name}:\n{text}");
    }
}

#[tokio::test]
async fn lvm_vg_through_the_ocf_agent_refuses_a_stale_epoch() {
    if !require_root("lvm-vg epochs") {
        return;
    }
    require_resource_agents();
    let group = VolumeGroup::new();
    let directory = tempfile::tempdir().expect("tempdir");
    let host = host(directory.path());
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resource-agents/lvm-vg").canonicalize().expect("agent");
    let on = |owner: &str| {
        build_agent(
            &ocf_resource("vg", OcfAgentRef::Path(script.clone()), &[("volgrpname", &group.name), ("owner", owner)]),
            &host,
        )
    };
    let node1 = on("n1");
    let node2 = on("n2");
    check_lifecycle(node1.as_ref(), &context(5)).await.unwrap_or_else(|failures| panic!("{failures:#?}"));

    node1.start(&context(5)).await.expect("n1 starts at epoch 5");
    // Failover to n2 with a newer epoch takes the tags over.
    node2.start(&context(6)).await.expect("n2 starts at epoch 6");
    assert_eq!(node2.monitor(&context(6)).await, Ok(MonitorState::Running));
    assert_eq!(node1.monitor(&context(5)).await, Ok(MonitorState::NotRunning), "n1 lost ownership");
    // n1 acting on its old assignment is refused.
    let error = node1.start(&context(5)).await.expect_err("stale epoch");
    assert_eq!(error.status, OcfStatus::ErrGeneric);
    assert!(error.message.contains("newer than ours"), "{error}");
    node2.stop(&context(6)).await.expect("stop");
    let tags = must(&["vgs", "--noheadings", "-o", "vg_tags", &group.name]);
    assert_eq!(tags.trim(), "clusterd_epoch_6");
}
