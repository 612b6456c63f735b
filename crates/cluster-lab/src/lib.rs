//! The clusterd test lab: multi-node clusters in network namespaces on one machine, fault injection, an
//! outside observer and the checkers that judge a run (DESIGN.md §9). Not shipped to production nodes.
//!
//! Codemap:
//! - [`lab`]: bring a lab up and down, run commands in nodes, inject faults (kill, pause, partition, stalled disk, …).
//! - [`partition`]: partitions as data (`n1,n2 / n3`, `n1 -> n2`).
//! - [`observer`]: samples VIPs, mounts, processes and client reachability on one monotonic clock.
//! - [`history`]: the observer's records, intervals, the split-brain checker and failover timings (pure).
//! - [`linearizability`]: a per-key Wing–Gong checker for key-value histories (pure).
//! - [`nemesis`]: random fault schedules from a seed (pure) and the key-value nemesis run.
//! - [`keepalived`]: keepalived nodes and the failover benchmark, generic over what owns the VIP.
//! - [`failover_bench`]: clusterd and keepalived failover side by side, phases, `pkg move`.
//! - [`scale_bench`]: many small packages on a clusterd lab: request times, idle CPU, relocation of a killed node.
//! - [`watchdog`]: the emulated watchdog devices and the lab supervisor that serves them.
//! - [`fence`]: the lab fence agent (fence-agents convention).
//!
//! **Architecture Invariant:** the lab never changes the root network namespace (interfaces, addresses,
//! routes, firewall) and every namespace, mount, loop device, cgroup and process it creates is found again and
//! removed by [`lab::Lab::down`] from names alone, without the state file.

pub mod failover_bench;
pub mod fence;
pub mod history;
pub mod keepalived;
pub mod lab;
pub mod linearizability;
pub mod nemesis;
pub mod observer;
pub mod partition;
pub mod promotion_bench;
pub mod scale_bench;
pub mod sys;
pub mod watchdog;
