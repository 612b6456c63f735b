//! Host operations behind small traits: network, mounts, block devices, processes and clock.
//!
//! Each trait has a Linux implementation (netlink through `rtnetlink`, `mount(2)`, cgroup v2 or process
//! groups, raw sockets for gratuitous ARP and unsolicited neighbour advertisements) and a recording fake
//! in [`fake`] for unit tests that need no privileges.
//!
//! [`Host`] bundles one handle of each; the composition root (`clusterd`, or a test) picks
//! [`Host::linux`] or [`fake::FakeHost`].
//!
//! **Namespaces:** the Linux implementations open their sockets on the calling thread, at call time. To act
//! inside another network namespace, call them from a dedicated thread that entered it (see
//! [`netns::run_in_netns`]), never from a tokio worker thread.

mod clock;
pub mod fake;
mod fence;
mod in_flight;
mod linux_mounts;
mod linux_net;
mod linux_process;
mod memory;
mod mount_records;
mod mounts;
mod net;
pub mod netns;
mod process;
mod process_group;
mod raw_packets;
mod service_cgroup;
mod watchdog;

use std::sync::Arc;

pub use clock::{lease_clock, Clock, TokioClock};
pub use fence::{
    AgentExit, AgentFencer, FakeFenceOutcome, FakeFencer, FenceAction, FenceCall, FenceDevice, FenceError, Fencer,
};
pub use linux_mounts::{LinuxBlockDevices, LinuxMounts};
pub use linux_net::LinuxNetwork;
pub use linux_process::{LinuxProcesses, ProcessConfig};
pub use memory::{release_free_memory, single_malloc_arena};
pub use mounts::{BlockDevices, BlockError, DeviceName, MountEntry, MountError, Mounts};
pub use net::{format_mac, AddressInfo, LinkInfo, NetError, Network};
pub use process::{CommandOutput, CommandSpec, KillMode, ProcessError, Processes, ServiceOutput, ServiceSpec, Signal};
pub use service_cgroup::{enter_daemon_cgroup, CgroupMoveError};
pub use watchdog::{lab_nowayout_marker, open_watchdog, FakeWatchdog, Watchdog, WatchdogError};

/// One handle to each kind of host operation. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    /// Addresses and links.
    pub network: Arc<dyn Network>,
    /// The mount table.
    pub mounts: Arc<dyn Mounts>,
    /// Finding and checking block devices.
    pub block_devices: Arc<dyn BlockDevices>,
    /// Supervised processes and one-shot commands.
    pub processes: Arc<dyn Processes>,
    /// Monotonic time and sleeping.
    pub clock: Arc<dyn Clock>,
}

impl Host {
    /// The real Linux host. Processes are placed in cgroup v2 under `config` (or process groups as a fallback).
    pub fn linux(config: ProcessConfig) -> Self {
        Host {
            network: Arc::new(LinuxNetwork::new()),
            mounts: Arc::new(LinuxMounts::new()),
            block_devices: Arc::new(LinuxBlockDevices::new()),
            processes: Arc::new(LinuxProcesses::new(config)),
            clock: Arc::new(TokioClock),
        }
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host { .. }")
    }
}
