//! When to build a snapshot: the pure rule behind the snapshot trigger of `node.rs`.
//!
//! A snapshot is due once `snapshot_period` entries, or as many commands (an entry can carry a
//! batch of them, see proposer.rs), were applied since the last one, **and** the log grew by at
//! least the size of the last snapshot since then.
//!
//! The second condition bounds the snapshot bytes written by the log bytes written: a large state
//! is no longer rewritten every `snapshot_period` writes. Measured at 18,000 writes/s with 21 MB of
//! state: a snapshot every 0.55 s on each node, the log's fsyncs stalled up to 50 ms behind their
//! writeback, and the leader (whose heartbeats wait for its own fsync in openraft 0.9) was
//! deposed. The log kept in memory between snapshots stays below about the size of the state.

/// Where the last snapshot was triggered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotTrigger {
    /// Log index applied.
    pub(crate) index: u64,
    /// Commands applied (since the process started).
    pub(crate) commands: u64,
    /// Bytes appended to the log (since it was opened).
    pub(crate) log_bytes: u64,
}

/// Where the node is now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SnapshotProgress {
    /// Log index applied.
    pub(crate) applied: u64,
    /// Log index of the current snapshot (built here or installed from the leader).
    pub(crate) snapshot: u64,
    /// Commands applied (since the process started).
    pub(crate) commands: u64,
    /// Bytes appended to the log (since it was opened).
    pub(crate) log_bytes: u64,
    /// Size of the last snapshot's data.
    pub(crate) snapshot_bytes: u64,
}

/// Whether a snapshot is due; `period` is the `snapshot_period` setting.
pub(crate) fn snapshot_due(now: SnapshotProgress, last: SnapshotTrigger, period: u64) -> bool {
    let since = now.snapshot.max(last.index);
    let enough_writes = now.applied >= since + period || now.commands >= last.commands + period;
    enough_writes && now.log_bytes >= last.log_bytes + now.snapshot_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(applied: u64, commands: u64, log_bytes: u64, snapshot_bytes: u64) -> SnapshotProgress {
        SnapshotProgress { applied, snapshot: 0, commands, log_bytes, snapshot_bytes }
    }

    #[test]
    fn a_small_state_is_snapshotted_every_period_of_entries_or_commands() {
        let last = SnapshotTrigger::default();
        assert!(!snapshot_due(progress(99, 99, 10_000, 500), last, 100));
        assert!(snapshot_due(progress(100, 100, 10_000, 500), last, 100));
        // 10 entries carrying 100 commands.
        assert!(snapshot_due(progress(10, 100, 10_000, 500), last, 100));
    }

    #[test]
    fn a_large_state_waits_until_the_log_outgrew_it() {
        let last = SnapshotTrigger { index: 1_000, commands: 5_000, log_bytes: 1_000_000 };
        let state = 21_000_000;
        assert!(!snapshot_due(progress(2_000, 15_000, 1_000_000 + state - 1, state), last, 10_000));
        assert!(snapshot_due(progress(2_000, 15_000, 1_000_000 + state, state), last, 10_000));
        // Enough bytes but not enough writes (a few huge values).
        assert!(!snapshot_due(progress(1_005, 5_005, 1_000_000 + state, state), last, 10_000));
    }

    #[test]
    fn a_snapshot_installed_from_the_leader_restarts_the_entry_count() {
        let now = SnapshotProgress { applied: 1_050, snapshot: 1_000, commands: 60, log_bytes: 10, snapshot_bytes: 0 };
        assert!(!snapshot_due(now, SnapshotTrigger::default(), 100));
    }
}
