//! systemd integration: the unit passes `systemd-analyze verify`, tmpfiles creates the socket
//! directory, and the daemon speaks the notify/watchdog protocol to a socket this test plays.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_testkit::TestCluster;

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(relative)
}

/// Returns false (skip) when the tool is missing outside CI; in CI a missing tool fails.
fn have(tool: &str) -> bool {
    let found =
        Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{tool} is required in CI");
        eprintln!("skipping: {tool} is not installed");
    }
    found
}

fn verify(unit_text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("clusterd.service");
    std::fs::write(&unit, unit_text).unwrap();
    // verify runs `man` for `Documentation=man:clusterd(8)`: give it the page the binary generates.
    let status = Command::new(env!("CARGO_BIN_EXE_clusterd"))
        .arg("--man-dir")
        .arg(dir.path().join("man/man8"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "clusterd --man-dir failed");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn the_unit_passes_systemd_analyze_verify_without_a_warning() {
    if !have("systemd-analyze") {
        return;
    }
    let shipped = std::fs::read_to_string(repo_file("systemd/clusterd.service")).unwrap();
    for required in ["Type=notify", "WatchdogSec=", "Restart=on-failure", "KillMode=process", "Delegate=yes"] {
        assert!(shipped.lines().any(|line| line.starts_with(required)), "unit lacks {required}");
    }
    // Point ExecStart at the binary under test: verify checks that it exists.
    let unit = shipped.replace("/usr/sbin/clusterd", env!("CARGO_BIN_EXE_clusterd"));
    let (ok, output) = verify(&unit);
    assert!(ok && output.trim().is_empty(), "systemd-analyze verify complained:\n{output}");
    // The check can fail: an unknown key is reported.
    let (_, output) = verify(&unit.replace("[Service]", "[Service]\nWatchdogSecs=1"));
    assert!(output.contains("Unknown key"), "verify did not notice a bad key:\n{output}");
}

#[test]
fn tmpfiles_creates_a_root_only_socket_directory() {
    if !have("systemd-tmpfiles") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let status = Command::new("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", root.path().display()))
        .arg(repo_file("systemd/clusterd.tmpfiles").canonicalize().unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let meta = std::fs::metadata(root.path().join("run/clusterd")).unwrap();
    assert!(meta.is_dir());
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o700);
}

fn receive_until(socket: &UnixDatagram, wanted: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(len) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..len]).to_string();
            let done = message.lines().any(|line| line == wanted);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
    panic!("no {wanted} within {limit:?}; got {seen:?}")
}

fn count_pets(socket: &UnixDatagram, window: Duration) -> usize {
    let deadline = Instant::now() + window;
    let mut buffer = [0u8; 4096];
    let mut pets = 0;
    while Instant::now() < deadline {
        if let Ok(len) = socket.recv(&mut buffer) {
            pets += String::from_utf8_lossy(&buffer[..len]).lines().filter(|l| *l == "WATCHDOG=1").count();
        }
    }
    pets
}

#[test]
fn ready_once_serving_and_watchdog_pets_only_while_the_main_loop_runs() {
    let cluster = TestCluster::new(env!("CARGO_BIN_EXE_clusterd"), 121, 1);
    let node = &cluster.nodes[0];
    let notify_path = cluster.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_clusterd"))
        .arg("--config")
        .arg(&node.config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(std::fs::File::create(&node.log).unwrap())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(&mut child);

    let messages = receive_until(&socket, "READY=1", Duration::from_secs(10));
    // READY means serving: the control socket answers right away.
    assert!(std::os::unix::net::UnixStream::connect(&node.socket).is_ok(), "READY before serving: {messages:?}");

    // WatchdogSec=200ms: pets every ~100 ms while healthy.
    let pets = count_pets(&socket, Duration::from_millis(600));
    assert!(pets >= 3, "only {pets} watchdog pets in 600 ms");

    // A frozen daemon stops petting, so systemd would kill and restart it.
    cluster_testkit::signal(guard.0, nix::sys::signal::Signal::SIGSTOP);
    let frozen = count_pets(&socket, Duration::from_millis(500));
    cluster_testkit::signal(guard.0, nix::sys::signal::Signal::SIGCONT);
    assert_eq!(frozen, 0, "pets while frozen");
    let resumed = count_pets(&socket, Duration::from_millis(600));
    assert!(resumed >= 3, "only {resumed} pets after resuming");

    // SIGTERM: STOPPING=1, then a clean exit.
    cluster_testkit::signal(guard.0, nix::sys::signal::Signal::SIGTERM);
    receive_until(&socket, "STOPPING=1", Duration::from_secs(5));
    let status = guard.0.wait().unwrap();
    assert!(status.success(), "clusterd exited with {status}");
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
