//! The emulated watchdog: one Unix datagram socket per node, served by the lab supervisor
//! (`clusterlab --name LAB supervise`, started by `up` when watchdogs are enabled, killed by `down`).
//!
//! ```text
//!   clusterd ──"arm 800"──▶ /run/clusterlab/LAB/NODE/watchdog.sock ──▶ Watchdog::handle
//!            ──"pet"──────▶                                           (deadline = now + timeout)
//!            ──"disarm"───▶                                           (magic close; ignored when
//!                                                                      NODE/watchdog.sock.nowayout exists)
//!   supervisor tick: armed and past the deadline ──▶ reset: Lab::kill(NODE) (every process, link down),
//!                    wait reboot_delay ──▶ Lab::start(NODE) (clusterd started again)
//! ```

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::lab::{Lab, LabError};

/// One node's watchdog state machine (pure: time is an input).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watchdog {
    armed: Option<(Duration, Instant)>,
}

/// A datagram the watchdog does not understand.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid watchdog message {0:?}: expected `arm <timeout_ms>`, `pet` or `disarm`")]
pub struct InvalidMessage(pub String);

impl Watchdog {
    /// Handles one datagram received at `now`.
    pub fn handle(&mut self, message: &str, now: Instant) -> Result<(), InvalidMessage> {
        let mut words = message.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("arm"), Some(timeout), None) => {
                let millis: u64 = timeout.parse().map_err(|_| InvalidMessage(message.to_string()))?;
                if millis == 0 {
                    return Err(InvalidMessage(message.to_string()));
                }
                let timeout = Duration::from_millis(millis);
                self.armed = Some((timeout, now + timeout));
                Ok(())
            }
            (Some("pet"), None, None) => {
                if let Some((timeout, deadline)) = self.armed.as_mut() {
                    *deadline = now + *timeout;
                }
                Ok(())
            }
            (Some("disarm"), None, None) => {
                self.armed = None;
                Ok(())
            }
            _ => Err(InvalidMessage(message.to_string())),
        }
    }

    /// True when armed and not petted in time: the node must be reset.
    pub fn expired(&self, now: Instant) -> bool {
        self.armed.is_some_and(|(_, deadline)| now > deadline)
    }

    /// Whether it is armed.
    pub fn armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Forget everything (the node was reset or powered off).
    pub fn disarm(&mut self) {
        self.armed = None;
    }
}

fn serve_node(name: String, node: String) -> Result<(), LabError> {
    let lab = Lab::open(&name)?;
    let path = lab.paths().watchdog_socket(&node);
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).map_err(|error| crate::sys::io_error("failed to bind", &path, error))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .map_err(|error| crate::sys::io_error("failed to configure", &path, error))?;
    let reboot_delay = Duration::from_millis(lab.state().reboot_delay_ms);
    let nowayout_marker = lab.paths().watchdog_nowayout(&node);
    drop(lab);
    let mut watchdog = Watchdog::default();
    let mut buffer = [0u8; 256];
    loop {
        if let Ok(length) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
            // A `nowayout` device ignores the magic close and keeps counting.
            let nowayout = nowayout_marker.exists();
            if nowayout && message.trim() == "disarm" {
                eprintln!("watchdog {node}: nowayout: the magic close does not stop it");
            } else if let Err(error) = watchdog.handle(&message, Instant::now()) {
                eprintln!("watchdog {node}: {error}");
            }
        }
        if watchdog.expired(Instant::now()) {
            watchdog.disarm();
            let mut lab = Lab::open(&name)?;
            if !lab.node(&node)?.powered {
                // Powered off by someone else: a dead node's watchdog does not fire.
                continue;
            }
            eprintln!("watchdog {node}: not petted in time, resetting the node");
            crate::lab::record_fault(lab.paths(), "watchdog-reset", &node);
            if let Err(error) = lab.kill(&node) {
                eprintln!("watchdog {node}: reset failed: {error}");
                continue;
            }
            std::thread::sleep(reboot_delay);
            let mut lab = Lab::open(&name)?;
            if let Err(error) = lab.start(&node) {
                eprintln!("watchdog {node}: power on failed: {error}");
            }
            // Datagrams sent to the dead node's socket meanwhile are stale.
            while socket.recv(&mut buffer).is_ok() {}
        }
    }
}

/// Serves every node's watchdog socket until killed (the body of `clusterlab supervise`).
pub fn supervise(name: &str) -> Result<(), LabError> {
    let lab = Lab::open(name)?;
    let mut threads = Vec::new();
    for node in lab.node_names() {
        let name = name.to_string();
        threads.push(std::thread::spawn(move || serve_node(name, node)));
    }
    for thread in threads {
        if let Ok(Err(error)) = thread.join() {
            eprintln!("clusterlab supervise: {error}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_only_when_armed_and_not_petted() {
        let start = Instant::now();
        let mut watchdog = Watchdog::default();
        assert!(!watchdog.expired(start + Duration::from_secs(100)));
        watchdog.handle("arm 500", start).unwrap();
        assert!(!watchdog.expired(start + Duration::from_millis(400)));
        watchdog.handle("pet", start + Duration::from_millis(400)).unwrap();
        assert!(!watchdog.expired(start + Duration::from_millis(800)));
        assert!(watchdog.expired(start + Duration::from_millis(901)));
        watchdog.handle("disarm", start + Duration::from_millis(850)).unwrap();
        assert!(!watchdog.expired(start + Duration::from_secs(100)));
    }

    #[test]
    fn pet_without_arm_does_nothing() {
        let start = Instant::now();
        let mut watchdog = Watchdog::default();
        watchdog.handle("pet", start).unwrap();
        assert!(!watchdog.armed());
    }

    #[test]
    fn rejects_garbage() {
        let mut watchdog = Watchdog::default();
        let now = Instant::now();
        assert!(watchdog.handle("arm", now).is_err());
        assert!(watchdog.handle("arm 0", now).is_err());
        assert!(watchdog.handle("arm x", now).is_err());
        assert!(watchdog.handle("bark", now).is_err());
        assert!(!watchdog.armed());
    }
}
