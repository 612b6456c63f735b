//! Commands carried by the Raft log, and what applying one produced.

use serde::{Deserialize, Serialize};

/// A state change, proposed by the leader and applied by every node in log order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Store `value` under `key`, replacing any previous value.
    KvSet { key: String, value: String },
    /// Store `new` under `key` only if the current value is `expected` (`None`: the key is absent).
    KvCas {
        key: String,
        expected: Option<String>,
        new: String,
    },
    /// Remove `key`.
    KvDel { key: String },
    /// Change one cluster setting.
    SetSetting { name: String, value: String },
}

/// The result of applying one [`Command`]; identical on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// The command changed the state as asked.
    Applied,
    /// `kv del`: whether the key existed.
    Deleted { existed: bool },
    /// `kv cas`: the current value did not match; nothing changed.
    CasMismatch { current: Option<String> },
    /// The command was refused at apply time; nothing changed.
    Rejected { reason: String },
}
