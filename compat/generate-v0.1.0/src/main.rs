//! Writes the fixtures of v0.1.0's formats, encoded by v0.1.0's own crates (see compat/README.md).
//!
//! Usage: `generate-v010-fixtures V010_SOURCE_DIR OUTPUT.json`. The output maps a name to the hex
//! of the bytes v0.1.0 writes or sends for it. The values are fixed (no clock, no randomness), so
//! a run on any machine writes the same file; the tests of the current code decode every entry
//! with the compatibility layer and encode it back to the same bytes.
//!
//! Three encodings are private to v0.1.0's crates and are rebuilt here exactly as v0.1.0's source
//! writes them (quoted in each function): the log record, the snapshot data and file, and the pre-vote
//! messages. Everything else goes through v0.1.0's public functions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cluster_api::{
    encode, ApiError, ClientReply, ClientRequest, ErrorKind, NodeRole, NodeStatus, PeerRequest, PeerRpc, Request,
    Response, StatusReport,
};
use cluster_model::{
    node_id, ClusterState, Command, CommandOutcome, Event, FenceConfig, NodeInfo, Phase, Report, ResourceStatus,
};
use cluster_package::PackageDef;
use cluster_raft::TypeConfig;
use openraft::error::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote};
use serde::Serialize;

type Fixtures = BTreeMap<String, String>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn put(fixtures: &mut Fixtures, name: &str, bytes: &[u8]) {
    assert!(fixtures.insert(name.to_owned(), hex(bytes)).is_none(), "duplicate fixture {name}");
}

fn postcard<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("serializes")
}

/// A peer RPC payload as v0.1.0's `cluster_api::encode` writes it (version byte 3 + postcard).
fn payload<T: Serialize>(value: &T) -> Vec<u8> {
    encode(value).expect("encodes").to_vec()
}

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(2, node_id("n1")), index)
}

fn members() -> BTreeMap<u64, NodeInfo> {
    ["n1", "n2", "n3"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| (node_id(name), NodeInfo { name: name.into(), address: format!("192.0.2.{}:7400", 11 + i) }))
        .collect()
}

fn membership() -> Membership<u64, NodeInfo> {
    let voters: BTreeSet<u64> = members().keys().copied().collect();
    Membership::new(vec![voters], members())
}

/// Every package file of v0.1.0's `packages.d`, parsed by v0.1.0.
fn packages(source: &Path) -> Vec<PackageDef> {
    let dir = source.join("packages.d");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            cluster_package::parse_package(&path.display().to_string(), &text)
                .unwrap_or_else(|diagnostics| panic!("{}: {diagnostics:?}", path.display()))
        })
        .collect()
}

/// One command of every kind (every `Report` too), in an order that also makes a realistic state.
fn commands(defs: &[PackageDef]) -> Vec<(String, Command)> {
    let mut list: Vec<(&str, Command)> = vec![
        ("KvSet", Command::KvSet { key: "app/config".into(), value: "v1 ✓".into() }),
        ("KvCas", Command::KvCas { key: "app/config".into(), expected: Some("v1 ✓".into()), new: "v2".into() }),
        ("KvCas-absent", Command::KvCas { key: "app/new".into(), expected: None, new: "x".into() }),
        ("KvDel", Command::KvDel { key: "app/new".into() }),
        ("SetSetting", Command::SetSetting { name: "lease".into(), value: "2s".into() }),
        (
            "SetFence",
            Command::SetFence {
                node: "n2".into(),
                fence: Some(FenceConfig {
                    agent: "fence_ipmilan".into(),
                    params: [("ip", "192.0.2.50"), ("username", "admin"), ("password", "secret")]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                }),
            },
        ),
        ("SetFence-none", Command::SetFence { node: "n3".into(), fence: None }),
        ("NodeHello", Command::NodeHello { name: "n1".into(), watchdog: Some("/dev/watchdog".into()), at_ms: 1_000 }),
        ("NodeHello-lease-only", Command::NodeHello { name: "n2".into(), watchdog: None, at_ms: 1_001 }),
    ];
    let mut applies = Vec::new();
    for (i, def) in defs.iter().enumerate() {
        applies.push(Command::PkgApply { def: Box::new(def.clone()), at_ms: 2_000 + i as u64 });
    }
    let web = defs.iter().find(|def| def.nodes.contains(&"n1".to_owned())).expect("a package for n1").name.clone();
    let other = defs.iter().find(|def| def.name != web).expect("a second package").name.clone();
    let tail: Vec<(&str, Command)> = vec![
        ("PkgRun", Command::PkgRun { name: web.clone(), node: Some("n1".into()), at_ms: 3_000 }),
        (
            "Assign",
            Command::Assign {
                package: web.clone(),
                expected_epoch: 0,
                owner: Some("n1".into()),
                phase: Phase::Starting,
                reason: "placed on n1 as requested".into(),
                at_ms: 3_001,
            },
        ),
        (
            "Report-Running",
            Command::Report {
                package: web.clone(),
                node: "n1".into(),
                epoch: 1,
                report: Report::Running {
                    resources: vec![ResourceStatus { name: "vip".into(), state: "running".into() }],
                },
                at_ms: 3_002,
            },
        ),
        (
            "Report-ResourceFailed",
            Command::Report {
                package: web.clone(),
                node: "n1".into(),
                epoch: 1,
                report: Report::ResourceFailed { resource: "server".into(), reason: "monitor: not running".into() },
                at_ms: 3_003,
            },
        ),
        (
            "Report-Restarting",
            Command::Report {
                package: web.clone(),
                node: "n1".into(),
                epoch: 1,
                report: Report::Restarting { reason: "lease reached its stop budget".into() },
                at_ms: 3_004,
            },
        ),
        ("PkgFreeze", Command::PkgFreeze { name: web.clone(), frozen: true, at_ms: 3_005 }),
        ("PkgFreeze-off", Command::PkgFreeze { name: web.clone(), frozen: false, at_ms: 3_006 }),
        ("PkgMove", Command::PkgMove { name: web.clone(), to: "n2".into(), at_ms: 3_007 }),
        (
            "Report-StopFailed",
            Command::Report {
                package: web.clone(),
                node: "n1".into(),
                epoch: 1,
                report: Report::StopFailed { reason: "umount: target is busy".into() },
                at_ms: 3_008,
            },
        ),
        (
            "Report-Stopped",
            Command::Report {
                package: web.clone(),
                node: "n1".into(),
                epoch: 1,
                report: Report::Stopped,
                at_ms: 3_009,
            },
        ),
        ("PkgCleanup", Command::PkgCleanup { name: web.clone(), at_ms: 3_010 }),
        ("PkgStop", Command::PkgStop { name: other.clone(), at_ms: 3_011 }),
        ("PkgRemove", Command::PkgRemove { name: other.clone(), at_ms: 3_012 }),
        ("NodeStandby", Command::NodeStandby { name: "n3".into(), standby: true, at_ms: 3_013 }),
        (
            "NodeFenced",
            Command::NodeFenced { node: "n1".into(), owned: [(web.clone(), 1)].into_iter().collect(), at_ms: 3_014 },
        ),
        ("NodeLeave", Command::NodeLeave { name: "n2".into(), at_ms: 3_015 }),
        (
            "NodeWatchdog",
            Command::NodeWatchdog {
                name: "n1".into(),
                watchdog: None,
                reason: "watchdog /dev/watchdog could not be armed".into(),
                at_ms: 3_016,
            },
        ),
    ];
    let mut named: Vec<(String, Command)> = list.drain(..).map(|(name, command)| (name.to_owned(), command)).collect();
    for (i, command) in applies.into_iter().enumerate() {
        named.push((format!("PkgApply-{i}"), command));
    }
    named.extend(tail.into_iter().map(|(name, command)| (name.to_owned(), command)));
    named
}

/// v0.1.0 `log_store.rs`: `record = len: u32 LE | crc32(payload): u32 LE | payload = version byte + postcard(Entry)`,
/// `const RECORD_VERSION: u8 = 1;`.
fn record(entry: &Entry<TypeConfig>) -> Vec<u8> {
    let payload = postcard::to_extend(entry, vec![1u8]).expect("serializes");
    let mut record = Vec::new();
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    record
}

/// v0.1.0 `state_machine.rs` `encode_data`: `b"CLSN" | SNAPSHOT_VERSION (2) | crc32(body) | body = postcard(ClusterState)`.
fn snapshot_data(state: &ClusterState) -> Vec<u8> {
    let body = postcard(state);
    let mut data = b"CLSN".to_vec();
    data.push(2);
    data.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    data.extend_from_slice(&body);
    data
}

/// v0.1.0 `files.rs` `write_atomic`: `crc32(payload) | payload`.
fn checked_file(payload: &[u8]) -> Vec<u8> {
    let mut bytes = crc32fast::hash(payload).to_le_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// v0.1.0 `state_machine.rs`: `struct SnapshotFile { meta: Meta, data: Vec<u8> }`.
#[derive(Serialize)]
struct SnapshotFile {
    meta: SnapshotMeta<u64, NodeInfo>,
    data: Vec<u8>,
}

/// v0.1.0 `election.rs`: `struct PreVoteRequest { candidate: u64, last_log_id: Option<LogId> }`.
#[derive(Serialize)]
struct PreVoteRequest {
    candidate: u64,
    last_log_id: Option<LogId<u64>>,
}

/// v0.1.0 `election.rs`: `struct PreVoteResponse { granted: bool, reason: String }`.
#[derive(Serialize)]
struct PreVoteResponse {
    granted: bool,
    reason: String,
}

/// v0.1.0 `clusterd/src/engine/leases.rs`: `struct LeaseRequest { node: String }`.
#[derive(Serialize)]
struct LeaseRequest {
    node: String,
}

/// v0.1.0 `clusterd/src/engine/leases.rs`: `struct LeaseGrant { commit_index: u64 }`.
#[derive(Serialize)]
struct LeaseGrant {
    commit_index: u64,
}

fn client_requests(defs: &[PackageDef]) -> Vec<(&'static str, ClientRequest)> {
    vec![
        ("ClusterInit", ClientRequest::ClusterInit),
        ("NodeAdd", ClientRequest::NodeAdd { name: "n4".into(), address: "192.0.2.14:7400".into(), learner: true }),
        ("NodeRemove", ClientRequest::NodeRemove { name: "n4".into() }),
        ("NodePromote", ClientRequest::NodePromote { name: "n4".into() }),
        ("TransferLeader", ClientRequest::TransferLeader { name: "n2".into() }),
        ("Status", ClientRequest::Status),
        ("SettingsSet", ClientRequest::SettingsSet { name: "heartbeat".into(), value: "50ms".into() }),
        ("SettingsGet", ClientRequest::SettingsGet),
        ("KvSet", ClientRequest::KvSet { key: "k".into(), value: "v".into() }),
        ("KvGet", ClientRequest::KvGet { key: "k".into() }),
        ("KvCas", ClientRequest::KvCas { key: "k".into(), expected: Some("v".into()), new: "w".into() }),
        ("KvDel", ClientRequest::KvDel { key: "k".into() }),
        ("KvList", ClientRequest::KvList { prefix: "app/".into() }),
        (
            "FenceSet",
            ClientRequest::FenceSet {
                node: "n2".into(),
                agent: "fence_dummy".into(),
                params: vec![("plug".into(), "n2".into())],
            },
        ),
        ("FenceRemove", ClientRequest::FenceRemove { node: "n2".into() }),
        ("PkgApply", ClientRequest::PkgApply { packages: defs.to_vec() }),
        ("PkgRun", ClientRequest::PkgRun { name: "web".into(), node: Some("n2".into()) }),
        ("PkgStop", ClientRequest::PkgStop { name: "web".into() }),
        ("PkgMove", ClientRequest::PkgMove { name: "web".into(), to: "n3".into() }),
        ("PkgFreeze", ClientRequest::PkgFreeze { name: "web".into(), frozen: true }),
        ("PkgCleanup", ClientRequest::PkgCleanup { name: "web".into() }),
        ("PkgRemove", ClientRequest::PkgRemove { name: "web".into() }),
        ("PkgStatus", ClientRequest::PkgStatus { name: Some("web".into()) }),
        ("PkgPlan", ClientRequest::PkgPlan { name: "web".into() }),
        ("NodeStandby", ClientRequest::NodeStandby { name: "n3".into(), standby: false }),
        ("Events", ClientRequest::Events { after: Some(41) }),
    ]
}

fn status(state: &ClusterState) -> StatusReport {
    StatusReport {
        reporter: "n1".into(),
        reporter_state: "leader".into(),
        leader: Some("n1".into()),
        term: 2,
        quorum: true,
        commit_index: Some(57),
        applied_index: Some(57),
        last_log_index: Some(58),
        snapshot_index: None,
        nodes: vec![
            NodeStatus {
                name: "n1".into(),
                address: "192.0.2.11:7400".into(),
                role: NodeRole::Voter,
                matched_index: Some(58),
                last_contact_ms: Some(0),
                standby: false,
                leaving: false,
                protection: "watchdog".into(),
                lease: Some("alive".into()),
            },
            NodeStatus {
                name: "n4".into(),
                address: "192.0.2.14:7400".into(),
                role: NodeRole::Learner,
                matched_index: None,
                last_contact_ms: None,
                standby: true,
                leaving: true,
                protection: "lease-only".into(),
                lease: None,
            },
        ],
        packages: state.packages.values().cloned().collect(),
        warnings: vec!["node n4 runs in lease-only mode".into()],
    }
}

fn client_replies(state: &ClusterState) -> Vec<(&'static str, ClientReply)> {
    vec![
        ("Done", ClientReply::Done { message: "node n4 added as a learner".into() }),
        ("Value", ClientReply::Value { key: "k".into(), value: "v".into() }),
        ("List", ClientReply::List { entries: vec![("a".into(), "1".into()), ("b".into(), "2".into())] }),
        ("Deleted", ClientReply::Deleted { key: "k".into(), existed: true }),
        ("Settings", ClientReply::Settings { entries: state.settings.list() }),
        ("Status", ClientReply::Status(status(state))),
        ("Packages", ClientReply::Packages { packages: state.packages.values().cloned().collect() }),
        ("Plan", ClientReply::Plan { lines: vec!["package web: desired running".into(), "decision: none".into()] }),
        ("Events", ClientReply::Events { events: state.events.iter().take(3).cloned().collect::<Vec<Event>>() }),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(args.len(), 3, "usage: generate-v010-fixtures V010_SOURCE_DIR OUTPUT.json");
    let source = Path::new(&args[1]);
    let mut fixtures = Fixtures::new();

    let defs = packages(source);
    let commands = commands(&defs);
    let mut state = ClusterState::default();
    let mut outcomes = Vec::new();
    let mut entries = Vec::new();
    for (i, (name, command)) in commands.iter().enumerate() {
        outcomes.push(state.apply(command));
        let entry =
            Entry::<TypeConfig> { log_id: log_id(10 + i as u64), payload: EntryPayload::Normal(command.clone()) };
        put(&mut fixtures, &format!("entry/{name}"), &postcard(&entry));
        put(&mut fixtures, &format!("command/{name}"), &postcard(command));
        entries.push(entry);
    }
    let blank = Entry::<TypeConfig> { log_id: log_id(8), payload: EntryPayload::Blank };
    let member_entry = Entry::<TypeConfig> { log_id: log_id(9), payload: EntryPayload::Membership(membership()) };
    put(&mut fixtures, "entry/Blank", &postcard(&blank));
    put(&mut fixtures, "entry/Membership", &postcard(&member_entry));
    put(&mut fixtures, "record/Membership", &record(&member_entry));
    put(
        &mut fixtures,
        "record/PkgApply-0",
        &record(entries.iter().find(|e| matches!(e.payload, EntryPayload::Normal(Command::PkgApply { .. }))).unwrap()),
    );
    for outcome in [
        CommandOutcome::Applied,
        CommandOutcome::Deleted { existed: false },
        CommandOutcome::CasMismatch { current: Some("v".into()) },
        CommandOutcome::Rejected { reason: "package `x` does not exist".into() },
    ] {
        let name = format!("{outcome:?}").split([' ', '{']).next().unwrap().to_owned();
        put(&mut fixtures, &format!("payload/propose-answer/{name}"), &payload(&Ok::<_, String>(outcome)));
    }
    put(
        &mut fixtures,
        "payload/propose-answer/Err",
        &payload(&Err::<CommandOutcome, _>("node n2 is not the leader".to_owned())),
    );
    let rejected = outcomes.iter().filter(|o| matches!(o, CommandOutcome::Rejected { .. })).count();
    eprintln!("{} commands, {rejected} rejected at apply (stale on purpose)", commands.len());

    // Snapshot: data, file, and the state of a default cluster too.
    let data = snapshot_data(&state);
    put(&mut fixtures, "snapshot/data", &data);
    put(&mut fixtures, "snapshot/data-empty", &snapshot_data(&ClusterState::default()));
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(10 + commands.len() as u64 - 1)),
        last_membership: StoredMembership::new(Some(log_id(9)), membership()),
        snapshot_id: format!("2-{}-0", 10 + commands.len() - 1),
    };
    put(
        &mut fixtures,
        "snapshot/file",
        &checked_file(&postcard(&SnapshotFile { meta: meta.clone(), data: data.clone() })),
    );
    put(&mut fixtures, "vote", &checked_file(&postcard(&Vote::new_committed(2, node_id("n1")))));
    put(&mut fixtures, "purged", &checked_file(&postcard(&log_id(7))));

    // Peer payloads.
    let vote = Vote::new_committed(2, node_id("n1"));
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id(7)),
        entries: vec![blank.clone(), member_entry.clone(), entries[0].clone(), entries[8].clone()],
        leader_commit: Some(log_id(8)),
    };
    put(&mut fixtures, "payload/append-entries", &payload(&append));
    let heartbeat = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id(58)),
        entries: vec![],
        leader_commit: None,
    };
    put(&mut fixtures, "payload/append-entries-heartbeat", &payload(&heartbeat));
    for (name, response) in [
        ("Success", AppendEntriesResponse::<u64>::Success),
        ("PartialSuccess", AppendEntriesResponse::PartialSuccess(Some(log_id(9)))),
        ("Conflict", AppendEntriesResponse::Conflict),
        ("HigherVote", AppendEntriesResponse::HigherVote(Vote::new(3, node_id("n2")))),
    ] {
        put(
            &mut fixtures,
            &format!("payload/append-entries-answer/{name}"),
            &payload(&Ok::<_, RaftError<u64>>(response)),
        );
    }
    let vote_request = VoteRequest { vote: Vote::new(3, node_id("n2")), last_log_id: Some(log_id(58)) };
    put(&mut fixtures, "payload/vote", &payload(&vote_request));
    let vote_response =
        VoteResponse { vote: Vote::new(3, node_id("n2")), vote_granted: true, last_log_id: Some(log_id(58)) };
    put(&mut fixtures, "payload/vote-answer", &payload(&Ok::<_, RaftError<u64>>(vote_response)));
    let install = InstallSnapshotRequest::<TypeConfig> { vote, meta, offset: 0, data: data.clone(), done: true };
    put(&mut fixtures, "payload/install-snapshot", &payload(&install));
    put(
        &mut fixtures,
        "payload/install-snapshot-answer",
        &payload(&Ok::<_, RaftError<u64, openraft::error::InstallSnapshotError>>(InstallSnapshotResponse { vote })),
    );
    put(
        &mut fixtures,
        "payload/pre-vote",
        &payload(&PreVoteRequest { candidate: node_id("n2"), last_log_id: Some(log_id(58)) }),
    );
    put(
        &mut fixtures,
        "payload/pre-vote-answer",
        &payload(&PreVoteResponse { granted: false, reason: "heard from the leader 20 ms ago".into() }),
    );
    put(&mut fixtures, "payload/hold-elections", &payload(&1_800u64));
    put(&mut fixtures, "payload/campaign", &payload(&()));
    put(&mut fixtures, "payload/last-ack", &payload(&2u64));
    put(&mut fixtures, "payload/last-ack-answer", &payload(&Some(35u64)));
    put(&mut fixtures, "payload/lease", &payload(&LeaseRequest { node: "n2".into() }));
    put(&mut fixtures, "payload/lease-answer", &payload(&Ok::<_, String>(LeaseGrant { commit_index: 58 })));
    put(
        &mut fixtures,
        "payload/lease-answer-Err",
        &payload(&Err::<LeaseGrant, _>("node n9 is not a member of the cluster: no lease".to_owned())),
    );
    put(&mut fixtures, "payload/propose", &payload(&commands[20].1));

    // Client frames: every request, forwarded or not, and every peer RPC kind in its envelope.
    for (name, request) in client_requests(&defs) {
        let forwarded = name.len() % 2 == 0;
        put(&mut fixtures, &format!("frame/request/{name}"), &encode(&Request::Client { request, forwarded }).unwrap());
    }
    for rpc in [
        PeerRpc::AppendEntries,
        PeerRpc::Vote,
        PeerRpc::InstallSnapshot,
        PeerRpc::PreVote,
        PeerRpc::HoldElections,
        PeerRpc::Campaign,
        PeerRpc::Lease,
        PeerRpc::Propose,
        PeerRpc::LastAck,
    ] {
        let request = Request::Peer(PeerRequest { rpc, payload: payload(&1_800u64) });
        put(&mut fixtures, &format!("frame/request/Peer-{rpc:?}"), &encode(&request).unwrap());
    }
    for (name, reply) in client_replies(&state) {
        put(&mut fixtures, &format!("frame/response/{name}"), &encode(&Response::Client(Ok(reply))).unwrap());
    }
    for kind in [
        ErrorKind::Failed,
        ErrorKind::Invalid,
        ErrorKind::NotFound,
        ErrorKind::CasMismatch,
        ErrorKind::NoLeader,
        ErrorKind::NotLeader,
    ] {
        let current = (kind == ErrorKind::CasMismatch).then(|| "v".to_owned());
        let error = ApiError { kind, message: format!("{kind:?} happened"), current };
        put(&mut fixtures, &format!("frame/response/Err-{kind:?}"), &encode(&Response::Client(Err(error))).unwrap());
    }
    put(&mut fixtures, "frame/response/Peer-Ok", &encode(&Response::Peer(Ok(payload(&Some(35u64))))).unwrap());
    put(&mut fixtures, "frame/response/Peer-Err", &encode(&Response::Peer(Err("malformed Vote rpc".into()))).unwrap());

    let json = serde_json::to_string_pretty(&fixtures).unwrap() + "\n";
    std::fs::write(&args[2], json).unwrap_or_else(|err| panic!("{}: {err}", args[2]));
    eprintln!("wrote {} fixtures to {}", fixtures.len(), args[2]);
}
