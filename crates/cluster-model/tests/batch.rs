//! `Command::Batch` (several client writes in one Raft entry) applies exactly like its commands
//! applied one by one, in order.

use cluster_model::{ClusterState, Command, CommandOutcome};

fn commands() -> Vec<Command> {
    vec![
        Command::KvSet { key: "a".into(), value: "1".into() },
        // Sees the write before it in the same batch.
        Command::KvCas { key: "a".into(), expected: Some("1".into()), new: "2".into() },
        Command::KvCas { key: "a".into(), expected: Some("1".into()), new: "3".into() },
        Command::KvDel { key: "missing".into() },
        Command::SetSetting { name: "snapshot_period".into(), value: "not a number".into() },
        Command::PkgRun { name: "unknown".into(), node: None, at_ms: 5 },
        Command::KvSet { key: "b".into(), value: "x".into() },
        Command::KvDel { key: "b".into() },
    ]
}

#[test]
fn a_batch_applies_like_its_commands_one_by_one() {
    let mut one_by_one = ClusterState::default();
    let expected: Vec<CommandOutcome> = commands().iter().map(|command| one_by_one.apply(command)).collect();

    let mut batched = ClusterState::default();
    let outcome = batched.apply(&Command::Batch(commands()));

    assert_eq!(outcome, CommandOutcome::Batch(expected.clone()));
    assert_eq!(batched, one_by_one);
    assert_eq!(batched.get("a").map(String::as_str), Some("2"));
    assert_eq!(expected[2], CommandOutcome::CasMismatch { current: Some("2".into()) });
    assert!(matches!(expected[4], CommandOutcome::Rejected { .. }), "{:?}", expected[4]);
    assert!(matches!(expected[5], CommandOutcome::Rejected { .. }), "{:?}", expected[5]);
}

#[test]
fn an_empty_batch_changes_nothing() {
    let mut state = ClusterState::default();
    assert_eq!(state.apply(&Command::Batch(Vec::new())), CommandOutcome::Batch(Vec::new()));
    assert_eq!(state, ClusterState::default());
}

#[test]
fn the_batch_variant_comes_last_so_earlier_commands_keep_their_encoding() {
    // postcard encodes an enum variant as its index: appending Batch at the end leaves every
    // entry written by v0.1.0 readable, and a lone write (never wrapped) encodes as before.
    let set = postcard::to_allocvec(&Command::KvSet { key: "k".into(), value: "v".into() }).unwrap();
    assert_eq!(set, [0, 1, b'k', 1, b'v']);
    // Index 24: after NodeWatchdog (18), LeasesSettled, SetAlert, AlertsDelivered, SetRole and
    // NodeCapacity (new variants go after Batch).
    let batch = postcard::to_allocvec(&Command::Batch(Vec::new())).unwrap();
    assert_eq!(batch, [24, 0]);
}
