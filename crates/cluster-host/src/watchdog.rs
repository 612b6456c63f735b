//! The node's watchdog: resets the node when `clusterd` stops petting it (DESIGN §5).
//!
//! One trait, two backends chosen by [`open_watchdog`] from the configured device, and a recording fake:
//!
//! ```text
//!   device "/dev/watchdog…"  ──▶ LinuxWatchdog: arm   = open(2) (starts the kernel timer)
//!                                                     + WDIOC_SETTIMEOUT, WDIOC_GETTIMEOUT (granted ≤ asked)
//!                                               pet   = WDIOC_KEEPALIVE
//!                                               disarm= write "V" (magic close) + close(2)
//!   device "lab:/run/…/watchdog.sock" ──▶ LabWatchdog: ASCII datagrams to the lab supervisor
//!                                               "arm <timeout_ms>" · "pet" · "disarm"
//!   unit tests ──▶ FakeWatchdog: records calls, computes when the node would be reset
//! ```
//!
//! **Dropping an armed watchdog does not disarm it**: the timer keeps running and the node is reset
//! unless a new handle (a restarted `clusterd`) arms and pets it in time. That is the point: a crashed
//! daemon must not leave the node's packages running unguarded.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The prefix of a lab watchdog device: `lab:/run/clusterlab/LAB/NODE/watchdog.sock`.
const LAB_PREFIX: &str = "lab:";

/// A watchdog that resets the node unless it is petted in time.
pub trait Watchdog: Send + Sync {
    /// Starts the timer with `timeout`; from now on the node is reset unless [`Watchdog::pet`] is called
    /// within it. Arming an armed watchdog sets the new timeout (and counts as a pet).
    fn arm(&self, timeout: Duration) -> Result<(), WatchdogError>;
    /// Restarts the timer. Fails when not armed.
    fn pet(&self) -> Result<(), WatchdogError>;
    /// Magic close: stops the timer (when the driver allows it). Disarming a disarmed watchdog succeeds.
    fn disarm(&self) -> Result<(), WatchdogError>;
    /// Whether the timer runs (through this handle).
    fn is_armed(&self) -> bool;
    /// The timeout in force, as granted by the driver (may be shorter than asked); `None` when disarmed.
    fn timeout(&self) -> Option<Duration>;
    /// For logs and `status`: `/dev/watchdog (softdog)` or `lab watchdog /run/…/watchdog.sock`.
    fn describe(&self) -> String;
    /// The shortest timeout this device can be armed with: a node whose stop budget is shorter
    /// cannot be protected by it.
    fn shortest_timeout(&self) -> Duration;
}

/// What went wrong with a watchdog. Every message names the device.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The configured device is not there.
    #[error("watchdog device {device} does not exist (load a watchdog driver, e.g. `modprobe softdog`, or fix the configured device)")]
    NotFound {
        /// The device path.
        device: String,
    },
    /// The device setting cannot be used.
    #[error("invalid watchdog device {device:?}: {reason}")]
    InvalidDevice {
        /// The setting as given.
        device: String,
        /// Why it is refused.
        reason: String,
    },
    /// The timeout cannot be expressed by this backend without lengthening it.
    #[error("watchdog {device} cannot be armed with a timeout of {requested:?}: {reason}")]
    InvalidTimeout {
        /// The device.
        device: String,
        /// The timeout asked for.
        requested: Duration,
        /// Why.
        reason: &'static str,
    },
    /// The driver granted a longer timeout than asked; the watchdog was disarmed again.
    #[error("watchdog {device} granted a timeout of {granted:?}, longer than the requested {requested:?}: refused and disarmed")]
    TimeoutTooLong {
        /// The device.
        device: String,
        /// The timeout asked for (rounded down to what the backend can express).
        requested: Duration,
        /// The timeout the driver reported.
        granted: Duration,
    },
    /// `pet` without `arm`.
    #[error("watchdog {device} is not armed")]
    NotArmed {
        /// The device.
        device: String,
    },
    /// The driver has `nowayout`: a magic close would not stop the timer, so the handle stays open
    /// and armed; the caller must keep petting or let the node be reset.
    #[error("cannot disarm watchdog {device}: the driver has nowayout set, the timer cannot be stopped (keep petting, or the node is reset)")]
    Nowayout {
        /// The device.
        device: String,
    },
    /// A system call failed.
    #[error("failed to {action} watchdog {device}: {source}")]
    Io {
        /// What was attempted: `open`, `set the timeout of`, `pet`, …
        action: &'static str,
        /// The device.
        device: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Opens the watchdog named by `device`: `lab:/path/to/watchdog.sock` for the lab's emulated device,
/// anything else is a Linux watchdog device such as `/dev/watchdog` or `/dev/watchdog1`.
///
/// Nothing is armed yet: for a Linux device this only checks that it exists (opening it would start
/// the timer); [`Watchdog::arm`] opens it.
pub fn open_watchdog(device: &str) -> Result<Arc<dyn Watchdog>, WatchdogError> {
    if let Some(socket) = device.strip_prefix(LAB_PREFIX) {
        return Ok(Arc::new(LabWatchdog::new(device, socket)?));
    }
    Ok(Arc::new(LinuxWatchdog::new(device)?))
}

/// The file whose presence gives the lab watchdog served at `socket` the `nowayout` property.
pub fn lab_nowayout_marker(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".nowayout");
    PathBuf::from(name)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------- Linux

/// The ioctl numbers of `linux/watchdog.h` (magic `'W'`, an `int` argument).
mod ioctls {
    #![allow(unreachable_pub)]

    use nix::libc::c_int;
    use nix::sys::ioctl::ioctl_num_type;

    const WATCHDOG_IOCTL_BASE: u8 = b'W';
    const INT_SIZE: usize = std::mem::size_of::<c_int>();

    /// `_IOR('W', 5, int)`.
    pub(super) const WDIOC_KEEPALIVE: ioctl_num_type = nix::request_code_read!(WATCHDOG_IOCTL_BASE, 5, INT_SIZE);
    /// `_IOWR('W', 6, int)`.
    pub(super) const WDIOC_SETTIMEOUT: ioctl_num_type = nix::request_code_readwrite!(WATCHDOG_IOCTL_BASE, 6, INT_SIZE);
    /// `_IOR('W', 7, int)`.
    pub(super) const WDIOC_GETTIMEOUT: ioctl_num_type = nix::request_code_read!(WATCHDOG_IOCTL_BASE, 7, INT_SIZE);

    // The `_bad` forms take the request number itself, so the constants above (checked against the
    // kernel header in the tests) are exactly what reaches ioctl(2).
    nix::ioctl_read_bad!(keepalive, WDIOC_KEEPALIVE, c_int);
    nix::ioctl_readwrite_bad!(set_timeout, WDIOC_SETTIMEOUT, c_int);
    nix::ioctl_read_bad!(get_timeout, WDIOC_GETTIMEOUT, c_int);
}

/// The timeout in whole seconds that is not longer than `timeout` (the Linux API counts seconds).
fn whole_seconds_not_longer(timeout: Duration) -> Option<u32> {
    let seconds = timeout.as_secs();
    if seconds == 0 {
        return None;
    }
    Some(u32::try_from(seconds.min(i32::MAX as u64)).unwrap_or(i32::MAX as u32))
}

/// The sysfs folder of a watchdog device: `/dev/watchdog` is the legacy alias of `watchdog0`.
fn sysfs_directory(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?.to_str()?;
    let name = if name == "watchdog" { "watchdog0" } else { name };
    Some(Path::new("/sys/class/watchdog").join(name))
}

struct LinuxState {
    /// The open device while armed.
    file: Option<File>,
    timeout: Option<Duration>,
}

/// A Linux watchdog device (`/dev/watchdog*`).
struct LinuxWatchdog {
    device: String,
    identity: Option<String>,
    sysfs: Option<PathBuf>,
    state: Mutex<LinuxState>,
}

impl LinuxWatchdog {
    fn new(device: &str) -> Result<Self, WatchdogError> {
        if device.is_empty() {
            return Err(WatchdogError::InvalidDevice { device: device.to_string(), reason: "empty path".into() });
        }
        match std::fs::metadata(device) {
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => {
                return Err(WatchdogError::NotFound { device: device.to_string() })
            }
            Err(source) => return Err(WatchdogError::Io { action: "inspect", device: device.to_string(), source }),
        }
        let sysfs = sysfs_directory(Path::new(device)).filter(|directory| directory.exists());
        let identity = sysfs
            .as_ref()
            .and_then(|directory| std::fs::read_to_string(directory.join("identity")).ok())
            .map(|identity| identity.trim().to_string())
            .filter(|identity| !identity.is_empty());
        Ok(LinuxWatchdog {
            device: device.to_string(),
            identity,
            sysfs,
            state: Mutex::new(LinuxState { file: None, timeout: None }),
        })
    }

    fn io_error(&self, action: &'static str, source: std::io::Error) -> WatchdogError {
        WatchdogError::Io { action, device: self.device.clone(), source }
    }

    fn nowayout(&self) -> bool {
        self.sysfs
            .as_ref()
            .and_then(|directory| std::fs::read_to_string(directory.join("nowayout")).ok())
            .is_some_and(|value| value.trim() == "1")
    }

    /// Writes the magic character and closes. On failure the file stays open (and armed).
    fn magic_close(&self, state: &mut LinuxState) -> Result<(), WatchdogError> {
        let Some(file) = state.file.as_mut() else {
            return Ok(());
        };
        if self.nowayout() {
            return Err(WatchdogError::Nowayout { device: self.device.clone() });
        }
        file.write_all(b"V").map_err(|source| self.io_error("write the magic close character to", source))?;
        state.file = None;
        state.timeout = None;
        Ok(())
    }
}

impl Watchdog for LinuxWatchdog {
    fn arm(&self, timeout: Duration) -> Result<(), WatchdogError> {
        let Some(seconds) = whole_seconds_not_longer(timeout) else {
            return Err(WatchdogError::InvalidTimeout {
                device: self.device.clone(),
                requested: timeout,
                reason: "the linux watchdog api counts whole seconds (at least 1 s)",
            });
        };
        let requested = Duration::from_secs(u64::from(seconds));
        let mut state = lock(&self.state);
        if state.file.is_none() {
            // std opens with O_CLOEXEC: agents and other children never inherit the device (which
            // would keep it busy for a restarted clusterd).
            let file =
                std::fs::OpenOptions::new().write(true).open(&self.device).map_err(|source| match source.kind() {
                    ErrorKind::NotFound => WatchdogError::NotFound { device: self.device.clone() },
                    _ => self.io_error("open", source),
                })?;
            // The timer runs from here, with the driver's default timeout.
            state.file = Some(file);
        }
        let fd = state.file.as_ref().map(AsRawFd::as_raw_fd).unwrap_or(-1);
        let mut value = seconds as nix::libc::c_int;
        // SAFETY: `fd` is the open watchdog device owned by `state.file` (held under the lock for the
        // whole call), and `value` is a live, writable `c_int`, the argument type of WDIOC_SETTIMEOUT.
        let set = unsafe { ioctls::set_timeout(fd, &mut value) };
        let mut granted_seconds: nix::libc::c_int = 0;
        let get = set.and_then(|_| {
            // SAFETY: as above; WDIOC_GETTIMEOUT writes one `c_int` into `granted_seconds`.
            unsafe { ioctls::get_timeout(fd, &mut granted_seconds) }
        });
        if let Err(errno) = get {
            let error = self.io_error("set the timeout of", std::io::Error::from(errno));
            if let Err(close_error) = self.magic_close(&mut state) {
                tracing::error!(error = %close_error, "watchdog left running after a failed arm");
            }
            return Err(error);
        }
        let granted = Duration::from_secs(u64::try_from(granted_seconds).unwrap_or(0));
        if granted > requested {
            if let Err(close_error) = self.magic_close(&mut state) {
                tracing::error!(error = %close_error, "watchdog left running after a refused arm");
            }
            return Err(WatchdogError::TimeoutTooLong { device: self.device.clone(), requested, granted });
        }
        if granted < requested {
            tracing::warn!(device = %self.device, ?requested, ?granted,
                "watchdog granted a shorter timeout than asked");
        }
        state.timeout = Some(granted);
        Ok(())
    }

    fn pet(&self) -> Result<(), WatchdogError> {
        let state = lock(&self.state);
        let Some(file) = state.file.as_ref() else {
            return Err(WatchdogError::NotArmed { device: self.device.clone() });
        };
        let mut ignored: nix::libc::c_int = 0;
        // SAFETY: the fd belongs to `file`, kept open by the lock we hold; WDIOC_KEEPALIVE takes an
        // `int *` that the kernel ignores, and `ignored` is a live `c_int`.
        unsafe { ioctls::keepalive(file.as_raw_fd(), &mut ignored) }
            .map_err(|errno| self.io_error("pet", std::io::Error::from(errno)))?;
        Ok(())
    }

    fn disarm(&self) -> Result<(), WatchdogError> {
        let mut state = lock(&self.state);
        self.magic_close(&mut state)
    }

    fn is_armed(&self) -> bool {
        lock(&self.state).file.is_some()
    }

    fn timeout(&self) -> Option<Duration> {
        lock(&self.state).timeout
    }

    fn describe(&self) -> String {
        match &self.identity {
            Some(identity) => format!("{} ({identity})", self.device),
            None => self.device.clone(),
        }
    }

    /// Whole seconds, at least 1 s, and at least the driver's `min_timeout` when sysfs tells it.
    fn shortest_timeout(&self) -> Duration {
        let driver_minimum = self
            .sysfs
            .as_ref()
            .and_then(|directory| std::fs::read_to_string(directory.join("min_timeout")).ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Duration::from_secs(driver_minimum.max(1))
    }
}

// ---------------------------------------------------------------- lab

/// The lab's emulated watchdog: datagrams to the per-node socket served by `clusterlab supervise`.
struct LabWatchdog {
    device: String,
    socket_path: PathBuf,
    socket: UnixDatagram,
    timeout: Mutex<Option<Duration>>,
}

impl LabWatchdog {
    fn new(device: &str, socket_path: &str) -> Result<Self, WatchdogError> {
        if !socket_path.starts_with('/') {
            return Err(WatchdogError::InvalidDevice {
                device: device.to_string(),
                reason: "expected lab:/absolute/path/to/watchdog.sock".into(),
            });
        }
        let io_error = |action, source| WatchdogError::Io { action, device: socket_path.to_string(), source };
        let socket = UnixDatagram::unbound().map_err(|source| io_error("create a socket for", source))?;
        // The trait is synchronous and called from the daemon's loop: never block on a full queue.
        socket.set_nonblocking(true).map_err(|source| io_error("configure a socket for", source))?;
        Ok(LabWatchdog {
            device: socket_path.to_string(),
            socket_path: PathBuf::from(socket_path),
            socket,
            timeout: Mutex::new(None),
        })
    }

    fn send(&self, action: &'static str, message: &str) -> Result<(), WatchdogError> {
        self.socket.send_to(message.as_bytes(), &self.socket_path).map(|_| ()).map_err(|source| match source.kind() {
            ErrorKind::NotFound => WatchdogError::NotFound { device: self.device.clone() },
            _ => WatchdogError::Io { action, device: self.device.clone(), source },
        })
    }
}

impl Watchdog for LabWatchdog {
    fn arm(&self, timeout: Duration) -> Result<(), WatchdogError> {
        let millis = timeout.as_millis();
        if millis == 0 {
            return Err(WatchdogError::InvalidTimeout {
                device: self.device.clone(),
                requested: timeout,
                reason: "the lab watchdog counts whole milliseconds (at least 1 ms)",
            });
        }
        let millis = u64::try_from(millis).unwrap_or(u64::MAX);
        let mut armed = lock(&self.timeout);
        self.send("arm", &format!("arm {millis}"))?;
        *armed = Some(Duration::from_millis(millis));
        Ok(())
    }

    fn pet(&self) -> Result<(), WatchdogError> {
        let armed = lock(&self.timeout);
        if armed.is_none() {
            return Err(WatchdogError::NotArmed { device: self.device.clone() });
        }
        self.send("pet", "pet")
    }

    fn disarm(&self) -> Result<(), WatchdogError> {
        let mut armed = lock(&self.timeout);
        if armed.is_none() {
            return Ok(());
        }
        // The emulated device's `nowayout`, as sysfs tells it for a Linux device: a file beside the
        // socket (`clusterlab nowayout NODE on`). The magic close would not stop it.
        if lab_nowayout_marker(&self.socket_path).exists() {
            return Err(WatchdogError::Nowayout { device: self.device.clone() });
        }
        self.send("disarm", "disarm")?;
        *armed = None;
        Ok(())
    }

    fn is_armed(&self) -> bool {
        lock(&self.timeout).is_some()
    }

    fn timeout(&self) -> Option<Duration> {
        *lock(&self.timeout)
    }

    fn describe(&self) -> String {
        format!("lab watchdog {}", self.device)
    }

    fn shortest_timeout(&self) -> Duration {
        Duration::from_millis(1)
    }
}

// ---------------------------------------------------------------- fake

#[derive(Debug, Default)]
struct FakeState {
    calls: Vec<String>,
    timeout: Option<Duration>,
    last_pet: Option<tokio::time::Instant>,
    fail_next: Option<WatchdogError>,
    refuse_disarm: bool,
    /// `shortest_timeout`; `None` means 1 ms.
    shortest: Option<Duration>,
}

/// A recording fake watchdog for unit tests of the daemon.
///
/// Calls are recorded as `arm 800ms`, `pet`, `disarm`; refused ones as `pet (not armed)`,
/// `disarm (nowayout)` or `CALL (failed)` (injected with [`FakeWatchdog::fail_next`]). Time is tokio's (so paused-time tests work):
/// [`FakeWatchdog::reset_deadline`] says when a real watchdog would reset the node.
#[derive(Debug, Clone, Default)]
pub struct FakeWatchdog {
    state: Arc<Mutex<FakeState>>,
}

impl FakeWatchdog {
    /// A disarmed fake whose calls succeed.
    pub fn new() -> Self {
        FakeWatchdog::default()
    }

    /// Every call so far, in order (failed calls included).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }

    /// How many pets succeeded (while armed).
    pub fn pets(&self) -> usize {
        lock(&self.state).calls.iter().filter(|call| *call == "pet").count()
    }

    /// Makes the next call fail with `error` (the state does not change).
    pub fn fail_next(&self, error: WatchdogError) {
        lock(&self.state).fail_next = Some(error);
    }

    /// Emulates `nowayout`: `disarm` fails with [`WatchdogError::Nowayout`] and the fake stays armed.
    pub fn set_nowayout(&self, nowayout: bool) {
        lock(&self.state).refuse_disarm = nowayout;
    }

    /// Acts like a device that cannot time out faster than `shortest` (a Linux watchdog: 1 s).
    pub fn set_shortest_timeout(&self, shortest: Duration) {
        lock(&self.state).shortest = Some(shortest);
    }

    /// When a real watchdog would reset the node: the last arm or pet plus the timeout; `None` when
    /// disarmed.
    pub fn reset_deadline(&self) -> Option<tokio::time::Instant> {
        let state = lock(&self.state);
        Some(state.last_pet? + state.timeout?)
    }

    /// Whether a real watchdog would have reset the node by `now`.
    pub fn would_have_reset(&self, now: tokio::time::Instant) -> bool {
        self.reset_deadline().is_some_and(|deadline| now > deadline)
    }

    fn record(&self, call: String) -> Result<MutexGuard<'_, FakeState>, WatchdogError> {
        let mut state = lock(&self.state);
        match state.fail_next.take() {
            Some(error) => {
                state.calls.push(format!("{call} (failed)"));
                Err(error)
            }
            None => {
                state.calls.push(call);
                Ok(state)
            }
        }
    }
}

impl Watchdog for FakeWatchdog {
    fn arm(&self, timeout: Duration) -> Result<(), WatchdogError> {
        let mut state = self.record(format!("arm {timeout:?}"))?;
        if state.shortest.is_some_and(|shortest| timeout < shortest) {
            state.calls.pop();
            state.calls.push(format!("arm {timeout:?} (too short)"));
            return Err(WatchdogError::InvalidTimeout {
                device: "fake".into(),
                requested: timeout,
                reason: "shorter than the device's shortest timeout",
            });
        }
        state.timeout = Some(timeout);
        state.last_pet = Some(tokio::time::Instant::now());
        Ok(())
    }

    fn pet(&self) -> Result<(), WatchdogError> {
        let mut state = self.record("pet".into())?;
        if state.timeout.is_none() {
            state.calls.pop();
            state.calls.push("pet (not armed)".into());
            return Err(WatchdogError::NotArmed { device: "fake".into() });
        }
        state.last_pet = Some(tokio::time::Instant::now());
        Ok(())
    }

    fn disarm(&self) -> Result<(), WatchdogError> {
        let mut state = self.record("disarm".into())?;
        if state.refuse_disarm && state.timeout.is_some() {
            state.calls.pop();
            state.calls.push("disarm (nowayout)".into());
            return Err(WatchdogError::Nowayout { device: "fake".into() });
        }
        state.timeout = None;
        state.last_pet = None;
        Ok(())
    }

    fn is_armed(&self) -> bool {
        lock(&self.state).timeout.is_some()
    }

    fn timeout(&self) -> Option<Duration> {
        lock(&self.state).timeout
    }

    fn describe(&self) -> String {
        "fake watchdog".into()
    }

    fn shortest_timeout(&self) -> Duration {
        lock(&self.state).shortest.unwrap_or(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn ioctl_numbers_match_linux_watchdog_h_on_x86_64() {
        // From linux/watchdog.h: _IOR('W', 5, int), _IOWR('W', 6, int), _IOR('W', 7, int).
        let expected: [nix::sys::ioctl::ioctl_num_type; 3] = [0x8004_5705, 0xC004_5706, 0x8004_5707];
        assert_eq!([ioctls::WDIOC_KEEPALIVE, ioctls::WDIOC_SETTIMEOUT, ioctls::WDIOC_GETTIMEOUT], expected);
    }

    #[test]
    fn timeouts_are_rounded_down_to_whole_seconds_never_up() {
        assert_eq!(whole_seconds_not_longer(Duration::from_millis(999)), None);
        assert_eq!(whole_seconds_not_longer(Duration::from_millis(1000)), Some(1));
        assert_eq!(whole_seconds_not_longer(Duration::from_millis(2999)), Some(2));
        assert_eq!(whole_seconds_not_longer(Duration::from_secs(u64::MAX)), Some(i32::MAX as u32));
    }

    #[test]
    fn legacy_device_maps_to_watchdog0_in_sysfs() {
        assert_eq!(sysfs_directory(Path::new("/dev/watchdog")), Some(PathBuf::from("/sys/class/watchdog/watchdog0")));
        assert_eq!(sysfs_directory(Path::new("/dev/watchdog1")), Some(PathBuf::from("/sys/class/watchdog/watchdog1")));
    }

    #[test]
    fn arm_of_an_existing_non_watchdog_file_fails_and_stays_disarmed() {
        // A regular file opens, but the timeout ioctl fails (ENOTTY): the error names the path and
        // the handle is left disarmed.
        let directory = std::env::temp_dir().join(format!("wd-test-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("not-a-watchdog");
        std::fs::write(&path, b"").unwrap();
        let watchdog = open_watchdog(path.to_str().unwrap()).unwrap();
        let error = watchdog.arm(Duration::from_secs(5)).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with(&format!("failed to set the timeout of watchdog {}", path.display())), "{message}");
        assert!(!watchdog.is_armed());
        assert_eq!(watchdog.timeout(), None);
        // The failed arm did a magic close: the file received the "V".
        assert_eq!(std::fs::read(&path).unwrap(), b"V");
        assert!(matches!(watchdog.pet(), Err(WatchdogError::NotArmed { .. })));
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn sub_second_timeout_is_refused_by_the_linux_backend() {
        let directory = std::env::temp_dir().join(format!("wd-test-short-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("dev");
        std::fs::write(&path, b"").unwrap();
        let watchdog = open_watchdog(path.to_str().unwrap()).unwrap();
        let error = watchdog.arm(Duration::from_millis(800)).unwrap_err();
        assert!(matches!(error, WatchdogError::InvalidTimeout { .. }), "{error}");
        // Refused before opening: nothing was written, nothing armed.
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert!(!watchdog.is_armed());
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
