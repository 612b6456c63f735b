//! The pure core of clusterd: the replicated state, the commands that change it, and their validation.
//!
//! Nothing here does I/O: no clock, no files, no network, no randomness. The Raft adapter feeds
//! committed [`Command`]s into [`ClusterState::apply`] in log order on every node, so every node
//! computes the same state. Node identities are derived from names by [`node_id`] so that every
//! node agrees on them without a registry.

mod command;
mod limits;
mod node;
mod settings;
mod state;

pub use command::{Command, CommandOutcome};
pub use limits::{validate_key, validate_value, InvalidInput, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use node::{node_id, validate_node_name, NodeInfo};
pub use settings::{SettingError, Settings};
pub use state::ClusterState;
