//! Watchdog backends without a watchdog device: the lab backend against a datagram socket this test
//! binds (speaking the protocol of `crates/cluster-lab/src/watchdog.rs`), the Linux backend's errors
//! for a missing device, and the recording fake.
//!
//! Untested here: arming, petting and magic close on a real `/dev/watchdog` (no watchdog driver on
//! this machine, and softdog cannot be loaded).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use cluster_host::{open_watchdog, FakeWatchdog, Watchdog, WatchdogError};

/// Binds a datagram socket like the lab supervisor's.
fn lab_socket(directory: &Path) -> (UnixDatagram, String) {
    let path = directory.join("watchdog.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    (socket, format!("lab:{}", path.display()))
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buffer = [0u8; 256];
    let length = socket.recv(&mut buffer).expect("a datagram");
    String::from_utf8(buffer[..length].to_vec()).unwrap()
}

fn nothing_pending(socket: &UnixDatagram) -> bool {
    socket.set_nonblocking(true).unwrap();
    let mut buffer = [0u8; 256];
    let pending = socket.recv(&mut buffer).is_ok();
    socket.set_nonblocking(false).unwrap();
    !pending
}

#[test]
fn lab_watchdog_sends_the_lab_protocol_datagrams() {
    let directory = tempfile::tempdir().unwrap();
    let (socket, device) = lab_socket(directory.path());
    let watchdog = open_watchdog(&device).unwrap();
    let socket_path = directory.path().join("watchdog.sock");
    assert_eq!(watchdog.describe(), format!("lab watchdog {}", socket_path.display()));
    assert!(!watchdog.is_armed());

    watchdog.arm(Duration::from_millis(800)).unwrap();
    assert_eq!(receive(&socket), "arm 800");
    assert!(watchdog.is_armed());
    assert_eq!(watchdog.timeout(), Some(Duration::from_millis(800)));

    watchdog.pet().unwrap();
    watchdog.pet().unwrap();
    assert_eq!(receive(&socket), "pet");
    assert_eq!(receive(&socket), "pet");

    // Re-arming changes the timeout; sub-millisecond parts are dropped (never lengthened).
    watchdog.arm(Duration::from_micros(1_500_900)).unwrap();
    assert_eq!(receive(&socket), "arm 1500");
    assert_eq!(watchdog.timeout(), Some(Duration::from_millis(1500)));

    watchdog.disarm().unwrap();
    assert_eq!(receive(&socket), "disarm");
    assert!(!watchdog.is_armed());
    assert_eq!(watchdog.timeout(), None);

    // Disarmed: pet is refused locally (nothing sent); disarm again is a no-op.
    let error = watchdog.pet().unwrap_err();
    assert_eq!(error.to_string(), format!("watchdog {} is not armed", socket_path.display()));
    watchdog.disarm().unwrap();
    assert!(nothing_pending(&socket));
}

#[test]
fn lab_watchdog_refuses_a_zero_timeout() {
    let directory = tempfile::tempdir().unwrap();
    let (socket, device) = lab_socket(directory.path());
    let watchdog = open_watchdog(&device).unwrap();
    let error = watchdog.arm(Duration::from_micros(999)).unwrap_err();
    assert!(matches!(error, WatchdogError::InvalidTimeout { .. }), "{error}");
    assert!(!watchdog.is_armed());
    assert!(nothing_pending(&socket));
}

#[test]
fn lab_watchdog_without_supervisor_names_the_socket() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("n1").join("watchdog.sock");
    let watchdog = open_watchdog(&format!("lab:{}", path.display())).unwrap();
    let error = watchdog.arm(Duration::from_secs(1)).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "watchdog device {} does not exist (load a watchdog driver, e.g. `modprobe softdog`, or fix the configured device)",
            path.display()
        )
    );
    assert!(!watchdog.is_armed());

    // A socket file nobody serves any more (the supervisor died): connection refused, path named.
    let stale = directory.path().join("stale.sock");
    drop(UnixDatagram::bind(&stale).unwrap());
    let watchdog = open_watchdog(&format!("lab:{}", stale.display())).unwrap();
    let error = watchdog.arm(Duration::from_secs(1)).unwrap_err();
    assert!(error.to_string().starts_with(&format!("failed to arm watchdog {}: ", stale.display())), "{error}");
    assert!(!watchdog.is_armed());
}

#[test]
fn lab_device_must_be_an_absolute_path() {
    let error = open_watchdog("lab:run/watchdog.sock").err().unwrap();
    assert_eq!(
        error.to_string(),
        "invalid watchdog device \"lab:run/watchdog.sock\": expected lab:/absolute/path/to/watchdog.sock"
    );
}

#[test]
fn missing_linux_device_is_a_clear_error_naming_the_path() {
    let error = open_watchdog("/dev/watchdog-clusterd-test-missing").err().unwrap();
    assert!(matches!(error, WatchdogError::NotFound { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "watchdog device /dev/watchdog-clusterd-test-missing does not exist (load a watchdog driver, e.g. `modprobe softdog`, or fix the configured device)"
    );
}

#[test]
fn missing_dev_watchdog_on_this_machine() {
    // The real default path: on a machine without a watchdog driver (this one), opening says so.
    if Path::new("/dev/watchdog").exists() {
        eprintln!("/dev/watchdog exists here: not arming it from a test (it would reset the machine if the test died)");
        return;
    }
    let error = open_watchdog("/dev/watchdog").err().unwrap();
    assert!(error.to_string().starts_with("watchdog device /dev/watchdog does not exist"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn fake_watchdog_records_calls_and_says_when_it_would_reset() {
    let fake = FakeWatchdog::new();
    let watchdog: &dyn Watchdog = &fake;
    assert!(matches!(watchdog.pet(), Err(WatchdogError::NotArmed { .. })));
    assert_eq!(fake.reset_deadline(), None);

    let start = tokio::time::Instant::now();
    watchdog.arm(Duration::from_millis(500)).unwrap();
    assert_eq!(fake.reset_deadline(), Some(start + Duration::from_millis(500)));
    tokio::time::advance(Duration::from_millis(400)).await;
    watchdog.pet().unwrap();
    tokio::time::advance(Duration::from_millis(450)).await;
    assert!(!fake.would_have_reset(tokio::time::Instant::now()));
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(fake.would_have_reset(tokio::time::Instant::now()));

    fake.fail_next(WatchdogError::NotArmed { device: "fake".into() });
    assert!(watchdog.pet().is_err());

    fake.set_nowayout(true);
    assert!(matches!(watchdog.disarm(), Err(WatchdogError::Nowayout { .. })));
    assert!(watchdog.is_armed());
    fake.set_nowayout(false);
    watchdog.disarm().unwrap();
    assert!(!watchdog.is_armed());
    assert_eq!(fake.pets(), 1);
    assert_eq!(
        fake.calls(),
        vec!["pet (not armed)", "arm 500ms", "pet", "pet (failed)", "disarm (nowayout)", "disarm"]
    );
}
