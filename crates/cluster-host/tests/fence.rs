//! `AgentFencer` with real processes: small shell agents this test writes (recording stdin, failing,
//! hanging with a child, killed by a signal) and Debian's `fence_dummy` (package `fence-agents`; the
//! tests that need it skip with a message when it is missing, and fail instead when `CI=true`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cluster_host::{AgentExit, AgentFencer, FenceAction, FenceDevice, FenceError, Fencer};

const FENCE_DUMMY: &str = "/usr/sbin/fence_dummy";
const TIMEOUT: Duration = Duration::from_secs(20);

const RECORDING_AGENT: &str = r#"#!/bin/sh
input=$(cat)
record=$(printf '%s\n' "$input" | sed -n 's/^record=//p')
printf 'args=%s\n%s\n' "$#" "$input" > "$record"
"#;

const FAILING_AGENT: &str = r#"#!/bin/sh
cat > /dev/null
for i in 1 2 3 4 5 6 7; do echo "line $i" >&2; done
echo "the verdict on stdout"
exit 3
"#;

const STDOUT_ONLY_FAILING_AGENT: &str = r#"#!/bin/sh
cat > /dev/null
echo "Failed: node n9 is not verified off"
exit 1
"#;

const HANGING_AGENT: &str = r#"#!/bin/sh
pidfile=$(sed -n 's/^pidfile=//p')
echo "hanging agent started" >&2
sleep 300 &
echo "$$ $!" > "$pidfile"
wait
"#;

const SELF_KILLING_AGENT: &str = "#!/bin/sh\ncat > /dev/null\nkill -9 $$\n";

const NOT_READING_AGENT: &str = "#!/bin/sh\nexit 0\n";

/// The agents, written once before any test spawns a process (so no forked child holds a script
/// open for writing, which would make its exec fail with ETXTBSY).
fn agents() -> &'static Path {
    static AGENTS: OnceLock<tempfile::TempDir> = OnceLock::new();
    AGENTS
        .get_or_init(|| {
            let directory = tempfile::tempdir().unwrap();
            for (name, text) in [
                ("fence_recording", RECORDING_AGENT),
                ("fence_failing", FAILING_AGENT),
                ("fence_stdout_only", STDOUT_ONLY_FAILING_AGENT),
                ("fence_hanging", HANGING_AGENT),
                ("fence_self_killing", SELF_KILLING_AGENT),
                ("fence_not_reading", NOT_READING_AGENT),
            ] {
                let path = directory.path().join(name);
                std::fs::write(&path, text).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            directory
        })
        .path()
}

fn agent(name: &str) -> String {
    agents().join(name).display().to_string()
}

fn device(agent: &str, params: &[(&str, &str)]) -> FenceDevice {
    FenceDevice {
        agent: agent.to_string(),
        params: params.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect::<BTreeMap<_, _>>(),
    }
}

/// True when `path` exists. Missing: skip with a message, except in CI (`CI=true`), where it fails.
fn require_tool(test: &str, path: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs {path} (Debian package fence-agents) and CI=true: refusing to skip");
    }
    eprintln!("skipping {test}: {path} is missing (install fence-agents)");
    false
}

#[tokio::test]
async fn agent_gets_name_value_lines_on_stdin_and_no_arguments() {
    let scratch = tempfile::tempdir().unwrap();
    let record = scratch.path().join("stdin.txt");
    let record_value = record.display().to_string();
    let fencer = AgentFencer;

    let without_plug =
        device(&agent("fence_recording"), &[("record", &record_value), ("ip", "10.0.0.5"), ("x", "a b=c")]);
    fencer.fence(&without_plug, "n2", FenceAction::Off, TIMEOUT).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        format!("args=0\naction=off\nip=10.0.0.5\nrecord={record_value}\nx=a b=c\nnodename=n2\nplug=n2\n")
    );

    let with_port = device(&agent("fence_recording"), &[("record", &record_value), ("port", "vm-2")]);
    fencer.fence(&with_port, "n2", FenceAction::Reboot, TIMEOUT).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        format!("args=0\naction=reboot\nport=vm-2\nrecord={record_value}\nnodename=n2\n")
    );
}

#[tokio::test]
async fn failing_agent_reports_exit_code_and_last_stderr_lines() {
    let failing = agent("fence_failing");
    let error = AgentFencer.fence(&device(&failing, &[]), "n1", FenceAction::Off, TIMEOUT).await.unwrap_err();
    assert_eq!(error.exit_code(), Some(3));
    assert_eq!(
        error.to_string(),
        format!("failed to fence node n1 with {failing} (action off): exit 3: line 3 | line 4 | line 5 | line 6 | line 7 (stdout: the verdict on stdout)")
    );
}

#[tokio::test]
async fn failing_agent_that_prints_only_on_stdout_is_quoted_from_stdout() {
    // The lab's fence agent (and some fence-agents) print their failure on stdout.
    let failing = agent("fence_stdout_only");
    let error = AgentFencer.fence(&device(&failing, &[]), "n9", FenceAction::Off, TIMEOUT).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("failed to fence node n9 with {failing} (action off): exit 1: Failed: node n9 is not verified off")
    );
}

#[tokio::test]
async fn agent_killed_by_a_signal_is_a_failure() {
    let error = AgentFencer
        .fence(&device(&agent("fence_self_killing"), &[]), "n1", FenceAction::Off, TIMEOUT)
        .await
        .unwrap_err();
    match error {
        FenceError::Failed { exit, .. } => assert_eq!(exit, AgentExit::Signal(9)),
        other => panic!("expected a failure, got {other}"),
    }
}

#[tokio::test]
async fn agent_exiting_zero_without_reading_stdin_succeeds() {
    AgentFencer
        .fence(&device(&agent("fence_not_reading"), &[("a", "1")]), "n1", FenceAction::Monitor, TIMEOUT)
        .await
        .unwrap();
}

fn is_gone(pid: i32) -> bool {
    // Gone, or a zombie waiting for its (new) parent: either way it runs no more.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[tokio::test]
async fn hanging_agent_is_killed_with_its_whole_process_group() {
    let scratch = tempfile::tempdir().unwrap();
    let pidfile: PathBuf = scratch.path().join("pids");
    let hanging = agent("fence_hanging");
    let timeout = Duration::from_millis(700);
    let started = Instant::now();
    let error = AgentFencer
        .fence(&device(&hanging, &[("pidfile", &pidfile.display().to_string())]), "n3", FenceAction::Off, timeout)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed >= timeout, "returned after {elapsed:?}");
    assert!(elapsed < timeout + Duration::from_secs(2), "returned after {elapsed:?}");
    assert!(matches!(error, FenceError::TimedOut { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        format!("failed to fence node n3 with {hanging} (action off): timed out after 700ms, agent killed: hanging agent started")
    );
    let pids: Vec<i32> =
        std::fs::read_to_string(&pidfile).unwrap().split_whitespace().map(|pid| pid.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "agent and its child: {pids:?}");
    // The agent is reaped by the fencer; its `sleep` child (same process group) was killed too.
    for pid in pids {
        assert!(is_gone(pid), "process {pid} of the agent survived the timeout");
    }
}

#[tokio::test]
async fn missing_agent_and_invalid_device_are_refused_before_running_anything() {
    let error = AgentFencer
        .fence(&device("fence_clusterd_test_missing", &[]), "n1", FenceAction::Off, TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "failed to fence node n1 with fence_clusterd_test_missing (action off): agent not found (an absolute path, or a name in /usr/sbin or PATH)"
    );
    let error = AgentFencer
        .fence(&device(&agent("fence_recording"), &[("action", "on")]), "n1", FenceAction::Off, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(error, FenceError::InvalidDevice { .. }), "{error}");
}

#[tokio::test]
async fn fence_dummy_powers_off_and_on_through_its_status_file() {
    if !require_tool("fence_dummy_powers_off_and_on_through_its_status_file", FENCE_DUMMY) {
        return;
    }
    agents();
    let scratch = tempfile::tempdir().unwrap();
    let status_file = scratch.path().join("status");
    // A bare name: found in /usr/sbin.
    let dummy = device("fence_dummy", &[("type", "file"), ("status_file", &status_file.display().to_string())]);
    let fencer = AgentFencer;
    fencer.fence(&dummy, "n1", FenceAction::On, TIMEOUT).await.unwrap();
    assert_eq!(std::fs::read_to_string(&status_file).unwrap(), "on");
    fencer.fence(&dummy, "n1", FenceAction::Status, TIMEOUT).await.unwrap();
    fencer.fence(&dummy, "n1", FenceAction::Monitor, TIMEOUT).await.unwrap();

    fencer.fence(&dummy, "n1", FenceAction::Off, TIMEOUT).await.unwrap();
    assert_eq!(std::fs::read_to_string(&status_file).unwrap(), "off");
    // `status` of a node that is off: fence-agents exit 2, which is not a success.
    let error = fencer.fence(&dummy, "n1", FenceAction::Status, TIMEOUT).await.unwrap_err();
    assert_eq!(error.exit_code(), Some(2), "{error}");
    assert_eq!(
        error.to_string(),
        "failed to fence node n1 with fence_dummy (action status): exit 2: WARNING:root:Parse error: Ignoring unknown option 'plug=n1' (stdout: Status: OFF)"
    );

    fencer.fence(&dummy, "n1", FenceAction::Reboot, TIMEOUT).await.unwrap();
    assert_eq!(std::fs::read_to_string(&status_file).unwrap(), "on");
}

#[tokio::test]
async fn fence_dummy_of_type_fail_reports_its_error() {
    if !require_tool("fence_dummy_of_type_fail_reports_its_error", FENCE_DUMMY) {
        return;
    }
    agents();
    // `type=fail` never sees the node go off; power_timeout=1 makes it give up after 1 s (not 20 s).
    let dummy = device(FENCE_DUMMY, &[("type", "fail"), ("power_timeout", "1")]);
    let error = AgentFencer.fence(&dummy, "n1", FenceAction::Off, TIMEOUT).await.unwrap_err();
    assert_eq!(error.exit_code(), Some(1), "{error}");
    let message = error.to_string();
    assert!(
        message.starts_with("failed to fence node n1 with /usr/sbin/fence_dummy (action off): exit 1: "),
        "{message}"
    );
    assert!(message.contains("Failed: Timed out waiting to power OFF"), "{message}");
}
