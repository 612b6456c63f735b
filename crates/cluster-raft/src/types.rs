//! The openraft type configuration: our commands, outcomes and node records.

use std::io::Cursor;

use cluster_model::{Command, CommandOutcome, NodeInfo};

openraft::declare_raft_types!(
    /// Types of clusterd's Raft group.
    pub TypeConfig:
        D = Command,
        R = CommandOutcome,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type LogId = openraft::LogId<u64>;
pub(crate) type Vote = openraft::Vote<u64>;
pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type StorageError = openraft::StorageError<u64>;
pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// Wraps an I/O failure as an openraft storage error on `subject` (log, vote, snapshot …).
pub(crate) fn io_error(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    err: impl std::fmt::Display,
) -> StorageError {
    let io = std::io::Error::other(err.to_string());
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&io)).into()
}
