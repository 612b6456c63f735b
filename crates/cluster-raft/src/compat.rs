//! Earlier releases' formats inside the Raft adapter: v0.1.0's log entries (in its log records
//! and its `AppendEntries`), and the cluster version every part of this node writes.
//!
//! ```text
//!   state machine ──applies ActivateVersion / installs a snapshot──> SharedVersion
//!   SharedVersion ──> network (protocol 3 or 4), snapshot builder (data version 2 or 4),
//!                     log (record version 1 or 2, raised by the driver: log.raise_format)
//! ```

use std::io::Cursor;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use cluster_model::compat::{command_to_v0_1, v0_1};
use cluster_model::{ClusterVersion, NeedsVersion, NodeInfo};
use openraft::raft::AppendEntriesRequest;
use openraft::{EntryPayload, RaftTypeConfig};

use crate::types::{Entry, TypeConfig};

openraft::declare_raft_types!(
    /// v0.1.0's type configuration: its commands and outcomes, the same ids and nodes.
    pub(crate) TypeConfigV01:
        D = v0_1::Command,
        R = v0_1::CommandOutcome,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfigV01>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type EntryV01 = <TypeConfigV01 as RaftTypeConfig>::Entry;

/// An entry v0.1.0 wrote or sent, as this release holds it.
pub(crate) fn entry_from_v0_1(entry: EntryV01) -> Entry {
    let payload = match entry.payload {
        EntryPayload::Blank => EntryPayload::Blank,
        EntryPayload::Normal(command) => EntryPayload::Normal(command.into()),
        EntryPayload::Membership(membership) => EntryPayload::Membership(membership),
    };
    Entry { log_id: entry.log_id, payload }
}

/// `entry` as v0.1.0 reads it, or what in it v0.1.0 lacks.
pub(crate) fn entry_to_v0_1(entry: &Entry) -> Result<EntryV01, NeedsVersion> {
    let payload = match &entry.payload {
        EntryPayload::Blank => EntryPayload::Blank,
        EntryPayload::Normal(command) => EntryPayload::Normal(command_to_v0_1(command)?),
        EntryPayload::Membership(membership) => EntryPayload::Membership(membership.clone()),
    };
    Ok(EntryV01 { log_id: entry.log_id, payload })
}

pub(crate) fn append_from_v0_1(rpc: AppendEntriesRequest<TypeConfigV01>) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: rpc.vote,
        prev_log_id: rpc.prev_log_id,
        entries: rpc.entries.into_iter().map(entry_from_v0_1).collect(),
        leader_commit: rpc.leader_commit,
    }
}

pub(crate) fn append_to_v0_1(
    rpc: &AppendEntriesRequest<TypeConfig>,
) -> Result<AppendEntriesRequest<TypeConfigV01>, NeedsVersion> {
    Ok(AppendEntriesRequest {
        vote: rpc.vote,
        prev_log_id: rpc.prev_log_id,
        entries: rpc.entries.iter().map(entry_to_v0_1).collect::<Result<_, _>>()?,
        leader_commit: rpc.leader_commit,
    })
}

/// The cluster version of this node's applied state, shared by everything that writes.
#[derive(Debug, Clone)]
pub(crate) struct SharedVersion(Arc<AtomicU32>);

impl SharedVersion {
    pub(crate) fn new(version: ClusterVersion) -> SharedVersion {
        SharedVersion(Arc::new(AtomicU32::new(version.0)))
    }

    pub(crate) fn get(&self) -> ClusterVersion {
        ClusterVersion(self.0.load(Ordering::SeqCst))
    }

    pub(crate) fn set(&self, version: ClusterVersion) {
        self.0.store(version.0, Ordering::SeqCst);
    }

    /// The protocol this node speaks to its peers.
    pub(crate) fn protocol(&self) -> u8 {
        cluster_api::protocol_for(self.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_model::Command;
    use openraft::{CommittedLeaderId, LogId};

    #[test]
    fn entries_of_v0_1_commands_round_trip_and_newer_ones_name_their_version() {
        let log_id = LogId::new(CommittedLeaderId::new(1, 7), 3);
        let kv = Entry { log_id, payload: EntryPayload::Normal(Command::KvSet { key: "k".into(), value: "v".into() }) };
        let old = entry_to_v0_1(&kv).unwrap();
        assert_eq!(entry_from_v0_1(old), kv);
        let settled = Entry { log_id, payload: EntryPayload::Normal(Command::LeasesSettled { ceiling_us: 1 }) };
        let err = entry_to_v0_1(&settled).unwrap_err();
        assert_eq!(err.to_string(), "command `LeasesSettled` needs cluster version 0.2.0");
        let version = SharedVersion::new(ClusterVersion::V0_1);
        assert_eq!(version.protocol(), cluster_api::PROTOCOL_V0_1);
        version.set(ClusterVersion::V0_2);
        assert_eq!(version.protocol(), cluster_api::PROTOCOL_VERSION);
    }
}

/// v0.1.0's own bytes (compat/v0.1.0/fixtures.json, written by v0.1.0's code): every entry, log
/// record, snapshot and Raft payload decodes, and encodes back to exactly the same bytes.
#[cfg(test)]
mod fixture_tests {
    use std::collections::BTreeMap;

    use cluster_api::{decode_body, encode_as, frame_version, PROTOCOL_V0_1};
    use cluster_model::{ClusterState, Command, Phase};
    use openraft::error::{InstallSnapshotError, RaftError};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
        VoteResponse,
    };
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use super::*;
    use crate::types::Vote;

    pub(crate) fn fixtures(prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../compat/v0.1.0/fixtures.json");
        let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path}: {err}"));
        let all: BTreeMap<String, String> = serde_json::from_str(&text).expect("fixtures are a JSON object");
        let picked: BTreeMap<String, Vec<u8>> = all
            .into_iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, hex)| {
                (name, (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect())
            })
            .collect();
        assert!(!picked.is_empty(), "no fixture named {prefix}*");
        picked
    }

    fn exact<T: DeserializeOwned>(name: &str, bytes: &[u8]) -> T {
        let (value, rest) = postcard::take_from_bytes(bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert!(rest.is_empty(), "{name}: {} trailing bytes", rest.len());
        value
    }

    #[test]
    fn every_v0_1_entry_and_command_reads_and_writes_back_identically() {
        let entries = fixtures("entry/");
        assert_eq!(entries.len(), 32, "30 commands, a blank and a membership entry");
        for (name, bytes) in &entries {
            let entry = entry_from_v0_1(exact::<EntryV01>(name, bytes));
            let back = entry_to_v0_1(&entry).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(&postcard::to_allocvec(&back).unwrap(), bytes, "{name}");
        }
        let commands = fixtures("command/");
        let kinds: std::collections::BTreeSet<&str> =
            commands.iter().map(|(name, bytes)| Command::from(exact::<v0_1::Command>(name, bytes)).name()).collect();
        assert_eq!(kinds.len(), 19, "every command v0.1.0 had: {kinds:?}");
        for (name, bytes) in &commands {
            let command = Command::from(exact::<v0_1::Command>(name, bytes));
            assert_eq!(command.required_version(), ClusterVersion::V0_1, "{name}");
            assert_eq!(&postcard::to_allocvec(&command_to_v0_1(&command).unwrap()).unwrap(), bytes, "{name}");
        }
    }

    #[test]
    fn v0_1_log_records_are_read_and_written_in_its_format() {
        for (name, bytes) in fixtures("record/") {
            let (entry, next) = crate::log_store::tests_support::parse(&bytes);
            assert_eq!(next, bytes.len(), "{name}");
            assert_eq!(crate::log_store::tests_support::encode(&entry, ClusterVersion::V0_1), bytes, "{name}");
        }
    }

    #[test]
    fn a_v0_1_snapshot_is_read_and_written_back_identically_at_cluster_version_1() {
        let data = &fixtures("snapshot/data")["snapshot/data"];
        let state: ClusterState = crate::state_machine::decode_data(data).unwrap();
        assert_eq!(state.cluster_version, ClusterVersion::V0_1);
        assert_eq!(state.kv.get("app/config").map(String::as_str), Some("v2"));
        assert_eq!(state.settings.lease_ms, 2_000);
        assert_eq!(state.settings.grantor_wait_ceiling_us, None);
        assert!(state.settings.fencing.contains_key("n2"));
        assert_eq!(state.packages.len(), 3, "four applied, one removed");
        assert!(state.packages.values().all(|package| package.phase == Phase::Stopped || package.owner.is_some()));
        assert!(state.nodes["n1"].watchdog_device.is_none(), "NodeWatchdog said unusable");
        assert!(state.nodes["n3"].standby);
        assert!(state.events.len() > 20);
        assert_eq!(&crate::state_machine::tests_support::encode(&state), data);
        let empty = &fixtures("snapshot/data-empty")["snapshot/data-empty"];
        let state = crate::state_machine::decode_data(empty).unwrap();
        assert_eq!(state, ClusterState::genesis());
        assert_eq!(&crate::state_machine::tests_support::encode(&state), empty);
    }

    #[tokio::test]
    async fn a_v0_1_data_directory_opens() {
        // The snapshot file, vote and purge mark exactly as v0.1.0 wrote them, and a segment of its records.
        let dir = tempfile::tempdir().unwrap();
        let raft = dir.path().join("raft");
        std::fs::create_dir_all(raft.join("log")).unwrap();
        std::fs::write(raft.join("snapshot"), &fixtures("snapshot/file")["snapshot/file"]).unwrap();
        std::fs::write(raft.join("vote"), &fixtures("vote")["vote"]).unwrap();
        let records = fixtures("record/Membership");
        let mut segment = records["record/Membership"].clone();
        segment.resize(4096, 0);
        std::fs::write(raft.join("log").join(format!("{:020}.seg", 9)), segment).unwrap();
        let machine = crate::StateMachineStore::open(&raft).unwrap();
        let applied = machine.view();
        let applied = applied.read().unwrap();
        assert_eq!(applied.state.kv.get("app/config").map(String::as_str), Some("v2"));
        assert_eq!(applied.last_applied.unwrap().index, 39);
        assert_eq!(applied.membership.membership().voter_ids().count(), 3);
        let (log, report) = crate::LogStore::open(&raft).unwrap();
        assert_eq!((report.entries, report.truncated_tail), (1, None));
        assert_eq!(log.format(), ClusterVersion::V0_1);
        assert_eq!(log.entry_log_id(9).unwrap().index, 9);
        let vote: Vote = exact("vote", &fixtures("vote")["vote"][4..]);
        assert!(vote.is_committed());
    }

    /// Decodes a payload of protocol 3 as `T` (the same shape in both protocols) and writes it back.
    fn same_shape<T: DeserializeOwned + Serialize>(name: &str, bytes: &[u8]) -> T {
        assert_eq!(frame_version(bytes), Ok(PROTOCOL_V0_1), "{name}");
        let value: T = decode_body(bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(&encode_as(&value, PROTOCOL_V0_1).unwrap()[..], bytes, "{name}");
        value
    }

    #[test]
    fn every_v0_1_raft_payload_reads_and_writes_back_identically() {
        let payloads = fixtures("payload/");
        let append = &payloads["payload/append-entries"];
        let old: AppendEntriesRequest<TypeConfigV01> = decode_body(append).unwrap();
        let rpc = append_from_v0_1(old);
        assert_eq!(rpc.entries.len(), 4);
        assert_eq!(&encode_as(&append_to_v0_1(&rpc).unwrap(), PROTOCOL_V0_1).unwrap()[..], &append[..]);
        let _: AppendEntriesRequest<TypeConfigV01> =
            same_shape("heartbeat", &payloads["payload/append-entries-heartbeat"]);
        for (name, bytes) in payloads.iter().filter(|(name, _)| name.starts_with("payload/append-entries-answer/")) {
            let _: Result<AppendEntriesResponse<u64>, RaftError<u64>> = same_shape(name, bytes);
        }
        let _: VoteRequest<u64> = same_shape("vote", &payloads["payload/vote"]);
        let _: Result<VoteResponse<u64>, RaftError<u64>> = same_shape("vote answer", &payloads["payload/vote-answer"]);
        let install: InstallSnapshotRequest<TypeConfig> =
            same_shape("install snapshot", &payloads["payload/install-snapshot"]);
        assert!(crate::state_machine::decode_data(&install.data).is_ok());
        let _: Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> =
            same_shape("install snapshot answer", &payloads["payload/install-snapshot-answer"]);
        let pre_vote: crate::election::PreVoteRequest = same_shape("pre-vote", &payloads["payload/pre-vote"]);
        assert_eq!(pre_vote.candidate, cluster_model::node_id("n2"));
        let answer: crate::election::PreVoteResponse =
            same_shape("pre-vote answer", &payloads["payload/pre-vote-answer"]);
        assert!(!answer.granted);
        assert_eq!(same_shape::<u64>("hold", &payloads["payload/hold-elections"]), 1_800);
        same_shape::<()>("campaign", &payloads["payload/campaign"]);
        assert_eq!(same_shape::<u64>("last ack", &payloads["payload/last-ack"]), 2);
        assert_eq!(same_shape::<Option<u64>>("last ack answer", &payloads["payload/last-ack-answer"]), Some(35));
    }
}
