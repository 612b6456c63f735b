//! Consensus for clusterd: openraft 0.9 with our durable storage and mutual-TLS transport, behind a
//! small interface ([`ConsensusNode`]) so that the rest of the daemon never sees openraft types.
//!
//! ```text
//!            ┌──────────── ConsensusNode (node.rs) ─────────────┐
//!  propose ─>│ client_write / ensure_linearizable / membership   │
//!  read    ─>│ transfer_leader, status, election driver (prevote)│
//!  peer RPC─>│ handle_peer                                       │
//!            └──┬───────────────┬────────────────────┬───────────┘
//!        LogStore (log_store.rs)  StateMachineStore   PeerNetwork (network.rs)
//!        segments + CRC + fsync   ClusterState +      TLS connections to peers
//!                                 snapshot files
//! ```

// openraft's StorageError is large and is what its storage traits return; boxing it here would
// only add conversions at every call.
#![allow(clippy::result_large_err)]

mod ack_clock;
mod compat;
mod election;
mod files;
mod leader_clock;
mod log_store;
mod network;
mod node;
mod proposer;
mod snapshot_policy;
mod spare_segment;
mod state_machine;
mod types;

pub use log_store::{LogOpenError, LogStore, RecoveryReport};
pub use node::{
    Confirmed, ConsensusError, ConsensusNode, ForwardError, LeadershipChanges, MemberVersion, NodeOptions, Timing,
};
pub use state_machine::{Applied, SnapshotOpenError, StateMachineStore, StateView};
pub use types::TypeConfig;
