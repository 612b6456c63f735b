//! openraft's storage conformance suite, run against our log store and state machine.

use cluster_raft::{LogStore, StateMachineStore, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct DiskBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for DiskBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, _report) = LogStore::open(&dir.path().join("raft")).expect("open log");
        let state_machine = StateMachineStore::open(&dir.path().join("raft")).expect("open state machine");
        Ok((dir, log, state_machine))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    if let Err(err) = Suite::test_all(DiskBuilder) {
        panic!("storage suite failed: {err}");
    }
}
