//! The pure core of clusterd: the replicated state, the commands that change it, and their validation.
//!
//! Nothing here does I/O: no clock, no files, no network, no randomness. The Raft adapter feeds
//! committed [`Command`]s into [`ClusterState::apply`] in log order on every node, so every node
//! computes the same state. Node identities are derived from names by [`node_id`] so that every
//! node agrees on them without a registry.

pub mod alerts;
mod command;
pub mod compat;
pub mod controller;
pub mod join;
mod lease;
mod limits;
mod node;
mod package;
pub mod relations;
mod settings;
mod state;
pub mod v3;
mod version;

pub use command::{Command, CommandOutcome, Report};
pub use lease::{
    keep_due, relay_voter, renew_through_relay, until_next_renewal, Grant, KeepLedger, LeaseHolder, LeaseStatus,
    LeaseTable,
};
pub use limits::{validate_key, validate_value, InvalidInput, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use node::{node_id, validate_node_name, NodeInfo};
pub use package::{Desired, Event, Failure, NodeRecord, PackageState, Phase, Redefinition, ResourceStatus, Role};
pub use settings::{FenceConfig, SettingError, Settings};
pub use state::{ClusterState, EVENT_HISTORY};
pub use version::{ClusterVersion, NeedsVersion};
