//! The engine's peer RPCs (lease renewals, proposals) in v0.1.0's protocol as well as this
//! release's: the caller writes in its cluster's protocol, the server answers in the caller's.
//!
//! ```text
//!   protocol 3 (0.1.0)   Lease: LeaseRequest -> Result<{ commit_index }, String>
//!                        Propose: v0_1::Command -> Result<v0_1::CommandOutcome, String>
//!   protocol 4 (0.2.0)   Lease: LeaseRequest -> Result<LeaseGrant { commit_index, term, lease }, String>
//!                        Propose: Command -> Result<CommandOutcome, String>
//! ```

use cluster_api::{decode_body, encode_as, frame_version, PROTOCOL_V0_1};
use cluster_model::compat::{command_to_v0_1, outcome_to_v0_1, v0_1};
use cluster_model::{Command, CommandOutcome, Grant};
use serde::{Deserialize, Serialize};

use crate::engine::{LeaseGrant, LeaseRequest};

/// v0.1.0's lease grant: the index to apply, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseGrantV01 {
    commit_index: u64,
}

fn encoded<T: Serialize>(value: &T, protocol: u8) -> Result<Vec<u8>, String> {
    encode_as(value, protocol).map(|bytes| bytes.to_vec()).map_err(|err| err.to_string())
}

fn bad(what: &str, err: cluster_api::FrameError) -> String {
    format!("malformed {what}: {err}")
}

/// A renewal in `protocol` (the same shape in both).
pub(crate) fn lease_request(request: &LeaseRequest, protocol: u8) -> Result<Vec<u8>, String> {
    encoded(request, protocol)
}

/// Serves a renewal: decodes it, lets `grant` answer, encodes the grant in the caller's protocol.
pub(crate) async fn serve_lease<F, Fut>(payload: &[u8], grant: F) -> Result<Vec<u8>, String>
where
    F: FnOnce(LeaseRequest) -> Fut,
    Fut: std::future::Future<Output = Result<LeaseGrant, String>>,
{
    let protocol = frame_version(payload).map_err(|err| bad("lease rpc", err))?;
    let request: LeaseRequest = decode_body(payload).map_err(|err| bad("lease rpc", err))?;
    let answer = grant(request).await;
    if protocol == PROTOCOL_V0_1 {
        // A v0.1.0 holder counts its lease with its own settings and applies `commit_index` first.
        let old = answer.map(|grant| LeaseGrantV01 { commit_index: grant.commit_index });
        return encoded(&old, protocol);
    }
    encoded(&answer, protocol)
}

/// A grant as the holder records it. A v0.1.0 leader says neither its term nor the length it
/// counts: its index is an applied one (committed), tagged with the term this node saw when it
/// sent the renewal to that leader, and the lease lasts what this node's settings give.
pub(crate) fn lease_answer(bytes: &[u8], term_at_send: u64) -> Result<Grant, String> {
    let protocol = frame_version(bytes).map_err(|err| bad("lease answer", err))?;
    if protocol == PROTOCOL_V0_1 {
        let answer: Result<LeaseGrantV01, String> = decode_body(bytes).map_err(|err| bad("lease answer", err))?;
        return answer.map(|grant| Grant { term: term_at_send, commit_index: grant.commit_index, lease: None });
    }
    let answer: Result<LeaseGrant, String> = decode_body(bytes).map_err(|err| bad("lease answer", err))?;
    answer.map(|grant| Grant { term: grant.term, commit_index: grant.commit_index, lease: Some(grant.lease) })
}

/// A proposal in `protocol`; a command v0.1.0 lacks is refused with the version it needs.
pub(crate) fn propose_request(command: &Command, protocol: u8) -> Result<Vec<u8>, String> {
    if protocol == PROTOCOL_V0_1 {
        let old = command_to_v0_1(command).map_err(|needs| needs.to_string())?;
        return encoded(&old, protocol);
    }
    encoded(command, protocol)
}

/// Serves a proposal: decodes it (converting a v0.1.0 command), lets `propose` answer, encodes
/// the outcome in the caller's protocol.
pub(crate) async fn serve_propose<F, Fut>(payload: &[u8], propose: F) -> Result<Vec<u8>, String>
where
    F: FnOnce(Command) -> Fut,
    Fut: std::future::Future<Output = Result<CommandOutcome, String>>,
{
    let protocol = frame_version(payload).map_err(|err| bad("propose rpc", err))?;
    if protocol == PROTOCOL_V0_1 {
        let command: v0_1::Command = decode_body(payload).map_err(|err| bad("propose rpc", err))?;
        let answer = propose(command.into()).await.map(|outcome| outcome_to_v0_1(&outcome));
        return encoded(&answer, protocol);
    }
    let command: Command = decode_body(payload).map_err(|err| bad("propose rpc", err))?;
    encoded(&propose(command).await, protocol)
}

/// The outcome of a proposal, in either protocol.
pub(crate) fn propose_answer(bytes: &[u8]) -> Result<CommandOutcome, String> {
    let protocol = frame_version(bytes).map_err(|err| bad("propose answer", err))?;
    if protocol == PROTOCOL_V0_1 {
        let answer: Result<v0_1::CommandOutcome, String> =
            decode_body(bytes).map_err(|err| bad("propose answer", err))?;
        return answer.map(Into::into);
    }
    decode_body::<Result<CommandOutcome, String>>(bytes).map_err(|err| bad("propose answer", err))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_api::PROTOCOL_VERSION;
    use std::time::Duration;

    #[tokio::test]
    async fn a_v0_1_holder_gets_a_v0_1_grant_and_a_v0_1_grant_gets_the_senders_term() {
        let grant = LeaseGrant { commit_index: 42, term: 7, lease: Duration::from_millis(990) };
        for protocol in [PROTOCOL_V0_1, PROTOCOL_VERSION] {
            let request = lease_request(&LeaseRequest { node: "n2".into() }, protocol).unwrap();
            let answer = serve_lease(&request, |request| {
                assert_eq!(request.node, "n2");
                std::future::ready(Ok(grant.clone()))
            })
            .await
            .unwrap();
            assert_eq!(answer[0], protocol);
            let recorded = lease_answer(&answer, 5).unwrap();
            if protocol == PROTOCOL_V0_1 {
                // v0.1.0's bytes: Ok, then the index alone.
                assert_eq!(&answer[1..], &[0, 42]);
                assert_eq!(recorded, Grant { term: 5, commit_index: 42, lease: None });
            } else {
                assert_eq!(recorded, Grant { term: 7, commit_index: 42, lease: Some(Duration::from_millis(990)) });
            }
        }
    }

    #[tokio::test]
    async fn proposals_travel_in_the_callers_protocol() {
        let command = Command::KvSet { key: "k".into(), value: "v".into() };
        for protocol in [PROTOCOL_V0_1, PROTOCOL_VERSION] {
            let request = propose_request(&command, protocol).unwrap();
            let answer = serve_propose(&request, |received| {
                assert_eq!(received, command);
                std::future::ready(Ok(CommandOutcome::Deleted { existed: true }))
            })
            .await
            .unwrap();
            assert_eq!(propose_answer(&answer), Ok(CommandOutcome::Deleted { existed: true }));
        }
        let err = propose_request(&Command::AlertsDelivered { next: 3 }, PROTOCOL_V0_1).unwrap_err();
        assert_eq!(err, "command `AlertsDelivered` needs cluster version 0.2.0");
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../compat/v0.1.0/fixtures.json");
        let all: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let hex = &all[name];
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    /// v0.1.0's own bytes (compat/v0.1.0/fixtures.json): a renewal and a proposal of a v0.1.0 node
    /// are served, and the answers are exactly what v0.1.0 itself sends.
    #[tokio::test]
    async fn v0_1_renewals_and_proposals_are_served_with_v0_1_answers() {
        let grant = LeaseGrant { commit_index: 58, term: 3, lease: Duration::from_millis(990) };
        let answer = serve_lease(&fixture("payload/lease"), |request| {
            assert_eq!(request.node, "n2");
            std::future::ready(Ok(grant.clone()))
        })
        .await
        .unwrap();
        assert_eq!(answer, fixture("payload/lease-answer"));
        assert_eq!(lease_answer(&answer, 9), Ok(Grant { term: 9, commit_index: 58, lease: None }));
        let refused = "node n9 is not a member of the cluster: no lease".to_owned();
        assert_eq!(lease_answer(&fixture("payload/lease-answer-Err"), 9), Err(refused.clone()));
        let answer = serve_lease(&fixture("payload/lease"), |_| std::future::ready(Err(refused))).await.unwrap();
        assert_eq!(answer, fixture("payload/lease-answer-Err"));

        let expected = Command::from(
            postcard::from_bytes::<v0_1::Command>(&fixture("payload/propose")[1..]).expect("a v0.1.0 command"),
        );
        for (outcome, name) in [
            (CommandOutcome::Applied, "Applied"),
            (CommandOutcome::Deleted { existed: false }, "Deleted"),
            (CommandOutcome::CasMismatch { current: Some("v".into()) }, "CasMismatch"),
            (CommandOutcome::Rejected { reason: "package `x` does not exist".into() }, "Rejected"),
        ] {
            let answer = serve_propose(&fixture("payload/propose"), |command| {
                assert_eq!(command, expected);
                std::future::ready(Ok(outcome.clone()))
            })
            .await
            .unwrap();
            assert_eq!(answer, fixture(&format!("payload/propose-answer/{name}")), "{name}");
            assert_eq!(propose_answer(&answer), Ok(outcome));
        }
        assert_eq!(propose_answer(&fixture("payload/propose-answer/Err")), Err("node n2 is not the leader".to_owned()));
    }
}
