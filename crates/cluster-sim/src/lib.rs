//! Deterministic simulation of clusterd's package ownership protocol (STYLE 21, issue 5 item 8).
//!
//! One seed drives everything: clock rates, message loss and delay, partitions, pauses, crashes,
//! operator commands, operation durations. There is no real time, no thread, no other source of
//! randomness, so a seed replays exactly. The pure code of `cluster-model` runs unchanged:
//! `ClusterState::apply` on every node, `controller::plan` on the leader, `LeaseHolder` on every
//! node and `LeaseTable` on the leader. The simulator models the rest (Raft as an abstract log,
//! the network, the executor and the watchdog) and checks S1 after every event.
//!
//! ```text
//!                     ┌──────────────── Sim (one global time, one event queue, one StdRng) ───────────────┐
//!                     │                                                                                     │
//!   nemesis ─────────>│  faults.rs: crash / clusterd crash / pause / partition / pkg move,stop,run /      │
//!   (fault phase)     │             node standby,online      heal phase: heal all, operator cleanup       │
//!                     │                                                                                     │
//!                     │  raft.rs: global committed log ── Append{commit} ──> node.applied (its prefix)     │
//!                     │           effective leader, elections 150–600 ms, deposed leaders                 │
//!                     │                                                                                     │
//!                     │   node i (node.rs)                                    leader L                     │
//!                     │   ┌──────────────────────────────┐  Renewal{s}        ┌─────────────────────────┐ │
//!                     │   │ Clock (rate 1 ± ρ, own origin)│ ────────────────> │ confirm quorum; LeaseTable│ │
//!                     │   │ LeaseHolder          <───────────── Grant{s, c} ── │ controller::plan(state,  │ │
//!                     │   │ ClusterState (applied prefix) │                   │   View) → commit / fence │ │
//!                     │   │ executor.rs: start/stop/report│ ─── Propose ────> │ (controller.rs)          │ │
//!                     │   │ watchdog (stop_budget timeout)│                   └─────────────────────────┘ │
//!                     │   └──────────────────────────────┘                                                │
//!                     │          │ records = ground truth of active resources                             │
//!                     │          v                                                                        │
//!                     │  invariants/: S1, anti-affinity, primaries after every event · start epochs and  │
//!                     │  dependency order at starts and orderly stops · liveness after heal               │
//!                     └─────────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Package relations (issue 13) run with [`SimConfig::with_relations`] ([`relation_packages`]): the
//! executor promotes and demotes instances as the replicated role says and starts a dependent
//! only once what it needs runs on its node.
//!
//! Entry point: [`run`] with a [`SimConfig`]; a failure is a [`Violation`] that prints the seed,
//! the step, the simulated time, the last events, and the command that replays it.

mod bootstrap;
mod clock;
mod config;
mod controller;
mod executor;
mod faults;
mod invariants;
mod leases;
mod net;
mod node;
mod raft;
mod sim;

pub use bootstrap::{default_packages, package_text, relation_packages, witness_packages};
pub use config::{Scenario, SimConfig};
pub use sim::{run, Summary, Violation};
